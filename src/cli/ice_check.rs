//! `turnpike ice-check`: run ICE agents against TURN servers and report
//! which kinds of path work (host, server-reflexive, relayed), with
//! round-trip times, as a table or as one JSON document.
//!
//! Without a mode both agents run in this process: A (controlling) and B
//! (controlled), optionally each in its own network namespace. `offer` and
//! `answer` run one agent each, in two processes (two machines), which
//! swap one-line descriptions through stdout and stdin.
//!
//! Exit status: 0 when the expectations hold (`--expect KIND`, or with
//! none: at least one pair succeeded), 1 when they do not, 2 when the
//! check could not run (bad arguments, credentials, sockets).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::ServerName;
use serde::Serialize;

use turnpike::config::Transport;
use turnpike::ice::driver::{Driver, Exchange, Hosts, Observer, Options, Outcome, Side};
use turnpike_proto::client::Credentials;
use turnpike_proto::ice::agent::{Failure, PairReport};
use turnpike_proto::ice::{
    Agent, AgentConfig, Description, Event, Kind, PathKind, Report, Timing, TurnServer,
};

/// How the two agents meet.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Run agent A (controlling): print this side's description on
    /// stdout, read the answer's from stdin.
    Offer,
    /// Run agent B (controlled): read the offer's description from stdin,
    /// print this side's on stdout.
    Answer,
}

/// The arguments of `turnpike ice-check` (its help text is on the
/// subcommand in main.rs).
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  turnpike ice-check --server turn:turn.example.org --secret S
  turnpike ice-check --server 'turn:turn.example.org:3478?transport=tcp' \\
      --server turns:turn.example.org:5349 --user U --password P --only relay --expect relay
  turnpike ice-check --credentials-url https://turn.example.org:9641/api/v1/credentials --api-key K
  turnpike ice-check offer --server turn:turn.example.org --secret S    # machine 1
  turnpike ice-check answer --server turn:turn.example.org --secret S   # machine 2")]
pub(crate) struct IceCheckArgs {
    /// offer or answer: run one agent and swap descriptions with another
    /// ice-check through stdout/stdin (offer runs agent A, answer agent
    /// B). Without it, both agents run here.
    #[arg(value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// A TURN server: turn:HOST[:PORT][?transport=udp|tcp] (port 3478) or
    /// turns:HOST[:PORT] (TLS, port 5349). Repeat for more relays.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Static TURN user (with --password).
    #[arg(long, requires = "password", conflicts_with_all = ["secret", "credentials_url"])]
    pub user: Option<String>,
    /// The static user's password.
    #[arg(long, requires = "user")]
    pub password: Option<String>,
    /// Mint a TURN REST credential locally from this shared secret.
    #[arg(long, conflicts_with = "credentials_url")]
    pub secret: Option<String>,
    /// Fetch a credential from turnpike's HTTP API (GET
    /// /api/v1/credentials); its turn URIs are used when no --server is
    /// given.
    #[arg(long, value_name = "URL", requires = "api_key")]
    pub credentials_url: Option<String>,
    /// API key for --credentials-url (sent as Authorization: Bearer).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The user name inside REST credentials (--secret, --credentials-url).
    #[arg(long, value_name = "NAME", default_value = "ice-check")]
    pub rest_user: String,
    /// STUN server for server-reflexive candidates, over UDP. Defaults to
    /// the first turn: server's HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub stun: Option<String>,
    /// Gather no server-reflexive candidates.
    #[arg(long, conflicts_with = "stun")]
    pub no_stun: bool,
    /// A host candidate address to bind, IP or IP:PORT (repeatable).
    /// Default: every address of every interface that is up, loopback
    /// only if there is nothing else.
    #[arg(long = "host", value_name = "ADDR")]
    pub hosts: Vec<String>,
    /// With the default host addresses, include loopback ones.
    #[arg(long)]
    pub loopback: bool,
    /// Create agent A's sockets in this network namespace (ip netns).
    #[arg(long, value_name = "NAME")]
    pub a_netns: Option<String>,
    /// Create agent B's sockets in this network namespace (ip netns).
    #[arg(long, value_name = "NAME")]
    pub b_netns: Option<String>,
    /// Only form pairs of this path kind: host, srflx or relay.
    #[arg(long, value_name = "KIND")]
    pub only: Option<PathKind>,
    /// Fail unless a pair of this path kind (host, srflx, relay)
    /// succeeded (repeatable).
    #[arg(long = "expect", value_name = "KIND")]
    pub expect: Vec<PathKind>,
    /// Packets sent on every pair that works, to measure round trips.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub pings: u32,
    /// Give up after this many seconds (in offer/answer mode: for the
    /// other side's description, then again for the checks).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Trust only the certificates in this PEM file for turns: servers
    /// and an https credentials URL (instead of the system's roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Do not verify TLS certificates.
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A parsed `turn:`/`turns:` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl ServerUrl {
    /// `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT][?transport=tcp]`
    /// (RFC 7065); HOST may be `[v6]`.
    pub(crate) fn parse(s: &str) -> Result<ServerUrl, String> {
        let bad = |why: &str| format!("`{s}`: {why}");
        let (tls, rest) = if let Some(r) = s.strip_prefix("turns:") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("turn:") {
            (false, r)
        } else {
            return Err(bad("expected turn:HOST[:PORT] or turns:HOST[:PORT]"));
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let mut transport = if tls { Transport::Tls } else { Transport::Udp };
        if let Some(q) = query {
            for kv in q.split('&') {
                match kv.split_once('=') {
                    Some(("transport", "udp")) if !tls => transport = Transport::Udp,
                    Some(("transport", "tcp")) => {
                        transport = if tls { Transport::Tls } else { Transport::Tcp }
                    }
                    Some(("transport", "udp")) => {
                        return Err(bad("turns: over UDP (DTLS) is not supported"));
                    }
                    Some(("transport", t)) => {
                        return Err(bad(&format!("unknown transport `{t}` (udp or tcp)")));
                    }
                    _ => return Err(bad(&format!("unknown parameter `{kv}`"))),
                }
            }
        }
        let default_port = if tls { 5349 } else { 3478 };
        let (host, port) = split_host_port(hostport, default_port).map_err(|e| bad(&e))?;
        Ok(ServerUrl {
            host,
            port,
            transport,
        })
    }

    fn resolve(&self) -> Result<SocketAddr> {
        resolve(&self.host, self.port)
    }

    fn tls_name(&self) -> Option<ServerName<'static>> {
        if self.transport != Transport::Tls {
            return None;
        }
        server_name(&self.host)
    }

    /// The canonical URL.
    pub(crate) fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.transport {
            Transport::Udp => format!("turn:{host}:{}?transport=udp", self.port),
            Transport::Tcp => format!("turn:{host}:{}?transport=tcp", self.port),
            Transport::Tls => format!("turns:{host}:{}?transport=tcp", self.port),
        }
    }
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_string()).ok(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `1.2.3.4:port`.
fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port `{p}`"));
    if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unclosed `[`")?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((h.to_string(), port(p)?)),
            None if after.is_empty() => Ok((h.to_string(), default_port)),
            None => Err(format!("unexpected `{after}`")),
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), default_port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_string(), port(p)?)),
        Some(_) => Err("no host".into()),
        None if s.is_empty() => Err("no host".into()),
        None => Ok((s.to_string(), default_port)),
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    // IPv4 first: relays are most often IPv4-only.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{host}: no address"))
}

/// What `--credentials-url` answered.
#[derive(Clone, Debug)]
struct Fetched {
    creds: Credentials,
    uris: Vec<String>,
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET the credentials API (plain HTTP, or HTTPS with the run's TLS
/// settings) with [`turnpike::http_client`]: one request, bounded in time
/// and size.
fn fetch_credentials(
    url: &str,
    key: &str,
    user: &str,
    tls: &dyn Fn() -> Result<Arc<rustls::ClientConfig>>,
) -> Result<Fetched> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        bail!("--credentials-url `{url}`: expected http://HOST[:PORT]/PATH or https://…");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/api/v1/credentials"),
    };
    split_host_port(authority, if scheme == "https" { 443 } else { 80 })
        .map_err(|e| anyhow!("--credentials-url `{url}`: {e}"))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let target = format!(
        "{scheme}://{authority}{path}{sep}username={}",
        percent_encode(user)
    );
    let client = turnpike::http_client::HttpClient::new(
        if scheme == "https" {
            Some(tls()?)
        } else {
            None
        },
        Duration::from_secs(10),
    );
    let bearer = format!("Bearer {key}");
    let response = client
        .get(
            &target,
            &[
                ("Authorization", &bearer),
                ("Accept", "application/json"),
                ("User-Agent", "turnpike-ice-check"),
            ],
        )
        .map_err(|e| anyhow!("--credentials-url: {authority}: {e}"))?;
    let status = response.status;
    let v: serde_json::Value = match serde_json::from_slice(&response.body) {
        Ok(v) => v,
        Err(_) if status != 200 => {
            bail!("--credentials-url: HTTP {status}")
        }
        Err(e) => bail!("--credentials-url: the answer is not JSON: {e}"),
    };
    if status != 200 {
        let msg = v["message"].as_str().unwrap_or("");
        bail!("--credentials-url: HTTP {status}: {msg}");
    }
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("--credentials-url: the answer has no `{k}`"))
    };
    let creds = Credentials::new(field("username")?, field("password")?);
    let uris = v["uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Fetched { creds, uris })
}

/// TLS client settings: `--ca FILE` only, `--insecure`, or the system's
/// roots.
fn tls_config(ca: Option<&PathBuf>, insecure: bool) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
        .with_safe_default_protocol_versions()?;
    let cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(turnpike::tls::accept_any_certificate())
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?;
                let mut n = 0;
                for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                    roots
                        .add(c.with_context(|| format!("--ca {}", path.display()))?)
                        .with_context(|| format!("--ca {}", path.display()))?;
                    n += 1;
                }
                if n == 0 {
                    bail!("--ca {}: no PEM certificate in it", path.display());
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

fn parse_host(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (h, p) = split_host_port(s, 0).map_err(|e| anyhow!("--host `{s}`: {e}"))?;
    let ip: IpAddr = h
        .parse()
        .map_err(|_| anyhow!("--host `{s}`: expected an IP address or IP:PORT"))?;
    Ok(SocketAddr::new(ip, p))
}

fn random_seed() -> u64 {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_next_u64().expect("OS randomness")
}

/// Everything resolved from the arguments.
struct Plan {
    servers: Vec<ServerUrl>,
    turn: Vec<TurnServer>,
    stun: Option<SocketAddr>,
    sides: Vec<Side>,
    names: Vec<&'static str>,
    opts: Options,
}

fn plan(a: &IceCheckArgs) -> Result<Plan> {
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

/// The answer to "does this kind of path work?", for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    pub host: bool,
    pub srflx: bool,
    pub relay: bool,
    pub expectations_met: bool,
}

impl Verdict {
    /// A kind works when every agent that ran has a succeeded pair of it
    /// (in one process both sides must agree; in offer/answer mode this
    /// side's view is what there is).
    pub(crate) fn of(reports: &[Report], expect: &[PathKind]) -> Verdict {
        let works = |k: PathKind| !reports.is_empty() && reports.iter().all(|r| r.path_works(k));
        let (host, srflx, relay) = (
            works(PathKind::Host),
            works(PathKind::Srflx),
            works(PathKind::Relay),
        );
        let expectations_met = if expect.is_empty() {
            host || srflx || relay
        } else {
            expect.iter().all(|&k| works(k))
        };
        Verdict {
            host,
            srflx,
            relay,
            expectations_met,
        }
    }

    pub(crate) fn works(&self, k: PathKind) -> bool {
        match k {
            PathKind::Host => self.host,
            PathKind::Srflx => self.srflx,
            PathKind::Relay => self.relay,
        }
    }
}

/// Progress on stderr: timestamped lines, or on a terminal the same
/// lines (without times) under a spinner line that shows each agent's
/// phase.
struct Progress {
    start: Instant,
    tty: bool,
    names: Vec<&'static str>,
    spin: usize,
    status_shown: bool,
    /// No spinner while this side waits for the other's description (a
    /// person may be pasting it on this terminal).
    paused: bool,
}

impl Progress {
    fn line(&mut self, who: usize, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            if self.status_shown {
                let _ = write!(err, "\r\x1b[2K");
                self.status_shown = false;
            }
            let _ = writeln!(err, "{} {text}", self.names[who]);
        } else {
            let t = self.start.elapsed().as_secs_f64();
            let _ = writeln!(err, "[{t:7.3}s] {} {text}", self.names[who]);
        }
    }

    fn phase(a: &Agent) -> String {
        if a.is_done() {
            return "done".into();
        }
        if !a.gathering_done() {
            return "gathering".into();
        }
        let r = a.report();
        if r.pairs.is_empty() {
            return "waiting for the other side".into();
        }
        let finished = r
            .pairs
            .iter()
            .filter(|p| p.state == "succeeded" || p.state == "failed")
            .count();
        if finished == r.pairs.len() {
            "measuring".into()
        } else {
            format!("checking {finished}/{}", r.pairs.len())
        }
    }
}

fn cand_text(c: &turnpike_proto::ice::agent::CandidateInfo) -> String {
    match c.via {
        Some(v) => format!("{}/{v} {}", c.kind, c.addr),
        None => format!("{}/udp {}", c.kind, c.addr),
    }
}

fn state_text(p: &PairReport) -> String {
    match &p.failure {
        Some(f) => format!("failed: {}", failure_text(f)),
        None => p.state.clone(),
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Timeout => "timeout".into(),
        Failure::Error(c) => c.to_string(),
        Failure::Unreachable(w) => format!("unreachable ({w})"),
    }
}

impl Observer for Progress {
    fn event(&mut self, side: usize, agent: &Agent, event: &Event) {
        match event {
            Event::Candidate(c) => {
                let text = match (c.kind, c.via) {
                    (Kind::Relay, Some(v)) => {
                        format!("candidate relay {} (TURN over {v})", c.addr)
                    }
                    (k, _) => format!("candidate {k} {}", c.addr),
                };
                self.line(side, &text);
            }
            Event::GatherFailed { what, failure } => {
                self.line(
                    side,
                    &format!("gathering failed: {what}: {}", failure_text(failure)),
                );
            }
            Event::GatheringDone => {
                let r = agent.report();
                self.line(
                    side,
                    &format!(
                        "gathering done: {} candidate(s), {} failure(s)",
                        r.candidates.len(),
                        r.gathering_failures.len()
                    ),
                );
            }
            Event::PairDone { pair } => {
                if let Some(p) = agent.report().pairs.get(*pair) {
                    self.line(
                        side,
                        &format!(
                            "pair #{} {}: {} -> {}: {}",
                            p.id,
                            p.path.as_str(),
                            cand_text(&p.local),
                            cand_text(&p.remote),
                            state_text(p),
                        ),
                    );
                }
            }
            Event::Nominated { pair } => {
                if let Some(p) = agent.report().pairs.get(*pair) {
                    self.line(
                        side,
                        &format!(
                            "nominated pair #{} {}: {} -> {}",
                            p.id,
                            p.path.as_str(),
                            cand_text(&p.local),
                            cand_text(&p.remote)
                        ),
                    );
                }
            }
            Event::Done => self.line(side, "done"),
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        self.tty.then_some(Duration::from_millis(100))
    }

    fn tick(&mut self, agents: &[&Agent]) {
        if self.paused {
            return;
        }
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        self.spin = (self.spin + 1) % FRAMES.len();
        let parts: Vec<String> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}: {}", self.names[i], Self::phase(a)))
            .collect();
        let t = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} {t:4.1}s  {}",
            FRAMES[self.spin],
            parts.join("  |  ")
        );
        let _ = err.flush();
        self.status_shown = true;
    }

    fn remote_arrived(&mut self) {
        self.paused = false;
        self.line(0, "got the other side's description");
    }
}

impl Progress {
    fn finish(&mut self) {
        if self.tty && self.status_shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.status_shown = false;
        }
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const KINDS: [PathKind; 3] = [PathKind::Host, PathKind::Srflx, PathKind::Relay];

/// The human-readable result.
pub(crate) fn render_table(
    names: &[&str],
    outcome: &Outcome,
    verdict: &Verdict,
    expect: &[PathKind],
) -> String {
    let mut out = String::new();
    for (i, r) in outcome.reports.iter().enumerate() {
        out.push_str(&format!(
            "{} ({}): {} candidates, {} pairs{}\n",
            names[i],
            r.role,
            r.candidates.len(),
            r.pairs.len(),
            if outcome.finished[i] {
                ""
            } else {
                " (not finished)"
            }
        ));
        for g in &r.gathering_failures {
            out.push_str(&format!(
                "  gathering failed: {}: {}\n",
                g.what,
                failure_text(&g.failure)
            ));
        }
        if r.pairs.is_empty() {
            out.push_str("  (no pairs)\n\n");
            continue;
        }
        let mut rows = vec![
            [
                "", "local", "remote", "state", "p50 ms", "p90 ms", "p99 ms", "max ms", "loss",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut pairs: Vec<&PairReport> = r.pairs.iter().collect();
        pairs.sort_by_key(|p| (p.path, p.id));
        for p in pairs {
            let rtt = &p.rtt;
            let loss = if rtt.sent == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", rtt.loss_pct)
            };
            rows.push(vec![
                if p.nominated { "*" } else { "" }.to_string(),
                cand_text(&p.local),
                cand_text(&p.remote),
                state_text(p),
                ms(rtt.p50_ms),
                ms(rtt.p90_ms),
                ms(rtt.p99_ms),
                ms(rtt.max_ms),
                loss,
            ]);
        }
        for line in columns(&rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    for k in KINDS {
        let per: Vec<String> = outcome
            .reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let of: Vec<&PairReport> = r.pairs.iter().filter(|p| p.path == k).collect();
                let ok = of.iter().filter(|p| p.state == "succeeded").count();
                format!("{} {ok}/{}", names[i], of.len())
            })
            .collect();
        let tried = outcome
            .reports
            .iter()
            .any(|r| r.pairs.iter().any(|p| p.path == k));
        // Gathering that failed for this kind (a relay that could not be
        // allocated is a failing relay path, not an untested one).
        let prefix = match k {
            PathKind::Host => None,
            PathKind::Srflx => Some("srflx "),
            PathKind::Relay => Some("relay "),
        };
        let mut gather: Vec<String> = Vec::new();
        for r in &outcome.reports {
            for g in &r.gathering_failures {
                if prefix.is_some_and(|p| g.what.starts_with(p)) {
                    let t = failure_text(&g.failure);
                    if !gather.contains(&t) {
                        gather.push(t);
                    }
                }
            }
        }
        let word = if verdict.works(k) {
            "works"
        } else if tried || !gather.is_empty() {
            "FAILS"
        } else {
            "not tested"
        };
        let mut vias: Vec<Transport> = Vec::new();
        if k == PathKind::Relay {
            for r in &outcome.reports {
                for p in r
                    .pairs
                    .iter()
                    .filter(|p| p.state == "succeeded" && p.path == k)
                {
                    for v in [p.local.via, p.remote.via].into_iter().flatten() {
                        if !vias.contains(&v) {
                            vias.push(v);
                        }
                    }
                }
            }
            vias.sort_by_key(|v| v.as_str());
        }
        let via = if vias.is_empty() {
            String::new()
        } else {
            format!(
                "; TURN over {}",
                vias.iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let gathered = if gather.is_empty() {
            String::new()
        } else {
            format!("; gathering failed: {}", gather.join(", "))
        };
        out.push_str(&format!(
            "{:<6} {:<10} ({} pairs succeeded{via}{gathered})\n",
            k.as_str(),
            word,
            per.join(", ")
        ));
    }
    if outcome.timed_out {
        out.push_str("the run hit --timeout before every agent finished\n");
    }
    if outcome.interrupted {
        out.push_str("interrupted before every agent finished\n");
    }
    if let Some(e) = &outcome.remote_error {
        out.push_str(&format!("no description from the other side: {e}\n"));
    }
    let exp = if expect.is_empty() {
        "some pair succeeded".to_string()
    } else {
        format!(
            "expected {}",
            expect
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    out.push_str(&if verdict.expectations_met {
        format!("OK: {exp}\n")
    } else {
        format!("FAILED: {exp}\n")
    });
    out
}

/// What was run, for the JSON document.
pub(crate) struct RunInfo<'a> {
    pub mode: Option<Mode>,
    pub servers: &'a [ServerUrl],
    pub turn: &'a [TurnServer],
    pub stun: Option<SocketAddr>,
    pub names: &'a [&'a str],
    pub netns: &'a [Option<String>],
    pub expect: &'a [PathKind],
}

/// The JSON document (`--json`), version 1. Stable for scripts: fields
/// are only ever added. Agents are `a` (controlling) and `b`
/// (controlled); offer mode has only `a`, answer mode only `b`.
#[derive(Serialize)]
pub(crate) struct JsonDoc<'a> {
    pub version: u32,
    /// local, offer or answer.
    pub mode: &'static str,
    pub servers: Vec<JsonServer>,
    pub stun: Option<SocketAddr>,
    pub expect: &'a [PathKind],
    /// The run hit --timeout before every agent finished.
    pub timed_out: bool,
    /// Ctrl-C ended the run.
    pub interrupted: bool,
    /// Offer/answer mode: why the other side's description never came.
    pub remote_error: Option<&'a str>,
    pub elapsed_ms: f64,
    pub agents: std::collections::BTreeMap<String, JsonAgent<'a>>,
    pub verdict: Verdict,
}

#[derive(Serialize)]
pub(crate) struct JsonServer {
    pub url: String,
    pub addr: SocketAddr,
    pub transport: Transport,
}

#[derive(Serialize)]
pub(crate) struct JsonAgent<'a> {
    pub netns: Option<&'a str>,
    /// The agent finished its checks and measurements in time.
    pub finished: bool,
    pub host_sockets: &'a [SocketAddr],
    #[serde(flatten)]
    pub report: &'a Report,
}

pub(crate) fn render_json<'a>(
    run: &RunInfo<'a>,
    outcome: &'a Outcome,
    verdict: &Verdict,
) -> JsonDoc<'a> {
    let agents = outcome
        .reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                run.names[i].to_ascii_lowercase(),
                JsonAgent {
                    netns: run.netns[i].as_deref(),
                    finished: outcome.finished[i],
                    host_sockets: &outcome.hosts[i],
                    report: r,
                },
            )
        })
        .collect();
    JsonDoc {
        version: 1,
        mode: match run.mode {
            None => "local",
            Some(Mode::Offer) => "offer",
            Some(Mode::Answer) => "answer",
        },
        servers: run
            .servers
            .iter()
            .zip(run.turn)
            .map(|(u, t)| JsonServer {
                url: u.url(),
                addr: t.addr,
                transport: t.transport,
            })
            .collect(),
        stun: run.stun,
        expect: run.expect,
        timed_out: outcome.timed_out,
        interrupted: outcome.interrupted,
        remote_error: outcome.remote_error.as_deref(),
        elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        agents,
        verdict: *verdict,
    }
}

/// Read the other side's one-line description from stdin, on a thread of
/// its own (a blocked read must not hold the process open at exit).
fn read_remote() -> tokio::sync::mpsc::Receiver<Result<Description, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        let r = loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) => break Err("stdin ended before the other side's description".to_string()),
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => break Description::from_blob(line.trim()),
                Err(e) => break Err(format!("reading stdin: {e}")),
            }
        };
        let _ = tx.blocking_send(r);
    });
    rx
}

/// `turnpike ice-check`.
pub(crate) fn main(args: IceCheckArgs) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: IceCheckArgs) -> Result<bool> {
    let plan = plan(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let netns: Vec<Option<String>> = plan.sides.iter().map(|s| s.netns.clone()).collect();
    let tty = std::io::stderr().is_terminal();
    let mut progress = Progress {
        start: turnpike::clock::instant(),
        tty,
        names: plan.names.clone(),
        spin: 0,
        status_shown: false,
        paused: a.mode.is_some(),
    };
    let names = plan.names.clone();
    let outcome = rt.block_on(async {
        let mut driver = Driver::start(plan.sides, plan.opts).context("opening sockets")?;
        let exchange = match a.mode {
            None => Exchange::Local,
            Some(_) => Exchange::Remote {
                publish: Box::new(move |d: &Description| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", d.to_blob());
                    let _ = out.flush();
                    if std::io::stdin().is_terminal() {
                        eprintln!(
                            "give the line above to the other side's ice-check; paste its line (tpice1.…) here and press Enter:"
                        );
                    }
                }),
                incoming: read_remote(),
            },
        };
        // Ctrl-C ends the run with what there is (and the allocations
        // deleted), not the process.
        let mut sigint =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("installing the SIGINT handler")?;
        let stop = async move {
            sigint.recv().await;
        };
        anyhow::Ok(driver.run(exchange, &mut progress, stop).await)
    })?;
    progress.finish();
    let verdict = Verdict::of(&outcome.reports, &a.expect);
    let mut out = std::io::stdout().lock();
    if a.json {
        let info = RunInfo {
            mode: a.mode,
            servers: &plan.servers,
            turn: &plan.turn,
            stun: plan.stun,
            names: &names,
            netns: &netns,
            expect: &a.expect,
        };
        let v = render_json(&info, &outcome, &verdict);
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(
            out,
            "{}",
            render_table(&names, &outcome, &verdict, &a.expect)
        )?;
    }
    out.flush()?;
    Ok(verdict.expectations_met)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let p = |s: &str| ServerUrl::parse(s);
        assert_eq!(
            p("turn:example.org").unwrap(),
            ServerUrl {
                host: "example.org".into(),
                port: 3478,
                transport: Transport::Udp
            }
        );
        assert_eq!(
            p("turn:10.0.0.1:3479?transport=tcp").unwrap().transport,
            Transport::Tcp
        );
        let s = p("turns:[2001:db8::1]:443?transport=tcp").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("2001:db8::1", 443));
        assert_eq!(s.transport, Transport::Tls);
        assert_eq!(s.url(), "turns:[2001:db8::1]:443?transport=tcp");
        assert_eq!(p("turns:h").unwrap().port, 5349);
        assert!(p("turns:h?transport=udp").is_err());
        assert!(p("stun:h").is_err());
        assert!(p("turn:h:99999").is_err());
        assert!(p("turn:h?transport=sctp").is_err());
        assert!(p("turn::3478").is_err());
    }

    #[test]
    fn host_addresses() {
        assert_eq!(
            parse_host("127.0.0.1").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(parse_host("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(parse_host("::1").unwrap(), "[::1]:0".parse().unwrap());
        assert!(parse_host("localhost").is_err());
    }
}
