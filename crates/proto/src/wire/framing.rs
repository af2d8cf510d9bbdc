//! Stream framing for STUN over TCP/TLS, RFC 8489 §6.2.2 and RFC 8656 §12.5.
//!
//! On a stream, STUN messages and ChannelData frames follow each other with
//! no other delimiter. The first two bits tell them apart (00 STUN, 01
//! ChannelData); the header gives the length. Reading is two steps, as in
//! mini-redis: [`frame_len`] answers "is a whole frame here, and how long
//! is it?", then the caller parses exactly that slice.

use super::{CHANNEL_DATA_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE, pad4};

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Stun,
    ChannelData,
}

/// The one classifier of the first two bits (RFC 8656 §12, RFC 7983):
/// `00` is STUN, `01` is ChannelData (channel numbers 0x4000-0x7FFF),
/// anything else is neither. Every demultiplexing decision in turnpike
/// (server, stream framing, ICE agent, TURN client, load generator) asks
/// this function.
#[inline]
pub const fn classify(first: u8) -> Option<FrameKind> {
    match first >> 6 {
        0b00 => Some(FrameKind::Stun),
        0b01 => Some(FrameKind::ChannelData),
        _ => None,
    }
}

/// [`classify`] of the first byte of `bytes` (`None` when empty too).
#[inline]
pub fn classify_bytes(bytes: &[u8]) -> Option<FrameKind> {
    classify(*bytes.first()?)
}

/// A complete frame at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// Bytes the frame occupies in the stream, padding included.
    pub len: usize,
    /// Bytes to hand to the parser: the STUN message, or the ChannelData
    /// header and data without padding.
    pub message_len: usize,
}

/// The stream is not STUN/ChannelData, or is out of step. There is no way
/// to resynchronise a byte stream, so the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("first bits {0:#04x} are neither STUN (00) nor ChannelData (01)")]
    UnknownFraming(u8),
    #[error("STUN frame without the magic cookie")]
    BadCookie,
    #[error("STUN length {0} is not a multiple of 4")]
    UnalignedLength(u16),
}

/// Step one of stream reading: `Ok(Some(frame))` when a whole frame is at
/// the front of `buf`, `Ok(None)` when more bytes are needed, `Err` when the
/// stream cannot be STUN. Checks whatever the bytes so far allow (first
/// bits, then length alignment and channel range, then the cookie) so that
/// garbage is refused before the peer can make us buffer a full frame.
pub fn frame_len(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(kind) = classify(first) else {
        return Err(FrameError::UnknownFraming(first));
    };
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u16::from_be_bytes([buf[2], buf[3]]);
    let (len, message_len) = match kind {
        FrameKind::Stun => {
            if !n.is_multiple_of(4) {
                return Err(FrameError::UnalignedLength(n));
            }
            if buf.len() >= 8
                && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
            {
                return Err(FrameError::BadCookie);
            }
            let total = HEADER_LEN + usize::from(n);
            (total, total)
        }
        FrameKind::ChannelData => {
            // First bits 01 means 0x4000-0x7FFF: every such number is a
            // valid channel (see `is_valid_channel`).
            (
                CHANNEL_DATA_HEADER_LEN + pad4(usize::from(n)),
                CHANNEL_DATA_HEADER_LEN + usize::from(n),
            )
        }
    };
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        kind,
        len,
        message_len,
    }))
}

/// The largest frame a stream can carry: a STUN message with a 65532-byte
/// body (the length field's largest multiple of four).
pub const MAX_FRAME: usize = HEADER_LEN + 65532;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[0; 12]);
        stun.extend_from_slice(&[0x80, 0x22, 0, 0]);
        for i in 0..stun.len() {
            assert_eq!(frame_len(&stun[..i]), Ok(None), "prefix {i}");
        }
        let f = frame_len(&stun).unwrap().unwrap();
        assert_eq!((f.kind, f.len, f.message_len), (FrameKind::Stun, 24, 24));
        let cd = [0x40, 0x00, 0x00, 0x01, 0xaa, 0, 0, 0, 0xff];
        let f = frame_len(&cd).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.len, f.message_len),
            (FrameKind::ChannelData, 8, 5)
        );
    }

    #[test]
    fn garbage_refused_early() {
        assert_eq!(frame_len(&[0x80]), Err(FrameError::UnknownFraming(0x80)));
        assert_eq!(
            frame_len(&[0, 1, 0, 3]),
            Err(FrameError::UnalignedLength(3))
        );
        assert_eq!(
            frame_len(&[0, 1, 0, 4, 1, 2, 3, 4]),
            Err(FrameError::BadCookie)
        );
        assert_eq!(
            frame_len(&[0x7f, 0xff, 0, 0]).unwrap().unwrap().kind,
            FrameKind::ChannelData
        );
    }
}
