//! Relay-to-relay routing decided by the core, sans-IO: two clients of one
//! server whose peers are each other's relayed addresses (the usual WebRTC
//! case through one TURN server). `handle_client` returns the final route:
//! to a relay of the same core, the receiving allocation's client gets the
//! message framed in `out` (`ToClient`); to another shard's relay
//! published in the relay directory, the same; to any other address,
//! including another shard's relay not (yet) published, the datagram goes
//! to the kernel from the sender's relay socket (`ToPeer`). The receiving
//! allocation's permission, channels and bandwidth cap decide exactly as
//! for a datagram through the kernel.

#![allow(clippy::unwrap_used, reason = "a test: unwrap is its assertion")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use turnpike_proto::client::{self, AllocateOptions, Credentials, Session};
use turnpike_proto::core::{
    ClientAddr, ClientOutput, DropReason, FiveTuple, PeerAddr, RelayId, Shared, Transport,
};
use turnpike_proto::sim::{Routed, SimConfig, SimServer, sim_config, udp};
use turnpike_proto::wire::{ChannelData, Message, Method, TransactionId};

const RELAY_IP: &str = "198.51.100.7";
const SERVER: &str = "198.51.100.7:3478";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> SimConfig {
    sim_config(RELAY_IP, "s3cret", &["198.51.100.0/24"])
}

/// A client of the server at `s`.
struct Client {
    ft: FiveTuple,
    session: Session,
    relayed: SocketAddr,
    relay: RelayId,
}

fn client(s: &mut SimServer, ft: FiveTuple) -> Client {
    let (session, relayed, relay) = s
        .allocate(
            &ft,
            Credentials::new("sim", "sim"),
            &AllocateOptions::default(),
        )
        .unwrap();
    Client {
        ft,
        session,
        relayed,
        relay,
    }
}

fn udp_client(s: &mut SimServer, port: u16) -> Client {
    client(s, udp(addr(&format!("203.0.113.1:{port}")), addr(SERVER)))
}

fn send_indication(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    client::send_indication(&mut b, TransactionId::new([3; 12]), to, data);
    b
}

fn channel_data(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    ChannelData::encode(ch, data, false, &mut b);
    b
}

/// The Data indication's peer and payload.
fn data_indication(bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(m.method(), Method::DATA);
    (
        m.xor_peer_address().unwrap().unwrap(),
        m.data().unwrap().to_vec(),
    )
}

/// Two shards of one server, sharing ports, quotas and the directory.
fn shards(cfg: &SimConfig) -> (SimServer, SimServer) {
    let shared = Arc::new(Shared::new(cfg.ports));
    let x = SimServer::shard(cfg, 1, shared.clone(), 0);
    let mut y = SimServer::shard(cfg, 2, shared, 1);
    y.now = x.now;
    (x, y)
}

// --- same shard -------------------------------------------------------------

#[test]
fn same_shard_send_indication_reaches_the_other_client_from_the_senders_relay() {
    let mut s = SimServer::new(&config(), 1);
    let a = udp_client(&mut s, 5000);
    let b = udp_client(&mut s, 6000);
    s.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    s.create_permission(&b.ft, &b.session, &[a.relayed])
        .unwrap();
    let Routed::ToClient { ft, data } = s.from_client(&a.ft, &send_indication(b.relayed, b"hi"))
    else {
        panic!("not delivered to B's client");
    };
    assert_eq!(ft, b.ft);
    assert_eq!(data_indication(&data), (a.relayed, b"hi".to_vec()));
    // As through the kernel, B's first datagram from one of our relays
    // publishes it for other shards.
    assert!(s.shared.directory.get(b.relayed).is_some());
    assert!(s.shared.directory.get(a.relayed).is_none());
    // Byte for byte what B's relay makes of the same datagram from A's
    // relayed address through the kernel, but for the transaction id.
    let (_, own) = s.peer_datagram(b.relay, a.relayed, b"hi").unwrap();
    assert_eq!((data.len(), &data[..4]), (own.len(), &own[..4]));
    assert_eq!(data[20..], own[20..]);
    // Counted once each way and as local; the kernel saw nothing.
    let c = &s.counters;
    assert_eq!(c.relayed_local.get(), 1);
    assert_eq!(c.relayed_cross_shard.get(), 0);
    assert_eq!(c.relayed_packets_out.get(), 1);
    assert_eq!(c.relayed_bytes_out.get(), 2);
    assert_eq!(c.relayed_packets_in.get(), 2, "one local, one by hand");
    let sessions = s.server.sessions(s.now);
    let of = |ft: FiveTuple| sessions.iter().find(|x| x.ft == ft).unwrap().traffic;
    assert_eq!((of(a.ft).packets_out, of(a.ft).packets_in), (1, 0));
    assert_eq!((of(b.ft).packets_out, of(b.ft).packets_in), (0, 2));
}

#[test]
fn same_shard_channels_both_ways_and_padding_for_a_stream_client() {
    let mut s = SimServer::new(&config(), 1);
    let a = udp_client(&mut s, 5000);
    let b = client(
        &mut s,
        FiveTuple {
            client: ClientAddr(addr("203.0.113.2:6000")),
            server: addr(SERVER),
            transport: Transport::Tcp,
        },
    );
    s.channel_bind(&a.ft, &a.session, 0x4000, b.relayed)
        .unwrap();
    s.channel_bind(&b.ft, &b.session, 0x4001, a.relayed)
        .unwrap();
    // A → B: B's channel number, padded to four bytes on B's TCP stream.
    let Routed::ToClient { ft, data } = s.from_client(&a.ft, &channel_data(0x4000, b"12345"))
    else {
        panic!("not delivered to B");
    };
    assert_eq!(ft, b.ft);
    assert_eq!(data.len(), 4 + 8, "padded");
    let cd = ChannelData::parse(&data).unwrap();
    assert_eq!((cd.channel, cd.data), (0x4001, &b"12345"[..]));
    // B → A: A's channel, unpadded over UDP.
    let Routed::ToClient { ft, data } = s.from_client(&b.ft, &channel_data(0x4001, b"back")) else {
        panic!("not delivered to A");
    };
    assert_eq!(ft, a.ft);
    assert_eq!(data, channel_data(0x4000, b"back"));
    assert_eq!(s.counters.relayed_local.get(), 2);
}

#[test]
fn same_shard_refusals() {
    let mut s = SimServer::new(&config(), 1);
    let a = udp_client(&mut s, 5000);
    let b = udp_client(&mut s, 6000);
    // A may not send to B's relay without a permission of its own: dropped
    // on A's side, before any route.
    assert_eq!(
        s.from_client(&a.ft, &send_indication(b.relayed, b"x")),
        Routed::None
    );
    assert_eq!(s.counters.dropped_count(DropReason::NoPermission), 1);
    assert_eq!(s.counters.relayed_local.get(), 0);
    // Nor on a channel it has not bound.
    assert_eq!(
        s.from_client(&a.ft, &channel_data(0x4000, b"x")),
        Routed::None
    );
    assert_eq!(s.counters.dropped_count(DropReason::NoChannel), 1);
    // A permits B, B does not permit A: handed over, refused by B.
    s.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    assert_eq!(
        s.from_client(&a.ft, &send_indication(b.relayed, b"x")),
        Routed::None
    );
    assert_eq!(s.counters.dropped_count(DropReason::NoPermission), 2);
    assert_eq!(
        s.counters.relayed_local.get(),
        1,
        "handed over, then refused"
    );
    assert_eq!(s.counters.relayed_packets_out.get(), 1);
    assert_eq!(s.counters.relayed_packets_in.get(), 0);
    assert!(
        s.shared.directory.get(b.relayed).is_none(),
        "refused: not published"
    );
    // B's channel (600 s) decides the framing: ChannelData while it is
    // bound, Data indications once it has expired.
    s.channel_bind(&b.ft, &b.session, 0x4001, a.relayed)
        .unwrap();
    let Routed::ToClient { data, .. } = s.from_client(&a.ft, &send_indication(b.relayed, b"1"))
    else {
        panic!("B permits A now");
    };
    assert_eq!(data, channel_data(0x4001, b"1"));
    for _ in 0..2 {
        s.advance(Duration::from_secs(290));
        s.create_permission(&a.ft, &a.session, &[b.relayed])
            .unwrap();
        s.create_permission(&b.ft, &b.session, &[a.relayed])
            .unwrap();
        // The allocations themselves last 600 s.
        for x in [&a, &b] {
            let mut req = Vec::new();
            let tid = s.tid();
            client::refresh(&mut req, tid, Some(600), &x.session);
            s.request(&x.ft, &req).unwrap();
        }
    }
    s.advance(Duration::from_secs(20));
    let Routed::ToClient { data, .. } = s.from_client(&a.ft, &send_indication(b.relayed, b"2"))
    else {
        panic!("B's permission was refreshed");
    };
    assert_eq!(data_indication(&data), (a.relayed, b"2".to_vec()));
    // B's permission (300 s since its last refresh at 580 s) decides too.
    s.advance(Duration::from_secs(280));
    s.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    assert_eq!(
        s.from_client(&a.ft, &send_indication(b.relayed, b"3")),
        Routed::None
    );
    assert_eq!(s.counters.dropped_count(DropReason::NoPermission), 3);
}

#[test]
fn same_shard_the_receivers_bandwidth_cap_is_charged() {
    // 1000 bytes a second, one second's worth of burst.
    let mut cfg = config();
    cfg.core.max_bytes_per_sec = 1000;
    let mut s = SimServer::new(&cfg, 1);
    let a = udp_client(&mut s, 5000);
    let b = udp_client(&mut s, 6000);
    let c = udp_client(&mut s, 7000);
    for x in [&a, &b, &c] {
        s.create_permission(&x.ft, &x.session, &[a.relayed])
            .unwrap();
    }
    // A → B: 600 of A's 1000 and 600 of B's.
    let big = [7u8; 600];
    assert!(matches!(
        s.from_client(&a.ft, &send_indication(b.relayed, &big)),
        Routed::ToClient { .. }
    ));
    // C → B: C has 1000, B only 400 left: refused by B's bucket.
    assert_eq!(
        s.from_client(&c.ft, &send_indication(b.relayed, &big)),
        Routed::None
    );
    assert_eq!(s.counters.dropped_count(DropReason::Bandwidth), 1);
    assert_eq!(s.counters.relayed_local.get(), 2);
    assert_eq!(s.counters.relayed_packets_in.get(), 1);
    // A capped allocation is never published (its bucket is its own).
    assert!(s.shared.directory.get(b.relayed).is_none());
}

#[test]
fn the_framed_message_follows_what_out_already_holds() {
    // The batched UDP path gathers a batch's replies and deliveries in one
    // buffer: a delivery goes after them, and a refusal leaves them alone.
    let mut s = SimServer::new(&config(), 1);
    let a = udp_client(&mut s, 5000);
    let b = udp_client(&mut s, 6000);
    let c = udp_client(&mut s, 7000);
    s.create_permission(&a.ft, &a.session, &[b.relayed, c.relayed])
        .unwrap();
    s.create_permission(&b.ft, &b.session, &[a.relayed])
        .unwrap();
    let mut out = b"earlier replies".to_vec();
    let bytes = send_indication(b.relayed, b"payload");
    let r = s
        .server
        .handle_client(s.now, &a.ft, &bytes, &mut out, &mut s.io);
    let ClientOutput::ToClient { ft, range } = r else {
        panic!("not delivered: {r:?}");
    };
    assert_eq!(ft, b.ft);
    assert!(range.start >= 15 && range.end <= out.len());
    assert_eq!(&out[..15], b"earlier replies");
    assert_eq!(
        data_indication(&out[range]),
        (a.relayed, b"payload".to_vec())
    );
    // C has not permitted A: nothing added.
    let mut out = b"earlier replies".to_vec();
    let bytes = send_indication(c.relayed, b"payload");
    let r = s
        .server
        .handle_client(s.now, &a.ft, &bytes, &mut out, &mut s.io);
    assert_eq!(r, ClientOutput::None);
    assert_eq!(out, b"earlier replies");
}

#[test]
fn a_deleted_relay_is_a_peer_like_any_other() {
    let mut s = SimServer::new(&config(), 1);
    let a = udp_client(&mut s, 5000);
    let b = udp_client(&mut s, 6000);
    s.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    let mut req = Vec::new();
    let tid = s.tid();
    client::refresh(&mut req, tid, Some(0), &b.session);
    s.request(&b.ft, &req).unwrap();
    assert_eq!(
        s.from_client(&a.ft, &send_indication(b.relayed, b"x")),
        Routed::ToPeer {
            relay: a.relay,
            peer: PeerAddr(b.relayed),
            data: b"x".to_vec()
        }
    );
    assert_eq!(s.counters.relayed_local.get(), 0);
}

// --- other shard ------------------------------------------------------------

/// A on shard X, B on shard Y, each permitting the other's relay.
fn across() -> (SimServer, SimServer, Client, Client) {
    let (mut x, mut y) = shards(&config());
    let a = udp_client(&mut x, 5000);
    let b = udp_client(&mut y, 6000);
    x.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    y.create_permission(&b.ft, &b.session, &[a.relayed])
        .unwrap();
    (x, y, a, b)
}

#[test]
fn other_shard_not_published_goes_to_the_kernel_then_straight_to_its_client() {
    let (mut x, mut y, a, b) = across();
    // B has had no relay-to-relay datagram: nothing published, so X sends
    // through the kernel from A's relay socket.
    assert_eq!(
        x.from_client(&a.ft, &send_indication(b.relayed, b"first")),
        Routed::ToPeer {
            relay: a.relay,
            peer: PeerAddr(b.relayed),
            data: b"first".to_vec()
        }
    );
    // The kernel hands it to B's relay socket on Y: B is published.
    let (ft, _) = y.peer_datagram(b.relay, a.relayed, b"first").unwrap();
    assert_eq!(ft, b.ft);
    assert!(y.shared.directory.get(b.relayed).is_some());
    // From now on X frames it for B's client itself.
    let Routed::ToClient { ft, data } = x.from_client(&a.ft, &send_indication(b.relayed, b"next"))
    else {
        panic!("not delivered across");
    };
    assert_eq!(ft, b.ft);
    assert_eq!(data_indication(&data), (a.relayed, b"next".to_vec()));
    assert_eq!(x.counters.relayed_cross_shard.get(), 1);
    assert_eq!(x.counters.relayed_local.get(), 0);
    assert_eq!(
        (
            x.counters.relayed_packets_out.get(),
            x.counters.relayed_packets_in.get()
        ),
        (2, 1),
        "X counts both directions of what it delivered"
    );
    // Y's session shows what X delivered to its client.
    let t = y.server.sessions(y.now)[0].traffic;
    assert_eq!((t.packets_in, t.bytes_in), (2, 9));
    // A channel bound on Y (republished) turns it into ChannelData.
    y.channel_bind(&b.ft, &b.session, 0x4005, a.relayed)
        .unwrap();
    x.channel_bind(&a.ft, &a.session, 0x4000, b.relayed)
        .unwrap();
    let Routed::ToClient { data, .. } = x.from_client(&a.ft, &channel_data(0x4000, b"on it"))
    else {
        panic!("not delivered across");
    };
    assert_eq!(data, channel_data(0x4005, b"on it"));
}

#[test]
fn other_shard_refusals_follow_the_receivers_rules() {
    let (mut x, mut y, a, b) = across();
    x.from_client(&a.ft, &send_indication(b.relayed, b"first"));
    y.peer_datagram(b.relay, a.relayed, b"first").unwrap();
    // B's permission for A lasts 300 s, on X's clock.
    x.now = x.now.plus(Duration::from_secs(299));
    x.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    assert!(matches!(
        x.from_client(&a.ft, &send_indication(b.relayed, b"1")),
        Routed::ToClient { .. }
    ));
    x.now = x.now.plus(Duration::from_secs(1));
    assert_eq!(
        x.from_client(&a.ft, &send_indication(b.relayed, b"2")),
        Routed::None
    );
    assert_eq!(x.counters.dropped_count(DropReason::NoPermission), 1);
    assert_eq!(x.counters.relayed_cross_shard.get(), 2, "counted, refused");
    // A channel is bound to one peer address: another relay of X, on the
    // same IP, is permitted but gets Data indications.
    y.now = x.now;
    y.channel_bind(&b.ft, &b.session, 0x4001, a.relayed)
        .unwrap();
    let a2 = udp_client(&mut x, 5001);
    x.create_permission(&a2.ft, &a2.session, &[b.relayed])
        .unwrap();
    let Routed::ToClient { data, .. } =
        x.from_client(&a2.ft, &send_indication(b.relayed, b"other"))
    else {
        panic!("permitted by IP");
    };
    assert_eq!(data_indication(&data), (a2.relayed, b"other".to_vec()));
    let Routed::ToClient { data, .. } = x.from_client(&a.ft, &send_indication(b.relayed, b"a"))
    else {
        panic!("permitted");
    };
    assert_eq!(data, channel_data(0x4001, b"a"));
}

#[test]
fn other_shard_never_published_keeps_the_kernel_path() {
    // A bandwidth cap is the owner's alone: not published.
    let mut cfg = config();
    cfg.core.max_bytes_per_sec = 100_000;
    let shared = Arc::new(Shared::new(cfg.ports));
    let mut x = SimServer::shard(&config(), 1, shared.clone(), 0);
    let mut y = SimServer::shard(&cfg, 2, shared.clone(), 1);
    let mut z = SimServer::shard(&config(), 3, shared, 2);
    y.now = x.now;
    z.now = x.now;
    let a = udp_client(&mut x, 5000);
    let b = udp_client(&mut y, 6000);
    x.create_permission(&a.ft, &a.session, &[b.relayed])
        .unwrap();
    y.create_permission(&b.ft, &b.session, &[a.relayed])
        .unwrap();
    // A TCP client is reachable only through its own shard's connection.
    let t = client(
        &mut z,
        FiveTuple {
            client: ClientAddr(addr("203.0.113.3:7000")),
            server: addr(SERVER),
            transport: Transport::Tcp,
        },
    );
    z.create_permission(&t.ft, &t.session, &[a.relayed])
        .unwrap();
    x.create_permission(&a.ft, &a.session, &[t.relayed])
        .unwrap();
    for (owner, to, relay) in [(&mut y, b.relayed, b.relay), (&mut z, t.relayed, t.relay)] {
        for _ in 0..2 {
            assert_eq!(
                x.from_client(&a.ft, &send_indication(to, b"k")),
                Routed::ToPeer {
                    relay: a.relay,
                    peer: PeerAddr(to),
                    data: b"k".to_vec()
                }
            );
            // Through the kernel to its relay socket: delivered, and
            // still not published.
            assert!(owner.peer_datagram(relay, a.relayed, b"k").is_some());
            assert!(owner.shared.directory.get(to).is_none());
        }
    }
    assert_eq!(x.counters.relayed_cross_shard.get(), 0);
    // And an X told it is alone (publish_relays off) does not look even
    // when Y has published.
    let (mut x, mut y, a, b) = across();
    y.peer_datagram(b.relay, a.relayed, b"first").unwrap();
    assert!(y.shared.directory.get(b.relayed).is_some());
    let mut alone = x.server.config().clone();
    alone.publish_relays = false;
    x.server.set_config(Arc::new(alone));
    assert!(matches!(
        x.from_client(&a.ft, &send_indication(b.relayed, b"k")),
        Routed::ToPeer { .. }
    ));
    assert_eq!(x.counters.relayed_cross_shard.get(), 0);
}
