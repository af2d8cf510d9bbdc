//! The sans-IO server core driven by arbitrary steps: datagrams from
//! arbitrary five-tuples, valid and mutated requests, peer datagrams and a
//! moving clock, with its invariants checked after every step (see
//! `src/server.rs`).
#![no_main]

#[path = "../src/server.rs"]
#[allow(dead_code, reason = "the test helpers of the driver")]
mod server;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    server::Harness::run(data);
});
