//! The registry cache: every namespace, service and live instance in memory, each
//! instance kept encoded as the `Instance` a Discover answer carries.
//!
//! A service's revision changes whenever anything its answer shows changes, and only
//! then: it is the SHA-1 of the service's own fields and of the sum of its instances'
//! digests (each a hash of the instance's id, content revision, ctime and mtime), kept up
//! to date in O(1) per change. A service without instances has the revision sha1("").
//! The full answer is encoded once per revision, when first asked for, and shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use prost::Message;
use sha1::{Digest, Sha1};
use std::collections::HashSet;

use super::answer::{self, Encoded};
use super::instances::InstanceMap;
use crate::proto;
use crate::store::clock;
use crate::store::{InstanceRecord, StoredInstance, StoredService};

/// Services a call of [`RegistryCache::put_instances`] remembers, to look each up once.
const MET_SERVICES: usize = 16;

/// Instances [`RegistryCache::put_instances`] puts under one take of the locks: a
/// change-feed read or a page of the load is longer, and heartbeats and Discover answers
/// wait for the instance map's lock meanwhile.
const PUT_CHUNK: usize = 1024;

/// The revision of a service without instances: sha1("").
pub const EMPTY_REVISION: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

/// One live instance, as the cache keeps it: compact, since a fleet may hold millions.
#[derive(Debug, Clone)]
pub struct CachedInstance {
    pub id: Arc<str>,
    /// The content revision (see `InstanceRecord::revision`).
    revision: Revision,
    ctime_ms: i64,
    mtime_ms: i64,
    pub isolate: bool,
    pub healthy: bool,
    /// Heartbeat ttl in seconds, when the instance has a heartbeat health check.
    pub ttl: Option<u32>,
    /// The `instances` field of a Discover answer: key, length, encoded `Instance`.
    field: Bytes,
    /// Its share of the service revision.
    digest: u64,
}

/// An instance just put in the cache: its id as the cache shares it (the beat table
/// keeps the same allocation) and its heartbeat ttl, when it has a heartbeat check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub id: Arc<str>,
    pub ttl: Option<u32>,
}

/// A content revision: 16 bytes when it is batchreg's 32 hex digits, else as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Revision {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl Revision {
    fn new(text: &str) -> Revision {
        let mut bytes = [0u8; 16];
        let is_lower_hex = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) if is_lower_hex => Revision::Hex(bytes),
            _ => Revision::Text(text.into()),
        }
    }

    fn is(&self, text: &str) -> bool {
        match self {
            Revision::Hex(bytes) => {
                let mut decoded = [0u8; 16];
                text.len() == 32
                    && hex::decode_to_slice(text, &mut decoded).is_ok()
                    && decoded == *bytes
                    && !text.bytes().any(|b| b.is_ascii_uppercase())
            }
            Revision::Text(own) => **own == *text,
        }
    }

    fn text(&self) -> String {
        match self {
            Revision::Hex(bytes) => hex::encode(bytes),
            Revision::Text(own) => own.to_string(),
        }
    }
}

/// A time of the time columns, in milliseconds (0 when it does not parse).
fn millis(time: &str) -> i64 {
    clock::parse_ms(time).unwrap_or(0)
}

/// What the store holds for one instance: a record and the state it was stored with.
#[derive(Debug, Clone, Copy)]
pub struct InstanceFacts<'a> {
    pub record: &'a InstanceRecord,
    pub isolate: bool,
    pub revision: &'a str,
    pub ctime: &'a str,
    pub mtime: &'a str,
}

impl<'a> From<&'a StoredInstance> for InstanceFacts<'a> {
    fn from(stored: &'a StoredInstance) -> Self {
        InstanceFacts {
            record: &stored.record,
            isolate: stored.isolate,
            revision: &stored.revision,
            ctime: &stored.ctime,
            mtime: &stored.mtime,
        }
    }
}

impl CachedInstance {
    pub fn new(facts: InstanceFacts<'_>) -> Self {
        let r = facts.record;
        let mut digest = Sha1::new();
        for part in [&r.id, facts.revision, facts.ctime, facts.mtime] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        let digest = digest.finalize();
        CachedInstance {
            id: Arc::from(r.id.as_str()),
            revision: Revision::new(facts.revision),
            ctime_ms: millis(facts.ctime),
            mtime_ms: millis(facts.mtime),
            isolate: facts.isolate,
            healthy: r.healthy,
            ttl: r.health_check_ttl,
            field: answer::instance_field(facts),
            digest: u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")),
        }
    }

    /// The `instances` field of a Discover answer.
    pub fn field(&self) -> &Bytes {
        &self.field
    }

    /// The instance as an answer carries it.
    pub fn wire(&self) -> proto::Instance {
        let mut field = self.field.clone();
        // The field's key and length come first.
        prost::encoding::decode_key(&mut field).expect("encoded by this cache");
        prost::encoding::decode_varint(&mut field).expect("encoded by this cache");
        proto::Instance::decode(field).expect("encoded by this cache")
    }

    /// Whether the instance is stored with this content revision.
    pub fn has_revision(&self, revision: &str) -> bool {
        self.revision.is(revision)
    }

    /// Whether the instance is stored with this content revision and mtime.
    pub fn is_stored_as(&self, revision: &str, mtime: &str) -> bool {
        self.revision.is(revision) && self.mtime_ms == millis(mtime)
    }

    /// Whether the instance was written after `mtime`.
    pub fn written_after(&self, mtime: &str) -> bool {
        self.mtime_ms > millis(mtime)
    }

    /// When the instance was written (its mtime), in milliseconds.
    pub fn written_at_ms(&self) -> i64 {
        self.mtime_ms
    }

    /// The record it was stored from, with its state: what a health transition rewrites.
    pub fn stored(&self) -> (InstanceRecord, String, String) {
        let wire = self.wire();
        let text = |value: Option<String>| value.unwrap_or_default();
        let location = wire.location.unwrap_or_default();
        let mut metadata: Vec<(String, String)> = wire.metadata.into_iter().collect();
        metadata.sort_unstable();
        let record = InstanceRecord {
            id: text(wire.id),
            namespace: text(wire.namespace),
            service: text(wire.service),
            vpc_id: text(wire.vpc_id),
            host: text(wire.host),
            port: wire.port.unwrap_or_default(),
            protocol: text(wire.protocol),
            version: text(wire.version),
            priority: wire.priority.unwrap_or_default(),
            weight: wire.weight.unwrap_or_default(),
            healthy: wire.healthy.unwrap_or(true),
            isolate: Some(self.isolate),
            enable_health_check: wire.enable_health_check.unwrap_or(false),
            health_check_ttl: self.ttl,
            logic_set: text(wire.logic_set),
            region: text(location.region),
            zone: text(location.zone),
            campus: text(location.campus),
            metadata,
        };
        (
            record,
            self.revision.text(),
            clock::format_ms(self.ctime_ms),
        )
    }
}

/// A service's own fields as answers show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: String,
    pub ctime: String,
    pub mtime: String,
}

impl From<&StoredService> for ServiceInfo {
    fn from(stored: &StoredService) -> Self {
        ServiceInfo {
            id: stored.id.clone(),
            ctime: stored.ctime.clone(),
            mtime: stored.mtime.clone(),
        }
    }
}

/// One service and its instances.
#[derive(Debug)]
pub struct ServiceEntry {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    state: Mutex<ServiceState>,
}

#[derive(Debug)]
struct ServiceState {
    info: ServiceInfo,
    /// In id order, so that an answer lists them in a stable order.
    instances: InstanceMap,
    sum: u64,
    revision: Arc<str>,
    /// The full INSTANCE answer of the current revision, once encoded.
    answer: Option<Encoded>,
}

impl ServiceState {
    /// Adds or replaces an instance; the revision is refreshed by the caller.
    fn put(&mut self, cached: CachedInstance) {
        self.sum = self.sum.wrapping_add(cached.digest);
        if let Some(old) = self.instances.insert(cached) {
            self.sum = self.sum.wrapping_sub(old.digest);
        }
    }

    fn refresh_revision(&mut self, namespace: &str, name: &str) {
        self.answer = None;
        self.revision = if self.instances.is_empty() {
            Arc::from(EMPTY_REVISION)
        } else {
            let mut hash = Sha1::new();
            for part in [
                namespace,
                name,
                &self.info.id,
                &self.info.ctime,
                &self.info.mtime,
            ] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
            hash.update(self.sum.to_le_bytes());
            Arc::from(hex::encode(hash.finalize()))
        };
    }
}

/// What a service looks like to a Discover of its instances.
pub enum ServiceView {
    /// The client's revision is the current one.
    Current,
    /// The full answer of the current revision, encoded.
    Changed(Encoded),
}

/// A namespace's services by name.
type ServicesByName = HashMap<Arc<str>, Arc<ServiceEntry>>;

/// Where an instance is, and the two facts a heartbeat reads, so that a beat takes one
/// look-up and no service's lock. Set by every put, as the instance itself is.
#[derive(Debug, Clone)]
struct Placement {
    entry: Arc<ServiceEntry>,
    ttl: Option<u32>,
    healthy: bool,
}

/// The cache. Cheap to share: every method takes `&self`.
#[derive(Debug, Default)]
pub struct RegistryCache {
    /// namespace → service name → entry.
    services: RwLock<HashMap<Arc<str>, ServicesByName>>,
    /// instance id → its service, with what a heartbeat needs (foldhash: every write,
    /// heartbeat and change-feed row looks an id up here; seeded per process, so ids
    /// chosen by clients cannot aim at one bucket).
    instances: RwLock<HashMap<Arc<str>, Placement, foldhash::fast::RandomState>>,
    /// Instances removed recently, with the mtime of their removal: the change feed does
    /// not bring back what was fetched before a local deregistration.
    tombstones: Mutex<HashMap<Arc<str>, Box<str>>>,
    /// The instances whose health is false: the ones a heartbeat may bring back.
    unhealthy: Mutex<HashSet<Arc<str>>>,
    service_count: AtomicUsize,
    /// Counts additions and removals of services, so the SERVICES answers know when to
    /// change.
    services_generation: AtomicU64,
}

impl RegistryCache {
    pub fn service_count(&self) -> usize {
        self.service_count.load(Ordering::Relaxed)
    }

    pub fn instance_count(&self) -> usize {
        self.instances.read().expect("cache lock").len()
    }

    /// Adds a service, or updates its own fields.
    pub fn put_service(&self, stored: &StoredService) -> Arc<ServiceEntry> {
        let entry = self.service_entry(&stored.namespace, &stored.name, || stored.into());
        let mut state = entry.state.lock().expect("service lock");
        let info = ServiceInfo::from(stored);
        if state.info != info {
            state.info = info;
            state.refresh_revision(&entry.namespace, &entry.name);
        }
        drop(state);
        entry
    }

    /// The entry of a service, made with `info()` if it is new.
    fn service_entry(
        &self,
        namespace: &str,
        name: &str,
        info: impl FnOnce() -> ServiceInfo,
    ) -> Arc<ServiceEntry> {
        if let Some(entry) = self.service(namespace, name) {
            return entry;
        }
        let mut services = self.services.write().expect("cache lock");
        let names = services.entry(Arc::from(namespace)).or_default();
        if let Some(entry) = names.get(name) {
            return Arc::clone(entry);
        }
        let entry = Arc::new(ServiceEntry {
            namespace: Arc::from(namespace),
            name: Arc::from(name),
            state: Mutex::new(ServiceState {
                info: info(),
                instances: InstanceMap::default(),
                sum: 0,
                revision: Arc::from(EMPTY_REVISION),
                answer: None,
            }),
        });
        names.insert(Arc::clone(&entry.name), Arc::clone(&entry));
        self.service_count.fetch_add(1, Ordering::Relaxed);
        self.services_generation.fetch_add(1, Ordering::Relaxed);
        entry
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<ServiceEntry>> {
        let services = self.services.read().expect("cache lock");
        services.get(namespace)?.get(name).cloned()
    }

    /// Puts an instance of `service` in the cache, replacing what it held for its id
    /// (also under another service).
    pub fn put_instance(&self, service: &StoredService, facts: InstanceFacts<'_>) -> Placed {
        let mut placed = self.put_instances([(service, facts)]);
        placed.pop().expect("one instance put")
    }

    /// Puts instances in the cache as [`Self::put_instance`] does, each lock taken once
    /// per [`PUT_CHUNK`] instances and each service's revision computed once per chunk:
    /// a write batch or a page of the load is one call. Returns, in order, each
    /// instance's id as the cache shares it and its heartbeat ttl.
    pub fn put_instances<'a>(
        &self,
        puts: impl IntoIterator<Item = (&'a StoredService, InstanceFacts<'a>)>,
    ) -> Vec<Placed> {
        let mut puts = puts.into_iter().peekable();
        // The services met so far: a batch names few.
        let mut met: Vec<Arc<ServiceEntry>> = Vec::new();
        let mut placed = Vec::new();
        while puts.peek().is_some() {
            let chunk = puts.by_ref().take(PUT_CHUNK);
            placed.extend(self.put_chunk(chunk, &mut met));
        }
        placed
    }

    /// [`Self::put_instances`] for one chunk, `met` the service entries looked up so far.
    fn put_chunk<'a>(
        &self,
        puts: impl Iterator<Item = (&'a StoredService, InstanceFacts<'a>)>,
        met: &mut Vec<Arc<ServiceEntry>>,
    ) -> Vec<Placed> {
        let mut entries: Vec<(Arc<ServiceEntry>, CachedInstance)> = Vec::new();
        for (service, facts) in puts {
            let known = met
                .iter()
                .find(|e| *e.namespace == *service.namespace && *e.name == *service.name);
            let entry = match known {
                Some(entry) => Arc::clone(entry),
                None => {
                    let entry =
                        self.service_entry(&service.namespace, &service.name, || service.into());
                    if met.len() < MET_SERVICES {
                        met.push(Arc::clone(&entry));
                    }
                    entry
                }
            };
            entries.push((entry, CachedInstance::new(facts)));
        }
        let placed: Vec<Placed> = entries
            .iter()
            .map(|(_, cached)| Placed {
                id: Arc::clone(&cached.id),
                ttl: cached.ttl,
            })
            .collect();
        let mut moved = Vec::new();
        let mut instances = self.instances.write().expect("cache lock");
        for (entry, cached) in &entries {
            let placement = Placement {
                entry: Arc::clone(entry),
                ttl: cached.ttl,
                healthy: cached.healthy,
            };
            let previous = instances.insert(Arc::clone(&cached.id), placement);
            if let Some(previous) = previous.filter(|p| !Arc::ptr_eq(&p.entry, entry)) {
                moved.push((previous.entry, Arc::clone(&cached.id)));
            }
        }
        drop(instances);
        let mut unhealthy = self.unhealthy.lock().expect("cache lock");
        for (_, cached) in &entries {
            if !cached.healthy {
                unhealthy.insert(Arc::clone(&cached.id));
            } else if !unhealthy.is_empty() {
                unhealthy.remove(&cached.id);
            }
        }
        drop(unhealthy);
        // Grouped by service, each service's instances in the order given.
        entries.sort_by_key(|(entry, _)| Arc::as_ptr(entry) as usize);
        let mut entries = entries.into_iter().peekable();
        while let Some((entry, cached)) = entries.next() {
            let mut state = entry.state.lock().expect("service lock");
            state.put(cached);
            while let Some((_, cached)) = entries.next_if(|(next, _)| Arc::ptr_eq(next, &entry)) {
                state.put(cached);
            }
            state.refresh_revision(&entry.namespace, &entry.name);
        }
        // Instances that moved to another service leave the one they were in (unless a
        // later put of the same id brought them back to it).
        for (previous, id) in moved {
            let now_in = self.entry_of(&id);
            if !now_in.is_some_and(|entry| Arc::ptr_eq(&entry, &previous)) {
                previous.remove(&id);
            }
        }
        placed
    }

    /// The instances whose health is false.
    pub fn unhealthy(&self) -> Vec<Arc<str>> {
        self.unhealthy
            .lock()
            .expect("cache lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn unhealthy_count(&self) -> usize {
        self.unhealthy.lock().expect("cache lock").len()
    }

    /// Every instance with a heartbeat health check, and its ttl.
    pub fn checked(&self) -> Vec<(Arc<str>, u32)> {
        self.services_of(None)
            .iter()
            .flat_map(|entry| {
                let state = entry.state.lock().expect("service lock");
                state
                    .instances
                    .values()
                    .filter_map(|i| Some((Arc::clone(&i.id), i.ttl?)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes an instance; `mtime` is when it was deregistered.
    pub fn remove_instance(&self, id: &str, mtime: &str) {
        self.unhealthy.lock().expect("cache lock").remove(id);
        let removed = self.instances.write().expect("cache lock").remove(id);
        if let Some(placed) = removed {
            placed.entry.remove(id);
        }
        self.tombstones
            .lock()
            .expect("cache lock")
            .insert(Arc::from(id), mtime.into());
    }

    /// The content revision, isolate flag and mtime the cache holds for an instance, and
    /// its service's names.
    pub fn instance(&self, id: &str) -> Option<(Arc<ServiceEntry>, CachedInstance)> {
        let entry = self.entry_of(id)?;
        let cached = entry
            .state
            .lock()
            .expect("service lock")
            .instances
            .get(id)?
            .clone();
        Some((entry, cached))
    }

    /// For a cached instance, its id as the cache shares it, its heartbeat ttl (`None`:
    /// no heartbeat health check) and its health; `None` when the instance is not cached.
    /// Cheaper than [`Self::instance`].
    pub fn heartbeat_ttl(&self, id: &str) -> Option<(Arc<str>, Option<u32>, bool)> {
        let instances = self.instances.read().expect("cache lock");
        let (id, placed) = instances.get_key_value(id)?;
        Some((Arc::clone(id), placed.ttl, placed.healthy))
    }

    /// The service an instance is in.
    fn entry_of(&self, id: &str) -> Option<Arc<ServiceEntry>> {
        let instances = self.instances.read().expect("cache lock");
        instances.get(id).map(|placed| Arc::clone(&placed.entry))
    }

    /// `look` applied to the cached instance, without copying it; `None` when it is not
    /// cached.
    pub fn peek<R>(&self, id: &str, look: impl FnOnce(&CachedInstance) -> R) -> Option<R> {
        let entry = self.entry_of(id)?;
        let state = entry.state.lock().expect("service lock");
        state.instances.get(id).map(look)
    }

    /// The instance, when the cache holds it as stored with this revision and mtime.
    pub fn held_as(&self, id: &str, revision: &str, mtime: &str) -> Option<Placed> {
        self.peek(id, |held| {
            held.is_stored_as(revision, mtime).then(|| Placed {
                id: Arc::clone(&held.id),
                ttl: held.ttl,
            })
        })
        .flatten()
    }

    /// The mtime of an instance's removal, if it was removed recently.
    pub fn tombstone(&self, id: &str) -> Option<Box<str>> {
        self.tombstones.lock().expect("cache lock").get(id).cloned()
    }

    /// Forgets removals older than `before`.
    pub fn forget_tombstones(&self, before: &str) {
        self.tombstones
            .lock()
            .expect("cache lock")
            .retain(|_, mtime| &**mtime >= before);
    }

    /// Every service of `namespace` (every namespace when `None`), sorted.
    pub fn services_of(&self, namespace: Option<&str>) -> Vec<Arc<ServiceEntry>> {
        let services = self.services.read().expect("cache lock");
        let mut found: Vec<Arc<ServiceEntry>> = match namespace {
            Some(namespace) => services
                .get(namespace)
                .map(|names| names.values().cloned().collect())
                .unwrap_or_default(),
            None => services
                .values()
                .flat_map(|names| names.values().cloned())
                .collect(),
        };
        found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        found
    }

    /// Every namespace with its number of services, sorted by name.
    pub fn namespaces(&self) -> Vec<(Arc<str>, usize)> {
        let services = self.services.read().expect("cache lock");
        let mut found: Vec<(Arc<str>, usize)> = services
            .iter()
            .map(|(namespace, names)| (Arc::clone(namespace), names.len()))
            .collect();
        found.sort_unstable();
        found
    }

    /// Changes whenever a service is added.
    pub fn services_generation(&self) -> u64 {
        self.services_generation.load(Ordering::Relaxed)
    }
}

impl ServiceEntry {
    fn remove(&self, id: &str) {
        let mut state = self.state.lock().expect("service lock");
        if let Some(old) = state.instances.remove(id) {
            state.sum = state.sum.wrapping_sub(old.digest);
            state.refresh_revision(&self.namespace, &self.name);
        }
    }

    pub fn revision(&self) -> Arc<str> {
        Arc::clone(&self.state.lock().expect("service lock").revision)
    }

    /// The service as stored.
    pub fn stored(&self) -> StoredService {
        let info = self.state.lock().expect("service lock").info.clone();
        StoredService {
            id: info.id,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            ctime: info.ctime,
            mtime: info.mtime,
        }
    }

    /// The instances, in id order.
    pub fn instances(&self) -> Vec<CachedInstance> {
        let state = self.state.lock().expect("service lock");
        state.instances.values().cloned().collect()
    }

    pub fn instance_count(&self) -> usize {
        self.state.lock().expect("service lock").instances.len()
    }

    /// The answer to a client that last saw `revision`: `Current`, or the full answer
    /// (encoded by `encode` when this revision has none yet; the `bool` says whether it
    /// was reused).
    pub fn view(
        &self,
        revision: &str,
        encode: impl FnOnce(&ServiceSnapshot<'_>) -> Encoded,
    ) -> (ServiceView, bool) {
        let mut state = self.state.lock().expect("service lock");
        if *state.revision == *revision {
            return (ServiceView::Current, true);
        }
        if let Some(answer) = &state.answer {
            return (ServiceView::Changed(answer.clone()), true);
        }
        let answer = encode(&ServiceSnapshot {
            namespace: &self.namespace,
            name: &self.name,
            info: &state.info,
            revision: &state.revision,
            instances: &state.instances,
        });
        state.answer = Some(answer.clone());
        (ServiceView::Changed(answer), false)
    }
}

impl ServiceEntry {
    /// `look` applied to the service as it is now (an answer built now and not kept, the
    /// counts an operator reads), under the service's lock.
    pub fn snapshot<R>(&self, look: impl FnOnce(&ServiceSnapshot<'_>) -> R) -> R {
        let state = self.state.lock().expect("service lock");
        look(&ServiceSnapshot {
            namespace: &self.namespace,
            name: &self.name,
            info: &state.info,
            revision: &state.revision,
            instances: &state.instances,
        })
    }
}

/// A service as it is while its answer is encoded.
pub struct ServiceSnapshot<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub info: &'a ServiceInfo,
    pub revision: &'a str,
    pub instances: &'a InstanceMap,
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::store::InstanceRecord;

    /// An instance of `ns/svc` with a heartbeat check and one metadata entry.
    pub fn record(id: &str) -> InstanceRecord {
        super::tests::record(id, "svc", 100)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: &str, service: &str, weight: u32) -> InstanceRecord {
        InstanceRecord {
            id: id.to_owned(),
            namespace: "ns".to_owned(),
            service: service.to_owned(),
            vpc_id: String::new(),
            host: "10.0.0.1".to_owned(),
            port: 80,
            protocol: "grpc".to_owned(),
            version: "1".to_owned(),
            priority: 0,
            weight,
            healthy: true,
            isolate: None,
            enable_health_check: true,
            health_check_ttl: Some(5),
            logic_set: String::new(),
            region: String::new(),
            zone: String::new(),
            campus: String::new(),
            metadata: vec![("k".to_owned(), "v".to_owned())],
        }
    }

    fn service(name: &str) -> StoredService {
        StoredService {
            id: format!("id-{name}"),
            namespace: "ns".to_owned(),
            name: name.to_owned(),
            ctime: "2026-12-01 10:00:00.000".to_owned(),
            mtime: "2026-12-01 10:00:00.000".to_owned(),
        }
    }

    fn put(cache: &RegistryCache, record: &InstanceRecord, mtime: &str) {
        let revision = record.revision(false);
        cache.put_instance(
            &service(&record.service),
            InstanceFacts {
                record,
                isolate: false,
                revision: &revision,
                ctime: "2026-12-01 10:00:00.000",
                mtime,
            },
        );
    }

    fn revision(cache: &RegistryCache, name: &str) -> String {
        cache.service("ns", name).unwrap().revision().to_string()
    }

    #[test]
    fn the_revision_changes_on_each_visible_change_and_on_nothing_else() {
        let cache = RegistryCache::default();
        cache.put_service(&service("a"));
        assert_eq!(revision(&cache, "a"), EMPTY_REVISION);
        let one = record("i1", "a", 100);
        put(&cache, &one, "2026-12-01 10:00:01.000");
        let first = revision(&cache, "a");
        assert_ne!(first, EMPTY_REVISION);

        // The same instance again: nothing visible changed.
        put(&cache, &one, "2026-12-01 10:00:01.000");
        assert_eq!(revision(&cache, "a"), first);
        // The same service's fields again: nothing changed.
        cache.put_service(&service("a"));
        assert_eq!(revision(&cache, "a"), first);

        // Content, mtime, another instance, removal: each a new revision.
        let mut heavier = one.clone();
        heavier.weight = 200;
        put(&cache, &heavier, "2026-12-01 10:00:01.000");
        let second = revision(&cache, "a");
        assert_ne!(second, first);
        put(&cache, &heavier, "2026-12-01 10:00:02.000");
        let third = revision(&cache, "a");
        assert_ne!(third, second);
        put(&cache, &record("i2", "a", 100), "2026-12-01 10:00:03.000");
        let fourth = revision(&cache, "a");
        assert_ne!(fourth, third);
        cache.remove_instance("i2", "2026-12-01 10:00:04.000");
        assert_eq!(revision(&cache, "a"), third, "back to the same content");
        cache.remove_instance("i1", "2026-12-01 10:00:05.000");
        assert_eq!(revision(&cache, "a"), EMPTY_REVISION);
        assert_eq!(cache.instance_count(), 0);
    }

    #[test]
    fn revisions_do_not_depend_on_the_order_changes_arrived_in() {
        let (left, right) = (RegistryCache::default(), RegistryCache::default());
        let records: Vec<InstanceRecord> =
            (0..20).map(|i| record(&format!("i{i}"), "s", i)).collect();
        for r in &records {
            put(&left, r, "2026-12-01 10:00:00.000");
        }
        for r in records.iter().rev() {
            put(&right, r, "2026-12-01 10:00:00.000");
        }
        assert_eq!(revision(&left, "s"), revision(&right, "s"));
    }

    #[test]
    fn an_instance_that_moves_to_another_service_leaves_the_first() {
        let cache = RegistryCache::default();
        put(&cache, &record("i1", "a", 100), "2026-12-01 10:00:00.000");
        put(&cache, &record("i1", "b", 100), "2026-12-01 10:00:01.000");
        assert_eq!(cache.service("ns", "a").unwrap().instance_count(), 0);
        assert_eq!(revision(&cache, "a"), EMPTY_REVISION);
        assert_eq!(cache.service("ns", "b").unwrap().instance_count(), 1);
        assert_eq!(cache.instance_count(), 1);
        assert_eq!(cache.service_count(), 2);
    }

    #[test]
    fn a_batch_put_ends_as_the_same_puts_one_by_one() {
        let mtime = "2026-12-01 10:00:01.000";
        let mut records: Vec<InstanceRecord> = (0..6)
            .map(|n| record(&format!("i{n}"), if n % 2 == 0 { "a" } else { "b" }, 100))
            .collect();
        records[5].health_check_ttl = None;
        records[3].healthy = false;
        // i0 moves from a to b within the batch, then back to a: it ends in a.
        let mut moved = record("i0", "b", 7);
        moved.metadata.clear();
        records.insert(1, moved);
        records.push(record("i0", "a", 9));
        let revisions: Vec<String> = records.iter().map(|r| r.revision(false)).collect();
        let services: Vec<StoredService> = records.iter().map(|r| service(&r.service)).collect();
        let facts = |n: usize| InstanceFacts {
            record: &records[n],
            isolate: false,
            revision: &revisions[n],
            ctime: "2026-12-01 10:00:00.000",
            mtime,
        };

        let one_by_one = RegistryCache::default();
        let placed_one_by_one: Vec<Placed> = (0..records.len())
            .map(|n| one_by_one.put_instance(&services[n], facts(n)))
            .collect();
        let batched = RegistryCache::default();
        // The instance is in b before the batch.
        batched.put_instance(&services[1], facts(1));
        let placed = batched.put_instances((0..records.len()).map(|n| (&services[n], facts(n))));

        assert_eq!(placed, placed_one_by_one);
        assert_eq!(
            placed[6],
            Placed {
                id: Arc::from("i5"),
                ttl: None
            }
        );
        assert_eq!(
            placed[0],
            Placed {
                id: Arc::from("i0"),
                ttl: Some(5)
            }
        );
        for cache in [&one_by_one, &batched] {
            let ids = |name: &str| -> Vec<String> {
                let entry = cache.service("ns", name).unwrap();
                entry.instances().iter().map(|i| i.id.to_string()).collect()
            };
            assert_eq!(ids("a"), ["i0", "i2", "i4"]);
            assert_eq!(ids("b"), ["i1", "i3", "i5"]);
            assert_eq!(cache.instance_count(), 6);
            assert_eq!(cache.unhealthy(), vec![Arc::<str>::from("i3")]);
        }
        assert_eq!(revision(&batched, "a"), revision(&one_by_one, "a"));
        assert_eq!(revision(&batched, "b"), revision(&one_by_one, "b"));
        assert_eq!(
            batched.held_as("i0", &revisions[7], mtime),
            Some(placed[0].clone())
        );
        assert_eq!(batched.held_as("i0", &revisions[0], mtime), None);
    }

    #[test]
    fn a_put_longer_than_a_chunk_is_put_whole() {
        let names = ["a", "b", "c"];
        let records: Vec<InstanceRecord> = (0..PUT_CHUNK * 2 + 500)
            .map(|n| record(&format!("i{n:05}"), names[n % 3], 100))
            .collect();
        let revisions: Vec<String> = records.iter().map(|r| r.revision(false)).collect();
        let services: Vec<StoredService> = names.iter().map(|name| service(name)).collect();
        let facts = |n: usize| InstanceFacts {
            record: &records[n],
            isolate: false,
            revision: &revisions[n],
            ctime: "2026-12-01 10:00:00.000",
            mtime: "2026-12-01 10:00:01.000",
        };
        let batched = RegistryCache::default();
        let placed =
            batched.put_instances((0..records.len()).map(|n| (&services[n % 3], facts(n))));
        let one_by_one = RegistryCache::default();
        for n in 0..records.len() {
            one_by_one.put_instance(&services[n % 3], facts(n));
        }
        assert_eq!(placed.len(), records.len());
        assert_eq!(&*placed[PUT_CHUNK + 1].id, "i01025");
        assert_eq!(batched.instance_count(), records.len());
        for name in names {
            assert_eq!(revision(&batched, name), revision(&one_by_one, name));
        }
    }

    #[test]
    fn an_answer_is_encoded_once_per_revision() {
        let cache = RegistryCache::default();
        put(&cache, &record("i1", "a", 100), "2026-12-01 10:00:00.000");
        let entry = cache.service("ns", "a").unwrap();
        let mut encoded = 0;
        let mut encode = |_: &ServiceSnapshot<'_>| {
            encoded += 1;
            Encoded::from(Bytes::from_static(b"answer"))
        };
        assert!(matches!(
            entry.view("", &mut encode),
            (ServiceView::Changed(_), false)
        ));
        assert!(matches!(
            entry.view("old", &mut encode),
            (ServiceView::Changed(_), true)
        ));
        let current = entry.revision();
        assert!(matches!(
            entry.view(&current, &mut encode),
            (ServiceView::Current, true)
        ));
        put(&cache, &record("i2", "a", 100), "2026-12-01 10:00:01.000");
        assert!(matches!(
            entry.view(&current, &mut encode),
            (ServiceView::Changed(_), false)
        ));
        assert_eq!(encoded, 2);
    }

    #[test]
    fn namespaces_are_listed_by_name_with_their_service_counts() {
        let cache = RegistryCache::default();
        assert_eq!(cache.namespaces(), []);
        for (namespace, name) in [("prod", "b"), ("dev", "a"), ("prod", "a")] {
            cache.put_service(&StoredService {
                namespace: namespace.to_owned(),
                ..service(name)
            });
        }
        let namespaces = cache.namespaces();
        let listed: Vec<(&str, usize)> = namespaces
            .iter()
            .map(|(namespace, services)| (&**namespace, *services))
            .collect();
        assert_eq!(listed, [("dev", 1), ("prod", 2)]);
    }

    #[test]
    fn instances_are_encoded_without_the_token_and_with_times_to_the_second() {
        let r = record("i1", "a", 100);
        let cached = CachedInstance::new(InstanceFacts {
            record: &r,
            isolate: true,
            revision: "rev",
            ctime: "2026-12-01 10:00:00.123",
            mtime: "2026-12-01 10:00:01.456",
        });
        let wire = cached.wire();
        assert_eq!(wire.id.as_deref(), Some("i1"));
        assert_eq!(wire.isolate, Some(true));
        assert_eq!(wire.ctime.as_deref(), Some("2026-12-01 10:00:00"));
        assert_eq!(wire.mtime.as_deref(), Some("2026-12-01 10:00:01"));
        assert_eq!(wire.revision.as_deref(), Some("rev"));
        assert_eq!(wire.service_token, None);
        assert_eq!(wire.health_check.unwrap().heartbeat.unwrap().ttl, Some(5));
        assert_eq!(wire.metadata.get("k").map(String::as_str), Some("v"));
    }
}
