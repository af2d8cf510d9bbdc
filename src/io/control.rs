//! The control plane: what the HTTP API and signals ask of a running
//! server (sessions, deletion, drain, reload). Requests reach each shard
//! through its control queue and are served between packets; nothing here
//! touches the packet path.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{ServerHandle, setup};
use crate::config::Config;
use crate::tls;
use turnpike_proto::core::{CoreConfig, Credentials, SessionInfo};

/// A request to one shard.
pub(crate) enum Control {
    Config(Arc<CoreConfig>),
    Credentials(Arc<Credentials>),
    Sessions(oneshot::Sender<Vec<SessionInfo>>),
    Delete(u64, oneshot::Sender<bool>),
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
    fn broadcast(&self, make: impl Fn() -> Control) {
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
