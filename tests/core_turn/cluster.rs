//! Issue 14, the fleet as the core sees it, on a manual clock: an Allocate
//! that needs a cluster quota decision is parked and asked about
//! ([`Server::poll_admit`]); the shell's answer resumes it
//! ([`Server::admitted`]); without one, it goes on with the local quota
//! when its budget runs out ([`Server::expire_admissions`]). A full node
//! answers 300 with an alternate the shell pushed ([`Fleet`]).

use super::*;
use turnpike_proto::core::cluster::MAX_PARKED;
use turnpike_proto::core::{Admission, Alternate, Fleet};

const BUDGET: Duration = Duration::from_millis(50);

fn with_fleet(h: &mut H, fleet: Fleet) {
    h.server.set_fleet(Arc::new(fleet));
}

fn admission() -> Fleet {
    Fleet {
        admission_budget: Some(BUDGET),
        ..Fleet::default()
    }
}

/// Send an authenticated Allocate (after its 401); the request and the
/// reply, if any came at once.
fn allocate_request(h: &mut H, ft: &FiveTuple, creds: Credentials) -> (Vec<u8>, Option<Vec<u8>>) {
    let session = h.challenge(ft, creds, SignOptions::default());
    let mut req = Vec::new();
    let tid = h.tid();
    client::allocate(&mut req, tid, &AllocateOptions::default(), Some(&session));
    let resp = h.send(ft, &req);
    (req, resp)
}

fn code(resp: &[u8]) -> u16 {
    let m = Message::parse(resp).unwrap();
    match m.class() {
        Class::Success => 200,
        _ => m.error_code().unwrap().unwrap().code,
    }
}

fn answer(h: &mut H, ticket: u64, verdict: Admission) -> Option<(FiveTuple, u16)> {
    let mut out = Vec::new();
    let ft = h
        .server
        .admitted(h.now, ticket, verdict, &mut out, &mut h.io)?;
    Some((ft, code(&out)))
}

#[test]
fn a_parked_allocate_is_asked_about_once_and_granted_under_its_ticket() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 2\n");
    with_fleet(&mut h, admission());
    let ft = udp("198.51.100.7:1");
    let exp = h.now.unix + 3600;
    let (req, resp) = allocate_request(&mut h, &ft, rest("carol", exp));
    assert_eq!(resp, None, "nothing is answered while the cluster decides");
    let ask = h.server.poll_admit().expect("a question for the shell");
    assert_eq!(ask.user, "carol", "the quota user, not the REST username");
    assert_eq!(h.server.poll_admit(), None);
    // The client retransmits: dropped and counted, not asked again.
    assert_eq!(h.send(&ft, &req), None);
    assert_eq!(h.server.poll_admit(), None);
    assert_eq!(h.counters.dropped_count(DropReason::AdmissionPending), 1);
    assert_eq!(h.server.parked_allocates(), 1);
    assert_eq!(
        answer(&mut h, ask.ticket, Admission::Granted),
        Some((ft, 200))
    );
    assert_eq!(h.server.parked_allocates(), 0);
    let sessions = h.server.sessions(h.now);
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].id, ask.ticket,
        "the lease is named after the allocation"
    );
    // Answered once: a second answer finds nothing; a retransmission now
    // gets the remembered success.
    assert_eq!(answer(&mut h, ask.ticket, Admission::Granted), None);
    assert_eq!(code(&h.send(&ft, &req).expect("replayed")), 200);
}

#[test]
fn a_refused_admission_is_486_and_takes_nothing() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 2\n");
    with_fleet(&mut h, admission());
    let ft = udp("198.51.100.7:1");
    let exp = h.now.unix + 3600;
    let (_, resp) = allocate_request(&mut h, &ft, rest("carol", exp));
    assert_eq!(resp, None);
    let ask = h.server.poll_admit().unwrap();
    assert_eq!(
        answer(&mut h, ask.ticket, Admission::Refused),
        Some((ft, 486))
    );
    assert_eq!(h.counters.quota_refusals.get(), 1);
    assert_eq!(h.shared.allocations(), 0);
    assert!(h.io.bound.is_empty(), "no relay socket was bound");
}

#[test]
fn without_an_answer_the_allocate_goes_on_with_the_local_quota_at_its_budget() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 1\n");
    with_fleet(&mut h, admission());
    let exp = h.now.unix + 3600;
    let (f1, f2) = (udp("198.51.100.7:1"), udp("198.51.100.7:2"));
    allocate_request(&mut h, &f1, rest("carol", exp));
    let t1 = h.server.poll_admit().unwrap().ticket;
    assert!(h.server.poll_timeout().unwrap() <= h.now.mono + BUDGET);
    let mut out = Vec::new();
    assert_eq!(
        h.server.expire_admissions(h.now, &mut out, &mut h.io),
        None,
        "not before the budget"
    );
    h.now = h.now.plus(BUDGET);
    assert_eq!(
        h.server.expire_admissions(h.now, &mut out, &mut h.io),
        Some(f1)
    );
    assert_eq!(code(&out), 200, "the local quota has room");
    assert_eq!(answer(&mut h, t1, Admission::Refused), None, "too late");
    // The local quota still holds when the cluster does not answer.
    allocate_request(&mut h, &f2, rest("carol", exp));
    h.now = h.now.plus(BUDGET);
    let mut out = Vec::new();
    assert_eq!(
        h.server.expire_admissions(h.now, &mut out, &mut h.io),
        Some(f2)
    );
    assert_eq!(code(&out), 486);
}

#[test]
fn a_credential_revoked_while_parked_gets_401() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 2\n");
    with_fleet(&mut h, admission());
    let ft = udp("198.51.100.7:1");
    let exp = h.now.unix + 3600;
    allocate_request(&mut h, &ft, rest("carol", exp));
    let ask = h.server.poll_admit().unwrap();
    let mut r = turnpike_proto::core::Revocations::new();
    r.insert("carol", None);
    h.server.set_revocations(h.now, Arc::new(r), &mut h.io);
    assert_eq!(
        answer(&mut h, ask.ticket, Admission::Granted),
        Some((ft, 401))
    );
    assert_eq!(h.shared.allocations(), 0);
}

fn alternate(resp: &[u8]) -> Option<SocketAddr> {
    Message::parse(resp)
        .unwrap()
        .alternate_server()
        .ok()
        .flatten()
}

#[test]
fn a_full_node_of_a_fleet_answers_300_with_an_alternate_that_has_room() {
    let mut h = harness("[policy]\nmax_allocations = 1\n");
    let exp = h.now.unix + 3600;
    h.allocate(
        &udp("198.51.100.7:1"),
        rest("carol", exp),
        Default::default(),
    );
    let other: SocketAddr = "192.0.2.20:3478".parse().unwrap();
    with_fleet(
        &mut h,
        Fleet {
            redirect_when_full: true,
            alternates: vec![
                Alternate {
                    addr: "192.0.2.30:3478".parse().unwrap(),
                    tls: None,
                    weight: 0,
                },
                Alternate {
                    addr: other,
                    tls: None,
                    weight: 5,
                },
            ],
            ..Fleet::default()
        },
    );
    for port in 2..6 {
        let (_, resp) = allocate_request(
            &mut h,
            &udp(&format!("198.51.100.7:{port}")),
            rest("dave", exp),
        );
        let resp = resp.expect("answered at once");
        assert_eq!(code(&resp), 300);
        assert_eq!(alternate(&resp), Some(other), "weight 0 is never picked");
    }
    // No node with room: 486 as before.
    with_fleet(
        &mut h,
        Fleet {
            redirect_when_full: true,
            ..Fleet::default()
        },
    );
    let (_, resp) = allocate_request(&mut h, &udp("198.51.100.7:9"), rest("dave", exp));
    assert_eq!(code(&resp.unwrap()), 486);
}

#[test]
fn a_draining_node_sends_new_allocations_to_the_fleet() {
    let mut h = harness("");
    let mut cfg = h.server.config().clone();
    cfg.draining = true;
    h.server.set_config(Arc::new(cfg));
    let exp = h.now.unix + 3600;
    let (_, resp) = allocate_request(&mut h, &udp("198.51.100.7:1"), rest("dave", exp));
    assert_eq!(code(&resp.unwrap()), 486, "no alternate known");
    let other: SocketAddr = "192.0.2.20:3478".parse().unwrap();
    with_fleet(
        &mut h,
        Fleet {
            alternates: vec![Alternate {
                addr: other,
                tls: None,
                weight: 1,
            }],
            ..Fleet::default()
        },
    );
    let (_, resp) = allocate_request(&mut h, &udp("198.51.100.7:2"), rest("dave", exp));
    let resp = resp.unwrap();
    assert_eq!((code(&resp), alternate(&resp)), (300, Some(other)));
}

#[test]
fn a_full_node_does_not_ask_the_cluster() {
    let mut h = harness("[policy]\nmax_allocations = 1\nmax_allocations_per_user = 5\n");
    with_fleet(&mut h, admission());
    let exp = h.now.unix + 3600;
    let ft = udp("198.51.100.7:1");
    allocate_request(&mut h, &ft, rest("carol", exp));
    let ask = h.server.poll_admit().unwrap();
    assert_eq!(
        answer(&mut h, ask.ticket, Admission::Granted),
        Some((ft, 200))
    );
    assert!(h.server.allocation_alive(ask.ticket));
    let (_, resp) = allocate_request(&mut h, &udp("198.51.100.7:2"), rest("dave", exp));
    assert_eq!(code(&resp.expect("answered at once")), 486);
    assert_eq!(h.server.poll_admit(), None, "no lease asked for");
}

#[test]
fn parked_allocates_are_bounded_and_past_the_bound_the_local_quota_decides_at_once() {
    let mut h = harness("[policy]\nmax_allocations = 1000\nmax_allocations_per_user = 1000\n");
    with_fleet(&mut h, admission());
    let exp = h.now.unix + 3600;
    for i in 0..MAX_PARKED {
        let ft = udp(&format!("198.51.100.{}:{}", 1 + i / 200, 1000 + i));
        let (_, resp) = allocate_request(&mut h, &ft, rest("carol", exp));
        assert_eq!(resp, None);
    }
    assert_eq!(h.server.parked_allocates(), MAX_PARKED);
    let (_, resp) = allocate_request(&mut h, &udp("198.51.100.9:9"), rest("carol", exp));
    assert_eq!(code(&resp.expect("answered at once")), 200, "local quota");
    assert_eq!(h.server.parked_allocates(), MAX_PARKED);
    let mut asks = 0;
    while h.server.poll_admit().is_some() {
        asks += 1;
    }
    assert_eq!(asks, MAX_PARKED, "one question per parked Allocate");
    // All of them go on at their budget.
    h.now = h.now.plus(BUDGET);
    let mut out = Vec::new();
    let mut resumed = 0;
    while h
        .server
        .expire_admissions(h.now, &mut out, &mut h.io)
        .is_some()
    {
        resumed += 1;
    }
    assert_eq!((resumed, h.server.parked_allocates()), (MAX_PARKED, 0));
    // (The harness has 100 relay ports: the rest got 508.)
    assert_eq!(h.server.allocation_count(), 100);
}

#[test]
fn tls_clients_are_sent_to_a_tls_listener_and_others_to_the_udp_one() {
    let mut h = harness("[policy]\nmax_allocations = 1\n");
    let exp = h.now.unix + 3600;
    h.allocate(
        &udp("198.51.100.7:1"),
        rest("carol", exp),
        Default::default(),
    );
    let plain: SocketAddr = "192.0.2.20:3478".parse().unwrap();
    let tls: SocketAddr = "192.0.2.30:5349".parse().unwrap();
    with_fleet(
        &mut h,
        Fleet {
            redirect_when_full: true,
            alternates: vec![
                Alternate {
                    addr: plain,
                    tls: None,
                    weight: 1,
                },
                Alternate {
                    addr: "192.0.2.30:3478".parse().unwrap(),
                    tls: Some(tls),
                    weight: 1,
                },
            ],
            ..Fleet::default()
        },
    );
    let tls_ft = FiveTuple {
        transport: Transport::Tls,
        ..udp("198.51.100.7:2")
    };
    for _ in 0..4 {
        let (_, resp) = allocate_request(&mut h, &tls_ft, rest("dave", exp));
        assert_eq!(
            alternate(&resp.unwrap()),
            Some(tls),
            "only the node with TLS"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for port in 3..40 {
        let (_, resp) = allocate_request(
            &mut h,
            &udp(&format!("198.51.100.7:{port}")),
            rest("dave", exp),
        );
        seen.insert(alternate(&resp.unwrap()).unwrap());
    }
    assert_eq!(
        seen.len(),
        2,
        "UDP clients go to either, by weight: {seen:?}"
    );
    assert!(!seen.contains(&tls));
    // An IPv6 client: no fleet node of its family, so the static list
    // (empty here) and then 486.
    let (_, resp) = allocate_request(&mut h, &udp("[2001:db8::7]:1"), rest("dave", exp));
    assert_eq!(code(&resp.unwrap()), 486);
}

#[test]
fn an_allocate_parked_on_a_connection_that_closes_is_forgotten() {
    let mut h = harness("[policy]\nmax_allocations_per_user = 2\n");
    with_fleet(&mut h, admission());
    let exp = h.now.unix + 3600;
    let ft = tcp("198.51.100.7:1");
    allocate_request(&mut h, &ft, rest("carol", exp));
    let ask = h.server.poll_admit().unwrap();
    h.server.connection_closed(h.now, &ft, &mut h.io);
    assert_eq!(h.server.parked_allocates(), 0);
    assert_eq!(
        answer(&mut h, ask.ticket, Admission::Granted),
        None,
        "nothing is installed for a closed connection"
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert!(
        h.server
            .poll_timeout()
            .is_none_or(|t| t > h.now.mono + BUDGET)
    );
}
