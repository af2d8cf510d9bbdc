//! The sans-IO server core driven by arbitrary input: datagrams from
//! arbitrary five-tuples, valid and mutated TURN requests, peer datagrams
//! and a clock that moves, with the invariants a hostile client must never
//! break checked after every step.
//!
//! The input is read as a program: each step is an opcode byte and its
//! operands (see [`Step`]). Steps that build valid requests (Allocate with
//! the 401 round trip, CreatePermission, ChannelBind, Refresh, Send, ChannelData)
//! take the fuzzer deep into allocations; raw and mutated steps attack
//! every state that reaches.
//!
//! Invariants (a failure panics with the reason):
//! - no panic anywhere in the core;
//! - allocations, allocations per user, permissions and channels per
//!   allocation stay within the configured quotas;
//! - nothing is relayed to an address the policy must deny (loopback,
//!   private, link-local, the metadata address, and IPv6 forms that embed
//!   them: mapped, SIIT, 6to4, Teredo, NAT64, plus the special IPv6 ranges
//!   of issue 12), judged by an oracle written here independently of the
//!   core's policy code;
//! - a peer's datagram reaches a client only from a permitted peer;
//! - an error response, or a Binding response, to a raw or mutated UDP
//!   request is at most 3 times the bytes of that request (no
//!   amplification; a TCP or TLS source cannot be spoofed).
//!
//! The time budget per input is libFuzzer's `-timeout` (see
//! `fuzz/run.sh`); an input is at most [`MAX_STEPS`] steps.
//!
//! Shared by `fuzz_targets/server.rs` and `tests/fuzz_server.rs` (the
//! deterministic version in the normal test run), which include this file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use turnpike_proto::client::{self, AllocateOptions, Credentials, Session};
use turnpike_proto::core::{
    ClientAddr, FiveTuple, OwnAddresses, PeerPolicy, RelayFamily, RelayId, StaticCredential,
    Transport,
};
use turnpike_proto::sim::{Routed, SimServer, sim_config};
use turnpike_proto::wire::{Class, Message, Method, TransactionId};

/// At most this many steps per input.
pub const MAX_STEPS: usize = 300;
/// The quotas the fuzzed server runs with (small, so the fuzzer hits them).
pub const MAX_ALLOCATIONS: usize = 6;
pub const MAX_PER_USER: usize = 3;
pub const MAX_PERMISSIONS: usize = 4;
pub const MAX_CHANNELS: usize = 4;
/// The REST secret and the static user of the fuzzed server.
const SECRET: &str = "fuzz-secret";

/// The server's own addresses: a listener on each family.
const SERVER4: &str = "203.0.113.1:3478";
const SERVER6: &str = "[2001:db8::ffff]:3478";

/// The relay port range (small: the core's tables are sized by it, and a
/// fresh server per input must be cheap).
const RELAY_PORTS: (u16, u16) = (20000, 20127);

fn own_ip(a: &str) -> IpAddr {
    a.parse::<SocketAddr>()
        .unwrap_or_else(|_| unreachable!())
        .ip()
}

/// Peers allowed explicitly (documentation ranges are denied by default).
const ALLOW: &[&str] = &["198.51.100.0/24", "2001:db8:1::/48"];

/// The five-tuples clients speak from: IPv4 and IPv6, UDP and TCP.
fn five_tuples() -> [FiveTuple; 8] {
    let s4: SocketAddr = SERVER4.parse().unwrap_or_else(|_| unreachable!());
    let s6: SocketAddr = SERVER6.parse().unwrap_or_else(|_| unreachable!());
    let ft = |c: &str, server, transport| FiveTuple {
        client: ClientAddr(c.parse().unwrap_or_else(|_| unreachable!())),
        server,
        transport,
    };
    [
        ft("192.0.2.1:40000", s4, Transport::Udp),
        ft("192.0.2.1:40001", s4, Transport::Udp),
        ft("192.0.2.2:40000", s4, Transport::Udp),
        ft("192.0.2.3:40000", s4, Transport::Tcp),
        ft("[2001:db8:2::1]:40000", s6, Transport::Udp),
        ft("[2001:db8:2::1]:40001", s6, Transport::Udp),
        ft("[2001:db8:3::1]:40000", s6, Transport::Tcp),
        ft("[2001:db8:2:0:1::1]:40000", s6, Transport::Udp),
    ]
}

/// Peers a step may name: allowed ones and every form of denied one.
const PEERS: &[&str] = &[
    "198.51.100.7:9000",
    "198.51.100.8:9001",
    "[2001:db8:1::7]:9000",
    "127.0.0.1:3478",
    "10.1.2.3:80",
    "169.254.169.254:80",
    "192.168.1.1:53",
    "0.0.0.0:9",
    "[::1]:3478",
    "[::ffff:127.0.0.1]:9",
    "[::ffff:0:7f00:1]:9",
    "[2002:7f00:1::1]:9",
    "[2002:a01:203::1]:9",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]:9",
    "[64:ff9b::7f00:1]:9",
    "[64:ff9b::a01:203]:9",
    "[64:ff9b:1::1]:9",
    "[fec0::1]:9",
    "[100::1]:9",
    "[5f00::1]:9",
    "[fe80::1]:9",
    "[fc00::1]:9",
    "203.0.113.1:3478",
    "[2001:db8::ffff]:3478",
    "203.0.113.1:9",
    "203.0.113.1:20000",
    "[2001:db8::ffff]:20000",
];

/// What an input byte string means, step by step.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A datagram of arbitrary bytes from a five-tuple.
    Raw,
    /// Allocate (with the 401 round trip) as a static or a REST user.
    Allocate,
    CreatePermission,
    ChannelBind,
    Refresh,
    /// A Send indication or a ChannelData message.
    Data,
    /// A datagram from a peer to one of the relays.
    Peer,
    /// The clock moves.
    Advance,
    /// A valid signed request with some bytes changed.
    Mutated,
    /// A small well-formed request without credentials: any method, a few
    /// attributes (the smallest triggers of the unauthenticated answers).
    Unauthenticated,
}

const STEPS: [Step; 10] = [
    Step::Raw,
    Step::Allocate,
    Step::CreatePermission,
    Step::ChannelBind,
    Step::Refresh,
    Step::Data,
    Step::Peer,
    Step::Advance,
    Step::Mutated,
    Step::Unauthenticated,
];

/// Attributes an unauthenticated step may carry (type, value).
const UNAUTH_ATTRS: &[(u16, &[u8])] = &[
    (0x0019, &[17, 0, 0, 0]),                  // REQUESTED-TRANSPORT UDP
    (0x0019, &[6, 0, 0, 0]),                   // REQUESTED-TRANSPORT TCP
    (0x0006, b"user"),                         // USERNAME
    (0x0014, b"realm"),                        // REALM
    (0x0015, b"nonce-nonce"),                  // NONCE
    (0x000d, &[0, 0, 0, 0]),                   // LIFETIME 0
    (0x0017, &[2, 0, 0, 0]),                   // REQUESTED-ADDRESS-FAMILY IPv6
    (0x0018, &[0x80]),                         // EVEN-PORT
    (0x0022, &[0; 8]),                         // RESERVATION-TOKEN
    (0x7777, &[0; 4]),                         // unknown, comprehension-required
    (0xc777, &[0; 4]),                         // unknown, comprehension-optional
    (0x0008, &[0; 20]),                        // MESSAGE-INTEGRITY (wrong)
    (0x0012, &[0, 1, 0x21, 0x12, 0xa4, 0x43]), // XOR-PEER-ADDRESS
];

/// Reads operands off the input; past its end everything is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    fn done(&self) -> bool {
        self.data.is_empty()
    }

    /// A peer: one of [`PEERS`], or (one time in eight) any address.
    fn peer(&mut self) -> SocketAddr {
        let b = self.byte();
        if b % 8 == 7 {
            if self.byte().is_multiple_of(2) {
                SocketAddr::new(Ipv4Addr::from(self.u32()).into(), self.u16())
            } else {
                let mut o = [0u8; 16];
                for x in &mut o {
                    *x = self.byte();
                }
                SocketAddr::new(Ipv6Addr::from(o).into(), self.u16())
            }
        } else {
            PEERS[usize::from(b) % PEERS.len()]
                .parse()
                .unwrap_or_else(|_| unreachable!())
        }
    }
}

/// An allocation a step made, and how to sign for it.
struct Alloc {
    ft: FiveTuple,
    session: Session,
    relay: RelayId,
    relayed: SocketAddr,
}

/// The fuzzed server and what the driver knows about it.
pub struct Harness {
    sim: SimServer,
    fts: [FiveTuple; 8],
    allocs: Vec<Alloc>,
    buf: Vec<u8>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let mut cfg = sim_config("203.0.113.1", SECRET, ALLOW);
        cfg.core.relay6 = Some(RelayFamily {
            bind: "2001:db8::ffff".parse().unwrap_or_else(|_| unreachable!()),
            advertised: "2001:db8::ffff".parse().unwrap_or_else(|_| unreachable!()),
            follow_local: false,
        });
        cfg.core.max_allocations = MAX_ALLOCATIONS;
        cfg.core.max_allocations_per_user = MAX_PER_USER;
        cfg.core.max_permissions = MAX_PERMISSIONS;
        cfg.core.max_channels = MAX_CHANNELS;
        cfg.core.policy = PeerPolicy::new(
            &ALLOW.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[],
        )
        .unwrap_or_else(|_| unreachable!())
        .with_own(OwnAddresses::new(
            [own_ip(SERVER4), own_ip(SERVER6)],
            [3478],
            RELAY_PORTS,
        ));
        cfg.ports = turnpike_proto::core::PortRange {
            low: RELAY_PORTS.0,
            high: RELAY_PORTS.1,
        };
        cfg.users.insert(
            "other".into(),
            StaticCredential::Password("other-password".into()),
        );
        Harness {
            sim: SimServer::new(&cfg, 7),
            fts: five_tuples(),
            allocs: Vec::new(),
            buf: Vec::with_capacity(2048),
        }
    }

    /// Run one input.
    pub fn run(data: &[u8]) {
        let mut h = Harness::new();
        let mut input = Input { data };
        for _ in 0..MAX_STEPS {
            if input.done() {
                break;
            }
            let step = STEPS[usize::from(input.byte()) % STEPS.len()];
            h.step(step, &mut input);
            h.check_quotas();
        }
    }

    /// A valid path through the driver, for the test that shows the
    /// driver reaches relaying: allocate, permit an allowed peer (refused
    /// for a denied one), send to it. Returns (allocations, permissions of
    /// the allocation) if the Send was relayed, else (0, 0).
    pub fn probe_valid_path() -> (usize, usize) {
        let mut h = Harness::new();
        // Allocate as "sim" from the first five-tuple.
        h.step(
            Step::Allocate,
            &mut Input {
                data: &[0, 0, 3, 3, 1],
            },
        );
        // Permit PEERS[0] (allowed), then PEERS[3] (127.0.0.1: refused).
        h.step(Step::CreatePermission, &mut Input { data: &[0, 0, 0] });
        h.step(Step::CreatePermission, &mut Input { data: &[0, 0, 3] });
        // Send 4 bytes to PEERS[0] in a Send indication.
        let tid = h.tid();
        h.buf.clear();
        let peer = PEERS[0].parse().unwrap_or_else(|_| unreachable!());
        client::send_indication(&mut h.buf, tid, peer, b"ping");
        let ft = h.allocs[0].ft;
        let sent = matches!(h.sim.from_client(&ft, &h.buf), Routed::ToPeer { .. });
        let sessions = h.sim.server.sessions(h.sim.now);
        match (sent, sessions.first()) {
            (true, Some(s)) => (sessions.len(), s.permissions.len()),
            _ => (0, 0),
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.sim.tid()
    }

    fn step(&mut self, step: Step, input: &mut Input<'_>) {
        match step {
            Step::Raw => {
                let ft = self.fts[usize::from(input.byte()) % self.fts.len()];
                let len = usize::from(input.u16() % 1600);
                let bytes = input.bytes(len).to_vec();
                let out = self.sim.from_client(&ft, &bytes);
                self.check_routed(&ft, &bytes, &out, true);
            }
            Step::Allocate => {
                let ft = self.fts[usize::from(input.byte()) % self.fts.len()];
                let who = input.byte();
                let creds = match who % 4 {
                    0 => Credentials::new("sim", "sim"),
                    1 => Credentials::new("other", "other-password"),
                    2 => {
                        // A REST credential that expires within the next
                        // ~4 minutes, or already has.
                        let wall = self.sim.now.unix;
                        let expiry = wall + u64::from(input.byte()) - 16;
                        Credentials::rest(SECRET, "rest", expiry)
                    }
                    _ => Credentials::new("sim", "wrong"),
                };
                let opts = AllocateOptions {
                    family: match input.byte() % 4 {
                        0 => Some(2),
                        1 => Some(1),
                        _ => None,
                    },
                    even_port: match input.byte() % 4 {
                        0 => Some(true),
                        1 => Some(false),
                        _ => None,
                    },
                    lifetime: match input.byte() % 3 {
                        0 => Some(input.u32()),
                        _ => None,
                    },
                    ..AllocateOptions::default()
                };
                if let Ok((session, relayed, relay)) = self.sim.allocate(&ft, creds, &opts) {
                    self.allocs.retain(|a| a.relay != relay);
                    self.allocs.push(Alloc {
                        ft,
                        session,
                        relay,
                        relayed,
                    });
                }
            }
            Step::CreatePermission => {
                let Some(i) = self.pick(input) else { return };
                let n = 1 + usize::from(input.byte() % 6);
                let peers: Vec<SocketAddr> = (0..n).map(|_| input.peer()).collect();
                let tid = self.tid();
                self.buf.clear();
                client::create_permission(&mut self.buf, tid, &peers, &self.allocs[i].session);
                self.send_signed(i);
            }
            Step::ChannelBind => {
                let Some(i) = self.pick(input) else { return };
                let ch = match input.byte() % 4 {
                    0 => input.u16(),
                    _ => 0x4000 + u16::from(input.byte() % 8),
                };
                let peer = input.peer();
                let tid = self.tid();
                self.buf.clear();
                client::channel_bind(&mut self.buf, tid, ch, peer, &self.allocs[i].session);
                self.send_signed(i);
            }
            Step::Refresh => {
                let Some(i) = self.pick(input) else { return };
                let lifetime = match input.byte() % 4 {
                    0 => Some(0),
                    1 => Some(input.u32()),
                    2 => None,
                    _ => Some(600),
                };
                let tid = self.tid();
                self.buf.clear();
                client::refresh(&mut self.buf, tid, lifetime, &self.allocs[i].session);
                self.send_signed(i);
            }
            Step::Data => {
                let Some(i) = self.pick(input) else { return };
                let peer = input.peer();
                let len = usize::from(input.byte()) * 4;
                let payload = vec![0xa5u8; len];
                self.buf.clear();
                if input.byte().is_multiple_of(2) {
                    let tid = self.tid();
                    client::send_indication(&mut self.buf, tid, peer, &payload);
                } else {
                    let ch = 0x4000 + u16::from(input.byte() % 8);
                    self.buf.extend_from_slice(&ch.to_be_bytes());
                    self.buf
                        .extend_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
                    self.buf.extend_from_slice(&payload);
                }
                let ft = self.allocs[i].ft;
                let bytes = std::mem::take(&mut self.buf);
                let out = self.sim.from_client(&ft, &bytes);
                self.check_routed(&ft, &bytes, &out, false);
                self.buf = bytes;
            }
            Step::Peer => {
                let Some(i) = self.pick(input) else { return };
                let peer = input.peer();
                let len = usize::from(input.u16() % 1400);
                let payload = input.bytes(len).to_vec();
                let (relay, relayed) = (self.allocs[i].relay, self.allocs[i].relayed);
                if !self.sim.io.bound.contains_key(&relay) {
                    return;
                }
                // Only peers of the relay's family reach its socket.
                if peer.is_ipv4() != relayed.is_ipv4() {
                    return;
                }
                if self.sim.peer_datagram(relay, peer, &payload).is_some() {
                    let permitted = self
                        .sim
                        .server
                        .sessions(self.sim.now)
                        .iter()
                        .any(|s| s.advertised == relayed && s.permissions.contains(&peer.ip()));
                    assert!(
                        permitted,
                        "a datagram from {peer} reached the client of {relayed} without a permission"
                    );
                }
            }
            Step::Advance => {
                let secs = match input.byte() % 4 {
                    0 => u64::from(input.byte()) * 60,
                    _ => u64::from(input.byte() % 32),
                };
                self.sim.advance(Duration::from_secs(secs));
            }
            Step::Mutated => {
                let Some(i) = self.pick(input) else { return };
                let tid = self.tid();
                self.buf.clear();
                let peer = input.peer();
                match input.byte() % 3 {
                    0 => client::refresh(&mut self.buf, tid, Some(600), &self.allocs[i].session),
                    1 => client::create_permission(
                        &mut self.buf,
                        tid,
                        &[peer],
                        &self.allocs[i].session,
                    ),
                    _ => client::channel_bind(
                        &mut self.buf,
                        tid,
                        0x4001,
                        peer,
                        &self.allocs[i].session,
                    ),
                }
                let mut bytes = std::mem::take(&mut self.buf);
                for _ in 0..1 + input.byte() % 4 {
                    let at = usize::from(input.u16()) % bytes.len().max(1);
                    let x = input.byte();
                    match input.byte() % 3 {
                        0 => {
                            if let Some(b) = bytes.get_mut(at) {
                                *b ^= x;
                            }
                        }
                        1 => bytes.truncate(at),
                        _ => bytes.extend_from_slice(&[x; 4]),
                    }
                }
                let ft = self.allocs[i].ft;
                let out = self.sim.from_client(&ft, &bytes);
                self.check_routed(&ft, &bytes, &out, true);
                self.buf = bytes;
            }
            Step::Unauthenticated => {
                let ft = self.fts[usize::from(input.byte()) % self.fts.len()];
                // A request (class bits 0) of any method.
                let method = match input.byte() % 4 {
                    0 => input.u16() & 0x3eef,
                    1 => 0x0001,
                    2 => 0x0003,
                    _ => [0x0004, 0x0008, 0x0009][usize::from(input.byte() % 3)],
                };
                let mut body = Vec::new();
                for _ in 0..input.byte() % 4 {
                    let (t, v) = UNAUTH_ATTRS[usize::from(input.byte()) % UNAUTH_ATTRS.len()];
                    body.extend_from_slice(&t.to_be_bytes());
                    body.extend_from_slice(&u16::try_from(v.len()).unwrap_or(0).to_be_bytes());
                    body.extend_from_slice(v);
                    body.resize(body.len().next_multiple_of(4), 0);
                }
                let mut m = Vec::with_capacity(20 + body.len());
                m.extend_from_slice(&method.to_be_bytes());
                m.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
                m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
                m.extend_from_slice(input.bytes(12));
                m.resize(20, 0);
                m.extend_from_slice(&body);
                let out = self.sim.from_client(&ft, &m);
                self.check_routed(&ft, &m, &out, true);
            }
        }
    }

    /// One of the allocations made so far (it may since have ended).
    fn pick(&self, input: &mut Input<'_>) -> Option<usize> {
        let b = usize::from(input.byte());
        (!self.allocs.is_empty()).then(|| b % self.allocs.len())
    }

    /// Send the signed request in `self.buf` on allocation `i`'s
    /// five-tuple and learn a new nonce from a 438.
    fn send_signed(&mut self, i: usize) {
        let ft = self.allocs[i].ft;
        let bytes = std::mem::take(&mut self.buf);
        let out = self.sim.from_client(&ft, &bytes);
        self.check_routed(&ft, &bytes, &out, false);
        if let Routed::Reply(r) = &out {
            if let Ok(m) = Message::parse(r) {
                self.allocs[i].session.update_nonce(&m);
            }
        }
        self.buf = bytes;
    }

    /// What the core decided for `req` breaks no invariant.
    fn check_routed(&self, from: &FiveTuple, req: &[u8], out: &Routed, unauthenticated: bool) {
        match out {
            Routed::ToPeer { peer, .. } => {
                assert!(
                    !must_deny(peer.0),
                    "relayed to {}, which the policy must deny",
                    peer.0
                );
            }
            // Amplification needs a spoofable source: UDP.
            Routed::Reply(r) if unauthenticated && from.transport == Transport::Udp => {
                let Ok(m) = Message::parse(r) else {
                    panic!("the core answered with bytes that do not parse");
                };
                let bounded = m.class() == Class::Error || m.method() == Method::BINDING;
                assert!(
                    !bounded || r.len() <= 3 * req.len(),
                    "amplification: {} bytes ({:?} {:?}) for a {}-byte request",
                    r.len(),
                    m.method(),
                    m.class(),
                    req.len()
                );
            }
            Routed::ToClient { ft, .. } => {
                // Relay to relay: the destination is one of ours.
                assert!(self.fts.contains(ft), "relayed to an unknown client {ft:?}");
            }
            _ => {}
        }
    }

    /// The quotas hold.
    fn check_quotas(&self) {
        let sessions = self.sim.server.sessions(self.sim.now);
        assert!(
            sessions.len() <= MAX_ALLOCATIONS,
            "{} allocations",
            sessions.len()
        );
        assert!(
            self.sim.io.bound.len() <= MAX_ALLOCATIONS * 2,
            "relay sockets leak"
        );
        for s in &sessions {
            // A REST user's quota is per user, whatever the expiry.
            let user = |name: &str| name.split_once(':').map_or(name, |(_, u)| u).to_string();
            let same_user = sessions
                .iter()
                .filter(|o| user(&o.username) == user(&s.username))
                .count();
            assert!(
                same_user <= MAX_PER_USER,
                "{same_user} allocations of one user"
            );
            assert!(
                s.permissions.len() <= MAX_PERMISSIONS,
                "{} permissions",
                s.permissions.len()
            );
            assert!(
                s.channels.len() <= MAX_CHANNELS,
                "{} channels",
                s.channels.len()
            );
            for p in &s.permissions {
                // Permissions are per address: judge it on a relay port.
                assert!(
                    !must_deny(SocketAddr::new(*p, RELAY_PORTS.0)),
                    "a permission for {p}"
                );
            }
            for (_, p) in &s.channels {
                assert!(!must_deny(p.0), "a channel to {}", p.0);
            }
        }
    }
}

/// The oracle: addresses a relay must never send to, whatever the
/// configuration above allows. Written from the RFCs, independently of
/// the core's policy code.
pub fn must_deny(peer: SocketAddr) -> bool {
    // The server's own addresses, on any port but a relay port (TURN
    // inside TURN, host-local services); none of them is allowed
    // explicitly here.
    let relay_port = (RELAY_PORTS.0..=RELAY_PORTS.1).contains(&peer.port());
    if (peer.ip() == own_ip(SERVER4) || peer.ip() == own_ip(SERVER6)) && !relay_port {
        return true;
    }
    match peer.ip() {
        IpAddr::V4(v4) => v4_denied(v4),
        IpAddr::V6(v6) => v6_denied(v6),
    }
}

fn v4_denied(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

fn v6_denied(a: Ipv6Addr) -> bool {
    let s = a.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfec0 // site-local
        || (s[0..5] == [0; 5] && s[5] == 0xffff && v4_denied(embedded(s[6], s[7]))) // mapped
        || (s[0..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) // SIIT
        || s[0] == 0x2002 // 6to4 (not allowed above)
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4_denied(embedded(s[6], s[7]))) // NAT64
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64
        || s[0..4] == [0x100, 0, 0, 0] // discard
        || s[0] == 0x5f00 // SRv6 SIDs
}
