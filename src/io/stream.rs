//! One TCP or TLS client connection: frames in (RFC 8656 §12.5), replies
//! and relayed data out.

use std::cell::RefCell;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use super::deliver::deliver;
use super::relay::ShellIo;
use super::shard::Shard;
use turnpike_proto::core::{DropReason, FiveTuple};
use turnpike_proto::wire::frame_len;

/// Bytes a connection may have queued for the client before relayed data
/// is dropped (a slow reader must not grow the server's memory).
const MAX_PENDING: usize = 1 << 20;

/// The output side of a connection, reachable from relay tasks.
pub(crate) struct ConnOut {
    buf: RefCell<Vec<u8>>,
    notify: Notify,
}

impl ConnOut {
    /// Queue bytes for the client; false (nothing queued) when full.
    pub(super) fn push(&self, data: &[u8]) -> bool {
        let mut b = self.buf.borrow_mut();
        if b.len() + data.len() > MAX_PENDING {
            return false;
        }
        let was_empty = b.is_empty();
        b.extend_from_slice(data);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }
}

/// Serve one connection until the client closes it, sends something that
/// is not STUN framing, or the server shuts down; then its allocation, if
/// any, is deleted (RFC 8656 §3.1: a TCP/TLS allocation lives as long as
/// its connection).
pub(crate) async fn serve<S>(
    shard: Rc<Shard>,
    stream: S,
    ft: FiveTuple,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let out = Rc::new(ConnOut {
        buf: RefCell::new(Vec::with_capacity(1500)),
        notify: Notify::new(),
    });
    shard.conns.borrow_mut().insert(ft, out.clone());
    shard.counters.connections_open(ft.transport).add(1);
    run(&shard, stream, &ft, &out, shutdown).await;
    shard.conns.borrow_mut().remove(&ft);
    shard.counters.connections_open(ft.transport).add(-1);
    let now = crate::clock::now();
    shard
        .core
        .borrow_mut()
        .connection_closed(now, &ft, &mut ShellIo { shard: &shard });
    shard.drain_events();
}

/// Reading is the two-step framing of [`frame_len`]: buffer bytes until a
/// whole frame is there, then hand exactly that frame to the core. A
/// stream out of step cannot be resynchronised, so it is closed (and
/// counted as malformed).
async fn run<S>(
    shard: &Rc<Shard>,
    stream: S,
    ft: &FiveTuple,
    out: &Rc<ConnOut>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut reply = Vec::with_capacity(1500);
    let mut writing: Vec<u8> = Vec::with_capacity(1500);
    loop {
        if inbuf.capacity() - inbuf.len() < 2048 {
            inbuf.reserve(4096);
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut inbuf) => r,
            _ = out.notify.notified() => {
                if !flush(out, &mut writing, &mut wr).await {
                    return;
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut start = 0;
        let mut closing = false;
        // One clock read for all the frames this read brought.
        let now = crate::clock::now();
        loop {
            match frame_len(&inbuf[start..]) {
                Ok(Some(f)) => {
                    let frame = &inbuf[start..start + f.message_len];
                    start += f.len;
                    reply.clear();
                    let mut core = shard.core.borrow_mut();
                    let output =
                        core.handle_client(now, ft, frame, &mut reply, &mut ShellIo { shard });
                    deliver(shard, &mut core, ft, output, &mut reply, 0, None);
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
                    shard.counters.dropped(DropReason::Malformed);
                    closing = true;
                    break;
                }
            }
        }
        inbuf.drain(..start);
        if !flush(out, &mut writing, &mut wr).await || closing {
            return;
        }
    }
}

/// Write out everything queued; false if the connection failed.
async fn flush<W: AsyncWrite + Unpin>(out: &ConnOut, writing: &mut Vec<u8>, wr: &mut W) -> bool {
    loop {
        std::mem::swap(&mut *out.buf.borrow_mut(), writing);
        if writing.is_empty() {
            return true;
        }
        if wr.write_all(writing).await.is_err() {
            return false;
        }
        writing.clear();
    }
}

/// The length of the frame being received, once its header is in.
fn needed(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    Some(
        if turnpike_proto::wire::classify(buf[0]) == Some(turnpike_proto::wire::FrameKind::Stun) {
            20 + n
        } else {
            4 + turnpike_proto::wire::pad4(n)
        },
    )
}
