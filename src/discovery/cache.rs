//! The registry cache: every namespace, service and live instance in memory, each
//! instance kept encoded as the `Instance` a Discover answer carries.
//!
//! A service's revision changes whenever anything its answer shows changes, and only
//! then: it is the SHA-1 of the service's own fields and of the sum of its instances'
//! digests (each a hash of the instance's id, content revision, ctime and mtime), kept up
//! to date in O(1) per change. A service without instances has the revision sha1("").
//! The full answer is encoded once per revision, when first asked for, and shared.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use prost::Message;
use sha1::{Digest, Sha1};

use crate::proto;
use crate::store::{InstanceRecord, StoredInstance, StoredService};

/// The revision of a service without instances: sha1("").
pub const EMPTY_REVISION: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

/// One live instance, as the cache keeps it.
#[derive(Debug, Clone)]
pub struct CachedInstance {
    pub id: Arc<str>,
    /// The content revision (see `InstanceRecord::revision`).
    pub revision: Box<str>,
    pub mtime: Box<str>,
    pub isolate: bool,
    pub healthy: bool,
    /// Heartbeat ttl in seconds, when the instance has a heartbeat health check.
    pub ttl: Option<u32>,
    /// The `Instance` message of a Discover answer.
    pub encoded: Bytes,
    /// Its share of the service revision.
    digest: u128,
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

/// A stored time as answers show it: to the second (`2026-12-01 13:15:00`).
fn shown_time(time: &str) -> String {
    time.get(..19).unwrap_or(time).to_owned()
}

impl CachedInstance {
    pub fn new(facts: InstanceFacts<'_>) -> Self {
        let r = facts.record;
        let text = |value: &str| Some(value.to_owned());
        let wire = proto::Instance {
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
            ctime: Some(shown_time(facts.ctime)),
            mtime: Some(shown_time(facts.mtime)),
            revision: text(facts.revision),
            // The service token is a secret: never in an answer.
            service_token: None,
        };
        let mut digest = Sha1::new();
        for part in [&r.id, facts.revision, facts.ctime, facts.mtime] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        let digest = digest.finalize();
        CachedInstance {
            id: Arc::from(r.id.as_str()),
            revision: facts.revision.into(),
            mtime: facts.mtime.into(),
            isolate: facts.isolate,
            healthy: r.healthy,
            ttl: r.health_check_ttl,
            encoded: Bytes::from(wire.encode_to_vec()),
            digest: u128::from_le_bytes(digest[..16].try_into().expect("16 bytes")),
        }
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
    instances: BTreeMap<Arc<str>, CachedInstance>,
    sum: u128,
    revision: Arc<str>,
    /// The full INSTANCE answer of the current revision, once encoded.
    answer: Option<Bytes>,
}

impl ServiceState {
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
    Changed(Bytes),
}

/// The cache. Cheap to share: every method takes `&self`.
#[derive(Debug, Default)]
pub struct RegistryCache {
    /// namespace → service name → entry.
    services: RwLock<HashMap<Arc<str>, HashMap<Arc<str>, Arc<ServiceEntry>>>>,
    /// instance id → its service.
    instances: RwLock<HashMap<Arc<str>, Arc<ServiceEntry>>>,
    /// Instances removed recently, with the mtime of their removal: the change feed does
    /// not bring back what was fetched before a local deregistration.
    tombstones: Mutex<HashMap<Arc<str>, Box<str>>>,
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
        let entry = self.service_entry(&stored.namespace, &stored.name, ServiceInfo::from(stored));
        let mut state = entry.state.lock().expect("service lock");
        let info = ServiceInfo::from(stored);
        if state.info != info {
            state.info = info;
            state.refresh_revision(&entry.namespace, &entry.name);
        }
        drop(state);
        entry
    }

    /// The entry of a service, made with `info` if it is new.
    fn service_entry(&self, namespace: &str, name: &str, info: ServiceInfo) -> Arc<ServiceEntry> {
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
                info,
                instances: BTreeMap::new(),
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
    pub fn put_instance(&self, service: &StoredService, facts: InstanceFacts<'_>) {
        let cached = CachedInstance::new(facts);
        let entry = self.service_entry(&service.namespace, &service.name, service.into());
        let id = Arc::clone(&cached.id);
        let previous = self
            .instances
            .write()
            .expect("cache lock")
            .insert(Arc::clone(&id), Arc::clone(&entry));
        if let Some(previous) = previous.filter(|p| !Arc::ptr_eq(p, &entry)) {
            previous.remove(&id);
        }
        entry.insert(cached);
    }

    /// Removes an instance; `mtime` is when it was deregistered.
    pub fn remove_instance(&self, id: &str, mtime: &str) {
        let removed = self.instances.write().expect("cache lock").remove(id);
        if let Some(entry) = removed {
            entry.remove(id);
        }
        self.tombstones
            .lock()
            .expect("cache lock")
            .insert(Arc::from(id), mtime.into());
    }

    /// The content revision, isolate flag and mtime the cache holds for an instance, and
    /// its service's names.
    pub fn instance(&self, id: &str) -> Option<(Arc<ServiceEntry>, CachedInstance)> {
        let entry = self
            .instances
            .read()
            .expect("cache lock")
            .get(id)
            .cloned()?;
        let cached = entry
            .state
            .lock()
            .expect("service lock")
            .instances
            .get(id)?
            .clone();
        Some((entry, cached))
    }

    /// Whether the cache holds the instance as stored with this revision and mtime.
    pub fn holds(&self, id: &str, revision: &str, mtime: &str) -> bool {
        self.instance(id)
            .is_some_and(|(_, held)| *held.revision == *revision && *held.mtime == *mtime)
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

    /// Changes whenever a service is added.
    pub fn services_generation(&self) -> u64 {
        self.services_generation.load(Ordering::Relaxed)
    }
}

impl ServiceEntry {
    fn insert(&self, cached: CachedInstance) {
        let mut state = self.state.lock().expect("service lock");
        state.sum = state.sum.wrapping_add(cached.digest);
        if let Some(old) = state.instances.insert(Arc::clone(&cached.id), cached) {
            state.sum = state.sum.wrapping_sub(old.digest);
        }
        state.refresh_revision(&self.namespace, &self.name);
    }

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

    pub fn info(&self) -> ServiceInfo {
        self.state.lock().expect("service lock").info.clone()
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
        encode: impl FnOnce(&ServiceSnapshot<'_>) -> Bytes,
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
    /// An answer built now from the current state, and not kept.
    pub fn encode(&self, encode: impl FnOnce(&ServiceSnapshot<'_>) -> Bytes) -> Bytes {
        let state = self.state.lock().expect("service lock");
        encode(&ServiceSnapshot {
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
    pub instances: &'a BTreeMap<Arc<str>, CachedInstance>,
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
    fn an_answer_is_encoded_once_per_revision() {
        let cache = RegistryCache::default();
        put(&cache, &record("i1", "a", 100), "2026-12-01 10:00:00.000");
        let entry = cache.service("ns", "a").unwrap();
        let mut encoded = 0;
        let mut encode = |_: &ServiceSnapshot<'_>| {
            encoded += 1;
            Bytes::from_static(b"answer")
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
    fn instances_are_encoded_without_the_token_and_with_times_to_the_second() {
        let r = record("i1", "a", 100);
        let cached = CachedInstance::new(InstanceFacts {
            record: &r,
            isolate: true,
            revision: "rev",
            ctime: "2026-12-01 10:00:00.123",
            mtime: "2026-12-01 10:00:01.456",
        });
        let wire = proto::Instance::decode(cached.encoded.clone()).unwrap();
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
