//! The relay hot path inside the core: a client's ChannelData in (→ the
//! peer), a peer's datagram in (→ ChannelData for the client, written in
//! place), and a datagram from another shard's relay delivered through the
//! relay directory (lookup, the receiver's checks, framing). Measured with 10 and 10,000 allocations to show the cost
//! does not grow with the table. Run: `cargo bench --bench core`.
//!
//! Two access patterns per table size:
//! - `N_allocations`: packets for 10 busy allocations (stride over the
//!   first 10) in a table of N: what the lookups cost as the table grows.
//! - `N_allocations_all_busy`: every packet for another of the N
//!   allocations (stride 7919 over all of them): at 10,000 the state
//!   touched per packet no longer fits the CPU caches, so this one also
//!   measures cache misses, not the algorithm.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a benchmark: it reads the clock, and unwrap is its assertion"
)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use turnpike_proto::client::{AllocateOptions, Credentials};
use turnpike_proto::core::{
    ClientOutput, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput, RelayId,
};
use turnpike_proto::sim::{SimServer, sim_config, udp};
use turnpike_proto::wire::ChannelData;

struct Setup {
    sim: SimServer,
    clients: Vec<(FiveTuple, Vec<u8>)>,
    /// (relay id, its peer, its relayed address)
    relays: Vec<(RelayId, SocketAddr, SocketAddr)>,
}

fn setup(n: usize) -> Setup {
    let cfg = sim_config("192.0.2.1", "secret", &[]);
    let mut sim = SimServer::new(&cfg, 1);
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut clients = Vec::with_capacity(n);
    let mut relays = Vec::with_capacity(n);
    for i in 0..n {
        let client = SocketAddr::new(
            std::net::Ipv4Addr::from(0xC633_6400u32 + (i as u32 % 250)).into(),
            1024 + (i / 250) as u16,
        );
        let ft = udp(client, server);
        let peer: SocketAddr = format!("203.0.113.{}:{}", 1 + i % 200, 5000 + i / 200)
            .parse()
            .unwrap();
        let (s, relayed, relay) = sim
            .allocate(
                &ft,
                Credentials::new("sim", "sim"),
                &AllocateOptions::default(),
            )
            .expect("allocate");
        sim.channel_bind(&ft, &s, 0x4000, peer)
            .expect("channel bind");
        // Data from a relay of "another shard" publishes it in the relay
        // directory, as the server does.
        let other_relay: SocketAddr = "192.0.2.1:10000".parse().unwrap();
        sim.create_permission(&ft, &s, &[other_relay])
            .expect("permission");
        sim.peer_datagram(relay, other_relay, b"publish")
            .expect("published");
        let mut cd = Vec::new();
        ChannelData::encode(0x4000, &[0xab; 100], false, &mut cd);
        clients.push((ft, cd));
        relays.push((relay, peer, relayed));
    }
    Setup {
        sim,
        clients,
        relays,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_hot_path");
    for (n, busy) in [(10usize, 10usize), (10_000, 10), (10_000, 10_000)] {
        let mut s = setup(n);
        let label = if busy == n && n > 10 {
            format!("{n}_allocations_all_busy")
        } else {
            format!("{n}_allocations")
        };
        let mut out = Vec::with_capacity(1500);
        let mut i = 0usize;
        g.bench_function(format!("client_channel_data_in/{label}"), |b| {
            b.iter(|| {
                let (ft, cd) = &s.clients[i % busy];
                i = i.wrapping_add(7919);
                out.clear();
                let r = s
                    .sim
                    .server
                    .handle_client(s.sim.now, ft, cd, &mut out, &mut s.sim.io);
                assert!(matches!(r, ClientOutput::ToPeer { .. }));
                black_box(r);
            })
        });
        let mut buf = vec![0u8; PEER_HEADROOM + 100 + PEER_TAILROOM];
        let mut j = 0usize;
        let now = s.sim.now;
        g.bench_function(format!("peer_datagram_in/{label}"), |b| {
            b.iter(|| {
                let (relay, peer, _) = s.relays[j % busy];
                j = j.wrapping_add(7919);
                let r = s
                    .sim
                    .server
                    .handle_peer(now, relay, PeerAddr(peer), &mut buf, 100);
                assert!(matches!(r, PeerOutput::ToClient { .. }));
                black_box(r);
            })
        });
        let mut k = 0usize;
        g.bench_function(format!("from_other_shard_in/{label}"), |b| {
            b.iter(|| {
                let (_, peer, relayed) = s.relays[k % busy];
                k = k.wrapping_add(7919);
                let view = s.sim.shared.directory.get(relayed).expect("published");
                let r =
                    s.sim
                        .server
                        .handle_peer_published(now, &view, PeerAddr(peer), &mut buf, 100);
                assert!(r.is_some());
                black_box(r);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
