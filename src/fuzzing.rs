//! The fuzzing entry points: each takes the raw bytes of a request as its transport
//! receives them, runs the server's own decoding and handling on them, and panics when an
//! answer breaks a rule of the wire. The fuzz targets of `benches/fuzz` are one call each;
//! the property tests below run the same checks in the normal test run. Built only for
//! tests and with the `fuzzing` feature (which benches/fuzz turns on): the server never
//! holds it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::api::discover::{Incoming, answer};
use crate::api::http::json::{self, CLIENT, DISCOVER_REQUEST, INSTANCE};
use crate::api::wire::instance_from_wire;
use crate::code::Code;
use crate::discovery::cache::{InstanceFacts, RegistryCache};
use crate::discovery::{DEFAULT_NAMESPACE, Discovery};
use crate::naming::validate::{
    MAX_HOST_LEN, MAX_ID_LEN, MAX_LOCATION_LEN, MAX_LOGIC_SET_LEN, MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN, MAX_NAMESPACE_LEN, MAX_PORT, MAX_PROTOCOL_LEN,
    MAX_SERVICE_LEN, MAX_TTL_SECONDS, MAX_VERSION_LEN, MAX_VPC_ID_LEN, MAX_WEIGHT, deregister_id,
    heartbeat_id, register_record,
};
use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::discover_response::DiscoverResponseType;
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::store::{InstanceRecord, StoredService};

/// `RegisterInstance`, `DeregisterInstance` and `Heartbeat` on one message: decoded as
/// tonic's prost codec decodes it, converted as the gRPC adapter converts it, validated
/// and given its id as each method does. A record that passes validation keeps every
/// limit, and the three methods agree on the instance's id.
pub fn grpc_instance(message: &[u8]) {
    let Ok(wire) = proto::Instance::decode(message) else {
        return;
    };
    let input = instance_from_wire(wire);
    let deregister = deregister_id(&input);
    // Heartbeat refuses an empty id that DeregisterInstance ignores; where both take the
    // message, they name the same instance.
    if let (Ok(deregister), Ok(heartbeat)) = (&deregister, heartbeat_id(&input)) {
        assert_eq!(*deregister, heartbeat);
    }
    let Ok(record) = register_record(input) else {
        return;
    };
    assert_eq!(
        deregister.as_ref(),
        Ok(&record.id),
        "one id for both writes"
    );
    keeps_the_limits(&record);
    // The content revision the write path compares: 32 hex digits, the isolate flag part
    // of it.
    let revision = record.revision(false);
    assert_eq!(revision.len(), 32);
    assert_ne!(revision, record.revision(true));
}

/// Whether a namespace or service name is of Polaris's alphabet, `[0-9A-Za-z-./:_]+`.
fn is_name(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-./:_".contains(&b))
}

fn keeps_the_limits(record: &InstanceRecord) {
    assert!(!record.id.is_empty() && record.id.len() <= MAX_ID_LEN);
    assert!(is_name(&record.namespace, MAX_NAMESPACE_LEN));
    assert!(is_name(&record.service, MAX_SERVICE_LEN));
    assert!(!record.host.is_empty() && record.host.len() <= MAX_HOST_LEN);
    assert!(record.port <= MAX_PORT && record.weight <= MAX_WEIGHT);
    assert!(record.protocol.len() <= MAX_PROTOCOL_LEN);
    assert!(record.version.len() <= MAX_VERSION_LEN);
    assert!(record.logic_set.len() <= MAX_LOGIC_SET_LEN);
    assert!(record.vpc_id.len() <= MAX_VPC_ID_LEN);
    for part in [&record.region, &record.zone, &record.campus] {
        assert!(part.len() <= MAX_LOCATION_LEN);
    }
    assert!(record.metadata.len() <= MAX_METADATA_ENTRIES);
    for (key, value) in &record.metadata {
        assert!(!key.is_empty() && key.len() <= MAX_METADATA_KEY_LEN);
        assert!(value.len() <= MAX_METADATA_VALUE_LEN);
    }
    assert!(
        record.metadata.windows(2).all(|w| w[0].0 < w[1].0),
        "metadata sorted by key, keys unique"
    );
    assert_eq!(
        record.health_check_ttl.is_some(),
        record.enable_health_check
    );
    assert!(
        record
            .health_check_ttl
            .is_none_or(|ttl| (1..=MAX_TTL_SECONDS).contains(&ttl))
    );
}

/// The HTTP client API's JSON on one body, read as each message its routes take
/// (`Instance`, `DiscoverRequest`, `Client`) by the strict reader and by the lenient one.
/// Where both take the body they read the same message (a differential check); the route
/// reads the strict reading when there is one, else the lenient one; an `Instance` read
/// is written as JSON and read back unchanged.
pub fn http_json(body: &[u8]) {
    if let Some(instance) = readers_agree::<proto::Instance>(INSTANCE, body) {
        let written = json::encode(INSTANCE, &instance);
        let read: proto::Instance =
            json::decode(INSTANCE, &written).expect("the server reads what it writes");
        assert_eq!(read, instance, "{}", String::from_utf8_lossy(&written));
    }
    readers_agree::<proto::DiscoverRequest>(DISCOVER_REQUEST, body);
    readers_agree::<proto::Client>(CLIENT, body);
}

/// Checks the two readings of one message type; returns what the route read.
fn readers_agree<M>(full_name: &str, body: &[u8]) -> Option<M>
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let strict = json::read_strict::<M>(full_name, body);
    let lenient = json::read_lenient::<M>(full_name, body);
    let served = json::decode::<M>(full_name, body);
    match (strict, lenient) {
        (Some(strict), Ok(lenient)) => {
            assert_eq!(strict, lenient, "{full_name}: the two readers differ");
            assert_eq!(served.as_ref().ok(), Some(&strict), "{full_name}");
        }
        // The strict reader took the body: the route never reads it the lenient way.
        (Some(strict), Err(_)) => assert_eq!(served.as_ref().ok(), Some(&strict)),
        (None, lenient) => {
            let same = match (&served, &lenient) {
                (Ok(a), Ok(b)) => a == b,
                (Err(a), Err(b)) => a.to_string() == b.to_string(),
                _ => false,
            };
            assert!(
                same,
                "{full_name}: the route read the lenient way differently"
            );
        }
    }
    served.ok()
}

const TIME: &str = "2026-12-01 10:00:00.000";

/// `(namespace, service, instances)` of [`fleet`]: a service whose instances are healthy,
/// unhealthy and isolated, one without instances, and one in the default namespace.
const FLEET: &[(&str, &str, usize)] = &[
    ("prod", "pay.api", 3),
    ("prod", "empty", 0),
    (DEFAULT_NAMESPACE, "echo", 1),
];

/// A registry cache holding a few services, to answer [`discover_request`] from.
pub fn fleet() -> Discovery {
    let cache = Arc::new(RegistryCache::default());
    for (n, &(namespace, name, instances)) in FLEET.iter().enumerate() {
        let service = StoredService {
            id: format!("service-{n}"),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ctime: TIME.to_owned(),
            mtime: TIME.to_owned(),
        };
        cache.put_service(&service);
        for i in 0..instances {
            let record = InstanceRecord {
                id: format!("{name}-{i}"),
                namespace: namespace.to_owned(),
                service: name.to_owned(),
                vpc_id: String::new(),
                host: format!("10.0.0.{i}"),
                port: 8080,
                protocol: "grpc".to_owned(),
                version: "1.0".to_owned(),
                priority: 0,
                weight: 100,
                healthy: i != 1,
                isolate: None,
                enable_health_check: true,
                health_check_ttl: Some(5),
                logic_set: String::new(),
                region: "r".to_owned(),
                zone: "z".to_owned(),
                campus: "c".to_owned(),
                metadata: vec![("k".to_owned(), "v".to_owned())],
            };
            let isolate = i == 2;
            cache.put_instance(
                &service,
                InstanceFacts {
                    record: &record,
                    isolate,
                    revision: &record.revision(isolate),
                    ctime: TIME,
                    mtime: TIME,
                },
            );
        }
    }
    Discovery::new(cache)
}

/// One message of a gRPC Discover stream, decoded and answered as the stream does it,
/// from `discovery` (see [`fleet`]). Every answer decodes and carries a code and its
/// text, never a token; only a 200000 carries instances or services; a message that does
/// not decode is answered 400001; each request type gets its code; a full INSTANCE answer
/// lists every instance of the service at its current revision; asked again with the
/// revision of a full answer, the server answers 200001.
pub fn discover_request(discovery: &Discovery, message: &[u8]) {
    let (code, response) = discover_once(discovery, message);
    let Ok(request) = DiscoverRequest::decode(message) else {
        assert_eq!(code, Code::ParseException);
        return;
    };
    let requested = request.service.clone().unwrap_or_default();
    let name = requested.name.as_deref().unwrap_or("");
    let namespace = match requested.namespace.as_deref() {
        None | Some("") => DEFAULT_NAMESPACE,
        Some(namespace) => namespace,
    };
    let current = match DiscoverRequestType::try_from(request.r#type) {
        Ok(DiscoverRequestType::Instance) => {
            assert_eq!(response.r#type, DiscoverResponseType::Instance as i32);
            let entry = discovery.cache().service(namespace, name);
            let expected = match &entry {
                _ if name.is_empty() => Code::InvalidServiceName,
                None => Code::NotFoundResource,
                Some(entry)
                    if *entry.revision() == *requested.revision.as_deref().unwrap_or("") =>
                {
                    Code::DataNoChange
                }
                Some(_) => Code::ExecuteSuccess,
            };
            assert_eq!(code, expected);
            let (Some(entry), Code::ExecuteSuccess) = (entry, code) else {
                return;
            };
            let shown = response.service.expect("a full answer names its service");
            assert_eq!(
                (shown.namespace.as_deref(), shown.name.as_deref()),
                (Some(namespace), Some(name))
            );
            assert_eq!(shown.revision.as_deref(), Some(&*entry.revision()));
            assert_eq!(response.instances.len(), entry.instance_count());
            shown.revision
        }
        Ok(DiscoverRequestType::Services) => {
            assert_eq!(response.r#type, DiscoverResponseType::Services as i32);
            assert!(matches!(code, Code::ExecuteSuccess | Code::DataNoChange));
            let listed = requested.namespace.as_deref().unwrap_or("");
            for service in &response.services {
                assert!(listed.is_empty() || service.namespace.as_deref() == Some(listed));
            }
            if code != Code::ExecuteSuccess {
                return;
            }
            response.service.and_then(|s| s.revision)
        }
        Ok(
            rules @ (DiscoverRequestType::Routing
            | DiscoverRequestType::RateLimit
            | DiscoverRequestType::CircuitBreaker
            | DiscoverRequestType::FaultDetector),
        ) => {
            assert_eq!(code, Code::ExecuteSuccess);
            assert_eq!(response.r#type, rules as i32);
            return;
        }
        _ => {
            assert_eq!(code, Code::InvalidDiscoverResource);
            assert_eq!(response.r#type, DiscoverResponseType::Routing as i32);
            return;
        }
    };
    // Asked again with the revision just answered: nothing has changed.
    let mut again = request;
    again.service.get_or_insert_default().revision = current;
    let (code, _) = discover_once(discovery, &again.encode_to_vec());
    assert_eq!(code, Code::DataNoChange);
}

/// Answers one message; checks what every answer keeps.
fn discover_once(discovery: &Discovery, message: &[u8]) -> (Code, DiscoverResponse) {
    let answered = answer(discovery, Incoming::decode(Bytes::copy_from_slice(message)));
    let response =
        DiscoverResponse::decode(answered.bytes.to_bytes()).expect("every answer decodes");
    assert_eq!(
        response.code,
        Some(answered.code.as_u32()),
        "a code is always set"
    );
    assert!(
        !response.info.as_deref().unwrap_or("").is_empty(),
        "with its text"
    );
    if let Some(service) = &response.service {
        assert_eq!(service.token, None, "a token is never echoed");
    }
    if answered.code != Code::ExecuteSuccess {
        assert!(response.instances.is_empty() && response.services.is_empty());
    }
    (answered.code, response)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::LazyLock;

    use proptest::collection::{hash_map, vec};
    use proptest::option::of;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    static FLEET_DISCOVERY: LazyLock<Discovery> = LazyLock::new(fleet);

    /// Every seed of a target's committed corpus (benches/fuzz/corpus/TARGET): the inputs
    /// a fuzz run found, once fixed, stay checked here.
    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/fuzz/corpus")
            .join(target);
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 5, "{target}: a seed corpus of a few inputs");
        seeds
    }

    #[test]
    fn every_seed_of_the_corpus_passes_its_checks() {
        for seed in seeds("grpc_instance") {
            grpc_instance(&seed);
        }
        for seed in seeds("http_json") {
            http_json(&seed);
        }
        for seed in seeds("discover_request") {
            discover_request(&FLEET_DISCOVERY, &seed);
        }
    }

    #[test]
    fn the_seeds_reach_past_the_decoders() {
        // A seed corpus of inputs the decoders refuse would fuzz nothing but them.
        let registered = seeds("grpc_instance")
            .iter()
            .filter_map(|seed| proto::Instance::decode(seed.as_slice()).ok())
            .filter(|wire| register_record(instance_from_wire(wire.clone())).is_ok())
            .count();
        assert!(registered >= 3, "{registered} seeds register");
        let read = seeds("http_json")
            .iter()
            .filter(|seed| json::decode::<proto::Instance>(INSTANCE, seed).is_ok())
            .count();
        assert!(read >= 5, "{read} JSON seeds read as an Instance");
        let full = seeds("discover_request")
            .iter()
            .filter(|seed| {
                let answered = answer(
                    &FLEET_DISCOVERY,
                    Incoming::decode(Bytes::copy_from_slice(seed)),
                );
                answered.code == Code::ExecuteSuccess
            })
            .count();
        assert!(full >= 3, "{full} seeds answered 200000");
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        of(prop_oneof!["[a-z0-9.:_/-]{0,12}", ".{0,12}"])
    }

    prop_compose! {
        fn wire_instance()(
            (id, service, namespace, host, protocol, version, logic_set, vpc_id, service_token)
                in (text(), text(), text(), text(), text(), text(), text(), text(), text()),
            (port, priority, weight) in (of(any::<u32>()), of(any::<u32>()), of(0u32..70_000)),
            (healthy, isolate, enable_health_check) in (of(any::<bool>()), of(any::<bool>()), of(any::<bool>())),
            health_check in of((0i32..3, of(of(0u32..100)))),
            location in of((text(), text(), text())),
            metadata in hash_map(".{0,8}", ".{0,16}", 0..6),
        ) -> proto::Instance {
            proto::Instance {
                id, service, namespace, host, port, protocol, version, priority, weight,
                healthy, isolate, enable_health_check, logic_set, vpc_id, service_token,
                health_check: health_check.map(|(kind, ttl)| proto::HealthCheck {
                    r#type: kind,
                    heartbeat: ttl.map(|ttl| proto::HeartbeatHealthCheck { ttl }),
                }),
                location: location.map(|(region, zone, campus)| proto::Location { region, zone, campus }),
                metadata,
                ctime: None,
                mtime: None,
                revision: None,
            }
        }
    }

    /// The keys of the messages the JSON readers take, by JSON and by proto name, and a
    /// few that name nothing.
    const KEYS: &[&str] = &[
        "id",
        "service",
        "namespace",
        "host",
        "port",
        "protocol",
        "version",
        "priority",
        "weight",
        "healthCheck",
        "health_check",
        "healthy",
        "isolate",
        "location",
        "metadata",
        "logic_set",
        "logicSet",
        "ctime",
        "revision",
        "service_token",
        "enableHealthCheck",
        "enable_health_check",
        "vpc_id",
        "vpcId",
        "type",
        "heartbeat",
        "ttl",
        "region",
        "zone",
        "campus",
        "name",
        "Filter",
        "OnlyHealthyInstance",
        "nosuch",
        "",
    ];

    /// JSON bodies shaped like the messages: known and unknown keys, values of every
    /// type, enum names, nulls, nesting.
    fn json_body() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop_oneof![
                Just("HEARTBEAT".to_owned()),
                Just("INSTANCE".to_owned()),
                Just("SDK".to_owned()),
                Just("1".to_owned()),
                ".{0,8}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(key, value)| (key.to_owned(), value))
                            .collect(),
                    )
                }),
            ]
        })
    }

    prop_compose! {
        fn discover_message()(
            kind in prop_oneof![0i32..14, Just(100), any::<i32>()],
            service in of((
                of(prop_oneof![Just("pay.api".to_owned()), Just("echo".to_owned()), Just("empty".to_owned()), ".{0,6}"]),
                of(prop_oneof![Just("prod".to_owned()), Just(String::new()), Just("default".to_owned()), ".{0,6}"]),
                of(prop_oneof![Just(cache_revision()), ".{0,40}"]),
                of(".{0,6}"),
            )),
            healthy_only in of(any::<bool>()),
        ) -> Vec<u8> {
            DiscoverRequest {
                r#type: kind,
                service: service.map(|(name, namespace, revision, token)| proto::Service {
                    name,
                    namespace,
                    revision,
                    token,
                    ..proto::Service::default()
                }),
                filter: healthy_only.map(|only_healthy_instance| proto::DiscoverFilter { only_healthy_instance }),
            }
            .encode_to_vec()
        }
    }

    /// The current revision of `prod/pay.api`.
    fn cache_revision() -> String {
        FLEET_DISCOVERY
            .cache()
            .service("prod", "pay.api")
            .expect("in the fleet")
            .revision()
            .to_string()
    }

    proptest! {
        #[test]
        fn any_bytes_pass_the_instance_checks(bytes in vec(any::<u8>(), 0..256)) {
            grpc_instance(&bytes);
        }

        #[test]
        fn damaged_instances_pass_the_instance_checks(
            instance in wire_instance(),
            damage in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            keep in any::<prop::sample::Index>(),
        ) {
            let mut bytes = instance.encode_to_vec();
            grpc_instance(&bytes);
            if !bytes.is_empty() {
                for (at, byte) in damage {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                grpc_instance(&bytes);
                bytes.truncate(keep.index(bytes.len()));
                grpc_instance(&bytes);
            }
        }

        #[test]
        fn any_bytes_pass_the_json_checks(bytes in vec(any::<u8>(), 0..128)) {
            http_json(&bytes);
        }

        #[test]
        fn json_shaped_bodies_pass_the_json_checks(body in json_body()) {
            http_json(body.to_string().as_bytes());
        }

        #[test]
        fn instances_round_trip_through_json_and_both_readers_take_them(instance in wire_instance()) {
            let written = json::encode(INSTANCE, &instance);
            let strict: Option<proto::Instance> = json::read_strict(INSTANCE, &written);
            prop_assert_eq!(strict.as_ref(), Some(&instance));
            let lenient: proto::Instance = json::read_lenient(INSTANCE, &written).unwrap();
            prop_assert_eq!(&lenient, &instance);
            http_json(&written);
            // The same body with nulls and keys that name nothing: only the lenient
            // reader takes it, and reads the same instance.
            let mut padded: serde_json::Map<String, Value> = serde_json::from_slice(&written).unwrap();
            padded.insert("nosuch".to_owned(), serde_json::json!({"a": [1, null]}));
            let padded = serde_json::to_vec(&padded).unwrap();
            prop_assert_eq!(json::read_strict::<proto::Instance>(INSTANCE, &padded), None);
            prop_assert_eq!(json::decode::<proto::Instance>(INSTANCE, &padded).unwrap(), instance);
        }

        #[test]
        fn any_bytes_pass_the_discover_checks(bytes in vec(any::<u8>(), 0..96)) {
            discover_request(&FLEET_DISCOVERY, &bytes);
        }

        #[test]
        fn discover_requests_pass_the_discover_checks(message in discover_message()) {
            discover_request(&FLEET_DISCOVERY, &message);
        }
    }
}
