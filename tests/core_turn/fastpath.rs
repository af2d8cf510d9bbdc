//! Issue 15 item 3, in the core: the routes mirrored into the shell's
//! kernel fast path, as the stream of operations `poll_fastpath` gives,
//! on a manual clock. The harness config: relay 192.0.2.10 (advertised as
//! 203.0.113.10), a listener at 192.0.2.10:3478.

use turnpike_proto::core::{FastRoute, FastpathOp};

use super::*;

const PEER: &str = "198.51.100.20:7000";
const CH: u16 = 0x4001;

fn ops(h: &mut H) -> Vec<FastpathOp> {
    std::iter::from_fn(|| h.server.poll_fastpath()).collect()
}

/// A UDP allocation with the fast path on; returns its session, relay
/// address and the five-tuple.
fn bound(h: &mut H) -> (Session, FiveTuple) {
    h.server.set_fastpath(h.now, true);
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert!(
        ops(h).is_empty(),
        "an allocation without channels mirrors nothing"
    );
    (s, ft)
}

fn install(op: &FastpathOp) -> FastRoute {
    match op {
        FastpathOp::Install(r) => *r,
        other => panic!("expected an install, got {other:?}"),
    }
}

#[test]
fn channel_bind_installs_a_route_that_expires_with_its_permission() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    let ops = ops(&mut h);
    assert_eq!(ops.len(), 1, "{ops:?}");
    let r = install(&ops[0]);
    assert_eq!(r.client, ft.client);
    assert_eq!(r.listener, ft.server);
    assert_eq!(
        r.relay.ip(),
        addr("192.0.2.10:0").ip(),
        "the bound relay, not the advertised one"
    );
    assert_eq!(r.peer, PeerAddr(addr(PEER)));
    assert_eq!(r.channel, ChannelNumber(CH));
    // The permission ChannelBind installs lasts 300 s, the channel 600 s.
    assert_eq!(r.expires, h.now.mono + Duration::from_secs(300));
}

#[test]
fn nothing_is_queued_while_the_fast_path_is_off() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    assert!(ops(&mut h).is_empty());
    // Turning it on mirrors what exists.
    h.server.set_fastpath(h.now, true);
    let ops = ops(&mut h);
    assert_eq!(ops.len(), 1);
    assert_eq!(install(&ops[0]).channel, ChannelNumber(CH));
}

#[test]
fn refreshing_the_permission_moves_the_expiry_to_the_channels_bound() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    let t0 = h.now.mono;
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    ops(&mut h);
    h.advance(Duration::from_secs(100));
    assert_eq!(h.create_permission(&ft, &s, &[PEER]), 200);
    let o = ops(&mut h);
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(install(&o[0]).expires, t0 + Duration::from_secs(400));
    // Refreshing again later: capped by the channel's 600 s.
    h.advance(Duration::from_secs(250));
    assert_eq!(h.create_permission(&ft, &s, &[PEER]), 200);
    let o = ops(&mut h);
    assert_eq!(install(&o[0]).expires, t0 + Duration::from_secs(600));
    // A request that changes nothing queues nothing.
    assert_eq!(h.create_permission(&ft, &s, &["198.51.100.99:1"]), 200);
    assert!(ops(&mut h).is_empty());
}

#[test]
fn an_expired_permission_removes_the_route() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    let r = install(&ops(&mut h)[0]);
    h.advance(Duration::from_secs(299));
    assert!(ops(&mut h).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(ops(&mut h), vec![FastpathOp::Remove(r)]);
    // The allocation (600 s) lives on, and relays nothing without a
    // permission in user space either.
    assert!(h.relay(&ft, &ChannelData::header(CH, 0)).is_none());
}

#[test]
fn refresh_zero_removes_routes_and_ends_the_counters() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    let r = install(&ops(&mut h)[0]);
    assert_eq!(h.refresh(&ft, &s, Some(0)).0, 200);
    assert_eq!(
        ops(&mut h),
        vec![
            FastpathOp::Remove(r),
            FastpathOp::Ended {
                alloc_id: r.alloc_id
            }
        ]
    );
}

#[test]
fn admin_delete_and_expiry_remove_routes() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    let r = install(&ops(&mut h)[0]);
    assert!(h.server.delete_session(r.alloc_id, h.now, &mut h.io));
    assert_eq!(ops(&mut h)[0], FastpathOp::Remove(r));

    // Expiry of the allocation (default lifetime 600 s) with its channel
    // and permission kept fresh.
    let ft2 = udp("198.51.100.7:40001");
    let (s2, _, _) = h.allocate(&ft2, alice(), Default::default());
    assert_eq!(h.channel_bind(&ft2, &s2, CH, PEER), 200);
    let r2 = install(&ops(&mut h)[0]);
    h.advance(Duration::from_secs(250));
    assert_eq!(h.channel_bind(&ft2, &s2, CH, PEER), 200);
    let r3 = install(&ops(&mut h)[0]);
    assert!(r3.expires > r2.expires);
    h.advance(Duration::from_secs(350));
    assert_eq!(
        ops(&mut h),
        vec![
            FastpathOp::Remove(r3),
            FastpathOp::Ended {
                alloc_id: r3.alloc_id
            }
        ]
    );
}

#[test]
fn capped_tcp_and_own_relay_peers_stay_on_the_user_space_path() {
    // A bandwidth cap: the bucket is charged in user space.
    let mut h = harness("[policy]\nmax_bitrate = 8000000\n");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    assert!(ops(&mut h).is_empty(), "capped allocation mirrored");

    // TCP: framing stays in user space.
    let mut h = harness("");
    h.server.set_fastpath(h.now, true);
    let t = tcp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&t, alice(), Default::default());
    assert_eq!(h.channel_bind(&t, &s, CH, PEER), 200);
    assert!(ops(&mut h).is_empty(), "TCP allocation mirrored");

    // A peer that is one of this server's relays: relay → relay stays in
    // the core's own routing.
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, "203.0.113.10:50050"), 200);
    assert!(ops(&mut h).is_empty(), "own relay mirrored");
}

#[test]
fn a_reload_that_denies_the_peer_removes_its_route_at_once() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    let r = install(&ops(&mut h)[0]);
    let denied = base_config("[policy]\ndeny_peers = [\"198.51.100.0/24\"]\n");
    h.server
        .set_config(Arc::new(turnpike::config::to_core(&denied)));
    assert_eq!(ops(&mut h), vec![FastpathOp::Remove(r)]);
    // And a later refresh does not put it back.
    assert_eq!(h.refresh(&ft, &s, None).0, 200);
    assert!(ops(&mut h).is_empty());
}

#[test]
fn turning_the_fast_path_off_forgets_without_queuing() {
    let mut h = harness("");
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, PEER), 200);
    h.server.set_fastpath(h.now, false);
    assert!(
        ops(&mut h).is_empty(),
        "the program is gone: nothing to remove"
    );
    assert!(!h.server.fastpath());
    // On again: installed afresh.
    h.server.set_fastpath(h.now, true);
    assert_eq!(ops(&mut h).len(), 1);
}

#[test]
fn an_ipv4_client_on_an_ipv6_allocation_is_mirrored_too() {
    // The harness relays IPv6 on the wildcard: give it an address.
    let mut cfg = base_config("");
    cfg.relay.bind_ip6 = Some("2001:db8::10".parse().unwrap());
    let mut h = harness_cfg(cfg, 42);
    h.server.set_fastpath(h.now, true);
    let ft = udp("198.51.100.7:40000");
    let (s, relayed, _) = h.allocate(
        &ft,
        alice(),
        AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    assert!(relayed.is_ipv6());
    assert_eq!(h.channel_bind(&ft, &s, CH, "[2001:db8::20]:7000"), 200);
    let o = ops(&mut h);
    assert_eq!(o.len(), 1, "{o:?}");
    let r = install(&o[0]);
    assert!(r.client.0.is_ipv4() && r.listener.is_ipv4());
    assert!(r.relay.is_ipv6() && r.peer.0.is_ipv6());
}

#[test]
fn relay_to_relay_is_mirrored_only_where_relays_are_not_behind_nat() {
    // No public_ip: relays are advertised at their bound address.
    let mut cfg = base_config("");
    cfg.relay.public_ip = None;
    let mut h = harness_cfg(cfg, 42);
    let (s, ft) = bound(&mut h);
    assert_eq!(h.channel_bind(&ft, &s, CH, "192.0.2.10:50050"), 200);
    let o = ops(&mut h);
    assert_eq!(o.len(), 1, "{o:?}");
    let r = install(&o[0]);
    assert!(r.to_relay);
    // An ordinary peer is not marked.
    assert_eq!(h.channel_bind(&ft, &s, CH + 1, PEER), 200);
    let o = ops(&mut h);
    assert!(!install(&o[0]).to_relay);
    // A port of the relay's address outside the relay range is refused by
    // the policy: nothing to mirror.
    assert_eq!(h.channel_bind(&ft, &s, CH + 2, "192.0.2.10:9"), 403);
    assert!(ops(&mut h).is_empty());
}
