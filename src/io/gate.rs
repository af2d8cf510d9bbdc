//! The door of the TCP and TLS listeners: who gets a connection, and the
//! deadlines it is held to (`[limits]`, "TCP/TLS connections").
//!
//! At accept, before any byte is read (and before a TLS handshake):
//!
//! - **caps**: `max_connections` in total (every listener and shard) and
//!   `max_connections_per_ip` from one IPv4 address or IPv6 /64
//!   ([`crate::conn_table`], shared with the HTTP listener);
//! - **file descriptors**: a connection is refused when the open
//!   descriptors plus `fd_reserve` reach the soft `RLIMIT_NOFILE`, so
//!   connections can never take the descriptors Allocate needs for relay
//!   sockets.
//!
//! A refused connection is closed at once and counted by reason. The
//! deadlines themselves are kept by each connection ([`super::stream`]).
//! Limits are read at each accept, so a reload applies to the connections
//! that follow.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::conn_table::{Caps, ConnTable, Refusal, Slot};

/// The caps and deadlines of TCP/TLS connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnLimits {
    pub caps: Caps,
    /// From accept (TLS handshake included) to the first whole frame.
    pub first_request: Duration,
    /// Without an allocation, between frames.
    pub idle: Duration,
    /// From the first bytes of a frame to its last.
    pub frame: Duration,
    /// A write that makes no progress.
    pub write: Duration,
    /// Descriptors kept free for relay sockets.
    pub fd_reserve: u64,
}

impl ConnLimits {
    pub(crate) fn of(l: &crate::config::Limits) -> Self {
        ConnLimits {
            caps: Caps {
                total: l.max_connections,
                per_source: l.max_connections_per_ip,
            },
            first_request: l.first_request_timeout.0,
            idle: l.idle_timeout.0,
            frame: l.frame_timeout.0,
            write: l.write_timeout.0,
            fd_reserve: l.fd_reserve,
        }
    }
}

/// Why a connection was refused at accept
/// (`turnpike_connections_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRefusal {
    MaxConnections = 0,
    MaxConnectionsPerIp = 1,
    FdReserve = 2,
}

impl ConnRefusal {
    pub const ALL: [ConnRefusal; 3] = [
        ConnRefusal::MaxConnections,
        ConnRefusal::MaxConnectionsPerIp,
        ConnRefusal::FdReserve,
    ];

    /// The metric label: the config key that refused it.
    pub fn name(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "max_connections",
            ConnRefusal::MaxConnectionsPerIp => "max_connections_per_ip",
            ConnRefusal::FdReserve => "fd_reserve",
        }
    }
}

/// Which deadline closed a connection
/// (`turnpike_connection_timeouts_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTimeout {
    /// No whole frame within `first_request_timeout` of accept.
    FirstRequest = 0,
    /// No frame for `idle_timeout` on a connection without an allocation.
    Idle = 1,
    /// A frame begun and not finished within `frame_timeout`.
    Frame = 2,
    /// A write with no progress for `write_timeout`.
    Write = 3,
    /// A TLS handshake unfinished at `first_request_timeout`.
    Handshake = 4,
}

impl ConnTimeout {
    pub const ALL: [ConnTimeout; 5] = [
        ConnTimeout::FirstRequest,
        ConnTimeout::Idle,
        ConnTimeout::Frame,
        ConnTimeout::Write,
        ConnTimeout::Handshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnTimeout::FirstRequest => "first_request",
            ConnTimeout::Idle => "idle",
            ConnTimeout::Frame => "frame",
            ConnTimeout::Write => "write",
            ConnTimeout::Handshake => "handshake",
        }
    }
}

/// What the door counts, published on `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    refused: [AtomicU64; 3],
    timeouts: [AtomicU64; 5],
}

impl ConnStats {
    pub(crate) fn refused(&self, why: ConnRefusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_count(&self, why: ConnRefusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn timed_out(&self, kind: ConnTimeout) {
        self.timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn timeout_count(&self, kind: ConnTimeout) -> u64 {
        self.timeouts[kind as usize].load(Ordering::Relaxed)
    }
}

/// How often the open descriptors are counted at most while far from the
/// limit (a count reads `/proc/self/fd`, one entry per descriptor).
const FD_RECOUNT: Duration = Duration::from_millis(100);
/// Within this many descriptors of the limit (beyond the reserve), they
/// are counted at every accept.
const FD_NEAR: u64 = 64;

/// The last count of open descriptors, and accepts since.
#[derive(Debug)]
struct FdCount {
    at: Option<Instant>,
    open: u64,
    accepted_since: u64,
}

/// The door shared by every TCP and TLS listener of every shard.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: RwLock<ConnLimits>,
    table: Arc<ConnTable>,
    pub stats: Arc<ConnStats>,
    fds: Mutex<FdCount>,
}

impl Gate {
    pub(crate) fn new(limits: ConnLimits) -> Self {
        Gate {
            limits: RwLock::new(limits),
            table: Arc::default(),
            stats: Arc::default(),
            fds: Mutex::new(FdCount {
                at: None,
                open: 0,
                accepted_since: 0,
            }),
        }
    }

    pub(crate) fn limits(&self) -> ConnLimits {
        *self.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply reloaded limits to the connections that follow.
    pub(crate) fn set_limits(&self, l: ConnLimits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = l;
    }

    /// Let a just-accepted connection in (its slot, to hold until it
    /// closes, and the limits it is held to), or refuse it (counted; the
    /// caller closes it).
    pub(crate) fn admit(
        &self,
        stream: &impl AsRawFd,
        peer: std::net::IpAddr,
    ) -> Result<(Slot, ConnLimits), ConnRefusal> {
        let limits = self.limits();
        let r = match self.table.try_acquire(peer, limits.caps) {
            Err(Refusal::Total) => Err(ConnRefusal::MaxConnections),
            Err(Refusal::PerSource) => Err(ConnRefusal::MaxConnectionsPerIp),
            Ok(slot) if !self.fds_left(stream.as_raw_fd(), limits.fd_reserve) => {
                drop(slot);
                Err(ConnRefusal::FdReserve)
            }
            Ok(slot) => Ok((slot, limits)),
        };
        if let Err(why) = r {
            self.stats.refused(why);
        }
        r
    }

    /// Whether, with the descriptor `fd` just opened, `reserve` more are
    /// still free under the soft limit.
    fn fds_left(&self, fd: i32, reserve: u64) -> bool {
        let Ok((soft, _)) = turnpike_sys::process::nofile_limit() else {
            return true;
        };
        // The kernel hands out the lowest free descriptor: 0..=fd are open.
        let lowest = u64::try_from(fd).unwrap_or(0) + 1;
        if lowest + reserve >= soft {
            return false;
        }
        let now = crate::clock::instant();
        let mut c = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        c.accepted_since += 1;
        let estimate = c.open + c.accepted_since;
        let stale =
            c.at.is_none_or(|at| now.saturating_duration_since(at) >= FD_RECOUNT);
        if stale || estimate + reserve + FD_NEAR >= soft {
            if let Ok(n) = turnpike_sys::process::open_fds() {
                // The count saw the directory's own descriptor too.
                c.open = (n as u64).saturating_sub(1);
                c.accepted_since = 0;
                c.at = Some(now);
            }
        }
        fits(c.open + c.accepted_since, reserve, soft)
    }

    /// Connections holding a slot (handshakes included).
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.table.open()
    }
}

/// Whether `open` descriptors leave `reserve` free under `soft`.
fn fits(open: u64, reserve: u64, soft: u64) -> bool {
    open + reserve < soft
}

/// Say at start when the descriptor limit, not `max_connections`, caps
/// connections (and warn when the reserve leaves no room for them).
pub(crate) fn warn_if_reserve_too_large(l: &ConnLimits) {
    let Ok((soft, _)) = turnpike_sys::process::nofile_limit() else {
        return;
    };
    if l.fd_reserve + 64 >= soft {
        tracing::warn!(
            fd_reserve = l.fd_reserve,
            nofile = soft,
            "limits.fd_reserve leaves (almost) no file descriptors for TCP/TLS connections: \
             raise LimitNOFILE (ulimit -n) or lower limits.fd_reserve"
        );
    } else if l.caps.total as u64 + l.fd_reserve > soft {
        tracing::info!(
            max_connections = l.caps.total,
            fd_reserve = l.fd_reserve,
            nofile = soft,
            "the file-descriptor limit caps TCP/TLS connections below limits.max_connections \
             (connections are refused with reason fd_reserve first); raise LimitNOFILE for more"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize, fd_reserve: u64) -> ConnLimits {
        ConnLimits {
            caps: Caps { total, per_source },
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            frame: Duration::from_secs(10),
            write: Duration::from_secs(30),
            fd_reserve,
        }
    }

    #[test]
    fn the_reserve_is_kept_free() {
        assert!(fits(100, 28, 1024));
        assert!(fits(995, 28, 1024));
        assert!(!fits(996, 28, 1024));
        assert!(!fits(10, 2000, 1024));
    }

    #[test]
    fn admit_counts_refusals_by_cap() {
        let g = Gate::new(limits(3, 2, 0));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let _a1 = g.admit(&sock, a).unwrap();
        let _a2 = g.admit(&sock, a).unwrap();
        assert_eq!(
            g.admit(&sock, a).unwrap_err(),
            ConnRefusal::MaxConnectionsPerIp
        );
        let (_b1, l) = g.admit(&sock, b).unwrap();
        assert_eq!(l.caps.total, 3);
        assert_eq!(g.admit(&sock, b).unwrap_err(), ConnRefusal::MaxConnections);
        assert_eq!(g.open(), 3);
        assert_eq!(g.stats.refused_count(ConnRefusal::MaxConnections), 1);
        assert_eq!(g.stats.refused_count(ConnRefusal::MaxConnectionsPerIp), 1);
        assert_eq!(g.stats.refused_count(ConnRefusal::FdReserve), 0);
    }

    #[test]
    fn a_reserve_as_large_as_the_limit_refuses_and_frees_the_slot() {
        let (soft, _) = turnpike_sys::process::nofile_limit().unwrap();
        let g = Gate::new(limits(10, 10, soft));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.admit(&sock, a).unwrap_err(), ConnRefusal::FdReserve);
        assert_eq!(g.open(), 0, "the refused connection holds no slot");
        assert_eq!(g.stats.refused_count(ConnRefusal::FdReserve), 1);
        // A reload to a small reserve lets connections in again.
        g.set_limits(limits(10, 10, 8));
        assert!(g.admit(&sock, a).is_ok());
    }
}
