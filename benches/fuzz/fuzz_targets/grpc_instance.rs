//! `RegisterInstance`, `DeregisterInstance` and `Heartbeat` take an `Instance`: any bytes
//! through prost's decode and each method's validation and instance id (the checks are
//! `batchreg::fuzzing::grpc_instance`'s).

#![no_main]

libfuzzer_sys::fuzz_target!(|message: &[u8]| batchreg::fuzzing::grpc_instance(message));
