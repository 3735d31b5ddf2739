//! The two kinds of batch the naming layer writes. After each write, and before its
//! requests are answered, the registry cache takes what was stored: a client answered
//! 200000 finds its instance in its next Discover to this server.

use std::sync::Arc;

use crate::batch::BatchWrite;
use crate::discovery::cache::{InstanceFacts, RegistryCache};
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

impl BatchWrite for RegisterWrite {
    type Op = InstanceRecord;
    type Outcome = RegisterOutcome;

    fn key(op: &InstanceRecord) -> &str {
        &op.id
    }

    fn outage(&self) -> OutageWatch {
        self.writer.outage()
    }

    fn write(&mut self, ops: &[InstanceRecord]) -> Vec<RowResult<RegisterOutcome>> {
        let results = self.writer.register(ops, self.options);
        ops.iter()
            .zip(results)
            .map(|(record, result)| {
                result.map(|Registered { outcome, stored }| {
                    // An unchanged instance another replica registered may not have
                    // reached this cache yet.
                    if let Some(stored) = stored
                        && (outcome != RegisterOutcome::Unchanged
                            || !self
                                .cache
                                .holds(&record.id, &stored.revision, &stored.mtime))
                    {
                        self.cache.put_instance(
                            &stored.service,
                            InstanceFacts {
                                record,
                                isolate: stored.isolate,
                                revision: &stored.revision,
                                ctime: &stored.ctime,
                                mtime: &stored.mtime,
                            },
                        );
                    }
                    outcome
                })
            })
            .collect()
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
