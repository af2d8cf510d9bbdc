//! Deterministic tests of the sans-IO TURN core: a manual clock, a seeded
//! RNG, a fake relay-socket binder. No sockets, no sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike::config::{Config, Transport};
use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::core::{
    AuthFailureReason, ChannelNumber, ClientAddr, ClientOutput, Counters, DropReason, EndReason,
    Family, FiveTuple, Fragmentation, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput,
    RESERVATION_LIFETIME, RelayId, Server, Setup, Shared,
};
use turnpike_proto::sim::MemIo;
use turnpike_proto::wire::{
    ChannelData, Class, Message, MessageBuilder, MessageType, Method, TransactionId, attr,
};

#[path = "core_turn/cluster.rs"]
mod cluster;
#[path = "core_turn/fastpath.rs"]
mod fastpath;
#[path = "core_turn/lifecycle.rs"]
mod lifecycle;
#[path = "core_turn/policy.rs"]
mod policy;
#[path = "core_turn/revocation.rs"]
mod revocation;

const SECRET: &str = "s3cret";
const SECRET2: &str = "n3w-s3cret";

struct H {
    server: Server,
    io: MemIo,
    now: Now,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
    seq: u64,
}

fn base_config(extra: &str) -> Config {
    let text = format!(
        r#"
[server]
realm = "example.org"
software = "turnpike-test"
[[listen]]
transport = "udp"
addr = "0.0.0.0:3478"
[relay]
bind_ip = "192.0.2.10"
public_ip = "203.0.113.10"
bind_ip6 = "::"
ports = "50000-50099"
[auth]
secrets = ["{SECRET}"]
users = {{ alice = "wonderland", bob = {{ key = "0x{bob_key}" }} }}
nonce_lifetime = "2h"
{extra}
"#,
        bob_key = hex(turnpike_proto::wire::long_term_key(
            turnpike_proto::wire::PasswordAlgorithm::Md5,
            "bob",
            "example.org",
            "builder"
        )
        .as_bytes())
    );
    Config::parse(&text, "test.toml").expect("test config parses")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn harness(extra: &str) -> H {
    harness_cfg(base_config(extra), 42)
}

/// A core for `cfg` with a fake relay binder and a manual clock.
fn harness_cfg(cfg: Config, seed: u64) -> H {
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared::new(cfg.relay.ports));
    let creds = turnpike::io::credentials(&cfg).unwrap();
    let server = Server::new(Setup {
        cfg: Arc::new(turnpike::config::to_core(&cfg)),
        creds: Arc::new(creds),
        shared: shared.clone(),
        counters: counters.clone(),
        seed,
        nonce_key: [9; 32],
        shard: 0,
    });
    H {
        server,
        io: MemIo::default(),
        now: Now::new(Instant::now(), 1_800_000_000),
        counters,
        shared,
        seq: 0,
    }
}

fn udp(client: &str) -> FiveTuple {
    FiveTuple {
        client: ClientAddr(client.parse().unwrap()),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn tcp(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..udp(client)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl H {
    fn tid(&mut self) -> TransactionId {
        self.seq += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.seq.to_be_bytes());
        TransactionId::new(t)
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
        self.server.handle_timeout(self.now, &mut self.io);
    }

    /// Send bytes; return the reply, if any.
    fn send(&mut self, ft: &FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self
            .server
            .handle_client(self.now, ft, bytes, &mut out, &mut self.io)
        {
            ClientOutput::Reply => Some(out),
            ClientOutput::None => None,
            ClientOutput::ToPeer { .. } | ClientOutput::ToClient { .. } => {
                panic!("unexpected relay output")
            }
        }
    }

    /// Send bytes expecting them relayed to a peer.
    fn relay(&mut self, ft: &FiveTuple, bytes: &[u8]) -> Option<(RelayId, SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        match self
            .server
            .handle_client(self.now, ft, bytes, &mut out, &mut self.io)
        {
            ClientOutput::ToPeer { relay, peer, data } => Some((relay, peer.0, data.to_vec())),
            ClientOutput::None => None,
            ClientOutput::Reply => panic!("unexpected reply"),
            ClientOutput::ToClient { .. } => panic!("unexpected relay-to-relay output"),
        }
    }

    /// A datagram from a peer to a relay; returns what goes to the client.
    fn peer_sends(
        &mut self,
        relay: RelayId,
        peer: &str,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        match self.server.handle_peer(
            self.now,
            relay,
            PeerAddr(addr(peer)),
            &mut buf,
            payload.len(),
        ) {
            PeerOutput::ToClient { ft, data } => Some((ft, data.to_vec())),
            PeerOutput::None => None,
        }
    }

    /// Allocate with the 401 dance; returns the session, relayed address
    /// and relay id.
    fn allocate(
        &mut self,
        ft: &FiveTuple,
        creds: Credentials,
        o: AllocateOptions,
    ) -> (Session, SocketAddr, RelayId) {
        self.allocate_with(ft, creds, o, SignOptions::default())
            .unwrap_or_else(|code| panic!("allocate failed with {code}"))
    }

    fn challenge(&mut self, ft: &FiveTuple, creds: Credentials, sign: SignOptions) -> Session {
        let mut req = Vec::new();
        let tid = self.tid();
        client::allocate(&mut req, tid, &AllocateOptions::default(), None);
        let resp = self.send(ft, &req).expect("401");
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.error_code().unwrap().unwrap().code, 401);
        Session::from_challenge(&m, creds, sign).expect("realm and nonce")
    }

    fn allocate_with(
        &mut self,
        ft: &FiveTuple,
        creds: Credentials,
        o: AllocateOptions,
        sign: SignOptions,
    ) -> Result<(Session, SocketAddr, RelayId), u16> {
        let session = self.challenge(ft, creds, sign);
        let mut req = Vec::new();
        let tid = self.tid();
        client::allocate(&mut req, tid, &o, Some(&session));
        let resp = self.send(ft, &req).expect("response");
        let m = Message::parse(&resp).unwrap();
        if m.class() == Class::Error {
            return Err(m.error_code().unwrap().unwrap().code);
        }
        assert!(session.verify(&m), "success is signed with the session key");
        let relayed = m.xor_relayed_address().unwrap().unwrap();
        let relay = *self
            .io
            .bound
            .iter()
            .find(|(_, a)| a.port() == relayed.port())
            .expect("relay bound")
            .0;
        Ok((session, relayed, relay))
    }

    fn expect_code(&mut self, ft: &FiveTuple, req: &[u8]) -> u16 {
        let resp = self.send(ft, req).expect("a response");
        let m = Message::parse(&resp).unwrap();
        match m.class() {
            Class::Success => 200,
            Class::Error => m.error_code().unwrap().unwrap().code,
            c => panic!("unexpected class {c:?}"),
        }
    }

    fn create_permission(&mut self, ft: &FiveTuple, s: &Session, peers: &[&str]) -> u16 {
        let peers: Vec<SocketAddr> = peers.iter().map(|p| addr(p)).collect();
        let mut req = Vec::new();
        let tid = self.tid();
        client::create_permission(&mut req, tid, &peers, s);
        self.expect_code(ft, &req)
    }

    fn channel_bind(&mut self, ft: &FiveTuple, s: &Session, ch: u16, peer: &str) -> u16 {
        let mut req = Vec::new();
        let tid = self.tid();
        client::channel_bind(&mut req, tid, ch, addr(peer), s);
        self.expect_code(ft, &req)
    }

    fn refresh(
        &mut self,
        ft: &FiveTuple,
        s: &Session,
        lifetime: Option<u32>,
    ) -> (u16, Option<u32>) {
        let mut req = Vec::new();
        let tid = self.tid();
        client::refresh(&mut req, tid, lifetime, s);
        let resp = self.send(ft, &req).expect("response");
        let m = Message::parse(&resp).unwrap();
        let code = match m.class() {
            Class::Success => 200,
            _ => m.error_code().unwrap().unwrap().code,
        };
        (code, m.lifetime().unwrap())
    }

    fn send_indication(
        &mut self,
        ft: &FiveTuple,
        peer: &str,
        data: &[u8],
    ) -> Option<(RelayId, SocketAddr, Vec<u8>)> {
        let mut req = Vec::new();
        let tid = self.tid();
        client::send_indication(&mut req, tid, addr(peer), data);
        self.relay(ft, &req)
    }
}

fn rest(user: &str, expiry: u64) -> Credentials {
    Credentials::rest(SECRET, user, expiry)
}

fn alice() -> Credentials {
    Credentials::new("alice", "wonderland")
}

// --- Binding ---------------------------------------------------------------

#[test]
fn binding_reports_source_address() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let mut req = Vec::new();
    let tid = h.tid();
    client::binding(&mut req, tid, true);
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(m.xor_mapped_address().unwrap(), Some(ft.client.0));
    // Unauthenticated: no SOFTWARE (amplification, issue 12).
    assert_eq!(m.software().unwrap(), None);
    assert_eq!(m.check_fingerprint(), Some(true));
    assert_eq!(h.counters.binding_requests.get(), 1);
}

// --- Allocate --------------------------------------------------------------

#[test]
fn unauthenticated_allocate_gets_401_and_creates_no_state() {
    let mut h = harness("");
    for i in 0..100 {
        let ft = udp(&format!("198.51.100.7:{}", 40000 + i));
        let mut req = Vec::new();
        let tid = h.tid();
        client::allocate(&mut req, tid, &AllocateOptions::default(), None);
        let resp = h.send(&ft, &req).unwrap();
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.error_code().unwrap().unwrap().code, 401);
        assert_eq!(m.realm().unwrap(), Some("example.org"));
        let nonce = m.nonce().unwrap().unwrap();
        assert!(
            nonce.starts_with("obMatJos2"),
            "RFC 8489 nonce cookie: {nonce}"
        );
        let algs: Vec<u16> = m.password_algorithms().unwrap().map(|(a, _)| a).collect();
        assert_eq!(algs, [2, 1], "SHA-256 then MD5");
        assert!(!m.has_integrity(), "401 is not signed");
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.cached_keys(), 0);
    assert_eq!(h.server.timer_entries(), 0);
    assert_eq!(h.server.poll_timeout(), None);
    assert!(h.io.bound.is_empty());
    // The challenge is not an authentication failure.
    for r in AuthFailureReason::ALL {
        assert_eq!(h.counters.auth_failure_count(*r), 0);
    }
}

#[test]
fn allocate_success_with_static_user() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, relayed, relay) = h.allocate(&ft, alice(), AllocateOptions::default());
    assert_eq!(
        relayed.ip().to_string(),
        "203.0.113.10",
        "public_ip is advertised"
    );
    assert!((50000..=50099).contains(&relayed.port()));
    assert_eq!(
        h.io.bound[&relay].ip().to_string(),
        "192.0.2.10",
        "bound on bind_ip"
    );
    assert_eq!(h.io.bound[&relay].port(), relayed.port());
    assert_eq!(s.realm, "example.org");
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.counters.allocations_created.get(), 1);
    assert_eq!(h.counters.active(Transport::Udp, Family::V4).get(), 1);
    assert_eq!(h.shared.allocations(), 1);
    assert_eq!(h.counters.answered_count(Method::ALLOCATE, 200), 1);
}

#[test]
fn allocate_response_fields_and_lifetime() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            lifetime: Some(100_000),
            ..Default::default()
        },
        Some(&s),
    );
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.lifetime().unwrap(), Some(3600), "capped at max_lifetime");
    assert_eq!(m.xor_mapped_address().unwrap(), Some(ft.client.0));
    assert_eq!(m.check_fingerprint(), Some(true));
    assert!(m.verify_sha1(&s.key).is_ok());
    // A short request is raised to the default (RFC 8656 §7.2).
    let ft2 = udp("198.51.100.7:40001");
    let s2 = h.challenge(&ft2, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            lifetime: Some(30),
            ..Default::default()
        },
        Some(&s2),
    );
    let m2 = h.send(&ft2, &req).unwrap();
    assert_eq!(Message::parse(&m2).unwrap().lifetime().unwrap(), Some(600));
}

#[test]
fn retransmitted_allocate_gets_same_answer_and_new_transaction_gets_437() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&s));
    let first = h.send(&ft, &req).unwrap();
    let again = h.send(&ft, &req).unwrap();
    assert_eq!(first, again, "byte-identical retransmission answer");
    assert_eq!(h.io.bound.len(), 1, "no second relay");
    let mut req2 = Vec::new();
    let tid2 = h.tid();
    client::allocate(&mut req2, tid2, &AllocateOptions::default(), Some(&s));
    assert_eq!(h.expect_code(&ft, &req2), 437);
    let m = Message::parse(&h.send(&ft, &req2).unwrap())
        .unwrap()
        .error_code()
        .unwrap()
        .unwrap()
        .code;
    assert_eq!(m, 437);
}

#[test]
fn allocate_transport_checks() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    // Missing REQUESTED-TRANSPORT → 400.
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    s.sign(&mut b);
    assert_eq!(h.expect_code(&ft, &req), 400);
    // TCP → 442.
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            transport: attr::TRANSPORT_TCP,
            ..Default::default()
        },
        Some(&s),
    );
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().code, 442);
    assert!(
        m.verify_sha1(&s.key).is_ok(),
        "errors after auth are signed"
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn address_family_440_and_ipv6_allocation() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    // The test config relays IPv6 too; a config without bind_ip6 refuses
    // IPv6 allocations.
    let mut h6 = harness_no_v6();
    let s = h6.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h6.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
        Some(&s),
    );
    assert_eq!(h6.expect_code(&ft, &req), 440);
    // An unknown family value is unsupported too.
    let mut req = Vec::new();
    let tid = h6.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17)
        .attr(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
    s.sign(&mut b);
    assert_eq!(h6.expect_code(&ft, &req), 440);
    // With IPv6 configured, an IPv6 allocation gets an IPv6 relay.
    let (_, relayed, _) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    assert!(relayed.is_ipv6());
    assert_eq!(h.counters.active(Transport::Udp, Family::V6).get(), 1);
    // ADDITIONAL-ADDRESS-FAMILY: IPv4 is made, IPv6 refused with
    // ADDRESS-ERROR-CODE 440; IPv4 as the additional family is 400.
    let ft2 = udp("198.51.100.7:40001");
    let s2 = h.challenge(&ft2, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            additional_family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
        Some(&s2),
    );
    let resp = h.send(&ft2, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(m.xor_relayed_address().unwrap().unwrap().is_ipv4());
    let (fam, ec) = m.address_error_code().unwrap().unwrap();
    assert_eq!((fam, ec.code), (attr::FAMILY_IPV6, 440));
    let ft3 = udp("198.51.100.7:40002");
    let s3 = h.challenge(&ft3, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            additional_family: Some(attr::FAMILY_IPV4),
            ..Default::default()
        },
        Some(&s3),
    );
    assert_eq!(h.expect_code(&ft3, &req), 400);
}

fn harness_no_v6() -> H {
    let mut cfg = base_config("");
    cfg.relay.bind_ip6 = None;
    harness_cfg(cfg, 7)
}

#[test]
fn quotas_give_486() {
    let mut h = harness("[policy]\nmax_allocations = 3\nmax_allocations_per_user = 2\n");
    let exp = h.now.unix + 3600;
    h.allocate(
        &udp("198.51.100.7:1"),
        rest("carol", exp),
        Default::default(),
    );
    h.allocate(
        &udp("198.51.100.7:2"),
        rest("carol", exp),
        Default::default(),
    );
    // REST users are counted by the part after ':' — a new expiry is the
    // same user.
    let err = h
        .allocate_with(
            &udp("198.51.100.7:3"),
            rest("carol", exp + 1),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 486);
    h.allocate(
        &udp("198.51.100.7:4"),
        rest("dave", exp),
        Default::default(),
    );
    let err = h
        .allocate_with(
            &udp("198.51.100.7:5"),
            rest("erin", exp),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 486, "total cap");
    assert_eq!(h.counters.quota_refusals.get(), 2);
    assert_eq!(h.shared.allocations(), 3);
}

#[test]
fn exhausted_port_range_gives_508() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 1000\n");
    // Ports 50000-50099; the even ones are held by "another process" and
    // are skipped, the odd ones are used until the range is exhausted.
    for p in (50000..50100).step_by(2) {
        h.io.busy.insert(p);
    }
    for i in 0..50 {
        let (_, relayed, _) = h.allocate(
            &udp(&format!("198.51.100.7:{i}")),
            alice(),
            Default::default(),
        );
        assert_eq!(relayed.port() % 2, 1);
    }
    let err = h
        .allocate_with(
            &udp("198.51.100.7:99"),
            alice(),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 508);
    assert_eq!(h.server.allocation_count(), 50);
    assert_eq!(
        h.shared.pool(Family::V4).taken(),
        50,
        "failed ports released"
    );
}

#[test]
fn even_port_reservation_token() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            even_port: Some(true),
            ..Default::default()
        },
        Some(&s),
    );
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    let rtp = m.xor_relayed_address().unwrap().unwrap();
    assert_eq!(rtp.port() % 2, 0, "even port");
    let token = m.reservation_token().unwrap().expect("token");
    assert!(
        h.shared.pool(Family::V4).is_taken(rtp.port() + 1),
        "next port held"
    );
    // The RTCP allocation from another five-tuple uses the token.
    let ft2 = udp("198.51.100.7:40001");
    let (_, rtcp, _) = h.allocate(
        &ft2,
        alice(),
        AllocateOptions {
            reservation_token: Some(token),
            ..Default::default()
        },
    );
    assert_eq!(rtcp.port(), rtp.port() + 1);
    // A token is single-use.
    let err = h
        .allocate_with(
            &udp("198.51.100.7:40002"),
            alice(),
            AllocateOptions {
                reservation_token: Some(token),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 508);
    // RESERVATION-TOKEN together with EVEN-PORT is 400.
    let ft4 = udp("198.51.100.7:40004");
    let s4 = h.challenge(&ft4, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            reservation_token: Some([1; 8]),
            even_port: Some(false),
            ..Default::default()
        },
        Some(&s4),
    );
    assert_eq!(h.expect_code(&ft4, &req), 400);
}

#[test]
fn reservation_expires_after_30_seconds() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(
        &mut req,
        tid,
        &AllocateOptions {
            even_port: Some(true),
            ..Default::default()
        },
        Some(&s),
    );
    let m = h.send(&ft, &req).unwrap();
    let m = Message::parse(&m).unwrap();
    let port = m.xor_relayed_address().unwrap().unwrap().port();
    let token = m.reservation_token().unwrap().unwrap();
    h.advance(Duration::from_millis(29_999));
    assert!(
        h.shared.pool(Family::V4).is_taken(port + 1),
        "still held at 29.999 s"
    );
    h.advance(Duration::from_millis(1));
    assert!(
        !h.shared.pool(Family::V4).is_taken(port + 1),
        "released at 30 s"
    );
    let err = h
        .allocate_with(
            &udp("198.51.100.7:40001"),
            alice(),
            AllocateOptions {
                reservation_token: Some(token),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 508);
}

#[test]
fn dont_fragment_is_passed_to_the_relay_socket() {
    let mut h = harness("");
    h.allocate(
        &udp("198.51.100.7:1"),
        alice(),
        AllocateOptions {
            dont_fragment: true,
            ..Default::default()
        },
    );
    h.allocate(&udp("198.51.100.7:2"), alice(), Default::default());
    assert_eq!(
        h.io.df,
        [Fragmentation::DontFragment, Fragmentation::Allowed]
    );
}

// --- Lifetimes and Refresh ---------------------------------------------------

#[test]
fn allocation_expires_at_its_lifetime_not_before() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let start = h.now.mono;
    let (_, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(
        h.server.poll_timeout(),
        Some(start + Duration::from_secs(600))
    );
    h.advance(Duration::from_millis(599_999));
    assert_eq!(h.server.allocation_count(), 1);
    assert!(h.io.closed.is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.io.closed, [relay]);
    assert_eq!(h.counters.ended_count(EndReason::Expired), 1);
    assert_eq!(h.counters.active_total(), 0);
    assert_eq!(h.shared.allocations(), 0);
    assert_eq!(
        h.shared.pool(Family::V4).taken(),
        0,
        "port back in the pool"
    );
}

#[test]
fn refresh_extends_caps_and_deletes() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    h.advance(Duration::from_secs(500));
    assert_eq!(h.refresh(&ft, &s, Some(1200)), (200, Some(1200)));
    h.advance(Duration::from_secs(1199));
    assert_eq!(
        h.server.allocation_count(),
        1,
        "refreshed at 500 s for 1200 s"
    );
    assert_eq!(h.refresh(&ft, &s, Some(999_999)), (200, Some(3600)));
    assert_eq!(
        h.refresh(&ft, &s, None),
        (200, Some(600)),
        "no LIFETIME: the default"
    );
    // Refresh asking for the wrong family: 443.
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::REFRESH, Class::Request),
        tid,
    );
    b.family(attr::REQUESTED_ADDRESS_FAMILY, attr::FAMILY_IPV6);
    s.sign(&mut b);
    assert_eq!(h.expect_code(&ft, &req), 443);
    assert_eq!(h.refresh(&ft, &s, Some(0)), (200, Some(0)));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.io.closed, [relay]);
    assert_eq!(h.counters.ended_count(EndReason::Refreshed0), 1);
    assert_eq!(
        h.refresh(&ft, &s, Some(600)).0,
        437,
        "no allocation any more"
    );
}

#[test]
fn requests_without_allocation_get_437() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    assert_eq!(h.refresh(&ft, &s, Some(600)).0, 437);
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 437);
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 437);
}

#[test]
fn tcp_allocation_goes_with_its_connection() {
    let mut h = harness("");
    let ft = tcp("198.51.100.7:40000");
    let (_, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.counters.active(Transport::Tcp, Family::V4).get(), 1);
    h.server.connection_closed(h.now, &ft, &mut h.io);
    assert_eq!(h.io.closed, [relay]);
    assert_eq!(h.counters.ended_count(EndReason::ConnectionClosed), 1);
    assert_eq!(h.counters.active_total(), 0);
}

// --- Permissions -------------------------------------------------------------

#[test]
fn create_permission_and_data_both_ways() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    // Without permission: dropped both ways, counted.
    assert!(h.send_indication(&ft, "198.51.100.1:5000", b"hi").is_none());
    assert_eq!(h.counters.dropped_count(DropReason::NoPermission), 1);
    assert!(h.peer_sends(relay, "198.51.100.1:5000", b"yo").is_none());
    assert_eq!(h.counters.dropped_count(DropReason::NoPermission), 2);
    // Two peers at once; the port of a permission does not matter.
    assert_eq!(
        h.create_permission(&ft, &s, &["198.51.100.1:1", "198.51.100.2:1"]),
        200
    );
    assert_eq!(h.counters.permissions_active.get(), 2);
    let (r, peer, data) = h.send_indication(&ft, "198.51.100.1:5000", b"hi").unwrap();
    assert_eq!(
        (r, peer, &data[..]),
        (relay, addr("198.51.100.1:5000"), &b"hi"[..])
    );
    let (to, msg) = h.peer_sends(relay, "198.51.100.2:7000", b"hello").unwrap();
    assert_eq!(to, ft);
    let m = Message::parse(&msg).expect("a Data indication");
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::DATA, Class::Indication)
    );
    assert_eq!(
        m.xor_peer_address().unwrap(),
        Some(addr("198.51.100.2:7000"))
    );
    assert_eq!(m.data(), Some(&b"hello"[..]));
    assert_eq!(h.counters.relayed_packets_in.get(), 1);
    assert_eq!(h.counters.relayed_bytes_in.get(), 5);
    assert_eq!(h.counters.relayed_packets_out.get(), 1);
    assert_eq!(h.counters.relayed_bytes_out.get(), 2);
}

#[test]
fn permission_expires_at_300_seconds_and_refresh_extends_it() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            lifetime: Some(3600),
            ..Default::default()
        },
    );
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    h.advance(Duration::from_millis(299_999));
    assert!(h.peer_sends(relay, "198.51.100.1:9", b"x").is_some());
    h.advance(Duration::from_millis(1));
    assert!(
        h.peer_sends(relay, "198.51.100.1:9", b"x").is_none(),
        "expired at 300 s"
    );
    assert_eq!(h.counters.permissions_active.get(), 0);
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    h.advance(Duration::from_secs(200));
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    h.advance(Duration::from_secs(200));
    assert!(
        h.peer_sends(relay, "198.51.100.1:9", b"x").is_some(),
        "refreshed at 200 s"
    );
    assert_eq!(h.counters.permissions_active.get(), 1);
}

#[test]
fn peer_policy_refuses_private_and_mapped_addresses_with_403() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    for bad in [
        "127.0.0.1:80",
        "0.0.0.0:80",
        "10.0.0.1:80",
        "100.64.0.1:80",
        "169.254.169.254:80",
        "172.16.0.1:80",
        "192.0.0.1:80",
        "192.168.0.1:80",
        "198.18.0.1:80",
        "224.0.0.1:80",
        "240.0.0.1:80",
        "255.255.255.255:80",
        "[::ffff:127.0.0.1]:80",
        "[::ffff:0.0.0.0]:80",
        "[::ffff:169.254.169.254]:80",
        "[::127.0.0.1]:80",
    ] {
        assert_eq!(h.create_permission(&ft, &s, &[bad]), 403, "{bad}");
        assert_eq!(h.channel_bind(&ft, &s, 0x4000, bad), 403, "{bad}");
    }
    // One bad peer spoils the request: nothing installed.
    assert_eq!(
        h.create_permission(&ft, &s, &["198.51.100.1:1", "10.0.0.1:1"]),
        403
    );
    assert_eq!(h.counters.permissions_active.get(), 0);
    // A Send indication to a forbidden peer is dropped and counted as
    // policy.
    assert!(h.send_indication(&ft, "127.0.0.1:80", b"x").is_none());
    assert_eq!(h.counters.dropped_count(DropReason::PeerPolicy), 1);
    assert!(h.counters.policy_refusals.get() >= 33);
    // IPv6 allocation: IPv6 forms.
    let ft6 = udp("198.51.100.7:40001");
    let (s6, _, _) = h.allocate(
        &ft6,
        alice(),
        AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    for bad in [
        "[::1]:80",
        "[::]:80",
        "[fc00::1]:80",
        "[fe80::1]:80",
        "[ff02::1]:80",
    ] {
        assert_eq!(h.create_permission(&ft6, &s6, &[bad]), 403, "{bad}");
    }
    assert_eq!(h.create_permission(&ft6, &s6, &["[2001:db8::1]:80"]), 200);
}

#[test]
fn family_mismatch_is_443_and_missing_peer_400() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.create_permission(&ft, &s, &["[2001:db8::1]:80"]), 443);
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "[2001:db8::1]:80"), 443);
    assert_eq!(h.create_permission(&ft, &s, &[]), 400);
}

#[test]
fn allow_and_deny_lists_adjust_policy() {
    let mut h =
        harness("[policy]\nallow_peers = [\"127.0.0.1/32\"]\ndeny_peers = [\"198.51.100.0/24\"]\n");
    let ft = udp("203.0.113.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.create_permission(&ft, &s, &["127.0.0.1:9"]), 200);
    assert_eq!(
        h.create_permission(&ft, &s, &["[::ffff:127.0.0.1]:9"]),
        200,
        "same address, mapped form"
    );
    assert_eq!(h.create_permission(&ft, &s, &["127.0.0.2:9"]), 403);
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:9"]), 403);
}

#[test]
fn permission_cap_gives_508() {
    let mut h = harness("[policy]\nmax_permissions = 2\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(
        h.create_permission(&ft, &s, &["198.51.100.1:1", "198.51.100.2:1"]),
        200
    );
    assert_eq!(
        h.create_permission(&ft, &s, &["198.51.100.1:1"]),
        200,
        "refresh is not new"
    );
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.3:1"]), 508);
    assert_eq!(h.counters.quota_refusals.get(), 1);
}

// --- Channels ------------------------------------------------------------------

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.1:5000"), 200);
    assert_eq!(h.counters.channels_active.get(), 1);
    assert_eq!(
        h.counters.permissions_active.get(),
        1,
        "ChannelBind installs the permission"
    );
    let mut cd = Vec::new();
    ChannelData::encode(0x4001, b"ping", false, &mut cd);
    let (r, peer, data) = h.relay(&ft, &cd).unwrap();
    assert_eq!(
        (r, peer, &data[..]),
        (relay, addr("198.51.100.1:5000"), &b"ping"[..])
    );
    // Peer → client comes back as ChannelData, unpadded over UDP.
    let (_, msg) = h.peer_sends(relay, "198.51.100.1:5000", b"pong!").unwrap();
    assert_eq!(msg, [0x40, 0x01, 0, 5, b'p', b'o', b'n', b'g', b'!']);
    // From another port of the same IP: permitted, but no channel → Data
    // indication.
    let (_, msg) = h.peer_sends(relay, "198.51.100.1:5001", b"x").unwrap();
    assert!(Message::parse(&msg).is_ok());
    // Unbound channel → dropped and counted.
    let mut cd = Vec::new();
    ChannelData::encode(0x4002, b"x", false, &mut cd);
    assert!(h.relay(&ft, &cd).is_none());
    assert_eq!(h.counters.dropped_count(DropReason::NoChannel), 1);
}

#[test]
fn channel_data_is_padded_over_tcp() {
    let mut h = harness("");
    let ft = tcp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.1:5000"), 200);
    let (_, msg) = h.peer_sends(relay, "198.51.100.1:5000", b"pong!").unwrap();
    assert_eq!(
        msg,
        [0x40, 0x01, 0, 5, b'p', b'o', b'n', b'g', b'!', 0, 0, 0]
    );
}

#[test]
fn channel_bind_errors() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x3fff, "198.51.100.1:1"), 400);
    assert_eq!(h.channel_bind(&ft, &s, 0x8000, "198.51.100.1:1"), 400);
    assert_eq!(h.channel_bind(&ft, &s, 0xffff, "198.51.100.1:1"), 400);
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    assert_eq!(
        h.channel_bind(&ft, &s, 0x4000, "198.51.100.2:1"),
        400,
        "number bound to another peer"
    );
    assert_eq!(
        h.channel_bind(&ft, &s, 0x4001, "198.51.100.1:1"),
        400,
        "peer bound to another number"
    );
    assert_eq!(
        h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"),
        200,
        "re-bind refreshes"
    );
    // Missing CHANNEL-NUMBER / XOR-PEER-ADDRESS.
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::CHANNEL_BIND, Class::Request),
        tid,
    );
    b.xor_address(attr::XOR_PEER_ADDRESS, addr("198.51.100.1:1"));
    s.sign(&mut b);
    assert_eq!(h.expect_code(&ft, &req), 400);
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::CHANNEL_BIND, Class::Request),
        tid,
    );
    b.channel_number(0x4005);
    s.sign(&mut b);
    assert_eq!(h.expect_code(&ft, &req), 400);
}

#[test]
fn channel_expires_at_600_seconds_then_cools_down_for_300() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            lifetime: Some(3600),
            ..Default::default()
        },
    );
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    let mut cd = Vec::new();
    ChannelData::encode(0x4000, b"x", false, &mut cd);
    // Keep the permission alive on its own (it would lapse at 300 s).
    h.advance(Duration::from_secs(290));
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    h.advance(Duration::from_secs(290));
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    h.advance(Duration::from_millis(19_999));
    assert!(h.relay(&ft, &cd).is_some(), "still bound at 599.999 s");
    h.advance(Duration::from_millis(1));
    assert!(h.relay(&ft, &cd).is_none(), "expired at 600 s");
    assert_eq!(h.counters.channels_active.get(), 0);
    // Peer data now comes as a Data indication (permission still live).
    let (_, msg) = h.peer_sends(relay, "198.51.100.1:1", b"y").unwrap();
    assert!(Message::parse(&msg).is_ok());
    // During the cool-down neither number nor peer can go elsewhere...
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.2:1"), 400);
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.1:1"), 400);
    // ... after it they can.
    h.advance(Duration::from_secs(300));
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.2:1"), 200);
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.1:1"), 200);
    assert_eq!(h.counters.channels_active.get(), 2);
}

#[test]
fn same_pair_rebinds_during_cooldown() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            lifetime: Some(3600),
            ..Default::default()
        },
    );
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.counters.channels_active.get(), 0);
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    assert_eq!(h.counters.channels_active.get(), 1);
    let mut cd = Vec::new();
    ChannelData::encode(0x4000, b"x", false, &mut cd);
    assert!(h.relay(&ft, &cd).is_some());
}

#[test]
fn rfc5766_channel_numbers_accepted_unless_strict() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    // libwebrtc and coturn clients pick from 0x4000-0x7FFF.
    assert_eq!(h.channel_bind(&ft, &s, 0x541d, "198.51.100.1:1"), 200);
    assert_eq!(h.channel_bind(&ft, &s, 0x7fff, "198.51.100.2:1"), 200);
    let mut cd = Vec::new();
    ChannelData::encode(0x7fff, b"x", false, &mut cd);
    assert_eq!(h.relay(&ft, &cd).unwrap().1, addr("198.51.100.2:1"));
    let mut h = harness("[policy]\nstrict_channel_numbers = true\n");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x5000, "198.51.100.1:1"), 400);
    assert_eq!(h.channel_bind(&ft, &s, 0x4fff, "198.51.100.1:1"), 200);
}

#[test]
fn channel_cap_gives_508() {
    let mut h = harness("[policy]\nmax_channels = 1\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.2:1"), 508);
}

// --- Retransmissions -----------------------------------------------------------

#[test]
fn retransmitted_requests_are_not_applied_twice() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::refresh(&mut req, tid, Some(0), &s);
    let first = h.send(&ft, &req).unwrap();
    assert_eq!(h.server.allocation_count(), 0);
    // The allocation is gone, so a retransmission of the deleting Refresh
    // gets 437 (RFC 8656 §7.3 tells clients to treat that as success).
    let again = h.send(&ft, &req).unwrap();
    assert_ne!(first, again);
    assert_eq!(
        Message::parse(&again)
            .unwrap()
            .error_code()
            .unwrap()
            .unwrap()
            .code,
        437
    );
    // ChannelBind retransmission: same bytes.
    let ft2 = udp("198.51.100.7:40001");
    let (s2, _, _) = h.allocate(&ft2, alice(), Default::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::channel_bind(&mut req, tid, 0x4000, addr("198.51.100.1:1"), &s2);
    let a = h.send(&ft2, &req).unwrap();
    let b = h.send(&ft2, &req).unwrap();
    assert_eq!(a, b);
}

// --- Authentication ------------------------------------------------------------

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (mut s, _, _) = h.allocate(&ft, alice(), Default::default());
    h.now.unix += 7201; // nonce_lifetime = 2h
    let mut req = Vec::new();
    let tid = h.tid();
    client::refresh(&mut req, tid, Some(600), &s);
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().code, 438);
    assert!(s.update_nonce(&m));
    assert_eq!(
        h.counters.auth_failure_count(AuthFailureReason::StaleNonce),
        1
    );
    assert_eq!(
        h.refresh(&ft, &s, Some(600)).0,
        200,
        "works with the new nonce"
    );
    // A nonce issued to another client address is stale here.
    let other = udp("198.51.100.8:40000");
    let s2 = h.challenge(&other, alice(), SignOptions::default());
    let mut borrowed = h.challenge(&ft, alice(), SignOptions::default());
    borrowed.nonce = s2.nonce.clone();
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&borrowed));
    assert_eq!(h.expect_code(&udp("198.51.100.7:40001"), &req), 438);
}

#[test]
fn wrong_password_unknown_user_and_missing_attributes() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let err = h
        .allocate_with(
            &ft,
            Credentials::new("alice", "nope"),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 401);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::BadIntegrity),
        1
    );
    let err = h
        .allocate_with(
            &ft,
            Credentials::new("mallory", "x"),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 401);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::UnknownUser),
        1
    );
    // Integrity without NONCE → 400.
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17)
        .text(attr::USERNAME, "alice")
        .text(attr::REALM, "example.org")
        .integrity(&s.key);
    assert_eq!(h.expect_code(&ft, &req), 400);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.cached_keys(), 0, "failed auth caches nothing");
}

#[test]
fn precomputed_key_user_authenticates() {
    let mut h = harness("");
    h.allocate(
        &udp("198.51.100.7:1"),
        Credentials::new("bob", "builder"),
        Default::default(),
    );
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn expired_rest_username_is_refused() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let err = h
        .allocate_with(
            &ft,
            rest("carol", h.now.unix - 1),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 401);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::ExpiredUsername),
        1
    );
    // A credential that expires later works until then, and an expired one
    // is refused even once its key is cached.
    let exp = h.now.unix + 100;
    let (s, _, _) = h.allocate(&ft, rest("carol", exp), Default::default());
    h.now.unix = exp + 1;
    let ft2 = udp("198.51.100.7:40001");
    let mut s2 = h.challenge(&ft2, rest("carol", exp), SignOptions::default());
    s2.key = s.key.clone();
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&s2));
    assert_eq!(h.expect_code(&ft2, &req), 401);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::ExpiredUsername),
        2
    );
}

#[test]
fn secret_rotation() {
    // Both secrets configured: credentials from either work.
    let mut h = harness("");
    let mut cfg = base_config("");
    cfg.auth.secrets = vec![SECRET2.into(), SECRET.into()];
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 0);
    let exp = h.now.unix + 3600;
    let (s_old, _, relay_old) = h.allocate(
        &udp("198.51.100.7:1"),
        Credentials::rest(SECRET, "u", exp),
        Default::default(),
    );
    let (s_new, _, relay_new) = h.allocate(
        &udp("198.51.100.7:2"),
        Credentials::rest(SECRET2, "u", exp),
        Default::default(),
    );
    // Drop the old secret: new Allocates with it fail, and the live
    // allocation made with it ends at once (issue 12); the one made with
    // the remaining secret keeps working.
    cfg.auth.secrets = vec![SECRET2.into()];
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 1);
    assert_eq!(h.counters.ended_count(EndReason::Revoked), 1);
    let err = h
        .allocate_with(
            &udp("198.51.100.7:3"),
            Credentials::rest(SECRET, "u", exp),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 401);
    h.allocate(
        &udp("198.51.100.7:4"),
        Credentials::rest(SECRET2, "u", exp),
        Default::default(),
    );
    assert_eq!(
        h.create_permission(&udp("198.51.100.7:1"), &s_old, &["198.51.100.1:1"]),
        401,
        "the retired secret verifies nothing, and its allocation is gone"
    );
    assert!(h.peer_sends(relay_old, "198.51.100.1:1", b"x").is_none());
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(
        h.create_permission(&udp("198.51.100.7:2"), &s_new, &["198.51.100.1:1"]),
        200
    );
    assert!(h.peer_sends(relay_new, "198.51.100.1:1", b"x").is_some());
}

#[test]
fn sha256_password_algorithm_and_integrity() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let opts = SignOptions {
        prefer_sha256_key: true,
        integrity_sha256: true,
    };
    let s = h.challenge(&ft, alice(), opts);
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&s));
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(m.has_integrity_sha256(), "response signed like the request");
    assert!(m.verify_sha256(&s.key).is_ok());
    assert!(m.verify_sha1(&s.key).is_err(), "no SHA-1 MESSAGE-INTEGRITY");
    // REST credentials with SHA-256 keys too.
    let ft2 = udp("198.51.100.7:40001");
    h.allocate_with(
        &ft2,
        rest("carol", h.now.unix + 60),
        Default::default(),
        opts,
    )
    .unwrap();
    // PASSWORD-ALGORITHM without the list the server sent → 400.
    let ft3 = udp("198.51.100.7:40002");
    let s3 = h.challenge(&ft3, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17)
        .text(attr::USERNAME, "alice")
        .text(attr::REALM, "example.org")
        .text(attr::NONCE, &s3.nonce)
        .password_algorithms(&[1])
        .password_algorithm(1)
        .integrity(&s3.key);
    assert_eq!(h.expect_code(&ft3, &req), 400);
}

#[test]
fn userhash_identifies_a_static_user() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17)
        .attr(
            attr::USERHASH,
            &turnpike_proto::wire::userhash("alice", "example.org"),
        )
        .text(attr::REALM, "example.org")
        .text(attr::NONCE, &s.nonce)
        .integrity(&s.key);
    assert_eq!(h.expect_code(&ft, &req), 200);
}

#[test]
fn other_credentials_on_an_allocation_get_441() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    h.allocate(&ft, alice(), Default::default());
    let s_bob = h.challenge(
        &ft,
        Credentials::new("bob", "builder"),
        SignOptions::default(),
    );
    assert_eq!(h.create_permission(&ft, &s_bob, &["198.51.100.1:1"]), 441);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::WrongCredentials),
        1
    );
}

#[test]
fn unknown_attribute_in_turn_request_gets_signed_420() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = h.challenge(&ft, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17).attr(0x7777, b"????");
    s.sign(&mut b);
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().code, 420);
    let unknown: Vec<u16> = m
        .get(attr::UNKNOWN_ATTRIBUTES)
        .unwrap()
        .attribute_list()
        .unwrap()
        .collect();
    assert_eq!(unknown, [0x7777]);
    assert!(m.verify_sha1(&s.key).is_ok());
}

// --- Bandwidth, drain, misc ------------------------------------------------------

#[test]
fn bandwidth_cap_drops_excess() {
    // 8000 bit/s = 1000 bytes/s, burst 1000 bytes.
    let mut h = harness("[policy]\nmax_bitrate = 8000\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    let mut cd = Vec::new();
    ChannelData::encode(0x4000, &[0u8; 400], false, &mut cd);
    assert!(h.relay(&ft, &cd).is_some());
    assert!(h.relay(&ft, &cd).is_some());
    assert!(h.relay(&ft, &cd).is_none(), "1200 > 1000 bytes");
    assert_eq!(h.counters.dropped_count(DropReason::Bandwidth), 1);
    assert!(
        h.peer_sends(relay, "198.51.100.1:1", &[0u8; 300]).is_none(),
        "shared by both directions"
    );
    h.now = h.now.plus(Duration::from_millis(500));
    assert!(
        h.peer_sends(relay, "198.51.100.1:1", &[0u8; 300]).is_some(),
        "refilled 500 bytes"
    );
}

#[test]
fn draining_turns_new_allocations_away() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    let mut c = h.server.config().clone();
    c.draining = true;
    h.server.set_config(Arc::new(c.clone()));
    let err = h
        .allocate_with(
            &udp("198.51.100.7:1"),
            alice(),
            Default::default(),
            Default::default(),
        )
        .unwrap_err();
    assert_eq!(err, 486);
    c.alternate_servers = vec![addr("203.0.113.99:3478")];
    h.server.set_config(Arc::new(c));
    let ft2 = udp("198.51.100.7:2");
    let s2 = h.challenge(&ft2, alice(), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&s2));
    let resp = h.send(&ft2, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().code, 300);
    assert_eq!(
        m.alternate_server().unwrap(),
        Some(addr("203.0.113.99:3478"))
    );
    // The existing allocation keeps working.
    assert_eq!(h.refresh(&ft, &s, Some(600)).0, 200);
}

#[test]
fn malformed_and_stray_packets_are_dropped_and_counted() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    assert!(h.send(&ft, &[0xff; 40]).is_none());
    assert!(h.send(&ft, &[0x00; 10]).is_none());
    let mut cd = Vec::new();
    ChannelData::encode(0x4000, b"x", false, &mut cd);
    assert!(h.send(&ft, &cd).is_none(), "ChannelData without allocation");
    assert_eq!(h.counters.dropped_count(DropReason::Malformed), 2);
    assert_eq!(h.counters.dropped_count(DropReason::NoAllocation), 1);
    // Unknown method request → nothing (a 400 would feed a reflection),
    // counted; over TCP too.
    let mut req = Vec::new();
    let tid = h.tid();
    MessageBuilder::new(
        &mut req,
        MessageType::new(Method(0x0ff), Class::Request),
        tid,
    );
    assert!(h.send(&ft, &req).is_none());
    assert!(h.send(&tcp("198.51.100.7:40001"), &req).is_none());
    assert_eq!(h.counters.dropped_count(DropReason::UnknownMethod), 2);
    assert_eq!(h.counters.answered_count(Method(0x0ff), 400), 0);
    // Data from a peer on a relay that doesn't exist.
    assert!(h.peer_sends(RelayId(77), "198.51.100.1:1", b"x").is_none());
}

#[test]
fn events_report_allocation_life() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, relayed, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.1:1"]), 200);
    assert!(h.send_indication(&ft, "198.51.100.1:1", b"12345").is_some());
    h.advance(Duration::from_secs(10));
    assert_eq!(h.refresh(&ft, &s, Some(0)).0, 200);
    let created = h.server.poll_event().unwrap();
    assert!(
        matches!(created, turnpike_proto::core::Event::AllocationCreated { ref username, .. } if username == "alice")
    );
    match h.server.poll_event().unwrap() {
        turnpike_proto::core::Event::AllocationEnded {
            reason,
            duration,
            traffic,
            relay,
            ..
        } => {
            assert_eq!(reason, EndReason::Refreshed0);
            assert_eq!(duration, Duration::from_secs(10));
            assert_eq!(traffic.bytes_out, 5);
            assert_eq!(relay.port(), relayed.port());
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(h.server.poll_event().is_none());
}

#[test]
fn sessions_and_admin_delete() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, "198.51.100.1:1"), 200);
    let list = h.server.sessions(h.now);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].username, "alice");
    assert_eq!(
        list[0].channels,
        [(ChannelNumber(0x4000), PeerAddr(addr("198.51.100.1:1")))]
    );
    assert_eq!(list[0].permissions.len(), 1);
    assert!(h.server.delete_session(list[0].id, h.now, &mut h.io));
    assert!(!h.server.delete_session(list[0].id, h.now, &mut h.io));
    assert_eq!(h.io.closed, [relay]);
    assert_eq!(h.counters.ended_count(EndReason::Admin), 1);
    assert_eq!(h.counters.channels_active.get(), 0);
    assert_eq!(h.counters.permissions_active.get(), 0);
}

#[test]
fn thousands_of_allocations_expire_and_state_returns_to_empty() {
    let mut h = harness_wide_range();
    for round in 0..3 {
        for i in 0..2000u32 {
            let ft = udp(&format!(
                "198.51.{}.{}:{}",
                100 + (i % 2),
                1 + (i % 200),
                1000 + i
            ));
            let (s, _, _) = h.allocate(
                &ft,
                rest(&format!("u{i}"), h.now.unix + 3600),
                Default::default(),
            );
            assert_eq!(h.create_permission(&ft, &s, &["203.0.113.1:1"]), 200);
            assert_eq!(h.channel_bind(&ft, &s, 0x4000, "203.0.113.1:1"), 200);
        }
        assert_eq!(h.server.allocation_count(), 2000, "round {round}");
        h.advance(Duration::from_secs(3600));
        assert_eq!(h.server.allocation_count(), 0);
        assert!(h.io.bound.is_empty());
        assert_eq!(h.shared.allocations(), 0);
        assert_eq!(h.shared.pool(Family::V4).taken(), 0);
        assert_eq!(h.counters.active_total(), 0);
        assert_eq!(h.counters.permissions_active.get(), 0);
        assert_eq!(h.counters.channels_active.get(), 0);
        assert_eq!(h.server.timer_entries(), 0, "no stale timers left");
    }
}

fn harness_wide_range() -> H {
    let mut cfg = base_config("[policy]\nmax_allocations_per_user = 100000\n");
    cfg.relay.ports = "20000-29999".parse().unwrap();
    harness_cfg(cfg, 3)
}

#[test]
fn datagram_too_large_for_a_data_indication_is_dropped_and_counted() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, relay) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    let peer = "[2001:db8::1]:1";
    assert_eq!(h.create_permission(&ft, &s, &[peer]), 200);
    // The largest UDP payload over IPv6 (65527) does not fit a Data
    // indication: 4 + 20 (XOR-PEER-ADDRESS) + 4 (DATA) + 65528 > 65535.
    let big = vec![7u8; 65527];
    assert!(h.peer_sends(relay, peer, &big).is_none());
    assert_eq!(h.counters.dropped_count(DropReason::TooLarge), 1);
    // Over a channel the same datagram fits (ChannelData's length is the
    // data length).
    assert_eq!(h.channel_bind(&ft, &s, 0x4000, peer), 200);
    let (_, msg) = h.peer_sends(relay, peer, &big).unwrap();
    assert_eq!(ChannelData::parse(&msg).unwrap().data.len(), 65527);
    // The largest that fits a Data indication still goes: 28 + 65504.
    let ok = vec![7u8; 65504];
    let (_, msg) = h.peer_sends(relay, "[2001:db8::1]:2", &ok).unwrap();
    assert_eq!(
        Message::parse(&msg).unwrap().data().unwrap().len(),
        ok.len()
    );
}

// --- Amplification and the unauthenticated rate limit (issue 12) -----------

/// A bare request: header, then `attrs`.
fn bare(h: &mut H, method: Method, attrs: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(&mut req, MessageType::new(method, Class::Request), tid);
    attrs(&mut b);
    req
}

/// Every unauthenticated UDP answer is at most three times its request,
/// from IPv4 and IPv6 sources: the smallest trigger of each answer.
#[test]
fn unauthenticated_udp_answers_are_at_most_three_times_the_request() {
    let mut h = harness("");
    for src in ["198.51.100.7:40000", "[2001:db8::7]:40000"] {
        let ft = udp(src);
        let peer = addr("198.51.100.1:9");
        let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
            (
                "Binding, 20 bytes",
                bare(&mut h, Method::BINDING, |_| {}),
                Some(200),
            ),
            (
                "Binding with an unknown comprehension-required attribute",
                bare(&mut h, Method::BINDING, |b| {
                    b.attr(0x7f01, &[]);
                }),
                Some(420),
            ),
            // The realm "example.org" does not fit a 401 in 60 bytes.
            (
                "Allocate, 20 bytes",
                bare(&mut h, Method::ALLOCATE, |_| {}),
                None,
            ),
            (
                "Allocate with REQUESTED-TRANSPORT",
                bare(&mut h, Method::ALLOCATE, |b| {
                    b.requested_transport(17);
                }),
                Some(401),
            ),
            (
                "Refresh, 20 bytes",
                bare(&mut h, Method::REFRESH, |_| {}),
                None,
            ),
            (
                "CreatePermission, 20 bytes",
                bare(&mut h, Method::CREATE_PERMISSION, |_| {}),
                None,
            ),
            (
                "CreatePermission with XOR-PEER-ADDRESS",
                bare(&mut h, Method::CREATE_PERMISSION, |b| {
                    b.xor_address(attr::XOR_PEER_ADDRESS, peer);
                }),
                Some(401),
            ),
            (
                "ChannelBind, 20 bytes",
                bare(&mut h, Method::CHANNEL_BIND, |_| {}),
                None,
            ),
            (
                "an unknown method",
                bare(&mut h, Method(0x0ff), |_| {}),
                None,
            ),
            (
                "MESSAGE-INTEGRITY without USERNAME",
                bare(&mut h, Method::ALLOCATE, |b| {
                    b.integrity(&turnpike_proto::wire::IntegrityKey::new(b"k"));
                }),
                Some(400),
            ),
        ];
        for (what, req, want) in cases {
            let got = h.send(&ft, &req);
            match (&got, want) {
                (None, None) => {}
                (Some(resp), Some(code)) => {
                    assert!(
                        resp.len() <= 3 * req.len(),
                        "{src} {what}: {} bytes for {}",
                        resp.len(),
                        req.len()
                    );
                    let m = Message::parse(resp).unwrap();
                    let c = match m.class() {
                        Class::Success => 200,
                        _ => m.error_code().unwrap().unwrap().code,
                    };
                    assert_eq!(c, code, "{src} {what}");
                    assert_eq!(m.software().unwrap(), None, "{src} {what}: no SOFTWARE");
                    if code == 401 {
                        assert_eq!(m.realm().unwrap(), Some("example.org"));
                        assert!(m.nonce().unwrap().is_some(), "{src} {what}");
                    }
                }
                _ => panic!("{src} {what}: got {got:?}, want {want:?}"),
            }
        }
    }
    assert_eq!(h.counters.dropped_count(DropReason::UnknownMethod), 2);
    assert_eq!(
        h.counters.dropped_count(DropReason::Amplification),
        8,
        "20-byte Allocate, Refresh, CreatePermission, ChannelBind, twice"
    );
}

/// The 438 to a request with a stale nonce is small against that
/// request (it carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY).
#[test]
fn stale_nonce_answer_is_within_three_times() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let session = h.challenge(&ft, alice(), SignOptions::default());
    h.advance(Duration::from_secs(3 * 3600));
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&session));
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().code, 438);
    assert!(resp.len() <= 3 * req.len());
    assert!(m.nonce().unwrap().is_some());
}

/// A 401 that had no room for PASSWORD-ALGORITHMS, the nonce cookie or a
/// reason phrase still lets a client authenticate (MD5, RFC 5389 style).
#[test]
fn a_compact_401_still_authenticates() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let req = bare(&mut h, Method::ALLOCATE, |b| {
        b.requested_transport(17);
    });
    let resp = h.send(&ft, &req).unwrap();
    let m = Message::parse(&resp).unwrap();
    let e = m.error_code().unwrap().unwrap();
    assert_eq!((e.code, e.reason), (401, "Unauthorized"));
    assert!(m.password_algorithms().is_none(), "no room for it");
    let nonce = m.nonce().unwrap().unwrap();
    assert!(!nonce.starts_with("obMatJos2"), "{nonce}");
    assert_eq!(nonce.len(), 16);
    let session = Session::from_challenge(&m, alice(), SignOptions::default()).unwrap();
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&session));
    let m2 = h.send(&ft, &req).unwrap();
    let m2 = Message::parse(&m2).unwrap();
    assert_eq!(m2.class(), Class::Success);
    assert!(session.verify(&m2));
    // Signed answers keep SOFTWARE.
    assert_eq!(m2.software().unwrap(), Some("turnpike-test"));
    // Over TCP the handshake proved the address: the full 401.
    let req = bare(&mut h, Method::ALLOCATE, |_| {});
    let m = h.send(&tcp("198.51.100.7:40001"), &req).unwrap();
    let m = Message::parse(&m).unwrap();
    assert_eq!(m.error_code().unwrap().unwrap().reason, "Unauthorized");
    assert!(m.nonce().unwrap().unwrap().starts_with("obMatJos2wAAA"));
    let algs: Vec<u16> = m.password_algorithms().unwrap().map(|(a, _)| a).collect();
    assert_eq!(algs, [2, 1]);
}

#[test]
fn the_rate_limit_caps_unauthenticated_answers_per_source() {
    let mut h = harness("[limits]\nunauth_rate = 10\nunauth_burst = 20\n");
    let binding = |h: &mut H| bare(h, Method::BINDING, |_| {});
    let answered = |h: &mut H, src: &str, n: usize| {
        (0..n)
            .filter(|_| {
                let req = binding(h);
                h.send(&udp(src), &req).is_some()
            })
            .count()
    };
    // An allocation made before the flood keeps working through it.
    let ft = udp("198.51.100.7:39999");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(
        answered(&mut h, "198.51.100.7:40000", 100),
        19,
        "the burst (one went to the 401)"
    );
    assert_eq!(answered(&mut h, "198.51.100.7:40001", 10), 0, "any port");
    assert_eq!(
        h.refresh(&ft, &s, Some(600)).0,
        200,
        "authenticated: not limited"
    );
    assert_eq!(
        answered(&mut h, "198.51.100.8:40000", 100),
        20,
        "another source"
    );
    assert_eq!(answered(&mut h, "[2001:db8:0:1::1]:1", 15), 15);
    assert_eq!(
        answered(&mut h, "[2001:db8:0:1::2]:1", 15),
        5,
        "the same /64"
    );
    assert_eq!(
        answered(&mut h, "[2001:db8:0:2::1]:1", 15),
        15,
        "another /64"
    );
    let tcp_req = binding(&mut h);
    assert!(
        h.send(&tcp("198.51.100.7:40002"), &tcp_req).is_some(),
        "TCP is not limited"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(answered(&mut h, "198.51.100.7:40000", 100), 10, "the rate");
    assert_eq!(
        h.counters
            .rate_limited_count(turnpike_proto::core::RateLimitReason::Binding),
        81 + 10 + 80 + 10 + 90
    );
    // 401s are limited too, and counted by their own reason.
    let alloc = bare(&mut h, Method::ALLOCATE, |b| {
        b.requested_transport(17);
    });
    assert!(h.send(&udp("198.51.100.7:40000"), &alloc).is_none());
    assert_eq!(
        h.counters
            .rate_limited_count(turnpike_proto::core::RateLimitReason::Unauthorized),
        1
    );
}

/// Issue 12: an EVEN-PORT reservation (R bit) holds a port, so it counts
/// against the user's and the total quota until it is used or expires.
#[test]
fn even_port_reservations_count_against_the_quotas() {
    let mut h = harness("[policy]\nmax_allocations = 10\nmax_allocations_per_user = 3\n");
    let even = |h: &mut H, port: u16| {
        let ft = udp(&format!("198.51.100.7:{port}"));
        h.allocate_with(
            &ft,
            alice(),
            AllocateOptions {
                even_port: Some(true),
                ..Default::default()
            },
            SignOptions::default(),
        )
    };
    assert!(even(&mut h, 40000).is_ok());
    assert_eq!(
        h.shared.allocations(),
        2,
        "the allocation and its held port"
    );
    assert_eq!(even(&mut h, 40001).err(), Some(486), "3 + 1 held > 3");
    assert_eq!(
        h.shared.allocations(),
        2,
        "the refusal gave back what it took"
    );
    // A plain allocation still fits the third unit; then nothing more.
    h.allocate(&udp("198.51.100.7:40002"), alice(), Default::default());
    assert_eq!(
        h.allocate_with(
            &udp("198.51.100.7:40003"),
            alice(),
            Default::default(),
            SignOptions::default()
        )
        .err(),
        Some(486)
    );
    // Another user is not charged for alice's reservation.
    h.allocate(
        &udp("198.51.100.8:40000"),
        rest("bob", 1_900_000_000),
        Default::default(),
    );
    assert_eq!(h.shared.allocations(), 4);
    // The reservation expires: its unit comes back.
    h.advance(RESERVATION_LIFETIME);
    assert_eq!(h.shared.allocations(), 3);
    h.allocate(&udp("198.51.100.7:40004"), alice(), Default::default());
    // Over the total quota: 10 allocations, a user with 5 EVEN-PORT pairs
    // would pin 10 ports.
    let mut h = harness("[policy]\nmax_allocations = 4\nmax_allocations_per_user = 100\n");
    assert!(even(&mut h, 41000).is_ok());
    assert!(even(&mut h, 41001).is_ok());
    assert_eq!(h.shared.allocations(), 4);
    assert_eq!(even(&mut h, 41002).err(), Some(486), "total reached");
    assert_eq!(
        h.allocate_with(
            &udp("198.51.100.9:1"),
            rest("carol", 1_900_000_000),
            Default::default(),
            SignOptions::default()
        )
        .err(),
        Some(486),
        "held ports count in the total"
    );
}

// --- Bounds (issue 12 item 7) ----------------------------------------------

/// An Allocate with USERNAME, REALM, NONCE and a MESSAGE-INTEGRITY (of a
/// key that does not matter: the bounds come first).
fn signed_with(h: &mut H, username: &str, realm: &str, nonce: &str) -> Vec<u8> {
    let mut req = Vec::new();
    let tid = h.tid();
    let mut b = MessageBuilder::new(
        &mut req,
        MessageType::new(Method::ALLOCATE, Class::Request),
        tid,
    );
    b.requested_transport(17)
        .text(attr::USERNAME, username)
        .text(attr::REALM, realm)
        .text(attr::NONCE, nonce)
        .integrity(&turnpike_proto::wire::IntegrityKey::new(b"whatever"));
    req
}

#[test]
fn oversized_username_realm_or_nonce_is_400_before_any_hmac() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let long = |n: usize| "x".repeat(n);
    let reason = |h: &mut H, req: &[u8]| {
        let resp = h.send(&ft, req).unwrap();
        let m = Message::parse(&resp).unwrap();
        let e = m.error_code().unwrap().unwrap();
        (e.code, e.reason.to_string())
    };
    // A forged nonce: were the nonce's HMAC computed first, this would be
    // 438; the bounds come before it.
    for (user, realm, nonce, want) in [
        (
            long(509),
            "example.org".to_string(),
            "forged".to_string(),
            "USERNAME too long",
        ),
        (
            long(30_000),
            "example.org".to_string(),
            "forged".to_string(),
            "USERNAME too long",
        ),
        (
            "alice".to_string(),
            long(764),
            "forged".to_string(),
            "REALM too long",
        ),
        (
            "alice".to_string(),
            "example.org".to_string(),
            long(764),
            "NONCE too long",
        ),
        (
            "alice".to_string(),
            "example.org".to_string(),
            "é".repeat(764),
            "NONCE too long",
        ),
    ] {
        let req = signed_with(&mut h, &user, &realm, &nonce);
        assert_eq!(
            reason(&mut h, &req),
            (400, want.to_string()),
            "{}",
            user.len()
        );
    }
    // At the bounds: on to the nonce check (438).
    let req = signed_with(&mut h, &long(508), &long(763), "forged");
    assert_eq!(reason(&mut h, &req).0, 438);
    assert_eq!(h.server.cached_keys(), 0);
    assert_eq!(
        h.counters.auth_failure_count(AuthFailureReason::BadRequest),
        5
    );
}

/// More than 128 attributes: the message does not parse; dropped
/// unanswered and counted as malformed, authenticated or not.
#[test]
fn more_than_128_attributes_is_dropped() {
    let mut h = harness("[policy]\nmax_permissions = 10000\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    let peers = |n: usize| -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([198, 51, 100, (i % 200) as u8 + 1], 1000 + i as u16)))
            .collect()
    };
    let malformed = h.counters.dropped_count(DropReason::Malformed);
    for n in [124, 2700] {
        // 124 peers + USERNAME, REALM, NONCE, MESSAGE-INTEGRITY,
        // FINGERPRINT = 129 attributes.
        let mut req = Vec::new();
        let tid = h.tid();
        client::create_permission(&mut req, tid, &peers(n), &s);
        assert!(h.send(&ft, &req).is_none(), "{n} peers");
    }
    assert_eq!(
        h.counters.dropped_count(DropReason::Malformed),
        malformed + 2
    );
    // 123 peers (128 attributes) parse and are answered.
    let ok: Vec<String> = peers(123).iter().map(SocketAddr::to_string).collect();
    let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
    assert_eq!(h.create_permission(&ft, &s, &ok), 200);
}

/// CreatePermission checks the cap on the number of addresses before it
/// looks for duplicates; duplicates count once against the cap.
#[test]
fn create_permission_cap_before_duplicates() {
    let mut h = harness("[policy]\nmax_permissions = 4\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    let five = ["198.51.100.1:1"; 5];
    assert_eq!(h.create_permission(&ft, &s, &five), 508, "5 addresses > 4");
    assert_eq!(h.counters.permissions_active.get(), 0);
    let dup = [
        "198.51.100.1:1",
        "198.51.100.1:2",
        "198.51.100.2:1",
        "198.51.100.1:3",
    ];
    assert_eq!(h.create_permission(&ft, &s, &dup), 200);
    assert_eq!(h.counters.permissions_active.get(), 2, "duplicates once");
    let more = ["198.51.100.3:1", "198.51.100.4:1", "198.51.100.1:9"];
    assert_eq!(h.create_permission(&ft, &s, &more), 200, "2 + 2 new = 4");
    assert_eq!(h.counters.permissions_active.get(), 4);
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.5:1"]), 508);
    assert_eq!(
        h.create_permission(&ft, &s, &["198.51.100.4:7", "198.51.100.1:7"]),
        200,
        "refreshing existing ones needs no room"
    );
}

/// A reload changes the unauthenticated rate limit at once (the table is
/// kept: levels stay, capped at the new burst).
#[test]
fn a_reload_changes_the_rate_limit() {
    let mut h = harness("[limits]\nunauth_rate = 10\nunauth_burst = 20\n");
    let ft = udp("198.51.100.7:40000");
    let answered = |h: &mut H, n: usize| {
        (0..n)
            .filter(|_| {
                let req = bare(h, Method::BINDING, |_| {});
                h.send(&ft, &req).is_some()
            })
            .count()
    };
    assert_eq!(answered(&mut h, 30), 20);
    let off = base_config("[limits]\nunauth_rate = 0\n");
    h.server
        .set_config(Arc::new(turnpike::config::to_core(&off)));
    assert_eq!(answered(&mut h, 30), 30, "off");
    let on = base_config("[limits]\nunauth_rate = 10\nunauth_burst = 5\n");
    h.server
        .set_config(Arc::new(turnpike::config::to_core(&on)));
    assert_eq!(answered(&mut h, 30), 0, "still spent");
    h.advance(Duration::from_secs(10));
    assert_eq!(answered(&mut h, 30), 5, "refilled to the new burst");
}
