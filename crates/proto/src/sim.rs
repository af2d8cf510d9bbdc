//! An in-memory driver for the server core: a relay-socket binder that
//! records what it is asked, a manual clock, and the client side of the
//! TURN exchanges. Benchmarks, allocation-count tests and the ICE checker's
//! simulations use it to run the real core with no sockets.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use crate::core::{
    ClientAddr, ClientOutput, CoreConfig, Counters, FiveTuple, Fragmentation, Now, OwnAddresses,
    PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput, PeerPolicy, PortRange, RelayFamily,
    RelayId, RelayIo, Server, Setup, Shared, StaticCredential, Transport,
};
use crate::wire::{Class, Message, TransactionId};

/// A [`RelayIo`] that binds nothing and remembers everything.
#[derive(Debug, Default)]
pub struct MemIo {
    /// Relay sockets "bound", by relay id.
    pub bound: BTreeMap<RelayId, SocketAddr>,
    /// Ports that fail to bind (held by "another process").
    pub busy: HashSet<u16>,
    pub closed: Vec<RelayId>,
    /// The DONT-FRAGMENT wish of every bind, in order.
    pub df: Vec<Fragmentation>,
}

/// Panics when the core breaks the `RelayIo` contract (a relay id bound
/// twice, an unbound one closed): every test on the sim checks it.
impl RelayIo for MemIo {
    fn bind(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        fragmentation: Fragmentation,
    ) -> std::io::Result<()> {
        if self.busy.contains(&addr.port()) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        assert!(
            self.bound.insert(relay, addr).is_none(),
            "relay id reused while bound"
        );
        self.df.push(fragmentation);
        Ok(())
    }

    fn close(&mut self, relay: RelayId) {
        assert!(
            self.bound.remove(&relay).is_some(),
            "closing an unbound relay"
        );
        self.closed.push(relay);
    }
}

/// Why a simulated exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("the server did not answer")]
    NoAnswer,
    #[error("error response {0}")]
    Code(u16),
    #[error("malformed response")]
    Malformed,
}

/// A server core with its in-memory environment.
pub struct SimServer {
    pub server: Server,
    pub io: MemIo,
    pub now: Now,
    pub counters: Arc<Counters>,
    pub shared: Arc<Shared>,
    seq: u64,
    out: Vec<u8>,
}

impl SimServer {
    /// A core for `cfg`, seeded deterministically.
    pub fn new(cfg: &SimConfig, seed: u64) -> Self {
        Self::shard(cfg, seed, Arc::new(Shared::new(cfg.ports)), 0)
    }

    /// Another shard of the same server: a core with its own counters and
    /// relays, sharing `shared` (ports, quotas, relay directory) with the
    /// others. Give each shard its own number; set their `now` equal.
    pub fn shard(cfg: &SimConfig, seed: u64, shared: Arc<Shared>, shard: u16) -> Self {
        let counters = Arc::new(Counters::default());
        let creds = crate::core::Credentials::new(
            &cfg.core.realm,
            cfg.secrets.clone(),
            &cfg.users,
            cfg.nonce_lifetime.as_secs(),
        );
        let server = Server::new(Setup {
            cfg: Arc::new(cfg.core.clone()),
            creds: Arc::new(creds),
            shared: shared.clone(),
            counters: counters.clone(),
            seed,
            nonce_key: [seed as u8; 32],
            shard,
        });
        SimServer {
            server,
            io: MemIo::default(),
            now: Now::new(start_instant(), 1_800_000_000),
            counters,
            shared,
            seq: 0,
            out: Vec::with_capacity(1500),
        }
    }

    /// A fresh transaction id (a counter: deterministic).
    pub fn tid(&mut self) -> TransactionId {
        self.seq += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.seq.to_be_bytes());
        TransactionId::new(t)
    }

    /// Move the clock and run the core's timers.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
        self.server.handle_timeout(self.now, &mut self.io);
    }

    /// Hand bytes to the core as if from `ft`; returns the reply, if any.
    pub fn request(&mut self, ft: &FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
        self.out.clear();
        match self
            .server
            .handle_client(self.now, ft, bytes, &mut self.out, &mut self.io)
        {
            ClientOutput::Reply => Some(self.out.clone()),
            _ => None,
        }
    }

    /// Hand bytes to the core as if from `ft`; returns what the core
    /// decided, with the bytes it points at copied out.
    pub fn from_client(&mut self, ft: &FiveTuple, bytes: &[u8]) -> Routed {
        self.out.clear();
        match self
            .server
            .handle_client(self.now, ft, bytes, &mut self.out, &mut self.io)
        {
            ClientOutput::None => Routed::None,
            ClientOutput::Reply => Routed::Reply(self.out.clone()),
            ClientOutput::ToPeer { relay, peer, data } => Routed::ToPeer {
                relay,
                peer,
                data: data.to_vec(),
            },
            ClientOutput::ToClient { ft, range } => Routed::ToClient {
                ft,
                data: self.out[range].to_vec(),
            },
        }
    }

    fn check(&mut self, ft: &FiveTuple, req: &[u8]) -> Result<Vec<u8>, SimError> {
        let resp = self.request(ft, req).ok_or(SimError::NoAnswer)?;
        let m = Message::parse(&resp).map_err(|_| SimError::Malformed)?;
        match m.class() {
            Class::Success => Ok(resp),
            _ => Err(SimError::Code(
                m.error_code().ok().flatten().map_or(0, |e| e.code),
            )),
        }
    }

    /// Allocate with the 401 round trip. Returns the session, the relayed
    /// address and the relay id.
    pub fn allocate(
        &mut self,
        ft: &FiveTuple,
        creds: Credentials,
        opts: &AllocateOptions,
    ) -> Result<(Session, SocketAddr, RelayId), SimError> {
        let mut req = Vec::new();
        let tid = self.tid();
        client::allocate(&mut req, tid, opts, None);
        let resp = self.request(ft, &req).ok_or(SimError::NoAnswer)?;
        let m = Message::parse(&resp).map_err(|_| SimError::Malformed)?;
        let session = Session::from_challenge(&m, creds, SignOptions::default())
            .ok_or(SimError::Malformed)?;
        req.clear();
        let tid = self.tid();
        client::allocate(&mut req, tid, opts, Some(&session));
        let resp = self.check(ft, &req)?;
        let m = Message::parse(&resp).map_err(|_| SimError::Malformed)?;
        let relayed = m
            .xor_relayed_address()
            .ok()
            .flatten()
            .ok_or(SimError::Malformed)?;
        let relay = self
            .io
            .bound
            .iter()
            .find(|(_, a)| a.port() == relayed.port() && a.is_ipv6() == relayed.is_ipv6())
            .map(|(r, _)| *r)
            .ok_or(SimError::Malformed)?;
        Ok((session, relayed, relay))
    }

    pub fn create_permission(
        &mut self,
        ft: &FiveTuple,
        s: &Session,
        peers: &[SocketAddr],
    ) -> Result<(), SimError> {
        let mut req = Vec::new();
        let tid = self.tid();
        client::create_permission(&mut req, tid, peers, s);
        self.check(ft, &req).map(|_| ())
    }

    pub fn channel_bind(
        &mut self,
        ft: &FiveTuple,
        s: &Session,
        ch: u16,
        peer: SocketAddr,
    ) -> Result<(), SimError> {
        let mut req = Vec::new();
        let tid = self.tid();
        client::channel_bind(&mut req, tid, ch, peer, s);
        self.check(ft, &req).map(|_| ())
    }

    /// Deliver a peer datagram to a relay; returns what goes to the client.
    pub fn peer_datagram(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        match self
            .server
            .handle_peer(self.now, relay, PeerAddr(peer), &mut buf, payload.len())
        {
            PeerOutput::ToClient { ft, data } => Some((ft, data.to_vec())),
            PeerOutput::None => None,
        }
    }
}

/// [`ClientOutput`] with the bytes copied out (see
/// [`SimServer::from_client`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Dropped (counted) or nothing to answer.
    None,
    Reply(Vec<u8>),
    /// Through the kernel, from `relay`'s socket.
    ToPeer {
        relay: RelayId,
        peer: PeerAddr,
        data: Vec<u8>,
    },
    /// Framed by the core for the client of `ft` (relay to relay).
    ToClient {
        ft: FiveTuple,
        data: Vec<u8>,
    },
}

/// A UDP five-tuple towards `server`.
pub fn udp(client: SocketAddr, server: SocketAddr) -> FiveTuple {
    FiveTuple {
        client: ClientAddr(client),
        server,
        transport: Transport::Udp,
    }
}

/// The instant a simulation's clock starts at. Any instant will do: the
/// simulation only ever adds to it, and never reads the clock again.
#[allow(
    clippy::disallowed_methods,
    reason = "an arbitrary starting point for the manual clock, read once"
)]
fn start_instant() -> Instant {
    Instant::now()
}

/// What a simulated server runs with: the core's configuration, its
/// credentials and its relay port range.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub core: CoreConfig,
    pub secrets: Vec<String>,
    pub users: std::collections::BTreeMap<String, StaticCredential>,
    pub ports: PortRange,
    pub nonce_lifetime: Duration,
}

/// A config for simulations: relay on `relay_ip` with a wide port range,
/// one REST secret and one static user (`sim`/`sim`), quotas out of the
/// way, the peer policy opened for `allow`, everything else as the
/// server's defaults.
pub fn sim_config(relay_ip: &str, secret: &str, allow: &[&str]) -> SimConfig {
    let bind: std::net::IpAddr = relay_ip.parse().expect("a relay IP");
    let allow: Vec<String> = allow.iter().map(|a| a.to_string()).collect();
    SimConfig {
        core: CoreConfig {
            realm: "sim".into(),
            software: Some(concat!("turnpike ", env!("CARGO_PKG_VERSION")).into()),
            relay4: Some(RelayFamily {
                bind,
                advertised: bind,
                follow_local: bind.is_unspecified(),
            }),
            relay6: None,
            max_lifetime: Duration::from_secs(3600),
            policy: PeerPolicy::new(&allow, &[])
                .expect("valid CIDRs")
                .with_own(OwnAddresses::new([bind], [], (10000, 60000))),
            max_allocations: 1_000_000,
            max_allocations_per_user: 1_000_000,
            max_permissions: 64,
            max_channels: 64,
            max_bytes_per_sec: 0,
            strict_channel_numbers: false,
            draining: false,
            alternate_servers: Vec::new(),
            redact_client_ips: false,
            publish_relays: true,
            unauth_limit: crate::core::RateLimit::default(),
        },
        secrets: vec![secret.to_string()],
        users: [("sim".to_string(), StaticCredential::Password("sim".into()))].into(),
        ports: PortRange {
            low: 10000,
            high: 60000,
        },
        nonce_lifetime: Duration::from_secs(3600),
    }
}
