//! The two kinds of batch this server writes.

use crate::store::resilient::{ResilientWriter, RowResult};
use crate::store::{DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome};

use super::BatchWrite;

/// Register batches: instance records keyed by instance id.
pub struct RegisterWrite {
    pub writer: ResilientWriter,
    pub options: RegisterOptions,
}

impl BatchWrite for RegisterWrite {
    type Op = InstanceRecord;
    type Outcome = RegisterOutcome;

    fn key(op: &InstanceRecord) -> &str {
        &op.id
    }

    fn write(&mut self, ops: &[InstanceRecord]) -> Vec<RowResult<RegisterOutcome>> {
        self.writer.register(ops, self.options)
    }
}

/// Deregister batches: instance ids.
pub struct DeregisterWrite {
    pub writer: ResilientWriter,
}

impl BatchWrite for DeregisterWrite {
    type Op = String;
    type Outcome = DeregisterOutcome;

    fn key(op: &String) -> &str {
        op
    }

    fn write(&mut self, ops: &[String]) -> Vec<RowResult<DeregisterOutcome>> {
        self.writer.deregister(ops)
    }
}
