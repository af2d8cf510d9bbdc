//! Borrowed STUN message parsing, RFC 8489 §5 and §14.

use std::net::SocketAddr;

use hmac::Mac;
use subtle::ConstantTimeEq;

use super::attr::{self, AttrError, ErrorCode, PasswordAlgorithmsIter, RawAttr};
use super::integrity::{IntegrityKey, fingerprint_of};
use super::{Class, HEADER_LEN, MAGIC_COOKIE, MessageType, Method, TransactionId, pad4};

/// Why bytes are not a well-formed STUN message. The server drops these and
/// counts them; it never answers (RFC 8489 §6.3: "silently discarded").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than the 20-byte STUN header")]
    TooShort,
    #[error("first two bits are not zero: not STUN")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    #[error("header says {declared} bytes of attributes, datagram has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("attribute at offset {0} runs past the end of the message")]
    AttributeOverflow(usize),
    #[error("attribute after FINGERPRINT")]
    FingerprintNotLast,
    #[error("integrity or fingerprint attribute has the wrong length")]
    BadSecurityAttrLength,
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
}

/// The most attributes a message may carry. No STUN or TURN message needs
/// a tenth of it; more is an attack on whatever scans them (issue 12: a
/// CreatePermission with 2,700 XOR-PEER-ADDRESS), so such a message does
/// not parse, and the server drops it unanswered, counted as malformed.
pub const MAX_ATTRIBUTES: usize = 128;

/// Why MESSAGE-INTEGRITY(-SHA256) did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute")]
    Missing,
    #[error("integrity check failed")]
    Mismatch,
}

/// A parsed STUN message borrowing its datagram. Parsing validates the
/// header and walks the attributes once; typed accessors decode lazily.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    typ: MessageType,
    // Attribute offsets. A message can be 20 + 65532 bytes long, so an
    // attribute can start past 65535: these must not be `u16`.
    mi: Option<u32>,
    mi256: Option<u32>,
    fp: Option<u32>,
}

/// At most this many unknown comprehension-required attributes are
/// reported in a 420 (more are still refused, just not listed).
const MAX_UNKNOWN: usize = 16;

/// The comprehension-required attributes a message carries that the
/// receiver does not understand (RFC 8489 §6.3.1 → 420). Fixed capacity,
/// no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownAttributes {
    types: [u16; MAX_UNKNOWN],
    len: usize,
}

impl UnknownAttributes {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.types[..self.len]
    }

    fn push(&mut self, t: u16) {
        if self.len < MAX_UNKNOWN && !self.as_slice().contains(&t) {
            self.types[self.len] = t;
            self.len += 1;
        }
    }
}

/// Checks the fixed header of RFC 8489 §5 and returns the attribute length
/// it declares: top two bits zero, magic cookie, length a multiple of 4.
pub(crate) fn check_header(buf: &[u8]) -> Result<usize, ParseError> {
    if buf.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    if super::classify(buf[0]) != Some(super::FrameKind::Stun) {
        return Err(ParseError::NotStun);
    }
    if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
        return Err(ParseError::BadCookie);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]);
    if !len.is_multiple_of(4) {
        return Err(ParseError::UnalignedLength(len));
    }
    Ok(usize::from(len))
}

impl<'a> Message<'a> {
    /// Parse a whole STUN message. The slice must be exactly the message
    /// (a UDP datagram, or one frame cut by [`super::frame_len`]).
    ///
    /// Rules enforced (RFC 8489 §5, §6.3, §14): header checks; every
    /// attribute and its padding inside the declared length; FINGERPRINT, if
    /// present, last; MESSAGE-INTEGRITY exactly 20 bytes;
    /// MESSAGE-INTEGRITY-SHA256 16-32 bytes in steps of 4; at most
    /// [`MAX_ATTRIBUTES`] attributes. Attributes after
    /// MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
    /// are ignored (§14.5), as is anything but FINGERPRINT after
    /// MESSAGE-INTEGRITY-SHA256 (§14.6).
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        let declared = check_header(buf)?;
        if declared != buf.len() - HEADER_LEN {
            return Err(ParseError::LengthMismatch {
                declared,
                actual: buf.len() - HEADER_LEN,
            });
        }
        let typ = MessageType::from_u16(u16::from_be_bytes([buf[0], buf[1]]));
        let (mut mi, mut mi256, mut fp) = (None, None, None);
        let mut pos = HEADER_LEN;
        let mut count = 0;
        while pos < buf.len() {
            if fp.is_some() {
                return Err(ParseError::FingerprintNotLast);
            }
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(ParseError::TooManyAttributes);
            }
            if buf.len() - pos < 4 {
                return Err(ParseError::AttributeOverflow(pos));
            }
            let t = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let l = usize::from(u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]));
            if buf.len() - pos - 4 < pad4(l) {
                return Err(ParseError::AttributeOverflow(pos));
            }
            let at = Some(pos as u32);
            match t {
                attr::MESSAGE_INTEGRITY if mi.is_none() && mi256.is_none() => {
                    if l != 20 {
                        return Err(ParseError::BadSecurityAttrLength);
                    }
                    mi = at;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if mi256.is_none() => {
                    if !(16..=32).contains(&l) || l % 4 != 0 {
                        return Err(ParseError::BadSecurityAttrLength);
                    }
                    mi256 = at;
                }
                attr::FINGERPRINT => {
                    if l != 4 {
                        return Err(ParseError::BadSecurityAttrLength);
                    }
                    fp = at;
                }
                _ => {}
            }
            pos += 4 + pad4(l);
        }
        Ok(Message {
            buf,
            typ,
            mi,
            mi256,
            fp,
        })
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn message_type(&self) -> MessageType {
        self.typ
    }

    pub fn method(&self) -> Method {
        self.typ.method
    }

    pub fn class(&self) -> Class {
        self.typ.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[8..20]);
        TransactionId(t)
    }

    /// Attributes in order, leaving out those the RFC says to ignore (after
    /// MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            pos: HEADER_LEN,
            mi: self.mi,
            mi256: self.mi256,
        }
    }

    /// The first occurrence of an attribute (RFC 8489 §14: later duplicates
    /// need not be processed).
    pub fn get(&self, typ: u16) -> Option<RawAttr<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    pub fn has(&self, typ: u16) -> bool {
        self.get(typ).is_some()
    }

    /// Decode the first attribute of a type with `f`.
    pub fn decode<T>(
        &self,
        typ: u16,
        f: impl FnOnce(&RawAttr<'a>) -> Result<T, AttrError>,
    ) -> Result<Option<T>, AttrError> {
        self.get(typ).map(|a| f(&a)).transpose()
    }

    /// Comprehension-required attributes that `known` does not recognise.
    pub fn unknown_comprehension_required(&self, known: impl Fn(u16) -> bool) -> UnknownAttributes {
        let mut u = UnknownAttributes::default();
        for a in self.attributes() {
            if attr::is_comprehension_required(a.typ) && !known(a.typ) {
                u.push(a.typ);
            }
        }
        u
    }

    // --- typed accessors -------------------------------------------------

    pub fn username(&self) -> Result<Option<&'a str>, AttrError> {
        self.decode(attr::USERNAME, |a| a.str())
    }

    pub fn realm(&self) -> Result<Option<&'a str>, AttrError> {
        self.decode(attr::REALM, |a| a.str())
    }

    pub fn nonce(&self) -> Result<Option<&'a str>, AttrError> {
        self.decode(attr::NONCE, |a| a.str())
    }

    pub fn software(&self) -> Result<Option<&'a str>, AttrError> {
        self.decode(attr::SOFTWARE, |a| a.str())
    }

    /// USERHASH, RFC 8489 §14.4: exactly 32 bytes.
    pub fn userhash(&self) -> Result<Option<&'a [u8; 32]>, AttrError> {
        self.decode(attr::USERHASH, |a| {
            a.value.try_into().map_err(|_| AttrError::BadLength {
                typ: a.typ,
                len: a.value.len(),
            })
        })
    }

    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, AttrError> {
        self.decode(attr::MAPPED_ADDRESS, |a| a.plain_address())
    }

    pub fn alternate_server(&self) -> Result<Option<SocketAddr>, AttrError> {
        self.decode(attr::ALTERNATE_SERVER, |a| a.plain_address())
    }

    pub fn xor_mapped_address(&self) -> Result<Option<SocketAddr>, AttrError> {
        let tid = self.transaction_id();
        self.decode(attr::XOR_MAPPED_ADDRESS, |a| a.xor_address(&tid))
    }

    pub fn xor_relayed_address(&self) -> Result<Option<SocketAddr>, AttrError> {
        let tid = self.transaction_id();
        self.decode(attr::XOR_RELAYED_ADDRESS, |a| a.xor_address(&tid))
    }

    /// The first XOR-PEER-ADDRESS (ChannelBind, Send, Data).
    pub fn xor_peer_address(&self) -> Result<Option<SocketAddr>, AttrError> {
        let tid = self.transaction_id();
        self.decode(attr::XOR_PEER_ADDRESS, |a| a.xor_address(&tid))
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several, RFC 8656
    /// §9.1).
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, AttrError>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS)
            .map(move |a| a.xor_address(&tid))
    }

    pub fn error_code(&self) -> Result<Option<ErrorCode<'a>>, AttrError> {
        self.decode(attr::ERROR_CODE, |a| a.error_code())
    }

    pub fn lifetime(&self) -> Result<Option<u32>, AttrError> {
        self.decode(attr::LIFETIME, |a| a.u32())
    }

    pub fn channel_number(&self) -> Result<Option<u16>, AttrError> {
        self.decode(attr::CHANNEL_NUMBER, |a| a.channel_number())
    }

    pub fn data(&self) -> Option<&'a [u8]> {
        self.get(attr::DATA).map(|a| a.value)
    }

    pub fn requested_transport(&self) -> Result<Option<u8>, AttrError> {
        self.decode(attr::REQUESTED_TRANSPORT, |a| a.requested_transport())
    }

    pub fn requested_address_family(&self) -> Result<Option<u8>, AttrError> {
        self.decode(attr::REQUESTED_ADDRESS_FAMILY, |a| a.family())
    }

    pub fn additional_address_family(&self) -> Result<Option<u8>, AttrError> {
        self.decode(attr::ADDITIONAL_ADDRESS_FAMILY, |a| a.family())
    }

    /// EVEN-PORT: `Some(reserve_next)` when present.
    pub fn even_port(&self) -> Result<Option<bool>, AttrError> {
        self.decode(attr::EVEN_PORT, |a| a.even_port_reserve())
    }

    pub fn reservation_token(&self) -> Result<Option<[u8; 8]>, AttrError> {
        self.decode(attr::RESERVATION_TOKEN, |a| a.reservation_token())
    }

    pub fn dont_fragment(&self) -> bool {
        self.has(attr::DONT_FRAGMENT)
    }

    pub fn password_algorithms(&self) -> Option<PasswordAlgorithmsIter<'a>> {
        self.get(attr::PASSWORD_ALGORITHMS)
            .map(|a| a.password_algorithms())
    }

    pub fn password_algorithm(&self) -> Result<Option<(u16, &'a [u8])>, AttrError> {
        self.decode(attr::PASSWORD_ALGORITHM, |a| a.password_algorithm())
    }

    pub fn priority(&self) -> Result<Option<u32>, AttrError> {
        self.decode(attr::PRIORITY, |a| a.u32())
    }

    pub fn use_candidate(&self) -> bool {
        self.has(attr::USE_CANDIDATE)
    }

    pub fn ice_controlling(&self) -> Result<Option<u64>, AttrError> {
        self.decode(attr::ICE_CONTROLLING, |a| a.u64())
    }

    pub fn ice_controlled(&self) -> Result<Option<u64>, AttrError> {
        self.decode(attr::ICE_CONTROLLED, |a| a.u64())
    }

    pub fn icmp(&self) -> Result<Option<(u8, u8, u32)>, AttrError> {
        self.decode(attr::ICMP, |a| a.icmp())
    }

    pub fn address_error_code(&self) -> Result<Option<(u8, ErrorCode<'a>)>, AttrError> {
        self.decode(attr::ADDRESS_ERROR_CODE, |a| a.address_error_code())
    }

    // --- integrity and fingerprint ----------------------------------------

    pub fn has_integrity(&self) -> bool {
        self.mi.is_some() || self.mi256.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.mi256.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fp.is_some()
    }

    /// Verify MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY
    /// (RFC 8489 §9.2.4: use the strongest the message carries). Returns
    /// whether SHA-256 was used. The comparison is constant-time.
    pub fn verify_integrity(&self, key: &IntegrityKey) -> Result<bool, IntegrityError> {
        if self.mi256.is_some() {
            self.verify_sha256(key).map(|_| true)
        } else {
            self.verify_sha1(key).map(|_| false)
        }
    }

    /// MESSAGE-INTEGRITY, RFC 8489 §14.5: HMAC-SHA1 over the message up to
    /// the attribute, with the header length counting up to and including
    /// it.
    pub fn verify_sha1(&self, key: &IntegrityKey) -> Result<(), IntegrityError> {
        let off = self.mi.ok_or(IntegrityError::Missing)? as usize;
        let mut mac = key.sha1();
        self.feed(&mut mac, off, 24);
        let tag = mac.finalize().into_bytes();
        let got = &self.buf[off + 4..off + 24];
        if bool::from(tag.as_slice().ct_eq(got)) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// MESSAGE-INTEGRITY-SHA256, RFC 8489 §14.6: HMAC-SHA256, truncated to
    /// the attribute's length.
    pub fn verify_sha256(&self, key: &IntegrityKey) -> Result<(), IntegrityError> {
        let off = self.mi256.ok_or(IntegrityError::Missing)? as usize;
        let len = usize::from(u16::from_be_bytes([self.buf[off + 2], self.buf[off + 3]]));
        let mut mac = key.sha256();
        self.feed(&mut mac, off, 4 + len);
        let tag = mac.finalize().into_bytes();
        let got = &self.buf[off + 4..off + 4 + len];
        if bool::from(tag[..len].ct_eq(got)) {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }

    /// Feed the header (length patched to end at `off + attr_len`) and the
    /// attributes before `off` into a MAC, without copying the message.
    fn feed<M: Mac>(&self, mac: &mut M, off: usize, attr_len: usize) {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let patched = (off - HEADER_LEN + attr_len) as u16;
        header[2..4].copy_from_slice(&patched.to_be_bytes());
        mac.update(&header);
        mac.update(&self.buf[HEADER_LEN..off]);
    }

    /// FINGERPRINT, RFC 8489 §14.7: `None` if absent, else whether it
    /// matches. FINGERPRINT is last, so the header length already counts it.
    pub fn check_fingerprint(&self) -> Option<bool> {
        let off = self.fp? as usize;
        let got = u32::from_be_bytes(self.buf[off + 4..off + 8].try_into().ok()?);
        Some(fingerprint_of(&self.buf[..off]) == got)
    }
}

/// Iterator over a message's attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    pos: usize,
    mi: Option<u32>,
    mi256: Option<u32>,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttr<'a>;

    fn next(&mut self) -> Option<RawAttr<'a>> {
        // Parse already checked every header and length, so indexing cannot
        // fail here.
        while self.pos + 4 <= self.buf.len() {
            let pos = self.pos;
            let b = self.buf;
            let t = u16::from_be_bytes([b[pos], b[pos + 1]]);
            let l = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
            self.pos = pos + 4 + pad4(l);
            let at = pos as u32;
            let ignored = match (self.mi, self.mi256) {
                (_, Some(m)) if at > m => t != attr::FINGERPRINT,
                (Some(m), _) if at > m => {
                    t != attr::FINGERPRINT && t != attr::MESSAGE_INTEGRITY_SHA256
                }
                _ => false,
            };
            if !ignored {
                return Some(RawAttr {
                    typ: t,
                    value: &b[pos + 4..pos + 4 + l],
                    offset: pos,
                });
            }
        }
        None
    }
}
