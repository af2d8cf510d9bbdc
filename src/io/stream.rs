//! One TCP or TLS client connection: frames in (RFC 8656 §12.5), replies
//! and relayed data out, under the deadlines of `[limits]`.
//!
//! Memory per connection is bounded: the read buffer holds at most one
//! whole frame plus one read (it grows to a large frame's size only while
//! that frame arrives, then shrinks back), and the output queue at most
//! [`MAX_PENDING`] bytes (beyond, relayed data is dropped and counted).
//!
//! Deadlines (each closes the connection and is counted in
//! `turnpike_connection_timeouts_total{kind}`):
//! - `first_request_timeout` from accept to the first whole frame;
//! - `idle_timeout` between frames while the client holds no allocation;
//! - `frame_timeout` from a frame's first bytes to its last;
//! - `write_timeout` for a write that makes no progress (a client that
//!   stopped reading).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use super::deliver::deliver;
use super::gate::{ConnLimits, ConnTimeout};
use super::relay::ShellIo;
use super::shard::Shard;
use turnpike_proto::core::{DropReason, FiveTuple};
use turnpike_proto::wire::frame_len;

/// Bytes a connection may have queued for the client before relayed data
/// is dropped (a slow reader must not grow the server's memory): four
/// frames of the largest size.
const MAX_PENDING: usize = 256 * 1024;

/// What the read buffer holds between frames, and reads at least.
const READ_CHUNK: usize = 4096;

/// What the read buffer starts with. A connection that sends nothing (a
/// connection flood holds thousands) costs this rather than a whole
/// [`READ_CHUNK`], and so do its other buffers (empty until used): less
/// heap for an attack to spread, and less for the allocator to keep
/// after it. The first frame grows it.
const FIRST_READ: usize = 256;

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

/// An admitted connection: its five-tuple, the limits it is held to, when
/// it was accepted, and its slot under the caps (given back when this is
/// dropped, at close).
pub(crate) struct Conn {
    pub ft: FiveTuple,
    pub limits: ConnLimits,
    pub opened: Instant,
    pub _slot: crate::conn_table::Slot,
}

/// Serve one connection until the client closes it, sends something that
/// is not STUN framing, misses a deadline, or the server shuts down; then
/// its allocation, if any, is deleted (RFC 8656 §3.1: a TCP/TLS allocation
/// lives as long as its connection).
pub(crate) async fn serve<S>(
    shard: Rc<Shard>,
    stream: S,
    conn: Conn,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ft = conn.ft;
    let out = Rc::new(ConnOut {
        buf: RefCell::new(Vec::new()),
        notify: Notify::new(),
    });
    shard.conns.borrow_mut().insert(ft, out.clone());
    shard.counters.connections_open(ft.transport).add(1);
    let (mut rd, mut wr) = tokio::io::split(stream);
    if let Err(kind) = run(&shard, &mut rd, &mut wr, &conn, &out, shutdown).await {
        // Counted before the close, so whoever sees the close sees it
        // counted.
        shard.gate.stats.timed_out(kind);
        tracing::debug!(client = %ft.client, kind = kind.name(), "connection closed by its deadline");
    }
    drop((rd, wr));
    shard.conns.borrow_mut().remove(&ft);
    shard.counters.connections_open(ft.transport).add(-1);
    let now = crate::clock::now();
    shard
        .core
        .borrow_mut()
        .connection_closed(now, &ft, &mut ShellIo { shard: &shard });
    shard.drain_events();
    drop(conn);
}

/// The read-side deadlines of one connection.
#[derive(Debug)]
struct Deadlines {
    limits: ConnLimits,
    opened: Instant,
    /// When the last whole frame arrived (None: none yet).
    last_frame: Option<Instant>,
    /// When the first bytes of the frame still incomplete arrived.
    partial_since: Option<Instant>,
}

impl Deadlines {
    fn new(limits: ConnLimits, opened: Instant) -> Self {
        Deadlines {
            limits,
            opened,
            last_frame: None,
            partial_since: None,
        }
    }

    /// The next deadline and what missing it means.
    fn next(&self) -> (Instant, ConnTimeout) {
        let between = match self.last_frame {
            None => (
                self.opened + self.limits.first_request,
                ConnTimeout::FirstRequest,
            ),
            Some(t) => (t + self.limits.idle, ConnTimeout::Idle),
        };
        match self.partial_since {
            Some(t) if t + self.limits.frame < between.0 => {
                (t + self.limits.frame, ConnTimeout::Frame)
            }
            _ => between,
        }
    }

    /// Whole frames arrived at `now`, leaving `partial` bytes of the next.
    fn read(&mut self, now: Instant, frames: bool, partial: bool) {
        if frames {
            self.last_frame = Some(now);
            self.partial_since = None;
        }
        if !partial {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    /// The client holds an allocation at an idle deadline: its connection
    /// lives as long as the allocation, so look again an idle time later.
    fn allocated(&mut self, now: Instant) {
        self.last_frame = Some(now);
    }
}

/// Reading is the two-step framing of [`frame_len`]: buffer bytes until a
/// whole frame is there, then hand exactly that frame to the core. A
/// stream out of step cannot be resynchronised, so it is closed (and
/// counted as malformed). A missed deadline ends it with its kind.
async fn run<R, W>(
    shard: &Rc<Shard>,
    rd: &mut R,
    wr: &mut W,
    conn: &Conn,
    out: &Rc<ConnOut>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnTimeout>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ft = &conn.ft;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut reply = Vec::new();
    let mut writing: Vec<u8> = Vec::new();
    let mut deadlines = Deadlines::new(conn.limits, conn.opened);
    let write_timeout = conn.limits.write;
    // One timer for the connection's life, re-armed only when the next
    // deadline comes earlier than the armed one, or when it fires before
    // the deadline it stood for (deadlines mostly move later, frame after
    // frame: no timer work per read).
    let first = deadlines.next().0;
    let timer = tokio::time::sleep_until(first.into());
    tokio::pin!(timer);
    let mut armed = first;
    loop {
        make_room(&mut inbuf);
        let (deadline, _) = deadlines.next();
        if deadline < armed || timer.is_elapsed() {
            timer.as_mut().reset(deadline.into());
            armed = deadline;
        }
        let n = tokio::select! {
            r = rd.read_buf(&mut inbuf) => r,
            _ = out.notify.notified() => {
                if !flush(out, &mut writing, wr, write_timeout).await? {
                    return Ok(());
                }
                continue;
            }
            () = &mut timer => {
                let now = crate::clock::instant();
                let (deadline, kind) = deadlines.next();
                if now < deadline {
                    continue;
                }
                if kind == ConnTimeout::Idle && shard.core.borrow().has_allocation(ft) {
                    deadlines.allocated(now);
                    continue;
                }
                return Err(kind);
            }
            _ = shutdown.changed() => return Ok(()),
        };
        match n {
            Ok(0) | Err(_) => return Ok(()),
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
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %ft.client, error = %e, "closing stream out of step");
                    shard.counters.dropped(DropReason::Malformed);
                    closing = true;
                    break;
                }
            }
        }
        inbuf.drain(..start);
        deadlines.read(now.mono, start > 0, !inbuf.is_empty());
        if !flush(out, &mut writing, wr, write_timeout).await? || closing {
            return Ok(());
        }
    }
}

/// Make room for the next read: [`FIRST_READ`] bytes for a connection's
/// first read; then at least [`READ_CHUNK`] bytes, or the rest of the
/// frame being received, whichever is more, and no more. So the buffer
/// never holds more than one frame plus one chunk, and a large frame's
/// room is given back once it is done.
fn make_room(inbuf: &mut Vec<u8>) {
    if inbuf.capacity() == 0 {
        inbuf.reserve_exact(FIRST_READ);
        return;
    }
    let want = needed(inbuf).map_or(READ_CHUNK, |n| n.max(READ_CHUNK));
    let room = want.saturating_sub(inbuf.len()).max(READ_CHUNK / 2);
    if inbuf.capacity() > 2 * READ_CHUNK && inbuf.len() + room < inbuf.capacity() / 2 {
        inbuf.shrink_to(inbuf.len() + room);
    }
    if inbuf.capacity() - inbuf.len() < room {
        inbuf.reserve_exact(room);
    }
}

/// Write out everything queued; false if the connection failed, a
/// [`ConnTimeout::Write`] if a write made no progress for `limit`.
async fn flush<W: AsyncWrite + Unpin>(
    out: &ConnOut,
    writing: &mut Vec<u8>,
    wr: &mut W,
    limit: Duration,
) -> Result<bool, ConnTimeout> {
    loop {
        std::mem::swap(&mut *out.buf.borrow_mut(), writing);
        if writing.is_empty() {
            return Ok(true);
        }
        let mut done = 0;
        while done < writing.len() {
            match tokio::time::timeout(limit, wr.write(&writing[done..])).await {
                Err(_) => return Err(ConnTimeout::Write),
                Ok(Ok(0) | Err(_)) => return Ok(false),
                Ok(Ok(n)) => done += n,
            }
        }
        // TLS: push the records out of the session's buffer too.
        match tokio::time::timeout(limit, wr.flush()).await {
            Err(_) => return Err(ConnTimeout::Write),
            Ok(Err(_)) => return Ok(false),
            Ok(Ok(())) => {}
        }
        writing.clear();
        if writing.capacity() > MAX_PENDING {
            writing.shrink_to(READ_CHUNK);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn_table::Caps;

    fn limits() -> ConnLimits {
        ConnLimits {
            caps: Caps {
                total: 10,
                per_source: 10,
            },
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            frame: Duration::from_secs(5),
            write: Duration::from_secs(30),
            fd_reserve: 0,
        }
    }

    #[test]
    fn the_first_frame_is_due_first_request_timeout_after_accept() {
        let t0 = crate::clock::instant();
        let d = Deadlines::new(limits(), t0);
        assert_eq!(
            d.next(),
            (t0 + Duration::from_secs(10), ConnTimeout::FirstRequest)
        );
    }

    #[test]
    fn a_partial_frame_is_due_frame_timeout_after_its_first_bytes() {
        let t0 = crate::clock::instant();
        let mut d = Deadlines::new(limits(), t0);
        let t1 = t0 + Duration::from_secs(2);
        d.read(t1, false, true);
        assert_eq!(d.next(), (t1 + Duration::from_secs(5), ConnTimeout::Frame));
        // More bytes of the same frame do not move its deadline.
        d.read(t1 + Duration::from_secs(3), false, true);
        assert_eq!(d.next(), (t1 + Duration::from_secs(5), ConnTimeout::Frame));
        // Once whole, the connection is idle from then on.
        let t2 = t1 + Duration::from_secs(4);
        d.read(t2, true, false);
        assert_eq!(d.next(), (t2 + Duration::from_secs(60), ConnTimeout::Idle));
    }

    #[test]
    fn the_earlier_deadline_wins_before_the_first_frame() {
        let t0 = crate::clock::instant();
        let mut d = Deadlines::new(limits(), t0);
        // A frame begun at 8 s: first_request (10 s) comes before 13 s.
        d.read(t0 + Duration::from_secs(8), false, true);
        assert_eq!(
            d.next(),
            (t0 + Duration::from_secs(10), ConnTimeout::FirstRequest)
        );
    }

    #[test]
    fn an_allocation_postpones_the_idle_deadline() {
        let t0 = crate::clock::instant();
        let mut d = Deadlines::new(limits(), t0);
        d.read(t0, true, false);
        let t1 = t0 + Duration::from_secs(60);
        d.allocated(t1);
        assert_eq!(d.next(), (t1 + Duration::from_secs(60), ConnTimeout::Idle));
    }

    #[test]
    fn the_read_buffer_holds_one_frame_at_most_and_shrinks_after_it() {
        let mut buf = Vec::new();
        // A connection that has sent nothing holds a small buffer only.
        make_room(&mut buf);
        assert!(buf.capacity() >= FIRST_READ && buf.capacity() < READ_CHUNK);
        // After its first bytes, whole chunks.
        buf.push(0);
        make_room(&mut buf);
        assert!(buf.capacity() >= READ_CHUNK && buf.capacity() < 2 * READ_CHUNK);
        buf.clear();
        // The header of a 65,535-byte ChannelData frame: room for it all.
        buf.extend_from_slice(&[0x40, 0x00, 0xff, 0xff]);
        make_room(&mut buf);
        let frame = 4 + 65536;
        assert!(buf.capacity() >= frame, "{}", buf.capacity());
        assert!(buf.capacity() <= frame + READ_CHUNK, "{}", buf.capacity());
        // Most of it arrived: no more room than the rest of it needs.
        buf.resize(60_000, 0);
        make_room(&mut buf);
        assert!(buf.capacity() <= frame + READ_CHUNK, "{}", buf.capacity());
        // Done: the buffer gives its room back.
        buf.clear();
        make_room(&mut buf);
        assert!(buf.capacity() < 2 * READ_CHUNK, "{}", buf.capacity());
    }

    /// A writer that takes nothing, ever: a client that stopped reading.
    struct Stalled;

    impl AsyncWrite for Stalled {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_without_progress_is_a_write_timeout() {
        let out = ConnOut {
            buf: RefCell::new(Vec::new()),
            notify: Notify::new(),
        };
        assert!(out.push(&[1; 100]));
        let mut writing = Vec::new();
        let r = flush(&out, &mut writing, &mut Stalled, Duration::from_millis(50)).await;
        assert_eq!(r, Err(ConnTimeout::Write));
    }

    #[test]
    fn the_output_queue_is_bounded() {
        let out = ConnOut {
            buf: RefCell::new(Vec::new()),
            notify: Notify::new(),
        };
        let chunk = vec![0u8; 60_000];
        let mut queued = 0;
        while out.push(&chunk) {
            queued += chunk.len();
        }
        assert!(queued <= MAX_PENDING && queued + chunk.len() > MAX_PENDING);
    }
}
