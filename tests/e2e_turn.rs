//! End-to-end: the built `turnpike` binary relays over loopback. A test
//! TURN client (tests/common/turn.rs) allocates over UDP, TCP and TLS
//! (IPv4) and over UDP on [::1] (an IPv6 relay), and a plain UDP socket
//! plays the peer.
//!
//! Relay ports: this file owns 44000-44999; each test takes its own
//! slice of it so parallel tests never compete for a port.

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::turn::{Peer, TurnClient};
use common::*;
use turnpike::client::{AllocateOptions, Credentials};
use turnpike::wire::{Class, Message, Method, attr};

const SECRET: &str = "e2e-first-secret";
const SECRET2: &str = "e2e-second-secret";
const REALM: &str = "e2e.turnpike.test";

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
