//! Robustness of the three untrusted-input entry points: `Message::parse`
//! (plus every accessor, integrity and fingerprint), `frame_len` and
//! `ChannelData::parse`: a deterministic, bounded stand-in for the
//! cargo-fuzz targets in `fuzz/` that runs with `cargo test`.
//!
//! Inputs are arbitrary bytes, arbitrary bodies behind a valid header,
//! mutations of valid messages (truncation, bit flips, header and attribute
//! length changes, appended/overwritten bytes) and well-framed messages full
//! of malformed attribute values. Nothing may panic, and whatever parses must
//! be consistent: attributes inside the buffer, frames never longer than the
//! buffer, framed ChannelData always parseable, and so on (see the probes).
//!
//! The seed is fixed (override with PROPTEST_RNG_SEED) and case counts are
//! bounded (override with PROPTEST_CASES).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use turnpike_proto::wire::{
    ChannelData, Class, HEADER_LEN, IntegrityKey, Message, MessageBuilder, MessageType, Method,
    TransactionId, attr, fingerprint_of, frame_len, pad4,
};

// --- regressions -----------------------------------------------------------

/// A message whose FINGERPRINT sits at offset 65536 (legal: the body is
/// 65524 bytes). Attribute offsets used to be kept as `u16`, so the offset
/// wrapped to 0 and a correct FINGERPRINT was reported as wrong.
#[test]
fn fingerprint_past_offset_65535_verifies() {
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        TransactionId::new([9; 12]),
    )
    .attr(attr::DATA, &[0xab; 65512])
    .fingerprint();
    assert_eq!(buf.len(), 20 + 4 + 65512 + 8);
    let m = Message::parse(&buf).unwrap();
    let fp = m.get(attr::FINGERPRINT).unwrap();
    assert_eq!(fp.offset, 65536);
    assert_eq!(
        fp.u32(),
        Ok(fingerprint_of(&buf[..65536])),
        "the builder wrote the right value"
    );
    assert_eq!(m.check_fingerprint(), Some(true));
    assert_eq!(m.data().map(<[u8]>::len), Some(65512));
}

/// Attributes after MESSAGE-INTEGRITY must be ignored (RFC 8489 §14.5),
/// also when they sit past offset 65535 (the wrapped `u16` offset used to
/// compare as "before" the integrity attribute).
#[test]
fn attributes_after_integrity_past_offset_65535_are_ignored() {
    let key = IntegrityKey::short_term("pw");
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::SEND, Class::Indication),
        TransactionId::new([3; 12]),
    )
    .attr(attr::DATA, &[0; 65480])
    .integrity(&key)
    .text(attr::SOFTWARE, "abcd")
    .text(attr::USERNAME, "evil");
    let m = Message::parse(&buf).unwrap();
    assert_eq!(m.get(attr::MESSAGE_INTEGRITY).unwrap().offset, 65504);
    assert_eq!(m.verify_integrity(&key), Ok(false));
    assert_eq!(m.software(), Ok(None), "after MI: ignored");
    assert_eq!(m.username(), Ok(None), "after MI at offset 65536: ignored");
    let seen: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(seen, [attr::DATA, attr::MESSAGE_INTEGRITY]);
}

// --- probes: the very checks the cargo-fuzz targets in fuzz/ make -------------

#[allow(
    unreachable_pub,
    reason = "the fuzz crate's public probes, included as a module"
)]
#[path = "../fuzz/src/lib.rs"]
mod probes;
use probes::{FUZZ_KEY, probe_channel_data, probe_message, probe_stream};

/// All three entry points on the same bytes.
fn probe_all(buf: &[u8]) {
    probe_message(buf);
    probe_channel_data(buf);
    probe_stream(buf);
}

// --- inputs ----------------------------------------------------------------------

fn cfg(cases: u32, seed: u64) -> Config {
    let mut c = Config::with_cases(cases);
    if std::env::var_os("PROPTEST_CASES").is_some() {
        c.cases = Config::default().cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(seed);
    }
    c.failure_persistence = None;
    c
}

/// Valid messages to mutate: every attribute kind, both integrity
/// attributes, FINGERPRINT, ChannelData, and a stream of them.
fn seeds() -> Vec<Vec<u8>> {
    let key = IntegrityKey::new(FUZZ_KEY);
    let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let tid = TransactionId::new([0x11; 12]);
    let mut all = Vec::new();
    MessageBuilder::new(
        &mut all,
        MessageType::new(Method::ALLOCATE, Class::Error),
        tid,
    )
    .text(attr::USERNAME, "user")
    .text(attr::REALM, "realm")
    .text(attr::NONCE, "nonce")
    .text(attr::SOFTWARE, "turnpike")
    .attr(attr::USERHASH, &[7; 32])
    .address(attr::MAPPED_ADDRESS, v4)
    .address(attr::ALTERNATE_SERVER, v6)
    .xor_address(attr::XOR_MAPPED_ADDRESS, v6)
    .xor_address(attr::XOR_RELAYED_ADDRESS, v4)
    .xor_address(attr::XOR_PEER_ADDRESS, v4)
    .error_code(438, "Stale Nonce")
    .unknown_attributes(&[0x7f00, 0x7f01])
    .lifetime(600)
    .channel_number(0x4001)
    .attr(attr::DATA, b"payload")
    .requested_transport(17)
    .family(attr::REQUESTED_ADDRESS_FAMILY, 2)
    .family(attr::ADDITIONAL_ADDRESS_FAMILY, 1)
    .even_port(true)
    .attr(attr::RESERVATION_TOKEN, &[1; 8])
    .attr(attr::DONT_FRAGMENT, &[])
    .password_algorithms(&[1, 2])
    .password_algorithm(1)
    .u32(attr::PRIORITY, 1)
    .u64(attr::ICE_CONTROLLING, 2)
    .attr(attr::ICMP, &[0, 0, 3, 1, 0, 0, 0, 9])
    .address_error_code(2, 440, "Address Family not Supported")
    .attr(0x7f00, b"x")
    .integrity(&key)
    .integrity_sha256(&key)
    .fingerprint();
    let mut binding = Vec::new();
    MessageBuilder::new(
        &mut binding,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .text(attr::USERNAME, "a:b")
    .u32(attr::PRIORITY, 7)
    .integrity(&key)
    .fingerprint();
    let mut cd = Vec::new();
    ChannelData::encode(0x4abc, b"hello", true, &mut cd);
    let mut stream = binding.clone();
    stream.extend_from_slice(&cd);
    stream.extend_from_slice(&all);
    for s in [&all, &binding] {
        let m = Message::parse(s).unwrap();
        assert_eq!(m.check_fingerprint(), Some(true));
        assert!(m.verify_integrity(&key).is_ok());
    }
    vec![all, binding, cd, stream]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    FlipBits(Vec<(usize, u8)>),
    /// Overwrite the STUN/ChannelData length field (bytes 2..4).
    HeaderLength(u16),
    /// Overwrite the length field of the n-th attribute.
    AttrLength(usize, u16),
    Append(Vec<u8>),
    /// Overwrite `len` bytes at `at` with random bytes.
    Splat(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec((any::<usize>(), 0u8..8), 1..8).prop_map(Mutation::FlipBits),
        any::<u16>().prop_map(Mutation::HeaderLength),
        (any::<usize>(), any::<u16>()).prop_map(|(n, l)| Mutation::AttrLength(n, l)),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, b)| Mutation::Splat(at, b)),
    ]
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        match m {
            Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Mutation::FlipBits(flips) => {
                if !b.is_empty() {
                    let len = b.len();
                    for (i, bit) in flips {
                        b[i % len] ^= 1 << bit;
                    }
                }
            }
            Mutation::HeaderLength(l) => {
                if b.len() >= 4 {
                    b[2..4].copy_from_slice(&l.to_be_bytes());
                }
            }
            Mutation::AttrLength(n, l) => {
                // Walk the (original) attribute layout to the n-th header.
                let mut pos = HEADER_LEN;
                let mut headers = Vec::new();
                while pos + 4 <= b.len() {
                    headers.push(pos);
                    let al = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
                    pos += 4 + pad4(al);
                }
                if !headers.is_empty() {
                    let at = headers[n % headers.len()];
                    b[at + 2..at + 4].copy_from_slice(&l.to_be_bytes());
                }
            }
            Mutation::Append(extra) => b.extend_from_slice(extra),
            Mutation::Splat(at, bytes) => {
                if !b.is_empty() {
                    let at = at % b.len();
                    for (i, x) in bytes.iter().enumerate() {
                        if let Some(dst) = b.get_mut(at + i) {
                            *dst = *x;
                        }
                    }
                }
            }
        }
    }
    b
}

/// A well-formed header (right cookie and length) over a soup of
/// attributes: types drawn mostly from the known ones, values of random
/// length and content, correct attribute lengths and padding. Most of these
/// parse, so the accessors see every kind of malformed value.
fn tlv_soup(max_value: usize, max_attrs: usize) -> impl Strategy<Value = Vec<u8>> {
    let typ = prop_oneof![
        4 => proptest::sample::select(vec![
            attr::MAPPED_ADDRESS, attr::USERNAME, attr::MESSAGE_INTEGRITY, attr::ERROR_CODE,
            attr::UNKNOWN_ATTRIBUTES, attr::CHANNEL_NUMBER, attr::LIFETIME,
            attr::XOR_PEER_ADDRESS, attr::DATA, attr::REALM, attr::NONCE,
            attr::XOR_RELAYED_ADDRESS, attr::REQUESTED_ADDRESS_FAMILY, attr::EVEN_PORT,
            attr::REQUESTED_TRANSPORT, attr::DONT_FRAGMENT, attr::MESSAGE_INTEGRITY_SHA256,
            attr::PASSWORD_ALGORITHM, attr::USERHASH, attr::XOR_MAPPED_ADDRESS,
            attr::RESERVATION_TOKEN, attr::PRIORITY, attr::USE_CANDIDATE,
            attr::ADDITIONAL_ADDRESS_FAMILY, attr::ADDRESS_ERROR_CODE,
            attr::PASSWORD_ALGORITHMS, attr::ICMP, attr::SOFTWARE, attr::ALTERNATE_SERVER,
            attr::FINGERPRINT, attr::ICE_CONTROLLED, attr::ICE_CONTROLLING,
        ]),
        1 => any::<u16>(),
    ];
    let value = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..=24.min(max_value)),
        1 => proptest::collection::vec(any::<u8>(), 0..=max_value),
    ];
    (
        any::<u16>(),
        any::<[u8; 12]>(),
        proptest::collection::vec((typ, value), 0..=max_attrs),
    )
        .prop_map(|(typ, tid, attrs)| {
            let mut b = Vec::new();
            b.extend_from_slice(&(typ & 0x3fff).to_be_bytes());
            b.extend_from_slice(&[0, 0, 0x21, 0x12, 0xa4, 0x42]);
            b.extend_from_slice(&tid);
            for (t, v) in attrs {
                if b.len() + 4 + pad4(v.len()) > HEADER_LEN + 65532 {
                    break;
                }
                b.extend_from_slice(&t.to_be_bytes());
                b.extend_from_slice(&(v.len() as u16).to_be_bytes());
                b.extend_from_slice(&v);
                b.resize(b.len() + pad4(v.len()) - v.len(), 0);
            }
            let len = (b.len() - HEADER_LEN) as u16;
            b[2..4].copy_from_slice(&len.to_be_bytes());
            b
        })
}

proptest! {
    #![proptest_config(cfg(2000, 0x6675_7a7a))]

    /// Arbitrary bytes.
    #[test]
    fn arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        probe_all(&buf);
    }

    /// Arbitrary bytes behind a STUN header prefix (cookie right, first bits
    /// zero), so the attribute walker sees garbage rather than the header
    /// check refusing it.
    #[test]
    fn arbitrary_body_behind_valid_header(
        typ in 0u16..0x4000,
        body in proptest::collection::vec(any::<u8>(), 0..400),
        len_matches in any::<bool>(),
        len in any::<u16>(),
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(&typ.to_be_bytes());
        let l = if len_matches { body.len() as u16 & !3 } else { len };
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&body[..if len_matches { usize::from(l) } else { body.len() }]);
        probe_all(&b);
    }

    /// Mutations of valid messages: truncation, bit flips, header and
    /// attribute length changes, appended and overwritten bytes.
    #[test]
    fn mutated_valid_messages(
        which in 0usize..4,
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let b = apply(&seeds[which], &muts);
        probe_all(&b);
    }

    /// Structurally valid messages full of malformed attribute values.
    #[test]
    fn attribute_soup(b in tlv_soup(64, 24)) {
        prop_assert!(frame_len(&b).unwrap().is_some());
        probe_all(&b);
    }
}

proptest! {
    #![proptest_config(cfg(24, 0x0062_6967))]

    /// Messages up to the largest size the length field allows, where
    /// attribute offsets exceed 16 bits.
    #[test]
    fn large_attribute_soup(b in tlv_soup(30_000, 6)) {
        probe_all(&b);
    }
}

/// The seeds themselves pass every probe, and every truncation of them too
/// (exhaustively, not sampled).
#[test]
fn seeds_and_all_their_truncations() {
    for s in seeds() {
        probe_all(&s);
        for cut in 0..s.len() {
            probe_all(&s[..cut]);
        }
    }
}

/// Every single-bit flip of the seeds (exhaustively).
#[test]
fn every_single_bit_flip_of_the_seeds() {
    for s in seeds() {
        for i in 0..s.len() * 8 {
            let mut b = s.clone();
            b[i / 8] ^= 1 << (i % 8);
            probe_all(&b);
        }
    }
}

/// Issue 12: more than 128 attributes is a parse error of its own
/// (`TooManyAttributes`), which every probe accepts as a refusal.
#[test]
fn more_than_128_attributes_is_refused_not_a_crash() {
    let tid = TransactionId::new([0x22; 12]);
    for n in [128usize, 129, 2700] {
        let mut m = Vec::new();
        let mut b = MessageBuilder::new(
            &mut m,
            MessageType::new(Method::CREATE_PERMISSION, Class::Request),
            tid,
        );
        for i in 0..n {
            b.attr(0xc001, &(i as u32).to_be_bytes());
        }
        let parsed = Message::parse(&m);
        if n <= turnpike_proto::wire::MAX_ATTRIBUTES {
            assert!(parsed.is_ok(), "{n}: {parsed:?}");
        } else {
            assert_eq!(
                parsed.err(),
                Some(turnpike_proto::wire::ParseError::TooManyAttributes),
                "{n}"
            );
        }
        probe_all(&m);
    }
}
