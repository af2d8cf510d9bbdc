//! ChannelData messages, RFC 8656 §12.4.

use super::{CHANNEL_DATA_HEADER_LEN, pad4};

/// Channel numbers a ChannelData message can carry: 0x4000 through
/// 0x7FFF, the range of RFC 5766 §11. RFC 8656 §12 narrowed what clients
/// should pick to 0x4000-0x4FFF (see [`is_rfc8656_channel`]), but deployed
/// clients still use the old range: libwebrtc picks from 0x4000-0x7FFF and
/// coturn's own test client was seen binding 0x541d. A server that refused
/// them would break those calls, so the codec accepts the whole range and
/// the server narrows it only when configured to.
#[inline]
pub const fn is_valid_channel(ch: u16) -> bool {
    ch >= 0x4000 && ch <= 0x7FFF
}

/// The channel range of RFC 8656 §12: 0x4000 through 0x4FFF.
#[inline]
pub const fn is_rfc8656_channel(ch: u16) -> bool {
    ch >= 0x4000 && ch <= 0x4FFF
}

/// Why bytes are not a usable ChannelData message. The server drops these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than the 4-byte ChannelData header")]
    TooShort,
    #[error("channel number {0:#06x} outside 0x4000-0x7FFF")]
    BadChannel(u16),
    #[error("length field {declared} does not fit the {actual} bytes received")]
    BadLength { declared: usize, actual: usize },
}

/// A borrowed ChannelData message: channel number and application data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parse a ChannelData message. RFC 8656 §12.4: the length counts the
    /// data only; padding to four bytes is mandatory over TCP/TLS and
    /// optional over UDP, so up to three trailing bytes are accepted and
    /// ignored. A length past the end, or more trailing bytes than padding,
    /// is refused.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        if buf.len() < CHANNEL_DATA_HEADER_LEN {
            return Err(ChannelDataError::TooShort);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !is_valid_channel(channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let actual = buf.len() - CHANNEL_DATA_HEADER_LEN;
        if len > actual || actual > pad4(len) {
            return Err(ChannelDataError::BadLength {
                declared: len,
                actual,
            });
        }
        Ok(ChannelData {
            channel,
            data: &buf[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len],
        })
    }

    /// The 4-byte header for `len` bytes of data on `channel`.
    #[inline]
    pub fn header(channel: u16, len: usize) -> [u8; 4] {
        let c = channel.to_be_bytes();
        let l = (len as u16).to_be_bytes();
        [c[0], c[1], l[0], l[1]]
    }

    /// Append a whole ChannelData message to `out`, padded to four bytes
    /// when `pad` (always for TCP/TLS).
    pub fn encode(channel: u16, data: &[u8], pad: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::header(channel, data.len()));
        out.extend_from_slice(data);
        if pad {
            out.resize(out.len() + pad4(data.len()) - data.len(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_padded_and_unpadded() {
        let mut b = Vec::new();
        ChannelData::encode(0x4001, b"abcde", true, &mut b);
        assert_eq!(b.len(), 12);
        assert_eq!(
            ChannelData::parse(&b).unwrap(),
            ChannelData {
                channel: 0x4001,
                data: b"abcde"
            }
        );
        assert_eq!(ChannelData::parse(&b[..9]).unwrap().data, b"abcde");
        assert!(matches!(
            ChannelData::parse(&b[..8]),
            Err(ChannelDataError::BadLength { .. })
        ));
        b.push(0);
        assert!(ChannelData::parse(&b).is_err(), "more than padding");
    }

    #[test]
    fn channel_range() {
        assert!(!is_valid_channel(0x3fff));
        assert!(is_valid_channel(0x4000));
        assert!(is_valid_channel(0x4fff));
        assert!(is_valid_channel(0x5000));
        assert!(is_valid_channel(0x7fff));
        assert!(!is_valid_channel(0x8000));
        assert!(is_rfc8656_channel(0x4fff));
        assert!(!is_rfc8656_channel(0x5000));
        assert_eq!(
            ChannelData::parse(&[0x3f, 0xff, 0, 0]),
            Err(ChannelDataError::BadChannel(0x3fff))
        );
    }
}
