//! Issue 12 item 4, in the core on a manual clock: a REST credential's
//! expiry holds for every request on an existing allocation and caps every
//! lifetime granted; a reload that removes a static user or the last secret
//! that verifies a REST username ends the allocations made with it.

use super::*;

/// Refresh, CreatePermission and ChannelBind on `ft`'s allocation: their
/// codes. Once the allocation is gone with its credential, each
/// authenticates from scratch and gets 401 (authentication comes before the
/// allocation lookup, RFC 8656 §4).
fn three_requests(h: &mut H, ft: &FiveTuple, s: &Session) -> [u16; 3] {
    [
        h.refresh(ft, s, Some(600)).0,
        h.create_permission(ft, s, &["198.51.100.1:1"]),
        h.channel_bind(ft, s, 0x4000, "198.51.100.1:1"),
    ]
}

/// Allocate with the 401 dance; the request bytes (for a retransmission)
/// and the LIFETIME granted.
fn allocate_raw(
    h: &mut H,
    ft: &FiveTuple,
    creds: Credentials,
    lifetime: u32,
) -> (Session, Vec<u8>, u32) {
    let s = h.challenge(ft, creds, SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    let o = AllocateOptions {
        lifetime: Some(lifetime),
        ..Default::default()
    };
    client::allocate(&mut req, tid, &o, Some(&s));
    let resp = h.send(ft, &req).expect("response");
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success, "{:?}", m.error_code());
    (s, req, m.lifetime().unwrap().unwrap())
}

fn expires_in(h: &H) -> Duration {
    let s = h.server.sessions(h.now);
    assert_eq!(s.len(), 1);
    s[0].expires_in
}

#[test]
fn granted_lifetime_never_runs_past_the_rest_expiry() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let exp = h.now.unix + 100;
    let (s, _, life) = allocate_raw(&mut h, &ft, rest("carol", exp), 3600);
    assert_eq!(life, 100, "Allocate: clamped to the expiry");
    assert_eq!(expires_in(&h), Duration::from_secs(100));
    h.advance(Duration::from_secs(40));
    assert_eq!(
        h.refresh(&ft, &s, Some(3600)),
        (200, Some(60)),
        "Refresh too"
    );
    assert_eq!(expires_in(&h), Duration::from_secs(60));
    // A static user gets what RFC 8656 §7.2 gives.
    let ft2 = udp("198.51.100.7:40001");
    let (_, _, life) = allocate_raw(&mut h, &ft2, alice(), 3600);
    assert_eq!(life, 3600);
    // At the expiry the allocation ends by its own timer.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.counters.ended_count(EndReason::Expired), 1);
    assert_eq!(h.server.allocation_count(), 1, "alice's stays");
    assert_eq!(three_requests(&mut h, &ft, &s), [401, 401, 401]);
}

#[test]
fn requests_after_the_rest_expiry_get_401_and_extend_nothing() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let exp = h.now.unix + 100;
    let (s, allocate_req, _) = allocate_raw(&mut h, &ft, rest("carol", exp), 3600);
    assert_eq!(three_requests(&mut h, &ft, &s), [200, 200, 200]);
    let before = expires_in(&h);
    // The wall clock reaches the expiry before the allocation's monotonic
    // deadline fires (a stepped clock, or a request racing its timer):
    // every request on the allocation is refused and changes nothing.
    h.now.unix = exp;
    let failures = h
        .counters
        .auth_failure_count(AuthFailureReason::ExpiredUsername);
    assert_eq!(h.refresh(&ft, &s, Some(600)), (401, None));
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.2:1"]), 401);
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "198.51.100.2:1"), 401);
    assert_eq!(expires_in(&h), before, "not extended");
    let sessions = h.server.sessions(h.now);
    assert_eq!(sessions[0].permissions.len(), 1, "no new permission");
    assert_eq!(sessions[0].channels.len(), 1, "no new channel");
    // A retransmitted Allocate is not answered from the replay cache any
    // more: it authenticates again and gets 401 too.
    assert_eq!(h.expect_code(&ft, &allocate_req), 401);
    // Refresh with LIFETIME 0 is refused as well.
    assert_eq!(h.refresh(&ft, &s, Some(0)).0, 401);
    assert_eq!(
        h.counters
            .auth_failure_count(AuthFailureReason::ExpiredUsername),
        failures + 5
    );
    // An hour later (both clocks) it has ended by its clamped lifetime.
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn allocate_retransmission_before_expiry_is_replayed() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let exp = h.now.unix + 100;
    let (_, req, _) = allocate_raw(&mut h, &ft, rest("carol", exp), 3600);
    h.now.unix = exp - 1;
    assert_eq!(h.expect_code(&ft, &req), 200, "the same answer");
}

#[test]
fn a_reload_without_the_secret_ends_its_allocations() {
    let mut h = harness("");
    let mut cfg = base_config("");
    cfg.auth.secrets = vec![SECRET.into(), SECRET2.into()];
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 0);
    let exp = h.now.unix + 3600;
    let (ft1, ft2, ft3) = (
        udp("198.51.100.7:1"),
        udp("198.51.100.7:2"),
        udp("198.51.100.7:3"),
    );
    let (s1, _, r1) = h.allocate(
        &ft1,
        Credentials::rest(SECRET, "u", exp),
        Default::default(),
    );
    let (s2, _, _) = h.allocate(
        &ft2,
        Credentials::rest(SECRET2, "v", exp),
        Default::default(),
    );
    let (s3, _, _) = h.allocate(&ft3, alice(), Default::default());
    // Rotation: only SECRET2 left.
    cfg.auth.secrets = vec![SECRET2.into()];
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 1);
    assert_eq!(h.counters.ended_count(EndReason::Revoked), 1);
    assert!(h.io.closed.contains(&r1), "its relay socket is closed");
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(three_requests(&mut h, &ft1, &s1), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &ft2, &s2), [200, 200, 200]);
    assert_eq!(three_requests(&mut h, &ft3, &s3), [200, 200, 200]);
    // The last secret gone: every REST allocation ends.
    cfg.auth.secrets = vec![];
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 1);
    assert_eq!(three_requests(&mut h, &ft2, &s2), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &ft3, &s3), [200, 200, 200]);
    assert_eq!(h.counters.ended_count(EndReason::Revoked), 2);
}

#[test]
fn a_reload_without_the_static_user_ends_its_allocation() {
    let mut h = harness("");
    let (fa, fb, fr) = (
        udp("198.51.100.7:1"),
        udp("198.51.100.7:2"),
        udp("198.51.100.7:3"),
    );
    let (sa, _, _) = h.allocate(&fa, alice(), Default::default());
    let (sb, _, _) = h.allocate(&fb, Credentials::new("bob", "builder"), Default::default());
    let (sr, _, _) = h.allocate(&fr, rest("carol", h.now.unix + 3600), Default::default());
    let mut cfg = base_config("");
    // The same users: nothing ends.
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 0);
    // alice removed.
    cfg.auth.users.remove("alice");
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 1);
    assert_eq!(three_requests(&mut h, &fa, &sa), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &fb, &sb), [200, 200, 200]);
    assert_eq!(three_requests(&mut h, &fr, &sr), [200, 200, 200]);
    // bob's password changed: his allocation's key no longer verifies.
    cfg.auth.users.insert(
        "bob".into(),
        turnpike::config::UserCredential::Password("new-password".into()),
    );
    let creds = Arc::new(turnpike::io::credentials(&cfg).unwrap());
    assert_eq!(h.server.set_credentials(h.now, creds, &mut h.io), 1);
    assert_eq!(three_requests(&mut h, &fb, &sb), [401, 401, 401]);
    assert_eq!(h.counters.ended_count(EndReason::Revoked), 2);
    assert_eq!(h.server.allocation_count(), 1);
    let mut ended = Vec::new();
    while let Some(e) = h.server.poll_event() {
        if let turnpike_proto::core::Event::AllocationEnded { reason, .. } = e {
            ended.push(reason);
        }
    }
    assert_eq!(ended, vec![EndReason::Revoked, EndReason::Revoked]);
}
