//! End-to-end: the built `turnpike` binary relays over loopback. A test
//! TURN client (tests/common/turn.rs) allocates over UDP, TCP and TLS
//! (IPv4) and over UDP on [::1] (an IPv6 relay), and a plain UDP socket
//! plays the peer.
//!
//! Relay ports: this file owns 44000-44999; each test takes its own
//! slice of it so parallel tests never compete for a port.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ops::JsonBody;
use common::turn::{Allocated, Peer, TurnClient, error_code, is_padded, wait_port_closed};
use common::*;
use turnpike::config::PortRange;
use turnpike_proto::client::{AllocateOptions, Credentials};
use turnpike_proto::wire::{Class, Message, Method, attr};

const SECRET: &str = "e2e-first-secret";
const SECRET2: &str = "e2e-second-secret";
const REALM: &str = "e2e.turnpike.test";
/// How long the server may take to log an allocation's end (its log
/// lines are written by the shard's timer loop, at least once a second).
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Payload sizes relayed in each direction and each way.
const SIZES: [usize; 7] = [0, 1, 3, 4, 5, 100, 1200];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A REST credential for `user`, valid for an hour, from the first secret.
fn rest(user: &str) -> Credentials {
    Credentials::rest(SECRET, user, unix_now() + 3600)
}

/// Listeners: UDP on 127.0.0.1 and [::1], TCP and TLS on 127.0.0.1, all on
/// port 0. Relays on 127.0.0.1 and ::1 in `ports`. Two REST secrets and a
/// static user. `policy` is the [policy] body.
fn config(cert: &TestCert, ports: &str, policy: &str) -> String {
    format!(
        r#"
[server]
realm = "{REALM}"
threads = 2

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[[listen]]
transport = "udp"
addr = "[::1]:0"

[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"

[[listen]]
transport = "tls"
addr = "127.0.0.1:0"
cert = {cert}
key = {key}

[relay]
bind_ip = "127.0.0.1"
bind_ip6 = "::1"
ports = "{ports}"

[auth]
secrets = ["{SECRET}", "{SECRET2}"]
users = {{ alice = "wonderland" }}

[policy]
{policy}
"#,
        cert = cert.cert_toml(),
        key = cert.key_toml(),
    )
}

/// Loopback peers allowed (both families).
const ALLOW_LOOPBACK: &str = r#"allow_peers = ["127.0.0.1/32", "::1/128"]"#;

/// A server relaying to loopback peers, relay ports in `ports`.
fn relay_server(ports: &str) -> (TestServer, TestCert) {
    let cert = self_signed_cert();
    let server = TestServer::start(&config(&cert, ports, ALLOW_LOOPBACK));
    (server, cert)
}

fn client(server: &TestServer, cert: &TestCert, transport: Transport, ipv6: bool) -> TurnClient {
    TurnClient::connect(
        transport,
        server.addr(transport, ipv6),
        Some(cert.client_config()),
    )
}

fn opts(ipv6: bool) -> AllocateOptions {
    AllocateOptions {
        family: ipv6.then_some(attr::FAMILY_IPV6),
        ..AllocateOptions::default()
    }
}

/// Deterministic, position-dependent payload bytes.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Ordering proof (as in tests/bad_input.rs): once the client's Binding
/// round trip has returned, the server has handled everything the client
/// sent before it, so anything it relayed to the peer is already queued
/// at the peer. The peer then sends its own Binding request to the
/// server; the first datagram the peer receives is returned. If it is
/// the Binding response, nothing was relayed.
fn first_at_peer_after_probe(
    c: &mut TurnClient,
    peer: &Peer,
    server: SocketAddr,
) -> (Vec<u8>, SocketAddr) {
    c.binding();
    let tid = new_tid();
    peer.send_to(&binding_request(tid, true), server);
    peer.recv()
}

fn is_binding_response(d: &[u8]) -> bool {
    Message::parse(d).is_ok_and(|m| m.method() == Method::BINDING && m.class() == Class::Success)
}

// --- allocation over every transport -------------------------------------

#[test]
fn allocate_over_udp_tcp_tls_and_ipv6() {
    let ports = "44000-44099";
    let range: PortRange = ports.parse().unwrap();
    let (server, cert) = relay_server(ports);
    let mut relays = Vec::new();
    for (transport, ipv6) in [
        (Transport::Udp, false),
        (Transport::Tcp, false),
        (Transport::Tls, false),
        (Transport::Udp, true),
    ] {
        let mut c = client(&server, &cert, transport, ipv6);
        let user = format!("alloc-{transport}-{}", if ipv6 { "v6" } else { "v4" });
        let a = c.allocate(&rest(&user), &opts(ipv6));
        let want_ip: IpAddr = if ipv6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        assert_eq!(a.relayed.ip(), want_ip, "{transport}: relay IP");
        assert!(
            range.contains(a.relayed.port()),
            "{transport}: relay port {} outside {range}",
            a.relayed.port()
        );
        assert_eq!(
            a.mapped,
            c.local_addr(),
            "{transport}: XOR-MAPPED-ADDRESS is the client's address"
        );
        assert_eq!(
            a.lifetime, 600,
            "{transport}: default lifetime (RFC 8656 §7.2)"
        );
        // The success response: XOR-RELAYED-ADDRESS, LIFETIME,
        // XOR-MAPPED-ADDRESS, SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT.
        assert_eq!(
            common::turn::attribute_types(&a.response),
            [
                attr::XOR_RELAYED_ADDRESS,
                attr::LIFETIME,
                attr::XOR_MAPPED_ADDRESS,
                attr::SOFTWARE,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT
            ],
            "{transport}: attributes of the Allocate success"
        );
        println!(
            "{transport:<3} {:<4} client {} → relayed {} lifetime {}s",
            if ipv6 { "IPv6" } else { "IPv4" },
            a.mapped,
            a.relayed,
            a.lifetime
        );
        relays.push((c, a.relayed, a.mapped, user, transport));
    }
    // Each allocation is logged with its user, client, relay and
    // transport (the shards write their logs about once a second).
    for (_, relayed, mapped, user, transport) in &relays {
        let line = server.wait_for_line(
            &[
                "allocation created",
                &format!("relay={relayed}"),
                &format!("client={mapped}"),
            ],
            LOG_TIMEOUT,
        );
        assert!(
            line.contains(user.as_str()),
            "the log names the user: {line}"
        );
        assert!(
            line.contains(&format!("transport={transport}")),
            "the log names the transport: {line}"
        );
    }
    // IPv4 and IPv6 relays may share a port number; the three IPv4 ones
    // may not.
    let v4: std::collections::HashSet<_> = relays
        .iter()
        .map(|r| r.1)
        .filter(SocketAddr::is_ipv4)
        .collect();
    assert_eq!(v4.len(), 3, "distinct IPv4 relayed addresses");
}

// --- relaying both ways ----------------------------------------------------

/// Relay every size both ways with Send/Data indications, then again over
/// a channel, between a client of `transport` and a UDP peer.
fn relay_both_ways(transport: Transport, ipv6: bool, ports: &str) {
    let (server, cert) = relay_server(ports);
    let mut c = client(&server, &cert, transport, ipv6);
    let Allocated { relayed, .. } = c.allocate(&rest("relay"), &opts(ipv6));
    let peer = Peer::new(ipv6);
    c.create_permission(&[peer.addr()])
        .expect("CreatePermission for a loopback peer on the allow list");

    for (i, &n) in SIZES.iter().enumerate() {
        let out = payload(n, i as u8);
        c.send_indication(peer.addr(), &out);
        let (got, from) = peer.recv();
        assert_eq!(from, relayed, "peer sees the relayed address as source");
        assert_eq!(
            got, out,
            "Send indication of {n} bytes: peer receives the payload"
        );

        let back = payload(n, 0x80 | i as u8);
        peer.send_to(&back, relayed);
        let (p, d) = c.recv_data();
        assert_eq!(
            p,
            peer.addr(),
            "Data indication XOR-PEER-ADDRESS is the peer"
        );
        assert_eq!(d, back, "Data indication of {n} bytes carries the reply");
    }

    // The ordering proof used by the policy test, shown to detect relayed
    // data: a Send indication sent before the probe reaches the peer first.
    c.send_indication(peer.addr(), b"before the probe");
    let (first, from) = first_at_peer_after_probe(&mut c, &peer, server.addr(Transport::Udp, ipv6));
    assert_eq!(
        (first.as_slice(), from),
        (&b"before the probe"[..], relayed),
        "relayed data is queued at the peer before the probe's answer"
    );
    let (answer, _) = peer.recv();
    assert!(is_binding_response(&answer), "then the probe's answer");

    let channel = 0x4abc;
    c.channel_bind(channel, peer.addr())
        .expect("ChannelBind to the peer");
    for (i, &n) in SIZES.iter().enumerate() {
        let out = payload(n, 0x40 | i as u8);
        c.send_channel_data(channel, &out);
        let (got, from) = peer.recv();
        assert_eq!(from, relayed);
        assert_eq!(
            got, out,
            "ChannelData of {n} bytes: peer receives the payload"
        );

        let back = payload(n, 0xc0 | i as u8);
        peer.send_to(&back, relayed);
        let (number, d, wire_len) = c.recv_channel();
        assert_eq!(number, channel, "reply arrives on the bound channel");
        assert_eq!(d, back, "ChannelData of {n} bytes carries the reply");
        if transport.is_stream() {
            assert!(
                is_padded(n, wire_len),
                "{transport}: ChannelData of {n} bytes took {wire_len} bytes, not padded to 4"
            );
        } else {
            assert!(
                (4 + n..=4 + n.next_multiple_of(4)).contains(&wire_len),
                "UDP ChannelData of {n} bytes is {wire_len} bytes"
            );
        }
    }
    // A Send indication to a peer with a channel still works; the reply
    // comes back on the channel (RFC 8656 §12.6: the server uses the
    // channel once bound).
    c.send_indication(peer.addr(), b"indication");
    assert_eq!(peer.recv(), (b"indication".to_vec(), relayed));
    peer.send_to(b"on the channel", relayed);
    let (number, d, _) = c.recv_channel();
    assert_eq!((number, d.as_slice()), (channel, &b"on the channel"[..]));
    println!(
        "{transport} {}: {} sizes relayed both ways by indication and channel {channel:#06x} via {relayed}",
        if ipv6 { "IPv6" } else { "IPv4" },
        SIZES.len()
    );
}

#[test]
fn relay_both_ways_udp() {
    relay_both_ways(Transport::Udp, false, "44100-44149");
}

#[test]
fn relay_both_ways_tcp() {
    relay_both_ways(Transport::Tcp, false, "44150-44199");
}

#[test]
fn relay_both_ways_tls() {
    relay_both_ways(Transport::Tls, false, "44200-44249");
}

#[test]
fn relay_both_ways_udp_ipv6() {
    relay_both_ways(Transport::Udp, true, "44250-44299");
}

// --- peer policy -----------------------------------------------------------

#[test]
fn default_peer_policy_refuses_internal_peers() {
    let cert = self_signed_cert();
    // No allow list: the default policy.
    let server = TestServer::start(&config(&cert, "44300-44399", ""));
    let mut c = client(&server, &cert, Transport::Udp, false);
    c.allocate(&rest("policy"), &opts(false));
    let refused: [SocketAddr; 6] = [
        "127.0.0.1:5000".parse().unwrap(),
        "10.0.0.1:5000".parse().unwrap(),
        "169.254.169.254:80".parse().unwrap(),
        // IPv6 encodings of 127.0.0.1 (an IPv6 XOR-PEER-ADDRESS).
        "[::ffff:127.0.0.1]:5000".parse().unwrap(),
        "[::127.0.0.1]:5000".parse().unwrap(),
        "0.0.0.0:5000".parse().unwrap(),
    ];
    for (i, p) in refused.iter().enumerate() {
        assert_eq!(
            c.create_permission(&[*p]),
            Err(403),
            "CreatePermission to {p}"
        );
        assert_eq!(
            c.channel_bind(0x4000 + i as u16, *p),
            Err(403),
            "ChannelBind to {p}"
        );
    }

    let mut c6 = client(&server, &cert, Transport::Udp, true);
    let a6 = c6.allocate(&rest("policy6"), &opts(true));
    assert!(a6.relayed.is_ipv6());
    let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
    assert_eq!(
        c6.create_permission(&[lo6]),
        Err(403),
        "CreatePermission to {lo6}"
    );
    assert_eq!(
        c6.channel_bind(0x4000, lo6),
        Err(403),
        "ChannelBind to {lo6}"
    );

    // Send indications to a real loopback peer, in every encoding, are
    // dropped: the peer's first datagram is the answer to its own probe.
    let peer = Peer::new(false);
    let port = peer.addr().port();
    for to in [
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), port),
        SocketAddr::new("::127.0.0.1".parse().unwrap(), port),
    ] {
        c.send_indication(to, b"must not be relayed");
    }
    let server_addr = server.addr(Transport::Udp, false);
    let (first, from) = first_at_peer_after_probe(&mut c, &peer, server_addr);
    assert_eq!(
        from, server_addr,
        "first datagram at the peer: {first:02x?}"
    );
    assert!(
        is_binding_response(&first),
        "the peer's first datagram is its probe's answer, not relayed data: {first:02x?}"
    );
    println!(
        "{} peers refused on IPv4, ::1 on IPv6, Send indications to 127.0.0.1 dropped",
        refused.len()
    );
}

// --- allocation end -------------------------------------------------------

/// Closing the connection of a TCP/TLS allocation ends it (RFC 8656
/// §3.1): the log says why and the relay port is closed.
fn close_ends_allocation(transport: Transport, ports: &str) {
    let (server, cert) = relay_server(ports);
    let mut c = client(&server, &cert, transport, false);
    let a = c.allocate(&rest("closer"), &opts(false));
    let peer = Peer::new(false);
    c.create_permission(&[peer.addr()]).expect("permission");
    // The relay is live: the peer's datagram reaches the client.
    peer.send_to(b"while open", a.relayed);
    assert_eq!(c.recv_data(), (peer.addr(), b"while open".to_vec()));
    c.close();
    let line = server.wait_for_line(
        &[
            "allocation ended",
            &format!("relay={}", a.relayed),
            "connection_closed",
        ],
        LOG_TIMEOUT,
    );
    println!("{transport}: {line}");
    wait_port_closed(a.relayed, LOG_TIMEOUT);
}

#[test]
fn closing_tcp_connection_ends_allocation() {
    close_ends_allocation(Transport::Tcp, "44400-44449");
}

#[test]
fn closing_tls_connection_ends_allocation() {
    close_ends_allocation(Transport::Tls, "44450-44499");
}

#[test]
fn refresh_zero_deletes_then_437() {
    let (server, cert) = relay_server("44500-44549");
    let mut c = client(&server, &cert, Transport::Udp, false);
    let a = c.allocate(&rest("refresher"), &opts(false));
    assert_eq!(
        c.refresh(Some(1200)),
        Ok(1200),
        "a plain Refresh is granted"
    );
    assert_eq!(c.refresh(Some(0)), Ok(0), "Refresh with LIFETIME 0 deletes");
    let line = server.wait_for_line(
        &[
            "allocation ended",
            &format!("relay={}", a.relayed),
            "deleted",
        ],
        LOG_TIMEOUT,
    );
    println!("{line}");
    assert_eq!(
        c.refresh(None),
        Err(437),
        "a Refresh after the delete finds no allocation"
    );
    wait_port_closed(a.relayed, LOG_TIMEOUT);
}

#[test]
fn allocate_retransmission_and_second_allocate() {
    let (server, cert) = relay_server("44550-44599");
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = client(&server, &cert, transport, false);
        let a = c.allocate(&rest("retransmit"), &opts(false));
        // The exact request again: the exact response again, and no
        // second allocation.
        let again = c.transact(&a.request);
        assert_eq!(
            again, a.response,
            "{transport}: a retransmitted Allocate gets the byte-identical response"
        );
        // A new Allocate (new transaction) on the same five-tuple: 437.
        let mut req = Vec::new();
        turnpike_proto::client::allocate(&mut req, new_tid(), &opts(false), c.session.as_ref());
        let resp = c.transact(&req);
        let msg = Message::parse(&resp).unwrap();
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::ALLOCATE, Class::Error)
        );
        assert_eq!(
            error_code(&msg),
            Some(437),
            "{transport}: a second Allocate on the five-tuple"
        );
        assert!(
            c.session.as_ref().unwrap().verify(&msg),
            "the 437 is signed"
        );
        // The first allocation is untouched.
        assert_eq!(c.refresh(Some(600)), Ok(600));
    }
}

// --- authentication ----------------------------------------------------------

#[test]
fn credentials_wrong_expired_and_rotated() {
    let (server, cert) = relay_server("44600-44699");
    let attempt = |creds: &Credentials| {
        let mut c = client(&server, &cert, Transport::Udp, false);
        c.try_allocate(creds, &opts(false))
            .map(|a| a.relayed)
            .map_err(|e| e.code)
    };
    assert_eq!(
        attempt(&Credentials::new("alice", "not-wonderland")),
        Err(401),
        "static user, wrong password"
    );
    assert!(
        attempt(&Credentials::new("alice", "wonderland")).is_ok(),
        "static user"
    );
    let wrong_secret = Credentials::rest("not-a-configured-secret", "bob", unix_now() + 3600);
    assert_eq!(
        attempt(&wrong_secret),
        Err(401),
        "REST password from an unknown secret"
    );
    let expired = Credentials::rest(SECRET, "bob", unix_now() - 60);
    assert_eq!(attempt(&expired), Err(401), "REST username past its expiry");
    let first = Credentials::rest(SECRET, "bob", unix_now() + 3600);
    assert!(attempt(&first).is_ok(), "REST from the first secret");
    let second = Credentials::rest(SECRET2, "carol", unix_now() + 3600);
    assert!(
        attempt(&second).is_ok(),
        "REST from the second secret (rotation)"
    );
}

// --- a fresh relay socket relays at once --------------------------------------

/// Allocate, CreatePermission and a Send indication sent back to back
/// (one write on TCP, so the server handles all three frames in one go;
/// three datagrams in a row on UDP): the very first datagram the new
/// relay socket sends must reach the peer. The server used to drop it:
/// tokio's `try_send_to` refuses (WouldBlock) until the runtime has
/// polled the new socket's first writable event.
fn first_datagram_of_new_relay(transport: Transport, ports: &str) {
    let (server, cert) = relay_server(ports);
    let peer = Peer::new(false);
    for round in 0..5u8 {
        let mut c = client(&server, &cert, transport, false);
        c.challenge(&rest("eager"));
        let alloc = c.allocate_request(&opts(false));
        let perm = c.create_permission_request(&[peer.addr()]);
        let data = [b'f', b'i', b'r', b's', b't', round];
        let send = common::turn::send_indication_bytes(peer.addr(), &data);
        match transport {
            Transport::Udp => {
                c.send_raw(&alloc);
                c.send_raw(&perm);
                c.send_raw(&send);
            }
            _ => c.send_raw(&[alloc.as_slice(), &perm, &send].concat()),
        }
        let tid = |b: &[u8]| Message::parse(b).unwrap().transaction_id();
        let resp = c.await_response(tid(&alloc));
        let a = c
            .allocate_response(&alloc, resp)
            .unwrap_or_else(|e| panic!("pipelined Allocate failed: {}", e.code));
        let perm_resp = c.await_response(tid(&perm));
        assert_eq!(
            Message::parse(&perm_resp).unwrap().class(),
            Class::Success,
            "pipelined CreatePermission"
        );
        // Anything the server relayed is at the peer before the answer to
        // the peer's own probe.
        let (first, from) =
            first_at_peer_after_probe(&mut c, &peer, server.addr(Transport::Udp, false));
        assert_eq!(
            (first.as_slice(), from),
            (&data[..], a.relayed),
            "{transport} round {round}: the first datagram of a new relay socket reaches the peer"
        );
        let (answer, _) = peer.recv();
        assert!(is_binding_response(&answer));
    }
}

#[test]
fn first_datagram_of_new_relay_tcp() {
    first_datagram_of_new_relay(Transport::Tcp, "44700-44749");
}

#[test]
fn first_datagram_of_new_relay_udp() {
    first_datagram_of_new_relay(Transport::Udp, "44750-44799");
}

// --- a datagram too big for a Data indication -------------------------------

/// An IPv6 peer can send a UDP datagram of up to 65527 bytes; as a Data
/// indication (20-byte XOR-PEER-ADDRESS) that is more than a STUN
/// message's 16-bit length can say. Over TCP it must not become a frame
/// whose length field lies (the stream would be out of step for good):
/// the datagram is dropped and the next one arrives intact.
#[test]
fn peer_datagram_too_big_for_a_data_indication() {
    let (server, cert) = relay_server("44800-44849");
    let mut c = client(&server, &cert, Transport::Tcp, false);
    let a = c.allocate(&rest("big"), &opts(true));
    assert!(a.relayed.is_ipv6());
    let peer = Peer::new(true);
    c.create_permission(&[peer.addr()]).expect("permission");
    // The largest that still fits: 65532 - 4 - 20 - 4 = 65504 bytes.
    for n in [65504, 65505, 65527] {
        peer.send_to(&payload(n, 7), a.relayed);
        peer.send_to(b"after", a.relayed);
        match c.recv_data() {
            (p, d) if d.len() == n => {
                assert_eq!((p, d), (peer.addr(), payload(n, 7)), "{n} bytes");
                assert_eq!(c.recv_data(), (peer.addr(), b"after".to_vec()));
                println!("{n} bytes relayed as a Data indication");
            }
            (p, d) => {
                assert!(
                    n > 65504,
                    "{n} bytes fit a Data indication but were dropped"
                );
                assert_eq!(
                    (p, d),
                    (peer.addr(), b"after".to_vec()),
                    "after a {n}-byte datagram"
                );
                println!("{n} bytes dropped; the next datagram arrived intact");
            }
        }
    }
}

/// A server on UDP and TCP with `threads` shards, relay ports `ports` on
/// 127.0.0.1 and 127.0.0.1 allowed as a peer (its own relays), plus `extra`.
fn relay_to_relay_config(threads: usize, ports: &str, extra: &str) -> String {
    format!(
        r#"
[server]
realm = "{REALM}"
threads = {threads}
[[listen]]
transport = "udp"
addr = "127.0.0.1:0"
[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"
[relay]
bind_ip = "127.0.0.1"
ports = "{ports}"
[auth]
secrets = ["{SECRET}"]
[policy]
allow_peers = ["127.0.0.1/32"]
{extra}"#
    )
}

/// Two clients of one shard relaying to each other (each one's peer is
/// the other's relayed address): the server hands the data from one relay
/// to the other without the kernel, and what the clients see is exactly
/// what a round trip through the relay sockets gives — the sender's
/// relayed address as the peer, Send → Data indication and ChannelData →
/// ChannelData, permission required on the receiving side.
#[test]
fn relay_to_relay_on_one_shard() {
    let server = TestServer::start(&relay_to_relay_config(1, "44900-44999", ""));
    let mut a = TurnClient::udp(server.addr(Transport::Udp, false));
    let mut b = TurnClient::tcp(server.addr(Transport::Tcp, false));
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    let ra = a.allocate(&rest("a"), &AllocateOptions::default()).relayed;
    let rb = b.allocate(&rest("b"), &AllocateOptions::default()).relayed;
    let rc = c.allocate(&rest("c"), &AllocateOptions::default()).relayed;
    a.create_permission(&[rb, rc]).unwrap();
    b.create_permission(&[ra]).unwrap();
    exchange(&mut a, ra, &mut b, rb, 0x4000, 0x4001);
    // C gave A no permission: A's data for C is dropped. C's own probe,
    // sent after, is the first thing C gets back.
    a.send_indication(rc, b"not for you");
    c.create_permission(&[rc]).unwrap();
    let mut probe = TurnClient::udp(server.addr(Transport::Udp, false));
    let rp = probe
        .allocate(&rest("p"), &AllocateOptions::default())
        .relayed;
    c.create_permission(&[rp]).unwrap();
    probe.create_permission(&[rc]).unwrap();
    probe.send_indication(rc, b"probe");
    assert_eq!(c.recv_data(), (rp, b"probe".to_vec()));
    // Everything above between two relays went the local way: 2 Send
    // indications, 2 × 7 ChannelData, A's one for C (dropped by C's missing
    // permission, still handed over) and the probe.
    let m = common::ops::scrape(server.http_addr());
    assert_eq!(m.value("turnpike_relayed_local_total", &[]), 18.0);
}

/// Relay between A and B, each one's peer the other's relayed address
/// (permissions already given): Send → Data indication from the sender's
/// relayed address, both ways, then channels `cha` (A's) and `chb` (B's)
/// both ways with every size in [`SIZES`], ChannelData padded over
/// TCP/TLS. Returns the datagrams relayed: 2 + 2 × SIZES.
fn exchange(
    a: &mut TurnClient,
    ra: SocketAddr,
    b: &mut TurnClient,
    rb: SocketAddr,
    cha: u16,
    chb: u16,
) -> usize {
    // Send indication in, Data indication out, from A's relayed address.
    a.send_indication(rb, b"over the top");
    assert_eq!(b.recv_data(), (ra, b"over the top".to_vec()));
    b.send_indication(ra, b"and back");
    assert_eq!(a.recv_data(), (rb, b"and back".to_vec()));
    // Channels both ways: ChannelData in, ChannelData out (padded on TCP).
    a.channel_bind(cha, rb).unwrap();
    b.channel_bind(chb, ra).unwrap();
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        a.send_channel_data(cha, &payload);
        let (ch, got, wire) = b.recv_channel();
        assert_eq!((ch, &got), (chb, &payload), "size {size}");
        if b.transport() != Transport::Udp {
            assert!(is_padded(size, wire), "TCP ChannelData is padded");
        }
        b.send_channel_data(chb, &payload);
        let (ch, got, wire) = a.recv_channel();
        assert_eq!((ch, &got), (cha, &payload), "size {size}");
        if a.transport() != Transport::Udp {
            assert!(is_padded(size, wire), "TCP ChannelData is padded");
        }
    }
    2 + 2 * SIZES.len()
}

/// Two shards: the kernel spreads UDP clients over them by a hash of their
/// address. Between a client of each shard, once the receiving allocation
/// has had its first relay-to-relay datagram (through the kernel), the
/// sending shard sends straight to the receiving client from its own
/// socket of the listener (the relay directory): the clients see exactly
/// what one shard gives them, the receiver's permission still decides, and
/// the metrics count each such datagram as cross-shard; between two
/// clients of one shard, as local.
#[test]
fn relay_to_relay_across_shards() {
    const KEY: &str = "e2e-admin-key";
    let server = TestServer::start(&relay_to_relay_config(
        2,
        "44850-44899",
        &format!("[http]\naddr = \"127.0.0.1:0\"\nadmin_keys = [\"{KEY}\"]\n"),
    ));
    let h = server.http_addr();
    // Allocate until one shard has a client and the other two; each new
    // client lands on either.
    // The shard of a client's allocation: the admin API's id carries it.
    let shard_of = |c: &TurnClient| -> usize {
        let sessions = common::ops::get_auth(h, "/api/v1/sessions", KEY).json();
        let me = c.local_addr().to_string();
        let id: u64 = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client"] == me.as_str())
            .expect("own session listed")["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        (id >> 48) as usize
    };
    let mut on: [Vec<(TurnClient, SocketAddr)>; 2] = [Vec::new(), Vec::new()];
    for i in 0..40 {
        let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
        let r = c
            .allocate(&rest(&format!("u{i}")), &AllocateOptions::default())
            .relayed;
        let shard = shard_of(&c);
        on[shard].push((c, r));
        if on.iter().all(|v| !v.is_empty()) && on.iter().any(|v| v.len() >= 3) {
            break;
        }
    }
    assert!(
        on.iter().all(|v| !v.is_empty()) && on.iter().any(|v| v.len() >= 3),
        "40 clients did not spread over both shards: {} and {}",
        on[0].len(),
        on[1].len()
    );
    let big = usize::from(on[1].len() >= 3);
    let (mut a, ra) = on[big].pop().unwrap();
    let (mut c, rc) = on[big].pop().unwrap();
    let (mut b, rb) = on[1 - big].pop().unwrap();
    // Across: A's data reaches B only once B permits A.
    a.create_permission(&[rb]).unwrap();
    a.send_indication(rb, b"before B permits A");
    let no_permission = || {
        common::ops::scrape(h).value_or_zero(
            "turnpike_dropped_packets_total",
            &[("reason", "no_permission")],
        )
    };
    common::ops::wait_until("the refused datagram counted", LOG_TIMEOUT, || {
        (no_permission() == 1.0).then_some(())
    });
    b.create_permission(&[ra]).unwrap();
    let across = exchange(&mut a, ra, &mut b, rb, 0x4000, 0x4001);
    // Within one shard: A and C.
    a.create_permission(&[rc]).unwrap();
    c.create_permission(&[ra]).unwrap();
    let within = exchange(&mut a, ra, &mut c, rc, 0x4002, 0x4003);
    // A TCP client D on the other shard than B: what D sends B goes
    // straight to B from D's connection task; what B sends D goes through
    // the kernel (a stream client is reachable only through its own
    // shard).
    let (mut d, rd) = (0..40)
        .find_map(|i| {
            let mut d = TurnClient::tcp(server.addr(Transport::Tcp, false));
            let r = d
                .allocate(&rest(&format!("d{i}")), &AllocateOptions::default())
                .relayed;
            (shard_of(&d) == big).then_some((d, r))
        })
        .expect("a TCP client on the other shard than B");
    d.create_permission(&[rb]).unwrap();
    b.create_permission(&[rd]).unwrap();
    let from_d = exchange(&mut d, rd, &mut b, rb, 0x4004, 0x4005) / 2;
    let m = common::ops::scrape(h);
    assert_eq!(
        m.value("turnpike_relayed_cross_shard_total", &[]),
        (across - 2 + from_d) as f64,
        "every datagram between A and B but the first each way (through the \
         kernel: each one's first relay-to-relay datagram gets it published), \
         and every one from D to B"
    );
    assert_eq!(m.value("turnpike_relayed_local_total", &[]), within as f64);
    assert_eq!(no_permission(), 1.0);
}
