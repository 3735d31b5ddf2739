//! Polaris v1 messages as the HTTP API's JSON (Polaris's jsonpb): the request bodies
//! are written from the same proto messages the gRPC scenarios send, set fields only,
//! under their JSON names; of an answer only what the scenarios count is read.

use serde::de::IgnoredAny;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::health_check::HealthCheckType;
use crate::proto::{self, DiscoverRequest};

/// The body of a RegisterInstance, DeregisterInstance or Heartbeat request.
pub fn instance_body(instance: &proto::Instance) -> Vec<u8> {
    serde_json::to_vec(&InstanceJson(instance)).expect("an instance serialises")
}

/// The body of a Discover request.
pub fn discover_body(request: &DiscoverRequest) -> Vec<u8> {
    serde_json::to_vec(&DiscoverJson(request)).expect("a Discover request serialises")
}

/// What a scenario reads of a `Response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSummary {
    pub code: Option<u32>,
    /// The id of the answer's instance (a registration's answer carries it).
    pub instance_id: Option<String>,
}

/// Reads a `Response`; an error when the body is no JSON object (an answer from
/// something other than the Polaris API: a proxy, an unknown route).
pub fn response_summary(body: &[u8]) -> Result<ResponseSummary, serde_json::Error> {
    let answer: ResponseJson = serde_json::from_slice(body)?;
    Ok(ResponseSummary {
        code: answer.code,
        instance_id: answer.instance.and_then(|instance| instance.id),
    })
}

/// What a Discover poll counts of a `DiscoverResponse`: its code, the service's
/// revision, and how many instances it lists (read past, not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingSummary {
    pub code: Option<u32>,
    pub revision: Option<String>,
    pub instances: u64,
}

/// Reads a `DiscoverResponse`; an error when the body is no JSON object.
pub fn listing_summary(body: &[u8]) -> Result<ListingSummary, serde_json::Error> {
    let answer: ListingJson = serde_json::from_slice(body)?;
    Ok(ListingSummary {
        code: answer.code,
        revision: answer.service.and_then(|service| service.revision),
        instances: answer.instances.map_or(0, |listed| listed.len() as u64),
    })
}

/// Any JSON object with a `code` and an `instance` with an `id`; every other key is
/// skipped.
#[derive(Deserialize)]
struct ResponseJson {
    code: Option<u32>,
    instance: Option<IdJson>,
}

#[derive(Deserialize)]
struct IdJson {
    id: Option<String>,
}

/// Unset messages and wrappers come as `null`, read as `None`.
#[derive(Deserialize)]
struct ListingJson {
    code: Option<u32>,
    service: Option<RevisionJson>,
    instances: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct RevisionJson {
    revision: Option<String>,
}

/// An `Instance` under the JSON names of the proto (`logic_set`, `service_token` and
/// `vpc_id` keep theirs); unset fields are left out.
struct InstanceJson<'a>(&'a proto::Instance);

impl Serialize for InstanceJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let instance = self.0;
        let mut map = serializer.serialize_map(None)?;
        let texts = [
            ("id", &instance.id),
            ("service", &instance.service),
            ("namespace", &instance.namespace),
            ("vpc_id", &instance.vpc_id),
            ("host", &instance.host),
            ("protocol", &instance.protocol),
            ("version", &instance.version),
            ("logic_set", &instance.logic_set),
            ("ctime", &instance.ctime),
            ("mtime", &instance.mtime),
            ("revision", &instance.revision),
            ("service_token", &instance.service_token),
        ];
        write_set(&mut map, &texts)?;
        let numbers = [
            ("port", &instance.port),
            ("priority", &instance.priority),
            ("weight", &instance.weight),
        ];
        write_set(&mut map, &numbers)?;
        let flags = [
            ("enableHealthCheck", &instance.enable_health_check),
            ("healthy", &instance.healthy),
            ("isolate", &instance.isolate),
        ];
        write_set(&mut map, &flags)?;
        if let Some(health_check) = &instance.health_check {
            map.serialize_entry("healthCheck", &HealthCheckJson(health_check))?;
        }
        if let Some(location) = &instance.location {
            map.serialize_entry("location", &LocationJson(location))?;
        }
        if !instance.metadata.is_empty() {
            map.serialize_entry("metadata", &instance.metadata)?;
        }
        map.end()
    }
}

/// The type by its name (`HEARTBEAT`), as jsonpb writes enums.
struct HealthCheckJson<'a>(&'a proto::HealthCheck);

impl Serialize for HealthCheckJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let health_check = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &health_check_type_name(health_check.r#type))?;
        if let Some(heartbeat) = &health_check.heartbeat {
            map.serialize_entry("heartbeat", &TtlJson(heartbeat))?;
        }
        map.end()
    }
}

struct TtlJson<'a>(&'a proto::HeartbeatHealthCheck);

impl Serialize for TtlJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        write_set(&mut map, &[("ttl", &self.0.ttl)])?;
        map.end()
    }
}

struct LocationJson<'a>(&'a proto::Location);

impl Serialize for LocationJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let location = self.0;
        let mut map = serializer.serialize_map(None)?;
        let parts = [
            ("region", &location.region),
            ("zone", &location.zone),
            ("campus", &location.campus),
        ];
        write_set(&mut map, &parts)?;
        map.end()
    }
}

/// A `DiscoverRequest`: its type by name and the service's name, namespace and
/// revision, the only fields a loadgen request sets.
struct DiscoverJson<'a>(&'a DiscoverRequest);

impl Serialize for DiscoverJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let request = self.0;
        debug_assert!(request.filter.is_none(), "a filter is never sent");
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &discover_type_name(request.r#type))?;
        if let Some(service) = &request.service {
            map.serialize_entry("service", &ServiceJson(service))?;
        }
        map.end()
    }
}

struct ServiceJson<'a>(&'a proto::Service);

impl Serialize for ServiceJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let service = self.0;
        let mut map = serializer.serialize_map(None)?;
        let keys = [
            ("name", &service.name),
            ("namespace", &service.namespace),
            ("revision", &service.revision),
        ];
        write_set(&mut map, &keys)?;
        map.end()
    }
}

/// Writes the entries whose value is set.
fn write_set<M: SerializeMap, T: Serialize>(
    map: &mut M,
    entries: &[(&str, &Option<T>)],
) -> Result<(), M::Error> {
    for (key, value) in entries {
        if let Some(value) = value {
            map.serialize_entry(key, value)?;
        }
    }
    Ok(())
}

/// An enum value by name; a number the proto does not name goes as the number.
fn health_check_type_name(value: i32) -> EnumJson {
    HealthCheckType::try_from(value).map_or(EnumJson::Number(value), |known| {
        EnumJson::Name(known.as_str_name())
    })
}

fn discover_type_name(value: i32) -> EnumJson {
    DiscoverRequestType::try_from(value).map_or(EnumJson::Number(value), |known| {
        EnumJson::Name(known.as_str_name())
    })
}

/// jsonpb reads an enum as its name or its number.
#[derive(Serialize)]
#[serde(untagged)]
enum EnumJson {
    Name(&'static str),
    Number(i32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use crate::options::{FleetOptions, ServiceGridOptions};
    use crate::scenario::discover_stream::instances_request;
    use serde_json::{Value, json};

    fn fleet(ttl: u32) -> Fleet {
        Fleet::new(&FleetOptions {
            count: 10,
            grid: ServiceGridOptions {
                namespaces: 2,
                services: 3,
            },
            metadata: 2,
            metadata_size: 8,
            ttl,
            seed: 5,
        })
    }

    fn parsed(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_fleet_instance_is_sent_with_every_field_the_grpc_storm_sets() {
        let fleet = fleet(5);
        let instance = fleet.instance(4);
        let body = parsed(&instance_body(&instance));
        let metadata = fleet.metadata(4);
        assert_eq!(
            body,
            json!({
                "service": "loadgen-svc-2",
                "namespace": "loadgen-ns-0",
                "host": instance.host.as_deref().unwrap(),
                "port": instance.port.unwrap(),
                "protocol": "grpc",
                "version": "1.0.0",
                "weight": 100,
                "enableHealthCheck": true,
                "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 5}},
                "healthy": true,
                "metadata": {"k0": metadata["k0"], "k1": metadata["k1"]},
            })
        );
    }

    #[test]
    fn no_ttl_sends_no_health_check() {
        let body = parsed(&instance_body(&fleet(0).instance(1)));
        assert_eq!(body["enableHealthCheck"], json!(false));
        assert!(body.get("healthCheck").is_none());
        assert!(body.get("id").is_none(), "the server computes the id");
    }

    #[test]
    fn every_instance_field_has_its_json_name() {
        let text = |value: &str| Some(value.to_owned());
        let instance = proto::Instance {
            id: text("i"),
            vpc_id: text("v"),
            priority: Some(2),
            isolate: Some(false),
            location: Some(proto::Location {
                region: text("r"),
                zone: None,
                campus: text("c"),
            }),
            logic_set: text("l"),
            ctime: text("ct"),
            mtime: text("mt"),
            revision: text("rev"),
            service_token: text("t"),
            health_check: Some(proto::HealthCheck {
                r#type: 7,
                heartbeat: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            parsed(&instance_body(&instance)),
            json!({
                "id": "i", "vpc_id": "v", "priority": 2, "isolate": false,
                "location": {"region": "r", "campus": "c"},
                "logic_set": "l", "ctime": "ct", "mtime": "mt", "revision": "rev",
                "service_token": "t", "healthCheck": {"type": 7},
            })
        );
    }

    #[test]
    fn a_discover_request_names_its_type_and_service() {
        let request = instances_request("ns", "svc", Some("r1".to_owned()));
        assert_eq!(
            parsed(&discover_body(&request)),
            json!({"type": "INSTANCE", "service": {"name": "svc", "namespace": "ns", "revision": "r1"}})
        );
        let cold = instances_request("ns", "svc", None);
        assert_eq!(
            parsed(&discover_body(&cold)),
            json!({"type": "INSTANCE", "service": {"name": "svc", "namespace": "ns"}})
        );
    }

    #[test]
    fn a_response_code_is_read_whatever_else_the_answer_holds() {
        let answer = br#"{
 "code": 200000,
 "info": "execute success",
 "client": null,
 "instance": {"id": "abc", "service": "svc", "metadata": {}, "healthCheck": null}
}"#;
        let summary = |body: &[u8]| response_summary(body).unwrap();
        assert_eq!(
            summary(answer),
            ResponseSummary {
                code: Some(200000),
                instance_id: Some("abc".to_owned())
            }
        );
        assert_eq!(
            summary(br#"{"code":400201,"info":"existed"}"#),
            ResponseSummary {
                code: Some(400201),
                instance_id: None
            }
        );
        assert_eq!(
            summary(br#"{"code":200000,"instance":{"id":null}}"#).instance_id,
            None
        );
        assert_eq!(summary(br#"{"code":null,"instance":null}"#).code, None);
        assert_eq!(summary(b"{}").code, None);
        assert!(response_summary(b"404 page not found").is_err());
        assert!(response_summary(b"").is_err());
    }

    #[test]
    fn a_listing_is_counted_not_kept() {
        let instance = json!({"id": "a", "host": "10.0.0.1", "port": 1, "metadata": {"k0": "v"},
                              "healthCheck": null, "location": null});
        let full = json!({
            "code": 200000, "info": "ok", "type": "INSTANCE",
            "service": {"name": "svc", "namespace": "ns", "revision": "r9", "metadata": {}},
            "instances": [instance.clone(), instance.clone(), instance],
            "routing": null,
        });
        let summary = listing_summary(full.to_string().as_bytes()).unwrap();
        assert_eq!(
            summary,
            ListingSummary {
                code: Some(200000),
                revision: Some("r9".to_owned()),
                instances: 3
            }
        );
        let unchanged = json!({"code": 200001, "service": {"revision": "r9"}, "instances": []});
        let summary = listing_summary(unchanged.to_string().as_bytes()).unwrap();
        assert_eq!((summary.code, summary.instances), (Some(200001), 0));
        let unknown = json!({"code": 400202, "service": null, "instances": null});
        let summary = listing_summary(unknown.to_string().as_bytes()).unwrap();
        assert_eq!(
            summary,
            ListingSummary {
                code: Some(400202),
                revision: None,
                instances: 0
            }
        );
        assert!(listing_summary(b"<html>").is_err());
    }
}
