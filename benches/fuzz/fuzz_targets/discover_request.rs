//! `Discover`: any bytes as one message of a gRPC Discover stream, answered from a
//! registry cache holding a few services (the checks are
//! `batchreg::fuzzing::discover_request`'s).

#![no_main]

use std::sync::LazyLock;

use batchreg::discovery::Discovery;
use batchreg::fuzzing::{discover_request, fleet};

static DISCOVERY: LazyLock<Discovery> = LazyLock::new(fleet);

libfuzzer_sys::fuzz_target!(|message: &[u8]| discover_request(&DISCOVERY, message));
