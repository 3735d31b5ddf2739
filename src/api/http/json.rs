//! Polaris's JSON for the HTTP client API, as its jsonpb reads and writes it, over the
//! generated messages through their descriptors (proto/ compiled at build time).
//!
//! In: proto names and JSON names both accepted, unknown keys ignored, `null` skipped and
//! a `null` map value read as `""` (a `null` body as the empty message), wrappers as plain
//! values, enums by name or number (an unknown name refused, as jsonpb does).
//! Out: JSON names, every field emitted in field order (an unset message or wrapper as
//! `null`, an empty list as `[]`, an empty map as `{}`), enums by name, indented by one
//! space.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, SerializeOptions, Value as ReflectValue,
};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use crate::code::Code;
use crate::proto;

/// The messages the HTTP client API reads and writes.
pub const INSTANCE: &str = "v1.Instance";
pub const CLIENT: &str = "v1.Client";
pub const DISCOVER_REQUEST: &str = "v1.DiscoverRequest";
pub const DISCOVER_RESPONSE: &str = "v1.DiscoverResponse";
pub const RESPONSE: &str = "v1.Response";
/// A service in the read API's answers.
pub const SERVICE: &str = "v1.Service";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("the build's descriptor set decodes")
});

fn descriptor(full_name: &str) -> MessageDescriptor {
    POOL.get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in proto/"))
}

/// A request body that is not the message its route takes: answered 400001 with the
/// parser's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

impl JsonError {
    pub fn code(&self) -> Code {
        Code::ParseException
    }
}

/// Reads a JSON body as the message `full_name` (one of the constants above).
pub fn decode<M: Message + Default>(full_name: &str, body: &[u8]) -> Result<M, JsonError> {
    // The usual body (no nulls, no unknown keys, every value valid) is read straight from
    // its bytes by the strict reader; any other takes the lenient way, which also words
    // the error.
    match read_strict(full_name, body) {
        Some(message) => Ok(message),
        None => read_lenient(full_name, body),
    }
}

/// The strict proto3 JSON reader, straight from the bytes: `None` for any body it does
/// not take whole. Where it takes a body, [`read_lenient`] reads the same message.
pub(crate) fn read_strict<M: Message + Default>(full_name: &str, body: &[u8]) -> Option<M> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor(full_name),
        &mut reader,
        &DeserializeOptions::new(),
    )
    .ok()?;
    reader.end().ok()?;
    dynamic.transcode_to::<M>().ok()
}

/// Polaris's lenient reading: the body parsed as a JSON value, `null`s and unknown keys
/// dropped (see [`lenient`]), then read by descriptor. Words the error of a body it
/// refuses.
pub(crate) fn read_lenient<M: Message + Default>(
    full_name: &str,
    body: &[u8],
) -> Result<M, JsonError> {
    let desc = descriptor(full_name);
    let mut value: Value =
        serde_json::from_slice(body).map_err(|error| JsonError(error.to_string()))?;
    if value.is_null() {
        // jsonpb reads a top-level `null` as the empty message.
        value = Value::Object(Map::new());
    }
    if !value.is_object() {
        return Err(JsonError(format!(
            "expected a JSON object for {full_name}, found {}",
            kind_of(&value)
        )));
    }
    lenient(&desc, &mut value);
    // With the unknown keys gone, the strict reader refuses only bad values: an unknown
    // enum name among them, which the lenient one would drop.
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &DeserializeOptions::new())
        .map_err(|error| JsonError(error.to_string()))?;
    dynamic
        .transcode_to::<M>()
        .map_err(|error| JsonError(error.to_string()))
}

/// Writes a message as Polaris's JSON.
pub fn encode<M: Message>(full_name: &str, message: &M) -> Vec<u8> {
    encode_bytes(full_name, &message.encode_to_vec())
}

/// Writes an encoded message (an answer the registry cache keeps encoded) as JSON.
pub fn encode_bytes(full_name: &str, encoded: &[u8]) -> Vec<u8> {
    let dynamic = dynamic_of_bytes(full_name, encoded);
    let mut out = Vec::with_capacity(encoded.len() * 3 + 64);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    Polaris(&dynamic)
        .serialize(&mut serializer)
        .expect("a message writes to memory");
    out
}

/// A message as Polaris's JSON, to be placed in a larger answer.
pub fn to_value<M: Message>(full_name: &str, message: &M) -> Value {
    let dynamic = dynamic_of_bytes(full_name, &message.encode_to_vec());
    serde_json::to_value(Polaris(&dynamic)).expect("a message serializes to a JSON value")
}

fn dynamic_of_bytes(full_name: &str, encoded: &[u8]) -> DynamicMessage {
    DynamicMessage::decode(descriptor(full_name), encoded)
        .expect("a message this server encoded decodes by its own descriptor")
}

/// A message as Polaris writes it: every field in field order under its JSON name, an
/// unset message or wrapper as `null`, a wrapper as its plain value, an enum by name, a
/// map's keys sorted.
struct Polaris<'a>(&'a DynamicMessage);

impl Serialize for Polaris<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let desc = message.descriptor();
        let mut map = serializer.serialize_map(Some(desc.fields().len()))?;
        for field in desc.fields() {
            if field.supports_presence() && !message.has_field(&field) {
                map.serialize_entry(field.json_name(), &())?;
                continue;
            }
            let value = message.get_field(&field);
            let kind = if field.is_map() {
                match field.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    other => other,
                }
            } else {
                field.kind()
            };
            map.serialize_entry(field.json_name(), &FieldValue(&value, &kind))?;
        }
        map.end()
    }
}

/// A field's value of a [`Polaris`] message (for a list or a map: of its items).
struct FieldValue<'a>(&'a ReflectValue, &'a Kind);

impl Serialize for FieldValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let FieldValue(value, kind) = *self;
        match value {
            ReflectValue::Message(message) => {
                if message
                    .descriptor()
                    .full_name()
                    .starts_with("google.protobuf.")
                {
                    // A wrapper: its plain value.
                    message.serialize_with_options(serializer, &SerializeOptions::new())
                } else {
                    Polaris(message).serialize(serializer)
                }
            }
            ReflectValue::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&FieldValue(item, kind))?;
                }
                seq.end()
            }
            ReflectValue::Map(entries) => {
                let mut sorted: Vec<(&str, &ReflectValue)> = entries
                    .iter()
                    .filter_map(|(key, v)| match key {
                        MapKey::String(key) => Some((key.as_str(), v)),
                        _ => None,
                    })
                    .collect();
                sorted.sort_unstable_by_key(|(key, _)| *key);
                let mut map = serializer.serialize_map(Some(sorted.len()))?;
                for (key, v) in sorted {
                    map.serialize_entry(key, &FieldValue(v, kind))?;
                }
                map.end()
            }
            ReflectValue::EnumNumber(number) => match kind {
                Kind::Enum(named) => match named.get_value(*number) {
                    Some(known) => serializer.serialize_str(known.name()),
                    None => serializer.serialize_i32(*number),
                },
                _ => serializer.serialize_i32(*number),
            },
            ReflectValue::Bool(b) => serializer.serialize_bool(*b),
            ReflectValue::I32(n) => serializer.serialize_i32(*n),
            ReflectValue::U32(n) => serializer.serialize_u32(*n),
            // As jsonpb writes 64-bit integers: as strings.
            ReflectValue::I64(n) => serializer.collect_str(n),
            ReflectValue::U64(n) => serializer.collect_str(n),
            ReflectValue::F32(n) => serializer.serialize_f32(*n),
            ReflectValue::F64(n) => serializer.serialize_f64(*n),
            ReflectValue::String(text) => serializer.serialize_str(text),
            ReflectValue::Bytes(_) => serializer.serialize_none(),
        }
    }
}

/// Writes a JSON value as every answer of the HTTP port is written: indented by one
/// space.
pub fn write(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("a JSON value writes to memory");
    out
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The field a JSON key names: by its JSON name or its proto name.
fn field_of(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(key)
        .or_else(|| desc.get_field_by_name(key))
}

/// A message of ours, not a well-known type (whose JSON form is a plain value).
fn nested(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(message) if !message.full_name().starts_with("google.protobuf.") => {
            Some(message)
        }
        _ => None,
    }
}

/// Polaris's leniency before the strict proto3 JSON reader: `null` fields and keys that
/// name no field dropped, a `null` map value read as `""`, nested messages likewise.
fn lenient(desc: &MessageDescriptor, value: &mut Value) {
    let Value::Object(object) = value else {
        return;
    };
    object.retain(|key, v| !v.is_null() && field_of(desc, key).is_some());
    for (key, v) in object.iter_mut() {
        let Some(field) = field_of(desc, key) else {
            continue;
        };
        if field.is_map() {
            if let (Value::Object(entries), Kind::Message(entry)) = (v, field.kind()) {
                let value_field = entry.map_entry_value_field();
                for entry_value in entries.values_mut() {
                    if entry_value.is_null() && matches!(value_field.kind(), Kind::String) {
                        *entry_value = Value::String(String::new());
                    } else if let Some(message) = nested(&value_field) {
                        lenient(&message, entry_value);
                    }
                }
            }
        } else if let Some(message) = nested(&field) {
            match v {
                Value::Array(items) => items.iter_mut().for_each(|i| lenient(&message, i)),
                other => lenient(&message, other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(json: &str) -> proto::Instance {
        decode(INSTANCE, json.as_bytes()).unwrap()
    }

    #[test]
    fn reads_json_names_and_proto_names_alike() {
        let camel = instance(
            r#"{"namespace":"ns","service":"svc","host":"h","port":80,
                "enableHealthCheck":true,"healthCheck":{"type":"HEARTBEAT","heartbeat":{"ttl":7}},
                "vpc_id":"v","logic_set":"ls","metadata":{"k":"v"}}"#,
        );
        let snake = instance(
            r#"{"namespace":"ns","service":"svc","host":"h","port":80,
                "enable_health_check":true,"health_check":{"type":1,"heartbeat":{"ttl":7}},
                "vpc_id":"v","logic_set":"ls","metadata":{"k":"v"}}"#,
        );
        assert_eq!(camel, snake);
        assert_eq!(camel.enable_health_check, Some(true));
        assert_eq!(camel.health_check.unwrap().heartbeat.unwrap().ttl, Some(7));
        assert_eq!(camel.vpc_id.as_deref(), Some("v"));
        assert_eq!(camel.port, Some(80));
    }

    #[test]
    fn skips_nulls_and_unknown_keys_and_reads_a_null_map_value_as_empty() {
        let read = instance(
            r#"{"service":"svc","namespace":null,"host":"h","port":1,"weight":null,
                "nosuch":{"a":[1,2]},"metadata":{"a":null,"b":"x"},"location":{"zone":null,"region":"r"}}"#,
        );
        assert_eq!(read.namespace, None);
        assert_eq!(read.weight, None);
        assert_eq!(read.metadata.get("a").map(String::as_str), Some(""));
        assert_eq!(read.metadata.get("b").map(String::as_str), Some("x"));
        let location = read.location.unwrap();
        assert_eq!(
            (location.region.as_deref(), location.zone),
            (Some("r"), None)
        );
    }

    #[test]
    fn reads_enums_by_name_or_number_and_refuses_an_unknown_name() {
        let by_name = instance(r#"{"healthCheck":{"type":"HEARTBEAT","nosuch":"NOPE"}}"#);
        let by_number = instance(r#"{"health_check":{"type":1}}"#);
        assert_eq!(by_name, by_number);
        assert_eq!(
            by_name.health_check.unwrap().r#type,
            proto::health_check::HealthCheckType::Heartbeat as i32
        );
        let unknown =
            decode::<proto::Instance>(INSTANCE, br#"{"healthCheck":{"type":"NOPE"}}"#).unwrap_err();
        assert_eq!(unknown.code(), Code::ParseException);
        assert!(unknown.to_string().contains("NOPE"), "{unknown}");
        // A number is read as it is, known or not (proto3 enums are open).
        let request: proto::DiscoverRequest = decode(
            DISCOVER_REQUEST,
            br#"{"type":99,"Filter":{"OnlyHealthyInstance":true}}"#,
        )
        .unwrap();
        assert_eq!(request.r#type, 99);
        assert!(request.filter.unwrap().only_healthy_instance);
    }

    #[test]
    fn a_null_body_is_the_empty_message() {
        assert_eq!(instance("null"), proto::Instance::default());
    }

    #[test]
    fn a_null_is_unset_whichever_way_the_body_is_read() {
        // No unknown key and no null map value: the direct reading.
        let read = instance(
            r#"{"service":"svc","namespace":null,"host":"h","port":1,"weight":null,
                "location":null,"healthCheck":{"type":"HEARTBEAT","heartbeat":null}}"#,
        );
        assert_eq!(
            (read.namespace, read.weight, read.location),
            (None, None, None)
        );
        assert_eq!(read.health_check.unwrap().heartbeat, None);
        assert_eq!(read.port, Some(1));
    }

    #[test]
    fn malformed_or_mistyped_input_is_a_parse_error_with_the_parsers_message() {
        let broken = decode::<proto::Instance>(INSTANCE, b"{\"host\": ").unwrap_err();
        assert_eq!(broken.code(), Code::ParseException);
        assert!(broken.to_string().contains("EOF"), "{broken}");
        let mistyped = decode::<proto::Instance>(INSTANCE, br#"{"port":"eighty"}"#).unwrap_err();
        assert!(!mistyped.to_string().is_empty());
        let array = decode::<proto::Instance>(INSTANCE, b"[]").unwrap_err();
        assert!(array.to_string().contains("an array"), "{array}");
    }

    #[test]
    fn writes_every_field_with_json_names_in_field_order() {
        let response = proto::Response {
            code: Some(200000),
            info: Some("execute success".to_owned()),
            client: None,
            instance: Some(proto::Instance {
                id: Some("i".to_owned()),
                vpc_id: Some(String::new()),
                port: Some(8080),
                ..Default::default()
            }),
        };
        let text = String::from_utf8(encode(RESPONSE, &response)).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["code"], 200000);
        assert_eq!(value["client"], Value::Null);
        let instance = value["instance"].as_object().unwrap();
        let keys: Vec<&str> = instance.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
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
                "healthy",
                "isolate",
                "location",
                "metadata",
                "logic_set",
                "ctime",
                "mtime",
                "revision",
                "service_token",
                "enableHealthCheck",
                "vpc_id",
            ]
        );
        assert_eq!(instance["port"], 8080);
        assert_eq!(instance["vpc_id"], "");
        assert_eq!(instance["metadata"], serde_json::json!({}));
        assert_eq!(instance["service_token"], Value::Null);
        assert!(text.starts_with("{\n \"code\""), "{text}");
    }

    #[test]
    fn writes_enums_by_name_and_lists_empty() {
        let answer = proto::DiscoverResponse {
            code: Some(200000),
            r#type: proto::discover_response::DiscoverResponseType::Instance as i32,
            ..Default::default()
        };
        let value: Value = serde_json::from_slice(&encode(DISCOVER_RESPONSE, &answer)).unwrap();
        assert_eq!(value["type"], "INSTANCE");
        assert_eq!(value["instances"], serde_json::json!([]));
        assert_eq!(value["service"], Value::Null);
    }
}
