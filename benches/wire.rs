//! Wire codec benchmarks: turnpike vs the webrtc-rs `stun` crate doing the
//! same work in the same run.
//!
//! * `binding_ice_check`: an ICE connectivity check (Binding request with
//!   USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT):
//!   parse + MESSAGE-INTEGRITY check with the short-term key + FINGERPRINT
//!   check. Keys are precomputed (`IntegrityKey`, resp. the key bytes).
//! * `allocate_long_term_check`: an Allocate request with long-term
//!   credentials (USERNAME, REALM, NONCE, REQUESTED-TRANSPORT, LIFETIME,
//!   MESSAGE-INTEGRITY, FINGERPRINT): parse + integrity with the cached
//!   MD5 key + FINGERPRINT, i.e. what a server with a key cache does.
//! * `binding_success_build`: a Binding success response with
//!   XOR-MAPPED-ADDRESS, SOFTWARE and FINGERPRINT built into a reused
//!   buffer (webrtc-rs: a reused `Message`).
//!
//! Heap allocations are not measured here; tests/zero_alloc.rs proves
//! turnpike's paths allocate nothing.
//!
//! Run: `cargo bench --bench wire`

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a benchmark: it reads the clock, and unwrap is its assertion"
)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};

use stun::attributes::ATTR_SOFTWARE;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{BINDING_SUCCESS, Message as StunMessage, Setter};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

use turnpike_proto::wire::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
    TransactionId, attr, long_term_key,
};

const TID: TransactionId = TransactionId::new([
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
]);
/// A typical ICE password (22+ characters of ice-char, RFC 8839).
const ICE_PWD: &str = "asd88fgpdd777uzjYhagZg2x";

fn ice_binding_request(key: &IntegrityKey) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TID,
    )
    .text(attr::USERNAME, "9uB6:evtjh6vY")
    .u32(attr::PRIORITY, 0x6e00_01ff)
    .u64(attr::ICE_CONTROLLING, 0x932f_f9b1_5126_3b36)
    .integrity(key)
    .fingerprint();
    buf
}

fn allocate_request(key: &IntegrityKey) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        TID,
    )
    .text(attr::USERNAME, "1735689600:alice")
    .text(attr::REALM, "turn.example.org")
    .text(attr::NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
    .requested_transport(attr::TRANSPORT_UDP)
    .lifetime(600)
    .integrity(key)
    .fingerprint();
    buf
}

/// turnpike: parse, integrity, fingerprint.
fn ours_check(bytes: &[u8], key: &IntegrityKey) -> bool {
    let Ok(m) = Message::parse(bytes) else {
        return false;
    };
    m.verify_integrity(key).is_ok() && m.check_fingerprint() == Some(true)
}

/// webrtc-rs: the same work on a reused `Message` (decode copies the
/// datagram into it, as its API requires).
fn stun_check(m: &mut StunMessage, bytes: &[u8], key: &MessageIntegrity) -> bool {
    m.raw.clear();
    m.raw.extend_from_slice(bytes);
    if m.decode().is_err() {
        return false;
    }
    key.check(m).is_ok() && FINGERPRINT.check(m).is_ok()
}

fn bench_checks(c: &mut Criterion) {
    // (a) ICE Binding request, short-term key.
    let key = IntegrityKey::short_term(ICE_PWD);
    let stun_key = MessageIntegrity::new_short_term_integrity(ICE_PWD.to_owned());
    let bytes = ice_binding_request(&key);
    let mut sm = StunMessage::new();
    assert!(ours_check(&bytes, &key));
    assert!(stun_check(&mut sm, &bytes, &stun_key));
    let mut g = c.benchmark_group("binding_ice_check");
    g.bench_function("turnpike", |b| {
        b.iter(|| ours_check(black_box(&bytes), black_box(&key)))
    });
    g.bench_function("webrtc-rs", |b| {
        b.iter(|| stun_check(&mut sm, black_box(&bytes), black_box(&stun_key)))
    });
    g.finish();

    // (b) Allocate request, long-term key taken from a cache.
    let key = long_term_key(
        PasswordAlgorithm::Md5,
        "1735689600:alice",
        "turn.example.org",
        "s3cret",
    );
    let stun_key = MessageIntegrity::new_long_term_integrity(
        "1735689600:alice".to_owned(),
        "turn.example.org".to_owned(),
        "s3cret".to_owned(),
    );
    assert_eq!(key.as_bytes(), &stun_key.0[..]);
    let bytes = allocate_request(&key);
    assert!(ours_check(&bytes, &key));
    assert!(stun_check(&mut sm, &bytes, &stun_key));
    let mut g = c.benchmark_group("allocate_long_term_check");
    g.bench_function("turnpike", |b| {
        b.iter(|| ours_check(black_box(&bytes), black_box(&key)))
    });
    g.bench_function("webrtc-rs", |b| {
        b.iter(|| stun_check(&mut sm, black_box(&bytes), black_box(&stun_key)))
    });
    g.finish();
}

fn bench_build(c: &mut Criterion) {
    let mapped: SocketAddr = "203.0.113.77:54321".parse().unwrap();
    let software = "turnpike 0.1.0";

    let build_ours = |buf: &mut Vec<u8>, mapped: SocketAddr| {
        buf.clear();
        MessageBuilder::new(buf, MessageType::new(Method::BINDING, Class::Success), TID)
            .xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
            .text(attr::SOFTWARE, software)
            .fingerprint();
    };
    // The attribute values are made once; only the encoding is timed.
    let xma = XorMappedAddress {
        ip: mapped.ip(),
        port: mapped.port(),
    };
    let sw = TextAttribute::new(ATTR_SOFTWARE, software.to_owned());
    let build_stun = |m: &mut StunMessage, xma: &XorMappedAddress, sw: &TextAttribute| {
        m.reset();
        m.typ = BINDING_SUCCESS;
        m.transaction_id = stun::agent::TransactionId(TID.0);
        m.write_header();
        xma.add_to(m).unwrap();
        sw.add_to(m).unwrap();
        FINGERPRINT.add_to(m).unwrap();
    };

    let mut buf = Vec::with_capacity(256);
    let mut sm = StunMessage::new();
    build_ours(&mut buf, mapped);
    build_stun(&mut sm, &xma, &sw);
    assert_eq!(buf, sm.raw, "both build the same bytes");

    let mut g = c.benchmark_group("binding_success_build");
    g.bench_function("turnpike", |b| {
        b.iter(|| {
            build_ours(&mut buf, black_box(mapped));
            black_box(buf.len())
        })
    });
    g.bench_function("webrtc-rs", |b| {
        b.iter(|| {
            build_stun(&mut sm, black_box(&xma), black_box(&sw));
            black_box(sm.raw.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_checks, bench_build);
criterion_main!(benches);
