//! Building STUN messages into a caller-owned buffer.

use std::net::SocketAddr;

use hmac::Mac;

use super::attr::{self, encode_address};
use super::integrity::{IntegrityKey, fingerprint_of};
use super::{HEADER_LEN, MAGIC_COOKIE, MessageType, TransactionId, pad4};

/// Appends one STUN message to a `Vec<u8>`. The type and transaction ID are
/// given up front, so a message without them cannot be built; the header
/// length is kept right after every attribute, so the integrity and
/// fingerprint attributes can be added at any point and cover exactly what
/// precedes them (RFC 8489 §14.5-§14.7).
///
/// A reused buffer with enough capacity means no heap allocation.
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    pad: u8,
}

impl<'b> MessageBuilder<'b> {
    /// Start a message at the current end of `buf` (anything already there,
    /// such as reserved headroom, is left alone).
    pub fn new(buf: &'b mut Vec<u8>, typ: MessageType, tid: TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&typ.to_u16().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        MessageBuilder { buf, start, pad: 0 }
    }

    /// Start a response to `request`: same method and transaction ID.
    pub fn response(
        buf: &'b mut Vec<u8>,
        request: &super::Message<'_>,
        class: super::Class,
    ) -> Self {
        Self::new(
            buf,
            MessageType::new(request.method(), class),
            request.transaction_id(),
        )
    }

    fn set_len(&mut self, extra: usize) {
        let len = (self.buf.len() - self.start - HEADER_LEN + extra) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn tid(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[self.start + 8..self.start + 20]);
        TransactionId(t)
    }

    /// The message so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Length of the message so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The byte that pads attributes added from now on to a multiple of
    /// four. Zero by default, as RFC 8489 §14 requires of senders; receivers
    /// must ignore padding, so any other value only serves to reproduce
    /// foreign bytes exactly (the RFC 5769 test vectors pad with 0x20).
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.pad = byte;
        self
    }

    /// Any attribute from its raw value; pads with zero bytes (see
    /// [`MessageBuilder::padding_byte`]).
    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.attr_with(typ, value.len(), |dst| dst.copy_from_slice(value))
    }

    /// An attribute whose `len`-byte value `fill` writes in place.
    pub fn attr_with(&mut self, typ: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> &mut Self {
        debug_assert!(len <= usize::from(u16::MAX));
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        fill(&mut self.buf[at..at + len]);
        self.buf.resize(at + pad4(len), self.pad);
        self.set_len(0);
        self
    }

    pub fn u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    pub fn u64(&mut self, typ: u16, v: u64) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    /// MAPPED-ADDRESS or ALTERNATE-SERVER (not XOR'd), RFC 8489 §14.1.
    pub fn address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = encode_address(addr, None, &mut v);
        self.attr(typ, &v[..n])
    }

    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, RFC 8489
    /// §14.2.
    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let tid = self.tid();
        let mut v = [0u8; 20];
        let n = encode_address(addr, Some(&tid), &mut v);
        self.attr(typ, &v[..n])
    }

    /// ERROR-CODE, RFC 8489 §14.8. `code` is 300..=699.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        debug_assert!((300..700).contains(&code));
        let reason = truncate_utf8(reason, 763);
        self.attr_with(attr::ERROR_CODE, 4 + reason.len(), |v| {
            v[0] = 0;
            v[1] = 0;
            v[2] = (code / 100) as u8;
            v[3] = (code % 100) as u8;
            v[4..].copy_from_slice(reason.as_bytes());
        })
    }

    /// UNKNOWN-ATTRIBUTES, RFC 8489 §14.9.
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        self.attr_with(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, |v| {
            for (c, t) in v.chunks_exact_mut(2).zip(types) {
                c.copy_from_slice(&t.to_be_bytes());
            }
        })
    }

    pub fn lifetime(&mut self, secs: u32) -> &mut Self {
        self.u32(attr::LIFETIME, secs)
    }

    /// CHANNEL-NUMBER, RFC 8656 §18.1.
    pub fn channel_number(&mut self, ch: u16) -> &mut Self {
        let b = ch.to_be_bytes();
        self.attr(attr::CHANNEL_NUMBER, &[b[0], b[1], 0, 0])
    }

    /// REQUESTED-TRANSPORT, RFC 8656 §18.11.
    pub fn requested_transport(&mut self, proto: u8) -> &mut Self {
        self.attr(attr::REQUESTED_TRANSPORT, &[proto, 0, 0, 0])
    }

    /// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §18.8.
    pub fn family(&mut self, typ: u16, family: u8) -> &mut Self {
        self.attr(typ, &[family, 0, 0, 0])
    }

    /// EVEN-PORT, RFC 8656 §18.9.
    pub fn even_port(&mut self, reserve: bool) -> &mut Self {
        self.attr(attr::EVEN_PORT, &[if reserve { 0x80 } else { 0 }])
    }

    /// ADDRESS-ERROR-CODE, RFC 8656 §18.13.
    pub fn address_error_code(&mut self, family: u8, code: u16, reason: &str) -> &mut Self {
        let reason = truncate_utf8(reason, 763);
        self.attr_with(attr::ADDRESS_ERROR_CODE, 4 + reason.len(), |v| {
            v[0] = family;
            v[1] = 0;
            v[2] = (code / 100) as u8;
            v[3] = (code % 100) as u8;
            v[4..].copy_from_slice(reason.as_bytes());
        })
    }

    /// PASSWORD-ALGORITHMS, RFC 8489 §14.11 (entries with empty parameters,
    /// as MD5 and SHA-256 have).
    pub fn password_algorithms(&mut self, algs: &[u16]) -> &mut Self {
        self.attr_with(attr::PASSWORD_ALGORITHMS, algs.len() * 4, |v| {
            for (c, a) in v.chunks_exact_mut(4).zip(algs) {
                c[..2].copy_from_slice(&a.to_be_bytes());
                c[2..].copy_from_slice(&[0, 0]);
            }
        })
    }

    /// PASSWORD-ALGORITHM, RFC 8489 §14.12.
    pub fn password_algorithm(&mut self, alg: u16) -> &mut Self {
        let b = alg.to_be_bytes();
        self.attr(attr::PASSWORD_ALGORITHM, &[b[0], b[1], 0, 0])
    }

    /// A text attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&mut self, typ: u16, s: &str) -> &mut Self {
        self.attr(typ, s.as_bytes())
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1), RFC 8489 §14.5.
    pub fn integrity(&mut self, key: &IntegrityKey) -> &mut Self {
        self.set_len(24);
        let mut mac = key.sha1();
        mac.update(&self.buf[self.start..]);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes), RFC 8489 §14.6.
    pub fn integrity_sha256(&mut self, key: &IntegrityKey) -> &mut Self {
        self.set_len(36);
        let mut mac = key.sha256();
        mac.update(&self.buf[self.start..]);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// FINGERPRINT, RFC 8489 §14.7. Must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        self.set_len(8);
        let fp = fingerprint_of(&self.buf[self.start..]);
        self.u32(attr::FINGERPRINT, fp)
    }
}

/// Cut a string to at most `max` bytes on a character boundary (ERROR-CODE
/// reasons are limited to 763 bytes, RFC 8489 §14.8).
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Write a Data indication (RFC 8656 §11.4: XOR-PEER-ADDRESS and DATA)
/// around `len` bytes of data already sitting at `buf[at..at + len]`, so
/// relayed data is never copied. The header and attributes go in front
/// (at most 48 bytes, for an IPv6 peer), the DATA padding after (up to 3
/// bytes). Returns the range of the finished message.
///
/// Panics if `buf` lacks the room; callers reserve it
/// (`core::PEER_HEADROOM`, `core::PEER_TAILROOM`).
pub fn data_indication_in_place(
    buf: &mut [u8],
    at: usize,
    len: usize,
    peer: SocketAddr,
    tid: TransactionId,
) -> std::ops::Range<usize> {
    let mut addr = [0u8; 20];
    let alen = encode_address(peer, Some(&tid), &mut addr);
    let start = at - (HEADER_LEN + 4 + alen + 4);
    let padded = pad4(len);
    let body = 4 + alen + 4 + padded;
    let typ = MessageType::new(super::Method::DATA, super::Class::Indication).to_u16();
    let h = &mut buf[start..at];
    h[0..2].copy_from_slice(&typ.to_be_bytes());
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(&tid.0);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    h[24..24 + alen].copy_from_slice(&addr[..alen]);
    let d = 24 + alen;
    h[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    buf[at + len..at + padded].fill(0);
    start..at + padded
}
