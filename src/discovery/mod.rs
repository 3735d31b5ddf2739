//! Discovery, the read path: `Discover` answered from the registry cache, and the cache
//! kept current. It is loaded from the store at start a page at a time, updated by the
//! write path after each commit (before the writes are answered), and in cluster mode
//! follows what other replicas write through a change feed (`feed`).
//!
//! - `cache`: namespaces, services, instances, revisions, encoded answers;
//! - `answer`: encoding answers;
//! - `feed`: the change feed and the purge of deregistered rows;
//! - `instances`: a service's instances in id order.

pub mod answer;
pub mod cache;
pub mod feed;
pub mod instances;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use sha1::{Digest, Sha1};

use crate::code::Code;
use crate::proto;
use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::discover_response::DiscoverResponseType;
use crate::store::{Store, StoreError, StoredInstance, StoredService};
use answer::Encoded;
use cache::{InstanceFacts, RegistryCache, ServiceView};

/// The namespace of a Discover, or of a read of the HTTP port, that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Instances read from the store per page when the cache loads.
pub const LOAD_PAGE: usize = 10_000;

/// One Discover request's answer.
#[derive(Debug, Clone)]
pub struct Answered {
    pub code: Code,
    /// The request's type, for metrics (`INSTANCE`, `SERVICES`, …; `UNKNOWN` for a number
    /// outside the enum).
    pub kind: &'static str,
    /// The encoded `DiscoverResponse`.
    pub bytes: Encoded,
    /// Whether the bytes were encoded for an earlier request of the same revision.
    pub reused: bool,
}

/// The SERVICES answer of one namespace (or of all), kept until a service is added.
struct ServicesAnswer {
    generation: u64,
    revision: String,
    services: Vec<proto::Service>,
}

/// The read path over the registry cache.
pub struct Discovery {
    cache: Arc<RegistryCache>,
    services_answers: Mutex<HashMap<String, Arc<ServicesAnswer>>>,
}

impl Discovery {
    pub fn new(cache: Arc<RegistryCache>) -> Self {
        Discovery {
            cache,
            services_answers: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> &Arc<RegistryCache> {
        &self.cache
    }

    /// Answers one Discover request. A bad request gets an answer too. `healthy_only`
    /// leaves unhealthy instances out of an INSTANCE answer.
    pub fn answer(&self, request: &proto::DiscoverRequest, healthy_only: bool) -> Answered {
        let kind = DiscoverRequestType::try_from(request.r#type);
        let label = kind.map_or("UNKNOWN", |k| k.as_str_name());
        let mut requested = request.service.clone().unwrap_or_default();
        // A token in the request is the caller's secret: never echoed.
        requested.token = None;
        let plain = |code: Code, kind: DiscoverResponseType, service: proto::Service| Answered {
            code,
            kind: label,
            bytes: answer::plain(code, kind, Some(service)),
            reused: false,
        };
        match kind {
            Ok(DiscoverRequestType::Instance) => {
                let mut answered = self.instances(requested, healthy_only);
                answered.kind = label;
                answered
            }
            Ok(DiscoverRequestType::Services) => {
                let mut answered = self.services(requested);
                answered.kind = label;
                answered
            }
            Ok(
                rules @ (DiscoverRequestType::Routing
                | DiscoverRequestType::RateLimit
                | DiscoverRequestType::CircuitBreaker
                | DiscoverRequestType::FaultDetector),
            ) => {
                // No rules are kept here: an empty payload.
                let response = DiscoverResponseType::try_from(rules as i32)
                    .unwrap_or(DiscoverResponseType::Unknown);
                plain(Code::ExecuteSuccess, response, requested)
            }
            // As Polaris answers it, with the type ROUTING.
            _ => plain(
                Code::InvalidDiscoverResource,
                DiscoverResponseType::Routing,
                requested,
            ),
        }
    }

    /// The INSTANCE answer for a service; `healthy_only` leaves out unhealthy instances
    /// (an answer not kept, built for this request). The client's revision is checked
    /// first either way, as Polaris does.
    pub fn instances(&self, mut requested: proto::Service, healthy_only: bool) -> Answered {
        let kind = DiscoverResponseType::Instance;
        if requested.namespace.as_deref().unwrap_or("").is_empty() {
            requested.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        let plain = |code: Code, service: proto::Service| Answered {
            code,
            kind: "INSTANCE",
            bytes: answer::plain(code, kind, Some(service)),
            reused: false,
        };
        let name = requested.name.as_deref().unwrap_or("");
        if name.is_empty() {
            return plain(Code::InvalidServiceName, requested);
        }
        let namespace = requested.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let Some(entry) = self.cache.service(namespace, name) else {
            return plain(Code::NotFoundResource, requested);
        };
        let client_revision = requested.revision.as_deref().unwrap_or("");
        let view = if healthy_only {
            // Built for this request, not kept; the revision is checked first all the same.
            let view = entry.snapshot(|snapshot| {
                if snapshot.revision == client_revision {
                    ServiceView::Current
                } else {
                    ServiceView::Changed(answer::instances(snapshot, true))
                }
            });
            (view, false)
        } else {
            entry.view(client_revision, |snapshot| {
                answer::instances(snapshot, false)
            })
        };
        match view {
            (ServiceView::Current, _) => plain(Code::DataNoChange, requested),
            (ServiceView::Changed(bytes), reused) => Answered {
                code: Code::ExecuteSuccess,
                kind: "INSTANCE",
                bytes,
                reused,
            },
        }
    }

    /// The SERVICES answer: the services of a namespace, or of all when it names none.
    fn services(&self, requested: proto::Service) -> Answered {
        let kind = DiscoverResponseType::Services;
        let namespace = requested.namespace.clone().unwrap_or_default();
        let list = self.services_list(&namespace);
        if requested.revision.as_deref() == Some(list.revision.as_str()) {
            return Answered {
                code: Code::DataNoChange,
                kind: "SERVICES",
                bytes: answer::plain(Code::DataNoChange, kind, Some(requested)),
                reused: false,
            };
        }
        let response = proto::DiscoverResponse {
            code: Some(Code::ExecuteSuccess.as_u32()),
            info: Some(answer::info(Code::ExecuteSuccess).to_owned()),
            r#type: kind as i32,
            service: Some(proto::Service {
                name: requested.name,
                namespace: requested.namespace,
                revision: Some(list.revision.clone()),
                ..proto::Service::default()
            }),
            instances: Vec::new(),
            services: list.services.clone(),
        };
        Answered {
            code: Code::ExecuteSuccess,
            kind: "SERVICES",
            bytes: Encoded::from(Bytes::from(response.encode_to_vec())),
            reused: false,
        }
    }

    fn services_list(&self, namespace: &str) -> Arc<ServicesAnswer> {
        let generation = self.cache.services_generation();
        let mut answers = self.services_answers.lock().expect("services answers lock");
        if let Some(list) = answers
            .get(namespace)
            .filter(|l| l.generation == generation)
        {
            return Arc::clone(list);
        }
        let entries = self
            .cache
            .services_of((!namespace.is_empty()).then_some(namespace));
        let mut hash = Sha1::new();
        let services = entries
            .iter()
            .map(|entry| {
                for part in [&*entry.namespace, &*entry.name] {
                    hash.update((part.len() as u64).to_le_bytes());
                    hash.update(part.as_bytes());
                }
                proto::Service {
                    name: Some(entry.name.to_string()),
                    namespace: Some(entry.namespace.to_string()),
                    ..proto::Service::default()
                }
            })
            .collect();
        let list = Arc::new(ServicesAnswer {
            generation,
            revision: hex::encode(hash.finalize()),
            services,
        });
        answers.insert(namespace.to_owned(), Arc::clone(&list));
        list
    }
}

/// What loading the cache read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub services: usize,
    pub instances: usize,
    pub took: Duration,
}

/// Loads every service and live instance into `cache`, `page` instances a read. A thread
/// reads the next page while this one puts the last into the cache.
pub fn load(store: &dyn Store, cache: &RegistryCache, page: usize) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    let mut services: HashMap<String, StoredService> = HashMap::new();
    let read_services = |services: &mut HashMap<String, StoredService>| {
        for service in store.services(None)? {
            cache.put_service(&service);
            services.insert(service.id.clone(), service);
        }
        Ok::<_, StoreError>(())
    };
    read_services(&mut services)?;
    let (pages, read) = crossbeam_channel::bounded::<Result<Vec<StoredInstance>, StoreError>>(1);
    let mut instances = 0;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut after = String::new();
            loop {
                let rows = store.instances_page(&after, page);
                let last = match &rows {
                    Ok(rows) if rows.len() == page => rows.last().map(|r| r.record.id.clone()),
                    _ => None,
                };
                // The loader stopped (an error of its own): nothing more to read.
                if pages.send(rows).is_err() {
                    return;
                }
                match last {
                    Some(last) => after = last,
                    None => return,
                }
            }
        });
        for rows in read {
            let rows = rows?;
            if rows
                .iter()
                .any(|row| !services.contains_key(&row.service_id))
            {
                // Created after the services were read.
                read_services(&mut services)?;
            }
            let puts = rows
                .iter()
                .filter_map(|row| Some((services.get(&row.service_id)?, InstanceFacts::from(row))));
            instances += cache.put_instances(puts).len();
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(Loaded {
        services: services.len(),
        instances,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::cache::tests_support::record;

    fn discovery_with(ids: &[&str]) -> Discovery {
        let cache = Arc::new(RegistryCache::default());
        let service = StoredService {
            id: "sid".to_owned(),
            namespace: "ns".to_owned(),
            name: "svc".to_owned(),
            ctime: "2026-12-01 10:00:00.000".to_owned(),
            mtime: "2026-12-01 10:00:00.000".to_owned(),
        };
        cache.put_service(&service);
        for id in ids {
            let r = record(id);
            cache.put_instance(
                &service,
                InstanceFacts {
                    record: &r,
                    isolate: false,
                    revision: "rev",
                    ctime: "2026-12-01 10:00:00.000",
                    mtime: "2026-12-01 10:00:00.000",
                },
            );
        }
        Discovery::new(cache)
    }

    fn ask(
        kind: DiscoverRequestType,
        namespace: &str,
        name: &str,
        revision: &str,
    ) -> proto::DiscoverRequest {
        proto::DiscoverRequest {
            r#type: kind as i32,
            service: Some(proto::Service {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                revision: Some(revision.to_owned()),
                token: Some("secret".to_owned()),
                ..proto::Service::default()
            }),
            ..proto::DiscoverRequest::default()
        }
    }

    fn decoded(answered: &Answered) -> proto::DiscoverResponse {
        proto::DiscoverResponse::decode(answered.bytes.to_bytes()).unwrap()
    }

    #[test]
    fn instance_answers_full_then_no_change_and_reuse_the_encoding() {
        let discovery = discovery_with(&["a", "b"]);
        let first = discovery.answer(&ask(DiscoverRequestType::Instance, "ns", "svc", ""), false);
        assert_eq!(
            (first.code, first.kind, first.reused),
            (Code::ExecuteSuccess, "INSTANCE", false)
        );
        let full = decoded(&first);
        assert_eq!(full.instances.len(), 2);
        let revision = full.service.unwrap().revision.unwrap();
        let second = discovery.answer(
            &ask(DiscoverRequestType::Instance, "ns", "svc", "older"),
            false,
        );
        assert!(second.reused, "the same revision's answer is shared");
        assert_eq!(second.bytes, first.bytes);
        let current = discovery.answer(
            &ask(DiscoverRequestType::Instance, "ns", "svc", &revision),
            false,
        );
        assert_eq!(current.code, Code::DataNoChange);
        let echoed = decoded(&current);
        assert!(echoed.instances.is_empty());
        let service = echoed.service.unwrap();
        assert_eq!(service.name.as_deref(), Some("svc"));
        assert_eq!(service.token, None, "a token is never echoed");
    }

    #[test]
    fn healthy_only_answers_leave_out_the_unhealthy_and_check_the_revision_first() {
        let discovery = discovery_with(&["a"]);
        let mut down = record("b");
        down.healthy = false;
        discovery.cache().put_instance(
            &StoredService {
                id: "sid".to_owned(),
                namespace: "ns".to_owned(),
                name: "svc".to_owned(),
                ctime: "2026-12-01 10:00:00.000".to_owned(),
                mtime: "2026-12-01 10:00:00.000".to_owned(),
            },
            InstanceFacts {
                record: &down,
                isolate: false,
                revision: "rev",
                ctime: "2026-12-01 10:00:00.000",
                mtime: "2026-12-01 10:00:00.000",
            },
        );
        let everything =
            discovery.answer(&ask(DiscoverRequestType::Instance, "ns", "svc", ""), false);
        assert_eq!(decoded(&everything).instances.len(), 2);
        let healthy = discovery.answer(&ask(DiscoverRequestType::Instance, "ns", "svc", ""), true);
        assert_eq!(healthy.code, Code::ExecuteSuccess);
        let listed = decoded(&healthy);
        let ids: Vec<_> = listed
            .instances
            .iter()
            .map(|i| i.id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["a"]);
        let revision = listed.service.unwrap().revision.unwrap();
        assert_eq!(
            revision,
            decoded(&everything).service.unwrap().revision.unwrap(),
            "the service's revision, filtered or not"
        );
        let current = discovery.answer(
            &ask(DiscoverRequestType::Instance, "ns", "svc", &revision),
            true,
        );
        assert_eq!(current.code, Code::DataNoChange);
        assert!(decoded(&current).instances.is_empty());
    }

    #[test]
    fn unknown_services_names_and_types_have_their_codes() {
        let discovery = discovery_with(&["a"]);
        let missing =
            discovery.answer(&ask(DiscoverRequestType::Instance, "ns", "nope", ""), false);
        assert_eq!(missing.code, Code::NotFoundResource);
        let echoed = decoded(&missing);
        assert_eq!(echoed.r#type, DiscoverResponseType::Instance as i32);
        assert_eq!(echoed.service.unwrap().name.as_deref(), Some("nope"));
        let unnamed = discovery.answer(&ask(DiscoverRequestType::Instance, "ns", "", ""), false);
        assert_eq!(unnamed.code, Code::InvalidServiceName);
        // The empty namespace is "default", where nothing is registered here.
        let defaulted = discovery.answer(&ask(DiscoverRequestType::Instance, "", "svc", ""), false);
        assert_eq!(defaulted.code, Code::NotFoundResource);
        for kind in [
            DiscoverRequestType::Unknown,
            DiscoverRequestType::Cluster,
            DiscoverRequestType::Namespaces,
            DiscoverRequestType::Lane,
        ] {
            let answered = discovery.answer(&ask(kind, "ns", "svc", ""), false);
            assert_eq!(answered.code, Code::InvalidDiscoverResource, "{kind:?}");
            assert_eq!(
                decoded(&answered).r#type,
                DiscoverResponseType::Routing as i32
            );
        }
        for kind in [
            DiscoverRequestType::Routing,
            DiscoverRequestType::RateLimit,
            DiscoverRequestType::CircuitBreaker,
            DiscoverRequestType::FaultDetector,
        ] {
            let answered = discovery.answer(&ask(kind, "ns", "svc", ""), false);
            assert_eq!(answered.code, Code::ExecuteSuccess, "{kind:?}");
            assert_eq!(decoded(&answered).r#type, kind as i32);
        }
    }

    #[test]
    fn services_answers_list_a_namespace_and_keep_their_revision_until_one_is_added() {
        let discovery = discovery_with(&["a"]);
        let all = discovery.answer(&ask(DiscoverRequestType::Services, "", "", ""), false);
        assert_eq!(all.code, Code::ExecuteSuccess);
        let listed = decoded(&all);
        assert_eq!(listed.services.len(), 1);
        let revision = listed.service.unwrap().revision.unwrap();
        let same = discovery.answer(
            &ask(DiscoverRequestType::Services, "", "", &revision),
            false,
        );
        assert_eq!(same.code, Code::DataNoChange);
        let other_namespace = discovery.answer(
            &ask(DiscoverRequestType::Services, "elsewhere", "", ""),
            false,
        );
        assert!(decoded(&other_namespace).services.is_empty());
        discovery.cache().put_service(&StoredService {
            id: "sid2".to_owned(),
            namespace: "ns".to_owned(),
            name: "svc2".to_owned(),
            ctime: String::new(),
            mtime: String::new(),
        });
        let grown = discovery.answer(
            &ask(DiscoverRequestType::Services, "", "", &revision),
            false,
        );
        assert_eq!(grown.code, Code::ExecuteSuccess);
        assert_eq!(decoded(&grown).services.len(), 2);
    }
}
