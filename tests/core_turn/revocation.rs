//! Issue 14, revocation on one node, in the core on a manual clock: the
//! shell pushes a revocation set ([`Revocations`]); the core ends the
//! allocations it revokes at once and answers every later request with the
//! credential 401, as for an expired one, until the revocation lapses.

use super::*;
use turnpike_proto::core::Revocations;

/// Refresh, CreatePermission and ChannelBind on `ft`: their codes. Without
/// an allocation a credential that authenticates gets 437, so a 401 here
/// is the revocation's.
fn three_requests(h: &mut H, ft: &FiveTuple, s: &Session) -> [u16; 3] {
    [
        h.refresh(ft, s, Some(600)).0,
        h.create_permission(ft, s, &["198.51.100.1:1"]),
        h.channel_bind(ft, s, 0x4000, "198.51.100.1:1"),
    ]
}

fn set(h: &mut H, names: &[(&str, Option<u64>)]) -> usize {
    let mut r = Revocations::new();
    for (n, until) in names {
        r.insert(*n, *until);
    }
    h.server.set_revocations(h.now, Arc::new(r), &mut h.io)
}

/// The error code a new Allocate (with its 401 round trip) gets, if any.
fn allocate_refused(h: &mut H, ft: &FiveTuple, creds: Credentials) -> Option<u16> {
    h.allocate_with(ft, creds, Default::default(), SignOptions::default())
        .err()
}

fn revoked_failures(h: &H) -> u64 {
    h.counters.auth_failure_count(AuthFailureReason::Revoked)
}

#[test]
fn a_revoked_full_username_ends_its_allocation_and_gets_401_on_every_request() {
    let mut h = harness("");
    let exp = h.now.unix + 3600;
    let (f1, f2, f3) = (
        udp("198.51.100.7:1"),
        udp("198.51.100.7:2"),
        udp("198.51.100.7:3"),
    );
    let (s1, _, r1) = h.allocate(&f1, rest("carol", exp), Default::default());
    // Another credential of the same user, and another user.
    let (s2, _, _) = h.allocate(&f2, rest("carol", exp + 1), Default::default());
    let (s3, _, _) = h.allocate(&f3, rest("dave", exp), Default::default());
    let name = format!("{exp}:carol");
    assert_eq!(set(&mut h, &[(&name, None)]), 1);
    assert!(h.io.closed.contains(&r1), "its relay socket is closed");
    assert_eq!(h.counters.ended_count(EndReason::Revocation), 1);
    assert_eq!(EndReason::Revocation.name(), "revoked");
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(three_requests(&mut h, &f1, &s1), [401, 401, 401]);
    assert_eq!(revoked_failures(&h), 3);
    assert_eq!(three_requests(&mut h, &f2, &s2), [200, 200, 200]);
    assert_eq!(three_requests(&mut h, &f3, &s3), [200, 200, 200]);
    // A new Allocate with the revoked credential: 401 too.
    assert_eq!(allocate_refused(&mut h, &f1, rest("carol", exp)), Some(401));
    assert_eq!(revoked_failures(&h), 4);
    let mut ended = Vec::new();
    while let Some(e) = h.server.poll_event() {
        if let turnpike_proto::core::Event::AllocationEnded { reason, .. } = e {
            ended.push(reason);
        }
    }
    assert_eq!(
        ended,
        vec![EndReason::Revocation],
        "the end is an event (logged)"
    );
}

#[test]
fn a_revoked_bare_user_ends_every_credential_of_it_and_the_static_user() {
    let mut h = harness("");
    let exp = h.now.unix + 3600;
    let (f1, f2, f3, f4) = (
        udp("198.51.100.7:1"),
        udp("198.51.100.7:2"),
        udp("198.51.100.7:3"),
        udp("198.51.100.7:4"),
    );
    let (s1, _, _) = h.allocate(&f1, rest("alice", exp), Default::default());
    let (s2, _, _) = h.allocate(&f2, rest("alice", exp + 60), Default::default());
    let (s3, _, _) = h.allocate(&f3, alice(), Default::default());
    let (s4, _, _) = h.allocate(&f4, rest("alicia", exp), Default::default());
    assert_eq!(set(&mut h, &[("alice", None)]), 3);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(three_requests(&mut h, &f1, &s1), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &f2, &s2), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &f3, &s3), [401, 401, 401]);
    assert_eq!(three_requests(&mut h, &f4, &s4), [200, 200, 200]);
    // A fresh credential of alice minted after the revocation: refused.
    let f5 = udp("198.51.100.7:5");
    assert_eq!(
        allocate_refused(&mut h, &f5, rest("alice", exp + 7200)),
        Some(401)
    );
    assert_eq!(
        h.allocate_with(&f5, alice(), Default::default(), SignOptions::default())
            .err(),
        Some(401)
    );
}

#[test]
fn a_revocation_lapses_at_until_and_lifting_it_lets_the_user_back() {
    let mut h = harness("");
    let exp = h.now.unix + 7200;
    let until = h.now.unix + 100;
    let f1 = udp("198.51.100.7:1");
    let (_, _, _) = h.allocate(&f1, rest("carol", exp), Default::default());
    assert_eq!(set(&mut h, &[("carol", Some(until))]), 1);
    assert_eq!(allocate_refused(&mut h, &f1, rest("carol", exp)), Some(401));
    // At `until` (the wall clock passed in) it no longer applies.
    h.advance(Duration::from_secs(100));
    assert_eq!(h.now.unix, until);
    let (s, _, _) = h.allocate(&f1, rest("carol", exp), Default::default());
    assert_eq!(three_requests(&mut h, &f1, &s), [200, 200, 200]);
    // Pushing the same (lapsed) set again ends nothing.
    assert_eq!(set(&mut h, &[("carol", Some(until))]), 0);
    // Revoked again, then lifted (an empty set): back in.
    assert_eq!(set(&mut h, &[("carol", None)]), 1);
    assert_eq!(set(&mut h, &[]), 0);
    let f2 = udp("198.51.100.7:2");
    let (s, _, _) = h.allocate(&f2, rest("carol", exp), Default::default());
    assert_eq!(three_requests(&mut h, &f2, &s), [200, 200, 200]);
}

#[test]
fn a_retransmitted_allocate_of_a_revoked_credential_is_not_replayed() {
    let mut h = harness("");
    let exp = h.now.unix + 3600;
    let ft = udp("198.51.100.7:1");
    let s = h.challenge(&ft, rest("carol", exp), SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&s));
    assert_eq!(h.expect_code(&ft, &req), 200);
    assert_eq!(set(&mut h, &[("carol", None)]), 1);
    assert_eq!(
        h.expect_code(&ft, &req),
        401,
        "authenticated again: revoked"
    );
    assert_eq!(h.server.allocation_count(), 0);
}
