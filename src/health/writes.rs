//! Health batches: transitions written to the store (health, revision, mtime), then put
//! in the registry cache, so that Discover shows the new health and the service's
//! revision moves.

use std::sync::Arc;

use crate::batch::BatchWrite;
use crate::discovery::cache::{InstanceFacts, RegistryCache};
use crate::store::resilient::{OutageWatch, ResilientWriter, RowResult};
use crate::store::{HealthChange, StoredService};

/// One transition, with what the cache needs to show it.
pub struct HealthOp {
    pub change: HealthChange,
    pub service: StoredService,
    /// The instance's ctime, unchanged by the transition.
    pub ctime: String,
}

/// Writes health batches; each outcome says whether the instance was still live.
pub struct HealthWrite {
    pub writer: ResilientWriter,
    pub cache: Arc<RegistryCache>,
}

impl BatchWrite for HealthWrite {
    type Op = HealthOp;
    type Outcome = bool;

    fn key(op: &HealthOp) -> &str {
        &op.change.record.id
    }

    fn outage(&self) -> OutageWatch {
        self.writer.outage()
    }

    fn write(&mut self, ops: &[HealthOp]) -> Vec<RowResult<bool>> {
        let changes: Vec<HealthChange> = ops.iter().map(|op| op.change.clone()).collect();
        let results = self.writer.set_health(&changes);
        ops.iter()
            .zip(results)
            .map(|(op, result)| {
                result.map(|stored| match stored {
                    Some(stored) => {
                        self.cache.put_instance(
                            &op.service,
                            InstanceFacts {
                                record: &op.change.record,
                                isolate: op.change.isolate,
                                revision: &stored.revision,
                                ctime: &op.ctime,
                                mtime: &stored.mtime,
                            },
                        );
                        true
                    }
                    None => false,
                })
            })
            .collect()
    }
}
