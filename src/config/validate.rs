//! Every check of a configuration that needs more than the types: the one
//! place where a [`Config`] is judged. [`Config::parse`] (start, `config
//! check`, reload) runs [`Config::validate`]; nothing else refuses a
//! configuration, except binding (ports, relay addresses, TLS files), which
//! only the server can try (`io::start`, `http::bind`).
//!
//! Every error names the file, the key and the fix, and never a secret's
//! value.

use std::net::{IpAddr, SocketAddr};

use super::{Config, ConfigError, Transport, UserCredential, parse_hex_key, read_secret_file};

impl Config {
    /// Checks that need more than the types: listeners present and distinct,
    /// TLS material present and readable.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "listen",
                "no [[listen]] entries",
                "add at least one, e.g. [[listen]] transport = \"udp\" addr = \"0.0.0.0:3478\"",
            ));
        }
        if self.server.realm.is_empty() || self.server.realm.len() > 763 {
            return Err(ConfigError::invalid(
                file,
                "server.realm",
                "must be 1 to 763 bytes",
                "set realm to your domain, e.g. realm = \"example.org\"",
            ));
        }
        if self.server.software.len() > 763 {
            return Err(ConfigError::invalid(
                file,
                "server.software",
                "longer than 763 bytes",
                "shorten it, or set \"\" to send no SOFTWARE attribute",
            ));
        }
        self.validate_connection_limits(file)?;
        self.validate_relay(file)?;
        self.validate_auth(file)?;
        self.validate_policy(file)?;
        self.validate_http(file)?;
        self.validate_rate_limit(file)?;
        self.validate_fastpath(file)?;
        self.validate_cluster(file)?;
        for (i, l) in self.listen.iter().enumerate() {
            let key = |k: &str| format!("listen[{i}].{k}");
            for (j, other) in self.listen[..i].iter().enumerate() {
                let same_socket_kind = l.transport.is_stream() == other.transport.is_stream();
                if same_socket_kind && conflicts(l.addr, other.addr) {
                    return Err(ConfigError::invalid(
                        file,
                        key("addr"),
                        format!(
                            "{} {} conflicts with listen[{j}] ({} {})",
                            l.transport, l.addr, other.transport, other.addr
                        ),
                        "give each listener of the same socket type its own port",
                    ));
                }
            }
            match l.transport {
                Transport::Tls => {
                    for (name, path) in [("cert", &l.cert), ("key", &l.key)] {
                        let Some(p) = path else {
                            return Err(ConfigError::invalid(
                                file,
                                key(name),
                                "missing for a tls listener",
                                format!("set {name} = \"/path/to/{name}.pem\" (PEM file)"),
                            ));
                        };
                        if let Err(e) = std::fs::metadata(p) {
                            return Err(ConfigError::invalid(
                                file,
                                key(name),
                                format!("cannot read {}: {e}", p.display()),
                                "point it at an existing PEM file readable by turnpike",
                            ));
                        }
                    }
                }
                Transport::Udp | Transport::Tcp => {
                    if l.cert.is_some() || l.key.is_some() {
                        return Err(ConfigError::invalid(
                            file,
                            key(if l.cert.is_some() { "cert" } else { "key" }),
                            format!(
                                "only tls listeners take a certificate, this one is {}",
                                l.transport
                            ),
                            "remove it, or set transport = \"tls\"",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// What a valid configuration may still get wrong, for the log at
    /// start: each line names the key.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.http.addr.is_some() && self.http.api_keys.is_empty() {
            w.push("http.api_keys is empty: the credentials API answers 401 to everyone".into());
        }
        w
    }

    pub(super) fn validate_relay(&self, file: &str) -> Result<(), ConfigError> {
        let r = &self.relay;
        let fam = |key: &str, ip: Option<IpAddr>, v6: bool| -> Result<(), ConfigError> {
            match ip {
                Some(ip) if ip.is_ipv6() != v6 => Err(ConfigError::invalid(
                    file,
                    format!("relay.{key}"),
                    format!(
                        "{ip} is not an {} address",
                        if v6 { "IPv6" } else { "IPv4" }
                    ),
                    if v6 {
                        "put IPv6 addresses in bind_ip6/public_ip6 and IPv4 in bind_ip/public_ip"
                    } else {
                        "put IPv4 addresses in bind_ip/public_ip and IPv6 in bind_ip6/public_ip6"
                    },
                )),
                _ => Ok(()),
            }
        };
        fam("bind_ip", r.bind_ip, false)?;
        fam("public_ip", r.public_ip, false)?;
        fam("bind_ip6", r.bind_ip6, true)?;
        fam("public_ip6", r.public_ip6, true)?;
        for (key, public, bind) in [
            ("public_ip", r.public_ip, r.bind_ip),
            ("public_ip6", r.public_ip6, r.bind_ip6),
        ] {
            if let Some(p) = public {
                if bind.is_none() {
                    return Err(ConfigError::invalid(
                        file,
                        format!("relay.{key}"),
                        format!("{p} is advertised but its family has no bind address"),
                        format!(
                            "set relay.{} too, or remove {key}",
                            key.replace("public", "bind")
                        ),
                    ));
                }
                if p.is_unspecified() {
                    return Err(ConfigError::invalid(
                        file,
                        format!("relay.{key}"),
                        "a wildcard cannot be advertised",
                        "set the address peers reach this server at",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[limits]`, TCP/TLS connections.
    pub(super) fn validate_connection_limits(&self, file: &str) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(ConfigError::invalid(
                file,
                "limits.max_connections",
                "zero would refuse every TCP and TLS connection",
                "set a positive cap, e.g. 10000 (the default); to serve no TCP or TLS, remove those [[listen]] entries",
            ));
        }
        if l.max_connections_per_ip == 0 || l.max_connections_per_ip > l.max_connections {
            return Err(ConfigError::invalid(
                file,
                "limits.max_connections_per_ip",
                format!(
                    "{} is not between 1 and limits.max_connections ({})",
                    l.max_connections_per_ip, l.max_connections
                ),
                "set it between 1 and max_connections; clients behind one large NAT share an address",
            ));
        }
        for (name, span) in [
            ("first_request_timeout", l.first_request_timeout),
            ("idle_timeout", l.idle_timeout),
            ("frame_timeout", l.frame_timeout),
            ("write_timeout", l.write_timeout),
        ] {
            let s = span.0.as_secs();
            if !(1..=3600).contains(&s) {
                return Err(ConfigError::invalid(
                    file,
                    format!("limits.{name}"),
                    format!("{span} is out of range"),
                    "use between 1s and 1h; the defaults are 10s (first_request_timeout, frame_timeout), 1m (idle_timeout) and 30s (write_timeout)",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate_auth(&self, file: &str) -> Result<(), ConfigError> {
        for (i, s) in self.auth.secrets.iter().enumerate() {
            if s.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    format!("auth.secrets[{i}]"),
                    "empty secret",
                    "use a long random string, e.g. from `openssl rand -hex 32`",
                ));
            }
            if is_placeholder(s) {
                return Err(ConfigError::invalid(
                    file,
                    format!("auth.secrets[{i}]"),
                    PLACEHOLDER,
                    "put a secret of your own here, e.g. from `openssl rand -hex 32`, or remove auth.secrets to have turnpike generate one for each run",
                ));
            }
        }
        for (i, p) in self.auth.secret_files.iter().enumerate() {
            match read_secret_file(p) {
                Err(e) => {
                    return Err(ConfigError::invalid(
                        file,
                        format!("auth.secret_files[{i}]"),
                        format!("{}: {e}", p.display()),
                        "point it at a readable file whose first line is the secret",
                    ));
                }
                Ok(s) if is_placeholder(&s) => {
                    return Err(ConfigError::invalid(
                        file,
                        format!("auth.secret_files[{i}]"),
                        format!("{}: {PLACEHOLDER}", p.display()),
                        "write a secret of your own into it, e.g. `openssl rand -hex 32 > FILE`",
                    ));
                }
                Ok(_) => {}
            }
        }
        for (name, cred) in &self.auth.users {
            let key = format!("auth.users.{name}");
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    key,
                    "empty user name",
                    "give the user a name",
                ));
            }
            match cred {
                UserCredential::Password(p) if p.is_empty() => {
                    return Err(ConfigError::invalid(
                        file,
                        key,
                        "empty password",
                        "set a password",
                    ));
                }
                UserCredential::Password(p) if is_placeholder(p) => {
                    return Err(ConfigError::invalid(
                        file,
                        key,
                        format!("the password {PLACEHOLDER}"),
                        "set a password of your own (e.g. from `openssl rand -base64 18`), or remove the user",
                    ));
                }
                UserCredential::Key { key: k } if parse_hex_key(k).is_none() => {
                    return Err(ConfigError::invalid(
                        file,
                        key,
                        "key is not 32 hex digits (an MD5 long-term key)",
                        "use the output of `turnadmin -k -u USER -r REALM -p PASSWORD` without its 0x prefix, or a password",
                    ));
                }
                _ => {}
            }
        }
        if self.auth.nonce_lifetime.0.as_secs() < 10 {
            return Err(ConfigError::invalid(
                file,
                "auth.nonce_lifetime",
                "shorter than 10 seconds",
                "use at least a minute, e.g. \"1h\"",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_policy(&self, file: &str) -> Result<(), ConfigError> {
        let p = &self.policy;
        for (list, name) in [
            (&p.allow_peers, "allow_peers"),
            (&p.deny_peers, "deny_peers"),
        ] {
            for (i, c) in list.iter().enumerate() {
                if let Err(e) = c.parse::<turnpike_proto::core::policy::Cidr>() {
                    return Err(ConfigError::invalid(
                        file,
                        format!("policy.{name}[{i}]"),
                        e,
                        "write a CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\"",
                    ));
                }
            }
        }
        for (i, c) in p.nat64_prefixes.iter().enumerate() {
            if let Err(e) = c.parse::<turnpike_proto::core::policy::Nat64Prefix>() {
                return Err(ConfigError::invalid(
                    file,
                    format!("policy.nat64_prefixes[{i}]"),
                    e,
                    "write the IPv6 prefix of your NAT64 translator, e.g. \"2001:db8:64::/96\"",
                ));
            }
        }
        if p.max_lifetime.0.as_secs() < 10 || p.max_lifetime.0.as_secs() > u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                file,
                "policy.max_lifetime",
                format!("{} is out of range", p.max_lifetime),
                "use between 10s (tests only) and a few hours; RFC 8656 suggests 1h",
            ));
        }
        for (name, v) in [
            ("max_allocations", p.max_allocations),
            ("max_allocations_per_user", p.max_allocations_per_user),
            ("max_permissions", p.max_permissions),
            ("max_channels", p.max_channels),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    file,
                    format!("policy.{name}"),
                    "zero would refuse everything",
                    "set a positive limit",
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `[limits]` of the unauthenticated UDP rate limit.
    pub(super) fn validate_rate_limit(&self, file: &str) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.unauth_burst > turnpike_proto::core::ratelimit::MAX_BURST {
            return Err(ConfigError::invalid(
                file,
                "limits.unauth_burst",
                format!("{} is out of range", l.unauth_burst),
                format!(
                    "use at most {} (the default is 2000)",
                    turnpike_proto::core::ratelimit::MAX_BURST
                ),
            ));
        }
        if l.unauth_rate > 0 && l.unauth_burst == 0 {
            return Err(ConfigError::invalid(
                file,
                "limits.unauth_burst",
                "zero would answer no unauthenticated request",
                "set a burst of at least one (the default is 2000), or unauth_rate = 0 to turn the limit off",
            ));
        }
        if !(1..=1 << 20).contains(&l.rate_limit_slots) {
            return Err(ConfigError::invalid(
                file,
                "limits.rate_limit_slots",
                format!("{} is out of range", l.rate_limit_slots),
                "use between 1 and 1048576 (the default is 4096 buckets, 32 KiB)",
            ));
        }
        Ok(())
    }

    /// `[cluster]` (issue 14).
    pub(super) fn validate_cluster(&self, file: &str) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if let Some(url) = &c.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::invalid(
                    file,
                    "cluster.redis_url",
                    "must start with redis:// or rediss:// (TLS)",
                    "e.g. redis_url = \"redis://10.0.0.5:6379/0\"",
                ));
            }
            if redis::Client::open(url.as_str()).is_err() {
                return Err(ConfigError::invalid(
                    file,
                    "cluster.redis_url",
                    "not a Redis URL",
                    "write redis://[:PASSWORD@]HOST[:PORT][/DB]",
                ));
            }
        }
        if let Some(ca) = &c.redis_ca {
            if !c
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                return Err(ConfigError::invalid(
                    file,
                    "cluster.redis_ca",
                    "only for a TLS connection",
                    "use a rediss:// redis_url, or remove redis_ca",
                ));
            }
            if let Err(e) = std::fs::read(ca) {
                return Err(ConfigError::invalid(
                    file,
                    "cluster.redis_ca",
                    format!("cannot read {}: {e}", ca.display()),
                    "point it at a readable PEM file",
                ));
            }
        }
        if c.node_id.len() > 128 || c.node_id.chars().any(|ch| ch.is_control() || ch == ':') {
            return Err(ConfigError::invalid(
                file,
                "cluster.node_id",
                "at most 128 characters, without ':' or control characters",
                "use the host name, e.g. node_id = \"turn-1\"",
            ));
        }
        if !c.advertise.is_empty() && c.advertise.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                file,
                "cluster.advertise",
                "not an IP:port",
                "e.g. advertise = \"203.0.113.10:3478\"",
            ));
        }
        let ms = |s: &super::Span| s.0.as_millis();
        if ms(&c.allocate_budget) == 0 || ms(&c.allocate_budget) > 2000 {
            return Err(ConfigError::invalid(
                file,
                "cluster.allocate_budget",
                "must be 1ms to 2s (a client retransmits its Allocate after 500 ms)",
                "e.g. allocate_budget = \"50ms\"",
            ));
        }
        if ms(&c.refresh_interval) < 100 {
            return Err(ConfigError::invalid(
                file,
                "cluster.refresh_interval",
                "must be at least 100ms",
                "e.g. refresh_interval = \"2s\"",
            ));
        }
        if ms(&c.lease_ttl) < 2 * ms(&c.refresh_interval) {
            return Err(ConfigError::invalid(
                file,
                "cluster.lease_ttl",
                "must be at least twice refresh_interval (a lease must outlive one missed refresh)",
                "e.g. lease_ttl = \"10s\" with refresh_interval = \"2s\"",
            ));
        }
        if c.key_prefix.is_empty()
            || c.key_prefix.len() > 64
            || c.key_prefix
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace())
        {
            return Err(ConfigError::invalid(
                file,
                "cluster.key_prefix",
                "1 to 64 characters, without spaces or control characters",
                "e.g. key_prefix = \"turnpike\"",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_http(&self, file: &str) -> Result<(), ConfigError> {
        let h = &self.http;
        for (list, name) in [(&h.api_keys, "api_keys"), (&h.admin_keys, "admin_keys")] {
            for (i, k) in list.iter().enumerate() {
                if k.len() < 8 {
                    return Err(ConfigError::invalid(
                        file,
                        format!("http.{name}[{i}]"),
                        "shorter than 8 characters",
                        "use a long random key, e.g. from `openssl rand -hex 24`",
                    ));
                }
                if is_placeholder(k) {
                    return Err(ConfigError::invalid(
                        file,
                        format!("http.{name}[{i}]"),
                        PLACEHOLDER,
                        "use a long random key, e.g. from `openssl rand -hex 24`",
                    ));
                }
            }
        }
        // An admin key that is also an API key would hand the admin routes
        // to every caller of the credentials API (app servers, browser
        // pages). Positions only: a key's value is never printed.
        for (i, a) in h.admin_keys.iter().enumerate() {
            if let Some(j) = h.api_keys.iter().position(|k| k == a) {
                return Err(ConfigError::invalid(
                    file,
                    format!("http.admin_keys[{i}]"),
                    format!(
                        "the same key as http.api_keys[{j}]: every caller of the credentials API could list and end sessions, drain and reload"
                    ),
                    "give the admin routes keys of their own, e.g. from `openssl rand -hex 24`, and hand them to operators only",
                ));
            }
        }
        if h.max_connections == 0 {
            return Err(ConfigError::invalid(
                file,
                "http.max_connections",
                "zero would refuse every connection",
                "set a positive cap, e.g. 512 (the default)",
            ));
        }
        if h.max_connections_per_ip == 0 || h.max_connections_per_ip > h.max_connections {
            return Err(ConfigError::invalid(
                file,
                "http.max_connections_per_ip",
                format!(
                    "{} is not between 1 and http.max_connections ({})",
                    h.max_connections_per_ip, h.max_connections
                ),
                "set it between 1 and max_connections; behind a reverse proxy (every request from one address) set it to max_connections",
            ));
        }
        for (name, span) in [
            ("header_timeout", h.header_timeout),
            ("idle_timeout", h.idle_timeout),
        ] {
            let s = span.0.as_secs();
            if !(1..=3600).contains(&s) {
                return Err(ConfigError::invalid(
                    file,
                    format!("http.{name}"),
                    format!("{span} is out of range"),
                    "use between 1s and 1h; the defaults are 10s (header_timeout) and 1m (idle_timeout)",
                ));
            }
        }
        if h.credential_ttl.0.as_secs() < 60 {
            return Err(ConfigError::invalid(
                file,
                "http.credential_ttl",
                "shorter than a minute",
                "credentials must outlive a call set-up; use e.g. \"24h\"",
            ));
        }
        for (i, s) in h.alternate_servers.iter().enumerate() {
            let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(ConfigError::invalid(
                    file,
                    format!("http.alternate_servers[{i}]"),
                    format!("`{s}` is not host:port"),
                    "write it as \"turn2.example.org:3478\" or \"203.0.113.20:3478\"",
                ));
            }
        }
        for (i, o) in h.cors_origins.iter().enumerate() {
            let ok = o == "*" || o.starts_with("http://") || o.starts_with("https://");
            if !ok {
                return Err(ConfigError::invalid(
                    file,
                    format!("http.cors_origins[{i}]"),
                    format!("`{o}` is not an origin"),
                    "write origins as \"https://app.example.org\", or \"*\" for any",
                ));
            }
        }
        match (&h.cert, &h.key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                for (name, p) in [("cert", c), ("key", k)] {
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(ConfigError::invalid(
                            file,
                            format!("http.{name}"),
                            format!("cannot read {}: {e}", p.display()),
                            "point it at an existing PEM file readable by turnpike",
                        ));
                    }
                }
            }
            (c, _) => {
                let missing = if c.is_some() { "key" } else { "cert" };
                return Err(ConfigError::invalid(
                    file,
                    format!("http.{missing}"),
                    "HTTPS needs both cert and key",
                    format!("set http.{missing} too, or remove the other to serve plain HTTP"),
                ));
            }
        }
        if let Some(h) = &self.server.public_host {
            if h.is_empty() || h.contains(['/', ' ', '?', '#']) {
                return Err(ConfigError::invalid(
                    file,
                    "server.public_host",
                    format!("`{h}` is not a host name"),
                    "set the DNS name (or IP) clients use, e.g. \"turn.example.org\"",
                ));
            }
        }
        Ok(())
    }
}

/// Why a placeholder is refused (the key comes before it in the error).
const PLACEHOLDER: &str =
    "is a placeholder from turnpike's examples, known to anyone who read them";

/// Secrets, passwords and keys turnpike's examples ever showed
/// (conf/turnpike.toml shipped `change-me` and `change-me-too`, the README
/// writes SECRET, PW, KEY and API_KEY), compared without case and
/// punctuation. A server using one is open to everyone who read them.
const PLACEHOLDERS: &[&str] = &[
    "pw",
    "password",
    "secret",
    "key",
    "apikey",
    "adminkey",
    "replaceme",
    "yoursecret",
];

/// Whether `s` is one of [`PLACEHOLDERS`], or any `change-me…`.
impl Config {
    /// `[fastpath]` (issue 15): interface names the kernel could hold,
    /// each once; `mode = "xdp"` needs at least one.
    fn validate_fastpath(&self, file: &str) -> Result<(), ConfigError> {
        let f = &self.fastpath;
        for (i, name) in f.interfaces.iter().enumerate() {
            // IFNAMSIZ is 16 with the terminating NUL.
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', ':'])
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::invalid(
                    file,
                    format!("fastpath.interfaces[{i}]"),
                    format!("{name:?} is not an interface name"),
                    "use a name `ip link` shows, e.g. \"eth0\"",
                ));
            }
            if f.interfaces[..i].contains(name) {
                return Err(ConfigError::invalid(
                    file,
                    format!("fastpath.interfaces[{i}]"),
                    format!("{name:?} is listed twice"),
                    "list each interface once",
                ));
            }
        }
        if f.mode == super::FastpathMode::Xdp && f.interfaces.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "fastpath.interfaces",
                "mode = \"xdp\" needs the interfaces to attach to",
                "list the interfaces that carry client and peer traffic, e.g. interfaces = [\"eth0\"]",
            ));
        }
        Ok(())
    }
}

fn is_placeholder(s: &str) -> bool {
    let n: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    n.starts_with("changeme") || PLACEHOLDERS.contains(&n.as_str())
}

/// Two socket addresses of the same socket type cannot both be bound: same
/// port and the same IP, or a wildcard of the same family. Port 0 asks the
/// kernel for a free port, so two such listeners never collide.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: &str = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n";

    fn refused(extra: &str) -> ConfigError {
        Config::parse(&format!("{L}{extra}"), "t.toml").unwrap_err()
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = Config::parse(L, "t.toml").unwrap();
        let l = &c.limits;
        assert_eq!((l.max_connections, l.max_connections_per_ip), (10_000, 256));
        assert_eq!(l.first_request_timeout.0.as_secs(), 10);
        assert_eq!(l.idle_timeout.0.as_secs(), 60);
        assert_eq!(l.frame_timeout.0.as_secs(), 10);
        assert_eq!(l.write_timeout.0.as_secs(), 30);
        assert_eq!(l.fd_reserve, 128);
        // A section that sets one key keeps the others' defaults.
        let c = Config::parse(
            &format!(
                "{L}[limits]
frame_timeout = \"2s\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.limits.frame_timeout.0.as_secs(), 2);
        assert_eq!(c.limits.max_connections, 10_000);
        for (extra, key) in [
            ("max_connections = 0", "limits.max_connections"),
            (
                "max_connections_per_ip = 0",
                "limits.max_connections_per_ip",
            ),
            (
                "max_connections = 10\nmax_connections_per_ip = 11",
                "limits.max_connections_per_ip",
            ),
            (
                "first_request_timeout = \"0s\"",
                "limits.first_request_timeout",
            ),
            ("idle_timeout = \"2h\"", "limits.idle_timeout"),
            ("frame_timeout = 0", "limits.frame_timeout"),
            ("write_timeout = \"1d\"", "limits.write_timeout"),
        ] {
            let e = refused(&format!("[limits]\n{extra}\n"));
            assert_eq!(e.key(), Some(key), "{extra}: {e}");
            assert!(e.to_string().contains("Fix:"), "{e}");
        }
    }

    #[test]
    fn shipped_placeholders_are_refused_naming_the_key() {
        for (extra, key) in [
            ("[auth]\nsecrets = [\"change-me\"]", "auth.secrets[0]"),
            (
                "[auth]\nsecrets = [\"good-one-x\", \"CHANGE_ME\"]",
                "auth.secrets[1]",
            ),
            (
                "[auth]\nusers = { alice = \"change-me-too\" }",
                "auth.users.alice",
            ),
            ("[auth]\nusers = { bob = \"PW\" }", "auth.users.bob"),
            ("[auth]\nsecrets = [\"SECRET\"]", "auth.secrets[0]"),
            (
                "[http]\napi_keys = [\"change-me-please\"]",
                "http.api_keys[0]",
            ),
            (
                "[http]\nadmin_keys = [\"Change-Me-Too\"]",
                "http.admin_keys[0]",
            ),
        ] {
            let e = refused(extra);
            assert_eq!(e.key(), Some(key), "{extra}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("placeholder") && text.contains("Fix:"),
                "{text}"
            );
        }
        // Not placeholders.
        for ok in ["s", "change", "my-secret-1", "passwords-are-long"] {
            assert!(!is_placeholder(ok), "{ok}");
        }
    }

    #[test]
    fn a_placeholder_in_a_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "change-me\n").unwrap();
        let e = refused(&format!(
            "[auth]\nsecret_files = [{:?}]",
            f.to_str().unwrap()
        ));
        assert_eq!(e.key(), Some("auth.secret_files[0]"));
    }

    #[test]
    fn a_key_that_is_api_and_admin_is_refused_by_position() {
        let e = refused(
            "[http]\napi_keys = [\"api-key-one-1\", \"shared-key-22\"]\nadmin_keys = [\"admin-key-333\", \"shared-key-22\"]",
        );
        assert_eq!(e.key(), Some("http.admin_keys[1]"));
        let text = e.to_string();
        assert!(text.contains("http.api_keys[1]"), "{text}");
        assert!(!text.contains("shared-key-22"), "never the value: {text}");
    }

    #[test]
    fn nat64_prefixes_must_be_rfc_6052_ipv6_prefixes() {
        for (bad, why) in [
            ("2001:db8::/33", "/33"),
            ("10.0.0.0/8", "IPv6"),
            ("2001:db8::1/96", "host bits"),
        ] {
            let e = refused(&format!(
                "[policy]\nnat64_prefixes = [\"2001:db8:64::/96\", \"{bad}\"]"
            ));
            assert_eq!(e.key(), Some("policy.nat64_prefixes[1]"), "{bad}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let c = Config::parse(
            &format!("{L}[policy]\nnat64_prefixes = [\"2001:db8:64::/96\", \"2001:db8:100::/40\"]"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.policy.nat64_prefixes.len(), 2);
    }
}
