//! Proof that the hot paths of the wire codec never touch the heap.
//!
//! A counting `#[global_allocator]` wraps the system allocator and counts
//! every `alloc`, `alloc_zeroed` and `realloc` in a thread-local counter, so
//! tests running in parallel on other threads do not disturb each other.
//! Each measured closure must perform exactly zero allocations. Where a
//! first call could initialise something lazily, the path is run once
//! before counting.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::hint::black_box;
use std::net::SocketAddr;

use turnpike_proto::wire::{
    ChannelData, Class, FrameKind, IntegrityKey, Message, MessageBuilder, MessageType, Method,
    PasswordAlgorithm, TransactionId, attr, frame_len, long_term_key,
};

#[global_allocator]
static GLOBAL: turnpike_sys::alloc::CountingAlloc = turnpike_sys::alloc::CountingAlloc;

/// Heap allocations made by this thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> u64 {
    let (n, r) = turnpike_sys::alloc::allocations(f);
    black_box(r);
    n
}

const TID: TransactionId = TransactionId::new([0x5a; 12]);

fn allocate_request(key: &IntegrityKey) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        TID,
    )
    .text(attr::USERNAME, "alice")
    .text(attr::REALM, "example.org")
    .text(attr::NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
    .requested_transport(attr::TRANSPORT_UDP)
    .integrity(key)
    .fingerprint();
    buf
}

fn binding_request(key: &IntegrityKey) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TID,
    )
    .text(attr::USERNAME, "remoteufrag:localufrag")
    .u32(attr::PRIORITY, 0x6e00_01ff)
    .u64(attr::ICE_CONTROLLING, 0x932f_f9b1_5126_3b36)
    .attr(attr::USE_CANDIDATE, &[])
    .integrity(key)
    .fingerprint();
    buf
}

#[test]
fn the_counter_counts() {
    // Without this, a broken counter would make every test below pass.
    assert_eq!(allocations(|| Vec::<u8>::with_capacity(16)), 1);
    assert_eq!(allocations(|| String::from("x")), 1);
    let mut v = Vec::<u8>::with_capacity(1);
    assert_eq!(allocations(|| v.extend_from_slice(&[0; 64])), 1, "realloc");
    assert_eq!(allocations(|| 1 + 1), 0);
}

#[test]
fn long_term_key_derivation_allocates_nothing() {
    let _ = long_term_key(PasswordAlgorithm::Md5, "u", "r", "p");
    let n = allocations(|| {
        (
            long_term_key(PasswordAlgorithm::Md5, "alice", "example.org", "s3cret"),
            long_term_key(PasswordAlgorithm::Sha256, "alice", "example.org", "s3cret"),
            IntegrityKey::short_term("VOkJxbRl1RmTxUk/WvJxBt"),
        )
    });
    assert_eq!(n, 0);
}

#[test]
fn allocate_request_parse_long_term_verify_fingerprint() {
    let key = long_term_key(PasswordAlgorithm::Md5, "alice", "example.org", "s3cret");
    let bytes = allocate_request(&key);
    let run = |bytes: &[u8], key: &IntegrityKey| {
        let m = Message::parse(bytes).unwrap();
        let ok = m.verify_integrity(key) == Ok(false);
        let fp = m.check_fingerprint() == Some(true);
        let user = m.username().unwrap() == Some("alice");
        let realm = m.realm().unwrap() == Some("example.org");
        let nonce = m.nonce().unwrap().is_some();
        let tr = m.requested_transport().unwrap() == Some(attr::TRANSPORT_UDP);
        ok && fp && user && realm && nonce && tr
    };
    assert!(run(&bytes, &key), "warm-up run must succeed");
    let mut result = false;
    let n = allocations(|| result = run(black_box(&bytes), black_box(&key)));
    assert!(result);
    assert_eq!(n, 0, "parse + long-term verify + fingerprint allocated");

    // The rejection path (wrong key, broken fingerprint) allocates nothing
    // either.
    let wrong = long_term_key(PasswordAlgorithm::Md5, "alice", "example.org", "wrong");
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let n = allocations(|| {
        let m = Message::parse(black_box(&bad)).unwrap();
        (m.verify_integrity(&wrong).is_err(), m.check_fingerprint())
    });
    assert_eq!(n, 0);
}

#[test]
fn ice_binding_request_short_term_verify_fingerprint() {
    let key = IntegrityKey::short_term("VOkJxbRl1RmTxUk/WvJxBt");
    let bytes = binding_request(&key);
    let run = |bytes: &[u8], key: &IntegrityKey| {
        let m = Message::parse(bytes).unwrap();
        m.check_fingerprint() == Some(true)
            && m.verify_integrity(key) == Ok(false)
            && m.username().unwrap() == Some("remoteufrag:localufrag")
            && m.priority().unwrap() == Some(0x6e00_01ff)
            && m.ice_controlling().unwrap().is_some()
            && m.use_candidate()
    };
    assert!(run(&bytes, &key));
    let mut result = false;
    let n = allocations(|| result = run(black_box(&bytes), black_box(&key)));
    assert!(result);
    assert_eq!(n, 0, "parse + short-term verify + fingerprint allocated");
}

/// A message carrying every attribute that has a typed accessor.
fn everything(key: &IntegrityKey) -> Vec<u8> {
    let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Error),
        TID,
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
    .xor_address(attr::XOR_PEER_ADDRESS, v6)
    .error_code(401, "Unauthorized")
    .unknown_attributes(&[0x7f00, 0x7f01])
    .lifetime(600)
    .channel_number(0x4001)
    .attr(attr::DATA, b"payload")
    .requested_transport(attr::TRANSPORT_UDP)
    .family(attr::REQUESTED_ADDRESS_FAMILY, attr::FAMILY_IPV6)
    .family(attr::ADDITIONAL_ADDRESS_FAMILY, attr::FAMILY_IPV4)
    .even_port(true)
    .attr(attr::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8])
    .attr(attr::DONT_FRAGMENT, &[])
    .password_algorithms(&[1, 2])
    .password_algorithm(2)
    .u32(attr::PRIORITY, 1)
    .attr(attr::USE_CANDIDATE, &[])
    .u64(attr::ICE_CONTROLLING, 2)
    .u64(attr::ICE_CONTROLLED, 3)
    .attr(attr::ICMP, &[0, 0, 3, 1, 0, 0, 0, 9])
    .address_error_code(attr::FAMILY_IPV6, 440, "Address Family not Supported")
    .attr(0x7f00, b"unknown comprehension-required")
    .integrity(key)
    .integrity_sha256(key)
    .fingerprint();
    buf
}

/// Calls every typed accessor and folds the results into a checksum, so
/// nothing can be optimised out and a wrong value changes the result.
fn every_accessor(m: &Message<'_>) -> u64 {
    let mut h = 0u64;
    let mut mix = |x: u64| h = h.wrapping_mul(31).wrapping_add(x);
    mix(m.username().unwrap().unwrap().len() as u64);
    mix(m.realm().unwrap().unwrap().len() as u64);
    mix(m.nonce().unwrap().unwrap().len() as u64);
    mix(m.software().unwrap().unwrap().len() as u64);
    mix(u64::from(m.userhash().unwrap().unwrap()[0]));
    mix(u64::from(m.mapped_address().unwrap().unwrap().port()));
    mix(u64::from(m.alternate_server().unwrap().unwrap().port()));
    mix(u64::from(m.xor_mapped_address().unwrap().unwrap().port()));
    mix(u64::from(m.xor_relayed_address().unwrap().unwrap().port()));
    mix(u64::from(m.xor_peer_address().unwrap().unwrap().port()));
    for p in m.xor_peer_addresses() {
        mix(u64::from(p.unwrap().port()));
    }
    let ec = m.error_code().unwrap().unwrap();
    mix(u64::from(ec.code) + ec.reason.len() as u64);
    for t in m
        .get(attr::UNKNOWN_ATTRIBUTES)
        .unwrap()
        .attribute_list()
        .unwrap()
    {
        mix(u64::from(t));
    }
    mix(u64::from(m.lifetime().unwrap().unwrap()));
    mix(u64::from(m.channel_number().unwrap().unwrap()));
    mix(m.data().unwrap().len() as u64);
    mix(u64::from(m.requested_transport().unwrap().unwrap()));
    mix(u64::from(m.requested_address_family().unwrap().unwrap()));
    mix(u64::from(m.additional_address_family().unwrap().unwrap()));
    mix(u64::from(m.even_port().unwrap().unwrap()));
    mix(u64::from(m.reservation_token().unwrap().unwrap()[7]));
    mix(u64::from(m.dont_fragment()));
    let mut algs = m.password_algorithms().unwrap();
    for (a, p) in algs.by_ref() {
        mix(u64::from(a) + p.len() as u64);
    }
    mix(u64::from(algs.malformed()));
    mix(u64::from(m.password_algorithm().unwrap().unwrap().0));
    mix(u64::from(m.priority().unwrap().unwrap()));
    mix(u64::from(m.use_candidate()));
    mix(m.ice_controlling().unwrap().unwrap());
    mix(m.ice_controlled().unwrap().unwrap());
    let (t, c, d) = m.icmp().unwrap().unwrap();
    mix(u64::from(t) + u64::from(c) + u64::from(d));
    let (fam, aec) = m.address_error_code().unwrap().unwrap();
    mix(u64::from(fam) + u64::from(aec.code));
    let unknown = m.unknown_comprehension_required(attr::known_to_server);
    for t in unknown.as_slice() {
        mix(u64::from(*t));
    }
    for a in m.attributes() {
        mix(u64::from(a.typ) + a.value.len() as u64 + a.offset as u64);
    }
    mix(u64::from(m.has(attr::SOFTWARE)));
    mix(u64::from(m.transaction_id().as_bytes()[0]));
    mix(u64::from(m.message_type().to_u16()));
    mix(u64::from(m.method().0));
    mix(m.as_bytes().len() as u64);
    mix(u64::from(m.has_integrity()) + u64::from(m.has_integrity_sha256()));
    mix(u64::from(m.has_fingerprint()));
    h
}

#[test]
fn every_typed_accessor_and_both_integrity_checks() {
    let key = long_term_key(PasswordAlgorithm::Sha256, "user", "realm", "pw");
    let bytes = everything(&key);
    let m = Message::parse(&bytes).unwrap();
    // Warm-up, and the values are what was built.
    let expected = every_accessor(&m);
    assert_eq!(m.error_code().unwrap().unwrap().code, 401);
    assert_eq!(m.xor_peer_addresses().count(), 2);
    assert_eq!(
        m.unknown_comprehension_required(attr::known_to_server)
            .as_slice(),
        &[0x7f00]
    );
    assert_eq!(m.verify_integrity(&key), Ok(true));

    let mut got = 0;
    let n = allocations(|| {
        let m = Message::parse(black_box(&bytes)).unwrap();
        got = every_accessor(&m);
        assert_eq!(m.verify_sha1(&key), Ok(()));
        assert_eq!(m.verify_sha256(&key), Ok(()));
        assert_eq!(m.verify_integrity(&key), Ok(true));
        assert_eq!(m.check_fingerprint(), Some(true));
    });
    assert_eq!(got, expected);
    assert_eq!(n, 0, "accessors allocated");
}

#[test]
fn channel_data_parse_and_frame_len() {
    let mut cd = Vec::new();
    ChannelData::encode(0x4001, b"hello world", true, &mut cd);
    let key = IntegrityKey::short_term("pw");
    let stun = binding_request(&key);
    let mut stream = cd.clone();
    stream.extend_from_slice(&stun);
    stream.extend_from_slice(&stun[..10]);

    let run = |cd: &[u8], stream: &[u8]| {
        let c = ChannelData::parse(cd).unwrap();
        let mut rest = stream;
        let mut frames = 0;
        while let Ok(Some(f)) = frame_len(rest) {
            match f.kind {
                FrameKind::ChannelData => {
                    ChannelData::parse(&rest[..f.message_len]).unwrap();
                }
                FrameKind::Stun => {
                    Message::parse(&rest[..f.message_len]).unwrap();
                }
            }
            rest = &rest[f.len..];
            frames += 1;
        }
        (c.channel, c.data.len(), frames, rest.len())
    };
    let want = (0x4001, 11, 2, 10);
    assert_eq!(run(&cd, &stream), want);
    let mut got = (0, 0, 0, 0);
    let n = allocations(|| got = run(black_box(&cd), black_box(&stream)));
    assert_eq!(got, want);
    assert_eq!(n, 0, "ChannelData::parse / frame_len allocated");
}

#[test]
fn building_into_a_reused_buffer() {
    let key = long_term_key(PasswordAlgorithm::Md5, "alice", "example.org", "s3cret");
    let req_bytes = allocate_request(&key);
    let req = Message::parse(&req_bytes).unwrap();
    let relayed: SocketAddr = "203.0.113.9:49152".parse().unwrap();
    let mapped: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();

    let build = |buf: &mut Vec<u8>| {
        buf.clear();
        // Success response.
        MessageBuilder::response(buf, &req, Class::Success)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
            .lifetime(600)
            .text(attr::SOFTWARE, "turnpike")
            .integrity(&key)
            .fingerprint();
        let first = buf.len();
        // An error response after it in the same buffer.
        MessageBuilder::response(buf, &req, Class::Error)
            .error_code(401, "Unauthorized")
            .unknown_attributes(&[0x7f00])
            .text(attr::REALM, "example.org")
            .text(attr::NONCE, "fresh-nonce")
            .password_algorithms(&[1, 2])
            .fingerprint();
        // And a ChannelData frame.
        ChannelData::encode(0x4000, b"abc", true, buf);
        first
    };

    let mut buf = Vec::with_capacity(1024);
    let first = build(&mut buf);
    let snapshot = buf.clone();
    let cap = buf.capacity();
    let mut first2 = 0;
    let n = allocations(|| first2 = build(black_box(&mut buf)));
    assert_eq!(n, 0, "building into a buffer with capacity allocated");
    assert_eq!(buf.capacity(), cap);
    assert_eq!(buf, snapshot, "same bytes the second time");
    assert_eq!(first, first2);

    // And what was built is right.
    let ok = Message::parse(&buf[..first]).unwrap();
    assert_eq!(ok.class(), Class::Success);
    assert_eq!(ok.transaction_id(), TID);
    assert_eq!(ok.xor_relayed_address(), Ok(Some(relayed)));
    assert_eq!(ok.xor_mapped_address(), Ok(Some(mapped)));
    assert_eq!(ok.verify_integrity(&key), Ok(false));
    assert_eq!(ok.check_fingerprint(), Some(true));
    let f = frame_len(&buf[first..]).unwrap().unwrap();
    let err = Message::parse(&buf[first..first + f.len]).unwrap();
    assert_eq!(err.error_code().unwrap().unwrap().code, 401);
    assert_eq!(err.check_fingerprint(), Some(true));
    let cd = ChannelData::parse(&buf[first + f.len..]).unwrap();
    assert_eq!(cd.data, b"abc");
}
