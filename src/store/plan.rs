//! Deciding what a register batch writes, from the rows already stored. Shared by every
//! store so that "unchanged" means the same thing on each.

use std::collections::HashMap;

use super::model::{DeregisterOutcome, InstanceRecord, RegisterOutcome};

/// `(namespace, service)`.
pub type ServiceKey<'a> = (&'a str, &'a str);

/// Service ids by namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceIds(HashMap<String, HashMap<String, String>>);

impl ServiceIds {
    pub fn get(&self, namespace: &str, service: &str) -> Option<&str> {
        self.0.get(namespace)?.get(service).map(String::as_str)
    }

    pub fn insert(&mut self, namespace: String, service: String, id: String) {
        self.0.entry(namespace).or_default().insert(service, id);
    }

    pub fn extend(&mut self, other: ServiceIds) {
        for (namespace, services) in other.0 {
            self.0.entry(namespace).or_default().extend(services);
        }
    }

    /// Those of `services` that have no id here.
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
}

/// One instance row the batch will write.
#[derive(Debug)]
pub struct PlannedWrite<'a> {
    pub record: &'a InstanceRecord,
    pub service_id: &'a str,
    pub isolate: bool,
    pub revision: String,
    /// The row existed before: its metadata and health check are replaced.
    pub replaced: bool,
}

/// The outcome of every row, in input order, and the writes sorted by id (a stable lock
/// order across concurrent batches).
pub fn plan_register<'a>(
    rows: &'a [InstanceRecord],
    service_ids: &'a ServiceIds,
    existing: &HashMap<String, Existing>,
) -> (Vec<RegisterOutcome>, Vec<PlannedWrite<'a>>) {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut writes = Vec::with_capacity(rows.len());
    for record in rows {
        let Some(service_id) = service_ids.get(&record.namespace, &record.service) else {
            outcomes.push(RegisterOutcome::ServiceNotFound);
            continue;
        };
        let prior = existing.get(&record.id);
        let isolate = record.isolate.or(prior.map(|p| p.isolate)).unwrap_or(false);
        let revision = record.revision(isolate);
        let outcome = match prior {
            None => RegisterOutcome::Created,
            Some(p) if p.revision == revision => RegisterOutcome::Unchanged,
            Some(_) => RegisterOutcome::Replaced,
        };
        outcomes.push(outcome);
        if outcome != RegisterOutcome::Unchanged {
            writes.push(PlannedWrite {
                record,
                service_id,
                isolate,
                revision,
                replaced: outcome == RegisterOutcome::Replaced,
            });
        }
    }
    writes.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    (outcomes, writes)
}

/// Whether the store already holds every row of the batch with exactly this content, so
/// that the batch has nothing to write.
pub fn all_unchanged(rows: &[InstanceRecord], existing: &HashMap<String, Existing>) -> bool {
    rows.iter().all(|record| {
        existing.get(&record.id).is_some_and(|prior| {
            prior.revision == record.revision(record.isolate.unwrap_or(prior.isolate))
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

/// The outcome of each id of a deregister batch, given the ids that were present.
pub fn deregister_outcomes(
    ids: &[String],
    present: &std::collections::HashSet<String>,
) -> Vec<DeregisterOutcome> {
    ids.iter()
        .map(|id| {
            if present.contains(id) {
                DeregisterOutcome::Deleted
            } else {
                DeregisterOutcome::Absent
            }
        })
        .collect()
}
