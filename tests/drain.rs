//! Draining the built binary (SIGTERM and `POST /api/v1/drain`): ready
//! goes 503, new allocations are turned away (486, or 300 with
//! ALTERNATE-SERVER), live ones keep relaying, and the process exits when
//! the last one ends, at the drain deadline, or at a second SIGTERM: with
//! status 0 when a signal asked for it and no deadline cut it, else 75.
//! Every wait is bounded; nothing is timed.
//!
//! Relay ports 46500-46999.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::time::Duration;

use common::ops::*;
use common::*;
use turnpike_proto::client::{AllocateOptions, Credentials};
use turnpike_proto::wire::Message;

const SECRET: &str = "drain-secret";
const KEY: &str = "drain-admin-key";
/// The exit status of a drain asked for over the API, or ended by its
/// deadline (systemd's Restart=on-failure restarts it).
const EXIT_DRAIN_RESTART: i32 = 75;
/// Bound on waiting for the process to exit on its own.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

fn config(http: &str) -> String {
    format!(
        r#"
[server]
realm = "drain.test"

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"

[relay]
bind_ip = "127.0.0.1"
ports = "46500-46999"

[auth]
secrets = ["{SECRET}"]

[policy]
allow_peers = ["127.0.0.1/32"]

[http]
addr = "127.0.0.1:0"
admin_keys = ["{KEY}"]
{http}
"#
    )
}

fn creds(user: &str) -> Credentials {
    Credentials::rest(SECRET, user, unix_now() + 3600)
}

/// A UDP client with an allocation and a channel to `peer`, relaying.
fn live_client(server: &TestServer, peer: &std::net::UdpSocket) -> TurnClient {
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    c.allocate(creds("live"))
        .expect("allocate before the drain");
    assert_eq!(c.channel_bind(0x4000, peer.local_addr().unwrap()), 200);
    relay_both_ways(&mut c, 0x4000, peer, "before the drain");
    c
}

/// Wait until /readyz says 503 draining.
fn wait_draining(server: &TestServer) {
    let h = server.http_addr();
    wait_until("/readyz to answer 503", POLL_LIMIT, || {
        let r = get(h, "/readyz");
        (r.status == 503).then_some(r)
    });
    let r = get(h, "/readyz");
    assert_eq!(r.json()["status"], "draining");
    assert_eq!(get(h, "/healthz").status, 200, "alive while draining");
    assert_eq!(scrape(h).value("turnpike_draining", &[]), 1.0);
}

/// Draining (waited for), and still serving: STUN, and relaying and
/// refreshing for the live client.
fn check_draining(server: &mut TestServer, live: &mut TurnClient, peer: &std::net::UdpSocket) {
    wait_draining(server);
    let mut fresh = TurnClient::udp(server.addr(Transport::Udp, false));
    assert_eq!(fresh.binding(), fresh.local_addr(), "STUN still answers");
    relay_both_ways(live, 0x4000, peer, "while draining");
    assert_eq!(live.refresh(Some(600)), 200, "live allocations refresh");
    relay_both_ways(live, 0x4000, peer, "after the refresh");
    server.assert_running();
}

#[test]
fn sigterm_refuses_new_allocations_with_486_and_exits_when_the_last_ends() {
    let mut server = TestServer::start(&config(""));
    let peer = udp_peer();
    let mut live = live_client(&server, &peer);
    send_signal(&server, libc::SIGTERM);
    check_draining(&mut server, &mut live, &peer);
    let mut late = TurnClient::udp(server.addr(Transport::Udp, false));
    assert_eq!(late.allocate(creds("late")), Err(486));
    let m = scrape(server.http_addr());
    assert_eq!(
        m.value(
            "turnpike_requests_total",
            &[("method", "allocate"), ("code", "486")]
        ),
        1.0
    );
    server.assert_running();
    // The last allocation ends: the process exits by itself.
    assert_eq!(live.refresh(Some(0)), 200);
    let status = server.wait_exit(EXIT_LIMIT);
    assert!(status.success(), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("draining"), "{err}");
    assert!(err.contains("reason=\"drained\""), "{err}");
    assert!(!err.contains("drain deadline"), "{err}");
}

#[test]
fn sigterm_with_alternate_servers_answers_300_try_alternate() {
    let mut server = TestServer::start(&config("alternate_servers = [\"127.0.0.1:3479\"]"));
    // The live allocation is over TCP this time: closing the connection
    // ends it.
    let peer = udp_peer();
    let mut live = TurnClient::tcp(server.addr(Transport::Tcp, false));
    live.allocate(creds("tcp-live")).unwrap();
    assert_eq!(live.channel_bind(0x4000, peer.local_addr().unwrap()), 200);
    send_signal(&server, libc::SIGTERM);
    wait_draining(&server);
    relay_both_ways(&mut live, 0x4000, &peer, "while draining");

    let mut late = TurnClient::udp(server.addr(Transport::Udp, false));
    let session = late.challenge(creds("late"));
    let resp = late.allocate_signed(&session, &AllocateOptions::default());
    let m = Message::parse(&resp).unwrap();
    assert_eq!(code_of(&resp), 300, "Try Alternate");
    assert_eq!(
        m.alternate_server().unwrap(),
        Some("127.0.0.1:3479".parse().unwrap())
    );
    assert!(session.verify(&m), "the 300 is signed");
    server.assert_running();

    drop(live);
    let status = server.wait_exit(EXIT_LIMIT);
    assert!(status.success(), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("reason=\"drained\""), "{err}");
    assert!(err.contains("reason=\"connection_closed\""), "{err}");
}

#[test]
fn second_sigterm_exits_at_once_with_an_allocation_live() {
    let mut server = TestServer::start(&config(""));
    let peer = udp_peer();
    let mut live = live_client(&server, &peer);
    send_signal(&server, libc::SIGTERM);
    check_draining(&mut server, &mut live, &peer);
    // stop() sends the second SIGTERM and waits (bounded) for the exit.
    let status = server.stop(Signal::Term);
    assert!(status.success(), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("reason=\"second SIGTERM\""), "{err}");
    assert!(
        err.contains("allocation ended") && err.contains("reason=\"shutdown\""),
        "the live allocation is ended and logged: {err}"
    );
}

#[test]
fn api_drain_drains_too() {
    let mut server = TestServer::start(&config(""));
    let h = server.http_addr();
    let peer = udp_peer();
    let mut live = live_client(&server, &peer);
    assert_eq!(post_auth(h, "/api/v1/drain", "wrong-key-123").status, 401);
    assert_eq!(
        get(h, "/readyz").status,
        200,
        "a refused drain does nothing"
    );
    let r = post_auth(h, "/api/v1/drain", KEY);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["draining"], true);
    assert_eq!(r.json()["allocations"], 1);
    check_draining(&mut server, &mut live, &peer);
    // Asking again changes nothing.
    assert_eq!(post_auth(h, "/api/v1/drain", KEY).status, 202);
    let mut late = TurnClient::udp(server.addr(Transport::Udp, false));
    assert_eq!(late.allocate(creds("late")), Err(486));
    server.assert_running();
    assert_eq!(live.refresh(Some(0)), 200);
    let status = server.wait_exit(EXIT_LIMIT);
    // Issue 12: a drain no SIGTERM asked for exits non-zero (it used to
    // exit 0), so that Restart=on-failure starts the server again.
    assert_eq!(status.code(), Some(EXIT_DRAIN_RESTART), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("by=\"API\""), "{err}");
    assert!(err.contains("reason=\"drained\""), "{err}");
}

#[test]
fn drain_deadline_ends_the_process_with_an_allocation_live() {
    let mut server = TestServer::start(&config("drain_deadline = \"2s\""));
    let peer = udp_peer();
    let mut live = live_client(&server, &peer);
    send_signal(&server, libc::SIGTERM);
    check_draining(&mut server, &mut live, &peer);
    // Nobody ends the allocation; the deadline does, and says so in the
    // exit status (issue 12: it used to exit 0).
    let status = server.wait_exit(EXIT_LIMIT);
    assert_eq!(status.code(), Some(EXIT_DRAIN_RESTART), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("drain deadline passed"), "{err}");
    assert!(err.contains("reason=\"drain deadline\""), "{err}");
    assert!(err.contains("reason=\"shutdown\""), "{err}");
}

#[test]
fn sigterm_with_no_allocations_exits_at_once() {
    let mut server = TestServer::start(&config(""));
    let status = server.stop(Signal::Term);
    assert!(status.success(), "{status}");
    assert!(server.stderr_text().contains("reason=\"drained\""));
}

#[test]
fn reload_while_draining_keeps_draining_and_applies_alternates() {
    let mut server = TestServer::start(&config(""));
    let h = server.http_addr();
    let peer = udp_peer();
    let mut live = live_client(&server, &peer);
    send_signal(&server, libc::SIGTERM);
    wait_draining(&server);
    let udp = server.addr(Transport::Udp, false);
    assert_eq!(TurnClient::udp(udp).allocate(creds("late")), Err(486));
    // A reload that adds an alternate server: still draining, and new
    // Allocates are now sent there.
    std::fs::write(
        server.config_path(),
        config("alternate_servers = [\"127.0.0.1:3479\"]"),
    )
    .unwrap();
    let r = post_auth(h, "/api/v1/reload", KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(h, "/readyz").status, 503, "still draining");
    let mut late = TurnClient::udp(udp);
    let s = late.challenge(creds("later"));
    let resp = late.allocate_signed(&s, &AllocateOptions::default());
    assert_eq!(code_of(&resp), 300);
    assert_eq!(
        Message::parse(&resp).unwrap().alternate_server().unwrap(),
        Some("127.0.0.1:3479".parse().unwrap())
    );
    relay_both_ways(&mut live, 0x4000, &peer, "after the reload");
    // The admin deleting the last allocation ends the drain too.
    let sessions = get_auth(h, "/api/v1/sessions", KEY).json();
    let id = sessions["sessions"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        delete_auth(h, &format!("/api/v1/sessions/{id}"), KEY).status,
        200
    );
    let status = server.wait_exit(EXIT_LIMIT);
    assert!(status.success(), "{status}");
    let err = server.stderr_text();
    assert!(err.contains("reason=\"drained\""), "{err}");
    assert!(err.contains("reason=\"admin\""), "{err}");
}
