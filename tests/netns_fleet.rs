//! Issue 14, "What it must show", in network namespaces: a real
//! `redis-server` and three turnpike nodes, each in its own namespace, with
//! the clients and the peers in two more, all on one bridge, all built by
//! each test (tests/common/netns.rs):
//!
//! ```text
//!                      namespace "lan": bridge br0
//!      +---------+---------+---------+---------+---------+---------+
//!    redis      n1        n2        n3       cli       peer
//!   10.77.T.2 10.77.T.11 .12       .13      .20       .30     (T: the test)
//! ```
//!
//! Each node listens (UDP), relays and serves its HTTP API on its own
//! address, and shares quotas, revocations, sessions and load through
//! Redis (`[cluster]`, tests/common/cluster.rs `node_config`: refresh every
//! 200 ms, leases of 2 s). The test process itself is in none of these
//! namespaces: its sockets are made inside `cli` and `peer`
//! (`Ns::udp_bind`), and its HTTP and Redis requests run in `cli`
//! (`Ns::in_ns`).
//!
//! - a user's N+1th allocation on any node gets 486 (cluster quota N);
//! - a revocation made on node 1 ends the user's allocations on nodes 2
//!   and 3 within 1 s and they refuse it, while another user relaying
//!   through node 3 loses nothing;
//! - a full node answers 300 naming a node with room, where the client
//!   then allocates and relays;
//! - the cluster session view on every node lists the three nodes';
//! - SIGKILL of a node: its client re-allocates elsewhere and relays, the
//!   others lose nothing, its leases age out of Redis;
//! - Redis gone for 10 s: nothing dropped, local quotas, then registry and
//!   counts rebuilt;
//! - a slow Redis (200 ms added to everything it sends: `tc netem` on its
//!   veth, or, on kernels without sch_netem, a delaying TCP proxy in its
//!   namespace, announced on stderr): relaying never loses a datagram,
//!   Allocates still succeed at their budget on the local quota, and the
//!   cluster quota is back once the delay is gone.
//!
//! Root only, like the other namespace labs: without root each test prints
//! a loud SKIPPED banner, and fails instead when TURNPIKE_NETNS_REQUIRED=1
//! (scripts/test.sh sets it as root). No timed assertions but the one the
//! issue states (a revocation takes effect within 1 s, see that test):
//! every other wait is for an event, bounded by a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::netns::{Lab, Ns, netns_path, run_ok};
use common::ops::*;
use common::{TestServer, Transport, run_bounded};
use turnpike_proto::client::AllocateOptions;
use turnpike_proto::wire::{ChannelData, Message};

/// Redis' port in its namespace.
const REDIS_PORT: u16 = 6379;
/// The delaying proxy's port in Redis' namespace (when `tc netem` is
/// missing, see [`SlowRedis`]).
const PROXY_PORT: u16 = 6380;
/// The delay a slow Redis adds to everything it sends.
const SLOW: Duration = Duration::from_millis(200);

/// Host `host` of test `t`'s /24.
fn lab_ip(t: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, t, host)
}

const REDIS_HOST: u8 = 2;
const CLIENT_HOST: u8 = 20;
const PEER_HOST: u8 = 30;

/// Node `k` (0, 1, 2 = nodes 1, 2, 3): its host number.
fn node_host(k: usize) -> u8 {
    11 + k as u8
}

/// Node `k`'s name in the cluster.
fn node_name(k: usize) -> String {
    format!("node-{}", k + 1)
}

/// The fleet of one test: the lab, Redis, three nodes.
struct Fleet {
    // Dropped first: the processes, then the namespaces.
    nodes: Vec<Option<TestServer>>,
    proxy: Option<DelayProxy>,
    redis: RedisServer,
    t: u8,
    redis_ns: Ns,
    cli: Ns,
    peers: Ns,
    /// Deletes the namespaces when dropped.
    _lab: Lab,
}

/// How the fleet reaches Redis.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RedisPath {
    Direct,
    /// Through a [`DelayProxy`] in Redis' namespace.
    Proxy,
}

impl Fleet {
    /// The lab of test `t` (its /24 is 10.77.T.0/24), Redis in it and
    /// three nodes with `[policy]` lines `policy[k]` and extra `[cluster]`
    /// lines `cluster`, each caught up with the cluster; `None` (after the
    /// loud SKIPPED banner) without root.
    fn start(
        prefix: &str,
        t: u8,
        policy: [&str; 3],
        cluster: &str,
        path: impl FnOnce(&Ns) -> RedisPath,
    ) -> Option<Fleet> {
        let lab = Lab::new(prefix)?;
        let lan = lab.add_ns("lan");
        lab.add_bridge(&lan, "br0", None);
        let attach = |role: &str, host: u8| {
            let ns = lab.add_ns(role);
            lab.attach_to_bridge(
                &ns,
                "eth0",
                Some(&format!("{}/24", lab_ip(t, host))),
                &lan,
                "br0",
                &format!("p-{role}"),
            );
            ns
        };
        let redis_ns = attach("redis", REDIS_HOST);
        let node_ns: Vec<Ns> = (0..3)
            .map(|k| attach(&format!("n{}", k + 1), node_host(k)))
            .collect();
        let cli = attach("cli", CLIENT_HOST);
        let peers = attach("peer", PEER_HOST);
        let redis_ip = IpAddr::V4(lab_ip(t, REDIS_HOST));
        // Started from inside its namespace, so that its readiness PING
        // (from this thread) reaches it.
        let redis = redis_ns.in_ns(|| RedisServer::start_in(&[], redis_ip, REDIS_PORT));
        let (proxy, url) = match path(&redis_ns) {
            RedisPath::Direct => (None, redis.url()),
            RedisPath::Proxy => {
                let p = DelayProxy::start(
                    &redis_ns,
                    SocketAddr::new(redis_ip, PROXY_PORT),
                    redis.addr(),
                );
                let url = format!("redis://{}/0", p.addr);
                (Some(p), url)
            }
        };
        let nodes = (0..3)
            .map(|k| {
                let ip = IpAddr::V4(lab_ip(t, node_host(k)));
                // Peers: the lab's /24 only (node_config allows the /8).
                let toml = node_config(&node_name(k), &url, ip, "49152-49251", policy[k], cluster)
                    .replace(
                        "allow_peers = [\"10.0.0.0/8\"]",
                        &format!("allow_peers = [\"10.77.{t}.0/24\"]"),
                    );
                assert!(toml.contains(&format!("10.77.{t}.0/24")), "{toml}");
                Some(node_ns[k].start_turnpike(&toml))
            })
            .collect();
        let fleet = Fleet {
            nodes,
            proxy,
            redis,
            t,
            redis_ns,
            cli,
            peers,
            _lab: lab,
        };
        for k in 0..3 {
            fleet.wait_cluster_up(k, true);
        }
        Some(fleet)
    }

    fn node(&self, k: usize) -> &TestServer {
        self.nodes[k].as_ref().expect("the node is running")
    }

    /// Node `k`'s UDP listener: where its clients go and what other nodes
    /// name in ALTERNATE-SERVER.
    fn udp(&self, k: usize) -> SocketAddr {
        self.node(k).addr(Transport::Udp, false)
    }

    fn http(&self, k: usize) -> SocketAddr {
        self.node(k).http_addr()
    }

    /// Run `f` in the clients' namespace (HTTP and Redis requests).
    fn on_lan<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.cli.in_ns(f)
    }

    fn cluster_up(&self, k: usize) -> Option<f64> {
        let http = self.http(k);
        self.on_lan(|| scrape(http).get("turnpike_cluster_up", &[]))
    }

    fn wait_cluster_up(&self, k: usize, up: bool) {
        let want = if up { 1.0 } else { 0.0 };
        wait_until(
            &format!("turnpike_cluster_up {want} on {}", node_name(k)),
            POLL_LIMIT,
            || (self.cluster_up(k) == Some(want)).then_some(()),
        );
    }

    /// `GET /api/v1/sessions{query}` on node `k` (admin key): status and
    /// body.
    fn sessions_response(&self, k: usize, query: &str) -> HttpResponse {
        let http = self.http(k);
        let target = format!("/api/v1/sessions{query}");
        self.on_lan(|| get_auth(http, &target, FLEET_ADMIN_KEY))
    }

    fn sessions(&self, k: usize, query: &str) -> Vec<serde_json::Value> {
        let r = self.sessions_response(k, query);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["sessions"].as_array().unwrap().clone()
    }

    /// Wait until the cluster view of every running node lists `want`
    /// ((user, node) pairs).
    fn wait_cluster_view(&self, want: &[(&str, &str)]) {
        let want = pairs(want);
        for k in self.running() {
            wait_until(
                &format!("the cluster view on {} to list {want:?}", node_name(k)),
                POLL_LIMIT,
                || (owners(&self.sessions(k, "?scope=cluster")) == want).then_some(()),
            );
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..3).filter(|k| self.nodes[*k].is_some()).collect()
    }

    /// One Redis command (from the clients' namespace); the raw reply.
    fn redis_cmd(&self, args: &[&str]) -> String {
        let redis = &self.redis;
        self.on_lan(|| redis.command(args))
            .unwrap_or_else(|| panic!("Redis does not answer {args:?}"))
    }

    /// Leases in `quota:USER` (expired ones included: what Redis holds).
    fn quota_leases(&self, user: &str) -> i64 {
        let key = format!("turnpike:quota:{user}");
        let redis = &self.redis;
        self.on_lan(|| redis.zcard(&key))
    }

    /// A fresh UDP client socket in the clients' namespace, for node `k`.
    fn client(&self, k: usize) -> (TurnClient, UdpSocket) {
        let sock = self
            .cli
            .udp_bind(SocketAddr::from((lab_ip(self.t, CLIENT_HOST), 0)));
        let data = sock.try_clone().unwrap();
        (TurnClient::udp_on(sock, self.udp(k)), data)
    }

    /// Allocate on node `k` as `user`: the client, or the error code.
    fn allocate(&self, k: usize, user: &str) -> Result<TurnClient, u16> {
        let (mut c, _) = self.client(k);
        c.allocate(rest(user)).map(|_| c)
    }

    /// The response to a signed Allocate as `user` on node `k`.
    fn allocate_response(&self, k: usize, user: &str) -> Vec<u8> {
        let (mut c, _) = self.client(k);
        let session = c.challenge(rest(user));
        c.allocate_signed(&session, &AllocateOptions::default())
    }

    /// Allocate on node `k` as `user`, open `channel` to a fresh peer in
    /// the peers' namespace and relay one round both ways.
    fn relaying(&self, k: usize, user: &str, channel: u16) -> (TurnClient, Path) {
        let (mut c, data) = self.client(k);
        let relayed = c
            .allocate(rest(user))
            .unwrap_or_else(|code| panic!("{user}: Allocate got {code}"));
        let peer = self
            .peers
            .udp_bind(SocketAddr::from((lab_ip(self.t, PEER_HOST), 0)));
        let pa = peer.local_addr().unwrap();
        assert_eq!(c.create_permission(&[pa]), 200);
        assert_eq!(c.channel_bind(channel, pa), 200);
        let path = Path {
            what: format!("{user} via {relayed}"),
            sock: data,
            server: self.udp(k),
            relayed,
            peer,
            channel,
        };
        let mut n = Count::default();
        path.ping_pong(0..1, &mut n);
        assert!(n.lossless(1), "{}: first round {n:?}", path.what);
        (c, path)
    }

    /// `POST /api/v1/revocations` on node `k` with a JSON body.
    fn revoke(&self, k: usize, username: &str) {
        let http = self.http(k);
        let body = format!("{{\"username\": \"{username}\"}}");
        let r = self.on_lan(|| {
            common::ops::http(
                http,
                "POST",
                "/api/v1/revocations",
                &[
                    ("Authorization", &format!("Bearer {FLEET_ADMIN_KEY}")),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
        });
        assert_eq!(r.status, 201, "{}", r.text());
    }

    /// SIGKILL node `k` and reap it.
    fn kill(&mut self, k: usize) {
        let node = self.nodes[k].take().expect("running");
        send_signal(&node, libc::SIGKILL);
        drop(node);
    }
}

// --- data paths ---------------------------------------------------------------

/// A client's channel to a peer through a node: the client's socket (a
/// clone of the `TurnClient`'s, used only while no request is in flight),
/// the node, the relayed address, the peer's socket.
struct Path {
    what: String,
    sock: UdpSocket,
    server: SocketAddr,
    relayed: SocketAddr,
    peer: UdpSocket,
    channel: u16,
}

/// Datagrams sent and received each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    to_peer_sent: u64,
    to_peer_got: u64,
    to_client_sent: u64,
    to_client_got: u64,
}

impl Count {
    /// Every datagram of at least `rounds` rounds arrived, both ways.
    fn lossless(&self, rounds: u64) -> bool {
        self.to_peer_sent >= rounds
            && self.to_client_sent >= rounds
            && self.to_peer_got == self.to_peer_sent
            && self.to_client_got == self.to_client_sent
    }
}

/// Receive on `sock` until a datagram for which `want` holds arrives
/// (true) or a read times out ([`common::IO_TIMEOUT`]: lost, false). Others
/// (a late one of an earlier round) are skipped.
fn recv_matching(sock: &UdpSocket, want: impl Fn(SocketAddr, &[u8]) -> bool) -> bool {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if want(from, &buf[..n]) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

impl Path {
    /// One round: ChannelData client → peer, then a datagram peer →
    /// client; counted, a loss is not a panic.
    fn round(&self, r: u64, n: &mut Count) {
        let up = format!("up {r} {}", self.what);
        let mut frame = Vec::new();
        ChannelData::encode(self.channel, up.as_bytes(), false, &mut frame);
        self.sock.send_to(&frame, self.server).unwrap();
        n.to_peer_sent += 1;
        if recv_matching(&self.peer, |from, d| {
            from == self.relayed && d == up.as_bytes()
        }) {
            n.to_peer_got += 1;
        }
        let down = format!("down {r} {}", self.what);
        self.peer.send_to(down.as_bytes(), self.relayed).unwrap();
        n.to_client_sent += 1;
        if recv_matching(&self.sock, |from, d| {
            from == self.server
                && ChannelData::parse(d)
                    .is_ok_and(|cd| cd.channel == self.channel && cd.data == down.as_bytes())
        }) {
            n.to_client_got += 1;
        }
    }

    /// Rounds `rounds`, back to back (a bounded ping-pong: each datagram
    /// waits at most [`common::IO_TIMEOUT`]).
    fn ping_pong(&self, rounds: std::ops::Range<u64>, n: &mut Count) {
        for r in rounds {
            self.round(r, n);
        }
    }

    /// Relay in the background, a round every 5 ms, until
    /// [`Steady::finish`].
    fn steady(self) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut n = Count::default();
            let mut r = 1_000_000;
            while !s.load(Ordering::Relaxed) {
                self.round(r, &mut n);
                r += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (self, n)
        });
        Steady { stop, h }
    }
}

/// A [`Path`] relaying in the background.
struct Steady {
    stop: Arc<AtomicBool>,
    h: JoinHandle<(Path, Count)>,
}

impl Steady {
    /// Stop; the path and what it counted, which must show no loss in at
    /// least `rounds` rounds.
    fn finish(self, rounds: u64) -> Path {
        self.stop.store(true, Ordering::Relaxed);
        let (p, n) = self.h.join().expect("the relaying thread");
        assert!(
            n.lossless(rounds),
            "{}: lost datagrams (or fewer than {rounds} rounds): {n:?}",
            p.what
        );
        eprintln!("{}: {n:?}", p.what);
        p
    }

    /// Let it run until it has relayed for `d` (the wait is the test's
    /// scenario, not an assertion).
    fn wait(d: Duration) {
        std::thread::sleep(d);
    }
}

// --- 1. the cluster quota -------------------------------------------------------

#[test]
fn a_users_allocation_past_the_cluster_quota_gets_486_on_every_node() {
    let policy = "max_allocations_per_user = 3";
    let Some(f) = Fleet::start("tfquota", 1, [policy; 3], "", |_| RedisPath::Direct) else {
        return;
    };
    // One on each node: no node holds more than one.
    let _held: Vec<TurnClient> = (0..3)
        .map(|k| {
            f.allocate(k, "alice")
                .unwrap_or_else(|c| panic!("alice's allocation on {}: {c}", node_name(k)))
        })
        .collect();
    assert_eq!(f.quota_leases("alice"), 3);
    for k in 0..3 {
        assert_eq!(
            f.allocate(k, "alice").err(),
            Some(486),
            "alice's 4th, on {}",
            node_name(k)
        );
    }
    assert_eq!(f.quota_leases("alice"), 3, "a refusal takes no lease");
    let _bob = f.allocate(0, "bob").expect("another user is not affected");
    for k in 0..3 {
        let http = f.http(k);
        let m = f.on_lan(|| scrape(http));
        assert_eq!(m.value("turnpike_quota_refusals_total", &[]), 1.0);
        assert_eq!(
            m.value(
                "turnpike_cluster_admissions_total",
                &[("result", "refused")]
            ),
            1.0
        );
    }
}

// --- 2. revocation --------------------------------------------------------------

#[test]
fn a_revocation_on_node_1_ends_the_users_allocations_on_nodes_2_and_3_within_a_second() {
    let Some(f) = Fleet::start("tfrevoke", 2, [""; 3], "", |_| RedisPath::Direct) else {
        return;
    };
    let (mut v2, _p2) = f.relaying(1, "victim", 0x4000);
    let (mut v3, _p3) = f.relaying(2, "victim", 0x4000);
    let (mut by, by_path) = f.relaying(2, "bystander", 0x4001);
    f.wait_cluster_view(&[
        ("bystander", "node-3"),
        ("victim", "node-2"),
        ("victim", "node-3"),
    ]);
    let steady = by_path.steady();
    Steady::wait(Duration::from_millis(300));
    f.revoke(0, "victim");
    // The issue's bound, asserted as a bounded wait: from the moment node
    // 1 has accepted the revocation, nodes 2 and 3 must have ended the
    // victim's allocations before one second has passed. On a LAN this
    // takes milliseconds (a publish, a sync, a control message to each
    // shard); the second leaves a loaded 2-core machine 100x headroom, so
    // it is kept even there: a miss is a real regression, not noise.
    let accepted = Instant::now();
    for k in [1, 2] {
        wait_until(
            &format!("the victim's allocation on {} to end", node_name(k)),
            Duration::from_secs(1).saturating_sub(accepted.elapsed()),
            || {
                (!owners(&f.sessions(k, ""))
                    .iter()
                    .any(|(u, _)| u == "victim"))
                .then_some(())
            },
        );
    }
    eprintln!(
        "revocation on node-1 ended the allocations on node-2 and node-3 in {:?}",
        accepted.elapsed()
    );
    // And they refuse it: the old clients' next request, a new Allocate.
    assert_eq!(v2.refresh(Some(600)), 401, "node-2 refuses the victim");
    assert_eq!(v3.refresh(Some(600)), 401, "node-3 refuses the victim");
    for k in 0..3 {
        assert_eq!(f.allocate(k, "victim").err(), Some(401), "{}", node_name(k));
        let http = f.http(k);
        let r = f.on_lan(|| get_auth(http, "/api/v1/revocations", FLEET_ADMIN_KEY));
        assert_eq!(
            r.json()["revocations"][0]["username"],
            "victim",
            "{}",
            r.text()
        );
    }
    // The bystander on node 3 relayed the whole time without a loss.
    Steady::wait(Duration::from_millis(300));
    let _path = steady.finish(20);
    assert_eq!(by.refresh(Some(600)), 200);
    f.wait_cluster_view(&[("bystander", "node-3")]);
}

// --- 3. a full node redirects ----------------------------------------------------

#[test]
fn a_full_node_answers_300_with_a_node_with_room_and_the_client_relays_there() {
    let Some(f) = Fleet::start("tffull", 3, ["max_allocations = 1", "", ""], "", |_| {
        RedisPath::Direct
    }) else {
        return;
    };
    let _first = f.allocate(0, "alice").expect("node-1's only allocation");
    wait_until("node-1's load to show it full", POLL_LIMIT, || {
        let load = f.redis_cmd(&["GET", "turnpike:load:node-1"]);
        (load.contains("\"allocations\":1") && load.contains("\"max_allocations\":1")).then_some(())
    });
    // Node 1 learns the others' load at its next refresh.
    let alt = wait_until("a 300 from node-1", POLL_LIMIT, || {
        let resp = f.allocate_response(0, "bob");
        (code_of(&resp) == 300).then(|| {
            Message::parse(&resp)
                .unwrap()
                .alternate_server()
                .unwrap()
                .expect("ALTERNATE-SERVER")
        })
    });
    let k = (1..3)
        .find(|k| f.udp(*k) == alt)
        .unwrap_or_else(|| panic!("ALTERNATE-SERVER {alt} is not node-2's or node-3's listener"));
    assert_eq!(
        alt.ip(),
        IpAddr::V4(lab_ip(3, node_host(k))),
        "a lab address"
    );
    // A client that follows it allocates there and relays.
    let (_c, path) = f.relaying(k, "bob", 0x4000);
    let mut n = Count::default();
    path.ping_pong(0..50, &mut n);
    assert!(n.lossless(50), "{n:?}");
    let http = f.http(0);
    let m = f.on_lan(|| scrape(http));
    assert!(
        m.value(
            "turnpike_requests_total",
            &[("method", "allocate"), ("code", "300")]
        ) >= 1.0
    );
    f.wait_cluster_view(&[("alice", "node-1"), ("bob", &node_name(k))]);
}

// --- 4. the cluster view ----------------------------------------------------------

#[test]
fn the_cluster_view_on_every_node_lists_the_allocations_of_all_three() {
    let Some(f) = Fleet::start("tfview", 4, [""; 3], "", |_| RedisPath::Direct) else {
        return;
    };
    let users = ["alice", "bob", "carol"];
    let clients: Vec<TurnClient> = (0..3).map(|k| f.allocate(k, users[k]).unwrap()).collect();
    let relayed: Vec<SocketAddr> = clients.iter().map(|c| c.relayed.unwrap()).collect();
    f.wait_cluster_view(&[("alice", "node-1"), ("bob", "node-2"), ("carol", "node-3")]);
    for k in 0..3 {
        let view = f.sessions(k, "?scope=cluster");
        for (j, user) in users.iter().enumerate() {
            let e = view
                .iter()
                .find(|e| e["user"].as_str().unwrap().ends_with(user))
                .unwrap();
            assert_eq!(e["node"], node_name(j).as_str(), "{e}");
            assert_eq!(e["relayed_address"], relayed[j].to_string().as_str(), "{e}");
        }
        // The local view holds the node's own only.
        assert_eq!(
            owners(&f.sessions(k, "")),
            pairs(&[(users[k], node_name(k).as_str())])
        );
    }
}

// --- 5. a node is SIGKILLed --------------------------------------------------------

#[test]
fn a_sigkilled_nodes_clients_reallocate_elsewhere_and_its_leases_age_out() {
    let policy = "max_allocations_per_user = 2";
    let Some(mut f) = Fleet::start("tfkill", 5, [policy; 3], "", |_| RedisPath::Direct) else {
        return;
    };
    let (_a, alice) = f.relaying(0, "alice", 0x4000);
    let (_b, bob) = f.relaying(1, "bob", 0x4000);
    let (_c, _carol_old) = f.relaying(2, "carol", 0x4000);
    // Dora only ever held allocations on node 3: two, her quota.
    let _dora: Vec<TurnClient> = (0..2).map(|_| f.allocate(2, "dora").unwrap()).collect();
    assert_eq!(f.allocate(0, "dora").err(), Some(486));
    assert_eq!(f.quota_leases("dora"), 2);
    assert_eq!(f.quota_leases("carol"), 1);
    let (alice, bob) = (alice.steady(), bob.steady());
    f.kill(2);
    // Carol's client re-allocates on another node at once (her quota has
    // room for the dead node's lease and the new one) and relays again.
    let (_c2, carol) = f.relaying(0, "carol", 0x4000);
    let mut n = Count::default();
    carol.ping_pong(0..50, &mut n);
    assert!(n.lossless(50), "carol after moving: {n:?}");
    // The dead node's leases age out (lease_ttl = 2 s after its last
    // refresh): dora's set expires whole, carol's keeps only the new one
    // once an admission prunes it.
    wait_until("dora's leases to age out", POLL_LIMIT, || {
        (f.quota_leases("dora") == 0).then_some(())
    });
    let _d: Vec<TurnClient> = (0..2)
        .map(|k| f.allocate(k, "dora").expect("dora's quota is free again"))
        .collect();
    assert_eq!(f.allocate(1, "dora").err(), Some(486));
    assert_eq!(f.quota_leases("dora"), 2, "only the live ones");
    let _c3 = f.allocate(1, "carol").expect("carol's dead lease is gone");
    assert_eq!(f.quota_leases("carol"), 2, "two live ones, no dead one");
    // The view drops the dead node; the others lost nothing.
    f.wait_cluster_view(&[
        ("alice", "node-1"),
        ("bob", "node-2"),
        ("carol", "node-1"),
        ("carol", "node-2"),
        ("dora", "node-1"),
        ("dora", "node-2"),
    ]);
    let _ = alice.finish(20);
    let _ = bob.finish(20);
}

// --- 6. Redis away for 10 s --------------------------------------------------------

#[test]
fn redis_away_for_ten_seconds_drops_nothing_counts_locally_then_is_rebuilt() {
    let policy = "max_allocations_per_user = 2";
    let Some(mut f) = Fleet::start("tfnoredis", 6, [policy; 3], "", |_| RedisPath::Direct) else {
        return;
    };
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    let mut flows = Vec::new();
    for (k, user) in users.iter().enumerate() {
        let (c, p) = f.relaying(k, user, 0x4000);
        clients.push(c);
        flows.push(p.steady());
    }
    f.redis.stop();
    let gone = Instant::now();
    for k in 0..3 {
        f.wait_cluster_up(k, false);
    }
    let r = f.sessions_response(0, "?scope=cluster");
    assert_eq!(r.status, 503, "no cluster view without Redis: {}", r.text());
    // Local quotas: dave gets his two on node 1 and two more on node 2.
    let mut dave = Vec::new();
    for k in [0, 0, 1, 1] {
        dave.push(f.allocate(k, "dave").expect("the local quota has room"));
    }
    assert_eq!(f.allocate(0, "dave").err(), Some(486), "node-1's own count");
    for k in 0..3 {
        assert_eq!(
            stderr_count(f.node(k), "Redis unreachable"),
            1,
            "one warning on {}",
            node_name(k)
        );
    }
    // Ten seconds without Redis, relaying all along.
    Steady::wait(Duration::from_secs(10).saturating_sub(gone.elapsed()));
    {
        let Fleet {
            redis, redis_ns, ..
        } = &mut f;
        redis_ns.in_ns(|| redis.restart());
    }
    for k in 0..3 {
        f.wait_cluster_up(k, true);
    }
    // The empty Redis is rebuilt: the registry and the counts.
    f.wait_cluster_view(&[
        ("alice", "node-1"),
        ("bob", "node-2"),
        ("carol", "node-3"),
        ("dave", "node-1"),
        ("dave", "node-1"),
        ("dave", "node-2"),
        ("dave", "node-2"),
    ]);
    wait_until("dave's four leases back in Redis", POLL_LIMIT, || {
        (f.quota_leases("dave") == 4).then_some(())
    });
    assert_eq!(f.quota_leases("alice"), 1);
    assert_eq!(
        f.allocate(2, "dave").err(),
        Some(486),
        "the cluster quota again"
    );
    for (flow, c) in flows.into_iter().zip(clients.iter_mut()) {
        let _ = flow.finish(100);
        assert_eq!(c.refresh(Some(600)), 200, "never dropped");
    }
}

// --- 7. a slow Redis ---------------------------------------------------------------

/// How the fleet's Redis is made slow: `tc netem` on Redis' veth when the
/// kernel has it, else a user-space proxy in Redis' namespace that holds
/// back everything Redis sends by the same delay.
enum SlowRedis {
    Netem,
    Proxy,
}

/// Whether `tc qdisc ... netem` works in `ns` (some VM kernels are built
/// without sch_netem).
fn netem_works(ns: &Ns) -> Result<(), String> {
    let mut add = ns.cmd("tc");
    add.args([
        "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
    ]);
    let (status, out, err) = run_bounded(&mut add, common::netns::CMD_TIMEOUT);
    if !status.success() {
        return Err(format!("{out}{err}").trim().to_string());
    }
    run_ok(ns.cmd("tc").args(["qdisc", "del", "dev", "eth0", "root"]));
    Ok(())
}

#[test]
fn a_slow_redis_never_slows_relaying_and_allocates_go_on_within_their_budget() {
    let policy = "max_allocations_per_user = 2";
    let mut how = SlowRedis::Netem;
    // The default budget (50 ms): shorter than the delay.
    let Some(f) = Fleet::start(
        "tfslow",
        7,
        [policy; 3],
        "allocate_budget = \"50ms\"",
        |ns| {
            match netem_works(ns) {
                Ok(()) => RedisPath::Direct,
                Err(why) => {
                    // Not a skip: the same delay, injected by the test itself.
                    use std::io::Write as _;
                    let _ = std::io::stderr().lock().write_all(
                    format!(
                        "\n## tc netem is unavailable here ({why}):\n\
                         ## Redis is slowed by a user-space delaying proxy in its namespace instead.\n\n"
                    )
                    .as_bytes(),
                );
                    how = SlowRedis::Proxy;
                    RedisPath::Proxy
                }
            }
        },
    ) else {
        return;
    };
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    let mut paths = Vec::new();
    for (k, user) in users.iter().enumerate() {
        let (c, p) = f.relaying(k, user, 0x4000);
        clients.push(c);
        paths.push(p);
    }
    let admissions = |result: &str| -> Vec<f64> {
        (0..3)
            .map(|k| {
                let http = f.http(k);
                f.on_lan(|| scrape(http))
                    .value_or_zero("turnpike_cluster_admissions_total", &[("result", result)])
            })
            .collect()
    };
    let granted = admissions("granted");
    let flows: Vec<Steady> = paths.into_iter().map(Path::steady).collect();
    // Slow from now on.
    match how {
        SlowRedis::Netem => {
            f.redis_ns.run(
                "tc",
                &[
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    &format!("{}ms", SLOW.as_millis()),
                ],
            );
        }
        SlowRedis::Proxy => f.proxy.as_ref().unwrap().set_delay(SLOW),
    }
    // Redis now answers no sooner than 200 ms, past the 50 ms budget, so
    // Allocates go on at their budget with the local quota (README: an
    // Allocate "waits for the answer at most allocate_budget"; what is
    // lost meanwhile: "quotas count per node again"): erin gets two on
    // node 1 and two more on node 2; her third on node 1 meets node 1's
    // own count.
    let mut erin = Vec::new();
    for k in [0, 0, 1, 1] {
        erin.push(
            f.allocate(k, "erin")
                .unwrap_or_else(|c| panic!("erin on {} under a slow Redis: {c}", node_name(k))),
        );
    }
    assert_eq!(f.allocate(0, "erin").err(), Some(486), "node-1's own count");
    // Relaying through every node meanwhile: a bounded ping-pong on a
    // fresh path through each, and the steady ones, without a loss.
    for k in 0..3 {
        let (_c, p) = f.relaying(k, &format!("frank{k}"), 0x4001);
        let mut n = Count::default();
        p.ping_pong(0..100, &mut n);
        assert!(n.lossless(100), "{}: {n:?}", p.what);
    }
    for flow in flows {
        let _ = flow.finish(50);
    }
    // No admission was answered within its budget while the delay was on.
    assert_eq!(admissions("granted"), granted, "nothing granted in time");
    let unavailable = admissions("unavailable");
    for k in [0, 1] {
        assert!(
            unavailable[k] >= 2.0,
            "{}: erin's Allocates went on without Redis: {unavailable:?}",
            node_name(k)
        );
    }
    // Back to normal: the fleet counts erin's four, so node 3 refuses her.
    match how {
        SlowRedis::Netem => {
            f.redis_ns
                .run("tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
        SlowRedis::Proxy => f.proxy.as_ref().unwrap().set_delay(Duration::ZERO),
    }
    wait_until("erin's four leases in Redis", POLL_LIMIT, || {
        (f.quota_leases("erin") == 4).then_some(())
    });
    // What Redis sent while slow still trickles out for up to 200 ms after
    // the delay is lifted (and netem's queue is dropped, then resent), so
    // an admission may still miss its budget and fall back to the local
    // quota: then erin just gets one more allocation on node 3, and the
    // next try is asked again. Once Redis answers in time, node 3 refuses
    // her on the fleet's count (node 3 alone holds at most one of hers).
    let refused = admissions("refused")[2];
    let code = wait_until(
        "node-3 to refuse erin on the cluster quota",
        POLL_LIMIT,
        || match f.allocate(2, "erin") {
            Err(code) => Some(code),
            Ok(mut c) => {
                // Answered late: gone at once, so node 3's own count of
                // erin stays 0 and cannot be what refuses her.
                assert_eq!(c.refresh(Some(0)), 200);
                None
            }
        },
    );
    assert_eq!(code, 486, "the cluster quota");
    assert_eq!(
        admissions("refused")[2],
        refused + 1.0,
        "refused by the cluster, not by node-3's own count"
    );
    for c in &mut clients {
        assert_eq!(c.refresh(Some(600)), 200);
    }
}

// --- a delaying TCP proxy ------------------------------------------------------------

/// A TCP proxy in a namespace that forwards to `upstream` and holds back
/// every chunk coming back from it by the current delay (what `tc netem
/// delay` on the upstream's veth does to its packets, in order).
struct DelayProxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl DelayProxy {
    fn start(ns: &Ns, listen: SocketAddr, upstream: SocketAddr) -> DelayProxy {
        let listener = ns.in_ns(|| TcpListener::bind(listen).unwrap());
        listener.set_nonblocking(true).unwrap();
        let p = DelayProxy {
            addr: listener.local_addr().unwrap(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            streams: Arc::new(Mutex::new(Vec::new())),
        };
        let (delay, stop, streams) = (p.delay_ms.clone(), p.stop.clone(), p.streams.clone());
        let ns_path = netns_path(ns.name());
        std::thread::spawn(move || {
            // This thread (and the ones it starts) connect upstream, inside
            // the namespace.
            let f = std::fs::File::open(&ns_path).unwrap();
            turnpike_sys::netns::enter(&f).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let down = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                {
                    let mut all = streams.lock().unwrap();
                    all.push(down.try_clone().unwrap());
                    all.push(up.try_clone().unwrap());
                }
                pump(down.try_clone().unwrap(), up.try_clone().unwrap(), None);
                pump(up, down, Some(delay.clone()));
            }
        });
        p
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copy `from` to `to` on threads of their own, each chunk held back by
/// `delay` (read when the chunk arrives) if given; the end of one side
/// ends the other.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Option<Arc<AtomicU64>>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let ms = delay.as_ref().map_or(0, |d| d.load(Ordering::Relaxed));
                    let due = Instant::now() + Duration::from_millis(ms);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
