//! Attribute types and typed decoding of attribute values.
//!
//! Registry: RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16 (ICE), RFC 8016
//! (MOBILITY-TICKET is not handled).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MAGIC_COOKIE, TransactionId};

// Comprehension-required (0x0000-0x7FFF).
pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
pub const USERHASH: u16 = 0x001E;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const PRIORITY: u16 = 0x0024;
pub const USE_CANDIDATE: u16 = 0x0025;

// Comprehension-optional (0x8000-0xFFFF).
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
pub const ICMP: u16 = 0x8004;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const FINGERPRINT: u16 = 0x8028;
pub const ICE_CONTROLLED: u16 = 0x8029;
pub const ICE_CONTROLLING: u16 = 0x802A;

/// RFC 8489 §14: attributes 0x0000-0x7FFF must be understood.
#[inline]
pub const fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// The comprehension-required attributes a STUN/TURN server understands.
/// Anything else in that range gets 420 (RFC 8489 §6.3.1).
pub fn known_to_server(typ: u16) -> bool {
    matches!(
        typ,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | PRIORITY
            | USE_CANDIDATE
    )
}

/// Address family codes used by (XOR-)MAPPED-ADDRESS and
/// REQUESTED-ADDRESS-FAMILY, RFC 8489 §14.1 and RFC 8656 §18.8.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// IANA protocol number for UDP in REQUESTED-TRANSPORT, RFC 8656 §18.11.
pub const TRANSPORT_UDP: u8 = 17;
/// IANA protocol number for TCP (RFC 6062) in REQUESTED-TRANSPORT.
pub const TRANSPORT_TCP: u8 = 6;

/// Why an attribute value could not be decoded. A server answers these with
/// 400 Bad Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("attribute {typ:#06x}: value has the wrong length ({len})")]
    BadLength { typ: u16, len: usize },
    #[error("attribute {typ:#06x}: unknown address family {family:#04x}")]
    BadFamily { typ: u16, family: u8 },
    #[error("attribute {typ:#06x}: not valid UTF-8")]
    NotUtf8 { typ: u16 },
    #[error("attribute {typ:#06x}: value out of range")]
    OutOfRange { typ: u16 },
}

/// One attribute as it sits in the message: type and borrowed value (without
/// padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttr<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

impl<'a> RawAttr<'a> {
    fn exact<const N: usize>(&self) -> Result<&'a [u8; N], AttrError> {
        self.value.try_into().map_err(|_| AttrError::BadLength {
            typ: self.typ,
            len: self.value.len(),
        })
    }

    /// A 32-bit value (LIFETIME, PRIORITY, FINGERPRINT).
    pub fn u32(&self) -> Result<u32, AttrError> {
        Ok(u32::from_be_bytes(*self.exact::<4>()?))
    }

    /// A 64-bit value (ICE-CONTROLLING, ICE-CONTROLLED tie-breakers).
    pub fn u64(&self) -> Result<u64, AttrError> {
        Ok(u64::from_be_bytes(*self.exact::<8>()?))
    }

    /// A UTF-8 string value (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn str(&self) -> Result<&'a str, AttrError> {
        std::str::from_utf8(self.value).map_err(|_| AttrError::NotUtf8 { typ: self.typ })
    }

    /// MAPPED-ADDRESS / ALTERNATE-SERVER (not XOR'd), RFC 8489 §14.1.
    pub fn plain_address(&self) -> Result<SocketAddr, AttrError> {
        decode_address(self.typ, self.value, None)
    }

    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, RFC 8489
    /// §14.2: port XOR the cookie's top half, IPv4 XOR the cookie, IPv6 XOR
    /// cookie and transaction ID.
    pub fn xor_address(&self, tid: &TransactionId) -> Result<SocketAddr, AttrError> {
        decode_address(self.typ, self.value, Some(tid))
    }

    /// ERROR-CODE, RFC 8489 §14.8.
    pub fn error_code(&self) -> Result<ErrorCode<'a>, AttrError> {
        let v = self.value;
        if v.len() < 4 {
            return Err(AttrError::BadLength {
                typ: self.typ,
                len: v.len(),
            });
        }
        let class = u16::from(v[2] & 0x07);
        let number = u16::from(v[3]);
        if !(3..=6).contains(&class) || number > 99 {
            return Err(AttrError::OutOfRange { typ: self.typ });
        }
        let reason =
            std::str::from_utf8(&v[4..]).map_err(|_| AttrError::NotUtf8 { typ: self.typ })?;
        Ok(ErrorCode {
            code: class * 100 + number,
            reason,
        })
    }

    /// UNKNOWN-ATTRIBUTES, RFC 8489 §14.9: a list of 16-bit types.
    pub fn attribute_list(&self) -> Result<impl Iterator<Item = u16> + 'a, AttrError> {
        if !self.value.len().is_multiple_of(2) {
            return Err(AttrError::BadLength {
                typ: self.typ,
                len: self.value.len(),
            });
        }
        Ok(self
            .value
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]])))
    }

    /// CHANNEL-NUMBER, RFC 8656 §18.1: number then 16 bits RFFU.
    pub fn channel_number(&self) -> Result<u16, AttrError> {
        let v = self.exact::<4>()?;
        Ok(u16::from_be_bytes([v[0], v[1]]))
    }

    /// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §18.8
    /// and §18.12: family byte then 24 bits RFFU.
    pub fn family(&self) -> Result<u8, AttrError> {
        let v = self.exact::<4>()?;
        match v[0] {
            FAMILY_IPV4 | FAMILY_IPV6 => Ok(v[0]),
            f => Err(AttrError::BadFamily {
                typ: self.typ,
                family: f,
            }),
        }
    }

    /// REQUESTED-TRANSPORT, RFC 8656 §18.11: protocol byte then 24 bits RFFU.
    pub fn requested_transport(&self) -> Result<u8, AttrError> {
        Ok(self.exact::<4>()?[0])
    }

    /// EVEN-PORT, RFC 8656 §18.9: one byte, top bit R (reserve next port).
    pub fn even_port_reserve(&self) -> Result<bool, AttrError> {
        Ok(self.exact::<1>()?[0] & 0x80 != 0)
    }

    /// RESERVATION-TOKEN, RFC 8656 §18.10: eight opaque bytes.
    pub fn reservation_token(&self) -> Result<[u8; 8], AttrError> {
        Ok(*self.exact::<8>()?)
    }

    /// ADDRESS-ERROR-CODE, RFC 8656 §18.13: family, RFFU, class, number,
    /// reason.
    pub fn address_error_code(&self) -> Result<(u8, ErrorCode<'a>), AttrError> {
        let v = self.value;
        if v.len() < 4 {
            return Err(AttrError::BadLength {
                typ: self.typ,
                len: v.len(),
            });
        }
        let family = v[0];
        let inner = RawAttr {
            typ: self.typ,
            value: v,
            offset: self.offset,
        };
        // Same layout as ERROR-CODE after the first byte.
        let ec = inner.error_code()?;
        Ok((family, ec))
    }

    /// ICMP, RFC 8656 §18.14: RFFU(2), type(1), code(1), error data(4).
    pub fn icmp(&self) -> Result<(u8, u8, u32), AttrError> {
        let v = self.exact::<8>()?;
        Ok((v[2], v[3], u32::from_be_bytes([v[4], v[5], v[6], v[7]])))
    }

    /// PASSWORD-ALGORITHMS, RFC 8489 §14.11: (algorithm, params length,
    /// params, padding) repeated. Yields `(algorithm, params)`.
    pub fn password_algorithms(&self) -> PasswordAlgorithmsIter<'a> {
        PasswordAlgorithmsIter {
            rest: self.value,
            bad: false,
        }
    }

    /// PASSWORD-ALGORITHM, RFC 8489 §14.12: one (algorithm, params) entry.
    pub fn password_algorithm(&self) -> Result<(u16, &'a [u8]), AttrError> {
        let mut it = self.password_algorithms();
        match (it.next(), it.rest.is_empty(), it.bad) {
            (Some(v), true, false) => Ok(v),
            _ => Err(AttrError::BadLength {
                typ: self.typ,
                len: self.value.len(),
            }),
        }
    }
}

/// Iterator over PASSWORD-ALGORITHMS entries; stops at the first malformed
/// entry (and then [`PasswordAlgorithmsIter::malformed`] is true).
#[derive(Clone, Debug)]
pub struct PasswordAlgorithmsIter<'a> {
    rest: &'a [u8],
    bad: bool,
}

impl PasswordAlgorithmsIter<'_> {
    pub fn malformed(&self) -> bool {
        self.bad
    }
}

impl<'a> Iterator for PasswordAlgorithmsIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.bad {
            return None;
        }
        if self.rest.len() < 4 {
            self.bad = true;
            return None;
        }
        let alg = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        let len = usize::from(u16::from_be_bytes([self.rest[2], self.rest[3]]));
        let padded = super::pad4(len);
        if self.rest.len() < 4 + len {
            self.bad = true;
            return None;
        }
        let params = &self.rest[4..4 + len];
        self.rest = self.rest.get(4 + padded..).unwrap_or(&[]);
        Some((alg, params))
    }
}

/// A decoded ERROR-CODE: numeric code (300-699) and reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    pub code: u16,
    pub reason: &'a str,
}

fn decode_address(
    typ: u16,
    v: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, AttrError> {
    if v.len() < 4 {
        return Err(AttrError::BadLength { typ, len: v.len() });
    }
    let family = v[1];
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match family {
        FAMILY_IPV4 => {
            let b: [u8; 4] = v[4..]
                .try_into()
                .map_err(|_| AttrError::BadLength { typ, len: v.len() })?;
            let mut n = u32::from_be_bytes(b);
            if xor.is_some() {
                n ^= MAGIC_COOKIE;
            }
            IpAddr::V4(Ipv4Addr::from(n))
        }
        FAMILY_IPV6 => {
            let mut b: [u8; 16] = v[4..]
                .try_into()
                .map_err(|_| AttrError::BadLength { typ, len: v.len() })?;
            if let Some(tid) = xor {
                let mask = xor_mask(tid);
                for (x, m) in b.iter_mut().zip(mask) {
                    *x ^= m;
                }
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        f => return Err(AttrError::BadFamily { typ, family: f }),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The 16-byte mask for XOR'd IPv6 addresses: cookie then transaction ID.
pub(crate) fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[4..].copy_from_slice(&tid.0);
    m
}

/// Encode an address value into `out` (8 or 20 bytes), XOR'd if `tid` is
/// given. Returns the number of bytes written.
pub(crate) fn encode_address(
    addr: SocketAddr,
    xor: Option<&TransactionId>,
    out: &mut [u8; 20],
) -> usize {
    let mut port = addr.port();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_IPV4;
            let mut n = u32::from(ip);
            if xor.is_some() {
                n ^= MAGIC_COOKIE;
            }
            out[4..8].copy_from_slice(&n.to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_IPV6;
            let mut b = ip.octets();
            if let Some(tid) = xor {
                for (x, m) in b.iter_mut().zip(xor_mask(tid)) {
                    *x ^= m;
                }
            }
            out[4..20].copy_from_slice(&b);
            20
        }
    }
}
