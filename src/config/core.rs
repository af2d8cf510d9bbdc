//! The configuration mapped onto the protocol crate's types: the core
//! knows no config format, so the shell translates a validated [`Config`]
//! into a [`CoreConfig`] and static users into [`StaticCredential`]s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use turnpike_proto::core::{
    CoreConfig, OwnAddresses, PeerPolicy, RateLimit, RelayFamily, StaticCredential,
};

use super::{Config, UserCredential, parse_hex_key};

/// The core's configuration from a validated config, as written (the shell
/// resolves wildcard relay addresses and alternate servers on top, see
/// `io::setup::core_config`).
pub fn to_core(c: &Config) -> CoreConfig {
    let fam = |bind: Option<IpAddr>, public: Option<IpAddr>| {
        bind.map(|b| RelayFamily {
            bind: b,
            advertised: public.unwrap_or(b),
            follow_local: public.is_none() && b.is_unspecified(),
        })
    };
    CoreConfig {
        realm: c.server.realm.clone(),
        software: (!c.server.software.is_empty()).then(|| c.server.software.clone()),
        relay4: fam(c.relay.bind_ip, c.relay.public_ip),
        relay6: fam(c.relay.bind_ip6, c.relay.public_ip6),
        max_lifetime: c.policy.max_lifetime.0,
        policy: PeerPolicy::new(&c.policy.allow_peers, &c.policy.deny_peers)
            .and_then(|p| p.with_nat64(&c.policy.nat64_prefixes))
            .expect("validated peer lists")
            .with_own(own_addresses(c)),
        max_allocations: c.policy.max_allocations,
        max_allocations_per_user: c.policy.max_allocations_per_user,
        max_permissions: c.policy.max_permissions,
        max_channels: c.policy.max_channels,
        max_bytes_per_sec: c.policy.max_bitrate / 8,
        strict_channel_numbers: c.policy.strict_channel_numbers,
        draining: false,
        alternate_servers: Vec::new(),
        redact_client_ips: c.log.redact_client_ips,
        publish_relays: true,
        unauth_limit: RateLimit {
            rate: c.limits.unauth_rate,
            burst: c.limits.unauth_burst,
        },
    }
}

/// The server's own addresses as far as the file says (listener, relay and
/// advertised addresses; listener ports; the relay port range). The shell
/// adds every interface address and the ports port-0 listeners got (see
/// `io::setup::core_config`).
fn own_addresses(c: &Config) -> OwnAddresses {
    let ips = c
        .listen
        .iter()
        .map(|l| l.addr.ip())
        .chain(c.relay.bind_ip)
        .chain(c.relay.bind_ip6)
        .chain(c.relay.public_ip)
        .chain(c.relay.public_ip6);
    // Relayed data is UDP: only UDP listeners are reachable by it.
    OwnAddresses::new(
        ips,
        c.listen
            .iter()
            .filter(|l| l.transport == crate::config::Transport::Udp)
            .map(|l| l.addr.port()),
        (c.relay.ports.low, c.relay.ports.high),
    )
}

/// `[auth] users` as the core takes them. A key that does not parse cannot
/// reach here (validation refuses it); it would map to an all-zero key.
pub fn static_users(c: &Config) -> BTreeMap<String, StaticCredential> {
    c.auth
        .users
        .iter()
        .map(|(name, cred)| {
            let cred = match cred {
                UserCredential::Password(p) => StaticCredential::Password(p.clone()),
                UserCredential::Key { key } => {
                    StaticCredential::Md5Key(parse_hex_key(key).unwrap_or_default())
                }
            };
            (name.clone(), cred)
        })
        .collect()
}
