//! The checks the fuzz targets make: no panic, and whatever parses is
//! self-consistent. `tests/fuzz_smoke.rs` (the deterministic, `cargo test`
//! version of this fuzzing) includes this very file, so both check the
//! same things.

use turnpike_proto::wire::{
    ChannelData, Frame, FrameKind, HEADER_LEN, IntegrityError, IntegrityKey, Message, ParseError,
    attr, frame_len, is_valid_channel, pad4,
};

/// The key integrity is checked with (a wrong one for almost every input).
pub const FUZZ_KEY: &[u8] = b"fuzz-key";

/// `Message::parse` and everything reachable from a parsed message. Never
/// panics; if parsing succeeds the message is self-consistent.
pub fn probe_message(buf: &[u8]) {
    let Ok(m) = Message::parse(buf) else {
        return;
    };
    assert_eq!(m.as_bytes().len(), buf.len());
    assert_eq!(m.transaction_id().as_bytes(), &buf[8..20]);
    assert_eq!(
        usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 20,
        buf.len()
    );
    // A parsed message is also one whole STUN frame on a stream.
    assert_eq!(
        frame_len(buf),
        Ok(Some(Frame {
            kind: FrameKind::Stun,
            len: buf.len(),
            message_len: buf.len()
        }))
    );
    // Every attribute lies inside the buffer, in order, 4-aligned, and its
    // value is the bytes right after its header.
    let mut prev_end = HEADER_LEN;
    for a in m.attributes() {
        assert!(a.offset >= prev_end, "attributes overlap or go backwards");
        assert_eq!(a.offset % 4, 0);
        let end = a.offset + 4 + a.value.len();
        assert!(end <= buf.len(), "attribute runs past the buffer");
        assert_eq!(a.value, &buf[a.offset + 4..end]);
        assert_eq!(
            u16::from_be_bytes([buf[a.offset], buf[a.offset + 1]]),
            a.typ
        );
        prev_end = a.offset + 4 + pad4(a.value.len());
        assert!(prev_end <= buf.len(), "padding runs past the buffer");
        // Every RawAttr decoder, whatever the type.
        let tid = m.transaction_id();
        let _ = (a.u32(), a.u64(), a.str(), a.plain_address());
        let _ = (a.xor_address(&tid), a.error_code(), a.channel_number());
        let _ = (a.family(), a.requested_transport(), a.even_port_reserve());
        let _ = (a.reservation_token(), a.address_error_code(), a.icmp());
        let _ = a.password_algorithm();
        if let Ok(list) = a.attribute_list() {
            assert_eq!(list.count(), a.value.len() / 2);
        }
        let mut algs = a.password_algorithms();
        for (_, params) in algs.by_ref() {
            assert!(params.len() <= a.value.len());
        }
        let _ = algs.malformed();
    }
    for t in [
        attr::MESSAGE_INTEGRITY,
        attr::MESSAGE_INTEGRITY_SHA256,
        attr::FINGERPRINT,
    ] {
        if let Some(a) = m.get(t) {
            assert!(a.offset + 4 + a.value.len() <= buf.len());
        }
    }
    assert_eq!(m.has_fingerprint(), m.check_fingerprint().is_some());
    if let Some(fp) = m.get(attr::FINGERPRINT) {
        assert_eq!(fp.offset + 8, buf.len(), "FINGERPRINT is last");
    }
    // Every typed accessor.
    let _ = (
        m.username(),
        m.realm(),
        m.nonce(),
        m.software(),
        m.userhash(),
    );
    let _ = (
        m.mapped_address(),
        m.alternate_server(),
        m.xor_mapped_address(),
    );
    let _ = (
        m.xor_relayed_address(),
        m.xor_peer_address(),
        m.error_code(),
    );
    let _ = m.xor_peer_addresses().count();
    let _ = (
        m.lifetime(),
        m.channel_number(),
        m.data(),
        m.requested_transport(),
    );
    let _ = (m.requested_address_family(), m.additional_address_family());
    let _ = (m.even_port(), m.reservation_token(), m.dont_fragment());
    let _ = m.password_algorithms().map(Iterator::count);
    let _ = (m.password_algorithm(), m.priority(), m.use_candidate());
    let _ = (m.ice_controlling(), m.ice_controlled(), m.icmp());
    let _ = (m.address_error_code(), m.class(), m.method());
    let u = m.unknown_comprehension_required(attr::known_to_server);
    assert!(u.as_slice().iter().all(|t| *t < 0x8000));
    // Integrity with a fixed key: never panics; "missing" exactly when no
    // integrity attribute was found.
    let key = IntegrityKey::new(FUZZ_KEY);
    let r = m.verify_integrity(&key);
    assert_eq!(r == Err(IntegrityError::Missing), !m.has_integrity());
    let _ = (m.verify_sha1(&key), m.verify_sha256(&key));
}

/// `ChannelData::parse`: never panics; on success the data is inside the
/// buffer, as long as declared, and at most three padding bytes follow.
pub fn probe_channel_data(buf: &[u8]) {
    let Ok(cd) = ChannelData::parse(buf) else {
        return;
    };
    assert!(is_valid_channel(cd.channel));
    assert_eq!(
        usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        cd.data.len()
    );
    assert_eq!(cd.data, &buf[4..4 + cd.data.len()]);
    assert!(buf.len() - 4 - cd.data.len() < 4);
    let mut again = Vec::new();
    ChannelData::encode(cd.channel, cd.data, false, &mut again);
    assert_eq!(again, &buf[..4 + cd.data.len()]);
}

/// `frame_len` over a byte stream, each frame then parsed: frames never
/// claim more bytes than the buffer has, ChannelData frames always parse,
/// and STUN frames never fail the header checks `frame_len` already made.
pub fn probe_stream(stream: &[u8]) {
    let mut rest = stream;
    loop {
        match frame_len(rest) {
            Ok(Some(f)) => {
                assert!(f.len <= rest.len(), "frame longer than the buffer");
                assert!(f.message_len <= f.len);
                assert!(f.len >= 4, "no progress");
                let frame = &rest[..f.message_len];
                match f.kind {
                    FrameKind::ChannelData => {
                        assert!(f.len - f.message_len < 4);
                        let cd = ChannelData::parse(frame).expect("a framed ChannelData parses");
                        assert_eq!(cd.data.len() + 4, f.message_len);
                        probe_channel_data(frame);
                    }
                    FrameKind::Stun => {
                        assert_eq!(f.len, f.message_len);
                        match Message::parse(frame) {
                            Ok(_) => probe_message(frame),
                            Err(e) => assert!(
                                matches!(
                                    e,
                                    ParseError::AttributeOverflow(_)
                                        | ParseError::FingerprintNotLast
                                        | ParseError::BadSecurityAttrLength
                                        | ParseError::TooManyAttributes
                                ),
                                "framed STUN failed a header check: {e:?}"
                            ),
                        }
                    }
                }
                rest = &rest[f.len..];
            }
            Ok(None) => {
                // Not yet a whole frame: a shorter prefix is not one either.
                if !rest.is_empty() {
                    assert_eq!(frame_len(&rest[..rest.len() - 1]), Ok(None));
                }
                break;
            }
            Err(_) => break,
        }
    }
}
