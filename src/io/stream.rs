//! One TCP or TLS client connection: frames in (RFC 8656 §12.5), replies
//! out.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::core::{ClientOutput, DropReason, FiveTuple, Server};
use crate::wire::{FrameKind, frame_len};

/// Serve one connection until the client closes it, sends something that
/// is not STUN framing, or the server shuts down.
///
/// Reading is the two-step framing of [`frame_len`]: buffer bytes until a
/// whole frame is there, then hand exactly that frame to the core. A
/// stream out of step cannot be resynchronised, so it is closed (and
/// counted as malformed).
pub(crate) async fn serve<S>(
    stream: S,
    ft: FiveTuple,
    core: Rc<RefCell<Server>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(1500);
    let mut pending: Vec<u8> = Vec::with_capacity(1500);
    loop {
        if inbuf.capacity() - inbuf.len() < 2048 {
            inbuf.reserve(4096);
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut inbuf) => r,
            _ = shutdown.changed() => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut start = 0;
        loop {
            match frame_len(&inbuf[start..]) {
                Ok(Some(f)) => {
                    let frame = &inbuf[start..start + f.message_len];
                    start += f.len;
                    if f.kind == FrameKind::ChannelData {
                        // No allocations yet to carry it (TURN relay).
                        core.borrow().counters().dropped(DropReason::Unexpected);
                        continue;
                    }
                    out.clear();
                    let r = core
                        .borrow_mut()
                        .handle_client(Instant::now(), &ft, frame, &mut out);
                    if r == ClientOutput::Reply {
                        pending.extend_from_slice(&out);
                    }
                }
                Ok(None) => {
                    // Make room for the rest of a large frame in one go.
                    if let Some(need) = needed(&inbuf[start..]) {
                        inbuf.reserve(need.saturating_sub(inbuf.len() - start));
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(client = %ft.client, error = %e, "closing stream out of step");
                    core.borrow().counters().dropped(DropReason::Malformed);
                    let _ = wr.write_all(&pending).await;
                    return;
                }
            }
        }
        inbuf.drain(..start);
        if !pending.is_empty() {
            if wr.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
    }
}

/// The length of the frame being received, once its header is in.
fn needed(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    Some(if buf[0] >> 6 == 0 {
        20 + n
    } else {
        4 + crate::wire::pad4(n)
    })
}
