//! RFC 5769 ("Test Vectors for Session Traversal Utilities for NAT (STUN)",
//! April 2010), section 2: every vector, byte for byte as published in the
//! RFC (not as amended by errata).
//!
//! Each vector must parse, expose the documented attribute values, verify
//! MESSAGE-INTEGRITY (and FINGERPRINT where present), and come out of
//! `MessageBuilder` identical to the published bytes. Tampering with any
//! byte and using a wrong password must both make the checks fail.
//!
//! The vectors pad some attributes with 0x20 rather than zero (the SOFTWARE
//! of 2.2/2.3 and the USERNAME of 2.1). Padding is covered by
//! MESSAGE-INTEGRITY and FINGERPRINT, so re-encoding those vectors uses
//! `MessageBuilder::padding_byte(0x20)`.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::SocketAddr;

use turnpike_proto::wire::{
    Class, IntegrityError, IntegrityKey, Message, MessageBuilder, MessageType, Method,
    PasswordAlgorithm, TransactionId, attr, long_term_key,
};

/// Hex as the RFC prints it (spaces, line breaks) to bytes.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 5769 §2.1 "Sample Request": Binding request with SOFTWARE, PRIORITY,
/// ICE-CONTROLLED, USERNAME (padded with 0x20), MESSAGE-INTEGRITY
/// (short-term) and FINGERPRINT.
const SAMPLE_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2 "Sample IPv4 Response": SOFTWARE (padded with 0x20),
/// XOR-MAPPED-ADDRESS 192.0.2.1:32853, MESSAGE-INTEGRITY, FINGERPRINT.
const SAMPLE_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3 "Sample IPv6 Response": as 2.2 with XOR-MAPPED-ADDRESS
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const SAMPLE_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4 "Sample Request with Long-Term Authentication": USERNAME
/// (Unicode), NONCE, REALM, MESSAGE-INTEGRITY; no FINGERPRINT. Zero padding.
const SAMPLE_LONG_TERM_REQUEST: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

/// Short-term password of §2.1-§2.3.
const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// §2.1-§2.3 transaction ID.
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// §2.4: username "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>"
/// ("matorikkusu").
const LT_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// §2.4: the password as the RFC gives it, "The<U+00AD>M<U+00AA>tr<U+2168>"...
const LT_PASSWORD_RAW: &str = "The\u{00AD}M\u{00AA}tr\u{2168}";
/// ...and as the RFC says it reads after SASLprep: the soft hyphen is mapped
/// to nothing, and NFKC turns U+00AA into "a" and U+2168 into "IX".
const LT_PASSWORD: &str = "TheMatrIX";
const LT_REALM: &str = "example.org";
const LT_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";
/// MD5("<username>:example.org:TheMatrIX"), computed independently
/// (Python's hashlib) from the UTF-8 bytes of the strings above.
const LT_KEY_MD5: [u8; 16] = [
    0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2, 0xa9,
];

fn short_term_key() -> IntegrityKey {
    IntegrityKey::short_term(PASSWORD)
}

fn long_term() -> IntegrityKey {
    long_term_key(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, LT_PASSWORD)
}

/// Flipping any single byte of the message must break MESSAGE-INTEGRITY (if
/// the byte is covered by it) or FINGERPRINT (if present), or make the bytes
/// unparseable. No byte of a signed message may be changed unnoticed.
fn assert_every_byte_is_protected(bytes: &[u8], key: &IntegrityKey) {
    let good = Message::parse(bytes).unwrap();
    let mi_end = good.get(attr::MESSAGE_INTEGRITY).unwrap().offset + 24;
    for i in 0..bytes.len() {
        let mut t = bytes.to_vec();
        t[i] ^= 0x01;
        let Ok(m) = Message::parse(&t) else {
            continue; // header, length or attribute framing broken: refused.
        };
        // A FINGERPRINT that no longer matches, or that is no longer there.
        let fp_bad = m.check_fingerprint() != Some(true);
        let mi_bad = m.verify_integrity(key).is_err();
        if i < mi_end {
            assert!(mi_bad, "byte {i} flipped, integrity still verifies");
        }
        if good.has_fingerprint() {
            assert!(fp_bad, "byte {i} flipped, fingerprint still matches");
        }
        assert!(fp_bad || mi_bad, "byte {i} flipped unnoticed");
    }
}

#[test]
fn hex_helper_is_exact() {
    assert_eq!(hex("00 0a\n ff"), vec![0x00, 0x0a, 0xff]);
    assert_eq!(hex(SAMPLE_REQUEST).len(), 20 + 0x58);
    assert_eq!(hex(SAMPLE_IPV4_RESPONSE).len(), 20 + 0x3c);
    assert_eq!(hex(SAMPLE_IPV6_RESPONSE).len(), 20 + 0x48);
    assert_eq!(hex(SAMPLE_LONG_TERM_REQUEST).len(), 20 + 0x60);
}

#[test]
fn sample_request_2_1_parses_and_verifies() {
    let bytes = hex(SAMPLE_REQUEST);
    let m = Message::parse(&bytes).expect("2.1 parses");
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.transaction_id(), TransactionId::new(TID));
    assert_eq!(m.software(), Ok(Some("STUN test client")));
    assert_eq!(m.priority(), Ok(Some(0x6e00_01ff)));
    assert_eq!(m.ice_controlled(), Ok(Some(0x932f_f9b1_5126_3b36)));
    assert_eq!(m.ice_controlling(), Ok(None));
    assert_eq!(m.username(), Ok(Some("evtj:h6vY")));
    assert_eq!(m.realm(), Ok(None));
    let order: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        order,
        [
            attr::SOFTWARE,
            attr::PRIORITY,
            attr::ICE_CONTROLLED,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert!(m.has_integrity());
    assert!(!m.has_integrity_sha256());
    assert_eq!(
        m.verify_integrity(&short_term_key()),
        Ok(false),
        "SHA-1 used"
    );
    assert_eq!(m.verify_sha1(&short_term_key()), Ok(()));
    assert_eq!(
        m.verify_sha256(&short_term_key()),
        Err(IntegrityError::Missing)
    );
    assert_eq!(m.check_fingerprint(), Some(true));
    // The FINGERPRINT value is the one printed in the RFC.
    let fp = m.get(attr::FINGERPRINT).unwrap();
    assert_eq!(fp.u32(), Ok(0xe57a_3bcf));
}

#[test]
fn sample_request_2_1_re_encodes_byte_for_byte() {
    let want = hex(SAMPLE_REQUEST);
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId::new(TID),
    )
    .text(attr::SOFTWARE, "STUN test client")
    .u32(attr::PRIORITY, 0x6e00_01ff)
    .u64(attr::ICE_CONTROLLED, 0x932f_f9b1_5126_3b36)
    .padding_byte(0x20)
    .text(attr::USERNAME, "evtj:h6vY")
    .integrity(&short_term_key())
    .fingerprint();
    assert_eq!(buf, want);
}

#[test]
fn sample_request_2_1_rejects_tampering_and_wrong_password() {
    let bytes = hex(SAMPLE_REQUEST);
    let m = Message::parse(&bytes).unwrap();
    for wrong in ["VOkJxbRl1RmTxUk/WvJxBT", "", "VOkJxbRl1RmTxUk/WvJxB"] {
        assert_eq!(
            m.verify_integrity(&IntegrityKey::short_term(wrong)),
            Err(IntegrityError::Mismatch),
            "wrong password {wrong:?}"
        );
    }
    assert_every_byte_is_protected(&bytes, &short_term_key());
    // Changing the 0x20 padding of USERNAME to zero (what a zero-padding
    // builder would write) breaks both checks: padding is covered.
    let mut t = bytes.clone();
    let pad = t.len() - 8 - 24 - 3;
    assert_eq!(&t[pad..pad + 3], b"   ");
    t[pad..pad + 3].copy_from_slice(&[0, 0, 0]);
    let m = Message::parse(&t).unwrap();
    assert_eq!(m.username(), Ok(Some("evtj:h6vY")), "value unchanged");
    assert!(m.verify_integrity(&short_term_key()).is_err());
    assert_eq!(m.check_fingerprint(), Some(false));
}

fn check_response(vector: &str, mapped: &str) {
    let bytes = hex(vector);
    let want: SocketAddr = mapped.parse().unwrap();
    let m = Message::parse(&bytes).expect("response parses");
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), TransactionId::new(TID));
    assert_eq!(m.software(), Ok(Some("test vector")));
    assert_eq!(m.xor_mapped_address(), Ok(Some(want)));
    assert_eq!(m.mapped_address(), Ok(None));
    assert_eq!(m.verify_integrity(&short_term_key()), Ok(false));
    assert_eq!(m.check_fingerprint(), Some(true));
    assert_eq!(
        m.verify_integrity(&IntegrityKey::short_term("wrong")),
        Err(IntegrityError::Mismatch)
    );
    assert_every_byte_is_protected(&bytes, &short_term_key());

    // Byte for byte from the builder: SOFTWARE "test vector" is 11 bytes,
    // padded with one 0x20 in the RFC.
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Success),
        TransactionId::new(TID),
    )
    .padding_byte(0x20)
    .text(attr::SOFTWARE, "test vector")
    .padding_byte(0)
    .xor_address(attr::XOR_MAPPED_ADDRESS, want)
    .integrity(&short_term_key())
    .fingerprint();
    assert_eq!(buf, bytes, "{mapped}: re-encoded bytes differ");

    // With the default zero padding the bytes differ exactly in the pad byte
    // and in the two checksums, and the result still verifies.
    let mut zero = Vec::new();
    MessageBuilder::new(
        &mut zero,
        MessageType::new(Method::BINDING, Class::Success),
        TransactionId::new(TID),
    )
    .text(attr::SOFTWARE, "test vector")
    .xor_address(attr::XOR_MAPPED_ADDRESS, want)
    .integrity(&short_term_key())
    .fingerprint();
    assert_eq!(zero.len(), bytes.len());
    assert_eq!(zero[20 + 4 + 11], 0);
    assert_eq!(bytes[20 + 4 + 11], 0x20);
    let z = Message::parse(&zero).unwrap();
    assert_eq!(z.verify_integrity(&short_term_key()), Ok(false));
    assert_eq!(z.check_fingerprint(), Some(true));
    assert_eq!(z.xor_mapped_address(), Ok(Some(want)));
}

#[test]
fn sample_ipv4_response_2_2() {
    check_response(SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853");
}

#[test]
fn sample_ipv6_response_2_3() {
    check_response(
        SAMPLE_IPV6_RESPONSE,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    );
}

#[test]
fn long_term_key_derivation_2_4() {
    // The USERNAME bytes of the vector are the UTF-8 of the Unicode name.
    assert_eq!(
        LT_USERNAME.as_bytes(),
        &hex("e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9")[..]
    );
    // key = MD5(username ":" realm ":" SASLprep(password)).
    let key = long_term();
    assert_eq!(key.as_bytes(), &LT_KEY_MD5);
    // turnpike hashes the password as given (OpaqueString is the identity
    // for ASCII; no SASLprep/NFKC is applied), so the raw RFC password
    // yields a different key: operators must configure the prepared form.
    let raw = long_term_key(
        PasswordAlgorithm::Md5,
        LT_USERNAME,
        LT_REALM,
        LT_PASSWORD_RAW,
    );
    assert_ne!(raw.as_bytes(), &LT_KEY_MD5);
}

#[test]
fn long_term_request_2_4_parses_and_verifies() {
    let bytes = hex(SAMPLE_LONG_TERM_REQUEST);
    let m = Message::parse(&bytes).expect("2.4 parses");
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Request);
    assert_eq!(
        m.transaction_id(),
        TransactionId::new([
            0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e
        ])
    );
    assert_eq!(m.username(), Ok(Some(LT_USERNAME)));
    assert_eq!(m.nonce(), Ok(Some(LT_NONCE)));
    assert_eq!(m.realm(), Ok(Some(LT_REALM)));
    assert!(!m.has_fingerprint());
    assert_eq!(m.check_fingerprint(), None);
    assert_eq!(m.verify_integrity(&long_term()), Ok(false));

    // Wrong passwords: the unprepared RFC password, a case change, and the
    // short-term password of the other vectors.
    for wrong in [LT_PASSWORD_RAW, "TheMatrix", PASSWORD] {
        let k = long_term_key(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, wrong);
        assert_eq!(
            m.verify_integrity(&k),
            Err(IntegrityError::Mismatch),
            "{wrong:?}"
        );
    }
    // The right password under the wrong algorithm or realm fails too.
    let sha = long_term_key(
        PasswordAlgorithm::Sha256,
        LT_USERNAME,
        LT_REALM,
        LT_PASSWORD,
    );
    assert_eq!(m.verify_integrity(&sha), Err(IntegrityError::Mismatch));
    let other_realm = long_term_key(
        PasswordAlgorithm::Md5,
        LT_USERNAME,
        "example.com",
        LT_PASSWORD,
    );
    assert_eq!(
        m.verify_integrity(&other_realm),
        Err(IntegrityError::Mismatch)
    );

    assert_every_byte_is_protected(&bytes, &long_term());
}

#[test]
fn long_term_request_2_4_re_encodes_byte_for_byte() {
    let want = hex(SAMPLE_LONG_TERM_REQUEST);
    let mut buf = Vec::new();
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId::new(want[8..20].try_into().unwrap()),
    )
    .text(attr::USERNAME, LT_USERNAME)
    .text(attr::NONCE, LT_NONCE)
    .text(attr::REALM, LT_REALM)
    .integrity(&long_term());
    assert_eq!(buf, want);
}

#[test]
fn builder_output_of_vectors_is_accepted_after_headroom() {
    // MessageBuilder appends after whatever the buffer holds; the vector
    // bytes come out the same behind reserved headroom.
    let want = hex(SAMPLE_LONG_TERM_REQUEST);
    let mut buf = vec![0xee; 7];
    MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId::new(want[8..20].try_into().unwrap()),
    )
    .text(attr::USERNAME, LT_USERNAME)
    .text(attr::NONCE, LT_NONCE)
    .text(attr::REALM, LT_REALM)
    .integrity(&long_term());
    assert_eq!(&buf[..7], &[0xee; 7]);
    assert_eq!(&buf[7..], &want[..]);
}
