//! `/metrics` of the built binary: scrape, drive known traffic over real
//! sockets, scrape again, and check the exact change of every series.
//!
//! Relay ports 45500-45999.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::ops::*;
use common::*;
use turnpike_proto::client::{self, Credentials};

const SECRET: &str = "metrics-secret";
const USER: &str = "metrics-user";

fn config(policy: &str) -> String {
    format!(
        r#"
[server]
realm = "metrics.test"

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"

[relay]
bind_ip = "127.0.0.1"
ports = "45500-45999"

[auth]
secrets = ["{SECRET}"]

[policy]
allow_peers = ["127.0.0.1/32"]
{policy}
"#
    )
}

fn creds() -> Credentials {
    Credentials::rest(SECRET, USER, unix_now() + 3600)
}

/// A series key as `name{k="v",...}` with sorted labels.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<_> = labels.to_vec();
    l.sort();
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn sample_key(s: &Sample) -> String {
    let inner: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{}{{{}}}", s.name, inner.join(","))
}

/// Every series of `after` changed from `before` by exactly what
/// `expected` says, and by 0 when `expected` does not mention it (except
/// the start time and the heap gauges). Every expected series exists.
/// (metric name, labels, expected change).
type Delta<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

fn assert_deltas(before: &Scrape, after: &Scrape, expected: &[Delta<'_>]) {
    let want: BTreeMap<String, f64> = expected.iter().map(|(n, l, v)| (key(n, l), *v)).collect();
    let mut problems = Vec::new();
    let mut seen = 0;
    for s in &after.samples {
        // The start time, and the allocator's totals, which move with
        // whatever the server allocates.
        if s.name == "process_start_time_seconds" || s.name.starts_with("turnpike_heap_") {
            continue;
        }
        let k = sample_key(s);
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let delta = s.value - before.value_or_zero(&s.name, &labels);
        let w = want.get(&k).copied().unwrap_or(0.0);
        if want.contains_key(&k) {
            seen += 1;
        }
        if delta != w {
            problems.push(format!("{k}: changed by {delta}, expected {w}"));
        }
    }
    for k in want.keys() {
        if !after.samples.iter().any(|s| &sample_key(s) == k) {
            problems.push(format!("{k}: missing from the scrape"));
        }
    }
    assert!(
        problems.is_empty() && seen == want.len(),
        "metric deltas:\n  {}",
        problems.join("\n  ")
    );
}

/// No label anywhere names or carries a user; counters end in `_total`.
fn assert_hygiene(m: &Scrape) {
    for s in &m.samples {
        for (k, v) in &s.labels {
            assert!(
                !k.contains("user") && !v.contains(USER),
                "per-user label in {s:?}"
            );
        }
        let t = m
            .types
            .get(&s.name)
            .unwrap_or_else(|| panic!("no TYPE line for {}", s.name));
        let want = if s.name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(t, want, "TYPE of {}", s.name);
    }
}

const PEER_CH: u16 = 0x4000;

#[test]
fn metrics_count_known_traffic_exactly() {
    let start_before = unix_now();
    let server = TestServer::start(&config(""));
    let start_after = unix_now();
    let h = server.http_addr();
    let udp = server.addr(Transport::Udp, false);
    let before = scrape(h);
    assert_hygiene(&before);
    let started = before.value("process_start_time_seconds", &[]);
    assert!(
        (start_before as f64..=start_after as f64).contains(&started),
        "process_start_time_seconds {started}"
    );
    assert_eq!(before.value("turnpike_draining", &[]), 0.0);
    // The allocator's totals: a running server holds some heap.
    assert!(before.value("turnpike_heap_in_use_bytes", &[]) > 0.0);
    assert!(before.value("turnpike_heap_free_bytes", &[]) >= 0.0);

    // N Binding requests over UDP.
    const N: usize = 5;
    let mut a = TurnClient::udp(udp);
    for _ in 0..N {
        assert_eq!(a.binding(), a.local_addr());
    }
    // One 401 challenge, one 401 for bad integrity (right user, wrong
    // password, the same nonce), then the Allocate that works.
    let challenge = a.challenge_response();
    let s = session_for(&challenge, creds());
    let wrong = session_for(
        &challenge,
        Credentials::new(creds().username, "not-the-password"),
    );
    assert_eq!(
        code_of(&a.allocate_signed(&wrong, &Default::default())),
        401
    );
    assert_eq!(code_of(&a.allocate_signed(&s, &Default::default())), 200);
    let relayed = a.relayed.unwrap();
    // One permission and one channel to a UDP peer on 127.0.0.1.
    let peer = udp_peer();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(a.create_permission(&[peer_addr]), 200);
    assert_eq!(a.channel_bind(PEER_CH, peer_addr), 200);
    // A 403: 127.0.0.2 is loopback, refused by the default policy
    // (only 127.0.0.1/32 is allowed).
    let denied: SocketAddr = "127.0.0.2:9".parse().unwrap();
    assert_eq!(a.create_permission(&[denied]), 403);
    // K ChannelData packets of S bytes to the peer, K replies of R bytes.
    const K: usize = 7;
    const S: usize = 100;
    const R: usize = 60;
    for i in 0..K {
        a.send_channel_data(PEER_CH, &[i as u8; S]);
        let (got, from) = peer_recv(&peer);
        assert_eq!((got.len(), from), (S, relayed));
    }
    for i in 0..K {
        peer.send_to(&[i as u8; R], relayed).unwrap();
        let (ch, data) = a.recv_channel_data();
        assert_eq!((ch, data.len()), (PEER_CH, R));
    }
    // Dropped: ChannelData on an unbound channel; a Send indication to a
    // peer the policy refuses. The Refresh after them is answered only
    // once both were handled (same five-tuple, same shard, in order).
    a.send_channel_data(0x4001, b"nobody listens here");
    let mut ind = Vec::new();
    client::send_indication(&mut ind, new_tid(), denied, b"refused");
    a.send_raw(&ind);
    assert_eq!(a.refresh(Some(600)), 200);
    // Dropped: ChannelData from a client with no allocation, and a
    // datagram that is neither STUN nor ChannelData; a Binding after them.
    let mut b = TurnClient::udp(udp);
    b.send_channel_data(PEER_CH, b"no allocation");
    b.send_raw(&[0xff; 24]);
    assert_eq!(b.binding(), b.local_addr());
    // A TCP client with an open connection, one Binding on it.
    let mut c = TurnClient::tcp(server.addr(Transport::Tcp, false));
    assert_eq!(c.binding(), c.local_addr());

    let after = scrape(h);
    assert_hygiene(&after);
    let (k, s, r) = (K as f64, S as f64, R as f64);
    let binding = (N + 2) as f64;
    assert_deltas(
        &before,
        &after,
        &[
            ("turnpike_binding_requests_total", &[], binding),
            (
                "turnpike_requests_total",
                &[("method", "binding"), ("code", "200")],
                binding,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "401")],
                2.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "create_permission"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "create_permission"), ("code", "403")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "channel_bind"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "refresh"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_auth_failures_total",
                &[("reason", "bad_integrity")],
                1.0,
            ),
            ("turnpike_allocations_created_total", &[], 1.0),
            (
                "turnpike_allocations_active",
                &[("transport", "udp"), ("family", "ipv4")],
                1.0,
            ),
            ("turnpike_permissions_active", &[], 1.0),
            ("turnpike_channels_active", &[], 1.0),
            ("turnpike_peer_policy_refusals_total", &[], 1.0),
            (
                "turnpike_relayed_packets_total",
                &[("direction", "to_peer")],
                k,
            ),
            (
                "turnpike_relayed_bytes_total",
                &[("direction", "to_peer")],
                k * s,
            ),
            (
                "turnpike_relayed_packets_total",
                &[("direction", "to_client")],
                k,
            ),
            (
                "turnpike_relayed_bytes_total",
                &[("direction", "to_client")],
                k * r,
            ),
            (
                "turnpike_dropped_packets_total",
                &[("reason", "no_channel")],
                1.0,
            ),
            (
                "turnpike_dropped_packets_total",
                &[("reason", "peer_policy")],
                1.0,
            ),
            (
                "turnpike_dropped_packets_total",
                &[("reason", "no_allocation")],
                1.0,
            ),
            (
                "turnpike_dropped_packets_total",
                &[("reason", "malformed")],
                1.0,
            ),
            ("turnpike_connections_open", &[("transport", "tcp")], 1.0),
        ],
    );

    // Refresh with lifetime 0 ends the allocation; closing the TCP
    // connection closes it in the gauge (polled: the server notices the
    // close asynchronously).
    assert_eq!(a.refresh(Some(0)), 200);
    drop(c);
    let end = wait_until("the TCP connection gauge to drop", POLL_LIMIT, || {
        let m = scrape(h);
        (m.value("turnpike_connections_open", &[("transport", "tcp")]) == 0.0).then_some(m)
    });
    assert_hygiene(&end);
    assert_deltas(
        &after,
        &end,
        &[
            (
                "turnpike_requests_total",
                &[("method", "refresh"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_allocations_deleted_total",
                &[("reason", "refresh")],
                1.0,
            ),
            (
                "turnpike_allocations_active",
                &[("transport", "udp"), ("family", "ipv4")],
                -1.0,
            ),
            ("turnpike_permissions_active", &[], -1.0),
            ("turnpike_channels_active", &[], -1.0),
            ("turnpike_connections_open", &[("transport", "tcp")], -1.0),
        ],
    );
}

#[test]
fn tcp_allocations_quota_refusals_and_connection_close() {
    let server = TestServer::start(&config("max_allocations_per_user = 1"));
    let h = server.http_addr();
    let tcp = server.addr(Transport::Tcp, false);
    let before = scrape(h);

    let mut t = TurnClient::tcp(tcp);
    t.allocate(creds()).expect("TCP allocate");
    // The same user again, on UDP: over the per-user quota.
    let mut u = TurnClient::udp(server.addr(Transport::Udp, false));
    assert_eq!(u.allocate(creds()), Err(486));
    let mid = scrape(h);
    assert_deltas(
        &before,
        &mid,
        &[
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "401")],
                2.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "486")],
                1.0,
            ),
            ("turnpike_quota_refusals_total", &[], 1.0),
            ("turnpike_allocations_created_total", &[], 1.0),
            (
                "turnpike_allocations_active",
                &[("transport", "tcp"), ("family", "ipv4")],
                1.0,
            ),
            ("turnpike_connections_open", &[("transport", "tcp")], 1.0),
        ],
    );
    // Closing the connection ends its allocation (RFC 8656 §3.1).
    drop(t);
    let end = wait_until("the TCP allocation to end", POLL_LIMIT, || {
        let m = scrape(h);
        (m.value(
            "turnpike_allocations_deleted_total",
            &[("reason", "connection_closed")],
        ) == 1.0
            && m.value("turnpike_connections_open", &[("transport", "tcp")]) == 0.0)
            .then_some(m)
    });
    assert_deltas(
        &mid,
        &end,
        &[
            (
                "turnpike_allocations_deleted_total",
                &[("reason", "connection_closed")],
                1.0,
            ),
            (
                "turnpike_allocations_active",
                &[("transport", "tcp"), ("family", "ipv4")],
                -1.0,
            ),
            ("turnpike_connections_open", &[("transport", "tcp")], -1.0),
        ],
    );
    // The quota is free again.
    assert!(u.allocate(creds()).is_ok());
}

#[test]
fn prometheus_parser_reads_the_exposition_format() {
    // The parser the tests above rely on, on a hand-written page.
    let m = Scrape::parse(
        "# HELP a_total help text\n# TYPE a_total counter\na_total 3\n\
         b{x=\"1\",y=\"q\\\"uote\"} 2.5\nc{} 1 1700000000000\nd{z=\"a,b}\",} -1\n",
    );
    assert_eq!(m.value("a_total", &[]), 3.0);
    assert_eq!(m.value("b", &[("x", "1"), ("y", "q\"uote")]), 2.5);
    assert_eq!(m.value("c", &[]), 1.0);
    assert_eq!(m.value("d", &[("z", "a,b}")]), -1.0);
    assert_eq!(m.get("b", &[("x", "1")]), None, "labels match exactly");
    assert_eq!(m.types["a_total"], "counter");
    for bad in ["x", "x{a=1} 2", "x{a=\"1\" 2", "x 1 2 3", "9x 1", "x abc"] {
        assert!(
            std::panic::catch_unwind(|| Scrape::parse(bad)).is_err(),
            "{bad:?} must not parse"
        );
    }
}

/// Regression: the first packet a client sends through a fresh relay
/// socket reached the peer only about two times in three; the rest were
/// dropped as `send_buffer_full` (tokio's `try_send_to` refused to try
/// before its driver had seen the new socket writable). Every packet
/// must arrive, and none may be counted as dropped.
#[test]
fn first_packet_through_a_fresh_relay_reaches_the_peer() {
    let server = TestServer::start(&config(""));
    let udp = server.addr(Transport::Udp, false);
    let peer = udp_peer();
    let peer_addr = peer.local_addr().unwrap();
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let mut c = TurnClient::udp(udp);
        c.allocate(creds()).expect("allocate");
        assert_eq!(c.channel_bind(PEER_CH, peer_addr), 200);
        let payload = format!("first packet of allocation {round}");
        c.send_channel_data(PEER_CH, payload.as_bytes());
        let (got, from) = peer_recv(&peer);
        assert_eq!(got, payload.as_bytes(), "round {round}");
        assert_eq!(Some(from), c.relayed);
        assert_eq!(c.refresh(Some(0)), 200);
    }
    let m = scrape(server.http_addr());
    assert_eq!(
        m.value(
            "turnpike_dropped_packets_total",
            &[("reason", "send_buffer_full")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "turnpike_relayed_packets_total",
            &[("direction", "to_peer")]
        ),
        ROUNDS as f64
    );
}

#[test]
fn expired_allocations_are_counted_as_expired() {
    // The shortest lifetime the config allows, so the wait is short; the
    // poll is bounded well above it.
    let server = TestServer::start(&config("max_lifetime = \"10s\""));
    let h = server.http_addr();
    let before = scrape(h);
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    c.allocate(creds()).unwrap();
    let peer = udp_peer();
    assert_eq!(c.channel_bind(PEER_CH, peer.local_addr().unwrap()), 200);
    let end = wait_until(
        "the allocation to expire",
        std::time::Duration::from_secs(40),
        || {
            let m = scrape(h);
            (m.value("turnpike_allocations_expired_total", &[]) == 1.0).then_some(m)
        },
    );
    assert_deltas(
        &before,
        &end,
        &[
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "401")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "200")],
                1.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "channel_bind"), ("code", "200")],
                1.0,
            ),
            ("turnpike_allocations_created_total", &[], 1.0),
            ("turnpike_allocations_expired_total", &[], 1.0),
        ],
    );
    assert_eq!(c.refresh(Some(600)), 437, "gone");
}

#[test]
fn tls_connections_and_ipv6_allocations_have_their_own_series() {
    let cert = self_signed_cert();
    let server = TestServer::start(&format!(
        r#"
[server]
realm = "metrics.test"

[[listen]]
transport = "tls"
addr = "127.0.0.1:0"
cert = {cert}
key = {key}

[[listen]]
transport = "udp"
addr = "[::1]:0"

[relay]
bind_ip = "127.0.0.1"
bind_ip6 = "::1"
ports = "45500-45999"

[auth]
secrets = ["{SECRET}"]

[policy]
allow_peers = ["::1/128"]
"#,
        cert = cert.cert_toml(),
        key = cert.key_toml()
    ));
    let h = server.http_addr();
    let before = scrape(h);

    let mut t = TurnClient::tls(server.addr(Transport::Tls, false), cert.client_config());
    t.allocate(creds()).expect("TLS allocate");
    let mut u = TurnClient::udp(server.addr(Transport::Udp, true));
    let s = u.challenge(creds());
    let resp = u.allocate_signed(
        &s,
        &turnpike_proto::client::AllocateOptions {
            family: Some(turnpike_proto::wire::attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    assert_eq!(code_of(&resp), 200);
    let relayed6 = u.relayed.unwrap();
    assert_eq!(relayed6.ip().to_string(), "::1");
    // Relay over IPv6, both ways.
    let peer = std::net::UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(u.channel_bind(PEER_CH, peer.local_addr().unwrap()), 200);
    relay_both_ways(&mut u, PEER_CH, &peer, "v6");

    let mid = scrape(h);
    assert_deltas(
        &before,
        &mid,
        &[
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "401")],
                2.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "allocate"), ("code", "200")],
                2.0,
            ),
            (
                "turnpike_requests_total",
                &[("method", "channel_bind"), ("code", "200")],
                1.0,
            ),
            ("turnpike_allocations_created_total", &[], 2.0),
            (
                "turnpike_allocations_active",
                &[("transport", "tls"), ("family", "ipv4")],
                1.0,
            ),
            (
                "turnpike_allocations_active",
                &[("transport", "udp"), ("family", "ipv6")],
                1.0,
            ),
            ("turnpike_permissions_active", &[], 1.0),
            ("turnpike_channels_active", &[], 1.0),
            (
                "turnpike_relayed_packets_total",
                &[("direction", "to_peer")],
                1.0,
            ),
            (
                "turnpike_relayed_bytes_total",
                &[("direction", "to_peer")],
                "to-peer v6".len() as f64,
            ),
            (
                "turnpike_relayed_packets_total",
                &[("direction", "to_client")],
                1.0,
            ),
            (
                "turnpike_relayed_bytes_total",
                &[("direction", "to_client")],
                "to-client v6".len() as f64,
            ),
            ("turnpike_connections_open", &[("transport", "tls")], 1.0),
        ],
    );
    drop(t);
    wait_until("the TLS connection to close", POLL_LIMIT, || {
        let m = scrape(h);
        (m.value("turnpike_connections_open", &[("transport", "tls")]) == 0.0
            && m.value(
                "turnpike_allocations_active",
                &[("transport", "tls"), ("family", "ipv4")],
            ) == 0.0)
            .then_some(())
    });
}
