//! The operators' read API on the HTTP port, answered from the registry cache, at the
//! paths of Polaris's console API (POLARIS.md §5):
//!
//! - `GET /naming/v1/services?namespace=&offset=&limit=`: services (of every namespace
//!   when `namespace` is left out) sorted by namespace and name, each as Polaris's
//!   `Service` JSON with its instance counts and `isolate_instance_count` added.
//! - `GET /naming/v1/instances?service=&namespace=&host=&healthy=&offset=&limit=`: one
//!   service's instances as Polaris's `Instance` JSON (never a service token), sorted by
//!   host (as text), port and id so that pages do not overlap. `service` is required;
//!   `namespace` defaults to `default`; `host` is an exact match; `healthy=true|false`
//!   filters on the stored health, whatever the isolate flag. A service the cache does not
//!   hold is answered 400202 (one without instances, an empty page).
//!
//! Answers are `{code, info, amount, size, services|instances}`: `amount` counts every
//! match, `size` the page. `limit` is 100 when left out, and at most 100; `offset` starts
//! at 0. A parameter given empty is read as left out; an unknown or repeated parameter,
//! a value that does not parse and a limit over 100 are answered 400103, a missing
//! `service` 400104. With auth on, the token (`X-Polaris-Token` or `Polaris-Token`) must be
//! granted the namespace (and the service, for instances): 401002 without a token, 401001
//! with another. Parameters are checked before the token. HTTP status and headers are the
//! client API's ([`super::client`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::HttpState;
use super::client::{REQUEST_ID, polaris, request_context, status_of};
use super::json;
use crate::api::{ApiError, ClientApi};
use crate::code::Code;
use crate::discovery::DEFAULT_NAMESPACE;
use crate::discovery::answer::{info as code_info, service_message};
use crate::discovery::cache::{RegistryCache, ServiceEntry};
use crate::proto;

/// The most items one page holds, and the page size when `limit` is left out.
pub const MAX_LIMIT: usize = 100;

const SERVICES_PARAMETERS: &[&str] = &["namespace", "offset", "limit"];
const INSTANCES_PARAMETERS: &[&str] =
    &["service", "namespace", "host", "healthy", "offset", "limit"];

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/naming/v1/services", get(services))
        .route("/naming/v1/instances", get(instances))
}

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query parameter {0:?}")]
    Unknown(String),
    #[error("query parameter {0:?} is given more than once")]
    Repeated(&'static str),
    #[error("query parameter {name:?} must be {expected}, not {value:?}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("limit must be at most {MAX_LIMIT}, not {0}")]
    OverLimit(usize),
    #[error("query parameter {0:?} is required")]
    Missing(&'static str),
}

impl QueryError {
    pub fn code(&self) -> Code {
        match self {
            QueryError::Missing(_) => Code::EmptyQueryParameter,
            _ => Code::InvalidParameter,
        }
    }
}

/// The parameters of a query string, each known one at most once; empty values dropped.
struct Parameters(Vec<(&'static str, String)>);

impl Parameters {
    fn parse(query: &str, known: &[&'static str]) -> Result<Self, QueryError> {
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let Some(&name) = known.iter().find(|&&name| name == key) else {
                return Err(QueryError::Unknown(key.into_owned()));
            };
            if found.iter().any(|(seen, _)| *seen == name) {
                return Err(QueryError::Repeated(name));
            }
            found.push((name, value.into_owned()));
        }
        found.retain(|(_, value)| !value.is_empty());
        Ok(Parameters(found))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, value)| value.as_str())
    }

    fn count(&self, name: &'static str) -> Result<Option<usize>, QueryError> {
        self.text(name)
            .map(|value| {
                value.parse().map_err(|_| QueryError::Invalid {
                    name,
                    expected: "a whole number from 0",
                    value: value.to_owned(),
                })
            })
            .transpose()
    }

    fn flag(&self, name: &'static str) -> Result<Option<bool>, QueryError> {
        self.text(name)
            .map(|value| match value {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(QueryError::Invalid {
                    name,
                    expected: "true or false",
                    value: value.to_owned(),
                }),
            })
            .transpose()
    }

    fn page(&self) -> Result<Page, QueryError> {
        let offset = self.count("offset")?.unwrap_or(0);
        let limit = self.count("limit")?.unwrap_or(MAX_LIMIT);
        if limit > MAX_LIMIT {
            return Err(QueryError::OverLimit(limit));
        }
        Ok(Page { offset, limit })
    }
}

/// Which items of a sorted list a query shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    fn of<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = self.offset.min(items.len());
        let end = start.saturating_add(self.limit).min(items.len());
        &items[start..end]
    }
}

/// `GET /naming/v1/services`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesQuery {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub page: Page,
}

impl ServicesQuery {
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let parameters = Parameters::parse(query, SERVICES_PARAMETERS)?;
        Ok(ServicesQuery {
            namespace: parameters.text("namespace").map(str::to_owned),
            page: parameters.page()?,
        })
    }
}

/// `GET /naming/v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancesQuery {
    pub namespace: String,
    pub service: String,
    pub host: Option<String>,
    pub healthy: Option<bool>,
    pub page: Page,
}

impl InstancesQuery {
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let parameters = Parameters::parse(query, INSTANCES_PARAMETERS)?;
        let service = parameters
            .text("service")
            .ok_or(QueryError::Missing("service"))?;
        Ok(InstancesQuery {
            namespace: parameters
                .text("namespace")
                .unwrap_or(DEFAULT_NAMESPACE)
                .to_owned(),
            service: service.to_owned(),
            host: parameters.text("host").map(str::to_owned),
            healthy: parameters.flag("healthy")?,
            page: parameters.page()?,
        })
    }
}

/// Why a read was not answered with a page.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("service {namespace}/{service} is not registered")]
    NotFound { namespace: String, service: String },
}

impl ReadError {
    fn code(&self) -> Code {
        match self {
            ReadError::Query(query) => query.code(),
            ReadError::Api(api) => api.code(),
            ReadError::NotFound { .. } => Code::NotFoundResource,
        }
    }
}

/// One page: how many items matched, and the page's items.
struct Listing {
    amount: usize,
    items: Vec<Value>,
}

async fn services(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let api = match state.api() {
        Ok(api) => api,
        Err(loading) => return loading.into_response(),
    };
    let listed = list_services(&api, &headers, query.as_deref().unwrap_or(""));
    answer("services", listed, headers.get(REQUEST_ID))
}

async fn instances(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let api = match state.api() {
        Ok(api) => api,
        Err(loading) => return loading.into_response(),
    };
    let listed = list_instances(&api, &headers, query.as_deref().unwrap_or(""));
    answer("instances", listed, headers.get(REQUEST_ID))
}

fn list_services(api: &ClientApi, headers: &HeaderMap, query: &str) -> Result<Listing, ReadError> {
    let query = ServicesQuery::parse(query)?;
    api.check_read(&request_context(headers), query.namespace.as_deref(), None)?;
    let all = api
        .discovery()
        .cache()
        .services_of(query.namespace.as_deref());
    Ok(Listing {
        amount: all.len(),
        items: query
            .page
            .of(&all)
            .iter()
            .map(|entry| service_value(entry))
            .collect(),
    })
}

fn list_instances(api: &ClientApi, headers: &HeaderMap, query: &str) -> Result<Listing, ReadError> {
    let query = InstancesQuery::parse(query)?;
    api.check_read(
        &request_context(headers),
        Some(&query.namespace),
        Some(&query.service),
    )?;
    let entry = found(api.discovery().cache(), &query.namespace, &query.service)?;
    // Each instance of the service is decoded to be filtered and sorted: an operator's
    // read, not the fleet's path.
    let mut shown: Vec<proto::Instance> = entry
        .instances()
        .iter()
        .filter(|cached| {
            query
                .healthy
                .is_none_or(|healthy| cached.healthy == healthy)
        })
        .map(|cached| cached.wire())
        .filter(|wire| {
            query
                .host
                .as_deref()
                .is_none_or(|host| wire.host.as_deref() == Some(host))
        })
        .collect();
    shown.sort_by(|a, b| (&a.host, a.port, &a.id).cmp(&(&b.host, b.port, &b.id)));
    let items = query
        .page
        .of(&shown)
        .iter()
        .map(|wire| {
            debug_assert!(wire.service_token.is_none(), "the cache keeps no token");
            json::to_value(json::INSTANCE, wire)
        })
        .collect();
    Ok(Listing {
        amount: shown.len(),
        items,
    })
}

fn found(
    cache: &RegistryCache,
    namespace: &str,
    service: &str,
) -> Result<Arc<ServiceEntry>, ReadError> {
    cache
        .service(namespace, service)
        .ok_or_else(|| ReadError::NotFound {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        })
}

/// A service as Polaris's `Service` JSON (names, id, times, revision, total and healthy
/// counts, as Discover shows it) and its isolated instances.
fn service_value(entry: &ServiceEntry) -> Value {
    let (message, isolated) = entry.snapshot(|snapshot| {
        let isolated = snapshot.instances.values().filter(|i| i.isolate).count();
        (service_message(snapshot), isolated)
    });
    let mut value = json::to_value(json::SERVICE, &message);
    if let Value::Object(fields) = &mut value {
        fields.insert("isolate_instance_count".to_owned(), json!(isolated));
    }
    value
}

/// The page, or the refusal with an empty page, as Polaris answers: status = code / 1000,
/// `X-Polaris-Code` and `X-Polaris-Message` on a refusal, `Request-Id` echoed.
fn answer(
    key: &str,
    listed: Result<Listing, ReadError>,
    request_id: Option<&HeaderValue>,
) -> Response {
    let (code, info, listing) = match listed {
        Ok(listing) => (
            Code::ExecuteSuccess,
            code_info(Code::ExecuteSuccess).to_owned(),
            listing,
        ),
        Err(error) => (
            error.code(),
            error.to_string(),
            Listing {
                amount: 0,
                items: Vec::new(),
            },
        ),
    };
    let mut body = json!({
        "code": code.as_u32(),
        "info": info,
        "amount": listing.amount,
        "size": listing.items.len(),
    });
    if let Value::Object(fields) = &mut body {
        fields.insert(key.to_owned(), Value::Array(listing.items));
    }
    polaris(status_of(code), code, &info, json::write(&body), request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(query: &str) -> Result<ServicesQuery, QueryError> {
        ServicesQuery::parse(query)
    }

    fn instances(query: &str) -> Result<InstancesQuery, QueryError> {
        InstancesQuery::parse(query)
    }

    #[test]
    fn services_default_to_every_namespace_and_a_full_first_page() {
        assert_eq!(
            services(""),
            Ok(ServicesQuery {
                namespace: None,
                page: Page {
                    offset: 0,
                    limit: MAX_LIMIT
                },
            })
        );
        assert_eq!(services("namespace=").unwrap().namespace, None);
        assert_eq!(
            services("namespace=prod&offset=200&limit=0"),
            Ok(ServicesQuery {
                namespace: Some("prod".to_owned()),
                page: Page {
                    offset: 200,
                    limit: 0
                },
            })
        );
    }

    #[test]
    fn instances_need_a_service_and_default_to_the_default_namespace() {
        assert_eq!(instances(""), Err(QueryError::Missing("service")));
        assert_eq!(instances("service="), Err(QueryError::Missing("service")));
        assert_eq!(
            instances("namespace=prod").unwrap_err().code(),
            Code::EmptyQueryParameter
        );
        assert_eq!(
            instances("service=pay"),
            Ok(InstancesQuery {
                namespace: "default".to_owned(),
                service: "pay".to_owned(),
                host: None,
                healthy: None,
                page: Page {
                    offset: 0,
                    limit: MAX_LIMIT
                },
            })
        );
        let full =
            instances("service=pay&namespace=prod&host=10.0.0.1&healthy=false&offset=3&limit=7")
                .unwrap();
        assert_eq!(full.namespace, "prod");
        assert_eq!(full.host.as_deref(), Some("10.0.0.1"));
        assert_eq!(full.healthy, Some(false));
        assert_eq!(
            full.page,
            Page {
                offset: 3,
                limit: 7
            }
        );
        assert_eq!(
            instances("service=pay&healthy=true").unwrap().healthy,
            Some(true)
        );
    }

    #[test]
    fn values_are_percent_decoded() {
        let query = instances("service=a%2Fb+c&host=fe80%3A%3A1").unwrap();
        assert_eq!(query.service, "a/b c");
        assert_eq!(query.host.as_deref(), Some("fe80::1"));
    }

    #[test]
    fn bad_parameters_are_invalid_and_name_themselves() {
        let unknown = services("namespace=a&colour=red").unwrap_err();
        assert_eq!(unknown, QueryError::Unknown("colour".to_owned()));
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        // A parameter of the other route is unknown here.
        assert_eq!(
            services("service=pay"),
            Err(QueryError::Unknown("service".to_owned()))
        );
        assert_eq!(
            instances("service=a&service=b"),
            Err(QueryError::Repeated("service"))
        );
        for (query, name) in [
            ("service=a&limit=-1", "limit"),
            ("service=a&limit=ten", "limit"),
            ("service=a&offset=-5", "offset"),
            ("service=a&offset=1.5", "offset"),
            ("service=a&healthy=yes", "healthy"),
            ("service=a&healthy=1", "healthy"),
        ] {
            let error = instances(query).unwrap_err();
            assert!(
                matches!(&error, QueryError::Invalid { name: n, .. } if *n == name),
                "{query}: {error:?}"
            );
            assert_eq!(error.code(), Code::InvalidParameter);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn a_limit_over_the_maximum_is_refused_with_the_maximum_named() {
        assert_eq!(
            services(&format!("limit={MAX_LIMIT}")).unwrap().page.limit,
            MAX_LIMIT
        );
        let over = services(&format!("limit={}", MAX_LIMIT + 1)).unwrap_err();
        assert_eq!(over, QueryError::OverLimit(MAX_LIMIT + 1));
        assert_eq!(over.code(), Code::InvalidParameter);
        assert!(over.to_string().contains("at most 100"), "{over}");
    }

    #[test]
    fn pages_stop_at_the_end_of_the_list() {
        let items = [1, 2, 3, 4, 5];
        let page = |offset, limit| Page { offset, limit }.of(&items).to_vec();
        assert_eq!(page(0, 2), [1, 2]);
        assert_eq!(page(4, 2), [5]);
        assert_eq!(page(5, 2), Vec::<i32>::new());
        assert_eq!(page(99, 2), Vec::<i32>::new());
        assert_eq!(page(1, 0), Vec::<i32>::new());
        assert_eq!(page(usize::MAX, usize::MAX), Vec::<i32>::new());
        assert_eq!(page(2, usize::MAX), [3, 4, 5]);
    }

    proptest::proptest! {
        #[test]
        fn paging_reads_back_what_was_asked_and_pages_tile_the_list(
            offset in 0usize..1_000, limit in 0usize..=MAX_LIMIT, len in 0usize..300,
        ) {
            let query = InstancesQuery::parse(&format!("service=s&offset={offset}&limit={limit}"));
            proptest::prop_assert_eq!(query.map(|q| q.page), Ok(Page { offset, limit }));
            let items: Vec<usize> = (0..len).collect();
            let page = Page { offset, limit }.of(&items);
            proptest::prop_assert_eq!(page.len(), limit.min(len.saturating_sub(offset)));
            proptest::prop_assert!(page.iter().enumerate().all(|(i, &item)| item == offset + i));
        }

        #[test]
        fn any_limit_over_the_maximum_is_refused(limit in MAX_LIMIT + 1..usize::MAX) {
            proptest::prop_assert_eq!(
                ServicesQuery::parse(&format!("limit={limit}")),
                Err(QueryError::OverLimit(limit))
            );
        }
    }
}
