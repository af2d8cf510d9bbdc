//! The wire codec: STUN messages (RFC 8489), TURN attributes (RFC 8656) and
//! ChannelData frames (RFC 8656 §12).
//!
//! Everything here is pure: no state, no clock, no randomness. Parsing borrows
//! the datagram ([`Message::parse`] allocates nothing on the heap); building
//! appends to a caller-owned buffer ([`MessageBuilder`]), so a reused buffer
//! means no allocation either.
//!
//! ```
//! use turnpike_proto::wire::{Message, MessageBuilder, MessageType, Method, Class, TransactionId, attr};
//! let mut buf = Vec::new();
//! let tid = TransactionId::new([7; 12]);
//! MessageBuilder::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), tid)
//!     .fingerprint();
//! let msg = Message::parse(&buf).unwrap();
//! assert_eq!(msg.method(), Method::BINDING);
//! assert_eq!(msg.check_fingerprint(), Some(true));
//! assert!(msg.get(attr::FINGERPRINT).is_some());
//! ```

pub mod attr;
mod builder;
mod channel_data;
mod framing;
mod integrity;
mod message;

pub use attr::{AttrError, ErrorCode, RawAttr};
pub use builder::{MessageBuilder, data_indication_in_place};
pub use channel_data::{ChannelData, ChannelDataError, is_rfc8656_channel, is_valid_channel};
pub use framing::{Frame, FrameError, FrameKind, MAX_FRAME, classify, classify_bytes, frame_len};
pub use integrity::{IntegrityKey, PasswordAlgorithm, fingerprint_of, long_term_key, userhash};
pub use message::{IntegrityError, MAX_ATTRIBUTES, Message, ParseError, UnknownAttributes};

/// The magic cookie, RFC 8489 §5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the fixed STUN header, RFC 8489 §5.
pub const HEADER_LEN: usize = 20;
/// Length of the ChannelData header, RFC 8656 §12.4.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A STUN method (12 bits), RFC 8489 §5 and §18.2, RFC 8656 §17.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);

    /// A short lower-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Method::BINDING => "binding",
            Method::ALLOCATE => "allocate",
            Method::REFRESH => "refresh",
            Method::SEND => "send",
            Method::DATA => "data",
            Method::CREATE_PERMISSION => "create_permission",
            Method::CHANNEL_BIND => "channel_bind",
            _ => "other",
        }
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "other" => write!(f, "Method({:#05x})", self.0),
            name => f.write_str(name),
        }
    }
}

/// The class of a STUN message, RFC 8489 §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Method and class together: the 14-bit message type of RFC 8489 §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Interleave method and class bits, RFC 8489 §5 figure 3:
    /// `M11..M7 C1 M6..M4 C0 M3..M0`.
    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0fff;
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Inverse of [`MessageType::to_u16`]; the top two bits must already be
    /// known to be zero.
    pub fn from_u16(v: u16) -> Self {
        let method = (v & 0x000f) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0f80);
        let class = match ((v >> 4) & 1) | ((v >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        MessageType {
            method: Method(method),
            class,
        }
    }
}

/// The 96-bit transaction ID, RFC 8489 §5.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    pub const fn new(bytes: [u8; 12]) -> Self {
        TransactionId(bytes)
    }

    /// A fresh random transaction ID (RFC 8489 §5: "uniformly and randomly
    /// chosen from the interval 0 .. 2**96-1"). The RNG is the caller's.
    pub fn random<R: rand::RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 12];
        rng.fill_bytes(&mut b);
        TransactionId(b)
    }

    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl std::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Round `n` up to a multiple of four (attribute and stream padding).
#[inline]
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_bits_match_rfc() {
        // RFC 8489 §5: Binding request 0x0001, success 0x0101, error 0x0111,
        // indication 0x0011. RFC 8656: Allocate request 0x0003, Send
        // indication 0x0016, Data indication 0x0017, ChannelBind 0x0009.
        let cases = [
            (Method::BINDING, Class::Request, 0x0001),
            (Method::BINDING, Class::Success, 0x0101),
            (Method::BINDING, Class::Error, 0x0111),
            (Method::BINDING, Class::Indication, 0x0011),
            (Method::ALLOCATE, Class::Request, 0x0003),
            (Method::ALLOCATE, Class::Error, 0x0113),
            (Method::SEND, Class::Indication, 0x0016),
            (Method::DATA, Class::Indication, 0x0017),
            (Method::CHANNEL_BIND, Class::Success, 0x0109),
            (Method(0xfff), Class::Error, 0x3fff),
            (Method(0xfff), Class::Request, 0x3eef),
        ];
        for (m, c, v) in cases {
            let t = MessageType::new(m, c);
            assert_eq!(t.to_u16(), v, "{m:?} {c:?}");
            assert_eq!(MessageType::from_u16(v), t);
        }
    }

    #[test]
    fn every_type_round_trips() {
        for v in 0..0x4000u16 {
            assert_eq!(MessageType::from_u16(v).to_u16(), v);
        }
    }
}
