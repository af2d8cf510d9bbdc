//! The network-namespace NAT lab itself (tests/common/netns.rs): each NAT
//! mode maps and filters as its name says, spawned children run inside
//! their namespace, and teardown runs even when the test panics.
//!
//! Root only: without root (or iproute2/nftables) each test prints a loud
//! SKIPPED banner and asserts nothing. CI runs as root.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use common::netns::{
    Lab, Nat, PUBLIC_GATEWAY, RULE_FULL_CONE, RULE_TCP_ONLY, RULE_UNSOLICITED, Site, netns_path,
};
use common::{IO_TIMEOUT, START_TIMEOUT, binding_request, new_tid, turnpike_bin, udp_roundtrip};
use turnpike_proto::wire::Message;

const MARKER: &[u8] = b"marker";

/// Receive one datagram on `sock` (timeout [`IO_TIMEOUT`] = failure) that
/// must carry `want`; return its source.
fn recv_payload(sock: &UdpSocket, want: &[u8]) -> SocketAddr {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "{:?}: no datagram {:?} within {IO_TIMEOUT:?}: {e}",
            sock.local_addr(),
            String::from_utf8_lossy(want)
        )
    });
    assert_eq!(&buf[..n], want, "payload received from {from}");
    from
}

/// Read datagrams until every payload in `must` has arrived (a missing one
/// fails after [`IO_TIMEOUT`]), then take whatever else is already queued
/// without waiting. Returns (source, payload) in arrival order.
fn collect(sock: &UdpSocket, must: &[&[u8]], site: &Site) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 1500];
    while !must.iter().all(|m| got.iter().any(|(_, p)| p == m)) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => got.push((from, buf[..n].to_vec())),
            Err(e) => panic!(
                "{:?} behind {:?}: still missing some of {:?} after {IO_TIMEOUT:?} ({e}); got {got:?}\nrouter ruleset:\n{}",
                site.client_ip,
                site.nat,
                must.iter()
                    .map(|m| String::from_utf8_lossy(m))
                    .collect::<Vec<_>>(),
                site.router.nft_list()
            ),
        }
    }
    sock.set_nonblocking(true).unwrap();
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        got.push((from, buf[..n].to_vec()));
    }
    sock.set_nonblocking(false).unwrap();
    got
}

/// Mapping: one client socket sends to two public endpoints (different
/// addresses); the source ports they see are equal for endpoint-independent
/// mapping (PortRestricted, FullCone: and equal to the client's own port,
/// as plain masquerade keeps it) and differ for Symmetric.
///
/// Filtering: two unsolicited senders (a third address, and the first
/// endpoint's address from another port) send to the mapping the client
/// opened towards the first endpoint; then the first endpoint itself sends
/// a marker, on the path the client opened. FullCone must deliver all
/// three; PortRestricted and Symmetric only the marker.
///
/// How a datagram that must NOT arrive is checked, without an idle timed
/// wait: (1) positive evidence that the router dropped it: the counter of
/// its "unsolicited inbound UDP" drop rule reaches exactly 2 (a bounded
/// retry on the counter; normally the first read already shows it, as the
/// kernel handles each datagram in the sender's softirq before send_to
/// returns); (2) the marker, sent last on the allowed path, arrives, and
/// whatever else is already queued on the client socket is drained
/// without waiting and must be nothing. A dropped datagram cannot arrive
/// later, so the result is decided by events; the only timeouts are
/// failure guards. (A plain receive timeout would also work but would
/// cost an idle second per mode and prove less.)
#[test]
fn nat_modes_behave_as_named() {
    let Some(lab) = Lab::new("tnat") else {
        return;
    };
    let net = lab.internet();
    let p2_ip = Ipv4Addr::new(203, 0, 113, 2);
    let p3_ip = Ipv4Addr::new(203, 0, 113, 3);
    net.add_ip(p2_ip);
    net.add_ip(p3_ip);
    let sites = [
        lab.nat_site(&net, 1, Nat::Symmetric),
        lab.nat_site(&net, 2, Nat::PortRestricted),
        lab.nat_site(&net, 3, Nat::FullCone),
    ];
    let p1 = net.ns.udp_bind(SocketAddr::from((PUBLIC_GATEWAY, 0)));
    let p1_other_port = net.ns.udp_bind(SocketAddr::from((PUBLIC_GATEWAY, 0)));
    let p2 = net.ns.udp_bind(SocketAddr::from((p2_ip, 0)));
    let p3 = net.ns.udp_bind(SocketAddr::from((p3_ip, 0)));
    let p1_addr = p1.local_addr().unwrap();
    let p2_addr = p2.local_addr().unwrap();

    for site in &sites {
        let nat = site.nat.nat;
        let c = site
            .client
            .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let local = SocketAddr::from((site.client_ip, c.local_addr().unwrap().port()));

        // Mapping.
        c.send_to(b"to-p1", p1_addr).unwrap();
        c.send_to(b"to-p2", p2_addr).unwrap();
        let seen1 = recv_payload(&p1, b"to-p1");
        let seen2 = recv_payload(&p2, b"to-p2");
        eprintln!(
            "{nat:?}: client {local} is seen as {seen1} by {p1_addr} and as {seen2} by {p2_addr}"
        );
        assert_eq!(seen1.ip(), site.outside_ip, "{nat:?}: source address");
        assert_eq!(seen2.ip(), site.outside_ip, "{nat:?}: source address");
        match nat {
            Nat::Symmetric => assert_ne!(
                seen1.port(),
                seen2.port(),
                "{nat:?}: a new destination must get a new mapping"
            ),
            Nat::PortRestricted | Nat::FullCone => {
                assert_eq!(seen1.port(), seen2.port(), "{nat:?}: one mapping for all");
                assert_eq!(seen1.port(), local.port(), "{nat:?}: source port kept");
            }
        }

        // Filtering.
        p3.send_to(b"from-p3", seen1).unwrap();
        p1_other_port.send_to(b"from-p1-other-port", seen1).unwrap();
        p1.send_to(MARKER, seen1).unwrap();
        let unsolicited: [&[u8]; 2] = [b"from-p3", b"from-p1-other-port"];
        if nat == Nat::FullCone {
            site.router.wait_nft_packets(RULE_FULL_CONE, 2);
            assert_eq!(site.router.nft_packets(RULE_UNSOLICITED), 0);
        } else {
            site.router.wait_nft_packets(RULE_UNSOLICITED, 2);
        }
        let got = collect(
            &c,
            &if nat == Nat::FullCone {
                vec![unsolicited[0], unsolicited[1], MARKER]
            } else {
                vec![MARKER]
            },
            site,
        );
        let payloads: Vec<String> = got
            .iter()
            .map(|(from, p)| format!("{} from {from}", String::from_utf8_lossy(p)))
            .collect();
        eprintln!("{nat:?}: client received {payloads:?}");
        let expected = if nat == Nat::FullCone { 3 } else { 1 };
        assert_eq!(
            got.len(),
            expected,
            "{nat:?}: datagrams delivered to the client: {payloads:?}\nrouter ruleset:\n{}",
            site.router.nft_list()
        );
        if nat == Nat::FullCone {
            // The sources are the real senders: full cone rewrites only
            // the destination.
            let from_p3 = got.iter().find(|(_, p)| p == b"from-p3").unwrap().0;
            assert_eq!(from_p3, p3.local_addr().unwrap());
        }
    }
}

/// A child spawned with `Lab::spawn` runs in its namespace (turnpike
/// binds 203.0.113.1, which exists only there, and answers a Binding from
/// behind a NAT with the NAT's address), and when the test panics the lab
/// still kills the child and deletes every namespace it made.
#[test]
fn lab_teardown_runs_on_panic_and_kills_children() {
    let Some(lab) = Lab::new("tdown") else {
        return;
    };
    let seen: Mutex<Option<(Vec<String>, u32)>> = Mutex::new(None);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("turnpike.toml");
    std::fs::write(
        &config,
        "[server]\nthreads = 1\n[[listen]]\ntransport = \"udp\"\naddr = \"203.0.113.1:3478\"\n[auth]\nsecrets = [\"s\"]\n",
    )
    .unwrap();

    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = lab;
        let net = lab.internet();
        let site = lab.nat_site(&net, 1, Nat::PortRestricted);
        let server = lab.spawn(
            "turnpike",
            net.ns
                .cmd(turnpike_bin())
                .arg("serve")
                .arg("--config")
                .arg(&config),
        );
        let line = server.wait_line(START_TIMEOUT, |l| l.starts_with("listening "));
        assert_eq!(line, "listening udp 203.0.113.1:3478");

        let c = site
            .client
            .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let tid = new_tid();
        let resp = udp_roundtrip(
            &c,
            "203.0.113.1:3478".parse().unwrap(),
            &binding_request(tid, true),
        );
        let mapped = Message::parse(&resp).unwrap().xor_mapped_address().unwrap();
        let want = SocketAddr::from((site.outside_ip, c.local_addr().unwrap().port()));
        assert_eq!(
            mapped,
            Some(want),
            "server-reflexive address behind the NAT"
        );

        *seen.lock().unwrap() = Some((lab.namespaces(), server.pid()));
        // Only the lab may kill it now: the handle's own Drop would
        // hide whether the lab does.
        std::mem::forget(server);
        // Unwind as a failing test would, without the panic hook's
        // message and backtrace in the output.
        std::panic::resume_unwind(Box::new("deliberate panic inside a lab"));
    }));
    assert!(result.is_err(), "the closure panics on purpose");

    let (namespaces, pid) = seen
        .into_inner()
        .unwrap()
        .expect("the lab part ran up to the deliberate panic");
    assert_eq!(namespaces.len(), 3, "pub, r1, c1: {namespaces:?}");
    for ns in &namespaces {
        assert!(!netns_path(ns).exists(), "namespace {ns} survived the lab");
    }
    let pid = libc::pid_t::try_from(pid).unwrap();
    // Signal 0 only checks for existence.
    let (rc, err) = match turnpike_sys::process::kill(pid, 0) {
        Ok(()) => (0, std::io::Error::from_raw_os_error(0)),
        Err(e) => (-1, e),
    };
    assert!(
        rc == -1 && err.raw_os_error() == Some(libc::ESRCH),
        "turnpike (pid {pid}) survived the lab: kill(pid, 0) = {rc} ({err})"
    );
}

/// `Nat::tcp_only`: the router lets the inside host's TCP out (to a public
/// host in its own namespace, `Internet::add_host`) and drops its UDP. The drop is shown by the firewall rule's counter (positive
/// evidence, no timed wait): a datagram dropped at the router cannot
/// arrive later.
#[test]
fn tcp_only_firewall_lets_only_tcp_out() {
    let Some(lab) = Lab::new("ttcp") else {
        return;
    };
    let net = lab.internet();
    let site = lab.nat_site(&net, 1, Nat::PortRestricted.tcp_only());
    // The TCP server is a public host with its own namespace.
    let host_ip = Ipv4Addr::new(203, 0, 113, 50);
    let host = net.add_host(&lab, "h50", "h50", host_ip);
    let listener = host.in_ns(|| TcpListener::bind(SocketAddr::from((host_ip, 0))).unwrap());
    let target = listener.local_addr().unwrap();

    let stream = site.client.tcp_connect(target);
    let (_, seen) = listener.accept().unwrap();
    drop(stream);
    eprintln!("TCP from {} arrives from {seen}", site.client_ip);
    assert_eq!(seen.ip(), site.outside_ip, "TCP leaves through the NAT");

    let udp_target = net.ns.udp_bind(SocketAddr::from((PUBLIC_GATEWAY, 0)));
    let c = site
        .client
        .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    for _ in 0..2 {
        c.send_to(b"udp out", udp_target.local_addr().unwrap())
            .unwrap();
    }
    site.router.wait_nft_packets(RULE_TCP_ONLY, 2);
    eprintln!("2 outbound UDP datagrams dropped by the router's tcp-only rule");
}
