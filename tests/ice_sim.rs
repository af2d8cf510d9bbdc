//! Deterministic ICE tests: two agents and a turnpike core wired together
//! in memory on a manual clock, with a NAT model between them. No sockets,
//! no sleeps: time jumps to the next deadline or packet.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turnpike::config::Transport;
use turnpike_proto::client::Credentials;
use turnpike_proto::core::{
    ClientAddr, ClientOutput, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput,
    RelayId,
};
use turnpike_proto::ice::agent::PairReport;
use turnpike_proto::ice::{Agent, AgentConfig, PathKind, Report, SocketId, Timing, TurnServer};
use turnpike_proto::sim::{SimServer, sim_config};
use turnpike_proto::stun::Retransmit;

const SECRET: &str = "sim-secret";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// NAT behaviour (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapping {
    /// Endpoint-independent: one public port per inside socket.
    Independent,
    /// Address-and-port-dependent: a new public port per destination.
    Dependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filtering {
    /// Anyone may send to a mapped port (full cone).
    Independent,
    /// Only the exact address:port the mapping sent to.
    Dependent,
}

#[derive(Clone, Copy, Debug)]
struct NatKind {
    mapping: Mapping,
    filtering: Filtering,
    block_udp: bool,
}

const FULL_CONE: NatKind = NatKind {
    mapping: Mapping::Independent,
    filtering: Filtering::Independent,
    block_udp: false,
};
const PORT_RESTRICTED: NatKind = NatKind {
    mapping: Mapping::Independent,
    filtering: Filtering::Dependent,
    block_udp: false,
};
const SYMMETRIC: NatKind = NatKind {
    mapping: Mapping::Dependent,
    filtering: Filtering::Dependent,
    block_udp: false,
};

struct Nat {
    kind: NatKind,
    public: IpAddr,
    next_port: u16,
    /// (inside, destination-or-unspecified) → public port.
    out: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port → (inside, peers it has sent to).
    inbound: HashMap<u16, (SocketAddr, Vec<SocketAddr>)>,
}

impl Nat {
    fn new(kind: NatKind, public: &str) -> Self {
        Nat {
            kind,
            public: public.parse().unwrap(),
            next_port: 40000,
            out: HashMap::new(),
            inbound: HashMap::new(),
        }
    }

    fn outbound(&mut self, inside: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        if self.kind.block_udp {
            return None;
        }
        let key = match self.kind.mapping {
            Mapping::Independent => (inside, None),
            Mapping::Dependent => (inside, Some(dst)),
        };
        let port = match self.out.get(&key) {
            Some(p) => *p,
            None => {
                let p = self.next_port;
                self.next_port += 7;
                self.out.insert(key, p);
                self.inbound.insert(p, (inside, Vec::new()));
                p
            }
        };
        let entry = self.inbound.get_mut(&port).expect("mapped");
        if !entry.1.contains(&dst) {
            entry.1.push(dst);
        }
        Some(SocketAddr::new(self.public, port))
    }

    fn inbound(&self, port: u16, from: SocketAddr) -> Option<SocketAddr> {
        let (inside, peers) = self.inbound.get(&port)?;
        match self.kind.filtering {
            Filtering::Independent => Some(*inside),
            Filtering::Dependent => peers.contains(&from).then_some(*inside),
        }
    }
}

struct Site {
    agent: Agent,
    host: SocketAddr,
    nat: Option<Nat>,
    /// Per TURN server: UDP source address, or the TCP "connection" address
    /// the server sees.
    turn_src: Vec<SocketAddr>,
    turn_transport: Vec<Transport>,
}

#[derive(Clone, Debug)]
struct Packet {
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
    /// TCP frames between site `.0`'s TURN socket `.1` and the server.
    tcp: Option<(usize, u16)>,
}

struct Net {
    now: Instant,
    server: SimServer,
    server_addr: SocketAddr,
    sites: Vec<Site>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: HashMap<u64, Packet>,
    seq: u64,
    latency: Duration,
    exchanged: bool,
    /// Give this site the other's description this much later than the
    /// other gets its (signalling is not instant).
    delay_remote: Option<(usize, Duration)>,
    pending_remote: Option<(Instant, usize, turnpike_proto::ice::Description)>,
    /// Every transmission an agent made: (time, site, socket, to).
    log: Vec<(Instant, usize, SocketId, SocketAddr)>,
    /// Every datagram (and TCP frame) put on the simulated network, after
    /// NAT, in the order sent.
    wire: Vec<Datagram>,
    start: Instant,
}

/// One datagram on the simulated network.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Datagram {
    /// Virtual time since the start.
    at: Duration,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

struct SiteSpec {
    host: &'static str,
    nat: Option<(NatKind, &'static str)>,
    turn: Vec<Transport>,
    controlling: bool,
}

fn timing() -> Timing {
    Timing {
        pace: Duration::from_millis(10),
        // Transmissions at 0, 0.1, 0.3 and 0.7 s, failed at 1.5 s; TURN
        // requests over TCP wait 3 s.
        retransmit: Retransmit {
            rto: Duration::from_millis(100),
            max_rto: Duration::from_secs(60),
            rc: 4,
            rm: 8,
            ti: Duration::from_secs(3),
        },
        gather_timeout: Duration::from_secs(3),
        nomination_wait: Duration::from_secs(1),
        pings: 5,
        ping_interval: Duration::from_millis(10),
        ping_wait: Duration::from_millis(500),
    }
}

impl Net {
    /// The seeds every scenario uses unless it says otherwise: agent `i`
    /// gets `1000 + i`, the server 99.
    fn new(specs: Vec<SiteSpec>) -> Net {
        Net::seeded(specs, 1000, 99)
    }

    /// Agent `i` seeded with `agent_seed + i`, the server's core with
    /// `server_seed`.
    fn seeded(specs: Vec<SiteSpec>, agent_seed: u64, server_seed: u64) -> Net {
        let cfg = sim_config("203.0.113.1", SECRET, &[]);
        let server = SimServer::new(&cfg, server_seed);
        let now = server.now.mono;
        let server_addr = addr("203.0.113.1:3478");
        let creds = Credentials::rest(SECRET, "sim", server.now.unix + 3600);
        let sites = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let host: SocketAddr = addr(s.host);
                let turn_servers = s
                    .turn
                    .iter()
                    .map(|&t| TurnServer {
                        addr: server_addr,
                        transport: t,
                        creds: creds.clone(),
                    })
                    .collect();
                let cfg = AgentConfig {
                    controlling: s.controlling,
                    stun_server: Some(server_addr),
                    turn_servers,
                    timing: timing(),
                    only: None,
                };
                let turn_src = s
                    .turn
                    .iter()
                    .enumerate()
                    .map(|(j, t)| match t {
                        Transport::Udp => SocketAddr::new(host.ip(), 6000 + j as u16),
                        // The address the server sees for a TCP connection.
                        _ => SocketAddr::new(
                            s.nat.map_or(host.ip(), |(_, p)| p.parse().unwrap()),
                            30000 + j as u16,
                        ),
                    })
                    .collect();
                Site {
                    agent: Agent::new(cfg, vec![host], agent_seed + i as u64, now),
                    host,
                    nat: s.nat.map(|(k, p)| Nat::new(k, p)),
                    turn_src,
                    turn_transport: s.turn.clone(),
                }
            })
            .collect();
        Net {
            now,
            server,
            server_addr,
            sites,
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
            seq: 0,
            latency: Duration::from_millis(5),
            exchanged: false,
            delay_remote: None,
            pending_remote: None,
            log: Vec::new(),
            wire: Vec::new(),
            start: now,
        }
    }

    fn enqueue(&mut self, p: Packet) {
        self.wire.push(Datagram {
            at: self.now - self.start,
            src: p.src,
            dst: p.dst,
            data: p.data.clone(),
        });
        self.seq += 1;
        self.packets.insert(self.seq, p);
        self.queue
            .push(Reverse((self.now + self.latency, self.seq)));
    }

    /// Drain agents' transmissions into the network.
    fn pump(&mut self) {
        for i in 0..self.sites.len() {
            while let Some(t) = self.sites[i].agent.poll_transmit() {
                self.log.push((self.now, i, t.socket, t.to));
                let site = &self.sites[i];
                let my_ip = site.host.ip();
                let (src, tcp) = match t.socket {
                    SocketId::Host(_) => (site.host, None),
                    SocketId::Turn(j) => match site.turn_transport[j as usize] {
                        Transport::Udp => (site.turn_src[j as usize], None),
                        _ => (site.turn_src[j as usize], Some((i, j))),
                    },
                };
                if tcp.is_some() {
                    self.enqueue(Packet {
                        src,
                        dst: t.to,
                        data: t.data,
                        tcp,
                    });
                    continue;
                }
                // Same private network: delivered directly.
                let same_lan = self.sites.iter().any(|s| {
                    s.host.ip() == t.to.ip()
                        && s.host.ip() != my_ip
                        && same_subnet(s.host.ip(), my_ip)
                });
                let src = if same_lan {
                    Some(src)
                } else {
                    match &mut self.sites[i].nat {
                        Some(nat) => nat.outbound(src, t.to),
                        None => Some(src),
                    }
                };
                if let Some(src) = src {
                    self.enqueue(Packet {
                        src,
                        dst: t.to,
                        data: t.data,
                        tcp: None,
                    });
                }
            }
        }
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        if let Some((site, j)) = p.tcp {
            if p.dst == self.server_addr {
                // Client → server over TCP.
                let ft = FiveTuple {
                    client: ClientAddr(p.src),
                    server: self.server_addr,
                    transport: Transport::Tcp,
                };
                self.server_input(ft, &p.data);
            } else {
                // Server → client over TCP.
                self.sites[site].agent.handle_packet(
                    now,
                    SocketId::Turn(j),
                    self.server_addr,
                    &p.data,
                );
            }
            return;
        }
        if p.dst == self.server_addr {
            let ft = FiveTuple {
                client: ClientAddr(p.src),
                server: self.server_addr,
                transport: Transport::Udp,
            };
            self.server_input(ft, &p.data);
            return;
        }
        if p.dst.ip() == self.server_addr.ip() {
            // To a relayed address.
            let relay = self
                .server
                .io
                .bound
                .iter()
                .find(|(_, a)| a.port() == p.dst.port())
                .map(|(r, _)| *r);
            if let Some(relay) = relay {
                self.relay_input(relay, p.src, &p.data);
            }
            return;
        }
        // To a site: via its NAT, or directly to a public/LAN host.
        for i in 0..self.sites.len() {
            let site = &self.sites[i];
            let inside = match &site.nat {
                Some(nat) if nat.public == p.dst.ip() => nat.inbound(p.dst.port(), p.src),
                _ if site.host == p.dst => Some(p.dst),
                _ => site.turn_src.iter().find(|a| **a == p.dst).copied(),
            };
            let Some(inside) = inside else { continue };
            let site = &mut self.sites[i];
            if inside == site.host {
                site.agent
                    .handle_packet(now, SocketId::Host(0), p.src, &p.data);
            } else if let Some(j) = site.turn_src.iter().position(|a| *a == inside) {
                site.agent
                    .handle_packet(now, SocketId::Turn(j as u16), p.src, &p.data);
            }
            return;
        }
    }

    fn server_input(&mut self, ft: FiveTuple, data: &[u8]) {
        let mut out = Vec::new();
        self.server.now = self.server.now.plus(Duration::ZERO);
        let now = turnpike_proto::core::Now::new(self.now, self.server.now.unix);
        let r = self
            .server
            .server
            .handle_client(now, &ft, data, &mut out, &mut self.server.io);
        match r {
            ClientOutput::Reply => self.server_send(ft, out),
            ClientOutput::ToPeer { relay, peer, data } => {
                let src = self.server.io.bound[&relay];
                let src = SocketAddr::new(self.server_addr.ip(), src.port());
                let data = data.to_vec();
                self.enqueue(Packet {
                    src,
                    dst: peer.0,
                    data,
                    tcp: None,
                });
            }
            ClientOutput::ToClient { ft, range } => {
                let data = out[range].to_vec();
                self.server_send(ft, data);
            }
            ClientOutput::None => {}
        }
    }

    fn relay_input(&mut self, relay: RelayId, from: SocketAddr, data: &[u8]) {
        let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        let out = match self.server.server.handle_peer(
            turnpike_proto::core::Now::new(self.now, self.server.now.unix),
            relay,
            PeerAddr(from),
            &mut buf,
            data.len(),
        ) {
            PeerOutput::ToClient { ft, data } => Some((ft, data.to_vec())),
            PeerOutput::None => None,
        };
        if let Some((ft, d)) = out {
            self.server_send(ft, d);
        }
    }

    fn server_send(&mut self, ft: FiveTuple, data: Vec<u8>) {
        if ft.transport == Transport::Udp {
            self.enqueue(Packet {
                src: self.server_addr,
                dst: ft.client.0,
                data,
                tcp: None,
            });
            return;
        }
        for (i, s) in self.sites.iter().enumerate() {
            if let Some(j) = s.turn_src.iter().position(|a| *a == ft.client.0) {
                self.enqueue(Packet {
                    src: self.server_addr,
                    dst: ft.client.0,
                    data,
                    tcp: Some((i, j as u16)),
                });
                return;
            }
        }
    }

    /// Run until both agents are done (bounded).
    fn run(&mut self) {
        let start = self.now;
        for s in &mut self.sites {
            s.agent.start(start);
        }
        let deadline = start + Duration::from_secs(60);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not converge");
            self.pump();
            if !self.exchanged && self.sites.iter().all(|s| s.agent.gathering_done()) {
                self.exchanged = true;
                let d: Vec<_> = self.sites.iter().map(|s| s.agent.description()).collect();
                let now = self.now;
                for (i, other) in [(0, 1), (1, 0)] {
                    match self.delay_remote {
                        Some((late, delay)) if late == i => {
                            self.pending_remote = Some((now + delay, i, d[other].clone()));
                        }
                        _ => self.sites[i].agent.set_remote(now, &d[other]),
                    }
                }
                continue;
            }
            if let Some((at, i, d)) = self.pending_remote.take() {
                if self.now >= at {
                    self.sites[i].agent.set_remote(self.now, &d);
                    continue;
                }
                self.pending_remote = Some((at, i, d));
            }
            if self.exchanged && self.sites.iter().all(|s| s.agent.is_done()) {
                return;
            }
            let next_packet = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .sites
                .iter()
                .filter_map(|s| s.agent.poll_timeout())
                .chain(self.server.server.poll_timeout())
                .chain(self.pending_remote.as_ref().map(|p| p.0))
                .min();
            let next = match (next_packet, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).expect("something is always pending until done"),
            };
            assert!(next <= deadline, "simulation ran past 60 s of virtual time");
            self.now = self.now.max(next);
            while let Some(Reverse((t, id))) = self.queue.peek().copied() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                let p = self.packets.remove(&id).expect("queued");
                self.deliver(p);
            }
            let now = self.now;
            for s in &mut self.sites {
                if s.agent.poll_timeout().is_some_and(|t| t <= now) {
                    s.agent.handle_timeout(now);
                    assert!(
                        s.agent.poll_timeout().is_none_or(|t| t > now),
                        "poll_timeout() is still due right after handle_timeout(): a driver would spin"
                    );
                }
            }
            if self.server.server.poll_timeout().is_some_and(|t| t <= now) {
                let n = turnpike_proto::core::Now::new(now, self.server.now.unix);
                self.server.server.handle_timeout(n, &mut self.server.io);
            }
        }
    }

    fn report(&self, i: usize) -> Report {
        self.sites[i].agent.report()
    }
}

fn same_subnet(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        _ => false,
    }
}

fn works(r: &Report) -> Vec<PathKind> {
    let mut v: Vec<PathKind> = [PathKind::Host, PathKind::Srflx, PathKind::Relay]
        .into_iter()
        .filter(|k| r.path_works(*k))
        .collect();
    v.dedup();
    v
}

fn tried(r: &Report, k: PathKind) -> usize {
    r.pairs.iter().filter(|p| p.path == k).count()
}

fn dump(r: &Report) -> String {
    r.pairs
        .iter()
        .map(|p: &PairReport| {
            format!(
                "{:?} {} {} -> {} {} {:?} {:?}\n",
                p.path,
                p.local.kind,
                p.local.addr,
                p.remote.kind,
                p.remote.addr,
                p.state,
                p.failure
            )
        })
        .collect()
}

fn behind(
    kind: NatKind,
    host: &'static str,
    public: &'static str,
    controlling: bool,
    turn: Vec<Transport>,
) -> SiteSpec {
    SiteSpec {
        host,
        nat: Some((kind, public)),
        turn,
        controlling,
    }
}

/// A (controlling) and B behind symmetric NATs, each with a relay over
/// UDP and one over TCP.
fn symmetric_nats_relaying_over_udp_and_tcp() -> Vec<SiteSpec> {
    vec![
        behind(
            SYMMETRIC,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp, Transport::Tcp],
        ),
        behind(
            SYMMETRIC,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp, Transport::Tcp],
        ),
    ]
}

#[test]
fn full_cone_nats_srflx_and_relay_work_host_does_not() {
    let mut net = Net::new(vec![
        behind(
            FULL_CONE,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            FULL_CONE,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp],
        ),
    ]);
    net.run();
    for i in 0..2 {
        let r = net.report(i);
        assert!(tried(&r, PathKind::Host) > 0, "host pairs were tried");
        assert_eq!(
            works(&r),
            [PathKind::Srflx, PathKind::Relay],
            "site {i}:\n{}",
            dump(&r)
        );
    }
}

#[test]
fn symmetric_nats_only_relay_works() {
    let mut net = Net::new(symmetric_nats_relaying_over_udp_and_tcp());
    net.run();
    for i in 0..2 {
        let r = net.report(i);
        assert!(
            tried(&r, PathKind::Srflx) > 0,
            "srflx pairs were tried:\n{}",
            dump(&r)
        );
        assert_eq!(works(&r), [PathKind::Relay], "site {i}:\n{}", dump(&r));
        // Relays reached over UDP and over TCP both carry a working pair.
        for via in [Transport::Udp, Transport::Tcp] {
            assert!(
                r.pairs.iter().any(|p| p.state == "succeeded"
                    && p.path == PathKind::Relay
                    && (p.local.via == Some(via) || p.remote.via == Some(via))),
                "site {i}: a relay pair via {via} works:\n{}",
                dump(&r)
            );
        }
        // Every succeeded pair carried data both ways.
        for p in r.pairs.iter().filter(|p| p.state == "succeeded") {
            assert_eq!(p.rtt.sent, 5);
            assert_eq!(p.rtt.received, 5, "no loss in the simulation: {p:?}");
            assert!(
                p.rtt.p50_ms.unwrap() >= 10.0,
                "two hops of 5 ms each way at least"
            );
        }
    }
}

#[test]
fn port_restricted_nats_punch_holes() {
    let mut net = Net::new(vec![
        behind(
            PORT_RESTRICTED,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            PORT_RESTRICTED,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp],
        ),
    ]);
    net.run();
    for i in 0..2 {
        assert_eq!(works(&net.report(i)), [PathKind::Srflx, PathKind::Relay]);
    }
}

#[test]
fn blocked_udp_leaves_only_relays_over_tcp() {
    let blocked = NatKind {
        block_udp: true,
        ..PORT_RESTRICTED
    };
    let mut net = Net::new(vec![
        behind(
            blocked,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp, Transport::Tcp],
        ),
        behind(
            blocked,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp, Transport::Tcp],
        ),
    ]);
    net.run();
    for i in 0..2 {
        let r = net.report(i);
        assert_eq!(works(&r), [PathKind::Relay], "site {i}:\n{}", dump(&r));
        for p in r.pairs.iter().filter(|p| p.state == "succeeded") {
            assert_eq!(p.local.via, Some(Transport::Tcp), "{p:?}");
        }
        // Gathering says why the UDP relay and srflx are missing.
        let what: Vec<&str> = r
            .gathering_failures
            .iter()
            .map(|g| g.what.as_str())
            .collect();
        assert!(
            what.iter().any(|w| w.starts_with("relay via udp")),
            "{what:?}"
        );
        assert!(what.iter().any(|w| w.starts_with("srflx")), "{what:?}");
    }
}

#[test]
fn same_lan_host_pairs_work_and_are_nominated() {
    let mut net = Net::new(vec![
        SiteSpec {
            host: "10.1.0.2:5000",
            nat: Some((PORT_RESTRICTED, "198.51.100.1")),
            turn: vec![],
            controlling: true,
        },
        SiteSpec {
            host: "10.1.0.3:5000",
            nat: Some((PORT_RESTRICTED, "198.51.100.1")),
            turn: vec![],
            controlling: false,
        },
    ]);
    net.run();
    let a = net.report(0);
    let b = net.report(1);
    assert!(a.path_works(PathKind::Host), "{}", dump(&a));
    // Both sides agree on one nominated pair, and it is host-host (the
    // highest priority).
    let na: Vec<_> = a.pairs.iter().filter(|p| p.nominated).collect();
    let nb: Vec<_> = b.pairs.iter().filter(|p| p.nominated).collect();
    assert_eq!(na.len(), 1, "{}", dump(&a));
    assert_eq!(nb.len(), 1, "{}", dump(&b));
    assert_eq!(na[0].path, PathKind::Host);
    assert_eq!(
        (na[0].local.addr, na[0].remote.addr),
        (nb[0].remote.addr, nb[0].local.addr)
    );
}

#[test]
fn role_conflict_is_resolved_by_tie_breaker() {
    // Both start controlling.
    let mut net = Net::new(vec![
        behind(
            FULL_CONE,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            FULL_CONE,
            "10.2.0.2:5000",
            "198.51.100.2",
            true,
            vec![Transport::Udp],
        ),
    ]);
    net.run();
    let roles: Vec<bool> = net.sites.iter().map(|s| s.agent.is_controlling()).collect();
    assert_eq!(
        roles.iter().filter(|c| **c).count(),
        1,
        "exactly one controlling agent: {roles:?}"
    );
    for i in 0..2 {
        let r = net.report(i);
        assert!(r.path_works(PathKind::Relay));
        assert_eq!(
            r.pairs.iter().filter(|p| p.nominated).count(),
            1,
            "{}",
            dump(&r)
        );
    }
}

#[test]
fn checks_retransmit_with_rto_backoff_then_time_out() {
    // Symmetric NATs: A's check from its host to B's srflx never arrives.
    let mut net = Net::new(vec![
        behind(
            SYMMETRIC,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            SYMMETRIC,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp],
        ),
    ]);
    net.run();
    let r = net.report(0);
    let srflx = r
        .pairs
        .iter()
        .find(|p| {
            p.remote.kind == turnpike_proto::ice::Kind::Srflx
                && p.checked_from.kind == turnpike_proto::ice::Kind::Host
        })
        .expect("a host → srflx pair");
    assert_eq!(srflx.state, "failed");
    assert_eq!(
        srflx.failure,
        Some(turnpike_proto::ice::agent::Failure::Timeout)
    );
    let times: Vec<Instant> = net
        .log
        .iter()
        .filter(|(_, site, sock, to)| {
            *site == 0 && *sock == SocketId::Host(0) && *to == srflx.remote.addr
        })
        .map(|(t, ..)| *t)
        .collect();
    // 4 attempts at 0, +100, +200, +400 ms (RTO doubling).
    assert!(times.len() >= 4, "{times:?}");
    let gaps: Vec<u128> = times
        .windows(2)
        .take(3)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400]);
}

#[test]
fn wrong_turn_credentials_are_reported_as_401() {
    let mut net = Net::new(vec![
        behind(
            FULL_CONE,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(FULL_CONE, "10.2.0.2:5000", "198.51.100.2", false, vec![]),
    ]);
    // Replace site 0's agent with one using a bad password.
    let cfg = AgentConfig {
        controlling: true,
        stun_server: Some(net.server_addr),
        turn_servers: vec![TurnServer {
            addr: net.server_addr,
            transport: Transport::Udp,
            creds: Credentials::new("sim", "wrong"),
        }],
        timing: timing(),
        only: None,
    };
    net.sites[0].agent = Agent::new(cfg, vec![net.sites[0].host], 5, net.now);
    net.run();
    let r = net.report(0);
    assert!(
        r.gathering_failures
            .iter()
            .any(|g| g.what.starts_with("relay via udp")
                && g.failure == turnpike_proto::ice::agent::Failure::Error(401)),
        "{:?}",
        r.gathering_failures
    );
    assert!(
        !r.path_works(PathKind::Relay)
            || r.pairs
                .iter()
                .all(|p| p.local.kind != turnpike_proto::ice::Kind::Relay)
    );
}

/// Every pair is reported done once, and a pair that succeeded stays
/// succeeded while the controlling agent re-checks it with USE-CANDIDATE
/// (its success time is the first one).
#[test]
fn pair_done_is_reported_once_and_nomination_keeps_success() {
    let mut net = Net::new(vec![
        behind(
            FULL_CONE,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            FULL_CONE,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp],
        ),
    ]);
    net.run();
    for i in 0..2 {
        let mut done: HashMap<usize, usize> = HashMap::new();
        while let Some(e) = net.sites[i].agent.poll_event() {
            if let turnpike_proto::ice::Event::PairDone { pair } = e {
                *done.entry(pair).or_default() += 1;
            }
        }
        let r = net.report(i);
        assert_eq!(done.len(), r.pairs.len(), "site {i}: every pair ends");
        assert!(
            done.values().all(|&n| n == 1),
            "site {i}: PairDone per pair {done:?}\n{}",
            dump(&r)
        );
    }
}

/// A driver may report a TURN connection it opened as unreachable even
/// when the agent, limited to host pairs, never started that client.
#[test]
fn unreachable_turn_socket_the_agent_does_not_use_is_ignored() {
    let now = Instant::now();
    let cfg = AgentConfig {
        controlling: true,
        stun_server: None,
        turn_servers: vec![TurnServer {
            addr: addr("203.0.113.1:3478"),
            transport: Transport::Tcp,
            creds: Credentials::new("u", "p"),
        }],
        timing: timing(),
        only: Some(PathKind::Host),
    };
    let mut a = Agent::new(cfg, vec![addr("10.1.0.2:5000")], 1, now);
    a.start(now);
    a.unreachable(now, SocketId::Turn(0), addr("203.0.113.1:3478"), "closed");
    a.unreachable(now, SocketId::Turn(7), addr("203.0.113.1:3478"), "closed");
    assert!(a.gathering_done());
    assert!(a.report().gathering_failures.is_empty());
}

/// A late triggered check still in flight when the measuring time is up:
/// the agent waits for it without asking to be woken in the past (the
/// run loop asserts that after every `handle_timeout`). B checks slowly,
/// so its checks from behind a symmetric NAT reach A's relay as new
/// peer-reflexive candidates while A is already measuring; the pace is
/// picked so that one of A's triggered checks is in flight at that moment.
#[test]
fn late_triggered_check_while_measuring_does_not_spin() {
    let mut net = Net::new(vec![
        behind(
            SYMMETRIC,
            "10.1.0.2:5000",
            "198.51.100.1",
            true,
            vec![Transport::Udp],
        ),
        behind(
            SYMMETRIC,
            "10.2.0.2:5000",
            "198.51.100.2",
            false,
            vec![Transport::Udp],
        ),
    ]);
    let cfg = AgentConfig {
        controlling: false,
        stun_server: Some(net.server_addr),
        turn_servers: vec![TurnServer {
            addr: net.server_addr,
            transport: Transport::Udp,
            creds: Credentials::rest(SECRET, "sim", net.server.now.unix + 3600),
        }],
        timing: Timing {
            pace: Duration::from_millis(344),
            ..timing()
        },
        only: None,
    };
    net.sites[1].agent = Agent::new(cfg, vec![net.sites[1].host], 77, net.now);
    net.run();
    for i in 0..2 {
        let r = net.report(i);
        assert_eq!(works(&r), [PathKind::Relay], "site {i}:\n{}", dump(&r));
    }
}

/// The answer reaches the controlling agent after the controlled one has
/// started checking: A learns B's host address first as peer-reflexive
/// (from B's check), then from B's description. The signalled type wins
/// (RFC 8445 §7.3.1.3), so the path is reported as host, not srflx.
#[test]
fn signalled_candidate_replaces_the_peer_reflexive_one() {
    let mut net = Net::new(vec![
        SiteSpec {
            host: "10.1.0.2:5000",
            nat: Some((PORT_RESTRICTED, "198.51.100.1")),
            turn: vec![],
            controlling: true,
        },
        SiteSpec {
            host: "10.1.0.3:5000",
            nat: Some((PORT_RESTRICTED, "198.51.100.1")),
            turn: vec![],
            controlling: false,
        },
    ]);
    net.delay_remote = Some((0, Duration::from_millis(50)));
    net.run();
    let a = net.report(0);
    assert!(
        a.pairs
            .iter()
            .any(|p| p.remote.kind == turnpike_proto::ice::Kind::Host
                && p.remote.addr == addr("10.1.0.3:5000")),
        "{}",
        dump(&a)
    );
    assert!(
        a.pairs
            .iter()
            .all(|p| p.remote.kind != turnpike_proto::ice::Kind::Prflx),
        "{}",
        dump(&a)
    );
    assert!(a.path_works(PathKind::Host), "{}", dump(&a));
    assert!(net.report(1).path_works(PathKind::Host));
}

/// RFC 8445 §7.3.1.3: a peer-reflexive remote learnt from a check is not
/// paired with every local candidate, only (by the triggered check) with
/// the one the check arrived on. Behind symmetric NATs each of B's checks
/// to A's relay shows up as a new prflx address that only that relay can
/// reach.
#[test]
fn peer_reflexive_remote_is_paired_only_where_it_arrived() {
    let mut net = Net::new(symmetric_nats_relaying_over_udp_and_tcp());
    net.run();
    for i in 0..2 {
        let r = net.report(i);
        let mut per_remote: HashMap<SocketAddr, usize> = HashMap::new();
        for p in r
            .pairs
            .iter()
            .filter(|p| p.remote.kind == turnpike_proto::ice::Kind::Prflx)
        {
            *per_remote.entry(p.remote.addr).or_default() += 1;
        }
        assert!(
            !per_remote.is_empty(),
            "site {i}: prflx remotes were learnt"
        );
        assert!(
            per_remote.values().all(|&n| n == 1),
            "site {i}: {per_remote:?}\n{}",
            dump(&r)
        );
        assert_eq!(works(&r), [PathKind::Relay], "site {i}:\n{}", dump(&r));
    }
}

/// The symmetric-NAT scenario with relays over UDP and TCP (server-
/// reflexive, relayed and peer-reflexive candidates, Send indications,
/// ChannelData, TCP frames), run to the end with the given seeds.
fn symmetric_run(agent_seed: u64, server_seed: u64) -> Vec<Datagram> {
    let mut net = Net::seeded(
        symmetric_nats_relaying_over_udp_and_tcp(),
        agent_seed,
        server_seed,
    );
    net.run();
    assert_eq!(works(&net.report(0)), [PathKind::Relay]);
    net.wire
}

/// The transaction id of the first STUN message agent A's host socket
/// sent (its srflx Binding request).
fn first_tid(wire: &[Datagram]) -> [u8; 12] {
    let d = wire
        .iter()
        .find(|d| d.src.ip() == addr("198.51.100.1:0").ip())
        .expect("agent A sent something through its NAT");
    *turnpike_proto::wire::Message::parse(&d.data)
        .expect("A's first datagram is STUN")
        .transaction_id()
        .as_bytes()
}

/// One seed reproduces a run: every datagram on the simulated network
/// (virtual send time, source, destination and bytes) is the same in two
/// runs, so a failure seen once can be replayed. Another seed changes the
/// bytes (transaction ids, ufrags, nonces), so the comparison can fail.
#[test]
fn one_seed_reproduces_every_datagram_byte_for_byte() {
    let first = symmetric_run(7, 7);
    let again = symmetric_run(7, 7);
    assert!(first.len() > 100, "a full run: {} datagrams", first.len());
    assert_eq!(first.len(), again.len(), "same number of datagrams");
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        assert_eq!(a, b, "datagram {i} differs between two runs with one seed");
    }

    let other = symmetric_run(8, 8);
    let differs = first.len() != other.len() || first.iter().zip(&other).any(|(a, b)| a != b);
    assert!(differs, "another seed sends other bytes");
    assert_ne!(
        first_tid(&first),
        first_tid(&other),
        "the seed picks the transaction ids"
    );
}
