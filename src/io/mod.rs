//! The tokio shell around the sans-IO core.
//!
//! [`start`] binds every listener up front (so start-up errors name the
//! config key), then runs one shard per thread. Each shard is a
//! current-thread runtime that owns its own [`Server`] core and its own
//! SO_REUSEPORT socket of every listener: the kernel spreads clients over
//! the shards, and a shard never shares state with another on the packet
//! path.

mod control;
mod deliver;
mod fastpath;
mod fleet;
mod gate;
mod poller;
mod relay;
mod setup;
mod shard;
mod socket;
mod stream;
mod udp;

pub use fastpath::{FastpathError, FastpathTotals};
pub use gate::{ConnRefusal, ConnStats, ConnTimeout};

pub use control::ReloadError;
use setup::{
    check_relay_addresses, ipv6_unavailable, warn_dangerous_allow_peers,
    warn_if_own_address_refused,
};
pub use setup::{credentials, primary_address};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::TryRngCore;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Transport};
use crate::tls;
use control::Control;
use turnpike_proto::core::{CoreConfig, Counters, Credentials, Setup, Shared};

/// A listener as bound (with the real port when the config said 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundListener {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key} ({transport} {addr}): cannot bind: {error}. Fix: {fix}")]
    Bind {
        key: String,
        transport: Transport,
        addr: SocketAddr,
        fix: &'static str,
        error: std::io::Error,
    },
    #[error(
        "{key}: {error}. Fix: point cert and key at a PEM certificate chain and its private key"
    )]
    Tls { key: String, error: tls::TlsError },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "{key} ({addr}): cannot bind relay sockets there: {error}. Fix: use an address of this host, or the wildcard"
    )]
    RelayBind {
        key: &'static str,
        addr: std::net::IpAddr,
        error: std::io::Error,
    },
    #[error("{key}: {problem}. Fix: make the file readable")]
    Secret { key: String, problem: String },
    #[error(transparent)]
    Fastpath(#[from] FastpathError),
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
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    control: Vec<mpsc::UnboundedSender<Control>>,
    /// The core configuration the shards run with (draining included).
    core_cfg: Mutex<Arc<CoreConfig>>,
    /// The credentials the shards verify with (secret files as read at
    /// start or at the last reload).
    creds: Mutex<Arc<Credentials>>,
    /// TLS certificate resolvers of the TLS listeners, by config index.
    certs: Vec<(usize, Arc<tls::ReloadableCert>)>,
    /// The configuration the server started with (to tell what a reload
    /// cannot change).
    start_cfg: Config,
    /// The door of the TCP and TLS listeners (caps, descriptor reserve,
    /// deadlines), shared by every shard.
    gate: Arc<gate::Gate>,
    /// Credentials revoked through the admin API (issue 14), pushed into
    /// every shard on each change; in memory only, kept across a reload.
    revocations: Mutex<crate::revocation::RevocationStore>,
    /// The XDP fast path (issue 15), if attached, and its configuration
    /// in force.
    fastpath: Arc<fastpath::Slot>,
    fastpath_cfg: Mutex<crate::config::Fastpath>,
    /// Issue 14: this node's name in the fleet, the link to the cluster
    /// task (set once it starts, with `[cluster] redis_url`), and the
    /// shards' admission questions until the cluster task takes them.
    node_id: String,
    cluster: std::sync::OnceLock<crate::cluster::Link>,
    admissions: Mutex<Option<mpsc::Receiver<crate::cluster::FromShard>>>,
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

    /// What the TCP and TLS listeners refused and cut (`/metrics`).
    pub fn connection_stats(&self) -> &ConnStats {
        &self.gate.stats
    }

    /// State shared by the shards (quotas, port pools).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The credentials in force: what the shards verify with, so what
    /// the credentials API must sign with (a secret file rewritten since
    /// the last reload is not read until the next one).
    pub fn current_credentials(&self) -> Arc<Credentials> {
        self.creds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Allocations alive across all shards.
    pub fn allocations(&self) -> usize {
        self.shared.allocations()
    }

    /// Stop every shard and wait for its thread. Open connections are
    /// closed and live allocations end (each logged); this returns as soon
    /// as each shard's runtime has unwound.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        self.fastpath.detach();
    }

    /// What the XDP fast path relayed since start (issue 15).
    pub fn fastpath_totals(&self) -> FastpathTotals {
        self.fastpath.totals()
    }

    /// Whether the XDP fast path is attached.
    pub fn fastpath_attached(&self) -> bool {
        self.fastpath.attached()
    }
}

/// A username as logs show it: control characters (newline, carriage
/// return, ESC, DEL, the C1 range, ...) and backslashes escaped the way
/// Rust's `escape_debug` writes them (`\n`, `\u{1b}`, `\\`), so a
/// client's username can neither forge a log line nor drive a terminal.
/// Anything else is kept as is; a name without such characters is not
/// copied.
pub fn log_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A client address as logs show it when `log.redact_client_ips` is on:
/// the IPv4 /24 or IPv6 /48 it is in, without the port. Lines of one
/// network still correlate; the host is not recorded.
pub fn redact(a: SocketAddr) -> String {
    match turnpike_proto::core::canonical(a).ip() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
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
    let mut core_cfg = setup::core_config(cfg);
    let creds = Arc::new(credentials(cfg)?);
    check_relay_addresses(cfg)?;
    warn_if_own_address_refused(&core_cfg);
    warn_dangerous_allow_peers(&core_cfg);
    let mut per_shard: Vec<shard::Sockets> = (0..shards)
        .map(|_| shard::Sockets {
            gso: cfg.server.udp_gso,
            ..Default::default()
        })
        .collect();
    let mut listeners = Vec::new();
    let mut certs = Vec::new();
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
                let resolver =
                    Arc::new(tls::ReloadableCert::load(cert, keyf).map_err(|error| {
                        StartError::Tls {
                            key: format!("listen[{i}]"),
                            error,
                        }
                    })?);
                certs.push((i, resolver.clone()));
                Some(tls::server_config(resolver))
            }
            _ => None,
        };
        let group = match socket::bind_group(l.addr, kind, shards) {
            Ok(g) => g,
            Err(e) if l.addr.is_ipv6() && ipv6_unavailable(&e) => {
                tracing::warn!(transport = %l.transport, addr = %l.addr, "IPv6 unavailable on this host, skipping listener");
                continue;
            }
            Err(error) => {
                return Err(StartError::Bind {
                    fix: bind_fix(&error),
                    key,
                    transport: l.transport,
                    addr: l.addr,
                    error,
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
    // Port-0 listeners have their ports now: no peer may be one of them.
    // Relayed data is UDP, so only UDP listeners count (a relay port may
    // share its number with a TCP or TLS listener).
    core_cfg.policy.own_mut().add_listener_ports(
        listeners
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .map(|l| l.addr.port()),
    );
    let core_cfg = Arc::new(core_cfg);
    let (tx, rx) = watch::channel(false);
    let mut threads = Vec::new();
    let mut counters = Vec::new();
    let mut os_rng = rand::rngs::OsRng;
    // One table for the server; its hash key from the OS, unknown to
    // whoever picks source addresses.
    let limiter = turnpike_proto::core::ratelimit::Limiter::new(
        cfg.limits.rate_limit_slots,
        os_rng.try_next_u64().expect("OS randomness"),
    );
    let shared = Arc::new(Shared::new(cfg.relay.ports).with_rate_limit(limiter));
    let mut nonce_key = [0u8; 32];
    os_rng
        .try_fill_bytes(&mut nonce_key)
        .expect("OS randomness");
    let mut control = Vec::new();
    let held = Arc::new(relay::HeldPorts::default());
    let conn_limits = gate::ConnLimits::of(&cfg.limits);
    if per_shard.iter().any(|s| !s.stream.is_empty()) {
        gate::warn_if_reserve_too_large(&conn_limits);
    }
    let gate = Arc::new(gate::Gate::new(conn_limits));
    let fastpath = Arc::new(fastpath::Slot::default());
    if fastpath::attach(&cfg.fastpath, &fastpath)? {
        fastpath::warn_if_wildcards(cfg);
    }
    // Issue 14: the shards' admission questions for the cluster task.
    let (admit_tx, admit_rx) = mpsc::channel(crate::cluster::ADMIT_QUEUE);
    let clustered = cfg.cluster.redis_url.is_some();
    for (id, mut sockets) in per_shard.into_iter().enumerate() {
        sockets.fastpath = fastpath.clone();
        sockets.admit = clustered.then(|| admit_tx.clone());
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let rx = rx.clone();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        control.push(ctl_tx);
        let setup = Setup {
            cfg: core_cfg.clone(),
            creds: creds.clone(),
            shared: shared.clone(),
            counters: c,
            seed: os_rng.try_next_u64().expect("OS randomness"),
            nonce_key,
            shard: id as u16,
        };
        let t = std::thread::Builder::new()
            .name(format!("turnpike-shard-{id}"))
            .spawn({
                let held = held.clone();
                let gate = gate.clone();
                move || shard::run(id, sockets, setup, rx, ctl_rx, held, gate)
            })
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    for l in &listeners {
        tracing::info!(transport = %l.transport, addr = %l.addr, shards, "listening");
    }
    if let Some(r) = core_cfg.relay4 {
        tracing::info!(bind = %r.bind, advertised = %r.advertised, ports = %cfg.relay.ports, "relaying IPv4");
    }
    if let Some(r) = core_cfg.relay6 {
        tracing::info!(bind = %r.bind, advertised = %r.advertised, ports = %cfg.relay.ports, "relaying IPv6");
    }
    Ok(ServerHandle {
        listeners,
        counters,
        shared,
        shutdown: tx,
        threads: Mutex::new(threads),
        control,
        core_cfg: Mutex::new(core_cfg),
        creds: Mutex::new(creds),
        certs,
        start_cfg: cfg.clone(),
        gate,
        revocations: Mutex::default(),
        fastpath,
        fastpath_cfg: Mutex::new(cfg.fastpath.clone()),
        node_id: crate::cluster::node_id(cfg),
        cluster: std::sync::OnceLock::new(),
        admissions: Mutex::new(Some(admit_rx)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames_are_escaped_for_logs() {
        assert!(matches!(
            super::log_safe("1700000000:alice"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            super::log_safe("eve\n2026-12-04T00:00:00Z  INFO forged\x1b[2J"),
            "eve\\n2026-12-04T00:00:00Z  INFO forged\\u{1b}[2J"
        );
        assert_eq!(
            super::log_safe("a\r\t\u{7f}\u{85}b"),
            "a\\r\\t\\u{7f}\\u{85}b"
        );
        assert_eq!(super::log_safe("dom\\user"), "dom\\\\user");
        assert_eq!(super::log_safe("zoë 'q' \"q\""), "zoë 'q' \"q\"");
    }

    #[test]
    fn redaction_keeps_the_network_only() {
        assert_eq!(
            super::redact("203.0.113.77:4242".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            super::redact("[::ffff:203.0.113.77]:1".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            super::redact("[2001:db8:aa:bb::1]:1".parse().unwrap()),
            "2001:db8:aa::/48"
        );
    }
}
