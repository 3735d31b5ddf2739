//! The HTTP client API (`POST /v1/...`) over real HTTP against an in-process server on the
//! SQLite store: Polaris's JSON in and out, read back by a client that knows only the field
//! names POLARIS.md gives (§0.2, §0.3, §0.5–0.7), the status and headers of every answer,
//! each route's answers, and the rows in the database.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::http::{Api, header_of, raw_exchange};
use common::polaris_json::{
    Answer, CLIENT_KEYS, DISCOVER_KEYS, HEALTH_CHECK_KEYS, HEARTBEAT_KEYS, HealthCheck, Heartbeat,
    Instance, LOCATION_KEYS, Location, RESPONSE_KEYS, SERVICE_KEYS, assert_instance_keys,
    assert_keys,
};
use common::{TestServer, deregistered, metadata, ttl};
use serde_json::{Value, json};

const SUCCESS: u32 = 200_000;
const NO_CHANGE: u32 = 200_001;
const BAD_REQUEST: u32 = 400_000;
const PARSE: u32 = 400_001;
const EMPTY: u32 = 400_002;
const BAD_DISCOVER_TYPE: u32 = 400_004;
const BAD_SERVICE: u32 = 400_120;
const EXISTED: u32 = 400_201;
const NOT_FOUND: u32 = 400_202;
const NOT_ALLOWED: u32 = 401_001;
const NO_TOKEN: u32 = 401_002;

// ---- The store --------------------------------------------------------------------

/// Every stored column of a live instance, its health check and its metadata.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    namespace: String,
    service: String,
    vpc_id: String,
    host: String,
    port: u32,
    protocol: String,
    version: String,
    priority: u32,
    weight: u32,
    healthy: bool,
    isolate: bool,
    enable_health_check: bool,
    logic_set: String,
    region: String,
    zone: String,
    campus: String,
    ttl: Option<u32>,
    metadata: Vec<(String, String)>,
    revision: String,
    ctime: String,
    mtime: String,
}

impl Stored {
    /// What a request decides, without what the server sets (revision, times).
    fn content(&self) -> Stored {
        Stored {
            revision: String::new(),
            ctime: String::new(),
            mtime: String::new(),
            ..self.clone()
        }
    }
}

fn stored(db: &rusqlite::Connection, id: &str) -> Option<Stored> {
    let found = db
        .query_row(
            "SELECT s.namespace, s.name, i.vpc_id, i.host, i.port, i.protocol, i.version,
                    i.priority, i.weight, i.health_status, i.isolate, i.enable_health_check,
                    i.logic_set, i.cmdb_region, i.cmdb_zone, i.cmdb_idc, i.revision, i.ctime,
                    i.mtime
             FROM instance i JOIN service s ON s.id = i.service_id
             WHERE i.id = ?1 AND i.flag = 0",
            [id],
            |r| {
                Ok(Stored {
                    namespace: r.get(0)?,
                    service: r.get(1)?,
                    vpc_id: r.get(2)?,
                    host: r.get(3)?,
                    port: r.get(4)?,
                    protocol: r.get(5)?,
                    version: r.get(6)?,
                    priority: r.get(7)?,
                    weight: r.get(8)?,
                    healthy: r.get(9)?,
                    isolate: r.get(10)?,
                    enable_health_check: r.get(11)?,
                    logic_set: r.get(12)?,
                    region: r.get(13)?,
                    zone: r.get(14)?,
                    campus: r.get(15)?,
                    ttl: None,
                    metadata: Vec::new(),
                    revision: r.get(16)?,
                    ctime: r.get(17)?,
                    mtime: r.get(18)?,
                })
            },
        )
        .ok()?;
    Some(Stored {
        ttl: ttl(db, id),
        metadata: metadata(db, id),
        ..found
    })
}

/// The rows of every table a write touches.
fn rows(t: &TestServer) -> [(&'static str, i64); 5] {
    [
        "namespace",
        "service",
        "instance",
        "health_check",
        "instance_metadata",
    ]
    .map(|table| (table, t.count(table)))
}

const NOTHING: [(&str, i64); 5] = [
    ("namespace", 0),
    ("service", 0),
    ("instance", 0),
    ("health_check", 0),
    ("instance_metadata", 0),
];

/// Polaris's instance id, computed here: sha1 of `ns##svc##host##port`, with the vpc_id
/// before the host when there is one.
fn polaris_id(namespace: &str, service: &str, vpc_id: &str, host: &str, port: u32) -> String {
    use sha1::Digest;
    let key = if vpc_id.is_empty() {
        format!("{namespace}##{service}##{host}##{port}")
    } else {
        format!("{namespace}##{service}##{vpc_id}##{host}##{port}")
    };
    hex::encode(sha1::Sha1::digest(key.as_bytes()))
}

/// A register body with JSON names: 2 metadata entries, a heartbeat ttl of 5 s.
fn instance_json(namespace: &str, service: &str, host: &str, port: u32) -> Value {
    json!({
        "namespace": namespace,
        "service": service,
        "host": host,
        "port": port,
        "protocol": "http",
        "version": "1.0.0",
        "enableHealthCheck": true,
        "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 5}},
        "metadata": {"env": "test", "idx": port.to_string()},
    })
}

/// `body` with the keys of `changes` set (`null` removes a key).
fn with(body: &Value, changes: Value) -> Value {
    let mut changed = body.clone();
    let object = changed.as_object_mut().unwrap();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            object.remove(key);
        } else {
            object.insert(key.clone(), value.clone());
        }
    }
    changed
}

// ---- The tests --------------------------------------------------------------------

#[tokio::test]
async fn json_names_and_proto_names_store_the_same_rows() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let id = polaris_id("http", "json", "vpc-1", "10.1.0.1", 8080);

    // JSON names, enums by name, wrappers as plain values.
    let camel = json!({
        "namespace": "http",
        "service": "json",
        "vpc_id": "vpc-1",
        "host": "10.1.0.1",
        "port": 8080,
        "protocol": "grpc",
        "version": "1.2.3",
        "priority": 3,
        "weight": 7,
        "enableHealthCheck": true,
        "healthCheck": {"type": "HEARTBEAT", "heartbeat": {"ttl": 9}},
        "healthy": true,
        "isolate": true,
        "location": {"region": "r1", "zone": "z1", "campus": "c1"},
        "metadata": {"env": "test", "empty": ""},
        "logic_set": "set-1",
    });
    let reply = api.register(&camel).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let echoed = reply.answer().instance.expect("the instance echoed");
    assert_eq!(echoed.id.as_deref(), Some(id.as_str()));
    assert_eq!(
        (
            echoed.namespace.as_deref(),
            echoed.service.as_deref(),
            echoed.vpc_id.as_deref(),
            echoed.host.as_deref(),
            echoed.port
        ),
        (
            Some("http"),
            Some("json"),
            Some("vpc-1"),
            Some("10.1.0.1"),
            Some(8080)
        )
    );
    let db = t.db();
    let first = stored(&db, &id).expect("stored");
    let expected = Stored {
        namespace: "http".into(),
        service: "json".into(),
        vpc_id: "vpc-1".into(),
        host: "10.1.0.1".into(),
        port: 8080,
        protocol: "grpc".into(),
        version: "1.2.3".into(),
        priority: 3,
        weight: 7,
        healthy: true,
        isolate: true,
        enable_health_check: true,
        logic_set: "set-1".into(),
        region: "r1".into(),
        zone: "z1".into(),
        campus: "c1".into(),
        ttl: Some(9),
        metadata: vec![
            ("empty".into(), String::new()),
            ("env".into(), "test".into()),
        ],
        revision: String::new(),
        ctime: String::new(),
        mtime: String::new(),
    };
    assert_eq!(first.content(), expected);
    assert_eq!(t.live_instances(), 1);

    // The same instance with proto names, enums by number, nulls for fields left unset
    // and for a map value, unknown keys at every depth: read as the same request, so the
    // unchanged re-registration writes nothing.
    let proto = json!({
        "namespace": "http",
        "service": "json",
        "vpc_id": "vpc-1",
        "host": "10.1.0.1",
        "port": 8080,
        "protocol": "grpc",
        "version": "1.2.3",
        "priority": 3,
        "weight": 7,
        "enable_health_check": true,
        "health_check": {"type": 1, "heartbeat": {"ttl": 9, "unknown": 1}, "also": "x"},
        "healthy": true,
        "isolate": true,
        "location": {"region": "r1", "zone": "z1", "campus": "c1", "city": "nowhere"},
        "metadata": {"env": "test", "empty": null},
        "logic_set": "set-1",
        "id": null,
        "service_token": null,
        "ctime": null,
        "nosuch": {"deep": [1, {"x": null}]},
        "anotherOne": 5,
    });
    let reply = api.register(&proto).await;
    assert_eq!(reply.code(), EXISTED, "{}", reply.text);
    assert_eq!(
        reply.answer().instance.unwrap().id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(stored(&db, &id), Some(first.clone()), "nothing rewritten");

    // Numbers may be strings too (proto3 JSON): still the same request.
    let quoted = with(
        &camel,
        json!({"port": "8080", "weight": "7", "priority": "3"}),
    );
    let reply = api.register(&quoted).await;
    assert_eq!(reply.code(), EXISTED, "{}", reply.text);
    assert_eq!(stored(&db, &id), Some(first));

    // `null` everywhere: the defaults, and a null map value stored as "".
    let nulls = json!({
        "namespace": "http",
        "service": "json",
        "host": "10.1.0.1",
        "port": 8081,
        "id": null,
        "vpc_id": null,
        "protocol": null,
        "version": null,
        "priority": null,
        "weight": null,
        "enableHealthCheck": null,
        "healthCheck": null,
        "healthy": null,
        "isolate": null,
        "location": null,
        "metadata": {"k": null},
        "logic_set": null,
        "service_token": null,
    });
    let reply = api.register(&nulls).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let defaults_id = polaris_id("http", "json", "", "10.1.0.1", 8081);
    assert_eq!(
        reply.answer().instance.unwrap().id.as_deref(),
        Some(defaults_id.as_str())
    );
    let defaults = stored(&db, &defaults_id).expect("stored");
    assert_eq!(
        defaults.content(),
        Stored {
            namespace: "http".into(),
            service: "json".into(),
            vpc_id: String::new(),
            host: "10.1.0.1".into(),
            port: 8081,
            protocol: String::new(),
            version: String::new(),
            priority: 0,
            weight: 100,
            healthy: true,
            isolate: false,
            enable_health_check: false,
            logic_set: String::new(),
            region: String::new(),
            zone: String::new(),
            campus: String::new(),
            ttl: None,
            metadata: vec![("k".into(), String::new())],
            revision: String::new(),
            ctime: String::new(),
            mtime: String::new(),
        }
    );
    assert_eq!(t.live_instances(), 2);
    assert_eq!(t.count("instance_metadata"), 3);
    t.server.shutdown().await.unwrap();
}

/// Each bad field of a register request (src/naming/validate.rs), its Polaris code.
fn bad_registrations() -> Vec<(&'static str, Value, u32)> {
    let good = instance_json("default", "echo", "10.0.0.1", 8080);
    let bad = |what, changes: Value, code| (what, with(&good, changes), code);
    let many: serde_json::Map<String, Value> =
        (0..65).map(|n| (format!("k{n}"), json!("v"))).collect();
    vec![
        ("empty", json!({}), EMPTY),
        ("nulls only", json!({"host": null, "port": null}), EMPTY),
        ("a null body", Value::Null, EMPTY),
        bad("no namespace", json!({"namespace": null}), 400_110),
        bad("empty namespace", json!({"namespace": ""}), 400_110),
        bad("bad namespace", json!({"namespace": "bad ns!"}), 400_110),
        bad(
            "long namespace",
            json!({"namespace": "n".repeat(65)}),
            400_110,
        ),
        bad("no service", json!({"service": null}), BAD_SERVICE),
        bad("bad service", json!({"service": "svc#1"}), BAD_SERVICE),
        bad(
            "long service",
            json!({"service": "s".repeat(129)}),
            BAD_SERVICE,
        ),
        bad("long id", json!({"id": "i".repeat(129)}), 400_130),
        bad("no host", json!({"host": null}), 400_131),
        bad("empty host", json!({"host": ""}), 400_131),
        bad("long host", json!({"host": "h".repeat(129)}), 400_131),
        bad("no port", json!({"port": null}), 400_132),
        bad("port too big", json!({"port": 65_536}), 400_132),
        bad(
            "long protocol",
            json!({"protocol": "p".repeat(33)}),
            400_136,
        ),
        bad("long version", json!({"version": "v".repeat(33)}), 400_137),
        bad(
            "long logic_set",
            json!({"logic_set": "l".repeat(129)}),
            400_138,
        ),
        bad("too much metadata", json!({"metadata": many}), 400_150),
        bad(
            "long metadata key",
            json!({"metadata": {"k".repeat(129): "v"}}),
            400_150,
        ),
        bad(
            "long metadata value",
            json!({"metadata": {"k": "v".repeat(4097)}}),
            400_150,
        ),
        bad(
            "empty metadata key",
            json!({"metadata": {"": "v"}}),
            400_150,
        ),
        bad("weight too big", json!({"weight": 65_536}), 400_103),
        bad("long vpc_id", json!({"vpc_id": "x".repeat(65)}), 400_103),
        bad(
            "long location",
            json!({"location": {"zone": "z".repeat(129)}}),
            400_103,
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_is_a_400_with_both_headers_and_nothing_written() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    for (what, body, expected) in bad_registrations() {
        let reply = api.register(&body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        assert_eq!(reply.code(), expected, "{what}: {}", reply.text);
        assert!(!reply.info().is_empty(), "{what}: info says why");
        assert!(
            reply.header("x-polaris-code").is_some() && reply.header("x-polaris-message").is_some(),
            "{what}"
        );
        let answer = reply.answer();
        assert_eq!(answer.code, expected, "{what}");
        assert!(answer.instance.is_some(), "{what}: the instance echoed");
        assert_eq!(rows(&t), NOTHING, "{what}: nothing written");
    }

    // Deregister and Heartbeat refuse what names no instance, with the same answers.
    let cases = [
        ("DeregisterInstance", json!({}), EMPTY),
        (
            "DeregisterInstance",
            json!({"namespace": "default"}),
            BAD_SERVICE,
        ),
        (
            "DeregisterInstance",
            with(
                &instance_json("default", "echo", "10.0.0.1", 1),
                json!({"port": null}),
            ),
            400_132,
        ),
        ("Heartbeat", json!({}), EMPTY),
        ("Heartbeat", json!({"id": ""}), 400_130),
        (
            "Heartbeat",
            json!({"namespace": "default", "host": "h", "port": 1}),
            BAD_SERVICE,
        ),
    ];
    for (route, body, expected) in cases {
        let reply = api.json(route, &body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, expected),
            "{route} {body}: {}",
            reply.text
        );
        assert_eq!(reply.answer().code, expected);
    }
    assert_eq!(rows(&t), NOTHING);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_id_is_echoed_on_every_answer() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let good = instance_json("rid", "svc", "10.0.0.1", 1).to_string();
    let cases: [(&str, String, u32); 6] = [
        ("RegisterInstance", good.clone(), SUCCESS),
        ("RegisterInstance", good.clone(), EXISTED),
        ("RegisterInstance", "{\"host\": ".to_owned(), PARSE),
        ("Heartbeat", good.clone(), SUCCESS),
        (
            "Discover",
            json!({"type": "INSTANCE", "service": {"namespace": "rid", "name": "svc"}}).to_string(),
            SUCCESS,
        ),
        ("ReportClient", "{}".to_owned(), SUCCESS),
    ];
    for (n, (route, body, expected)) in cases.into_iter().enumerate() {
        let request_id = format!("req-{n}-{route}");
        let reply = api
            .post(route, body.clone(), &[("Request-Id", &request_id)])
            .await;
        assert_eq!(reply.code(), expected, "{route}: {}", reply.text);
        assert_eq!(
            reply.header("request-id"),
            Some(request_id.as_str()),
            "{route}"
        );
        let without = api.post(route, body, &[]).await;
        assert_eq!(without.header("request-id"), None, "{route}");
    }
    assert_eq!(t.live_instances(), 1);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn report_client_tells_the_host_and_echoes_the_location() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);

    // No host: the peer's address.
    let reply = api.json("ReportClient", &json!({})).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_keys(&reply.json, &RESPONSE_KEYS, "ReportClient answer");
    assert_keys(&reply.json["client"], &CLIENT_KEYS, "client");
    let answer = reply.answer();
    assert!(answer.instance.is_none());
    let client = answer.client.expect("the client");
    assert_eq!(client.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(client.location, None);
    let empty_host = api.json("ReportClient", &json!({"host": ""})).await;
    assert_eq!(
        empty_host.answer().client.unwrap().host.as_deref(),
        Some("127.0.0.1")
    );

    // Its own host and location, without an id: those two told back.
    let location = json!({"region": "r1", "zone": "z1", "campus": "c1"});
    let reply = api
        .json(
            "ReportClient",
            &json!({"host": "10.9.8.7", "type": "SDK", "version": "1.5.0", "location": location}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let client = reply.answer().client.unwrap();
    assert_eq!(client.host.as_deref(), Some("10.9.8.7"));
    let expected_location = Location {
        region: Some("r1".into()),
        zone: Some("z1".into()),
        campus: Some("c1".into()),
    };
    assert_eq!(client.location, Some(expected_location.clone()));
    assert_eq!((client.id, client.version), (None, None));

    // With an id: the report echoed, the type given by number read back by name.
    let reply = api
        .json(
            "ReportClient",
            &json!({"id": "client-1", "type": 1, "version": "1.5.0", "location": location}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let client = reply.answer().client.unwrap();
    assert_eq!(client.id.as_deref(), Some("client-1"));
    assert_eq!(client.kind, "SDK");
    assert_eq!(client.version.as_deref(), Some("1.5.0"));
    assert_eq!(client.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(client.location, Some(expected_location));
    assert_eq!(rows(&t), NOTHING, "a report stores nothing");
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn discover_answers_instances_services_and_bad_requests() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let mut up = instance_json("disc", "svc", "10.5.0.1", 1);
    up["location"] = json!({"region": "r1", "zone": "z1", "campus": "c1"});
    up["logic_set"] = json!("set-a");
    up["priority"] = json!(2);
    up["service_token"] = json!("secret");
    // Registered unhealthy, without a health check that could change that.
    let down = json!({
        "namespace": "disc", "service": "svc", "host": "10.5.0.2", "port": 2,
        "healthy": false, "weight": 50,
    });
    for body in [&up, &down, &instance_json("other", "x", "10.5.0.3", 3)] {
        let reply = api.register(body).await;
        assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    }
    let up_id = polaris_id("disc", "svc", "", "10.5.0.1", 1);
    let down_id = polaris_id("disc", "svc", "", "10.5.0.2", 2);
    let db = t.db();
    assert!(!stored(&db, &down_id).unwrap().healthy);

    // INSTANCE: the service and both instances, the unhealthy one too.
    let ask = json!({"type": "INSTANCE", "service": {"namespace": "disc", "name": "svc"}});
    let reply = api.json("Discover", &ask).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let answer = reply.discover();
    assert_eq!(answer.code, SUCCESS);
    assert_eq!(answer.kind, "INSTANCE");
    assert_eq!(answer.info, "execute success");
    let service = answer.service.clone().expect("the service");
    assert_eq!(service.name.as_deref(), Some("svc"));
    assert_eq!(service.namespace.as_deref(), Some("disc"));
    assert_eq!(service.token, None);
    let revision = service.revision.clone().expect("a revision");
    assert_eq!(revision.len(), 40, "{revision}");
    let listed: HashMap<String, Instance> = answer
        .instances
        .iter()
        .map(|i| (i.id.clone().unwrap(), i.clone()))
        .collect();
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([up_id.clone(), down_id.clone()])
    );
    let got = &listed[&up_id];
    let row = stored(&db, &up_id).unwrap();
    assert_eq!((got.host.as_deref(), got.port), (Some("10.5.0.1"), Some(1)));
    assert_eq!(
        (got.service.as_deref(), got.namespace.as_deref()),
        (Some("svc"), Some("disc"))
    );
    assert_eq!(
        (got.protocol.as_deref(), got.version.as_deref()),
        (Some("http"), Some("1.0.0"))
    );
    assert_eq!((got.priority, got.weight), (Some(2), Some(100)));
    assert_eq!(
        (got.healthy, got.isolate, got.enable_health_check),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(
        got.health_check,
        Some(HealthCheck {
            kind: "HEARTBEAT".into(),
            heartbeat: Some(Heartbeat { ttl: Some(5) }),
        })
    );
    assert_eq!(
        got.location,
        Some(Location {
            region: Some("r1".into()),
            zone: Some("z1".into()),
            campus: Some("c1".into()),
        })
    );
    assert_eq!(
        got.metadata,
        HashMap::from([
            ("env".to_owned(), "test".to_owned()),
            ("idx".to_owned(), "1".to_owned())
        ])
    );
    assert_eq!(got.logic_set.as_deref(), Some("set-a"));
    assert_eq!(got.vpc_id.as_deref(), Some(""));
    assert_eq!(got.revision.as_deref(), Some(row.revision.as_str()));
    assert_eq!(got.ctime.as_deref(), Some(&row.ctime[..19]));
    assert_eq!(got.mtime.as_deref(), Some(&row.mtime[..19]));
    assert_eq!(got.service_token, None, "the token is never sent");
    let unhealthy = &listed[&down_id];
    assert_eq!(
        (unhealthy.healthy, unhealthy.weight),
        (Some(false), Some(50))
    );

    // The same revision (the type by number): nothing to send.
    let current =
        json!({"type": 1, "service": {"namespace": "disc", "name": "svc", "revision": revision}});
    let reply = api.json("Discover", &current).await;
    assert_eq!(
        (reply.status, reply.code()),
        (200, NO_CHANGE),
        "{}",
        reply.text
    );
    let answer = reply.discover();
    assert_eq!(answer.kind, "INSTANCE");
    assert!(answer.instances.is_empty());
    assert_eq!(answer.service.unwrap().name.as_deref(), Some("svc"));

    // OnlyHealthyInstance leaves the unhealthy instance out; the revision is the service's.
    let healthy_only = with(&ask, json!({"Filter": {"OnlyHealthyInstance": true}}));
    let reply = api.json("Discover", &healthy_only).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let answer = reply.discover();
    let ids: Vec<_> = answer
        .instances
        .iter()
        .map(|i| i.id.clone().unwrap())
        .collect();
    assert_eq!(ids, [up_id.as_str()]);
    assert_eq!(
        answer.service.unwrap().revision.as_deref(),
        Some(revision.as_str())
    );
    // ... and the revision is still checked first, as Polaris does.
    let healthy_current = with(&current, json!({"Filter": {"OnlyHealthyInstance": true}}));
    let reply = api.json("Discover", &healthy_current).await;
    assert_eq!(reply.code(), NO_CHANGE, "{}", reply.text);
    assert!(reply.discover().instances.is_empty());
    // The filter off: both.
    let everything = with(&ask, json!({"Filter": {"OnlyHealthyInstance": false}}));
    let reply = api.json("Discover", &everything).await;
    assert_eq!(reply.discover().instances.len(), 2, "{}", reply.text);

    // An unknown service: 400202 with the service echoed (never its token).
    let unknown = json!({"type": "INSTANCE", "service": {"namespace": "disc", "name": "nosuch", "token": "secret"}});
    let reply = api.json("Discover", &unknown).await;
    assert_eq!(
        (reply.status, reply.code()),
        (400, NOT_FOUND),
        "{}",
        reply.text
    );
    let answer = reply.discover();
    assert_eq!(answer.kind, "INSTANCE");
    assert!(answer.instances.is_empty());
    let echoed = answer.service.unwrap();
    assert_eq!(
        (echoed.name.as_deref(), echoed.namespace.as_deref()),
        (Some("nosuch"), Some("disc"))
    );
    assert_eq!(echoed.token, None);
    // No namespace means "default", where svc is not.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "INSTANCE", "service": {"name": "svc"}}),
        )
        .await;
    assert_eq!(reply.code(), NOT_FOUND, "{}", reply.text);
    assert_eq!(
        reply.discover().service.unwrap().namespace.as_deref(),
        Some("default")
    );
    // No service name.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "INSTANCE", "service": {"namespace": "disc"}}),
        )
        .await;
    assert_eq!(reply.code(), BAD_SERVICE, "{}", reply.text);

    // SERVICES of one namespace, then of all, then the same revision.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "SERVICES", "service": {"namespace": "disc"}}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let answer = reply.discover();
    assert_eq!(answer.kind, "SERVICES");
    let names: Vec<_> = answer
        .services
        .iter()
        .map(|s| (s.namespace.clone().unwrap(), s.name.clone().unwrap()))
        .collect();
    assert_eq!(names, [("disc".to_owned(), "svc".to_owned())]);
    let services_revision = answer.service.unwrap().revision.expect("a revision");
    let reply = api
        .json("Discover", &json!({"type": 6, "service": {}}))
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let all: BTreeSet<_> = reply
        .discover()
        .services
        .iter()
        .map(|s| (s.namespace.clone().unwrap(), s.name.clone().unwrap()))
        .collect();
    assert_eq!(
        all,
        BTreeSet::from([
            ("disc".to_owned(), "svc".to_owned()),
            ("other".to_owned(), "x".to_owned())
        ])
    );
    let reply = api
        .json(
            "Discover",
            &json!({"type": "SERVICES", "service": {"namespace": "disc", "revision": services_revision}}),
        )
        .await;
    assert_eq!(reply.code(), NO_CHANGE, "{}", reply.text);
    assert!(reply.discover().services.is_empty());

    // Rule types: an empty payload.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "ROUTING", "service": {"namespace": "disc", "name": "svc"}}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_eq!(reply.discover().kind, "ROUTING");

    // Types not served: 400004, by name and by number.
    for kind in [json!("CLUSTER"), json!("UNKNOWN"), json!(12), json!(99)] {
        let body = json!({"type": kind, "service": {"namespace": "disc", "name": "svc"}});
        let reply = api.json("Discover", &body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, BAD_DISCOVER_TYPE),
            "{kind}: {}",
            reply.text
        );
        assert!(reply.discover().instances.is_empty());
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeats_of_known_and_unknown_instances() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let body = instance_json("hb", "svc", "10.7.0.1", 1);
    let reply = api.register(&body).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    let id = polaris_id("hb", "svc", "", "10.7.0.1", 1);
    let db = t.db();
    let before = stored(&db, &id).unwrap();
    assert_eq!(before.ttl, Some(5));

    // By id.
    let reply = api.json("Heartbeat", &json!({"id": id})).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_eq!(
        reply.answer().instance.unwrap().id.as_deref(),
        Some(id.as_str())
    );
    // By namespace, service, host and port (proto names): the id computed.
    let tetrad = json!({"namespace": "hb", "service": "svc", "host": "10.7.0.1", "port": 1});
    let reply = api.json("Heartbeat", &tetrad).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_eq!(
        reply.answer().instance.unwrap().id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        stored(&db, &id),
        Some(before),
        "a heartbeat writes nothing to the store"
    );

    // An unknown instance: its first 4 beats are taken, the 5th is refused.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let reply = api
            .json("Heartbeat", &json!({"id": "no-such-instance"}))
            .await;
        codes.push((reply.status, reply.code()));
    }
    assert_eq!(
        codes,
        [
            (200, SUCCESS),
            (200, SUCCESS),
            (200, SUCCESS),
            (200, SUCCESS),
            (400, NOT_FOUND)
        ]
    );
    assert_eq!(t.live_instances(), 1);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deregister_soft_deletes_the_row() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    for port in [1, 2] {
        let reply = api
            .register(&instance_json("dereg", "svc", "10.0.0.1", port))
            .await;
        assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    }
    assert_eq!(t.count("instance_metadata"), 4);
    let gone_id = polaris_id("dereg", "svc", "", "10.0.0.1", 2);
    let kept_id = polaris_id("dereg", "svc", "", "10.0.0.1", 1);

    // By namespace, service, host and port.
    let by_address = json!({"namespace": "dereg", "service": "svc", "host": "10.0.0.1", "port": 2});
    let reply = api.json("DeregisterInstance", &by_address).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_eq!(
        reply.answer().instance.unwrap().id.as_deref(),
        Some(gone_id.as_str())
    );
    let db = t.db();
    assert_eq!(stored(&db, &gone_id), None);
    assert!(
        deregistered(&db, &gone_id),
        "the row stays, marked, for other replicas"
    );
    assert!(metadata(&db, &gone_id).is_empty());
    assert_eq!(ttl(&db, &gone_id), None);
    assert_eq!(t.live_instances(), 1);
    assert_eq!(t.count("instance_metadata"), 2);
    assert!(stored(&db, &kept_id).is_some());

    // By id alone.
    let reply = api
        .json("DeregisterInstance", &json!({"id": kept_id}))
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert!(deregistered(&db, &kept_id));
    assert_eq!(t.live_instances(), 0);
    assert_eq!(t.count("health_check"), 0);

    // Unknown: nothing to do, still a success.
    let reply = api.json("DeregisterInstance", &by_address).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_eq!(t.live_instances(), 0);
    t.server.shutdown().await.unwrap();
}

fn with_auth(config: &mut batchreg::config::Config) {
    config.auth.enabled = true;
    config.auth.tokens = vec![batchreg::config::TokenConfig {
        token: "right-token".to_owned(),
        allow: vec!["prod/*".to_owned()],
    }];
}

#[tokio::test]
async fn tokens_on_either_header() {
    let t = TestServer::start(with_auth).await;
    let api = Api::new(&t);
    let body = |port| instance_json("prod", "pay", "10.0.0.1", port).to_string();
    for header in ["X-Polaris-Token", "Polaris-Token"] {
        let missing = api.post("RegisterInstance", body(1), &[]).await;
        assert_eq!(
            (missing.status, missing.code()),
            (401, NO_TOKEN),
            "{}",
            missing.text
        );
        let empty = api.post("RegisterInstance", body(1), &[(header, "")]).await;
        assert_eq!(empty.code(), NO_TOKEN, "{header}: {}", empty.text);
        let wrong = api
            .post("RegisterInstance", body(1), &[(header, "wrong-token")])
            .await;
        assert_eq!(
            (wrong.status, wrong.code()),
            (401, NOT_ALLOWED),
            "{header}: {}",
            wrong.text
        );
        assert!(
            !wrong.text.contains("wrong-token"),
            "the token never echoed"
        );
        let elsewhere = api
            .post(
                "RegisterInstance",
                instance_json("staging", "pay", "10.0.0.1", 1).to_string(),
                &[(header, "right-token")],
            )
            .await;
        assert_eq!(
            elsewhere.code(),
            NOT_ALLOWED,
            "{header}: {}",
            elsewhere.text
        );
        assert_eq!(t.live_instances(), 0, "{header}: nothing written");
    }

    for (port, header) in [(1, "X-Polaris-Token"), (2, "Polaris-Token")] {
        let id = polaris_id("prod", "pay", "", "10.0.0.1", port);
        let right = api
            .post("RegisterInstance", body(port), &[(header, "right-token")])
            .await;
        assert_eq!(right.code(), SUCCESS, "{header}: {}", right.text);
        assert!(
            !right.text.contains("right-token"),
            "the token never echoed"
        );
        assert_eq!(right.answer().instance.unwrap().service_token, None);
        assert!(stored(&t.db(), &id).is_some(), "{header}");

        let beat = json!({"id": id}).to_string();
        let refused = api.post("Heartbeat", beat.clone(), &[]).await;
        assert_eq!(refused.code(), NO_TOKEN, "{header}: {}", refused.text);
        let taken = api
            .post("Heartbeat", beat, &[(header, "right-token")])
            .await;
        assert_eq!(taken.code(), SUCCESS, "{header}: {}", taken.text);
    }
    assert_eq!(t.live_instances(), 2);

    for (port, header) in [(1, "X-Polaris-Token"), (2, "Polaris-Token")] {
        let id = polaris_id("prod", "pay", "", "10.0.0.1", port);
        let missing = api.post("DeregisterInstance", body(port), &[]).await;
        assert_eq!(missing.code(), NO_TOKEN, "{}", missing.text);
        let wrong = api
            .post("DeregisterInstance", body(port), &[(header, "wrong-token")])
            .await;
        assert_eq!(wrong.code(), NOT_ALLOWED, "{}", wrong.text);
        assert!(stored(&t.db(), &id).is_some(), "{header}: still there");
        let right = api
            .post("DeregisterInstance", body(port), &[(header, "right-token")])
            .await;
        assert_eq!(right.code(), SUCCESS, "{header}: {}", right.text);
        assert!(deregistered(&t.db(), &id), "{header}");
    }
    assert_eq!(t.live_instances(), 0);
    t.server.shutdown().await.unwrap();
}

const LIMIT: usize = 1024;

#[tokio::test]
async fn oversized_bodies_are_refused_with_413_and_nothing_written() {
    let t = TestServer::start(|c| c.server.http_max_body = LIMIT).await;
    let api = Api::new(&t);
    let addr = t.server.http_addr();

    // A body of exactly the limit is read; one byte more is not.
    let body = instance_json("big", "svc", "10.0.0.1", 1).to_string();
    let padded = |size: usize| format!("{body}{}", " ".repeat(size - body.len()));
    let over = api
        .send(
            "RegisterInstance",
            padded(LIMIT + 1),
            &[("Request-Id", "big-1")],
        )
        .await;
    assert_eq!(over.status, 413, "{}", over.text);
    assert_eq!(over.code(), BAD_REQUEST, "{}", over.text);
    assert!(over.info().contains(&LIMIT.to_string()), "{}", over.text);
    assert_eq!(over.header("x-polaris-code"), Some("400000"));
    assert_eq!(over.header("x-polaris-message"), Some(over.info()));
    assert_eq!(over.header("request-id"), Some("big-1"));
    assert_keys(&over.json, &RESPONSE_KEYS, "a 413 answer");
    assert_eq!(rows(&t), NOTHING);
    let at = api.post("RegisterInstance", padded(LIMIT), &[]).await;
    assert_eq!(at.code(), SUCCESS, "{}", at.text);
    assert_eq!(t.live_instances(), 1);

    // A declared length over the limit is refused before any of the body is read.
    let second = instance_json("big", "svc", "10.0.0.1", 2).to_string();
    let head = format!(
        "POST /v1/RegisterInstance HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    let (status, headers, answer) = raw_exchange(addr, head.as_bytes()).await;
    assert_eq!(status, 413, "{headers}{answer}");
    assert_eq!(header_of(&headers, "x-polaris-code"), Some("400000"));
    let answer: Answer = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer.code, BAD_REQUEST);

    // Chunked, no length: refused once the limit is passed, without the body's end.
    let mut chunked = format!(
        "POST /v1/RegisterInstance HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nRequest-Id: big-2\r\n\r\n"
    );
    let oversized = format!("{second}{}", " ".repeat(2 * LIMIT));
    chunked.push_str(&format!("{:x}\r\n{oversized}\r\n", oversized.len()));
    let (status, headers, answer) = raw_exchange(addr, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{headers}{answer}");
    assert_eq!(header_of(&headers, "x-polaris-code"), Some("400000"));
    assert_eq!(header_of(&headers, "request-id"), Some("big-2"));
    let answer: Answer = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer.code, BAD_REQUEST);
    assert_eq!(t.live_instances(), 1, "nothing written");

    // Chunked within the limit: read and served.
    let (first_half, second_half) = second.split_at(second.len() / 2);
    let within = format!(
        "POST /v1/RegisterInstance HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first_half}\r\n{:x}\r\n{second_half}\r\n0\r\n\r\n",
        first_half.len(),
        second_half.len()
    );
    let (status, headers, answer) = raw_exchange(addr, within.as_bytes()).await;
    assert_eq!(status, 200, "{headers}{answer}");
    let answer: Answer = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer.code, SUCCESS);
    assert!(stored(&t.db(), &polaris_id("big", "svc", "", "10.0.0.1", 2)).is_some());
    assert_eq!(t.live_instances(), 2);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_parse_exception_with_the_parsers_message() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let good = instance_json("bad", "svc", "10.0.0.1", 1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("cut short", "{\"host\": ".to_owned(), "EOF while parsing"),
        ("empty body", String::new(), "EOF while parsing"),
        ("not JSON", "host=h&port=1".to_owned(), "expected value"),
        ("trailing text", format!("{good} x"), "trailing characters"),
        ("an array", format!("[{good}]"), "array"),
        ("an empty array", "[]".to_owned(), "array"),
        ("a string", "\"instance\"".to_owned(), "string"),
        (
            "a mistyped port",
            with(&good, json!({"port": "eighty"})).to_string(),
            "",
        ),
        (
            "a negative port",
            with(&good, json!({"port": -1})).to_string(),
            "",
        ),
        (
            "an unknown enum name",
            with(&good, json!({"healthCheck": {"type": "NOPE"}})).to_string(),
            "",
        ),
        (
            "a number as metadata value",
            with(&good, json!({"metadata": {"k": 5}})).to_string(),
            "",
        ),
        (
            "a list as host",
            with(&good, json!({"host": ["a"]})).to_string(),
            "",
        ),
    ];
    for (what, body, says) in cases {
        for route in ["RegisterInstance", "DeregisterInstance", "Heartbeat"] {
            let reply = api.post(route, body.clone(), &[]).await;
            assert_eq!(
                (reply.status, reply.code()),
                (400, PARSE),
                "{route} {what}: {}",
                reply.text
            );
            assert!(
                reply.info().contains(says),
                "{route} {what}: {}",
                reply.text
            );
            assert!(!reply.info().is_empty(), "{route} {what}");
            assert_keys(&reply.json, &RESPONSE_KEYS, what);
            assert!(reply.answer().instance.is_none());
        }
    }
    assert_eq!(rows(&t), NOTHING);

    // Discover and ReportClient answer a parse failure in their own message.
    let reply = api.post("Discover", "{\"type\": ", &[]).await;
    assert_eq!((reply.status, reply.code()), (400, PARSE), "{}", reply.text);
    assert!(reply.info().contains("EOF while parsing"), "{}", reply.text);
    assert_keys(&reply.json, &DISCOVER_KEYS, "Discover parse failure");
    let reply = api.post("Discover", "[]", &[]).await;
    assert_eq!(reply.code(), PARSE, "{}", reply.text);
    let reply = api.json("Discover", &json!({"type": "NO_SUCH_TYPE"})).await;
    assert_eq!(reply.code(), PARSE, "{}", reply.text);
    let reply = api.post("ReportClient", "nope", &[]).await;
    assert_eq!((reply.status, reply.code()), (400, PARSE), "{}", reply.text);
    assert!(reply.info().contains("expected"), "{}", reply.text);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_carry_exactly_polaris_json_names() {
    let t = TestServer::start(|_| {}).await;
    let api = Api::new(&t);
    let mut body = instance_json("shape", "svc", "10.0.0.1", 1);
    body["location"] = json!({"region": "r", "zone": "z", "campus": "c"});
    body["service_token"] = json!("secret");
    let reply = api.register(&body).await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);

    // A register answer: the Response fields, the instance with every Instance key, set
    // to what names it and null (or {}) for the rest, the token never echoed.
    assert_keys(&reply.json, &RESPONSE_KEYS, "register answer");
    let instance = &reply.json["instance"];
    assert_instance_keys(instance, "register answer's instance");
    let id = polaris_id("shape", "svc", "", "10.0.0.1", 1);
    assert_eq!(
        *instance,
        json!({
            "id": id, "service": "svc", "namespace": "shape", "vpc_id": "", "host": "10.0.0.1",
            "port": 1, "protocol": null, "version": null, "priority": null, "weight": null,
            "enableHealthCheck": null, "healthCheck": null, "healthy": null, "isolate": null,
            "location": null, "metadata": {}, "logic_set": null, "ctime": null, "mtime": null,
            "revision": null, "service_token": null,
        })
    );
    assert_eq!(reply.json["client"], Value::Null);
    assert!(!reply.text.contains("secret"));

    // A Discover answer: the DiscoverResponse fields, the service with fields 1–25, each
    // instance with every Instance key and its nested messages with theirs.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "INSTANCE", "service": {"namespace": "shape", "name": "svc"}}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_keys(&reply.json, &DISCOVER_KEYS, "Discover answer");
    assert_eq!(reply.json["type"], "INSTANCE");
    assert_keys(
        &reply.json["service"],
        &SERVICE_KEYS,
        "Discover answer's service",
    );
    assert_eq!(reply.json["service"]["token"], Value::Null);
    let instances = reply.json["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1);
    let listed = &instances[0];
    assert_instance_keys(listed, "Discover answer's instance");
    assert_keys(&listed["healthCheck"], &HEALTH_CHECK_KEYS, "healthCheck");
    assert_keys(
        &listed["healthCheck"]["heartbeat"],
        &HEARTBEAT_KEYS,
        "heartbeat",
    );
    assert_keys(&listed["location"], &LOCATION_KEYS, "location");
    assert_eq!(listed["healthCheck"]["type"], "HEARTBEAT");
    assert_eq!(listed["service_token"], Value::Null);
    assert_eq!(listed["id"], id.as_str());
    assert!(!reply.text.contains("secret"));
    assert_eq!(reply.json["services"], json!([]));
    let parsed = reply.discover();
    assert_eq!(parsed.instances[0].id.as_deref(), Some(id.as_str()));

    // A SERVICES answer: each listed service with fields 1–25.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "SERVICES", "service": {"namespace": "shape"}}),
        )
        .await;
    assert_eq!(reply.code(), SUCCESS, "{}", reply.text);
    assert_keys(&reply.json, &DISCOVER_KEYS, "SERVICES answer");
    assert_keys(
        &reply.json["service"],
        &SERVICE_KEYS,
        "SERVICES answer's service",
    );
    for service in reply.json["services"].as_array().unwrap() {
        assert_keys(service, &SERVICE_KEYS, "a listed service");
    }
    assert_eq!(reply.json["instances"], json!([]));

    // Failures have the same shape.
    let reply = api
        .json(
            "Discover",
            &json!({"type": "INSTANCE", "service": {"namespace": "shape", "name": "none"}}),
        )
        .await;
    assert_eq!(reply.code(), NOT_FOUND);
    assert_keys(&reply.json, &DISCOVER_KEYS, "400202 answer");
    assert_keys(
        &reply.json["service"],
        &SERVICE_KEYS,
        "400202 answer's service",
    );
    let reply = api.register(&json!({})).await;
    assert_eq!(reply.code(), EMPTY);
    assert_keys(&reply.json, &RESPONSE_KEYS, "400002 answer");
    assert_instance_keys(&reply.json["instance"], "400002 answer's instance");
    t.server.shutdown().await.unwrap();
}
