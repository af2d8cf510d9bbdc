//! The sans-IO server under the fuzz driver of `fuzz/src/server.rs`
//! (which this file includes): a deterministic, bounded stand-in for the
//! `server` cargo-fuzz target that runs with `cargo test`. Each input is a
//! program of steps (valid TURN exchanges, raw and mutated datagrams, peer
//! datagrams, a moving clock); the driver asserts after every step that
//! quotas hold, nothing is relayed to a denied peer, peers reach clients
//! only through permissions and no unauthenticated answer amplifies more
//! than 3x. Crashes the fuzzer finds are kept below as regression inputs.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion"
)]

#[path = "../fuzz/src/server.rs"]
#[allow(dead_code, unreachable_pub, reason = "shared with the fuzz crate")]
mod server;

use server::Harness;

/// A small deterministic generator (xorshift64*), so that a failure
/// reproduces from its index.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Inputs: random programs, and programs that start with allocations (so
/// that the later steps have allocations to act on).
fn inputs(count: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut g = Gen(0x7475_726e_7069_6b65);
    (0..count).map(move |i| {
        let len = 64 + (g.next() % 1200) as usize;
        let mut v = g.bytes(len);
        if i % 2 == 0 {
            // Step 1 is Allocate: a few of them first, static users.
            let mut head = Vec::new();
            for k in 0..4u8 {
                head.extend_from_slice(&[1, k, 0, 3, 3, 1]);
            }
            head.append(&mut v);
            v = head;
        }
        v
    })
}

#[test]
fn the_server_core_keeps_its_invariants_under_arbitrary_steps() {
    let n: usize = std::env::var("TURNPIKE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    for (i, input) in inputs(n).enumerate() {
        let r = std::panic::catch_unwind(|| Harness::run(&input));
        assert!(
            r.is_ok(),
            "input {i} broke an invariant (see the panic above)"
        );
    }
}

/// The driver really reaches allocations, permissions and relaying, and
/// its oracle is the one the core must meet: a run of valid steps creates
/// an allocation, permits an allowed peer and refuses a denied one.
#[test]
fn the_driver_reaches_relaying_and_the_oracle_denies_what_it_must() {
    use std::net::SocketAddr;
    let p = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(!server::must_deny(p("198.51.100.7:9000")));
    for denied in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:9",
        "[2002:7f00:1::1]:9",
        "[64:ff9b::7f00:1]:9",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]:9",
        "[fec0::1]:9",
        "203.0.113.1:3478",
    ] {
        assert!(server::must_deny(p(denied)), "{denied}");
    }
    assert_eq!(Harness::probe_valid_path(), (1, 1));
}
