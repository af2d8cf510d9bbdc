//! `turnpike loadgen` against the built server: every subcommand runs,
//! prints JSON of the documented shape, its counts are consistent with
//! each other, and the server's own /metrics counters agree with what the
//! generator says crossed it. Nothing here asserts a rate or a latency
//! bound (the machine may be busy); the time limits only catch hangs.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{TestServer, Transport, run_bounded, turnpike_bin};
use turnpike::loadgen::{AllocationsReport, BindingReport, Percentiles, RelayReport};

/// Only a guard against a hung generator; runs take a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn server() -> TestServer {
    TestServer::start(
        r#"
[server]
threads = 2
realm = "bench"
[[listen]]
transport = "udp"
addr = "127.0.0.1:0"
[relay]
bind_ip = "127.0.0.1"
ports = "49152-65535"
[auth]
secrets = ["S"]
[policy]
allow_peers = ["127.0.0.1/32"]
max_allocations_per_user = 100000
"#,
    )
}

fn loadgen(args: &[&str]) -> String {
    let (status, out, err) = run_bounded(
        Command::new(turnpike_bin()).arg("loadgen").args(args),
        RUN_LIMIT,
    );
    assert!(
        status.success(),
        "loadgen {args:?} failed: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// The server's /metrics, as (series, value) pairs.
fn metrics(http: SocketAddr) -> Vec<(String, f64)> {
    let r = common::ops::get(http, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &[(String, f64)], series: &str) -> f64 {
    m.iter()
        .find(|(k, _)| k == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

fn delta(before: &[(String, f64)], after: &[(String, f64)], series: &str) -> f64 {
    metric(after, series) - metric(before, series)
}

fn assert_ordered(p: &Percentiles, what: &str) {
    assert!(p.samples > 0, "{what}: no samples");
    assert!(
        p.min_us <= p.p50_us
            && p.p50_us <= p.p90_us
            && p.p90_us <= p.p99_us
            && p.p99_us <= p.p999_us
            && p.p999_us <= p.max_us,
        "{what}: percentiles out of order: {p:?}"
    );
}

const TO_PEER: &str = r#"turnpike_relayed_packets_total{direction="to_peer"}"#;
const TO_CLIENT: &str = r#"turnpike_relayed_packets_total{direction="to_client"}"#;
const CREATED: &str = "turnpike_allocations_created_total";
const DELETED: &str = r#"turnpike_allocations_deleted_total{reason="refresh"}"#;

fn check_relay(r: &RelayReport, allocations: usize) {
    let rt = &r.round_trips;
    assert_eq!(r.allocations, allocations);
    assert!(rt.sent > 0, "no round trips sent: {r:?}");
    assert!(r.relayed_msgs > 0, "nothing relayed: {r:?}");
    assert_eq!(rt.completed + rt.lost, rt.sent, "{rt:?}");
    assert!(rt.late <= rt.lost, "{rt:?}");
    let loss = 100.0 * rt.lost as f64 / rt.sent as f64;
    assert!(
        (r.loss_pct - loss).abs() < 1e-9,
        "loss {} vs {loss}",
        r.loss_pct
    );
    // Two relayed messages per completed round trip at least, two per
    // round trip sent at most; nothing relayed that was not offered.
    assert!(r.relayed_msgs >= 2 * rt.completed, "{r:?}");
    assert!(r.relayed_msgs <= 2 * rt.sent, "{r:?}");
    assert!(r.relayed_msgs <= r.offered_msgs, "{r:?}");
    assert_eq!(r.rtt_us.samples, rt.completed);
    assert_ordered(&r.rtt_us, "RTT");
    assert_eq!(r.teardown_failures, 0, "allocations not deleted");
    assert!(r.definitions.contains("2 relayed messages"));
    let s = r.server.as_ref().expect("--server-pid given: server usage");
    assert!(s.cpu_s >= 0.0 && s.window_s > 0.0);
    assert!(s.rss_end_bytes > 0);
    assert_eq!(s.units, r.relayed_msgs);
    assert!(
        r.kernel_udp_rcvbuf_errors.is_some(),
        "/proc/net/snmp is readable on Linux"
    );
}

#[test]
fn relay_c2c_channel_agrees_with_server_metrics() {
    let srv = server();
    let addr = srv.addr(Transport::Udp, false).to_string();
    let pid = srv.pid().to_string();
    let before = metrics(srv.http_addr());
    let out = loadgen(&[
        "relay",
        "--server",
        &addr,
        "--secret",
        "S",
        "--allocations",
        "4",
        "--mode",
        "c2c",
        "--method",
        "channel",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "2000",
        "--server-pid",
        &pid,
        "--json",
    ]);
    let r: RelayReport = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let after = metrics(srv.http_addr());
    check_relay(&r, 4);
    assert_eq!(r.mode, "c2c");
    assert_eq!(r.sending_allocations, 2, "c2c: one sender per pair");
    // The server saw what the generator says crossed it: every message a
    // client received came out of the server towards a client, and the
    // server sent no more than the clients gave it.
    let (to_peer, to_client) = (
        delta(&before, &after, TO_PEER),
        delta(&before, &after, TO_CLIENT),
    );
    let t = &r.totals;
    assert!(
        t.client_received as f64 <= to_client
            && to_client <= to_peer
            && to_peer <= t.client_sent as f64,
        "generator received {} ≤ server to_client {to_client} ≤ to_peer {to_peer} ≤ generator sent {}",
        t.client_received,
        t.client_sent
    );
    assert_eq!(delta(&before, &after, CREATED), 4.0);
    assert_eq!(delta(&before, &after, DELETED), 4.0);
}

#[test]
fn relay_echo_send_agrees_with_server_metrics() {
    let srv = server();
    let addr = srv.addr(Transport::Udp, false).to_string();
    let pid = srv.pid().to_string();
    let before = metrics(srv.http_addr());
    let out = loadgen(&[
        "relay",
        "--server",
        &addr,
        "--secret",
        "S",
        "--allocations",
        "4",
        "--mode",
        "echo",
        "--method",
        "send",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "2000",
        "--server-pid",
        &pid,
        "--json",
    ]);
    let r: RelayReport = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let after = metrics(srv.http_addr());
    check_relay(&r, 4);
    assert_eq!(r.method, "send");
    assert_eq!(r.sending_allocations, 4, "echo: every allocation sends");
    let (to_peer, to_client) = (
        delta(&before, &after, TO_PEER),
        delta(&before, &after, TO_CLIENT),
    );
    let t = &r.totals;
    assert!(
        t.peer_received as f64 <= to_peer && to_peer <= t.client_sent as f64,
        "peer received {} ≤ server to_peer {to_peer} ≤ clients sent {}",
        t.peer_received,
        t.client_sent
    );
    assert!(
        t.client_received as f64 <= to_client && to_client <= t.peer_received as f64,
        "clients received {} ≤ server to_client {to_client} ≤ peer echoed {}",
        t.client_received,
        t.peer_received
    );
    assert_eq!(delta(&before, &after, CREATED), 4.0);
}

#[test]
fn allocations_agree_with_server_metrics() {
    let srv = server();
    let addr = srv.addr(Transport::Udp, false).to_string();
    let before = metrics(srv.http_addr());
    let out = loadgen(&[
        "allocations",
        "--server",
        &addr,
        "--secret",
        "S",
        "--count",
        "20",
        "--concurrency",
        "4",
        "--json",
    ]);
    let r: AllocationsReport = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let after = metrics(srv.http_addr());
    assert_eq!((r.setups_ok, r.setups_failed), (20, 0), "{:?}", r.errors);
    assert_eq!((r.deletes_ok, r.deletes_failed), (20, 0));
    assert_eq!(r.setup_latency_us.samples, 20);
    assert_ordered(&r.setup_latency_us, "set-up latency");
    assert!(r.setups_per_s > 0.0);
    assert_eq!(delta(&before, &after, CREATED), 20.0);
    assert_eq!(delta(&before, &after, DELETED), 20.0);
    // One 401 challenge per set-up, then one success each of Allocate,
    // CreatePermission and ChannelBind.
    let ok = |m: &str| format!(r#"turnpike_requests_total{{method="{m}",code="200"}}"#);
    for m in ["allocate", "create_permission", "channel_bind"] {
        assert_eq!(delta(&before, &after, &ok(m)), 20.0, "{m}");
    }
    assert_eq!(
        delta(
            &before,
            &after,
            r#"turnpike_requests_total{method="allocate",code="401"}"#
        ),
        20.0
    );
}

#[test]
fn binding_agrees_with_server_metrics() {
    let srv = server();
    let addr = srv.addr(Transport::Udp, false).to_string();
    let before = metrics(srv.http_addr());
    let out = loadgen(&[
        "binding",
        "--server",
        &addr,
        "--duration",
        "1",
        "--warmup",
        "0",
        "--sockets",
        "2",
        "--window",
        "4",
        "--json",
    ]);
    let r: BindingReport = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let after = metrics(srv.http_addr());
    assert!(r.answered > 0, "{r:?}");
    assert_eq!(r.answered + r.lost, r.sent, "{r:?}");
    assert_eq!(r.bad_answers, 0);
    assert_eq!(r.rtt_us.samples, r.answered);
    assert_ordered(&r.rtt_us, "Binding RTT");
    // With no warm-up every request is counted: the server answered at
    // least the ones that came back and saw no more than were sent.
    let served = delta(&before, &after, "turnpike_binding_requests_total");
    assert!(
        r.answered as f64 <= served && served <= r.sent as f64,
        "answered {} ≤ server count {served} ≤ sent {}",
        r.answered,
        r.sent
    );
}

#[test]
fn refuses_bad_arguments_without_running() {
    let (status, _, err) = run_bounded(
        Command::new(turnpike_bin()).args([
            "loadgen",
            "relay",
            "--server",
            "127.0.0.1:9",
            "--secret",
            "S",
            "--allocations",
            "3",
            "--mode",
            "c2c",
            "--duration",
            "1",
        ]),
        RUN_LIMIT,
    );
    assert!(!status.success());
    assert!(err.contains("even"), "{err}");
}
