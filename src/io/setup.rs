//! Start-up helpers: credentials, the advertised address, sanity checks.

use std::net::SocketAddr;

use super::StartError;
use crate::config::Config;
use turnpike_proto::core::{CoreConfig, Credentials};

/// The core's configuration: wildcard relay addresses resolved to the
/// host's primary address, alternate servers resolved to addresses.
pub(crate) fn core_config(cfg: &Config) -> CoreConfig {
    let mut c = crate::config::to_core(cfg);
    c.publish_relays = super::shard_count(cfg) > 1;
    for fam in [&mut c.relay4, &mut c.relay6].into_iter().flatten() {
        if fam.advertised.is_unspecified() {
            fam.advertised = primary_address(fam.bind.is_ipv6());
        }
    }
    // The server's own addresses, read now (start and every reload):
    // the advertised ones as resolved, and every interface address.
    let advertised: Vec<_> = [c.relay4, c.relay6]
        .into_iter()
        .flatten()
        .map(|r| r.advertised)
        .collect();
    let own = c.policy.own_mut();
    own.add_ips(advertised);
    match turnpike_sys::iface::addresses() {
        Ok(list) => own.add_ips(list.into_iter().map(|a| a.ip)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list interface addresses; only configured ones count as this server's own")
        }
    }
    c.alternate_servers = cfg
        .http
        .alternate_servers
        .iter()
        .filter_map(|s| {
            use std::net::ToSocketAddrs;
            match s.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => Some(a),
                _ => {
                    tracing::warn!(server = %s, "http.alternate_servers: cannot resolve, skipped");
                    None
                }
            }
        })
        .collect();
    c
}

/// Credentials from `[auth]`, reading secret files (the only file reads
/// the core's inputs need).
pub fn credentials(cfg: &Config) -> Result<Credentials, StartError> {
    let mut secrets = cfg.auth.secrets.clone();
    for (i, p) in cfg.auth.secret_files.iter().enumerate() {
        let s = crate::config::read_secret_file(p).map_err(|problem| StartError::Secret {
            key: format!("auth.secret_files[{i}]"),
            problem: format!("{}: {problem}", p.display()),
        })?;
        secrets.push(s);
    }
    Ok(Credentials::new(
        &cfg.server.realm,
        secrets,
        &crate::config::static_users(cfg),
        cfg.auth.nonce_lifetime.0.as_secs(),
    ))
}

/// The address this host sends from towards the Internet (a routing
/// lookup: connecting a UDP socket sends nothing), or loopback on a host
/// with no route. Used as the advertised relay address when relay sockets
/// bind the wildcard and no `public_ip` is set.
pub fn primary_address(ipv6: bool) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
    let (bind, probe, fallback): (IpAddr, SocketAddr, IpAddr) = if ipv6 {
        (
            Ipv6Addr::UNSPECIFIED.into(),
            "[2001:db8::1]:9".parse().expect("literal"),
            Ipv6Addr::LOCALHOST.into(),
        )
    } else {
        (
            Ipv4Addr::UNSPECIFIED.into(),
            "192.0.2.1:9".parse().expect("literal"),
            Ipv4Addr::LOCALHOST.into(),
        )
    };
    UdpSocket::bind(SocketAddr::new(bind, 0))
        .and_then(|s| {
            s.connect(probe)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(fallback)
}

/// A relay address this host does not have would turn every Allocate into
/// 508; refuse it at start instead.
pub(crate) fn check_relay_addresses(cfg: &Config) -> Result<(), StartError> {
    for (key, ip) in [
        ("relay.bind_ip", cfg.relay.bind_ip),
        ("relay.bind_ip6", cfg.relay.bind_ip6),
    ] {
        let Some(ip) = ip else { continue };
        if let Err(error) = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
            if ip.is_ipv6() && ip.is_unspecified() && ipv6_unavailable(&error) {
                tracing::warn!(
                    "IPv6 unavailable on this host; IPv6 allocations will fail with 508"
                );
                continue;
            }
            return Err(StartError::RelayBind {
                key,
                addr: ip,
                error,
            });
        }
    }
    Ok(())
}

/// Peers reach allocations at the advertised relay address. If the peer
/// policy refuses that address, two clients of this server cannot relay to
/// each other (each one's peer is the other's relay address).
pub(crate) fn warn_if_own_address_refused(c: &CoreConfig) {
    for r in [c.relay4, c.relay6].into_iter().flatten() {
        if !r.advertised.is_unspecified() && !c.policy.allows(r.advertised) {
            tracing::warn!(
                address = %r.advertised,
                "the peer policy refuses this server's own relay address: clients of this server cannot relay to each other; \
                 set relay.public_ip to the public address, or add it to policy.allow_peers"
            );
        }
    }
}

/// `policy.allow_peers` entries that open what the default policy keeps
/// closed for good reasons: loopback (services on this host), the cloud
/// metadata address, everything (a /0). Logged at start and on reload.
pub(crate) fn warn_dangerous_allow_peers(c: &CoreConfig) {
    for (i, cidr, why) in c.policy.dangerous_allows() {
        tracing::warn!(
            key = %format!("policy.allow_peers[{i}]"),
            entry = %cidr,
            "dangerous peer policy: {why}; allow only the networks relays must reach"
        );
    }
}

pub(crate) fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// Issue 12: the core's own-address set is the configured addresses
    /// (here the advertised public_ip) plus every interface address, read
    /// when the core config is made (at start and on every reload); the
    /// listener's port is never a peer, a relay port is.
    #[test]
    fn own_addresses_are_the_configured_ones_and_every_interface() {
        let cfg = Config::parse(
            "[[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n\
             [relay]\nbind_ip = \"0.0.0.0\"\npublic_ip = \"203.0.113.9\"\nports = \"50000-50099\"\n",
            "t.toml",
        )
        .expect("test config");
        let c = super::core_config(&cfg);
        let own = c.policy.own();
        let public: std::net::IpAddr = "203.0.113.9".parse().expect("literal");
        assert!(own.ips().contains(&public));
        for a in turnpike_sys::iface::addresses().expect("getifaddrs") {
            let ip = turnpike_proto::core::policy::canonical_ip(a.ip);
            assert!(own.contains(ip), "{} ({}) is ours", a.ip, a.interface);
        }
        assert_eq!(own.listener_ports(), [3478]);
        let peer = |s: &str| c.policy.allows_peer(s.parse().expect("literal"));
        assert!(!peer("203.0.113.9:3478"), "the listener");
        assert!(!peer("203.0.113.9:53"), "another port");
        assert!(peer("203.0.113.9:50000"), "a relay port");
        assert!(peer("198.51.100.1:3478"), "someone else's port 3478");
    }

    /// Relayed data is UDP: a TCP or TLS listener's port number is no UDP
    /// service, and a relay socket may hold the same number (a port-0 TCP
    /// listener got it from the kernel). The hostile soak found a relay
    /// that clients of this server could not reach because its UDP port
    /// was the TCP listener's number.
    #[test]
    fn stream_listener_ports_are_no_udp_listener_ports() {
        let cfg = Config::parse(
            "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:3478\"\n\
             [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:50001\"\n\
             [relay]\nbind_ip = \"127.0.0.1\"\nports = \"50000-50099\"\n\
             [policy]\nallow_peers = [\"127.0.0.1/32\"]\n",
            "t.toml",
        )
        .expect("test config");
        let c = super::core_config(&cfg);
        assert_eq!(c.policy.own().listener_ports(), [3478]);
        let peer = |s: &str| c.policy.allows_peer(s.parse().expect("literal"));
        assert!(
            peer("127.0.0.1:50001"),
            "a relay port that a TCP listener also has"
        );
        assert!(!peer("127.0.0.1:3478"), "the UDP listener");
    }
}
