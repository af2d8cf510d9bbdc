//! The HTTP(S) listener's accept loop: a door for strangers, so every
//! connection gets its own task, a slot under two caps and deadlines.
//!
//! - **Caps** (`http.max_connections`, `http.max_connections_per_ip`): a
//!   connection over either is accepted and closed at once, so the kernel's
//!   backlog never fills with connections nobody will serve. The
//!   per-address cap counts an IPv4 address, or the /64 of an IPv6 one,
//!   so one client cannot take every slot.
//! - **TLS handshake** (HTTPS): inside the connection's task, with
//!   `http.header_timeout` as its deadline; the accept loop never waits
//!   for a client.
//! - **Request heads** (`http.header_timeout`): hyper's header-read
//!   timeout, from the first byte of a request head (or, on a kept-alive
//!   connection, from the end of the last response) to its last.
//! - **Idle** (`http.idle_timeout`): a connection on which no byte moves
//!   either way for that long is closed (a stalled body, a client that
//!   never reads its response).
//!
//! Limits are read from the configuration in force at each accept, so a
//! reload changes them for the connections that follow.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::AppState;
use crate::conn_table::{Caps, ConnTable, Refusal, Slot};

/// The largest request head (and read buffer) of a connection: the API's
/// requests are a line and a few headers.
const MAX_BUF: usize = 64 * 1024;

/// How long in-flight requests may take to finish once the listener stops.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The caps and deadlines for a new connection.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    max_per_ip: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Limits {
    fn caps(&self) -> Caps {
        Caps {
            total: self.max_connections,
            per_source: self.max_per_ip,
        }
    }

    fn of(h: &crate::config::Http) -> Self {
        Limits {
            max_connections: h.max_connections,
            max_per_ip: h.max_connections_per_ip,
            header_timeout: h.header_timeout.0,
            idle_timeout: h.idle_timeout.0,
        }
    }
}

/// What the listener counts, published on `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections closed at accept because `max_connections` were open.
    pub refused_total_cap: AtomicU64,
    /// Connections closed at accept because their address (or /64) had
    /// `max_connections_per_ip` open.
    pub refused_per_ip_cap: AtomicU64,
    /// TLS handshakes cut by `header_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Request heads cut by `header_timeout`.
    pub header_timeouts: AtomicU64,
    /// Connections closed by `idle_timeout`.
    pub idle_timeouts: AtomicU64,
}

/// When a byte last moved on a connection.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    /// Nanoseconds from `origin` to the last read or write that moved bytes.
    last_ns: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: crate::clock::instant(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = crate::clock::instant().saturating_duration_since(self.origin);
        let ns = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.origin + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)) + idle
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.idle_deadline(idle);
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            if crate::clock::instant() >= self.idle_deadline(idle) {
                return;
            }
        }
    }
}

/// A stream that notes in its [`Activity`] every read and write that moves
/// bytes.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `tcp` (with TLS when `tls` is set) until `shutdown` resolves;
/// then stop accepting, let in-flight requests finish for a moment and
/// close the rest.
pub(super) async fn run(
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let table = Arc::new(ConnTable::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait a
                        // little rather than spin.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let limits = Limits::of(&state.config().http);
                let slot = match table.try_acquire(peer.ip(), limits.caps()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        let stats = &state.http_stats;
                        let (counter, cap) = match why {
                            Refusal::Total => (&stats.refused_total_cap, "http.max_connections"),
                            Refusal::PerSource => (&stats.refused_per_ip_cap, "http.max_connections_per_ip"),
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %peer, cap, "HTTP connection refused");
                        drop(stream);
                        continue;
                    }
                };
                conns.spawn(connection(
                    stream,
                    peer,
                    tls.clone(),
                    app.clone(),
                    limits,
                    state.clone(),
                    slot,
                    stop_rx.clone(),
                ));
            }
        }
    }
    drop(tcp);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// One connection, from accept to close.
#[allow(
    clippy::too_many_arguments,
    reason = "one task's inputs, moved in once"
)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
    state: Arc<AppState>,
    slot: Slot,
    stop: watch::Receiver<bool>,
) {
    let _slot = slot;
    let stats = &state.http_stats;
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    match tls {
        None => serve(io, peer, app, &limits, &activity, stats, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => serve(tls, peer, app, &limits, &activity, stats, stop).await,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "HTTPS handshake failed");
                }
                Err(_) => {
                    stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, "HTTPS handshake timed out (http.header_timeout)");
                }
            }
        }
    }
}

/// HTTP/1.1 on an established (plain or TLS) stream.
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    activity: &Activity,
    stats: &HttpStats,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut stopping = *stop.borrow_and_update();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    if e.is_timeout() {
                        stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %peer, "HTTP request head timed out (http.header_timeout)");
                    } else {
                        tracing::debug!(client = %peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                return;
            }
            () = activity.idle_for(limits.idle_timeout) => {
                stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %peer, "HTTP connection idle (http.idle_timeout): closed");
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            max_connections: total,
            max_per_ip: per_ip,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// Serve a 1 MB response into a 4 KiB pipe whose client never reads:
    /// the writes stall, and the idle timeout closes the connection (a
    /// request head came in time, so it is no header timeout).
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_never_reads_is_closed_when_idle() {
        use tokio::io::AsyncWriteExt;
        let app = Router::new().route("/big", axum::routing::get(|| async { "x".repeat(1 << 20) }));
        let (server_end, mut client_end) = tokio::io::duplex(4096);
        let activity = Arc::new(Activity::new());
        let io = Watched {
            inner: server_end,
            activity: activity.clone(),
        };
        let limits = Limits {
            idle_timeout: Duration::from_millis(300),
            ..limits(1, 1)
        };
        let stats = HttpStats::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        client_end
            .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let served = serve(io, peer, app, &limits, &activity, &stats, stop_rx);
        // A guard only: the connection must end by itself well before.
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the idle connection was not closed");
        assert_eq!(stats.idle_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(stats.header_timeouts.load(Ordering::Relaxed), 0);
        drop(client_end);
    }
}
