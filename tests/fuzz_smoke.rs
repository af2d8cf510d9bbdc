//! Robustness of the three untrusted-input entry points: `Message::parse`
//! (plus every accessor, integrity and fingerprint), `frame_len` and
//! `ChannelData::parse`.

use turnpike::wire::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, TransactionId, attr,
    fingerprint_of,
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
