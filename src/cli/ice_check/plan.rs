//! From arguments to a run: credentials (static, minted, or fetched), the
//! TURN and STUN servers resolved, the TLS settings, the agents'
//! configurations and the driver's options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rustls::pki_types::ServerName;

use super::args::{IceCheckArgs, Mode, ServerUrl, parse_host, resolve, split_host_port};
use super::fetch::fetch_credentials;
use turnpike::config::Transport;
use turnpike::ice::driver::{Hosts, Options, Side};
use turnpike::tls::ClientTrust;
use turnpike_proto::client::Credentials;
use turnpike_proto::ice::{AgentConfig, PathKind, Timing, TurnServer};

/// Everything resolved from the arguments.
pub(super) struct Plan {
    pub(super) servers: Vec<ServerUrl>,
    pub(super) turn: Vec<TurnServer>,
    pub(super) stun: Option<SocketAddr>,
    pub(super) sides: Vec<Side>,
    pub(super) names: Vec<&'static str>,
    pub(super) opts: Options,
}

pub(super) fn plan(a: &IceCheckArgs) -> Result<Plan> {
    if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
        bail!("--timeout: between 0 and 3600 seconds");
    }
    let ca = a.ca.clone();
    let insecure = a.insecure;
    let tls_cell: std::cell::OnceCell<Arc<rustls::ClientConfig>> = std::cell::OnceCell::new();
    let tls = || -> Result<Arc<rustls::ClientConfig>> {
        if let Some(c) = tls_cell.get() {
            return Ok(c.clone());
        }
        let c = tls_config(ca.as_ref(), insecure)?;
        Ok(tls_cell.get_or_init(|| c).clone())
    };
    let fetched = match (&a.credentials_url, &a.api_key) {
        (Some(url), Some(key)) => Some(fetch_credentials(url, key, &a.rest_user, &tls)?),
        _ => None,
    };
    let mut urls: Vec<String> = a.servers.clone();
    if urls.is_empty() {
        if let Some(f) = &fetched {
            urls = f
                .uris
                .iter()
                .filter(|u| u.starts_with("turn:") || u.starts_with("turns:"))
                .cloned()
                .collect();
        }
    }
    let servers: Vec<ServerUrl> = urls
        .iter()
        .map(|u| ServerUrl::parse(u).map_err(|e| anyhow!("--server {e}")))
        .collect::<Result<_>>()?;
    if servers.len() > 32 {
        bail!("--server: at most 32");
    }
    let creds = match (&a.user, &a.password, &a.secret, fetched) {
        (Some(u), Some(p), _, _) => Some(Credentials::new(u.clone(), p.clone())),
        (_, _, Some(s), _) => {
            turnpike::credentials::check_user(&a.rest_user)
                .map_err(|e| anyhow!("--rest-user: {e}"))?;
            let now = turnpike::clock::now().unix;
            Some(Credentials::rest(s, &a.rest_user, now + 3600))
        }
        (_, _, _, Some(f)) => Some(f.creds),
        _ => None,
    };
    let mut turn = Vec::new();
    for s in &servers {
        let creds = creds.clone().ok_or_else(|| {
            anyhow!("TURN servers need credentials: --user/--password, --secret, or --credentials-url/--api-key")
        })?;
        turn.push(TurnServer {
            addr: s.resolve()?,
            transport: s.transport,
            creds,
        });
    }
    let stun = if a.no_stun {
        None
    } else if let Some(s) = &a.stun {
        let s = s.strip_prefix("stun:").unwrap_or(s);
        let (h, p) = split_host_port(s, 3478).map_err(|e| anyhow!("--stun `{s}`: {e}"))?;
        Some(resolve(&h, p)?)
    } else {
        match servers.iter().find(|s| s.transport != Transport::Tls) {
            Some(s) => Some(resolve(&s.host, s.port)?),
            None => match servers.first() {
                Some(s) => Some(resolve(&s.host, 3478)?),
                None => None,
            },
        }
    };
    if turn.is_empty() && stun.is_none() && a.only != Some(PathKind::Host) {
        eprintln!("note: no --server and no --stun: only host candidates");
    }
    let hosts = if a.hosts.is_empty() {
        Hosts::Interfaces {
            loopback: a.loopback,
        }
    } else {
        Hosts::Given(
            a.hosts
                .iter()
                .map(|h| parse_host(h))
                .collect::<Result<_>>()?,
        )
    };
    let timing = Timing {
        pings: a.pings.min(10_000),
        ..Timing::default()
    };
    let needs_tls = servers.iter().any(|s| s.transport == Transport::Tls);
    let tls_cfg = if needs_tls {
        tls()?
    } else {
        // Never used; no need to read the system's roots.
        Arc::new(
            rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    };
    let tls_names: Vec<Option<ServerName<'static>>> =
        servers.iter().map(ServerUrl::tls_name).collect();
    let side = |controlling: bool, netns: &Option<String>| Side {
        config: AgentConfig {
            controlling,
            stun_server: stun,
            turn_servers: turn.clone(),
            timing,
            only: a.only,
        },
        hosts: hosts.clone(),
        netns: netns.clone(),
        seed: random_seed(),
        tls_names: tls_names.clone(),
    };
    let (sides, names) = match a.mode {
        None => (
            vec![side(true, &a.a_netns), side(false, &a.b_netns)],
            vec!["A", "B"],
        ),
        Some(Mode::Offer) => (vec![side(true, &a.a_netns)], vec!["A"]),
        Some(Mode::Answer) => (vec![side(false, &a.b_netns)], vec!["B"]),
    };
    let opts = Options {
        tls: tls_cfg,
        deadline: Duration::from_secs_f64(a.timeout),
        connect_timeout: timing.gather_timeout,
        linger: if a.mode.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        },
    };
    Ok(Plan {
        servers,
        turn,
        stun,
        sides,
        names,
        opts,
    })
}

/// TLS client settings: `--ca FILE` only, `--insecure`, or the system's
/// roots.
pub(super) fn tls_config(
    ca: Option<&PathBuf>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    let trust = match (insecure, ca) {
        (true, _) => ClientTrust::AnyCertificate,
        (false, Some(path)) => ClientTrust::CaFile(path),
        (false, None) => ClientTrust::SystemRoots,
    };
    turnpike::tls::client_config(trust).map_err(|e| anyhow!("--ca {e}"))
}

pub(super) fn random_seed() -> u64 {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_next_u64().expect("OS randomness")
}
