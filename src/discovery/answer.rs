//! Discover answers, encoded: the full answer of a service is its header followed by each
//! instance's field as the cache keeps it encoded, in chunks that share the cache's
//! bytes, so a new revision costs a list of references, not an encoding of every
//! instance, nor a second copy of the fleet in memory.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{
    WireType, encode_key, encode_varint, encoded_len_varint, key_len, message, string,
};

use super::cache::{InstanceFacts, ServiceSnapshot};
use crate::code::Code;
use crate::proto;
use crate::proto::discover_response::DiscoverResponseType;

/// The `instances` field of `DiscoverResponse`.
const INSTANCES_FIELD: u32 = 5;

/// An encoded `DiscoverResponse`, in chunks sent one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(Arc<[Bytes]>);

impl Encoded {
    pub fn chunks(&self) -> &[Bytes] {
        &self.0
    }

    /// Whether `other` is this very answer (a clone of it), not an equal one.
    pub fn same(&self, other: &Encoded) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The answer in one piece.
    pub fn to_bytes(&self) -> Bytes {
        match &*self.0 {
            [one] => one.clone(),
            chunks => {
                let mut whole = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in chunks {
                    whole.put_slice(chunk);
                }
                whole.freeze()
            }
        }
    }
}

impl From<Bytes> for Encoded {
    fn from(bytes: Bytes) -> Encoded {
        Encoded(Arc::from([bytes]))
    }
}

/// An instance as the `instances` field of a `DiscoverResponse`: its key, its length
/// and the encoded `Instance`, ready to follow an answer's header. Encoded straight from
/// the record, with the bytes prost writes for the `proto::Instance` of the same values
/// (metadata in key order), never the service token.
pub fn instance_field(facts: InstanceFacts<'_>) -> Bytes {
    let r = facts.record;
    let mut body = Vec::with_capacity(256 + 48 * r.metadata.len());
    let buf = &mut body;
    text(1, &r.id, buf);
    text(2, &r.service, buf);
    text(3, &r.namespace, buf);
    text(4, &r.host, buf);
    message::encode(5, &r.port, buf);
    text(6, &r.protocol, buf);
    text(7, &r.version, buf);
    message::encode(8, &r.priority, buf);
    message::encode(9, &r.weight, buf);
    if let Some(ttl) = r.health_check_ttl {
        let check = proto::HealthCheck {
            r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
            heartbeat: Some(proto::HeartbeatHealthCheck { ttl: Some(ttl) }),
        };
        message::encode(10, &check, buf);
    }
    message::encode(11, &r.healthy, buf);
    message::encode(12, &facts.isolate, buf);
    let location = [&r.region, &r.zone, &r.campus];
    let location_len: usize = (1..)
        .zip(location)
        .map(|(tag, value)| text_len(tag, value))
        .sum();
    encode_key(13, WireType::LengthDelimited, buf);
    encode_varint(location_len as u64, buf);
    for (tag, value) in (1..).zip(location) {
        text(tag, value, buf);
    }
    for (key, value) in &r.metadata {
        // A map entry leaves out an empty key or value, as prost does.
        let present = |tag: u32, part: &String| {
            if part.is_empty() {
                0
            } else {
                string::encoded_len(tag, part)
            }
        };
        encode_key(14, WireType::LengthDelimited, buf);
        encode_varint((present(1, key) + present(2, value)) as u64, buf);
        if !key.is_empty() {
            string::encode(1, key, buf);
        }
        if !value.is_empty() {
            string::encode(2, value, buf);
        }
    }
    text(15, &r.logic_set, buf);
    text(16, shown_time(facts.ctime), buf);
    text(17, shown_time(facts.mtime), buf);
    text(18, facts.revision, buf);
    // 19, the service token, is a secret: never in an answer.
    message::encode(20, &r.enable_health_check, buf);
    text(21, &r.vpc_id, buf);

    let mut field = Vec::with_capacity(body.len() + 6);
    encode_key(INSTANCES_FIELD, WireType::LengthDelimited, &mut field);
    encode_varint(body.len() as u64, &mut field);
    field.extend_from_slice(&body);
    Bytes::from(field)
}

/// A stored time as answers show it: to the second (`2026-12-01 13:15:00`).
pub fn shown_time(time: &str) -> &str {
    time.get(..19).unwrap_or(time)
}

/// A `StringValue` field: its key, its length, and the value unless it is empty.
fn text(tag: u32, value: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    if value.is_empty() {
        encode_varint(0, buf);
    } else {
        encode_varint(
            (1 + encoded_len_varint(value.len() as u64) + value.len()) as u64,
            buf,
        );
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value.as_bytes());
    }
}

/// The length of [`text`]'s field.
fn text_len(tag: u32, value: &str) -> usize {
    let inner = if value.is_empty() {
        0
    } else {
        1 + encoded_len_varint(value.len() as u64) + value.len()
    };
    key_len(tag) + encoded_len_varint(inner as u64) + inner
}

/// The human text Polaris answers each code with.
pub fn info(code: Code) -> &'static str {
    match code {
        Code::ExecuteSuccess => "execute success",
        Code::DataNoChange => "discover data is no change",
        Code::NotFoundResource => "not found resource",
        Code::InvalidDiscoverResource => "invalid discover resource",
        Code::InvalidServiceName => "invalid service name",
        Code::ParseException => "parse request body exception",
        _ => "",
    }
}

/// An answer without a payload: the code, its text, the type and the service echoed.
pub fn plain(code: Code, kind: DiscoverResponseType, service: Option<proto::Service>) -> Encoded {
    Encoded::from(Bytes::from(
        proto::DiscoverResponse {
            code: Some(code.as_u32()),
            info: Some(info(code).to_owned()),
            r#type: kind as i32,
            service,
            instances: Vec::new(),
            services: Vec::new(),
        }
        .encode_to_vec(),
    ))
}

/// The service as an answer shows it: names, id, times, revision; never its token.
pub fn service_message(snapshot: &ServiceSnapshot<'_>) -> proto::Service {
    let text = |value: &str| Some(value.to_owned());
    proto::Service {
        name: text(snapshot.name),
        namespace: text(snapshot.namespace),
        id: text(&snapshot.info.id),
        ctime: text(
            snapshot
                .info
                .ctime
                .get(..19)
                .unwrap_or(&snapshot.info.ctime),
        ),
        mtime: text(
            snapshot
                .info
                .mtime
                .get(..19)
                .unwrap_or(&snapshot.info.mtime),
        ),
        revision: text(snapshot.revision),
        total_instance_count: Some(snapshot.instances.len() as u32),
        healthy_instance_count: Some(
            snapshot.instances.values().filter(|i| i.healthy).count() as u32
        ),
        ..proto::Service::default()
    }
}

/// The full INSTANCE answer of a service: 200000, the service, every instance (or the
/// healthy ones only).
pub fn instances(snapshot: &ServiceSnapshot<'_>, healthy_only: bool) -> Encoded {
    let header = proto::DiscoverResponse {
        code: Some(Code::ExecuteSuccess.as_u32()),
        info: Some(info(Code::ExecuteSuccess).to_owned()),
        r#type: DiscoverResponseType::Instance as i32,
        service: Some(service_message(snapshot)),
        instances: Vec::new(),
        services: Vec::new(),
    };
    let mut chunks = Vec::with_capacity(snapshot.instances.len() + 1);
    chunks.push(Bytes::from(header.encode_to_vec()));
    chunks.extend(
        snapshot
            .instances
            .values()
            .filter(|i| !healthy_only || i.healthy)
            .map(|i| i.field().clone()),
    );
    Encoded(Arc::from(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::cache::{CachedInstance, InstanceFacts, ServiceInfo};
    use crate::discovery::instances::InstanceMap;

    /// The `Instance` an answer carries, built field by field as prost's own types.
    fn expected(facts: InstanceFacts<'_>) -> proto::Instance {
        let r = facts.record;
        let text = |value: &str| Some(value.to_owned());
        proto::Instance {
            id: text(&r.id),
            service: text(&r.service),
            namespace: text(&r.namespace),
            vpc_id: text(&r.vpc_id),
            host: text(&r.host),
            port: Some(r.port),
            protocol: text(&r.protocol),
            version: text(&r.version),
            priority: Some(r.priority),
            weight: Some(r.weight),
            enable_health_check: Some(r.enable_health_check),
            health_check: r.health_check_ttl.map(|ttl| proto::HealthCheck {
                r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
                heartbeat: Some(proto::HeartbeatHealthCheck { ttl: Some(ttl) }),
            }),
            healthy: Some(r.healthy),
            isolate: Some(facts.isolate),
            location: Some(proto::Location {
                region: text(&r.region),
                zone: text(&r.zone),
                campus: text(&r.campus),
            }),
            metadata: r.metadata.iter().cloned().collect(),
            logic_set: text(&r.logic_set),
            ctime: text(shown_time(facts.ctime)),
            mtime: text(shown_time(facts.mtime)),
            revision: text(facts.revision),
            service_token: None,
        }
    }

    #[test]
    fn an_instance_is_encoded_as_prost_encodes_its_message() {
        let base = crate::discovery::cache::tests_support::record("i1");
        let mut empty = base.clone();
        for value in [
            &mut empty.id,
            &mut empty.service,
            &mut empty.namespace,
            &mut empty.host,
            &mut empty.protocol,
            &mut empty.version,
        ] {
            value.clear();
        }
        empty.metadata = vec![
            (String::new(), "v".to_owned()),
            ("k".to_owned(), String::new()),
        ];
        empty.health_check_ttl = None;
        (empty.port, empty.priority, empty.weight, empty.healthy) = (0, 0, 0, false);
        let mut long = base.clone();
        long.host = "h".repeat(300);
        long.region = "région".to_owned();
        long.zone = "z".repeat(127);
        long.campus = "c".repeat(128);
        long.vpc_id = "vpc-1".to_owned();
        long.logic_set = "set".to_owned();
        long.metadata = (0..40)
            .map(|n| (format!("key-{n}"), "v".repeat(n * 7)))
            .collect();
        (long.port, long.weight, long.priority) = (u32::MAX, 10_000, 9);
        long.health_check_ttl = Some(u32::MAX);
        let mut one_entry = base.clone();
        one_entry.metadata.truncate(1);
        for (record, isolate) in [
            (&base, false),
            (&empty, true),
            (&long, true),
            (&one_entry, false),
        ] {
            let facts = InstanceFacts {
                record,
                isolate,
                revision: "0123456789abcdef0123456789abcdef",
                ctime: "2026-12-01 10:00:00.123",
                mtime: "2026-12-02 11:22:33.456",
            };
            let want = expected(facts);
            let mut field = instance_field(facts);
            let reference = {
                let mut bytes = Vec::new();
                encode_key(INSTANCES_FIELD, WireType::LengthDelimited, &mut bytes);
                encode_varint(want.encoded_len() as u64, &mut bytes);
                want.encode(&mut bytes).unwrap();
                bytes
            };
            assert_eq!(field.len(), reference.len());
            if record.metadata.len() <= 1 {
                // Map entries aside (prost writes them in the map's order), the very bytes.
                assert_eq!(&field[..], &reference[..]);
            }
            prost::encoding::decode_key(&mut field).unwrap();
            let length = prost::encoding::decode_varint(&mut field).unwrap();
            assert_eq!(length as usize, field.len());
            assert_eq!(proto::Instance::decode(field).unwrap(), want);
        }
    }

    #[test]
    fn a_full_answer_decodes_as_one_discover_response() {
        let mut records = Vec::new();
        for (i, healthy) in [(1, true), (2, false)] {
            let mut r = crate::discovery::cache::tests_support::record(&format!("i{i}"));
            r.healthy = healthy;
            records.push(r);
        }
        let mut instances = InstanceMap::default();
        for r in &records {
            instances.insert(CachedInstance::new(InstanceFacts {
                record: r,
                isolate: false,
                revision: "r",
                ctime: "2026-12-01 10:00:00.000",
                mtime: "2026-12-01 10:00:00.000",
            }));
        }
        let info = ServiceInfo {
            id: "sid".to_owned(),
            ctime: "2026-12-01 09:00:00.000".to_owned(),
            mtime: "2026-12-01 09:00:00.000".to_owned(),
        };
        let snapshot = ServiceSnapshot {
            namespace: "ns",
            name: "svc",
            info: &info,
            revision: "rev",
            instances: &instances,
        };
        let all =
            proto::DiscoverResponse::decode(instances_answer(&snapshot, false).to_bytes()).unwrap();
        assert_eq!(all.code, Some(200_000));
        assert_eq!(all.r#type, DiscoverResponseType::Instance as i32);
        let service = all.service.unwrap();
        assert_eq!(service.revision.as_deref(), Some("rev"));
        assert_eq!(service.token, None);
        assert_eq!(service.total_instance_count, Some(2));
        assert_eq!(service.healthy_instance_count, Some(1));
        let ids: Vec<String> = all
            .instances
            .iter()
            .map(|i| i.id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["i1", "i2"]);
        let healthy =
            proto::DiscoverResponse::decode(instances_answer(&snapshot, true).to_bytes()).unwrap();
        assert_eq!(healthy.instances.len(), 1);
    }

    fn instances_answer(snapshot: &ServiceSnapshot<'_>, healthy_only: bool) -> Encoded {
        instances(snapshot, healthy_only)
    }
}
