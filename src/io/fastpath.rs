//! The XDP fast path in the shell (issue 15): `[fastpath] mode` decides
//! whether the program is attached (`turnpike_sys::xdp`); the shards apply
//! the routes their cores mirror ([`apply`], called where the core's
//! events are drained: after requests, timers and control requests, never
//! per relayed packet); `/metrics` and the admin sessions add the
//! program's counters to the user-space ones.
//!
//! The program is held in one [`Slot`] shared by the shards and the
//! server handle. A reload that turns the fast path off detaches it (and
//! tells every core to stop mirroring); one that turns it on attaches it
//! and tells every core to mirror what it has.

use std::sync::{Mutex, MutexGuard};

use turnpike_proto::core::{FastRoute, FastpathOp, Server, SessionInfo, Traffic};
use turnpike_sys::xdp::{self, DirStats};

use crate::config::{Fastpath as FastpathConfig, FastpathMode};

/// What the fast path relayed since start, both directions (the
/// program's counters, and those of programs detached by a reload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastpathTotals {
    /// Client → peer.
    pub to_peer: DirStats,
    /// Peer → client.
    pub to_client: DirStats,
}

/// The attached program, if any, shared by the shards.
#[derive(Default)]
pub(crate) struct Slot {
    program: Mutex<Option<xdp::Fastpath>>,
    /// Counters of programs detached by a reload (so totals never go back).
    retired: Mutex<FastpathTotals>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<xdp::Fastpath>> {
        self.program.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a program is attached.
    pub(crate) fn attached(&self) -> bool {
        self.lock().is_some()
    }

    pub(crate) fn totals(&self) -> FastpathTotals {
        let mut t = *self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fp) = self.lock().as_ref() {
            let (out, in_) = fp.totals();
            add(&mut t.to_peer, out);
            add(&mut t.to_client, in_);
        }
        t
    }

    /// Detach the program (dropping it), keeping its counters.
    pub(crate) fn detach(&self) {
        let old = self.lock().take();
        if let Some(fp) = old {
            let (out, in_) = fp.totals();
            let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            add(&mut r.to_peer, out);
            add(&mut r.to_client, in_);
            drop(fp);
            tracing::info!("XDP fast path detached");
        }
    }

    /// Add what the program relayed for each session to its traffic (the
    /// admin sessions API shows both paths).
    pub(crate) fn add_to_sessions(&self, sessions: &mut [SessionInfo]) {
        let g = self.lock();
        let Some(fp) = g.as_ref() else {
            return;
        };
        for s in sessions {
            let a = fp.allocation_stats(s.id);
            s.traffic.packets_out += a.out.packets;
            s.traffic.bytes_out += a.out.bytes;
            s.traffic.packets_in += a.in_.packets;
            s.traffic.bytes_in += a.in_.bytes;
        }
    }
}

fn add(t: &mut DirStats, s: DirStats) {
    t.packets += s.packets;
    t.bytes += s.bytes;
}

/// Why `mode = "xdp"` cannot start.
#[derive(Debug, thiserror::Error)]
#[error("fastpath.mode = \"xdp\": {error}. Fix: {fix}")]
pub struct FastpathError {
    error: xdp::Error,
    fix: &'static str,
}

fn fix(e: &xdp::Error) -> &'static str {
    match e {
        xdp::Error::NotBuilt => {
            "apt-get install clang libbpf-dev and rebuild, or set fastpath.mode = \"auto\" or \"off\""
        }
        xdp::Error::NoInterface(_) => "list this host's interfaces in fastpath.interfaces",
        xdp::Error::Load(_) | xdp::Error::Attach { .. } | xdp::Error::Map(_) => {
            "run as root or grant CAP_BPF and CAP_NET_ADMIN (see systemd/turnpike.service), or set fastpath.mode = \"auto\""
        }
    }
}

/// Attach the program as `cfg` says, into `slot` (which must be empty):
/// `off` does nothing; `auto` attaches or warns once and runs without;
/// `xdp` attaches or refuses. Returns whether it is attached.
pub(crate) fn attach(cfg: &FastpathConfig, slot: &Slot) -> Result<bool, FastpathError> {
    if cfg.mode == FastpathMode::Off {
        return Ok(false);
    }
    let r = if cfg.interfaces.is_empty() {
        Err(xdp::Error::NoInterface(String::new()))
    } else {
        xdp::Fastpath::attach(&cfg.interfaces)
    };
    match r {
        Ok(fp) => {
            for (iface, mode) in fp.attached() {
                if *mode == xdp::AttachMode::Generic {
                    tracing::warn!(%iface, "XDP fast path attached in generic mode (the driver has no native XDP): slower than driver mode");
                } else {
                    tracing::info!(%iface, mode = mode.name(), "XDP fast path attached");
                }
            }
            *slot.lock() = Some(fp);
            Ok(true)
        }
        Err(error) if cfg.mode == FastpathMode::Auto => {
            tracing::warn!(%error, "fastpath.mode = \"auto\": running without the XDP fast path (user space relays everything)");
            Ok(false)
        }
        Err(error) => Err(FastpathError {
            fix: fix(&error),
            error,
        }),
    }
}

/// The program writes the listener's and the relay's addresses into the
/// packets it relays, so allocations on a wildcard address stay on the
/// user-space path: say so once at start.
pub(crate) fn warn_if_wildcards(cfg: &crate::config::Config) {
    let wild_relay = [cfg.relay.bind_ip, cfg.relay.bind_ip6]
        .into_iter()
        .flatten()
        .any(|ip| ip.is_unspecified());
    let wild_listener = cfg
        .listen
        .iter()
        .any(|l| l.transport == crate::config::Transport::Udp && l.addr.ip().is_unspecified());
    if wild_relay || wild_listener {
        tracing::warn!(
            wild_relay,
            wild_listener,
            "XDP fast path: allocations on a wildcard relay.bind_ip(6) or UDP listener address stay on the user-space path; use this host's addresses"
        );
    }
}

/// Apply the routes `core` queued to the program. Without a program the
/// queue is drained and dropped (the core mirrors only while told a
/// program is there, so this is a reload's window). Returns what the
/// program relayed for allocations that ended (their log lines add it).
pub(crate) fn apply(core: &mut Server, slot: &Slot) -> Vec<(u64, Traffic)> {
    let mut ended = Vec::new();
    let Some(first) = core.poll_fastpath() else {
        return ended;
    };
    let mut g = slot.lock();
    let mut op = Some(first);
    while let Some(o) = op {
        if let Some(fp) = g.as_mut() {
            match o {
                FastpathOp::Install(r) => {
                    if let Err(error) = fp.install(&route(&r)) {
                        // Full maps or a kernel refusal: that channel stays
                        // on the user-space path.
                        tracing::debug!(%error, id = r.alloc_id, "fast path route not installed");
                    }
                }
                FastpathOp::Remove(r) => fp.remove(&route(&r)),
                FastpathOp::Ended { alloc_id } => {
                    let s = fp.forget_allocation(alloc_id);
                    ended.push((
                        alloc_id,
                        Traffic {
                            packets_out: s.out.packets,
                            bytes_out: s.out.bytes,
                            packets_in: s.in_.packets,
                            bytes_in: s.in_.bytes,
                        },
                    ));
                }
            }
        }
        op = core.poll_fastpath();
    }
    ended
}

/// A core route as the program's maps hold it: the expiry moved onto
/// CLOCK_MONOTONIC nanoseconds.
fn route(r: &FastRoute) -> xdp::Route {
    xdp::Route {
        client: r.client.0,
        listener: r.listener,
        relay: r.relay,
        peer: r.peer.0,
        channel: r.channel.0,
        peer_is_relay: r.to_relay,
        expires_ns: crate::clock::monotonic_ns_at(r.expires),
        alloc_id: r.alloc_id,
    }
}

impl super::ServerHandle {
    /// A reload's `[fastpath]`: unchanged, nothing; changed, the program
    /// is detached, attached again as the new section says, and every
    /// core told. With `mode = "xdp"` and no attachment the reload fails
    /// and the server runs on without the fast path.
    pub(super) fn reload_fastpath(&self, new: &FastpathConfig) -> Result<(), super::StartError> {
        let mut cur = self.fastpath_cfg.lock().unwrap_or_else(|e| e.into_inner());
        if *cur == *new {
            return Ok(());
        }
        *cur = new.clone();
        self.fastpath.detach();
        let r = attach(new, &self.fastpath);
        let on = matches!(r, Ok(true));
        self.broadcast(|| super::control::Control::Fastpath(on));
        r.map(|_| ()).map_err(Into::into)
    }
}
