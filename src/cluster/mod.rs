//! The fleet on Redis (issue 14): one task owns the Redis connections and
//! everything the nodes share goes through it (the shards' admission
//! questions through a second task on its connection). Nothing on the
//! packet path waits for it: the shards talk to it through bounded queues
//! (an Allocate that needs the cluster quota is parked in the core and
//! waits at most `cluster.allocate_budget`, see
//! `turnpike_proto::core::cluster`), and it answers them through their
//! control queues.
//!
//! The lease of an allocation is named after it (`NODE:ID`: the core's
//! ticket for the parked Allocate is the id the allocation gets), so the
//! refresh, an allocation's end and a crash all speak of the same member.
//!
//! What Redis holds (every key under `cluster.key_prefix`, `P` below):
//!
//! | key | what | lifetime |
//! |---|---|---|
//! | `P:quota:USER` (ZSET) | a lease per live allocation of USER in the fleet: member `NODE:ID`, score its expiry (Redis time, ms) | leases expire `lease_ttl` after their node's last refresh |
//! | `P:revocations` (HASH) | username → `{"until", "created"}` | lapsed ones are pruned at each sync |
//! | `P:sessions:NODE` (HASH) | allocation id → its `/api/v1/sessions` JSON | the key expires `lease_ttl` after the node's last refresh |
//! | `P:load:NODE` | the node's load (JSON) | `lease_ttl` |
//! | `P:nodes` (ZSET) | node → Unix second its entries expire | pruned by score |
//!
//! Channels: `P:revocations` (a node changed the set: every node syncs
//! it), `P:node:NODE` (a command for one node: delete an allocation).
//!
//! Redis unreachable: one warning, `turnpike_cluster_up 0`, local quotas
//! (Allocates are no longer parked), the revocations known stay enforced,
//! changes made meanwhile are replayed when it returns; then the full
//! revocation set is read again and leases, registry and load rewritten.

mod redis_io;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::io::ServerHandle;

/// Admission questions queued from the shards, at most; past it a question
/// is dropped and its Allocate goes on with the local quota at its budget.
pub const ADMIT_QUEUE: usize = 1024;

/// Commands from the HTTP side queued at most.
const CMD_QUEUE: usize = 256;

/// What a shard tells the cluster task.
#[derive(Debug)]
pub enum FromShard {
    /// May this user have one more allocation?
    Admit(AdmitAsk),
    /// Allocation `id` of `user` (the quota user; `None`: the lease this
    /// node took for it, if any) ended, or a granted admission went
    /// unused: its lease goes now, not at the next refresh.
    Ended { id: u64, user: Option<String> },
}

/// An admission question from a shard (`turnpike_proto::core::AdmitRequest`
/// and where to answer it).
#[derive(Debug)]
pub struct AdmitAsk {
    pub shard: usize,
    pub ticket: u64,
    pub user: String,
}

/// What the rest of the server asks of the cluster task.
enum Cmd {
    /// A revocation changed here (stored locally already).
    RevocationsChanged(RevOp),
    /// Every node's allocations (the registry).
    Sessions(oneshot::Sender<Result<Vec<serde_json::Value>, String>>),
    /// End allocation `id` on `node`; whether it existed.
    Delete {
        node: String,
        id: u64,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}

/// A change of the revocation set made on this node.
#[derive(Clone, Debug)]
enum RevOp {
    Revoke(crate::revocation::Revocation),
    Lift(String),
}

/// The cluster as the rest of the server sees it.
pub struct Link {
    tx: mpsc::Sender<Cmd>,
    up: Arc<AtomicBool>,
    stats: Arc<AdmissionStats>,
}

/// Admission answers, by verdict (`turnpike_cluster_admissions_total`).
#[derive(Debug, Default)]
pub struct AdmissionStats {
    granted: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    unavailable: std::sync::atomic::AtomicU64,
}

impl AdmissionStats {
    pub(crate) fn count(&self, v: turnpike_proto::core::Admission) {
        use turnpike_proto::core::Admission;
        let c = match v {
            Admission::Granted => &self.granted,
            Admission::Refused => &self.refused,
            Admission::Unavailable => &self.unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (result label, count) for each verdict.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        [
            ("granted", self.granted.load(Ordering::Relaxed)),
            ("refused", self.refused.load(Ordering::Relaxed)),
            ("unavailable", self.unavailable.load(Ordering::Relaxed)),
        ]
    }
}

/// Why a cluster request could not be served.
pub const UNREACHABLE: &str = "the cluster store (Redis) is unreachable";

impl Link {
    /// Whether Redis is reachable now (`turnpike_cluster_up`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The cluster's answers to admission questions so far (an Allocate
    /// resumed at its budget before an answer is not counted here).
    pub fn admissions(&self) -> &AdmissionStats {
        &self.stats
    }

    /// A revocation was stored here: share it.
    pub fn revoked(&self, r: &crate::revocation::Revocation) {
        self.send(Cmd::RevocationsChanged(RevOp::Revoke(r.clone())));
    }

    /// A revocation was lifted here: share it.
    pub fn lifted(&self, username: &str) {
        self.send(Cmd::RevocationsChanged(RevOp::Lift(username.to_string())));
    }

    fn send(&self, c: Cmd) {
        if self.tx.try_send(c).is_err() {
            tracing::warn!(
                "cluster queue full: a revocation change is not shared until the next sync"
            );
        }
    }

    /// Every node's allocations, as `/api/v1/sessions` shows them.
    pub async fn sessions(&self) -> Result<Vec<serde_json::Value>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sessions(tx))
            .await
            .map_err(|_| UNREACHABLE.to_string())?;
        rx.await.map_err(|_| UNREACHABLE.to_string())?
    }

    /// End allocation `id` on `node` (its owner); whether it existed.
    pub async fn delete(&self, node: &str, id: u64) -> Result<bool, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Delete {
                node: node.to_string(),
                id,
                reply,
            })
            .await
            .map_err(|_| UNREACHABLE.to_string())?;
        rx.await.map_err(|_| UNREACHABLE.to_string())?
    }
}

/// This node's name: `cluster.node_id`, else the host name.
pub fn node_id(cfg: &Config) -> String {
    if !cfg.cluster.node_id.is_empty() {
        return cfg.cluster.node_id.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "turnpike".to_string())
}

/// The address other nodes send clients to: `cluster.advertise`, else
/// `relay.public_ip` (or the first UDP listener's IP) with the first UDP
/// listener's port. `None` when no such address is known (a wildcard
/// listener without `public_ip`): this node is then never an alternate.
pub fn advertised(cfg: &Config, handle: &ServerHandle) -> Option<SocketAddr> {
    if let Ok(a) = cfg.cluster.advertise.parse() {
        return Some(a);
    }
    let l = handle.local_addr(crate::config::Transport::Udp, false)?;
    let ip = cfg.relay.public_ip.unwrap_or(l.ip());
    (!ip.is_unspecified()).then_some(SocketAddr::new(ip, l.port()))
}

/// Where TLS clients are sent: the advertised IP with the first TLS
/// listener's port; `None` without a TLS listener.
pub fn advertised_tls(advertised: Option<SocketAddr>, handle: &ServerHandle) -> Option<SocketAddr> {
    let ip = advertised?.ip();
    let l = handle
        .local_addr(crate::config::Transport::Tls, false)
        .or_else(|| handle.local_addr(crate::config::Transport::Tls, true))?;
    Some(SocketAddr::new(ip, l.port()))
}

/// Start the cluster task on the current runtime when `cluster.redis_url`
/// is set (else nothing is shared: a node on its own). The link is put in
/// `handle`.
pub fn start(cfg: &Config, handle: &Arc<ServerHandle>) -> anyhow::Result<()> {
    let Some(url) = &cfg.cluster.redis_url else {
        return Ok(());
    };
    let ca = match &cfg.cluster.redis_ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cluster.redis_ca: {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let client = redis_io::client(url, cfg.cluster.redis_password.as_deref(), ca)
        .map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
    let Some(admits) = handle.take_admissions() else {
        return Ok(());
    };
    let (tx, cmds) = mpsc::channel(CMD_QUEUE);
    let up = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(AdmissionStats::default());
    handle.set_cluster(Link {
        tx,
        up: up.clone(),
        stats: stats.clone(),
    });
    let c = &cfg.cluster;
    let leases = Arc::new(Mutex::new(BTreeMap::new()));
    let (conn_tx, conn_rx) = tokio::sync::watch::channel(None);
    let admissions = redis_io::Admissions {
        handle: handle.clone(),
        node: handle.node_id().to_string(),
        prefix: c.key_prefix.clone(),
        budget: c.allocate_budget.0,
        ttl: c.lease_ttl.0,
        admits,
        conn: conn_rx,
        leases: leases.clone(),
        stats,
    };
    let task = redis_io::Task {
        client,
        handle: handle.clone(),
        node: handle.node_id().to_string(),
        prefix: c.key_prefix.clone(),
        advertise: advertised(cfg, handle),
        advertise_tls: advertised_tls(advertised(cfg, handle), handle),
        budget: c.allocate_budget.0,
        refresh: c.refresh_interval.0,
        ttl: c.lease_ttl.0,
        up,
        cmds,
        conn: conn_tx,
        pending: Vec::new(),
        leases,
        load: redis_io::LoadMeter::default(),
        last_fleet: None,
        replies: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    tracing::info!(
        node = %task.node,
        redis = %crate::config::mask_url_password(url),
        advertise = ?task.advertise,
        "cluster: sharing quotas, revocations, sessions and load through Redis"
    );
    tokio::spawn(admissions.run());
    tokio::spawn(task.run());
    Ok(())
}

/// How long to wait before the next connection attempt: doubling from
/// 100 ms up to 2 s.
fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Weight of a node with `allocations` of `max` (0: no limit) and a CPU
/// estimate `cpu` (0..1): its room, less as its CPU fills; 0 when full,
/// draining or without an address.
fn weight(l: &redis_io::Load) -> u32 {
    if l.draining || l.advertise.is_none() {
        return 0;
    }
    let room = if l.max_allocations == 0 {
        1000.0
    } else if l.allocations >= l.max_allocations {
        return 0;
    } else {
        1000.0 * (l.max_allocations - l.allocations) as f64 / l.max_allocations as f64
    };
    let cpu = l.cpu.clamp(0.0, 1.0);
    ((room * (1.0 - cpu)).round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(allocations: usize, max: usize, cpu: f64, draining: bool) -> redis_io::Load {
        redis_io::Load {
            node: "n".into(),
            advertise: Some("192.0.2.1:3478".parse().unwrap()),
            advertise_tls: None,
            allocations,
            max_allocations: max,
            bandwidth_bps: 0,
            cpu,
            draining,
        }
    }

    #[test]
    fn nodes_weigh_by_room_and_cpu_and_full_or_draining_ones_weigh_nothing() {
        assert_eq!(weight(&load(0, 10, 0.0, false)), 1000);
        assert_eq!(weight(&load(5, 10, 0.0, false)), 500);
        assert_eq!(weight(&load(5, 10, 0.5, false)), 250);
        assert_eq!(weight(&load(10, 10, 0.0, false)), 0, "full");
        assert_eq!(weight(&load(0, 10, 0.0, true)), 0, "draining");
        assert_eq!(weight(&load(3, 0, 0.0, false)), 1000, "no limit");
        assert_eq!(weight(&load(9, 10, 1.0, false)), 1, "busy but with room");
        let mut nowhere = load(0, 10, 0.0, false);
        nowhere.advertise = None;
        assert_eq!(weight(&nowhere), 0);
    }

    #[test]
    fn backoff_doubles_up_to_two_seconds() {
        assert_eq!(next_backoff(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            next_backoff(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(next_backoff(Duration::from_secs(2)), Duration::from_secs(2));
    }
}
