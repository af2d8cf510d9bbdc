//! The relay hot path allocates nothing on the heap: ChannelData and Send
//! indications from clients, datagrams from peers (ChannelData and Data
//! indication back), datagrams from another shard's relay through the relay
//! directory, and client data routed relay to relay by the core (to the
//! same core's relay, to another shard's published one), counted with a
//! counting global allocator.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::SocketAddr;

use turnpike_proto::client::{self, AllocateOptions, Credentials};
use turnpike_proto::core::{ClientOutput, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput};
use turnpike_proto::sim::{SimServer, sim_config, udp};
use turnpike_proto::wire::{ChannelData, TransactionId};

#[global_allocator]
static A: turnpike_sys::alloc::CountingAlloc = turnpike_sys::alloc::CountingAlloc;

use turnpike_sys::alloc::allocations;

#[test]
fn relaying_allocates_nothing() {
    let cfg = sim_config("192.0.2.1", "secret", &[]);
    let mut sim = SimServer::new(&cfg, 1);
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut flows = Vec::new();
    for i in 0..100u16 {
        let ft = udp(
            format!("198.51.100.1:{}", 2000 + i).parse().unwrap(),
            server,
        );
        let peer: SocketAddr = format!("203.0.113.1:{}", 3000 + i).parse().unwrap();
        let data_peer: SocketAddr = format!("203.0.113.2:{}", 3000 + i).parse().unwrap();
        let (s, relayed_at, relay) = sim
            .allocate(
                &ft,
                Credentials::new("sim", "sim"),
                &AllocateOptions::default(),
            )
            .unwrap();
        sim.channel_bind(&ft, &s, 0x4000 + i, peer).unwrap();
        sim.create_permission(&ft, &s, &[data_peer]).unwrap();
        // Data from a relay of "another shard" publishes it in the relay
        // directory, as the server does.
        let other_relay: SocketAddr = "192.0.2.1:10000".parse().unwrap();
        sim.create_permission(&ft, &s, &[other_relay]).unwrap();
        sim.peer_datagram(relay, other_relay, b"publish").unwrap();
        let mut cd = Vec::new();
        ChannelData::encode(0x4000 + i, &[7; 100], false, &mut cd);
        let mut send = Vec::new();
        client::send_indication(&mut send, TransactionId::new([1; 12]), data_peer, &[8; 100]);
        flows.push((ft, relay, relayed_at, peer, data_peer, cd, send));
    }
    let mut out = Vec::with_capacity(1500);
    let mut buf = vec![0u8; PEER_HEADROOM + 100 + PEER_TAILROOM];
    let now = sim.now;
    let mut run = |rounds: usize| {
        let mut relayed = 0u64;
        for _ in 0..rounds {
            for (ft, relay, relayed_at, peer, data_peer, cd, send) in &flows {
                out.clear();
                if let ClientOutput::ToPeer { data, .. } =
                    sim.server.handle_client(now, ft, cd, &mut out, &mut sim.io)
                {
                    relayed += data.len() as u64;
                }
                if let ClientOutput::ToPeer { data, .. } =
                    sim.server
                        .handle_client(now, ft, send, &mut out, &mut sim.io)
                {
                    relayed += data.len() as u64;
                }
                if let PeerOutput::ToClient { data, .. } =
                    sim.server
                        .handle_peer(now, *relay, PeerAddr(*peer), &mut buf, 100)
                {
                    relayed += data.len() as u64;
                }
                if let PeerOutput::ToClient { data, .. } =
                    sim.server
                        .handle_peer(now, *relay, PeerAddr(*data_peer), &mut buf, 100)
                {
                    relayed += data.len() as u64;
                }
                // As another shard delivers it: lookup, checks, framing.
                let view = sim.shared.directory.get(*relayed_at).unwrap();
                if let Some((_, range)) =
                    sim.server
                        .handle_peer_published(now, &view, PeerAddr(*peer), &mut buf, 100)
                {
                    relayed += range.len() as u64;
                }
            }
        }
        relayed
    };
    run(1); // warm up
    let (n, relayed) = allocations(|| run(100));
    // 100 rounds × 100 allocations × (100 + 100 + 104 + 136 + 104) bytes.
    assert_eq!(relayed, 100 * 100 * (100 + 100 + 104 + 136 + 104));
    assert_eq!(n, 0, "heap allocations on the relay hot path");
}

/// Relay to relay, as the core routes it: to another allocation of the
/// same core, and to another shard's published allocation, the message for
/// the receiving client is framed into the caller's output buffer (the one
/// copy the route makes) without a heap allocation.
#[test]
fn relaying_relay_to_relay_allocates_nothing() {
    let cfg = sim_config("192.0.2.1", "secret", &[]);
    let shared = std::sync::Arc::new(turnpike_proto::core::Shared::new(cfg.ports));
    let mut x = SimServer::shard(&cfg, 1, shared.clone(), 0);
    let mut y = SimServer::shard(&cfg, 2, shared, 1);
    y.now = x.now;
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let creds = || Credentials::new("sim", "sim");
    // Pairs of clients: A and B on shard X, C on shard Y (published).
    let mut flows = Vec::new();
    for i in 0..50u16 {
        let client = |n: u16| udp(format!("198.51.100.1:{n}").parse().unwrap(), server);
        let (fa, fb, fc) = (client(2000 + i), client(3000 + i), client(4000 + i));
        let (sa, ra, _) = x
            .allocate(&fa, creds(), &AllocateOptions::default())
            .unwrap();
        let (sb, rb, _) = x
            .allocate(&fb, creds(), &AllocateOptions::default())
            .unwrap();
        let (sc, rc, relay_c) = y
            .allocate(&fc, creds(), &AllocateOptions::default())
            .unwrap();
        // A binds channels to B and C; B and C bind one back to A (C's
        // only after it is published, so the channel is republished).
        x.channel_bind(&fa, &sa, 0x4000, rb).unwrap();
        x.channel_bind(&fa, &sa, 0x4001, rc).unwrap();
        x.channel_bind(&fb, &sb, 0x4002, ra).unwrap();
        y.create_permission(&fc, &sc, &[ra]).unwrap();
        y.peer_datagram(relay_c, ra, b"publish").unwrap();
        y.channel_bind(&fc, &sc, 0x4003, ra).unwrap();
        let mut to_b = Vec::new();
        ChannelData::encode(0x4000, &[7; 100], false, &mut to_b);
        let mut to_c = Vec::new();
        ChannelData::encode(0x4001, &[7; 100], false, &mut to_c);
        let mut send_c = Vec::new();
        client::send_indication(&mut send_c, TransactionId::new([1; 12]), rc, &[8; 100]);
        flows.push((fa, to_b, to_c, send_c));
    }
    let mut out = Vec::with_capacity(1500);
    let now = x.now;
    let mut run = |rounds: usize| {
        let mut delivered = 0u64;
        for _ in 0..rounds {
            for (fa, to_b, to_c, send_c) in &flows {
                for bytes in [to_b, to_c, send_c] {
                    out.clear();
                    match x.server.handle_client(now, fa, bytes, &mut out, &mut x.io) {
                        ClientOutput::ToClient { range, .. } => delivered += range.len() as u64,
                        other => panic!("not routed to a client: {other:?}"),
                    }
                }
            }
        }
        delivered
    };
    run(1); // warm up
    let (n, delivered) = allocations(|| run(100));
    // 100 rounds × 50 pairs × (ChannelData 104 to B, ChannelData 104 to
    // C, ChannelData 104 to C: C's channel for A covers Send too).
    assert_eq!(delivered, 100 * 50 * (104 + 104 + 104));
    assert_eq!(n, 0, "heap allocations on the relay-to-relay path");
    assert_eq!(x.counters.relayed_local.get(), 101 * 50);
    assert_eq!(x.counters.relayed_cross_shard.get(), 101 * 50 * 2);
}
