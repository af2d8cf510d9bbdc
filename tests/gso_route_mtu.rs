//! UDP GSO on a route with a small MTU (`io::batch::SendBatch::flush`).
//! The kernel does not fragment GSO sends: it refuses a run whose segment
//! plus headers exceeds the route's MTU (EMSGSIZE; EINVAL on older
//! kernels). The batch must then
//! deliver the run one datagram at a time, learn the route's limit, and
//! keep GSO for runs that fit.
//!
//! The test runs in a network namespace of its own (`unshare` on the test's
//! thread, so the process's other threads keep theirs) whose loopback
//! device has an MTU of 1280. The GSO state is per process, so it lives in a
//! test binary of its own. Root only: without root (or iproute2) the test
//! prints a loud SKIPPED banner and asserts nothing. CI runs as root.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use turnpike_sys::batch::{SendBatch, UdpSocketState};

const LO_MTU: usize = 1280;

fn skipped(why: &str) {
    eprintln!(
        "\n********************************************************\n\
         SKIPPED gso_route_mtu: {why}\n\
         ********************************************************\n"
    );
}

/// Move this thread into a new network namespace with `lo` up at MTU
/// [`LO_MTU`]. `Err` says why not.
fn enter_small_mtu_namespace() -> Result<(), String> {
    if turnpike_sys::process::euid() != 0 {
        return Err("needs root for a network namespace".into());
    }
    // Moves only the calling thread.
    if let Err(e) = turnpike_sys::netns::unshare() {
        return Err(format!("unshare(CLONE_NEWNET): {e}"));
    }
    // A child spawned from this thread starts in its namespace.
    let out = Command::new("ip")
        .args(["link", "set", "lo", "mtu", &LO_MTU.to_string(), "up"])
        .output()
        .map_err(|e| format!("ip (iproute2) not runnable: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link set lo mtu {LO_MTU} up: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Queue `count` datagrams of `size` bytes for `to` (each filled with its
/// index), flush them from `tx` as one batch, and check that every one
/// arrives whole and in order at `rx`.
fn send_run(tx: &UdpSocket, rx: &UdpSocket, size: usize, count: u8, state: &UdpSocketState) {
    let to = rx.local_addr().unwrap();
    let data: Vec<Vec<u8>> = (0..count).map(|i| vec![i; size]).collect();
    let mut batch = SendBatch::new();
    for d in &data {
        batch.push(d, to);
    }
    assert_eq!(
        batch.flush(tx.as_raw_fd(), state),
        0,
        "{size}-byte run to {to}"
    );
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    for d in &data {
        let (n, _) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{size}-byte datagram {} to {to}: {e}", d[0]));
        assert_eq!(&buf[..n], &d[..], "{size}-byte datagram {} to {to}", d[0]);
    }
}

fn pair(local: &str) -> Option<(UdpSocket, UdpSocket)> {
    let tx = UdpSocket::bind(local).ok()?;
    let rx = UdpSocket::bind(local).ok()?;
    Some((tx, rx))
}

#[test]
fn refused_gso_runs_are_delivered_and_the_cap_drops_to_the_route_mtu() {
    // The namespace is entered on a thread of our own, which ends with the
    // test.
    std::thread::spawn(|| {
        if let Err(why) = enter_small_mtu_namespace() {
            skipped(&why);
            return;
        }
        // One socket state for both senders: what the IPv4 runs taught it
        // carries over to the IPv6 ones, as on one socket.
        let state = UdpSocketState::new(true);
        assert!(state.gso_enabled());
        assert_eq!(state.gso_max_segment(), 1452, "the starting cap");

        let (tx, rx) = pair("127.0.0.1:0").expect("127.0.0.1 in the namespace");
        // 1400-byte segments + 28 bytes of headers > 1280: the kernel
        // refuses the run. Every datagram must still arrive (sent one by
        // one, fragmented by IP), and the cap must drop to what the route
        // carries, 1280 - 20 - 8.
        send_run(&tx, &rx, 1400, 6, &state);
        assert_eq!(state.gso_max_segment(), LO_MTU - 28, "IPv4 route payload");
        assert!(
            state.gso_enabled(),
            "a size refusal must not switch GSO off"
        );
        // Runs that fit still go as GSO sends: exactly at the limit the
        // kernel accepts, so neither the cap nor the switch moves.
        send_run(&tx, &rx, LO_MTU - 28, 6, &state);
        assert_eq!(state.gso_max_segment(), LO_MTU - 28);
        assert!(state.gso_enabled());
        // Above the cap: sent datagram by datagram without a refusal.
        send_run(&tx, &rx, 1300, 4, &state);
        assert_eq!(state.gso_max_segment(), LO_MTU - 28);

        // IPv6 carries 20 bytes less per packet: a run at the IPv4 limit
        // is refused over ::1, and the cap drops to 1280 - 40 - 8.
        match pair("[::1]:0") {
            Some((tx6, rx6)) => {
                send_run(&tx6, &rx6, LO_MTU - 28, 6, &state);
                assert_eq!(state.gso_max_segment(), LO_MTU - 48, "IPv6 route payload");
                assert!(state.gso_enabled());
                send_run(&tx6, &rx6, LO_MTU - 48, 6, &state);
                assert_eq!(state.gso_max_segment(), LO_MTU - 48);
            }
            None => skipped("no ::1 in the namespace (IPv6 off): the IPv6 half did not run"),
        }
        // Back on IPv4, runs at the new cap still pass.
        send_run(&tx, &rx, LO_MTU - 48, 6, &state);
        assert!(state.gso_enabled());
    })
    .join()
    .expect("test thread");
}
