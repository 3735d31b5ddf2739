//! Discover answers, encoded: the full answer of a service is its header followed by each
//! instance's field as the cache keeps it encoded, in chunks that share the cache's
//! bytes, so a new revision costs a list of references, not an encoding of every
//! instance, nor a second copy of the fleet in memory.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::cache::ServiceSnapshot;
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
/// and the encoded `Instance`, ready to follow an answer's header.
pub fn instance_field(instance: &proto::Instance) -> Bytes {
    let length = instance.encoded_len();
    let mut field = Vec::with_capacity(length + 6);
    encode_key(INSTANCES_FIELD, WireType::LengthDelimited, &mut field);
    encode_varint(length as u64, &mut field);
    instance.encode(&mut field).expect("capacity reserved");
    Bytes::from(field)
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
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::discovery::cache::{CachedInstance, InstanceFacts, ServiceInfo};

    #[test]
    fn a_full_answer_decodes_as_one_discover_response() {
        let mut records = Vec::new();
        for (i, healthy) in [(1, true), (2, false)] {
            let mut r = crate::discovery::cache::tests_support::record(&format!("i{i}"));
            r.healthy = healthy;
            records.push(r);
        }
        let instances: BTreeMap<Arc<str>, CachedInstance> = records
            .iter()
            .map(|r| {
                let cached = CachedInstance::new(InstanceFacts {
                    record: r,
                    isolate: false,
                    revision: "r",
                    ctime: "2026-12-01 10:00:00.000",
                    mtime: "2026-12-01 10:00:00.000",
                });
                (Arc::clone(&cached.id), cached)
            })
            .collect();
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
