//! Regression: a port reserved by EVEN-PORT with the R bit (RFC 8656
//! §7.2) must really be available when its RESERVATION-TOKEN comes back.
//!
//! Found with coturn's turnutils_uclient (tests/interop_coturn_uclient.rs),
//! which allocates an RTP relay with EVEN-PORT R=1 and then its RTCP relay
//! with the token: now and then the second Allocate got 508 and the tool
//! gave up. The server claimed port+1 in its own table but never checked
//! that the port could be bound, nor held it, so whenever another process
//! (here: other tests' ephemeral client sockets) had that port, the token
//! was worthless. The server must only reserve a successor it has bound,
//! and keep it bound until the token is used or expires.
//!
//! Each test holds UDP ports inside a small relay range, the way other
//! processes would.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use common::*;
use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::wire::{Class, Message};

/// Relay ranges of this file: 42800-42999 and 43500-43999, each test
/// with its own part (the tests run in parallel). A test takes the first
/// small block of its part whose ports it finds free: other programs'
/// ephemeral ports land in these ranges too (a soak test's thousands of
/// client sockets hold about one port in ten), hence many small blocks.
fn server(low: u16, high: u16) -> TestServer {
    TestServer::start(&loopback_relay_config(
        &format!("{low}-{high}"),
        "users = { alice = \"alice-password\" }",
    ))
}

/// Find a block of `size` ports (an even first port, inside `from..to`)
/// where this test can bind every odd port except the successors of the
/// even ports at `pair_offsets`, and where those successors and all even
/// ports are free. Returns
/// the range, the pairs and the held sockets, which stand for other
/// processes holding ports inside the relay range.
fn claim_block(
    from: u16,
    to: u16,
    size: u16,
    pair_offsets: &[u16],
) -> (u16, u16, Vec<u16>, Vec<UdpSocket>) {
    let bind = |p: u16| UdpSocket::bind((Ipv4Addr::LOCALHOST, p));
    for low in (from..to).step_by(usize::from(size)) {
        let high = low + size - 1;
        let pairs: Vec<u16> = pair_offsets.iter().map(|o| low + o).collect();
        let held: Result<Vec<UdpSocket>, _> = (low..=high)
            .filter(|&p| p % 2 == 1 && !pairs.contains(&(p - 1)))
            .map(bind)
            .collect();
        let evens_free = (low..=high).filter(|p| p % 2 == 0).all(|p| bind(p).is_ok());
        let pairs_free = evens_free && pairs.iter().all(|&p| bind(p + 1).is_ok());
        if let (Ok(held), true) = (held, pairs_free) {
            return (low, high, pairs, held);
        }
    }
    panic!("no block of {size} ports in {from}-{to} has its ports free for this test");
}

/// A signed UDP client session for alice against `turn`.
struct Client {
    sock: UdpSocket,
    turn: SocketAddr,
    session: Session,
}

fn connect(turn: SocketAddr) -> Client {
    connect_as(turn, "alice", "alice-password")
}

fn connect_as(turn: SocketAddr, user: &str, password: &str) -> Client {
    let sock = udp_client(false);
    let mut b = Vec::new();
    client::allocate(&mut b, new_tid(), &AllocateOptions::default(), None);
    let resp = udp_roundtrip(&sock, turn, &b);
    let msg = Message::parse(&resp).expect("401 parses");
    let session = Session::from_challenge(
        &msg,
        Credentials::new(user, password),
        SignOptions::default(),
    )
    .expect("401 with REALM and NONCE");
    Client {
        sock,
        turn,
        session,
    }
}

impl Client {
    /// Allocate with `o`: Ok((relayed, token)) or Err(error code).
    fn allocate(&self, o: &AllocateOptions) -> Result<(SocketAddr, Option<[u8; 8]>), u16> {
        let mut b = Vec::new();
        client::allocate(&mut b, new_tid(), o, Some(&self.session));
        let resp = udp_roundtrip(&self.sock, self.turn, &b);
        let msg = Message::parse(&resp).expect("response parses");
        match msg.class() {
            Class::Success => Ok((
                msg.xor_relayed_address()
                    .expect("XOR-RELAYED-ADDRESS decodes")
                    .expect("XOR-RELAYED-ADDRESS present"),
                msg.reservation_token().expect("RESERVATION-TOKEN decodes"),
            )),
            _ => Err(msg
                .error_code()
                .expect("ERROR-CODE decodes")
                .expect("ERROR-CODE present")
                .code),
        }
    }

    /// Refresh with LIFETIME 0: the allocation goes.
    fn delete(&self) {
        let mut b = Vec::new();
        client::refresh(&mut b, new_tid(), Some(0), &self.session);
        let resp = udp_roundtrip(&self.sock, self.turn, &b);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    }
}

fn even_port_r() -> AllocateOptions {
    AllocateOptions {
        even_port: Some(true),
        ..Default::default()
    }
}

fn with_token(t: [u8; 8]) -> AllocateOptions {
    AllocateOptions {
        reservation_token: Some(t),
        ..Default::default()
    }
}

/// The range is one pair and its odd port is taken by another process:
/// EVEN-PORT with R=1 must be refused (508), not answered with a token
/// for a port the server cannot deliver. Without R the even port is fine.
#[test]
fn no_pair_when_the_successor_is_taken() {
    let (low, high, _, _held) = claim_block(42800, 43000, 2, &[]);
    let srv = server(low, high);
    let c = connect(srv.addr(Transport::Udp, false));
    match c.allocate(&even_port_r()) {
        Err(code) => assert_eq!(code, 508, "EVEN-PORT R=1 with no pair free"),
        Ok((relayed, token)) => {
            // Show what the token is worth.
            let other = connect(srv.addr(Transport::Udp, false));
            let redeemed = token.map(|t| other.allocate(&with_token(t)));
            panic!(
                "EVEN-PORT R=1 succeeded on {relayed} although {} is taken; \
                 redeeming the token gave {redeemed:?}",
                relayed.port() + 1
            );
        }
    }
    let (relayed, token) = c
        .allocate(&AllocateOptions {
            even_port: Some(false),
            ..Default::default()
        })
        .expect("EVEN-PORT R=0");
    assert_eq!(relayed.port(), low, "the even port");
    assert_eq!(token, None, "no reservation without R");
}

/// Five even ports, and the successors of all but two are taken: each
/// EVEN-PORT R=1 must get one of those two, and its token must yield
/// exactly the successor. The allocations stay, so the two rounds use
/// both pairs and a third R=1 has nowhere to go. A server that picks the
/// even port at random passes by luck once in ten runs.
#[test]
fn the_reserved_port_is_a_free_successor_and_redeems() {
    let (low, high, pairs, _held) = claim_block(43500, 43900, 10, &[2, 6]);
    let srv = server(low, high);
    let turn = srv.addr(Transport::Udp, false);
    let mut used = Vec::new();
    let mut clients = Vec::new();
    for round in 0..pairs.len() {
        let rtp = connect(turn);
        let (relayed, token) = rtp
            .allocate(&even_port_r())
            .unwrap_or_else(|code| panic!("round {round}: EVEN-PORT R=1: error {code}"));
        let token = token.expect("RESERVATION-TOKEN with R=1");
        assert!(
            pairs.contains(&relayed.port()) && !used.contains(&relayed.port()),
            "round {round}: {relayed} is not an unused even port of {pairs:?} (the ones whose successor is free)"
        );
        used.push(relayed.port());
        let rtcp = connect(turn);
        let (relayed2, token2) = rtcp
            .allocate(&with_token(token))
            .unwrap_or_else(|code| panic!("round {round}: Allocate with the token: error {code}"));
        assert_eq!(
            relayed2.port(),
            relayed.port() + 1,
            "round {round}: the reserved port"
        );
        assert_eq!(token2, None);
        clients.push((rtp, rtcp));
    }
    // Both pairs are in use now: another R=1 has nowhere to go.
    assert_eq!(connect(turn).allocate(&even_port_r()).map(|_| ()), Err(508));
    for (rtp, rtcp) in &clients {
        rtp.delete();
        rtcp.delete();
    }
}

/// A token refused after all (here: 486, alice may hold one allocation)
/// must let the held port go at once, not keep it bound for nobody.
#[test]
fn a_refused_token_lets_the_held_port_go() {
    let (low, high) = (43900, 43999);
    let srv = TestServer::start(
        &loopback_relay_config(
            &format!("{low}-{high}"),
            "users = { alice = \"alice-password\", bob = \"bob-password\" }",
        )
        .replace(
            "max_allocations_per_user = 100",
            "max_allocations_per_user = 2",
        ),
    );
    let turn = srv.addr(Transport::Udp, false);
    let rtp = connect(turn);
    // The allocation and its held port: alice's two quota units.
    let (relayed, token) = rtp.allocate(&even_port_r()).expect("EVEN-PORT R=1");
    let reserved = relayed.port() + 1;
    assert!(
        UdpSocket::bind((Ipv4Addr::LOCALHOST, reserved)).is_err(),
        "the reserved port {reserved} is held by the server"
    );
    assert_eq!(
        connect(turn)
            .allocate(&AllocateOptions::default())
            .map(|_| ()),
        Err(486),
        "the held port counts against alice's quota"
    );
    // bob, at his quota, redeems alice's token.
    let bobs: Vec<Client> = (0..2)
        .map(|_| connect_as(turn, "bob", "bob-password"))
        .collect();
    for b in &bobs {
        b.allocate(&AllocateOptions::default())
            .expect("bob's allocation");
    }
    let rtcp = connect_as(turn, "bob", "bob-password");
    assert_eq!(
        rtcp.allocate(&with_token(token.expect("token")))
            .map(|_| ()),
        Err(486),
        "a third allocation of a two-allocation user"
    );
    assert!(
        UdpSocket::bind((Ipv4Addr::LOCALHOST, reserved)).is_ok(),
        "the reserved port {reserved} was not let go after the token was refused"
    );
}
