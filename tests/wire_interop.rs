//! Interoperability of the wire codec with independent implementations:
//! the webrtc-rs `stun` crate (and its `turn` crate for the TURN attributes
//! and ChannelData).
//!
//! A random message model (method, class, transaction ID, a random mix of
//! attributes, optional MESSAGE-INTEGRITY with a random key, optional
//! FINGERPRINT) is
//! * encoded with ours and decoded with webrtc-rs,
//! * encoded with webrtc-rs and decoded with ours,
//! * encoded with ours and decoded with ours (also with
//!   MESSAGE-INTEGRITY-SHA256, which webrtc-rs lacks),
//!
//! and every value, the integrity and the fingerprint must agree. Both
//! encoders pad with zeros and add attributes in the given order, so their
//! bytes must also be identical.
//!
//! Case counts are bounded (override with PROPTEST_CASES) and the seed is
//! fixed (override with PROPTEST_RNG_SEED), so runs are reproducible.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use stun::attributes::{
    ATTR_DATA, ATTR_NONCE, ATTR_REALM, ATTR_SOFTWARE, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
    ATTR_XORMAPPED_ADDRESS, AttrType,
};
use stun::error_code::{ErrorCode as StunErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    Message as StunMessage, MessageClass, MessageType as StunType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes as StunUnknown;
use stun::xoraddr::XorMappedAddress;
use turn::proto::chandata::ChannelData as TurnChannelData;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::{PROTO_UDP, Protocol};

use turnpike_proto::wire::{
    ChannelData, Class, FrameKind, IntegrityError, IntegrityKey, Message, MessageBuilder,
    MessageType, Method, TransactionId, attr, frame_len,
};

fn config(cases: u32, seed: u64) -> Config {
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

// --- the model ---------------------------------------------------------------

/// One attribute of the random message model.
#[derive(Debug, Clone, PartialEq)]
enum A {
    XorMapped(SocketAddr),
    XorPeer(SocketAddr),
    XorRelayed(SocketAddr),
    Username(String),
    Realm(String),
    Nonce(String),
    Software(String),
    ErrorCode(u16, String),
    Lifetime(u32),
    ChannelNumber(u16),
    RequestedTransport(u8),
    Data(Vec<u8>),
    Unknown(Vec<u16>),
}

#[derive(Debug, Clone)]
struct Model {
    method: u16,
    class: Class,
    tid: [u8; 12],
    attrs: Vec<A>,
    /// MESSAGE-INTEGRITY with this key (1..=64 random bytes).
    key: Option<Vec<u8>>,
    fingerprint: bool,
}

impl Model {
    fn typ(&self) -> MessageType {
        MessageType::new(Method(self.method), self.class)
    }

    fn first<T>(&self, f: impl Fn(&A) -> Option<T>) -> Option<T> {
        self.attrs.iter().find_map(f)
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.attrs
            .iter()
            .filter_map(|a| match a {
                A::XorPeer(p) => Some(*p),
                _ => None,
            })
            .collect()
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Text of 0..40 printable characters, any script (multi-byte UTF-8
/// included); well under every length limit of RFC 8489.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error),
    ]
}

fn model() -> impl Strategy<Value = Model> {
    let singles = (
        (
            proptest::option::of(socket_addr().prop_map(A::XorMapped)),
            proptest::option::of(socket_addr().prop_map(A::XorRelayed)),
            proptest::option::of(text().prop_map(A::Username)),
            proptest::option::of(text().prop_map(A::Realm)),
            proptest::option::of(text().prop_map(A::Nonce)),
            proptest::option::of(text().prop_map(A::Software)),
        ),
        (
            proptest::option::of((300u16..700, text()).prop_map(|(c, r)| A::ErrorCode(c, r))),
            proptest::option::of(any::<u32>().prop_map(A::Lifetime)),
            proptest::option::of(any::<u16>().prop_map(A::ChannelNumber)),
            proptest::option::of(any::<u8>().prop_map(A::RequestedTransport)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300).prop_map(A::Data)),
            proptest::option::of(
                proptest::collection::vec(any::<u16>(), 0..8).prop_map(A::Unknown),
            ),
        ),
    );
    let peers = proptest::collection::vec(socket_addr().prop_map(A::XorPeer), 0..4);
    let attrs = (singles, peers)
        .prop_map(|((a, b), peers)| {
            let mut v: Vec<A> = [a.0, a.1, a.2, a.3, a.4, a.5, b.0, b.1, b.2, b.3, b.4, b.5]
                .into_iter()
                .flatten()
                .collect();
            v.extend(peers);
            v
        })
        .prop_shuffle();
    (
        0u16..0x1000,
        class(),
        any::<[u8; 12]>(),
        attrs,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=64)),
        any::<bool>(),
    )
        .prop_map(|(method, class, tid, attrs, key, fingerprint)| Model {
            method,
            class,
            tid,
            attrs,
            key,
            fingerprint,
        })
}

// --- encoders ------------------------------------------------------------------

/// Encode the model with turnpike's `MessageBuilder` (optionally with
/// MESSAGE-INTEGRITY-SHA256 after MESSAGE-INTEGRITY).
fn encode_ours(m: &Model, sha256: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m.typ(), TransactionId::new(m.tid));
    for a in &m.attrs {
        match a {
            A::XorMapped(x) => b.xor_address(attr::XOR_MAPPED_ADDRESS, *x),
            A::XorPeer(x) => b.xor_address(attr::XOR_PEER_ADDRESS, *x),
            A::XorRelayed(x) => b.xor_address(attr::XOR_RELAYED_ADDRESS, *x),
            A::Username(s) => b.text(attr::USERNAME, s),
            A::Realm(s) => b.text(attr::REALM, s),
            A::Nonce(s) => b.text(attr::NONCE, s),
            A::Software(s) => b.text(attr::SOFTWARE, s),
            A::ErrorCode(c, r) => b.error_code(*c, r),
            A::Lifetime(l) => b.lifetime(*l),
            A::ChannelNumber(c) => b.channel_number(*c),
            A::RequestedTransport(p) => b.requested_transport(*p),
            A::Data(d) => b.attr(attr::DATA, d),
            A::Unknown(u) => b.unknown_attributes(u),
        };
    }
    if let Some(k) = &m.key {
        let key = IntegrityKey::new(k);
        b.integrity(&key);
        if sha256 {
            b.integrity_sha256(&key);
        }
    }
    if m.fingerprint {
        b.fingerprint();
    }
    buf
}

fn stun_class(c: Class) -> MessageClass {
    match c {
        Class::Request => CLASS_REQUEST,
        Class::Indication => CLASS_INDICATION,
        Class::Success => CLASS_SUCCESS_RESPONSE,
        Class::Error => CLASS_ERROR_RESPONSE,
    }
}

/// The webrtc-rs message type for our method/class. Its `Method` has a
/// private field, so go through the 16-bit wire value.
fn stun_type(m: &Model) -> StunType {
    let mut t = StunType::default();
    t.read_value(m.typ().to_u16());
    t
}

/// Encode the model with webrtc-rs (`stun` setters, `turn` setters for the
/// TURN attributes).
fn encode_stun(m: &Model) -> Vec<u8> {
    let mut s = StunMessage::new();
    s.typ = stun_type(m);
    s.transaction_id = stun::agent::TransactionId(m.tid);
    s.write_header();
    for a in &m.attrs {
        let r = match a {
            A::XorMapped(x) => XorMappedAddress {
                ip: x.ip(),
                port: x.port(),
            }
            .add_to(&mut s),
            A::XorPeer(x) => turn::proto::peeraddr::PeerAddress {
                ip: x.ip(),
                port: x.port(),
            }
            .add_to(&mut s),
            A::XorRelayed(x) => RelayedAddress {
                ip: x.ip(),
                port: x.port(),
            }
            .add_to(&mut s),
            A::Username(t) => TextAttribute::new(ATTR_USERNAME, t.clone()).add_to(&mut s),
            A::Realm(t) => TextAttribute::new(ATTR_REALM, t.clone()).add_to(&mut s),
            A::Nonce(t) => TextAttribute::new(ATTR_NONCE, t.clone()).add_to(&mut s),
            A::Software(t) => TextAttribute::new(ATTR_SOFTWARE, t.clone()).add_to(&mut s),
            A::ErrorCode(c, r) => ErrorCodeAttribute {
                code: StunErrorCode(*c),
                reason: r.as_bytes().to_vec(),
            }
            .add_to(&mut s),
            A::Lifetime(l) => Lifetime(Duration::from_secs(u64::from(*l))).add_to(&mut s),
            A::ChannelNumber(c) => ChannelNumber(*c).add_to(&mut s),
            A::RequestedTransport(p) => RequestedTransport {
                protocol: Protocol(*p),
            }
            .add_to(&mut s),
            A::Data(d) => Data(d.clone()).add_to(&mut s),
            A::Unknown(u) => StunUnknown(u.iter().map(|t| AttrType(*t)).collect()).add_to(&mut s),
        };
        r.expect("webrtc-rs encodes the attribute");
    }
    if let Some(k) = &m.key {
        MessageIntegrity(k.clone()).add_to(&mut s).unwrap();
    }
    if m.fingerprint {
        FINGERPRINT.add_to(&mut s).unwrap();
    }
    s.raw
}

// --- decoders and comparisons --------------------------------------------------

/// Decode one XOR'd address value with webrtc-rs's own XOR code, by putting
/// it into a fresh message with the same transaction ID.
fn stun_xor_decode(tid: [u8; 12], value: &[u8]) -> SocketAddr {
    let mut s = StunMessage::new();
    s.transaction_id = stun::agent::TransactionId(tid);
    s.write_header();
    s.add(ATTR_XORMAPPED_ADDRESS, value);
    let mut x = XorMappedAddress::default();
    x.get_from(&s).expect("webrtc-rs decodes the address");
    SocketAddr::new(x.ip, x.port)
}

/// Everything a webrtc-rs decoder sees in `bytes` must match the model.
fn check_with_stun(m: &Model, bytes: &[u8]) {
    let mut s = StunMessage::new();
    s.write(bytes).expect("webrtc-rs decodes our message");
    assert_eq!(s.typ.value(), m.typ().to_u16(), "message type");
    assert_eq!(s.typ.class, stun_class(m.class));
    assert_eq!(s.transaction_id.0, m.tid);

    let mut x = XorMappedAddress::default();
    match m.first(|a| match a {
        A::XorMapped(x) => Some(*x),
        _ => None,
    }) {
        Some(want) => {
            x.get_from(&s).unwrap();
            assert_eq!(SocketAddr::new(x.ip, x.port), want, "XOR-MAPPED-ADDRESS");
        }
        None => assert!(x.get_from(&s).is_err()),
    }

    let mut r = RelayedAddress::default();
    match m.first(|a| match a {
        A::XorRelayed(x) => Some(*x),
        _ => None,
    }) {
        Some(want) => {
            r.get_from(&s).unwrap();
            assert_eq!(SocketAddr::new(r.ip, r.port), want, "XOR-RELAYED-ADDRESS");
        }
        None => assert!(r.get_from(&s).is_err()),
    }

    // Every XOR-PEER-ADDRESS, in order: turn's getter gives the first, the
    // rest are decoded from the raw attribute list.
    let peers: Vec<SocketAddr> = s
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .map(|a| stun_xor_decode(m.tid, &a.value))
        .collect();
    assert_eq!(peers, m.peers(), "XOR-PEER-ADDRESS list");
    let mut p = turn::proto::peeraddr::PeerAddress::default();
    if let Some(first) = m.peers().first() {
        p.get_from(&s).unwrap();
        assert_eq!(SocketAddr::new(p.ip, p.port), *first);
    } else {
        assert!(p.get_from(&s).is_err());
    }

    for (typ, want) in [
        (
            ATTR_USERNAME,
            m.first(|a| match a {
                A::Username(t) => Some(t.clone()),
                _ => None,
            }),
        ),
        (
            ATTR_REALM,
            m.first(|a| match a {
                A::Realm(t) => Some(t.clone()),
                _ => None,
            }),
        ),
        (
            ATTR_NONCE,
            m.first(|a| match a {
                A::Nonce(t) => Some(t.clone()),
                _ => None,
            }),
        ),
        (
            ATTR_SOFTWARE,
            m.first(|a| match a {
                A::Software(t) => Some(t.clone()),
                _ => None,
            }),
        ),
    ] {
        let got = TextAttribute::get_from_as(&s, typ).ok().map(|t| t.text);
        assert_eq!(got, want, "text attribute {typ}");
    }

    let mut e = ErrorCodeAttribute::default();
    match m.first(|a| match a {
        A::ErrorCode(c, r) => Some((*c, r.clone())),
        _ => None,
    }) {
        Some((code, reason)) => {
            e.get_from(&s).unwrap();
            assert_eq!(e.code.0, code);
            assert_eq!(e.reason, reason.as_bytes());
        }
        None => assert!(e.get_from(&s).is_err()),
    }

    let mut l = Lifetime::default();
    match m.first(|a| match a {
        A::Lifetime(l) => Some(*l),
        _ => None,
    }) {
        Some(want) => {
            l.get_from(&s).unwrap();
            assert_eq!(l.0, Duration::from_secs(u64::from(want)));
        }
        None => assert!(l.get_from(&s).is_err()),
    }

    let mut c = ChannelNumber::default();
    match m.first(|a| match a {
        A::ChannelNumber(c) => Some(*c),
        _ => None,
    }) {
        Some(want) => {
            c.get_from(&s).unwrap();
            assert_eq!(c.0, want);
        }
        None => assert!(c.get_from(&s).is_err()),
    }

    let mut t = RequestedTransport {
        protocol: PROTO_UDP,
    };
    match m.first(|a| match a {
        A::RequestedTransport(p) => Some(*p),
        _ => None,
    }) {
        Some(want) => {
            t.get_from(&s).unwrap();
            assert_eq!(t.protocol.0, want);
        }
        None => assert!(t.get_from(&s).is_err()),
    }

    let mut d = Data::default();
    match m.first(|a| match a {
        A::Data(d) => Some(d.clone()),
        _ => None,
    }) {
        Some(want) => {
            d.get_from(&s).unwrap();
            assert_eq!(d.0, want);
        }
        None => assert!(s.get(ATTR_DATA).is_err()),
    }

    let mut u = StunUnknown(Vec::new());
    match m.first(|a| match a {
        A::Unknown(u) => Some(u.clone()),
        _ => None,
    }) {
        Some(want) => {
            u.get_from(&s).unwrap();
            let got: Vec<u16> = u.0.iter().map(AttrType::value).collect();
            assert_eq!(got, want);
        }
        None => assert!(u.get_from(&s).is_err()),
    }

    match &m.key {
        Some(k) => {
            MessageIntegrity(k.clone())
                .check(&mut s)
                .expect("webrtc-rs verifies our MESSAGE-INTEGRITY");
            let mut wrong = k.clone();
            wrong[0] ^= 1;
            assert!(MessageIntegrity(wrong).check(&mut s).is_err());
        }
        None => assert!(MessageIntegrity(vec![1]).check(&mut s).is_err()),
    }
    if m.fingerprint {
        FINGERPRINT
            .check(&s)
            .expect("webrtc-rs verifies our FINGERPRINT");
    } else {
        assert!(FINGERPRINT.check(&s).is_err());
    }
}

/// Everything turnpike's accessors see in `bytes` must match the model.
fn check_with_ours(m: &Model, bytes: &[u8], sha256: bool) {
    let msg = Message::parse(bytes).expect("turnpike parses the message");
    assert_eq!(msg.message_type(), m.typ());
    assert_eq!(msg.method(), Method(m.method));
    assert_eq!(msg.class(), m.class);
    assert_eq!(msg.transaction_id(), TransactionId::new(m.tid));

    let first_addr = |f: fn(&A) -> Option<SocketAddr>| m.first(f);
    assert_eq!(
        msg.xor_mapped_address(),
        Ok(first_addr(|a| match a {
            A::XorMapped(x) => Some(*x),
            _ => None,
        }))
    );
    assert_eq!(
        msg.xor_relayed_address(),
        Ok(first_addr(|a| match a {
            A::XorRelayed(x) => Some(*x),
            _ => None,
        }))
    );
    let peers: Vec<SocketAddr> = msg.xor_peer_addresses().map(Result::unwrap).collect();
    assert_eq!(peers, m.peers());
    assert_eq!(msg.xor_peer_address(), Ok(m.peers().first().copied()));

    let text = |f: fn(&A) -> Option<&str>| m.attrs.iter().find_map(f);
    assert_eq!(
        msg.username(),
        Ok(text(|a| match a {
            A::Username(t) => Some(t),
            _ => None,
        }))
    );
    assert_eq!(
        msg.realm(),
        Ok(text(|a| match a {
            A::Realm(t) => Some(t),
            _ => None,
        }))
    );
    assert_eq!(
        msg.nonce(),
        Ok(text(|a| match a {
            A::Nonce(t) => Some(t),
            _ => None,
        }))
    );
    assert_eq!(
        msg.software(),
        Ok(text(|a| match a {
            A::Software(t) => Some(t),
            _ => None,
        }))
    );

    let ec = msg.error_code().unwrap().map(|e| (e.code, e.reason));
    let want_ec = m.attrs.iter().find_map(|a| match a {
        A::ErrorCode(c, r) => Some((*c, r.as_str())),
        _ => None,
    });
    assert_eq!(ec, want_ec);

    assert_eq!(
        msg.lifetime(),
        Ok(m.first(|a| match a {
            A::Lifetime(l) => Some(*l),
            _ => None,
        }))
    );
    assert_eq!(
        msg.channel_number(),
        Ok(m.first(|a| match a {
            A::ChannelNumber(c) => Some(*c),
            _ => None,
        }))
    );
    assert_eq!(
        msg.requested_transport(),
        Ok(m.first(|a| match a {
            A::RequestedTransport(p) => Some(*p),
            _ => None,
        }))
    );
    assert_eq!(
        msg.data(),
        m.attrs.iter().find_map(|a| match a {
            A::Data(d) => Some(d.as_slice()),
            _ => None,
        })
    );
    let unknown: Option<Vec<u16>> = msg
        .get(attr::UNKNOWN_ATTRIBUTES)
        .map(|a| a.attribute_list().unwrap().collect());
    assert_eq!(
        unknown,
        m.first(|a| match a {
            A::Unknown(u) => Some(u.clone()),
            _ => None,
        })
    );

    // Attribute order and count as modelled (plus the security attributes).
    let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    let mut want_types: Vec<u16> = m
        .attrs
        .iter()
        .map(|a| match a {
            A::XorMapped(_) => attr::XOR_MAPPED_ADDRESS,
            A::XorPeer(_) => attr::XOR_PEER_ADDRESS,
            A::XorRelayed(_) => attr::XOR_RELAYED_ADDRESS,
            A::Username(_) => attr::USERNAME,
            A::Realm(_) => attr::REALM,
            A::Nonce(_) => attr::NONCE,
            A::Software(_) => attr::SOFTWARE,
            A::ErrorCode(..) => attr::ERROR_CODE,
            A::Lifetime(_) => attr::LIFETIME,
            A::ChannelNumber(_) => attr::CHANNEL_NUMBER,
            A::RequestedTransport(_) => attr::REQUESTED_TRANSPORT,
            A::Data(_) => attr::DATA,
            A::Unknown(_) => attr::UNKNOWN_ATTRIBUTES,
        })
        .collect();
    if m.key.is_some() {
        want_types.push(attr::MESSAGE_INTEGRITY);
        if sha256 {
            want_types.push(attr::MESSAGE_INTEGRITY_SHA256);
        }
    }
    if m.fingerprint {
        want_types.push(attr::FINGERPRINT);
    }
    assert_eq!(types, want_types);

    match &m.key {
        Some(k) => {
            let key = IntegrityKey::new(k);
            assert_eq!(msg.verify_integrity(&key), Ok(sha256));
            assert_eq!(msg.verify_sha1(&key), Ok(()));
            let mut wrong = k.clone();
            wrong[0] ^= 1;
            let wrong = IntegrityKey::new(&wrong);
            assert_eq!(msg.verify_integrity(&wrong), Err(IntegrityError::Mismatch));
            assert_eq!(msg.verify_sha1(&wrong), Err(IntegrityError::Mismatch));
        }
        None => {
            assert!(!msg.has_integrity());
            assert_eq!(
                msg.verify_integrity(&IntegrityKey::new(b"k")),
                Err(IntegrityError::Missing)
            );
        }
    }
    assert_eq!(msg.check_fingerprint(), m.fingerprint.then_some(true));
}

proptest! {
    #![proptest_config(config(256, 0x5475_726e_7069_6b65))]

    /// turnpike encodes, webrtc-rs decodes.
    #[test]
    fn ours_to_stun(m in model()) {
        let bytes = encode_ours(&m, false);
        check_with_stun(&m, &bytes);
    }

    /// webrtc-rs encodes, turnpike decodes; and both encoders produce the
    /// same bytes for the same message.
    #[test]
    fn stun_to_ours(m in model()) {
        let bytes = encode_stun(&m);
        check_with_ours(&m, &bytes, false);
        prop_assert_eq!(&bytes, &encode_ours(&m, false), "encoders disagree");
    }

    /// turnpike to turnpike, including MESSAGE-INTEGRITY-SHA256 (which
    /// webrtc-rs does not implement).
    #[test]
    fn ours_to_ours(m in model(), sha256 in any::<bool>()) {
        let bytes = encode_ours(&m, sha256);
        check_with_ours(&m, &bytes, sha256);
    }

    /// ChannelData both ways against `turn::proto::chandata` (RFC 8656
    /// channel range 0x4000-0x4FFF; webrtc-rs still accepts RFC 5766's
    /// 0x4000-0x7FFF, which is not tested here).
    #[test]
    fn channel_data_interop(
        channel in 0x4000u16..=0x4fff,
        data in proptest::collection::vec(any::<u8>(), 0..300),
        pad in any::<bool>(),
    ) {
        // Ours → turn.
        let mut ours = Vec::new();
        ChannelData::encode(channel, &data, pad, &mut ours);
        let mut t = TurnChannelData { raw: ours.clone(), ..Default::default() };
        t.decode().expect("turn decodes our ChannelData");
        prop_assert_eq!(t.number.0, channel);
        prop_assert_eq!(&t.data, &data);

        // Turn → ours (turn always pads).
        let mut t = TurnChannelData { data: data.clone(), number: ChannelNumber(channel), raw: Vec::new() };
        t.encode();
        let cd = ChannelData::parse(&t.raw).expect("we parse turn's ChannelData");
        prop_assert_eq!(cd.channel, channel);
        prop_assert_eq!(cd.data, &data[..]);
        let mut padded = Vec::new();
        ChannelData::encode(channel, &data, true, &mut padded);
        prop_assert_eq!(&padded, &t.raw, "padded encodings differ");
        if !pad {
            prop_assert_eq!(ours.len(), 4 + data.len());
        }
    }

    /// A TCP stream of messages encoded by webrtc-rs and ChannelData frames
    /// encoded by `turn` is cut back into exactly those frames by
    /// `frame_len`, and each frame parses.
    #[test]
    fn stream_framing_of_webrtc_rs_output(
        items in proptest::collection::vec(
            prop_oneof![
                model().prop_map(Ok),
                (0x4000u16..=0x4fff, proptest::collection::vec(any::<u8>(), 0..100)).prop_map(Err),
            ],
            1..6,
        )
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for item in &items {
            match item {
                Ok(m) => {
                    let b = encode_stun(m);
                    want.push((FrameKind::Stun, b.len()));
                    stream.extend_from_slice(&b);
                }
                Err((ch, data)) => {
                    let mut t = TurnChannelData { data: data.clone(), number: ChannelNumber(*ch), raw: Vec::new() };
                    t.encode();
                    want.push((FrameKind::ChannelData, t.raw.len()));
                    stream.extend_from_slice(&t.raw);
                }
            }
        }
        let mut rest = &stream[..];
        for (i, (kind, len)) in want.iter().enumerate() {
            // Every strict prefix of the next frame asks for more bytes.
            if i == want.len() - 1 {
                for cut in 0..*len {
                    prop_assert_eq!(frame_len(&rest[..cut]), Ok(None));
                }
            }
            let f = frame_len(rest).unwrap().expect("a whole frame is there");
            prop_assert_eq!(f.kind, *kind);
            prop_assert_eq!(f.len, *len);
            let frame = &rest[..f.message_len];
            match (&items[i], f.kind) {
                (Ok(m), FrameKind::Stun) => check_with_ours(m, frame, false),
                (Err((ch, data)), FrameKind::ChannelData) => {
                    let cd = ChannelData::parse(frame).unwrap();
                    prop_assert_eq!(cd.channel, *ch);
                    prop_assert_eq!(cd.data, &data[..]);
                }
                _ => prop_assert!(false, "frame kind mismatch"),
            }
            rest = &rest[f.len..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(frame_len(rest), Ok(None));
    }
}

/// A fixed TURN Allocate exchange, spelled out, as a readable anchor for the
/// property tests: long-term credentials, both directions.
#[test]
fn allocate_request_long_term_both_ways() {
    use turnpike_proto::wire::{PasswordAlgorithm, long_term_key};
    let key = long_term_key(PasswordAlgorithm::Md5, "alice", "example.org", "s3cret");
    let stun_key = MessageIntegrity::new_long_term_integrity(
        "alice".into(),
        "example.org".into(),
        "s3cret".into(),
    );
    assert_eq!(key.as_bytes(), &stun_key.0[..], "same MD5 long-term key");

    let m = Model {
        method: Method::ALLOCATE.0,
        class: Class::Request,
        tid: [0x42; 12],
        attrs: vec![
            A::Username("alice".into()),
            A::Realm("example.org".into()),
            A::Nonce("n0nce".into()),
            A::RequestedTransport(17),
            A::Lifetime(600),
        ],
        key: Some(stun_key.0.clone()),
        fingerprint: true,
    };
    let ours = encode_ours(&m, false);
    let theirs = encode_stun(&m);
    assert_eq!(ours, theirs);
    check_with_stun(&m, &ours);
    check_with_ours(&m, &theirs, false);
    let msg = Message::parse(&theirs).unwrap();
    assert_eq!(msg.verify_integrity(&key), Ok(false));
    assert_eq!(msg.method(), Method::ALLOCATE);
    assert_eq!(msg.requested_transport(), Ok(Some(17)));
}
