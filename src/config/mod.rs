//! The TOML configuration: its shape and the embedded default (here), every
//! check of a parsed configuration (`validate`), errors that name the file,
//! the key and the fix (`error`), and the mapping onto the core's types
//! (`core`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod core;
mod error;
mod units;
mod validate;

pub use self::core::{static_users, to_core};
pub use error::ConfigError;

pub use turnpike_proto::core::Transport;
pub use units::{PortRange, Span};

/// The configuration `serve` uses when no `--config` is given: STUN/TURN
/// over UDP and TCP on port 3478 on every IPv4 and IPv6 interface.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
realm = "turnpike"

[[listen]]
transport = "udp"
addr = "0.0.0.0:3478"

[[listen]]
transport = "udp"
addr = "[::]:3478"

[[listen]]
transport = "tcp"
addr = "0.0.0.0:3478"

[[listen]]
transport = "tcp"
addr = "[::]:3478"
"#;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub relay: Relay,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub limits: Limits,
    /// Issue 15: the XDP fast path.
    #[serde(default)]
    pub fastpath: Fastpath,
    /// Issue 14: the fleet's shared state (Redis); without `redis_url`,
    /// one node on its own, as before.
    #[serde(default)]
    pub cluster: Cluster,
}

/// `[fastpath]` (issue 15): relay ChannelData of UDP clients in the kernel
/// with an XDP program on `interfaces`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fastpath {
    /// "off" (the default), "auto" or "xdp".
    pub mode: FastpathMode,
    /// The interfaces that carry client and peer traffic.
    pub interfaces: Vec<String>,
}

/// `fastpath.mode`. Off by default: attaching a program that rewrites
/// packets at the driver is the operator's decision (it needs
/// CAP_BPF/CAP_NET_ADMIN and the interfaces named), not a side effect of
/// an upgrade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastpathMode {
    /// User space relays everything.
    #[default]
    Off,
    /// Attach where possible (driver mode, else generic); otherwise one
    /// warning, and user space relays everything.
    Auto,
    /// Attach or refuse to start.
    Xdp,
}

/// `[cluster]` (issue 14): nodes of a fleet share per-user allocation
/// counts, revocations, a registry of live allocations and their load
/// through Redis (`src/cluster`). Without `redis_url` nothing is shared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS.
    /// Printed with its password masked.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "masked_url")]
    pub redis_url: Option<String>,
    /// Redis password (AUTH), instead of one in the URL.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "masked")]
    pub redis_password: Option<String>,
    /// PEM file of the CA that signed Redis' certificate (`rediss://`);
    /// without it, the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca: Option<PathBuf>,
    /// This node's name in the fleet; "" (the default): the host name.
    pub node_id: String,
    /// host:port other nodes send clients to (ALTERNATE-SERVER) when this
    /// one is full or draining; "" (the default): `relay.public_ip` (else
    /// the first UDP listener's address) and the first UDP listener's port.
    /// TLS clients are sent to its IP and the first TLS listener's port.
    pub advertise: String,
    /// How long an Allocate may wait for the cluster-wide quota decision;
    /// past it the local quota decides.
    pub allocate_budget: Span,
    /// How often leases, the registry and the load are written.
    pub refresh_interval: Span,
    /// How long a node's leases, registry entries and load outlive its
    /// last refresh (so a crashed node's counts age out within this).
    pub lease_ttl: Span,
    /// Prefix of every Redis key and channel (fleets sharing one Redis
    /// need their own).
    pub key_prefix: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis_url: None,
            redis_password: None,
            redis_ca: None,
            node_id: String::new(),
            advertise: String::new(),
            allocate_budget: Span(std::time::Duration::from_millis(50)),
            refresh_interval: Span::secs(2),
            lease_ttl: Span::secs(10),
            key_prefix: "turnpike".to_string(),
        }
    }
}

fn masked<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

/// A Redis URL with its password (if any) masked.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => url.to_string(),
    }
}

fn masked_url<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_str(&mask_url_password(u)),
        None => s.serialize_none(),
    }
}

/// `[limits]`: what one stranger may cost the server (hardening against
/// amplification and exhaustion). Every limit is on by default.
///
/// Each field has its own serde default function, next to its region
/// below; [`Limits::default`] calls the same functions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    // --- unauthenticated UDP responses (rate limit) ---
    /// Unauthenticated UDP answers (401, 438, 400, 420, Binding success)
    /// per second to one source (an IPv4 address or an IPv6 /64), for the
    /// whole server; 0 turns the limit off.
    #[serde(default = "default_unauth_rate")]
    pub unauth_rate: u32,
    /// Answers one source may get at once after a quiet spell.
    #[serde(default = "default_unauth_burst")]
    pub unauth_burst: u32,
    /// Buckets in the server's fixed table (8 bytes each, one
    /// table for every shard); sources whose hashes collide share one.
    /// Read at start only.
    #[serde(default = "default_rate_limit_slots")]
    pub rate_limit_slots: usize,
    // --- TCP/TLS connections ---
    /// TCP and TLS client connections open at most, all listeners and
    /// shards together (handshakes included). One more is closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TCP and TLS connections from one IPv4 address (or IPv6 /64) at most.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Time from accept (TLS handshake included) to the first complete
    /// STUN frame; a connection that sends nothing is closed then.
    #[serde(default = "default_first_request_timeout")]
    pub first_request_timeout: Span,
    /// A connection without an allocation on which no frame arrives for
    /// this long is closed (connections with an allocation live as long as
    /// it does).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
    /// Time a frame may take to arrive whole once its first bytes came.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: Span,
    /// A write to a client that makes no progress for this long (a client
    /// that stopped reading) closes its connection.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Span,
    /// File descriptors kept free for relay sockets: a connection is
    /// refused at accept when the open descriptors plus this reserve reach
    /// the soft RLIMIT_NOFILE, so connections never starve Allocate.
    #[serde(default = "default_fd_reserve")]
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // --- unauthenticated UDP responses (rate limit) ---
            unauth_rate: default_unauth_rate(),
            unauth_burst: default_unauth_burst(),
            rate_limit_slots: default_rate_limit_slots(),
            // --- TCP/TLS connections ---
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            first_request_timeout: default_first_request_timeout(),
            idle_timeout: default_idle_timeout(),
            frame_timeout: default_frame_timeout(),
            write_timeout: default_write_timeout(),
            fd_reserve: default_fd_reserve(),
        }
    }
}

// --- unauthenticated UDP responses (rate limit): defaults ---
fn default_unauth_rate() -> u32 {
    turnpike_proto::core::RateLimit::default().rate
}

fn default_unauth_burst() -> u32 {
    turnpike_proto::core::RateLimit::default().burst
}

fn default_rate_limit_slots() -> usize {
    turnpike_proto::core::ratelimit::DEFAULT_SLOTS
}

// --- TCP/TLS connections: defaults ---
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_first_request_timeout() -> Span {
    Span::secs(10)
}
fn default_idle_timeout() -> Span {
    Span::secs(60)
}
fn default_frame_timeout() -> Span {
    Span::secs(10)
}
fn default_write_timeout() -> Span {
    Span::secs(30)
}
fn default_fd_reserve() -> u64 {
    128
}

/// `[http]`: the credentials API, metrics, health and admin endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Where the HTTP listener binds; omit (or "") to run none.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_addr"
    )]
    pub addr: Option<SocketAddr>,
    /// Keys of the credentials route, presented as `Authorization: Bearer
    /// KEY` (or `key=`, on that route only).
    pub api_keys: Vec<String>,
    /// Keys of the admin routes (sessions, drain, reload), presented only
    /// as `Authorization: Bearer KEY`. None (the default): the admin routes
    /// are off (404). A key may not be in both lists.
    pub admin_keys: Vec<String>,
    /// Default and largest TTL of minted credentials.
    pub credential_ttl: Span,
    /// Origins allowed to call the API from a browser (CORS). "*" allows
    /// any.
    pub cors_origins: Vec<String>,
    /// How long a drain (SIGTERM or POST /api/v1/drain) waits for live
    /// allocations before the process exits anyway.
    pub drain_deadline: Span,
    /// host:port of other servers, sent as ALTERNATE-SERVER (300 Try
    /// Alternate) to new Allocates while draining.
    pub alternate_servers: Vec<String>,
    /// Open connections to the HTTP(S) listener at most, every client
    /// together; one more is closed at accept.
    pub max_connections: usize,
    /// Open connections from one IPv4 address (or IPv6 /64) at most.
    pub max_connections_per_ip: usize,
    /// Time a client has for the TLS handshake (HTTPS), then for each
    /// request head; also how long a kept-alive connection may wait for
    /// its next request.
    pub header_timeout: Span,
    /// A connection on which no byte moves either way for this long is
    /// closed (a stalled body, a client that does not read its response).
    pub idle_timeout: Span,
    /// Serve HTTPS with this PEM certificate chain and key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9641))),
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            credential_ttl: Span::secs(86400),
            cors_origins: Vec::new(),
            drain_deadline: Span::secs(300),
            alternate_servers: Vec::new(),
            max_connections: 512,
            max_connections_per_ip: 64,
            header_timeout: Span::secs(10),
            idle_timeout: Span::secs(60),
            cert: None,
            key: None,
        }
    }
}

/// An IP address, or "" for none (TOML has no null): `bind_ip6 = ""`
/// turns IPv6 relaying off.
fn optional_ip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn default_ports() -> PortRange {
    PortRange {
        low: 49152,
        high: 65535,
    }
}

fn ip_or_empty<S: serde::Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => s.collect_str(ip),
        None => s.serialize_str(""),
    }
}

fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// "text" (human-readable) or "json" (one object per line).
    pub format: LogFormat,
    /// Replace client IP addresses in logs with a keyed hash prefix, so
    /// lines of one client still correlate without storing its address.
    pub redact_client_ips: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            redact_client_ips: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[relay]`: where relayed addresses live.
///
/// Without a `[relay]` section the server relays on every IPv4 and IPv6
/// address (see [`Relay::default`]). Inside the section, an address that is
/// omitted (or `""`) turns its family off: `bind_ip` omitted means no IPv4
/// allocations (440), `bind_ip6` omitted no IPv6 ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// IPv4 address relay sockets bind to; `None` means no IPv4 allocations.
    #[serde(
        default,
        serialize_with = "ip_or_empty",
        deserialize_with = "optional_ip"
    )]
    pub bind_ip: Option<IpAddr>,
    /// IPv6 address relay sockets bind to; `None` means no IPv6 allocations.
    #[serde(
        default,
        serialize_with = "ip_or_empty",
        deserialize_with = "optional_ip"
    )]
    pub bind_ip6: Option<IpAddr>,
    /// Advertised in XOR-RELAYED-ADDRESS instead of `bind_ip` (1:1 NAT).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_ip"
    )]
    pub public_ip: Option<IpAddr>,
    /// Advertised instead of `bind_ip6`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_ip"
    )]
    pub public_ip6: Option<IpAddr>,
    /// Relay port range, "LOW-HIGH" inclusive.
    #[serde(default = "default_ports")]
    /// Relay port range, "LOW-HIGH" inclusive.
    pub ports: PortRange,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            bind_ip: Some(IpAddr::from([0, 0, 0, 0])),
            bind_ip6: Some(IpAddr::from([0u16; 8])),
            public_ip: None,
            public_ip6: None,
            ports: PortRange {
                low: 49152,
                high: 65535,
            },
        }
    }
}

/// `[auth]`: long-term credentials (RFC 8489 §9.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// TURN REST shared secrets. All verify; the first signs new
    /// credentials. Usernames are `<unix-expiry>:<user>`, passwords
    /// base64(HMAC-SHA1(secret, username)).
    pub secrets: Vec<String>,
    /// Files holding one secret each (first line), appended to `secrets`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<PathBuf>,
    /// Static users: name = "password", or name = { key = "<32 hex digits>" }
    /// for a precomputed MD5 key (as `turnadmin -k` prints).
    pub users: BTreeMap<String, UserCredential>,
    /// How long a nonce stays valid before 438 Stale Nonce.
    pub nonce_lifetime: Span,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            secrets: Vec::new(),
            secret_files: Vec::new(),
            users: BTreeMap::new(),
            nonce_lifetime: Span::secs(3600),
        }
    }
}

impl Auth {
    /// Whether any credential is configured at all.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.secret_files.is_empty() && self.users.is_empty()
    }
}

/// A static user's credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserCredential {
    Password(String),
    Key { key: String },
}

/// `[policy]`: peers, quotas and lifetimes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// CIDRs relaying may reach even though the default policy refuses
    /// them (private, loopback, ...).
    pub allow_peers: Vec<String>,
    /// CIDRs relaying must never reach (checked before `allow_peers`).
    pub deny_peers: Vec<String>,
    /// Network-specific NAT64 prefixes (RFC 6052: /32, /40, /48, /56, /64
    /// or /96), treated like the well-known `64:ff9b::/96`: relaying to
    /// them is allowed and the IPv4 address they embed is judged by the
    /// policy, so the translator cannot carry a relay into a refused IPv4
    /// range.
    pub nat64_prefixes: Vec<String>,
    /// Allocations in total (all users, all threads).
    pub max_allocations: usize,
    /// Allocations per user (REST credentials count by the part after ':').
    pub max_allocations_per_user: usize,
    /// Longest allocation lifetime granted (RFC 8656 §7.2).
    pub max_lifetime: Span,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Bits per second an allocation may relay, both directions together;
    /// 0 means no cap. Excess packets are dropped and counted.
    pub max_bitrate: u64,
    /// Refuse ChannelBind outside RFC 8656's 0x4000-0x4FFF. Off by default:
    /// libwebrtc (Chrome) and coturn's clients still pick from RFC 5766's
    /// 0x4000-0x7FFF.
    pub strict_channel_numbers: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            nat64_prefixes: Vec::new(),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_lifetime: Span::secs(3600),
            max_permissions: 64,
            max_channels: 64,
            max_bitrate: 0,
            strict_channel_numbers: false,
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// REALM for long-term credentials (RFC 8489 §9.2).
    pub realm: String,
    /// SOFTWARE attribute value; empty hides it.
    pub software: String,
    /// Worker threads (shards), each with its own sockets and server core.
    /// 0 means one per CPU.
    pub threads: usize,
    /// Send runs of same-size UDP datagrams for one destination as one
    /// GSO send (`UDP_SEGMENT`). On by default; off is for measuring, or
    /// for a kernel that misbehaves (one that refuses it is detected and
    /// GSO switched off by itself).
    pub udp_gso: bool,
    /// The host name clients use, put in the `uris` of minted credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            realm: "turnpike".into(),
            software: concat!("turnpike ", env!("CARGO_PKG_VERSION")).into(),
            threads: 0,
            udp_gso: true,
            public_host: None,
        }
    }
}

/// One `[[listen]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// PEM certificate chain (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Where a configuration came from, for error messages.
pub const EMBEDDED_NAME: &str = "<embedded default>";

impl Config {
    /// The embedded default (see [`EMBEDDED_DEFAULT`]).
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME).expect("embedded default config is valid")
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        Self::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: error::describe_toml_error(&e, text),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The effective configuration as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// The first line of a secret file, trimmed.
pub fn read_secret_file(p: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err("empty file".into());
    }
    Ok(line)
}

/// 32 hex digits → 16-byte MD5 key (an optional 0x prefix is accepted).
pub fn parse_hex_key(s: &str) -> Option<[u8; 16]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_parse_check_and_print_without_the_password() {
        let base = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:3478\"\n";
        let c = Config::parse(
            &format!(
                "{base}[cluster]\nredis_url = \"redis://:hunter2@10.0.0.5:6379/0\"\nnode_id = \"turn-1\"\nallocate_budget = \"20ms\"\nlease_ttl = \"5s\"\nrefresh_interval = \"1s\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.cluster.allocate_budget.0,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(c.cluster.node_id, "turn-1");
        let printed = c.to_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("allocate_budget = \"20ms\""), "{printed}");
        assert_eq!(
            Config::embedded().cluster.redis_url,
            None,
            "one node by default"
        );
        for (extra, key) in [
            ("redis_url = \"http://x\"", "cluster.redis_url"),
            ("lease_ttl = \"3s\"", "cluster.lease_ttl"),
            ("allocate_budget = \"3s\"", "cluster.allocate_budget"),
            ("node_id = \"a:b\"", "cluster.node_id"),
            ("advertise = \"nowhere\"", "cluster.advertise"),
        ] {
            let e = Config::parse(&format!("{base}[cluster]\n{extra}\n"), "t.toml")
                .expect_err(extra)
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.server.realm, "turnpike");
        assert_eq!(c.listen.len(), 4);
        assert!(c.listen.iter().all(|l| l.addr.port() == 3478));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("[server]\nrealmm = \"x\"\n", "t.toml").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("t.toml: line 2"), "{s}");
        assert!(s.contains("realmm"), "{s}");
    }

    #[test]
    fn bad_address_is_reported() {
        let err = Config::parse(
            "[[listen]]\ntransport = \"udp\"\naddr = \"1.2.3:99\"\n",
            "t.toml",
        )
        .unwrap_err();
        let s = err.to_string();
        assert!(s.contains("line 3"), "{s}");
        assert!(s.contains("invalid socket address"), "{s}");
    }

    #[test]
    fn missing_cert_names_key() {
        let err = Config::parse(
            "[[listen]]\ntransport = \"tls\"\naddr = \"0.0.0.0:5349\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("listen[0].cert"));
        assert!(err.to_string().contains("Fix:"));
    }

    #[test]
    fn duplicate_port_is_refused() {
        let err = Config::parse(
            "[[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:3478\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("listen[1].addr"));
        // UDP and TCP on the same port are fine.
        Config::parse(
            "[[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n[[listen]]\ntransport = \"tcp\"\naddr = \"0.0.0.0:3478\"\n",
            "t.toml",
        )
        .unwrap();
    }

    #[test]
    fn port_zero_listeners_do_not_conflict() {
        // Two stream listeners (tcp, or tcp and tls) on port 0 each get
        // their own port.
        Config::parse(
            "[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n",
            "t.toml",
        )
        .unwrap();
    }

    #[test]
    fn empty_string_turns_a_relay_family_off() {
        let l = "[[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n";
        let c = Config::parse(&format!("{l}[relay]\nbind_ip6 = \"\"\n"), "t.toml").unwrap();
        assert_eq!(c.relay.bind_ip6, None);
        assert_eq!(c.relay.bind_ip, None, "omitted inside [relay]: off");
        let again = Config::parse(&c.to_toml(), "x").unwrap();
        assert_eq!(again.relay, c.relay, "round trips through config check");
        let c = Config::parse(
            &format!("{l}[relay]\nbind_ip = \"0.0.0.0\"\nbind_ip6 = \"\"\n"),
            "t.toml",
        )
        .unwrap();
        assert!(c.relay.bind_ip.is_some());
        assert_eq!(c.relay.bind_ip6, None);
        let c = Config::parse(l, "t.toml").unwrap();
        assert!(
            c.relay.bind_ip.is_some() && c.relay.bind_ip6.is_some(),
            "no [relay]: both families"
        );
        assert!(Config::parse(&format!("{l}[relay]\nbind_ip = \"nope\"\n"), "t.toml").is_err());
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::embedded();
        let again = Config::parse(&c.to_toml(), "x").unwrap();
        assert_eq!(c, again);
    }
}
