//! The relay directory across shards, sans-IO: two cores sharing one
//! `Shared`, as two shards of one server do. Y's allocation is published
//! when it first receives permitted data from a relay address (UDP
//! client, no bandwidth cap); from then on a datagram from a relay of
//! shard X for it is framed by X for Y's client exactly as Y itself would
//! frame it, under Y's permissions and channels, until Y deletes it.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use turnpike_proto::client::{self, AllocateOptions, Credentials, Session};
use turnpike_proto::core::Transport;
use turnpike_proto::core::{
    ClientAddr, DropReason, Event, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, Shared,
};
use turnpike_proto::sim::SimConfig as Config;
use turnpike_proto::sim::{SimServer, sim_config, udp};
use turnpike_proto::wire::{ChannelData, Message, Method};

const RELAY_IP: &str = "198.51.100.7";
const SERVER: &str = "198.51.100.7:3478";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config(extra: &str) -> Config {
    let mut c = sim_config(RELAY_IP, "s3cret", &["198.51.100.0/24"]);
    if extra.contains("max_bitrate") {
        c.core.max_bytes_per_sec = 800_000 / 8;
    }
    c
}

/// Two shards of one server.
fn shards(cfg: &Config) -> (SimServer, SimServer) {
    let shared = Arc::new(Shared::new(cfg.ports));
    let x = SimServer::shard(cfg, 1, shared.clone(), 0);
    let mut y = SimServer::shard(cfg, 2, shared, 1);
    y.now = x.now;
    (x, y)
}

/// Allocate as the simulation config's static user.
fn alloc(s: &mut SimServer, ft: &FiveTuple) -> (Session, SocketAddr) {
    let (session, relayed, _) = s
        .allocate(
            ft,
            Credentials::new("sim", "sim"),
            &AllocateOptions::default(),
        )
        .unwrap();
    (session, relayed)
}

/// What shard X produces for `to`'s client when its relay `from` sends
/// `payload` there: (client five-tuple, message bytes), or None if X finds
/// nothing published or the receiving side refuses it.
fn direct(
    x: &mut SimServer,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> Option<(FiveTuple, Vec<u8>)> {
    let view = x.shared.directory.get(to)?;
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..][..payload.len()].copy_from_slice(payload);
    let (ft, range) =
        x.server
            .handle_peer_published(x.now, &view, PeerAddr(from), &mut buf, payload.len())?;
    Some((ft, buf[range].to_vec()))
}

/// The relay id of the allocation at `relayed` on `s`.
fn relay_of(s: &SimServer, relayed: SocketAddr) -> turnpike_proto::core::RelayId {
    *s.io
        .bound
        .iter()
        .find(|(_, a)| a.port() == relayed.port())
        .unwrap()
        .0
}

/// A on shard X, B on shard Y (both UDP), relaying to each other.
struct Pair {
    x: SimServer,
    y: SimServer,
    fb: FiveTuple,
    sb: Session,
    ra: SocketAddr,
    rb: SocketAddr,
}

/// A on X and B on Y; B permits A and has received one datagram from A's
/// relay the kernel way, so B is published.
fn pair(extra: &str) -> Pair {
    let cfg = config(extra);
    let (mut x, mut y) = shards(&cfg);
    let fa = udp(addr("203.0.113.1:5000"), addr(SERVER));
    let fb = udp(addr("203.0.113.2:6000"), addr(SERVER));
    let (_, ra) = alloc(&mut x, &fa);
    let (sb, rb) = alloc(&mut y, &fb);
    y.create_permission(&fb, &sb, &[ra]).unwrap();
    y.peer_datagram(relay_of(&y, rb), ra, b"first").unwrap();
    Pair {
        x,
        y,
        fb,
        sb,
        ra,
        rb,
    }
}

#[test]
fn published_on_the_first_permitted_datagram_from_a_relay() {
    let cfg = config("");
    let (mut x, mut y) = shards(&cfg);
    let fa = udp(addr("203.0.113.1:5000"), addr(SERVER));
    let fb = udp(addr("203.0.113.2:6000"), addr(SERVER));
    let (_, ra) = alloc(&mut x, &fa);
    let (sb, rb) = alloc(&mut y, &fb);
    let rel = relay_of(&y, rb);
    let dir = y.shared.clone();
    assert!(dir.directory.get(rb).is_none(), "not before any traffic");
    // Refused (no permission yet): not published.
    assert_eq!(y.peer_datagram(rel, ra, b"refused"), None);
    assert!(dir.directory.get(rb).is_none());
    // Permitted data from peers that are not our relays (another host;
    // our IP on a port outside the relay range): not published.
    let host = addr("198.51.100.99:40000");
    let outside = SocketAddr::new(ra.ip(), 3479);
    y.create_permission(&fb, &sb, &[host, ra]).unwrap();
    assert!(y.peer_datagram(rel, host, b"from a host").is_some());
    assert!(y.peer_datagram(rel, outside, b"from port 3479").is_some());
    assert!(dir.directory.get(rb).is_none());
    // From A's relay: published, with what X needs.
    assert!(y.peer_datagram(rel, ra, b"from a relay").is_some());
    let v = dir.directory.get(rb).expect("published");
    assert_eq!((v.client, v.advertised), (fb, rb));
    assert_eq!(v.permissions.len(), 2);
    drop(v);
    // A only sent; nothing of A's is published.
    assert!(dir.directory.get(ra).is_none());
}

#[test]
fn delivery_follows_the_receivers_permission_and_channel() {
    let mut p = pair("");
    // A Data indication from A's relayed address, to B's five-tuple: the
    // same message B's own shard makes of it but for the transaction id.
    let (ft, got) = direct(&mut p.x, p.ra, p.rb, b"hello").unwrap();
    assert_eq!(ft, p.fb);
    let m = Message::parse(&got).unwrap();
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.xor_peer_address().unwrap(), Some(p.ra));
    assert_eq!(m.data().unwrap(), &b"hello"[..]);
    let (_, own) =
        p.y.peer_datagram(relay_of(&p.y, p.rb), p.ra, b"hello")
            .unwrap();
    assert_eq!((got.len(), &got[..4]), (own.len(), &own[..4]));
    assert_eq!(got[20..], own[20..]);

    // With a channel (republished by the ChannelBind): ChannelData, byte
    // for byte what B's shard makes.
    p.y.channel_bind(&p.fb, &p.sb, 0x4001, p.ra).unwrap();
    let (_, got) = direct(&mut p.x, p.ra, p.rb, b"on the channel").unwrap();
    let (_, own) =
        p.y.peer_datagram(relay_of(&p.y, p.rb), p.ra, b"on the channel")
            .unwrap();
    assert_eq!(got, own);
    let cd = ChannelData::parse(&got).unwrap();
    assert_eq!((cd.channel, cd.data), (0x4001, &b"on the channel"[..]));

    // Another relay of the same IP is covered by the permission (RFC 8656
    // §9: IP only) but not by the channel: Data indication.
    let other = SocketAddr::new(p.ra.ip(), p.ra.port().wrapping_add(1));
    let (_, got) = direct(&mut p.x, other, p.rb, b"x").unwrap();
    assert_eq!(Message::parse(&got).unwrap().method(), Method::DATA);
    assert_eq!(p.x.counters.dropped_count(DropReason::NoPermission), 0);
}

#[test]
fn expiries_are_checked_by_the_reader_and_refreshes_republish() {
    let mut p = pair("");
    // The permission lasts 300 s (RFC 8656 §9): X's clock decides.
    p.x.now = p.x.now.plus(Duration::from_secs(299));
    assert!(direct(&mut p.x, p.ra, p.rb, b"1").is_some());
    p.x.now = p.x.now.plus(Duration::from_secs(1));
    assert_eq!(direct(&mut p.x, p.ra, p.rb, b"2"), None, "expired at 300 s");
    assert_eq!(p.x.counters.dropped_count(DropReason::NoPermission), 1);
    // Refreshed on Y (at 300 s): published again with the new expiry.
    p.y.now = p.x.now;
    p.y.create_permission(&p.fb, &p.sb, &[p.ra]).unwrap();
    assert!(direct(&mut p.x, p.ra, p.rb, b"3").is_some());
    // The allocation itself (600 s default lifetime) ends for readers at
    // its expiry even before Y's timer has deleted it...
    p.y.now = p.y.now.plus(Duration::from_secs(299));
    p.y.create_permission(&p.fb, &p.sb, &[p.ra]).unwrap();
    p.x.now = p.y.now.plus(Duration::from_secs(1));
    assert_eq!(
        direct(&mut p.x, p.ra, p.rb, b"4"),
        None,
        "allocation expired"
    );
    // ...and a Refresh extends it.
    let mut req = Vec::new();
    let tid = p.y.tid();
    client::refresh(&mut req, tid, Some(600), &p.sb);
    assert!(p.y.request(&p.fb, &req).is_some());
    assert!(direct(&mut p.x, p.ra, p.rb, b"5").is_some());
}

#[test]
fn deletion_withdraws_and_the_traffic_is_kept() {
    let mut p = pair("");
    for _ in 0..3 {
        direct(&mut p.x, p.ra, p.rb, b"12345").unwrap();
    }
    // Y's own path once more, then the session shows both (with the
    // 5-byte datagram that got it published).
    p.y.peer_datagram(relay_of(&p.y, p.rb), p.ra, b"123")
        .unwrap();
    let s = p.y.server.sessions(p.y.now);
    assert_eq!((s[0].traffic.packets_in, s[0].traffic.bytes_in), (5, 23));
    // A ChannelBind republishes: the counts carry over.
    p.y.channel_bind(&p.fb, &p.sb, 0x4000, p.ra).unwrap();
    direct(&mut p.x, p.ra, p.rb, b"1").unwrap();
    let s = p.y.server.sessions(p.y.now);
    assert_eq!(s[0].traffic.packets_in, 6);
    // Refresh 0 deletes: withdrawn, and the end event has every packet.
    let mut req = Vec::new();
    let tid = p.y.tid();
    client::refresh(&mut req, tid, Some(0), &p.sb);
    p.y.request(&p.fb, &req).unwrap();
    assert!(p.y.shared.directory.get(p.rb).is_none());
    assert_eq!(direct(&mut p.x, p.ra, p.rb, b"late"), None);
    let ended = std::iter::from_fn(|| p.y.server.poll_event())
        .find_map(|e| match e {
            Event::AllocationEnded { traffic, .. } => Some(traffic),
            _ => None,
        })
        .unwrap();
    assert_eq!((ended.packets_in, ended.bytes_in), (6, 24));
}

/// Let `s`'s allocation at `relayed` receive one permitted datagram from
/// `from` (a relay address), the kernel way; returns whether it is now
/// published.
fn relay_traffic(
    s: &mut SimServer,
    ft: &FiveTuple,
    session: &Session,
    relayed: SocketAddr,
    from: SocketAddr,
) -> bool {
    s.create_permission(ft, session, &[from]).unwrap();
    assert!(s.peer_datagram(relay_of(s, relayed), from, b"x").is_some());
    s.shared.directory.get(relayed).is_some()
}

#[test]
fn a_reused_port_shows_only_its_new_owner() {
    let mut cfg = config("");
    cfg.ports = "40000-40000".parse().unwrap();
    let (mut x, mut y) = shards(&cfg);
    let fb = udp(addr("203.0.113.2:6000"), addr(SERVER));
    let (sb, rb) = alloc(&mut y, &fb);
    assert!(relay_traffic(&mut y, &fb, &sb, rb, rb));
    let mut req = Vec::new();
    let tid = y.tid();
    client::refresh(&mut req, tid, Some(0), &sb);
    y.request(&fb, &req).unwrap();
    // The only port goes to C on shard X: B's view is gone with B.
    let fc = udp(addr("203.0.113.3:7000"), addr(SERVER));
    let (sc, rc) = alloc(&mut x, &fc);
    assert_eq!(rc, rb, "the same port");
    assert!(x.shared.directory.get(rc).is_none());
    assert!(relay_traffic(&mut x, &fc, &sc, rc, rc));
    let v = x.shared.directory.get(rc).unwrap();
    assert_eq!((v.client, v.permissions.len()), (fc, 1));
}

#[test]
fn only_uncapped_udp_allocations_are_published() {
    // A bandwidth cap is enforced by the owner alone: not published.
    let p = pair("max_bitrate");
    assert!(p.x.shared.directory.get(p.rb).is_none());
    let from = SocketAddr::new(addr(SERVER).ip(), 10001);
    // A TCP client is reachable only through its own shard's connection.
    let cfg = config("");
    let (_, mut y) = shards(&cfg);
    let ft = FiveTuple {
        client: ClientAddr(addr("203.0.113.4:8000")),
        server: addr(SERVER),
        transport: Transport::Tcp,
    };
    let (s, r) = alloc(&mut y, &ft);
    assert!(!relay_traffic(&mut y, &ft, &s, r, from));
    // Nor when the shell says there is one shard (publish_relays off).
    let mut one = SimServer::new(&cfg, 9);
    let mut core_cfg = one.server.config().clone();
    core_cfg.publish_relays = false;
    one.server.set_config(Arc::new(core_cfg));
    let ft = udp(addr("203.0.113.5:9000"), addr(SERVER));
    let (s, r) = alloc(&mut one, &ft);
    assert!(!relay_traffic(&mut one, &ft, &s, r, from));
    // The same allocation with it on: published.
    let (_, mut y) = shards(&cfg);
    let (s, r) = alloc(&mut y, &ft);
    assert!(relay_traffic(&mut y, &ft, &s, r, from));
}
