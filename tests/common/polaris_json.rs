//! What a client that knows only Polaris's JSON field names reads (POLARIS.md §0.2,
//! §0.3, §0.5–0.7): the names of each message, and the answers as such a client parses
//! them. Nothing here comes from batchreg's own protobuf code.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use serde_json::Value;

/// `Instance` (§0.2).
pub const INSTANCE_KEYS: [&str; 21] = [
    "id",
    "service",
    "namespace",
    "vpc_id",
    "host",
    "port",
    "protocol",
    "version",
    "priority",
    "weight",
    "enableHealthCheck",
    "healthCheck",
    "healthy",
    "isolate",
    "location",
    "metadata",
    "logic_set",
    "ctime",
    "mtime",
    "revision",
    "service_token",
];
pub const HEALTH_CHECK_KEYS: [&str; 2] = ["type", "heartbeat"];
pub const HEARTBEAT_KEYS: [&str; 1] = ["ttl"];
pub const LOCATION_KEYS: [&str; 3] = ["region", "zone", "campus"];
/// `Service` fields 1–25 (§0.3), the ones every version shares.
pub const SERVICE_KEYS: [&str; 25] = [
    "name",
    "namespace",
    "metadata",
    "ports",
    "business",
    "department",
    "cmdb_mod1",
    "cmdb_mod2",
    "cmdb_mod3",
    "comment",
    "owners",
    "token",
    "ctime",
    "mtime",
    "revision",
    "platform_id",
    "total_instance_count",
    "healthy_instance_count",
    "user_ids",
    "group_ids",
    "id",
    "remove_user_ids",
    "remove_group_ids",
    "editable",
    "export_to",
];
/// `DiscoverResponse` (§0.5): the fields of proto/polaris_v1.proto.
pub const DISCOVER_KEYS: [&str; 6] = ["code", "info", "type", "service", "instances", "services"];
/// `Response` (§0.6): the fields of proto/polaris_v1.proto.
pub const RESPONSE_KEYS: [&str; 4] = ["code", "info", "client", "instance"];
/// `Client` (§0.7), fields 1–5.
pub const CLIENT_KEYS: [&str; 5] = ["host", "type", "version", "location", "id"];

/// The keys of a JSON object, against the names expected.
pub fn assert_keys(value: &Value, expected: &[&str], what: &str) {
    let got: BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, expected, "{what}: {value}");
}

/// An instance with every key, its nested messages too when set.
pub fn assert_instance_keys(instance: &Value, what: &str) {
    assert_keys(instance, &INSTANCE_KEYS, what);
    if !instance["healthCheck"].is_null() {
        assert_keys(&instance["healthCheck"], &HEALTH_CHECK_KEYS, what);
        if !instance["healthCheck"]["heartbeat"].is_null() {
            assert_keys(&instance["healthCheck"]["heartbeat"], &HEARTBEAT_KEYS, what);
        }
    }
    if !instance["location"].is_null() {
        assert_keys(&instance["location"], &LOCATION_KEYS, what);
    }
}

// The answers as a client that knows only those names reads them. Every field is declared
// so that a key Polaris does not name is refused; not every one is read.

/// `Response` (§0.6).
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub code: u32,
    pub info: String,
    pub client: Option<Client>,
    pub instance: Option<Instance>,
}

/// `Instance` (§0.2).
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: Option<String>,
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub vpc_id: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
    pub version: Option<String>,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
    #[serde(rename = "enableHealthCheck")]
    pub enable_health_check: Option<bool>,
    #[serde(rename = "healthCheck")]
    pub health_check: Option<HealthCheck>,
    pub healthy: Option<bool>,
    pub isolate: Option<bool>,
    pub location: Option<Location>,
    pub metadata: HashMap<String, String>,
    pub logic_set: Option<String>,
    pub ctime: Option<String>,
    pub mtime: Option<String>,
    pub revision: Option<String>,
    pub service_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: String,
    pub heartbeat: Option<Heartbeat>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub ttl: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub region: Option<String>,
    pub zone: Option<String>,
    pub campus: Option<String>,
}

/// `Service` fields 1–25 (§0.3).
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub metadata: HashMap<String, String>,
    pub ports: Option<String>,
    pub business: Option<String>,
    pub department: Option<String>,
    pub cmdb_mod1: Option<String>,
    pub cmdb_mod2: Option<String>,
    pub cmdb_mod3: Option<String>,
    pub comment: Option<String>,
    pub owners: Option<String>,
    pub token: Option<String>,
    pub ctime: Option<String>,
    pub mtime: Option<String>,
    pub revision: Option<String>,
    pub platform_id: Option<String>,
    pub total_instance_count: Option<u32>,
    pub healthy_instance_count: Option<u32>,
    pub user_ids: Vec<String>,
    pub group_ids: Vec<String>,
    pub id: Option<String>,
    pub remove_user_ids: Vec<String>,
    pub remove_group_ids: Vec<String>,
    pub editable: Option<bool>,
    pub export_to: Vec<String>,
}

/// `DiscoverResponse` (§0.5).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverAnswer {
    pub code: u32,
    pub info: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub service: Option<Service>,
    pub instances: Vec<Instance>,
    pub services: Vec<Service>,
}

/// `Client` (§0.7).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub host: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: Option<String>,
    pub location: Option<Location>,
    pub id: Option<String>,
}
