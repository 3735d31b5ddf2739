//! A service's instances: found by id in one hash look-up, listed in id order.
//!
//! Heartbeats and the write path look an instance up by id far more often than an answer
//! lists them, so the instances live in a hash map, and their order is kept apart, in a
//! `BTreeSet` of small keys: the id's first 16 bytes as a big-endian number (zero-padded),
//! which sorts as the ids do, then the id for the rare ids that share those bytes. A
//! `BTreeMap` keyed by the id itself followed each id's pointer at every comparison on the
//! way down: with 100,000 instances in a service nearly every one missed the CPU's cache,
//! and its inserts took about 5 % of the server's CPU in a fresh storm; keyed by the
//! number with the instances in its nodes, a heartbeat's look-up still crossed several
//! large nodes (6 % of the server's request threads' samples in a beating fleet).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::cache::CachedInstance;

/// The instances of one service.
#[derive(Debug, Default)]
pub struct InstanceMap {
    by_id: HashMap<Arc<str>, CachedInstance, foldhash::fast::RandomState>,
    order: BTreeSet<OrderKey>,
}

/// Where an id sorts: by `prefix`, then by the id itself, which is the order of the ids.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey {
    prefix: u128,
    id: Arc<str>,
}

impl OrderKey {
    fn of(id: &Arc<str>) -> OrderKey {
        OrderKey {
            prefix: prefix(id),
            id: Arc::clone(id),
        }
    }
}

/// An id's first 16 bytes, zero-padded, as a big-endian number: if `a < b` then
/// `prefix(a) <= prefix(b)`, so ordering by prefix and then by id is ordering by id.
fn prefix(id: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let head = &id.as_bytes()[..id.len().min(16)];
    bytes[..head.len()].copy_from_slice(head);
    u128::from_be_bytes(bytes)
}

impl InstanceMap {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&CachedInstance> {
        self.by_id.get(id)
    }

    /// Adds an instance, or replaces the one of the same id; returns the replaced one.
    pub fn insert(&mut self, cached: CachedInstance) -> Option<CachedInstance> {
        let id = Arc::clone(&cached.id);
        let replaced = self.by_id.insert(Arc::clone(&id), cached);
        if replaced.is_none() {
            self.order.insert(OrderKey {
                prefix: prefix(&id),
                id,
            });
        }
        replaced
    }

    /// Removes an instance; returns it.
    pub fn remove(&mut self, id: &str) -> Option<CachedInstance> {
        let removed = self.by_id.remove(id)?;
        self.order.remove(&OrderKey::of(&removed.id));
        Some(removed)
    }

    /// Every instance, in id order.
    pub fn values(&self) -> impl Iterator<Item = &CachedInstance> {
        self.order
            .iter()
            .map(|key| self.by_id.get(&key.id).expect("ordered ids are held"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::discovery::cache::InstanceFacts;
    use crate::discovery::cache::tests_support::record;

    fn cached(id: &str, revision: &str) -> CachedInstance {
        let mut r = record("i");
        r.id = id.to_owned();
        CachedInstance::new(InstanceFacts {
            record: &r,
            isolate: false,
            revision,
            ctime: "2026-12-01 10:00:00.000",
            mtime: "2026-12-01 10:00:00.000",
        })
    }

    /// Ids from a small alphabet with a long shared head, so that many share a slot.
    fn id_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("(0123456789abcdef|0123)?[\u{0}a-c\u{e9}]{0,20}")
            .expect("a valid regex")
    }

    proptest::proptest! {
        #[test]
        fn behaves_as_a_btree_map_keyed_by_id(
            ops in proptest::collection::vec((proptest::bool::ANY, id_strategy(), 0u8..4), 0..200)
        ) {
            let mut map = InstanceMap::default();
            let mut reference: BTreeMap<String, String> = BTreeMap::new();
            for (insert, id, revision) in ops {
                if insert {
                    let revision = format!("r{revision}");
                    let replaced = map.insert(cached(&id, &revision));
                    let expected = reference.insert(id.clone(), revision.clone());
                    proptest::prop_assert_eq!(replaced.is_some(), expected.is_some());
                    if let (Some(replaced), Some(expected)) = (replaced, expected) {
                        proptest::prop_assert!(replaced.has_revision(&expected));
                    }
                } else {
                    let removed = map.remove(&id).map(|c| c.id.to_string());
                    let expected = reference.remove(&id).map(|_| id.clone());
                    proptest::prop_assert_eq!(removed, expected);
                }
                proptest::prop_assert_eq!(map.len(), reference.len());
                proptest::prop_assert_eq!(map.is_empty(), reference.is_empty());
                for (id, revision) in &reference {
                    let held = map.get(id);
                    proptest::prop_assert!(held.is_some_and(|c| c.has_revision(revision)));
                }
                let listed: Vec<String> = map.values().map(|c| c.id.to_string()).collect();
                let expected: Vec<String> = reference.keys().cloned().collect();
                proptest::prop_assert_eq!(listed, expected);
            }
        }
    }

    #[test]
    fn ids_sharing_their_first_16_bytes_are_listed_in_id_order() {
        let mut map = InstanceMap::default();
        for id in [
            "0123456789abcdefz",
            "0123456789abcdef",
            "0123456789abcdefa",
            "0",
        ] {
            assert!(map.insert(cached(id, "r1")).is_none());
        }
        let listed: Vec<&str> = map.values().map(|c| &*c.id).collect();
        assert_eq!(
            listed,
            [
                "0",
                "0123456789abcdef",
                "0123456789abcdefa",
                "0123456789abcdefz"
            ]
        );
        assert!(map.insert(cached("0123456789abcdefa", "r2")).is_some());
        assert!(map.get("0123456789abcdefa").unwrap().has_revision("r2"));
        assert!(map.remove("0123456789abcdefz").is_some());
        assert!(map.remove("0123456789abcdef").is_some());
        assert!(map.remove("0123456789abcdefb").is_none());
        assert_eq!(map.len(), 2);
        assert_eq!(map.order.len(), 2);
    }
}
