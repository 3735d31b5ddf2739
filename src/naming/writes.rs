//! The two kinds of batch the naming layer writes. After each write, and before its
//! requests are answered, the registry cache takes what was stored: a client answered
//! 200000 finds its instance in its next Discover to this server.

use std::sync::Arc;

use crate::batch::BatchWrite;
use crate::discovery::cache::{InstanceFacts, Placed, RegistryCache};
use crate::store::resilient::{OutageWatch, ResilientWriter, RowResult};
use crate::store::{
    DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome, Registered,
};

/// Register batches: instance records keyed by instance id.
pub struct RegisterWrite {
    pub writer: ResilientWriter,
    pub options: RegisterOptions,
    pub cache: Arc<RegistryCache>,
}

/// What a registration did, and the instance as the cache holds it once stored.
#[derive(Debug, Clone)]
pub struct Registration {
    pub outcome: RegisterOutcome,
    /// `None` when the store did not keep the instance (its service is missing).
    pub placed: Option<Placed>,
}

impl BatchWrite for RegisterWrite {
    type Op = InstanceRecord;
    type Outcome = Registration;

    fn key(op: &InstanceRecord) -> &str {
        &op.id
    }

    fn outage(&self) -> OutageWatch {
        self.writer.outage()
    }

    fn write(&mut self, ops: &[InstanceRecord]) -> Vec<RowResult<Registration>> {
        let results = self.writer.register(ops, self.options);
        // The instances to put in the cache, and where each one's answer waits.
        let mut puts = Vec::new();
        let mut answers: Vec<RowResult<Registration>> = ops
            .iter()
            .zip(&results)
            .enumerate()
            .map(|(index, (record, result))| {
                result.as_ref().map_err(Arc::clone).map(|registered| {
                    let Registered { outcome, stored } = registered;
                    let mut placed = None;
                    if let Some(stored) = stored {
                        // An unchanged instance another replica registered may not have
                        // reached this cache yet.
                        placed = (*outcome == RegisterOutcome::Unchanged)
                            .then(|| {
                                self.cache
                                    .held_as(&record.id, &stored.revision, &stored.mtime)
                            })
                            .flatten();
                        if placed.is_none() {
                            puts.push((index, record, stored));
                        }
                    }
                    Registration {
                        outcome: *outcome,
                        placed,
                    }
                })
            })
            .collect();
        let indices: Vec<usize> = puts.iter().map(|(index, _, _)| *index).collect();
        let placed = self
            .cache
            .put_instances(puts.into_iter().map(|(_, record, stored)| {
                (
                    &*stored.service,
                    InstanceFacts {
                        record,
                        isolate: stored.isolate,
                        revision: &stored.revision,
                        ctime: &stored.ctime,
                        mtime: &stored.mtime,
                    },
                )
            }));
        for (index, placed) in indices.into_iter().zip(placed) {
            if let Ok(registration) = &mut answers[index] {
                registration.placed = Some(placed);
            }
        }
        answers
    }
}

/// Deregister batches: instance ids.
pub struct DeregisterWrite {
    pub writer: ResilientWriter,
    pub cache: Arc<RegistryCache>,
}

impl BatchWrite for DeregisterWrite {
    type Op = String;
    type Outcome = DeregisterOutcome;

    fn key(op: &String) -> &str {
        op
    }

    fn outage(&self) -> OutageWatch {
        self.writer.outage()
    }

    fn write(&mut self, ops: &[String]) -> Vec<RowResult<DeregisterOutcome>> {
        let results = self.writer.deregister(ops);
        for (id, result) in ops.iter().zip(&results) {
            if let Ok(DeregisterOutcome::Deleted { at }) = result {
                self.cache.remove_instance(id, at);
            }
        }
        results
    }
}
