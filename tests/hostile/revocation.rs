//! Rows of issue 14 item 1 (revocation on one node): a client whose
//! credential the operator revokes keeps hammering the server (its
//! ChannelData, Refresh and fresh Allocates are dropped or refused and
//! counted, nothing reaches its peer), and hostile bodies on the
//! revocation route are refused without harm. The bystander is served
//! throughout.

use super::*;

/// A POST to the revocation route from the operator with the admin key.
fn post_revocation(f: &Fixture, target: &str, body: &[u8]) -> HttpResponse {
    let tcp = tcp_from(OPERATOR, f.http_addr());
    let auth = bearer(ADMIN_KEY);
    http_exchange(
        tcp,
        &f.http_addr().to_string(),
        "POST",
        target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

/// Nothing is waiting at `s` (called once a later request on the same
/// five-tuple was answered, so the server handled what came before it).
fn nothing_waiting(s: &UdpSocket, what: &str) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!("{what}: {n} bytes from {from}"),
        Err(e) => panic!("{what}: {e}"),
    }
    s.set_nonblocking(false).unwrap();
}

/// A relaying client is revoked (bare user): its allocation ends at once,
/// and everything it sends afterwards is dropped or refused, counted.
pub(super) fn revoked_client_keeps_sending(f: &mut Fixture) {
    let peer = udp_peer();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = TurnClient::udp(f.udp_addr());
    c.allocate(Credentials::rest(SECRET, "mallory", unix_now() + 3600))
        .expect("allocate");
    assert_eq!(c.channel_bind(0x4000, peer_addr), 200);
    relay_both_ways(&mut c, 0x4000, &peer, "before the revocation");

    let r = post_revocation(f, "/api/v1/revocations", br#"{"username": "mallory"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    f.server
        .wait_for_line(&["allocation ended", "mallory", "revoked"], GUARD);
    let before = f.metrics();
    for i in 0..50u8 {
        c.send_channel_data(0x4000, &[i; 100]);
    }
    assert_eq!(c.refresh(Some(600)), 401);
    assert_eq!(c.create_permission(&[peer_addr]), 401);
    // A fresh credential of the same user: refused too.
    let mut again = TurnClient::udp(f.udp_addr());
    assert_eq!(
        again.allocate(Credentials::rest(SECRET, "mallory", unix_now() + 7200)),
        Err(401)
    );
    nothing_waiting(&peer, "the revoked client's data reached its peer");
    let after = f.metrics();
    let d = |m: &Scrape, name: &str, reason: &str| m.value_or_zero(name, &[("reason", reason)]);
    assert_eq!(
        d(&after, "turnpike_dropped_packets_total", "no_allocation")
            - d(&before, "turnpike_dropped_packets_total", "no_allocation"),
        50.0
    );
    assert_eq!(
        d(&after, "turnpike_auth_failures_total", "revoked")
            - d(&before, "turnpike_auth_failures_total", "revoked"),
        3.0
    );
    assert_eq!(
        d(&after, "turnpike_allocations_deleted_total", "revoked"),
        1.0
    );
    f.bystander_served(1, "after the revocation");
}

/// Hostile bodies on `POST /api/v1/revocations`: too large, not UTF-8,
/// nested past any sane depth, a NUL in the name. Each is refused; nothing
/// is stored.
pub(super) fn hostile_revocation_bodies_are_refused(f: &mut Fixture) {
    let big = vec![b'a'; 3 << 20];
    let r = post_revocation(f, "/api/v1/revocations", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    f.bystander_served(1, "after a 3 MiB body");
    let r = post_revocation(f, "/api/v1/revocations", &[0xff, 0xfe, b'{', 0x80]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["parameter"], "body");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = post_revocation(f, "/api/v1/revocations", deep.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["parameter"], "body");
    let r = post_revocation(f, "/api/v1/revocations?username=mal%00lory", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["parameter"], "username");
    let r = f.admin("GET", "/api/v1/revocations");
    assert_eq!(r.json(), serde_json::json!({"revocations": []}));
    assert_eq!(f.metrics().value("turnpike_revocations", &[]), 0.0);
    f.bystander_served(1, "after the hostile bodies");
}
