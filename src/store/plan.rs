//! Deciding what a register batch writes, from the rows already stored, and what is
//! stored afterwards. Shared by every store so that "unchanged" means the same thing on
//! each.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::{
    DeregisterOutcome, InstanceRecord, RegisterOutcome, Registered, StoredService, StoredState,
};

/// `(namespace, service)`.
pub type ServiceKey<'a> = (&'a str, &'a str);

/// Stored services by namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceIds(HashMap<String, HashMap<String, Arc<StoredService>>>);

impl ServiceIds {
    pub fn get(&self, namespace: &str, service: &str) -> Option<&Arc<StoredService>> {
        self.0.get(namespace)?.get(service)
    }

    pub fn insert(&mut self, service: StoredService) {
        self.0
            .entry(service.namespace.clone())
            .or_default()
            .insert(service.name.clone(), Arc::new(service));
    }

    pub fn extend(&mut self, other: ServiceIds) {
        for (namespace, services) in other.0 {
            self.0.entry(namespace).or_default().extend(services);
        }
    }

    /// Those of `services` that are not here.
    pub fn missing<'a>(&self, services: &[ServiceKey<'a>]) -> Vec<ServiceKey<'a>> {
        services
            .iter()
            .filter(|(namespace, service)| self.get(namespace, service).is_none())
            .copied()
            .collect()
    }
}

/// What the store holds now for an instance the batch names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub revision: String,
    pub isolate: bool,
    /// Deregistered (soft-deleted): the row is there, the instance is not.
    pub deleted: bool,
    pub ctime: String,
    pub mtime: String,
}

/// One instance row the batch will write.
#[derive(Debug)]
pub struct PlannedWrite<'a> {
    pub record: &'a InstanceRecord,
    pub service_id: &'a str,
    pub isolate: bool,
    pub revision: String,
    /// The row is in the table (live or deregistered): it is updated in place, its
    /// metadata and health check replaced.
    pub replaced: bool,
    pub ctime: String,
    pub mtime: &'a str,
}

/// What every row did and holds, in input order, and the writes sorted by id (a stable
/// lock order across concurrent batches). `now` is the batch's time: the mtime of every
/// row it writes, and the ctime of every instance it creates.
pub fn plan_register<'a>(
    rows: &'a [InstanceRecord],
    services: &'a ServiceIds,
    existing: &HashMap<String, Existing>,
    now: &'a str,
) -> (Vec<Registered>, Vec<PlannedWrite<'a>>) {
    let mut results = Vec::with_capacity(rows.len());
    let mut writes = Vec::with_capacity(rows.len());
    for record in rows {
        let Some(service) = services.get(&record.namespace, &record.service) else {
            results.push(Registered {
                outcome: RegisterOutcome::ServiceNotFound,
                stored: None,
            });
            continue;
        };
        let row = existing.get(&record.id);
        let live = row.filter(|r| !r.deleted);
        let isolate = record.isolate.or(live.map(|r| r.isolate)).unwrap_or(false);
        let revision = record.revision(isolate);
        let outcome = match live {
            None => RegisterOutcome::Created,
            Some(r) if r.revision == revision => RegisterOutcome::Unchanged,
            Some(_) => RegisterOutcome::Replaced,
        };
        let (ctime, mtime) = match (outcome, live) {
            (RegisterOutcome::Unchanged, Some(r)) => (r.ctime.clone(), r.mtime.clone()),
            (RegisterOutcome::Replaced, Some(r)) => (r.ctime.clone(), now.to_owned()),
            _ => (now.to_owned(), now.to_owned()),
        };
        if outcome != RegisterOutcome::Unchanged {
            writes.push(PlannedWrite {
                record,
                service_id: &service.id,
                isolate,
                revision: revision.clone(),
                replaced: row.is_some(),
                ctime: ctime.clone(),
                mtime: now,
            });
        }
        results.push(Registered {
            outcome,
            stored: Some(StoredState {
                service: Arc::clone(service),
                isolate,
                revision,
                ctime,
                mtime,
            }),
        });
    }
    writes.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    (results, writes)
}

/// Whether the store already holds every row of the batch with exactly this content, so
/// that the batch has nothing to write.
pub fn all_unchanged(rows: &[InstanceRecord], existing: &HashMap<String, Existing>) -> bool {
    rows.iter().all(|record| {
        existing.get(&record.id).is_some_and(|prior| {
            !prior.deleted
                && prior.revision == record.revision(record.isolate.unwrap_or(prior.isolate))
        })
    })
}

/// The distinct services a batch names, in a stable order.
pub fn distinct_services(rows: &[InstanceRecord]) -> Vec<ServiceKey<'_>> {
    let mut keys: Vec<ServiceKey<'_>> = rows
        .iter()
        .map(|r| (r.namespace.as_str(), r.service.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Each health change's new revision, in order, when its instance is live (`present`).
pub fn health_revisions(
    changes: &[super::model::HealthChange],
    present: &std::collections::HashSet<String>,
) -> Vec<Option<String>> {
    changes
        .iter()
        .map(|change| {
            present
                .contains(&change.record.id)
                .then(|| change.record.revision(change.isolate))
        })
        .collect()
}

/// The `(id, revision)` of the live instances turning `healthy`, sorted by id (a stable
/// lock order).
pub fn health_rows<'a>(
    changes: &'a [super::model::HealthChange],
    revisions: &'a [Option<String>],
    healthy: bool,
) -> Vec<(&'a str, &'a str)> {
    let mut rows: Vec<(&str, &str)> = changes
        .iter()
        .zip(revisions)
        .filter(|(change, _)| change.record.healthy == healthy)
        .filter_map(|(change, revision)| {
            revision
                .as_deref()
                .map(|revision| (change.record.id.as_str(), revision))
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// The outcome of each id of a deregister batch, given the ids that were present and
/// the batch's time.
pub fn deregister_outcomes(
    ids: &[String],
    present: &std::collections::HashSet<String>,
    at: &str,
) -> Vec<DeregisterOutcome> {
    ids.iter()
        .map(|id| {
            if present.contains(id) {
                DeregisterOutcome::Deleted { at: at.to_owned() }
            } else {
                DeregisterOutcome::Absent
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, isolate: Option<bool>) -> InstanceRecord {
        InstanceRecord {
            isolate,
            ..InstanceRecord::sample(id)
        }
    }

    fn services() -> ServiceIds {
        let mut services = ServiceIds::default();
        services.insert(StoredService {
            id: "s1".to_owned(),
            namespace: "ns".to_owned(),
            name: "svc".to_owned(),
            ctime: "t0".to_owned(),
            mtime: "t0".to_owned(),
        });
        services
    }

    fn existing(revision: String, isolate: bool, deleted: bool) -> Existing {
        Existing {
            revision,
            isolate,
            deleted,
            ctime: "t1".to_owned(),
            mtime: "t2".to_owned(),
        }
    }

    #[test]
    fn outcomes_times_and_writes_follow_what_is_stored() {
        let rows = [
            record("new", None),
            record("same", None),
            record("changed", Some(true)),
            record("gone", None),
        ];
        let services = services();
        let stored = HashMap::from([
            (
                "same".to_owned(),
                existing(rows[1].revision(false), false, false),
            ),
            (
                "changed".to_owned(),
                existing("old".to_owned(), false, false),
            ),
            (
                "gone".to_owned(),
                existing(rows[3].revision(true), true, true),
            ),
        ]);
        let (results, writes) = plan_register(&rows, &services, &stored, "now");
        let outcomes: Vec<RegisterOutcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                RegisterOutcome::Created,
                RegisterOutcome::Unchanged,
                RegisterOutcome::Replaced,
                RegisterOutcome::Created
            ]
        );
        let times: Vec<(&str, &str)> = results
            .iter()
            .map(|r| {
                let s = r.stored.as_ref().unwrap();
                (s.ctime.as_str(), s.mtime.as_str())
            })
            .collect();
        assert_eq!(
            times,
            [("now", "now"), ("t1", "t2"), ("t1", "now"), ("now", "now")]
        );
        // A deregistered row's isolate flag is not inherited; the row is updated in place.
        let gone = writes.iter().find(|w| w.record.id == "gone").unwrap();
        assert!(!gone.isolate && gone.replaced);
        let ids: Vec<&str> = writes.iter().map(|w| w.record.id.as_str()).collect();
        assert_eq!(ids, ["changed", "gone", "new"]);
        assert!(
            !all_unchanged(&rows[3..], &stored),
            "a deregistered row is not stored"
        );
        assert!(all_unchanged(&rows[1..2], &stored));
    }
}
