//! The HTTP client API's JSON: any body through the strict and the lenient reader of
//! each message the routes take, compared (the checks are
//! `batchreg::fuzzing::http_json`'s).

#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| batchreg::fuzzing::http_json(body));
