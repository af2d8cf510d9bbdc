//! The control plane: what the HTTP API and signals ask of a running
//! server (sessions, deletion, drain, reload). Requests reach each shard
//! through its control queue and are served between packets; nothing here
//! touches the packet path.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{ServerHandle, setup};
use crate::config::Config;
use crate::revocation::{self, Revocation, RevokeError};
use crate::tls;
use turnpike_proto::core::{Admission, CoreConfig, Credentials, Fleet, Revocations, SessionInfo};

/// A request to one shard.
pub(crate) enum Control {
    Config(Arc<CoreConfig>),
    Credentials(Arc<Credentials>),
    /// The revocation set now in force; the shard answers how many
    /// allocations it ended.
    Revocations(Arc<Revocations>, oneshot::Sender<usize>),
    Sessions(oneshot::Sender<Vec<SessionInfo>>),
    Delete(u64, oneshot::Sender<bool>),
    /// The XDP fast path was attached (true) or detached (issue 15).
    Fastpath(bool),
    /// Issue 14: what the cluster task knows of the fleet, and its answer
    /// to an admission question.
    Fleet(Arc<Fleet>),
    Admitted(u64, Admission),
}

/// Why a reload was refused (the old configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] super::StartError),
    #[error("listen[{index}]: {error}")]
    Tls { index: usize, error: tls::TlsError },
}

impl ServerHandle {
    pub(super) fn broadcast(&self, make: impl Fn() -> Control) {
        for c in &self.control {
            let _ = c.send(make());
        }
    }

    /// Every allocation, across shards, by id.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let mut waits = Vec::new();
        for c in &self.control {
            let (tx, rx) = oneshot::channel();
            if c.send(Control::Sessions(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let mut all = Vec::new();
        for w in waits {
            if let Ok(mut v) = w.await {
                all.append(&mut v);
            }
        }
        all.sort_by_key(|s| s.id);
        all
    }

    /// End one allocation (admin); false if no shard has it.
    pub async fn delete_session(&self, id: u64) -> bool {
        let mut waits = Vec::new();
        for c in &self.control {
            let (tx, rx) = oneshot::channel();
            if c.send(Control::Delete(id, tx)).is_ok() {
                waits.push(rx);
            }
        }
        let mut found = false;
        for w in waits {
            found |= w.await.unwrap_or(false);
        }
        found
    }

    /// Revoke `username` (checked here) until `until` (issue 14), at Unix
    /// time `now`, and push the new set into every shard, which ends the
    /// allocations it revokes at once. Answers once every shard has applied
    /// it (or a second has passed): the stored revocation, whether it is
    /// new, and how many allocations ended.
    pub async fn revoke(
        &self,
        username: &str,
        until: Option<u64>,
        now: u64,
    ) -> Result<(Revocation, bool, usize), RevokeError> {
        revocation::check_name(username)?;
        let static_user = self.current_credentials().has_user(username);
        let until = revocation::effective_until(username, until, now, static_user)?;
        let (stored, waits) = {
            let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
            let stored = store.revoke(username, until, now)?;
            // Pushed under the lock: shards see the sets in store order.
            (stored, self.push_revocations(&store))
        };
        let ended = Self::applied(waits).await;
        if let Some(c) = self.cluster.get() {
            c.revoked(&stored.0);
        }
        tracing::info!(
            user = %super::log_safe(username),
            until = ?until,
            ended,
            "credential revoked"
        );
        Ok((stored.0, stored.1, ended))
    }

    /// Lift the revocation of `username`; false if none is in force.
    pub async fn lift_revocation(&self, username: &str, now: u64) -> bool {
        let waits = {
            let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
            if !store.lift(username, now) {
                return false;
            }
            self.push_revocations(&store)
        };
        Self::applied(waits).await;
        if let Some(c) = self.cluster.get() {
            c.lifted(username);
        }
        tracing::info!(user = %super::log_safe(username), "revocation lifted");
        true
    }

    /// The revocations in force at `now`, by name.
    pub fn revocations(&self, now: u64) -> Vec<Revocation> {
        self.revocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list(now)
    }

    /// How many revocations are in force at `now`.
    pub fn revocation_count(&self, now: u64) -> usize {
        self.revocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active(now)
    }

    fn push_revocations(
        &self,
        store: &revocation::RevocationStore,
    ) -> Vec<oneshot::Receiver<usize>> {
        let set = Arc::new(store.to_core());
        let mut waits = Vec::new();
        for c in &self.control {
            let (tx, rx) = oneshot::channel();
            if c.send(Control::Revocations(set.clone(), tx)).is_ok() {
                waits.push(rx);
            }
        }
        waits
    }

    /// Wait (at most a second) for the shards to apply a revocation set;
    /// how many allocations they ended.
    async fn applied(waits: Vec<oneshot::Receiver<usize>>) -> usize {
        let all = async {
            let mut ended = 0;
            for w in waits {
                ended += w.await.unwrap_or(0);
            }
            ended
        };
        match tokio::time::timeout(std::time::Duration::from_secs(1), all).await {
            Ok(n) => n,
            Err(_) => {
                tracing::warn!("a shard took over a second to apply the revocations");
                0
            }
        }
    }

    /// This node's name in the fleet (`cluster.node_id`, else the host
    /// name).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster, when `[cluster] redis_url` is set.
    pub fn cluster(&self) -> Option<&crate::cluster::Link> {
        self.cluster.get()
    }

    pub(crate) fn set_cluster(&self, link: crate::cluster::Link) {
        let _ = self.cluster.set(link);
    }

    /// The shards' admission questions (once: the cluster task owns them).
    pub(crate) fn take_admissions(&self) -> Option<mpsc::Receiver<crate::cluster::FromShard>> {
        self.admissions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Answer shard `shard`'s admission question `ticket`.
    pub(crate) fn admitted(&self, shard: usize, ticket: u64, verdict: Admission) {
        if let Some(c) = self.control.get(shard) {
            let _ = c.send(Control::Admitted(ticket, verdict));
        }
    }

    /// Push what the cluster knows of the fleet into every shard.
    pub(crate) fn set_fleet(&self, f: Arc<Fleet>) {
        self.broadcast(|| Control::Fleet(f.clone()));
    }

    /// Make the cluster's revocation set this node's (issue 14): pushed
    /// into every shard when it changed, which ends what it revokes.
    pub(crate) async fn replace_revocations(&self, list: Vec<Revocation>, now: u64) {
        let waits = {
            let mut store = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
            store.prune(now);
            if !store.replace(list) {
                return;
            }
            self.push_revocations(&store)
        };
        let ended = Self::applied(waits).await;
        tracing::info!(ended, "revocations synced from the cluster");
    }

    /// `policy.max_allocations_per_user` in force (the cluster-wide quota
    /// with a cluster; 0: none).
    pub fn max_allocations_per_user(&self) -> usize {
        self.core_cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_allocations_per_user
    }

    /// `policy.max_allocations` in force (0: none).
    pub fn max_allocations(&self) -> usize {
        self.core_cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_allocations
    }

    pub fn is_draining(&self) -> bool {
        self.core_cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .draining
    }

    /// Start (or stop) draining: new Allocates are turned away (300 with
    /// ALTERNATE-SERVER if configured, else 486); live allocations keep
    /// relaying.
    pub fn set_draining(&self, on: bool) {
        let mut cur = self.core_cfg.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = (**cur).clone();
        c.draining = on;
        let c = Arc::new(c);
        *cur = c.clone();
        drop(cur);
        self.broadcast(|| Control::Config(c.clone()));
    }

    /// Apply a new configuration: credentials and secrets, peer policy,
    /// quotas, lifetimes, TLS certificates. Everything is loaded and
    /// checked first; on any error nothing changes. Returns notes about
    /// settings that need a restart to take effect.
    pub fn reload(&self, new: &Config) -> Result<Vec<String>, ReloadError> {
        new.validate("<reload>")?;
        // As at start: a relay address this host cannot bind would turn
        // every new Allocate into 508.
        setup::check_relay_addresses(new)?;
        let creds = Arc::new(setup::credentials(new)?);
        let mut certs = Vec::new();
        for (index, resolver) in &self.certs {
            let Some(l) = new.listen.get(*index) else {
                continue;
            };
            if let (Some(c), Some(k)) = (&l.cert, &l.key) {
                let ck = tls::load_certified_key(c, k).map_err(|error| ReloadError::Tls {
                    index: *index,
                    error,
                })?;
                certs.push((resolver.clone(), ck));
            }
        }
        let mut core = setup::core_config(new);
        // Listeners and the relay port range stay as started (both need a
        // restart), so the own-address rule keeps judging by them.
        let own = core.policy.own_mut();
        own.add_listener_ports(
            self.listeners
                .iter()
                .filter(|l| l.transport == crate::config::Transport::Udp)
                .map(|l| l.addr.port()),
        );
        let ports = self.start_cfg.relay.ports;
        own.set_relay_ports((ports.low, ports.high));
        setup::warn_dangerous_allow_peers(&core);
        let mut notes = Vec::new();
        {
            let mut cur = self.core_cfg.lock().unwrap_or_else(|e| e.into_inner());
            core.draining = cur.draining;
            let core = Arc::new(core);
            *cur = core.clone();
            self.broadcast(|| Control::Config(core.clone()));
        }
        self.broadcast(|| Control::Credentials(creds.clone()));
        *self.creds.lock().unwrap_or_else(|e| e.into_inner()) = creds;
        self.reload_fastpath(&new.fastpath)?;
        for (resolver, ck) in certs {
            resolver.replace(ck);
        }
        self.gate
            .set_limits(super::gate::ConnLimits::of(&new.limits));
        let started = &self.start_cfg;
        if started.listen != new.listen {
            notes.push("listen: listener changes take effect after a restart".to_string());
        }
        if started.relay.ports != new.relay.ports {
            notes.push("relay.ports: a new port range takes effect after a restart".to_string());
        }
        if started.cluster != new.cluster {
            notes.push("cluster: takes effect after a restart".to_string());
        }
        if started.server.threads != new.server.threads {
            notes.push("server.threads: takes effect after a restart".to_string());
        }
        if started.server.udp_gso != new.server.udp_gso {
            notes.push("server.udp_gso: takes effect after a restart".to_string());
        }
        if started.log.format != new.log.format {
            notes.push(
                "log.format: takes effect after a restart (--log-format overrides it)".to_string(),
            );
        }
        if started.http != new.http {
            notes.push("http: the HTTP listener keeps its address and TLS until a restart; keys, TTL, CORS and alternates apply now".to_string());
        }
        Ok(notes)
    }
}
