//! The command line of `turnpike ice-check`: its arguments, and the
//! addresses in them (`turn:`/`turns:` URLs, `--host`, `--stun`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::ServerName;

use turnpike::config::Transport;
use turnpike_proto::ice::PathKind;

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

    pub(super) fn resolve(&self) -> Result<SocketAddr> {
        resolve(&self.host, self.port)
    }

    pub(super) fn tls_name(&self) -> Option<ServerName<'static>> {
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

pub(super) fn server_name(host: &str) -> Option<ServerName<'static>> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_string()).ok(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `1.2.3.4:port`.
pub(super) fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
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

pub(super) fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
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

pub(super) fn parse_host(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (h, p) = split_host_port(s, 0).map_err(|e| anyhow!("--host `{s}`: {e}"))?;
    let ip: IpAddr = h
        .parse()
        .map_err(|_| anyhow!("--host `{s}`: expected an IP address or IP:PORT"))?;
    Ok(SocketAddr::new(ip, p))
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
