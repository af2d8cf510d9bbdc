//! Issue 14, revocation on one node, against the built binary over
//! loopback: `POST/GET/DELETE /api/v1/revocations` (JSON and query forms,
//! admin key only, bad input), and end to end: revoking a user ends its
//! live allocation (its Refresh gets 401, its relay socket is closed) while
//! another user's allocation keeps relaying with no loss.
//!
//! Relay ports 48800-48999.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use common::ops::*;
use common::*;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

const SECRET: &str = "revocation-test-secret";
const API_KEY: &str = "api-key-0123456789";
const ADMIN_KEY: &str = "admin-key-9876543210";

fn config(http: &str) -> String {
    format!(
        r#"
[server]
realm = "revocation.test"

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[relay]
bind_ip = "127.0.0.1"
ports = "48800-48999"

[auth]
secrets = ["{SECRET}"]
users = {{ carol = "static-password" }}

[policy]
allow_peers = ["127.0.0.1/32"]

[http]
addr = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
{http}
"#
    )
}

fn admin_server() -> TestServer {
    TestServer::start(&config(&format!("admin_keys = [\"{ADMIN_KEY}\"]")))
}

fn mint(server: &TestServer, user: &str) -> Minted {
    let r = get_auth(
        server.http_addr(),
        &format!("/api/v1/credentials?username={user}"),
        API_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    Minted::parse(&r.json())
}

fn post_json(server: &TestServer, key: &str, body: &str) -> HttpResponse {
    http(
        server.http_addr(),
        "POST",
        "/api/v1/revocations",
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn assert_bad_param(r: &HttpResponse, parameter: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "bad_request", "{j}");
    assert_eq!(j["parameter"], parameter, "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
}

#[test]
fn revocations_are_posted_listed_and_lifted() {
    let server = admin_server();
    let h = server.http_addr();
    let now = unix_now();
    // JSON body, a bare user, no until: 201 with the stored revocation.
    let r = post_json(&server, ADMIN_KEY, r#"{"username": "alice"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    assert_eq!(j["username"], "alice");
    assert!(j["until"].is_null(), "{j}");
    let created = j["created"].as_u64().unwrap();
    assert!(created >= now && created <= unix_now(), "{j}");
    // Query form, a full REST username: it lapses at the credential's
    // expiry at the latest.
    let full = format!("{}:bob", now + 3600);
    let r = post_auth(
        h,
        &format!("/api/v1/revocations?username={full}&until={}", now + 7200),
        ADMIN_KEY,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["until"], now + 3600);
    // The same name again replaces it: 200, the new until.
    let r = post_json(
        &server,
        ADMIN_KEY,
        &format!(r#"{{"username": "alice", "until": {}}}"#, now + 600),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["until"], now + 600);
    assert_eq!(r.json()["created"], created, "replacing keeps created");

    let r = get_auth(h, "/api/v1/revocations", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"revocations": [
            {"username": full, "until": now + 3600, "created": r.json()["revocations"][0]["created"]},
            {"username": "alice", "until": now + 600, "created": created},
        ]})
    );
    assert_eq!(scrape(h).value("turnpike_revocations", &[]), 2.0);
    // A reload keeps them (they live in the process, not the file).
    let r = post_auth(h, "/api/v1/reload", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_auth(h, "/api/v1/revocations", ADMIN_KEY);
    assert_eq!(
        r.json()["revocations"].as_array().unwrap().len(),
        2,
        "{}",
        r.text()
    );

    // DELETE lifts one (a full name with its colon too); 404 once gone.
    let r = delete_auth(h, "/api/v1/revocations/alice", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["lifted"], "alice");
    let r = delete_auth(h, "/api/v1/revocations/alice", ADMIN_KEY);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found");
    let r = delete_auth(h, &format!("/api/v1/revocations/{full}"), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_auth(h, "/api/v1/revocations", ADMIN_KEY);
    assert_eq!(r.json(), serde_json::json!({"revocations": []}));
    assert_eq!(scrape(h).value("turnpike_revocations", &[]), 0.0);
}

#[test]
fn bad_revocations_are_refused_with_400() {
    let server = admin_server();
    let h = server.http_addr();
    let now = unix_now();
    assert_bad_param(&post_auth(h, "/api/v1/revocations", ADMIN_KEY), "username");
    assert_bad_param(
        &post_auth(h, "/api/v1/revocations?username=x&until=soon", ADMIN_KEY),
        "until",
    );
    assert_bad_param(&post_json(&server, ADMIN_KEY, "{not json"), "body");
    let both = http(
        h,
        "POST",
        "/api/v1/revocations?username=a",
        &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        br#"{"username": "b"}"#,
    );
    assert_bad_param(&both, "body");
    assert_bad_param(
        &post_json(&server, ADMIN_KEY, r#"{"username": "a", "extra": 1}"#),
        "body",
    );
    assert_bad_param(
        &post_json(&server, ADMIN_KEY, r#"{"username": "a", "until": -5}"#),
        "body",
    );
    assert_bad_param(
        &post_json(&server, ADMIN_KEY, r#"{"username": ""}"#),
        "username",
    );
    assert_bad_param(
        &post_json(&server, ADMIN_KEY, r#"{"username": "al\u0001ice"}"#),
        "username",
    );
    let long = "a".repeat(509);
    assert_bad_param(
        &post_json(&server, ADMIN_KEY, &format!(r#"{{"username": "{long}"}}"#)),
        "username",
    );
    // An until in the past, and a REST credential already expired.
    assert_bad_param(
        &post_json(
            &server,
            ADMIN_KEY,
            &format!(r#"{{"username": "a", "until": {}}}"#, now - 1),
        ),
        "until",
    );
    assert_bad_param(
        &post_json(
            &server,
            ADMIN_KEY,
            &format!(r#"{{"username": "{}:a"}}"#, now - 1),
        ),
        "username",
    );
    let r = get_auth(h, "/api/v1/revocations", ADMIN_KEY);
    assert_eq!(
        r.json(),
        serde_json::json!({"revocations": []}),
        "nothing stored"
    );
}

#[test]
fn revocation_routes_take_only_the_admin_key() {
    let server = admin_server();
    let h = server.http_addr();
    for r in [
        post_json(&server, API_KEY, r#"{"username": "alice"}"#),
        post_json(&server, "wrong", r#"{"username": "alice"}"#),
        get_auth(h, "/api/v1/revocations", API_KEY),
        delete_auth(h, "/api/v1/revocations/alice", API_KEY),
        get(h, &format!("/api/v1/revocations?key={ADMIN_KEY}")),
    ] {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"], "unauthorized");
    }
    let r = get_auth(h, "/api/v1/revocations", ADMIN_KEY);
    assert_eq!(r.json(), serde_json::json!({"revocations": []}));
    // Without admin keys the routes are off.
    let plain = TestServer::start(&config(""));
    let r = post_json(&plain, API_KEY, r#"{"username": "alice"}"#);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "admin_disabled");
}

/// A peer socket connected to `relayed`: after one datagram, whether the
/// relay answered with "port unreachable" (the relay socket is closed).
fn relay_socket_closed(relayed: std::net::SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(relayed).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.send(b"anyone there?");
    let mut buf = [0u8; 64];
    matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn revoking_a_user_ends_its_allocation_while_another_keeps_relaying() {
    let server = admin_server();
    let h = server.http_addr();
    let udp = server.addr(Transport::Udp, false);
    let victim = mint(&server, "victim");
    let bystander = mint(&server, "bystander");

    let mut c1 = TurnClient::udp(udp);
    let relayed = c1.allocate(victim.credentials()).expect("victim allocates");
    let p1 = udp_peer();
    let p1_addr = p1.local_addr().unwrap();
    assert_eq!(c1.create_permission(&[p1_addr]), 200);
    assert_eq!(c1.channel_bind(0x4000, p1_addr), 200);
    relay_both_ways(&mut c1, 0x4000, &p1, "victim before");

    let mut c2 = TurnClient::udp(udp);
    c2.allocate(bystander.credentials())
        .expect("bystander allocates");
    let p2 = udp_peer();
    let p2_addr = p2.local_addr().unwrap();
    assert_eq!(c2.create_permission(&[p2_addr]), 200);
    assert_eq!(c2.channel_bind(0x4001, p2_addr), 200);
    relay_both_ways(&mut c2, 0x4001, &p2, "bystander before");

    // The bystander relays both ways, round after round, the whole time;
    // each round asserts that both datagrams arrive intact.
    let stop = Arc::new(AtomicBool::new(false));
    let bystander_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 20 {
                relay_both_ways(&mut c2, 0x4001, &p2, &format!("round {rounds}"));
                rounds += 1;
            }
            (rounds, c2)
        })
    };

    let started = Instant::now();
    let r = post_json(&server, ADMIN_KEY, r#"{"username": "victim"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    // The POST answers once every shard applied it; the allocation is gone.
    wait_until("the victim's allocation to end", POLL_LIMIT, || {
        let s = get_auth(h, "/api/v1/sessions", ADMIN_KEY).json()["sessions"].clone();
        let users: Vec<_> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["user"].as_str().unwrap().to_string())
            .collect();
        (!users.contains(&victim.username)).then_some(())
    });
    eprintln!("revocation applied in {:?}", started.elapsed());
    assert!(relay_socket_closed(relayed), "the relay socket is closed");
    assert_eq!(c1.refresh(Some(600)), 401, "the next Refresh gets 401");
    // A fresh credential of the same user is refused too.
    let again = mint(&server, "victim");
    assert_eq!(TurnClient::udp(udp).allocate(again.credentials()), Err(401));

    stop.store(true, Ordering::Relaxed);
    let (rounds, mut c2) = bystander_thread
        .join()
        .expect("bystander relayed every round");
    assert!(rounds >= 20);
    assert_eq!(c2.refresh(Some(600)), 200, "the bystander is untouched");
    let m = scrape(h);
    assert_eq!(
        m.value(
            "turnpike_allocations_deleted_total",
            &[("reason", "revoked")]
        ),
        1.0
    );
    assert_eq!(m.value("turnpike_revocations", &[]), 1.0);
    server.wait_for_line(&["credential revoked", "victim"], IO_TIMEOUT);
    server.wait_for_line(&["allocation ended", "victim", "revoked"], IO_TIMEOUT);

    // Lifted: the user may allocate again.
    let r = delete_auth(h, "/api/v1/revocations/victim", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(TurnClient::udp(udp).allocate(again.credentials()).is_ok());
}
