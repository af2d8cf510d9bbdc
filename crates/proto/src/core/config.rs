//! What the core needs from the configuration, resolved once (and again
//! on reload) by the shell, which maps its own file format onto these.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{Counters, Credentials, Family, PeerPolicy, RateLimit, Shared};

/// A relay address family the server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayFamily {
    pub bind: IpAddr,
    /// XOR-RELAYED-ADDRESS IP: `public_ip`, else `bind`; the shell
    /// replaces a wildcard with the host's primary address at start.
    pub advertised: IpAddr,
    /// Relay sockets bind the wildcard and no public address is set: then
    /// the address the client reached the server at (if known and of this
    /// family) is the one advertised, since it is one peers on that
    /// network can reach too.
    pub follow_local: bool,
}

impl RelayFamily {
    /// The IP to put in XOR-RELAYED-ADDRESS for a client that reached the
    /// server at `server`.
    pub fn advertised_for(&self, server: SocketAddr) -> IpAddr {
        let local = server.ip();
        if self.follow_local && !local.is_unspecified() && local.is_ipv6() == self.bind.is_ipv6() {
            local
        } else {
            self.advertised
        }
    }
}

/// What the core needs from the configuration, resolved once (and again
/// on reload).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub realm: String,
    /// SOFTWARE attribute, or `None` to send none.
    pub software: Option<String>,
    pub relay4: Option<RelayFamily>,
    pub relay6: Option<RelayFamily>,
    pub max_lifetime: Duration,
    pub policy: PeerPolicy,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Bytes per second per allocation; 0 = unlimited.
    pub max_bytes_per_sec: u64,
    /// ChannelBind only in RFC 8656's 0x4000-0x4FFF (else RFC 5766's
    /// 0x4000-0x7FFF).
    pub strict_channel_numbers: bool,
    /// While draining, new Allocates are turned away (300 with
    /// ALTERNATE-SERVER if one is set, else 486).
    pub draining: bool,
    pub alternate_servers: Vec<SocketAddr>,
    /// Not used by the core: tells the shell to mask client addresses in
    /// its logs (kept here so a reload changes it with the rest).
    pub redact_client_ips: bool,
    /// Publish allocations with UDP clients in the relay directory so
    /// other shards deliver to them directly ([`super::directory`]); pointless
    /// with one shard, so the shell turns it off then.
    pub publish_relays: bool,
    /// Unauthenticated UDP answers (401, 438, 400, 420, Binding) per
    /// source network, for the whole server (the table is in [`Shared`]).
    pub unauth_limit: RateLimit,
}

impl CoreConfig {
    /// The relay family offered for `family`, if any.
    pub fn relay(&self, family: Family) -> Option<RelayFamily> {
        match family {
            Family::V4 => self.relay4,
            Family::V6 => self.relay6,
        }
    }
}

/// Everything [`Server::new`](super::Server::new) needs.
pub struct Setup {
    pub cfg: Arc<CoreConfig>,
    pub creds: Arc<Credentials>,
    pub shared: Arc<Shared>,
    pub counters: Arc<Counters>,
    /// Seeds the core's RNG (relay ports, tokens, transaction IDs).
    pub seed: u64,
    /// Key of the stateless nonces; shards of one server share it.
    pub nonce_key: [u8; 32],
    /// Tags allocation ids so ids of different shards never collide.
    pub shard: u16,
}
