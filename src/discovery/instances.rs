//! A service's instances in id order, as its answers list them.
//!
//! A `BTreeMap` keyed by the id itself compares the ids it passes on the way down
//! through their pointers: with a large service every comparison is a cache miss, and
//! in a fresh storm the inserts took about 5 % of the server's CPU. Here the map is keyed
//! by the id's first 16 bytes as a number (zero-padded, big-endian), which sorts as the
//! ids do and sits in the map's own nodes; the few ids that share those 16 bytes share
//! a slot, in id order.

use std::collections::BTreeMap;

use super::cache::CachedInstance;

/// The instances of one service, in id order.
#[derive(Debug, Default)]
pub struct InstanceMap {
    slots: BTreeMap<u128, Slot>,
    len: usize,
}

/// The instances whose ids begin with the same 16 bytes.
#[derive(Debug)]
enum Slot {
    One(CachedInstance),
    /// In id order; never fewer than two.
    Many(Vec<CachedInstance>),
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
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: &str) -> Option<&CachedInstance> {
        match self.slots.get(&prefix(id))? {
            Slot::One(cached) => (*cached.id == *id).then_some(cached),
            Slot::Many(all) => all.iter().find(|cached| *cached.id == *id),
        }
    }

    /// Adds an instance, or replaces the one of the same id; returns the replaced one.
    pub fn insert(&mut self, cached: CachedInstance) -> Option<CachedInstance> {
        use std::collections::btree_map::Entry;
        let slot = match self.slots.entry(prefix(&cached.id)) {
            Entry::Vacant(vacant) => {
                vacant.insert(Slot::One(cached));
                self.len += 1;
                return None;
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        let replaced = match slot {
            Slot::One(held) if held.id == cached.id => Some(std::mem::replace(held, cached)),
            Slot::One(_) => {
                let Slot::One(held) = std::mem::replace(slot, Slot::Many(Vec::new())) else {
                    unreachable!("matched as one")
                };
                let mut all = vec![held, cached];
                all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                *slot = Slot::Many(all);
                None
            }
            Slot::Many(all) => match all.binary_search_by(|held| held.id.cmp(&cached.id)) {
                Ok(at) => Some(std::mem::replace(&mut all[at], cached)),
                Err(at) => {
                    all.insert(at, cached);
                    None
                }
            },
        };
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Removes an instance; returns it.
    pub fn remove(&mut self, id: &str) -> Option<CachedInstance> {
        let key = prefix(id);
        let slot = self.slots.get_mut(&key)?;
        let removed = match slot {
            Slot::One(held) => {
                if *held.id != *id {
                    return None;
                }
                match self.slots.remove(&key) {
                    Some(Slot::One(held)) => Some(held),
                    _ => unreachable!("held one"),
                }
            }
            Slot::Many(all) => {
                let at = all.iter().position(|held| *held.id == *id)?;
                let removed = all.remove(at);
                if all.len() == 1 {
                    let last = all.pop().expect("one left");
                    *slot = Slot::One(last);
                }
                Some(removed)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Every instance, in id order.
    pub fn values(&self) -> impl Iterator<Item = &CachedInstance> {
        self.slots.values().flat_map(|slot| match slot {
            Slot::One(cached) => std::slice::from_ref(cached).iter(),
            Slot::Many(all) => all.iter(),
        })
    }
}

#[cfg(test)]
mod tests {
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
    fn ids_sharing_their_first_16_bytes_share_a_slot_in_id_order() {
        let mut map = InstanceMap::default();
        for id in [
            "0123456789abcdefz",
            "0123456789abcdef",
            "0123456789abcdefa",
            "0",
        ] {
            assert!(map.insert(cached(id, "r1")).is_none());
        }
        assert_eq!(map.slots.len(), 2);
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
        assert!(matches!(map.slots.values().last(), Some(Slot::One(_))));
        assert!(map.remove("0123456789abcdefb").is_none());
        assert_eq!(map.len(), 2);
    }
}
