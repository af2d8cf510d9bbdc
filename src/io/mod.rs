//! The tokio shell around the sans-IO core.
//!
//! [`start`] binds every listener up front (so start-up errors name the
//! config key), then runs one shard per thread. Each shard is a
//! current-thread runtime that owns its own [`Server`] core and its own
//! SO_REUSEPORT socket of every listener: the kernel spreads clients over
//! the shards, and a shard never shares state with another on the packet
//! path.

mod shard;
mod socket;
mod stream;
pub mod tls;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::config::{Config, Transport};
use crate::core::{CoreConfig, Counters};

/// A listener as bound (with the real port when the config said 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundListener {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key} ({transport} {addr}): cannot bind: {source}. Fix: {fix}")]
    Bind {
        key: String,
        transport: Transport,
        addr: SocketAddr,
        fix: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{key}: {source}. Fix: point cert and key at a PEM certificate chain and its private key"
    )]
    Tls {
        key: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

fn bind_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process holds this port; stop it or choose another port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "this host has no such address; use one of its addresses or the wildcard"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE (see systemd/turnpike.service)"
        }
        _ => "check the address",
    }
}

/// A running server. Dropping it does not stop it; call
/// [`ServerHandle::shutdown`].
pub struct ServerHandle {
    listeners: Vec<BoundListener>,
    counters: Vec<Arc<Counters>>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The first bound address of a transport and family.
    pub fn local_addr(&self, transport: Transport, ipv6: bool) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.transport == transport && l.addr.is_ipv6() == ipv6)
            .map(|l| l.addr)
    }

    /// The counters of every shard (sum them for totals).
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Stop every shard and wait for its thread. Open connections are
    /// closed; this returns as soon as each shard's runtime has unwound.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How many shards to run: `server.threads`, or one per CPU.
pub fn shard_count(cfg: &Config) -> usize {
    match cfg.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Bind every listener and start the shards. Errors name the config key.
///
/// IPv6 wildcard listeners of the embedded default are skipped with a
/// warning on hosts without IPv6, so the default works everywhere.
pub fn start(cfg: &Config) -> Result<ServerHandle, StartError> {
    let shards = shard_count(cfg);
    let core_cfg = Arc::new(CoreConfig::from_config(cfg));
    let mut per_shard: Vec<shard::Sockets> =
        (0..shards).map(|_| shard::Sockets::default()).collect();
    let mut listeners = Vec::new();
    for (i, l) in cfg.listen.iter().enumerate() {
        let key = format!("listen[{i}].addr");
        let kind = match l.transport {
            Transport::Udp => socket::Kind::Udp,
            Transport::Tcp | Transport::Tls => socket::Kind::Tcp,
        };
        let tls = match l.transport {
            Transport::Tls => {
                let (Some(cert), Some(keyf)) = (&l.cert, &l.key) else {
                    unreachable!("validated: tls listeners have cert and key")
                };
                Some(
                    tls::server_config(cert, keyf).map_err(|source| StartError::Tls {
                        key: format!("listen[{i}]"),
                        source,
                    })?,
                )
            }
            _ => None,
        };
        let group = match socket::bind_group(l.addr, kind, shards) {
            Ok(g) => g,
            Err(e) if l.addr.is_ipv6() && ipv6_unavailable(&e) => {
                tracing::warn!(transport = %l.transport, addr = %l.addr, "IPv6 unavailable on this host, skipping listener");
                continue;
            }
            Err(source) => {
                return Err(StartError::Bind {
                    fix: bind_fix(&source),
                    key,
                    transport: l.transport,
                    addr: l.addr,
                    source,
                });
            }
        };
        let addr = group[0]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(l.addr);
        listeners.push(BoundListener {
            transport: l.transport,
            addr,
        });
        for (s, sock) in per_shard.iter_mut().zip(group) {
            s.push(l.transport, addr, sock, tls.clone());
        }
    }
    let (tx, rx) = watch::channel(false);
    let mut threads = Vec::new();
    let mut counters = Vec::new();
    for (id, sockets) in per_shard.into_iter().enumerate() {
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let rx = rx.clone();
        let core_cfg = core_cfg.clone();
        let t = std::thread::Builder::new()
            .name(format!("turnpike-shard-{id}"))
            .spawn(move || shard::run(id, sockets, core_cfg, c, rx))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    for l in &listeners {
        tracing::info!(transport = %l.transport, addr = %l.addr, shards, "listening");
    }
    Ok(ServerHandle {
        listeners,
        counters,
        shutdown: tx,
        threads,
    })
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}
