//! End-to-end: the built `turnpike` binary answers STUN Binding requests
//! over UDP, TCP and TLS on IPv4 and IPv6 loopback, and stops cleanly on
//! SIGTERM and SIGINT.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;

/// UDP, TCP and TLS on 127.0.0.1 and [::1], all on port 0.
fn all_transports_config(cert: &TestCert, server_section: &str) -> String {
    let mut s = format!("[server]\n{server_section}\n");
    for ip in ["127.0.0.1", "[::1]"] {
        s += &format!("[[listen]]\ntransport = \"udp\"\naddr = \"{ip}:0\"\n");
        s += &format!("[[listen]]\ntransport = \"tcp\"\naddr = \"{ip}:0\"\n");
        s += &format!(
            "[[listen]]\ntransport = \"tls\"\naddr = \"{ip}:0\"\ncert = {}\nkey = {}\n",
            cert.cert_toml(),
            cert.key_toml()
        );
    }
    s
}

/// One Binding request per FINGERPRINT choice on a fresh client of the
/// given transport; checks the response exactly.
fn check_transport(
    server: &TestServer,
    cert: &TestCert,
    transport: Transport,
    ipv6: bool,
    software: Option<&str>,
) {
    let addr = server.addr(transport, ipv6);
    assert_eq!(addr.is_ipv6(), ipv6);
    assert_ne!(addr.port(), 0, "the server reports the real port");
    for fp in [false, true] {
        let tid = new_tid();
        let req = binding_request(tid, fp);
        let (resp, mapped): (Vec<u8>, SocketAddr) = match transport {
            Transport::Udp => {
                let sock = udp_client(ipv6);
                (udp_roundtrip(&sock, addr, &req), sock.local_addr().unwrap())
            }
            Transport::Tcp => {
                let tcp = tcp_connect(addr);
                let mapped = tcp.local_addr().unwrap();
                (FrameReader::new(tcp).roundtrip(&req), mapped)
            }
            Transport::Tls => {
                let tls = tls_connect(addr, cert.client_config());
                let mapped = tls.sock.local_addr().unwrap();
                (FrameReader::new(tls).roundtrip(&req), mapped)
            }
        };
        assert_eq!(mapped.ip(), loopback(ipv6));
        check_binding_success(
            &resp,
            &Expect {
                tid,
                mapped,
                software,
                fingerprint: fp,
            },
        );
        println!(
            "{transport} {addr}: {} byte answer, fingerprint={fp}, mapped={mapped}",
            resp.len()
        );
    }
}

fn binding_on(transport: Transport, ipv6: bool) {
    let cert = self_signed_cert();
    let server = TestServer::start(&all_transports_config(&cert, ""));
    assert_eq!(server.listeners().len(), 6, "{:?}", server.listeners());
    // Unauthenticated answers carry no SOFTWARE (issue 12: amplification).
    check_transport(&server, &cert, transport, ipv6, None);
}

#[test]
fn udp_ipv4() {
    binding_on(Transport::Udp, false);
}

#[test]
fn udp_ipv6() {
    binding_on(Transport::Udp, true);
}

#[test]
fn tcp_ipv4() {
    binding_on(Transport::Tcp, false);
}

#[test]
fn tcp_ipv6() {
    binding_on(Transport::Tcp, true);
}

#[test]
fn tls_ipv4() {
    binding_on(Transport::Tls, false);
}

#[test]
fn tls_ipv6() {
    binding_on(Transport::Tls, true);
}

/// SOFTWARE goes only into authenticated answers (issue 12: an
/// unauthenticated answer stays small); a Binding never carries it.
#[test]
fn custom_software_is_not_sent_unauthenticated() {
    let cert = self_signed_cert();
    let server = TestServer::start(&all_transports_config(&cert, "software = \"e2e probe/1\""));
    for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        check_transport(&server, &cert, t, false, None);
    }
}

#[test]
fn empty_software_hides_the_attribute() {
    let cert = self_signed_cert();
    let server = TestServer::start(&all_transports_config(&cert, "software = \"\""));
    for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for v6 in [false, true] {
            check_transport(&server, &cert, t, v6, None);
        }
    }
}

/// Several shards (SO_REUSEPORT): every client, whichever shard the kernel
/// gives it to, is answered with its own address.
#[test]
fn many_udp_clients_over_two_shards() {
    let server = TestServer::start(
        "[server]\nthreads = 2\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n",
    );
    let addr = server.addr(Transport::Udp, false);
    for _ in 0..32 {
        let sock = udp_client(false);
        let tid = new_tid();
        let resp = udp_roundtrip(&sock, addr, &binding_request(tid, true));
        check_binding_success(
            &resp,
            &Expect {
                tid,
                mapped: sock.local_addr().unwrap(),
                software: None,
                fingerprint: true,
            },
        );
    }
}

fn stream_config(cert: &TestCert) -> String {
    format!(
        "[server]\nthreads = 1\n[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddr = \"[::1]:0\"\ncert = {}\nkey = {}\n",
        cert.cert_toml(),
        cert.key_toml()
    )
}

/// Sequential requests, two frames in one write, one frame split across
/// writes, and a burst of 50 pipelined frames in one write, all on one
/// connection; every answer in order with its own transaction ID.
fn many_requests_on_one_stream<S: std::io::Read + std::io::Write>(
    conn: &mut FrameReader<S>,
    mapped: SocketAddr,
) {
    let expect = |tid, fp| Expect {
        tid,
        mapped,
        software: None,
        fingerprint: fp,
    };
    // Sequential.
    for i in 0..3 {
        let tid = new_tid();
        let resp = conn.roundtrip(&binding_request(tid, i % 2 == 1));
        check_binding_success(&resp, &expect(tid, i % 2 == 1));
    }
    // Two frames in one write.
    let (t1, t2) = (new_tid(), new_tid());
    let mut two = binding_request(t1, false);
    two.extend_from_slice(&binding_request(t2, true));
    conn.send(&two);
    check_binding_success(&conn.next_frame(), &expect(t1, false));
    check_binding_success(&conn.next_frame(), &expect(t2, true));
    // One frame split across writes: inside the header, then the rest.
    let t3 = new_tid();
    let req = binding_request(t3, true);
    conn.send(&req[..3]);
    conn.send(&req[3..11]);
    conn.send(&req[11..]);
    check_binding_success(&conn.next_frame(), &expect(t3, true));
    // The end of one frame and the start of the next in one write.
    let (t4, t5) = (new_tid(), new_tid());
    let (r4, r5) = (binding_request(t4, false), binding_request(t5, false));
    conn.send(&r4[..10]);
    let mut glued = r4[10..].to_vec();
    glued.extend_from_slice(&r5[..7]);
    conn.send(&glued);
    conn.send(&r5[7..]);
    check_binding_success(&conn.next_frame(), &expect(t4, false));
    check_binding_success(&conn.next_frame(), &expect(t5, false));
    // A pipelined burst.
    let tids: Vec<_> = (0..50).map(|_| new_tid()).collect();
    let burst: Vec<u8> = tids
        .iter()
        .enumerate()
        .flat_map(|(i, t)| binding_request(*t, i % 3 == 0))
        .collect();
    conn.send(&burst);
    for (i, t) in tids.iter().enumerate() {
        check_binding_success(&conn.next_frame(), &expect(*t, i % 3 == 0));
    }
}

#[test]
fn tcp_many_requests_on_one_connection() {
    let cert = self_signed_cert();
    let server = TestServer::start(&stream_config(&cert));
    let tcp = tcp_connect(server.addr(Transport::Tcp, false));
    let mapped = tcp.local_addr().unwrap();
    many_requests_on_one_stream(&mut FrameReader::new(tcp), mapped);
}

#[test]
fn tls_many_requests_on_one_connection() {
    let cert = self_signed_cert();
    let server = TestServer::start(&stream_config(&cert));
    let tls = tls_connect(server.addr(Transport::Tls, true), cert.client_config());
    let mapped = tls.sock.local_addr().unwrap();
    many_requests_on_one_stream(&mut FrameReader::new(tls), mapped);
}

/// Start, prove it serves (and hold a TCP connection open), send `signal`:
/// the process exits with success and logs that it stopped.
fn stops_cleanly_on(signal: Signal) {
    let mut server = TestServer::start(
        "[server]\nthreads = 2\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n",
    );
    let sock = udp_client(false);
    let tid = new_tid();
    let resp = udp_roundtrip(
        &sock,
        server.addr(Transport::Udp, false),
        &binding_request(tid, false),
    );
    check_binding_success(
        &resp,
        &Expect {
            tid,
            mapped: sock.local_addr().unwrap(),
            software: None,
            fingerprint: false,
        },
    );
    // An open, idle connection must not keep the server from stopping.
    let tcp = tcp_connect(server.addr(Transport::Tcp, false));
    let mut conn = FrameReader::new(tcp);
    let tid = new_tid();
    assert!(!conn.roundtrip(&binding_request(tid, false)).is_empty());

    let t0 = Instant::now();
    let status = server.stop(signal);
    println!(
        "{}: exited {status} after {:?}",
        signal.name(),
        t0.elapsed()
    );
    let stderr = server.stderr_text();
    assert!(
        status.success(),
        "{}: exit status {status}; stderr:\n{stderr}",
        signal.name()
    );
    assert!(stderr.contains("shutting down"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(signal.name()),
        "stderr names the signal:\n{stderr}"
    );
    assert!(stderr.contains("stopped"), "stderr:\n{stderr}");
    // The open connection was closed by the server, not left dangling.
    conn.expect_closed();
}

#[test]
fn sigterm_stops_cleanly() {
    stops_cleanly_on(Signal::Term);
}

#[test]
fn sigint_stops_cleanly() {
    stops_cleanly_on(Signal::Int);
}

/// A signal the moment the listeners are announced (no traffic first) is
/// still a clean shutdown: the handlers are in place before the server
/// says it is listening. Repeated, because the window is short.
#[test]
fn signal_right_after_start_is_clean() {
    for i in 0..10 {
        let signal = if i % 2 == 0 {
            Signal::Term
        } else {
            Signal::Int
        };
        let mut server = TestServer::start(
            "[server]\nthreads = 1\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n",
        );
        let status = server.stop(signal);
        let stderr = server.stderr_text();
        assert!(
            status.success(),
            "run {i}, {}: exit status {status}; stderr:\n{stderr}",
            signal.name()
        );
        assert!(stderr.contains("stopped"), "stderr:\n{stderr}");
    }
}
