//! Hostile rows of issue 12 item 3: TURN over TCP and TLS against
//! strangers who hold connections open, say nothing, send half a frame,
//! never read, or fill the file-descriptor limit (`[limits]`, "TCP/TLS
//! connections"). Each attack is a `fn(&mut Fixture)` listed in
//! `hostile_rows!`; the rows serve TCP and TLS (`stream: true`).
//!
//! A closed connection is awaited with the failure guard (`GUARD`), never
//! timed; a counter the server bumps before closing is then read exactly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::common::ops::*;
use super::common::*;
use super::{ATTACKER, BYSTANDER, Fixture, GUARD, SECRET, tcp_from};
use turnpike_proto::client::Credentials;
use turnpike_proto::wire::{Class, Message};

/// A second attacker address.
const ATTACKER2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

fn tcp_addr(f: &Fixture) -> SocketAddr {
    f.server.addr(Transport::Tcp, false)
}

fn tls_addr(f: &Fixture) -> SocketAddr {
    f.server.addr(Transport::Tls, false)
}

/// The TLS client config that trusts the rows' TURN certificate.
fn turn_tls(f: &Fixture) -> Arc<rustls::ClientConfig> {
    f.cert
        .as_ref()
        .expect("stream rows have a cert")
        .client_config()
}

/// A TLS session from `src` to `dst`, handshake done.
fn tls_from(src: Ipv4Addr, dst: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = tcp_from(src, dst);
    let name = rustls::pki_types::ServerName::IpAddress(dst.ip().into());
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .unwrap_or_else(|e| panic!("TLS handshake {src} -> {dst}: {e}"));
    }
    s
}

/// A STUN Binding over a stream: success, for the right transaction, with
/// the client's own address.
fn binding_over<S: Read + Write>(r: &mut FrameReader<S>, me: SocketAddr) {
    let tid = new_tid();
    let resp = r.roundtrip(&binding_request(tid, true));
    let m = Message::parse(&resp).expect("Binding response parses");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(m.xor_mapped_address().unwrap(), Some(me));
}

/// A Binding over a new TCP connection from `src`, kept open.
fn tcp_served(src: Ipv4Addr, dst: SocketAddr) -> FrameReader<TcpStream> {
    let s = tcp_from(src, dst);
    let me = s.local_addr().unwrap();
    let mut r = FrameReader::new(s);
    binding_over(&mut r, me);
    r
}

/// A Binding over a new TLS connection from `src`, kept open.
fn tls_served(
    src: Ipv4Addr,
    dst: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> FrameReader<TlsStream> {
    let s = tls_from(src, dst, cfg);
    let me = s.sock.local_addr().unwrap();
    let mut r = FrameReader::new(s);
    binding_over(&mut r, me);
    r
}

/// Wait (bounded) until the server ends a TLS session: end of stream
/// (close_notify, or a close without it), or a reset.
fn assert_tls_closed(s: &mut TlsStream, what: &str) {
    s.sock.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) => {}
        Ok(n) => panic!("{what}: the server sent {n} bytes"),
        Err(e) => panic!("{what}: not closed within {GUARD:?}: {e}"),
    }
}

/// Wait (bounded) until the server closed `s`, whatever it sent before.
fn assert_closed_eventually(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: not closed within {GUARD:?}: {e}"),
        }
    }
}

/// Wait (bounded) until a counter of the server reaches `want`, then
/// check it did not pass it.
fn wait_metric(f: &Fixture, name: &str, labels: &[(&str, &str)], want: f64) {
    wait_until(&format!("{name}{labels:?} = {want}"), GUARD, || {
        (f.metrics().value_or_zero(name, labels) >= want).then_some(())
    });
    assert_eq!(
        f.metrics().value_or_zero(name, labels),
        want,
        "{name}{labels:?}"
    );
}

fn timeouts(f: &Fixture, kind: &str) -> f64 {
    f.metrics()
        .value_or_zero("turnpike_connection_timeouts_total", &[("kind", kind)])
}

fn rest(user: &str) -> Credentials {
    Credentials::rest(SECRET, user, unix_now() + 3600)
}

// --- the attacks ---------------------------------------------------------------

/// With `max_connections_per_ip = 4`: four TCP and TLS connections from
/// one address are served and held; a fifth (TCP) and a sixth (TLS) are
/// closed at accept without a byte and counted; meanwhile TCP and TLS
/// clients from other addresses are served; a reload that raises the cap
/// lets one more in; a freed slot is taken again.
pub(super) fn stream_connections_capped_per_address(f: &mut Fixture) {
    let (tcp, tls, cfg) = (tcp_addr(f), tls_addr(f), turn_tls(f));
    let mut held_tcp: Vec<_> = (0..3).map(|_| tcp_served(ATTACKER, tcp)).collect();
    let held_tls = tls_served(ATTACKER, tls, cfg.clone());
    let mut fifth = tcp_from(ATTACKER, tcp);
    super::assert_closed_without_a_byte(&mut fifth, "a fifth connection from one address");
    let mut sixth = tcp_from(ATTACKER, tls);
    super::assert_closed_without_a_byte(&mut sixth, "a sixth (TLS) from one address");
    wait_metric(
        f,
        "turnpike_connections_refused_total",
        &[("reason", "max_connections_per_ip")],
        2.0,
    );
    // Others are served while the attacker holds its cap.
    let _b1 = tcp_served(BYSTANDER, tcp);
    let _b2 = tls_served(BYSTANDER, tls, cfg.clone());
    let _a2 = tcp_served(ATTACKER2, tcp);
    f.bystander_served(2, "while one address holds its TCP/TLS cap");
    for r in &held_tcp {
        super::assert_still_open(&r.stream, "a connection within the cap");
    }
    assert_eq!(
        f.metrics()
            .value("turnpike_connections_open", &[("transport", "tcp")]),
        5.0
    );
    // A reload raises the cap for the connections that follow: a fifth
    // from the attacker's address is served now.
    let raised = f
        .config_with(f.case.http, &super::default_auth(&f.case))
        .replace("max_connections_per_ip = 4", "max_connections_per_ip = 5");
    let r = f.reload_into(&raised);
    assert_eq!(r.status, 200, "{}", r.text());
    let _fifth = tcp_served(ATTACKER, tcp);
    drop(held_tls);
    // The held connections were served and are not refused after the
    // fact: each still answers.
    for r in &mut held_tcp {
        let me = r.stream.local_addr().unwrap();
        binding_over(r, me);
    }
    // Closing one frees its slot (seen when the server reads the close).
    drop(held_tcp.pop());
    wait_until("a freed slot to be taken again", GUARD, || {
        binding_on_a_new_connection(ATTACKER, tcp)
    });
}

/// With `max_connections = 6` (2 per address): three addresses hold two
/// connections each (TCP and TLS), and a seventh from a fourth address is
/// closed at accept and counted; when one closes, the fourth gets in.
pub(super) fn stream_connections_capped_in_total(f: &mut Fixture) {
    let (tcp, tls, cfg) = (tcp_addr(f), tls_addr(f), turn_tls(f));
    let mut held_tcp = Vec::new();
    let mut held_tls = Vec::new();
    for i in 3..6 {
        let src = Ipv4Addr::new(127, 0, 0, i);
        held_tcp.push(tcp_served(src, tcp));
        held_tls.push(tls_served(src, tls, cfg.clone()));
    }
    let late = Ipv4Addr::new(127, 0, 0, 6);
    let mut seventh = tcp_from(late, tcp);
    super::assert_closed_without_a_byte(&mut seventh, "a connection past max_connections");
    let mut eighth = tcp_from(late, tls);
    super::assert_closed_without_a_byte(&mut eighth, "a TLS connection past max_connections");
    wait_metric(
        f,
        "turnpike_connections_refused_total",
        &[("reason", "max_connections")],
        2.0,
    );
    assert_eq!(
        f.metrics().value_or_zero(
            "turnpike_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ),
        0.0
    );
    f.bystander_served(2, "while TCP/TLS connections are at their total cap");
    drop(held_tls.pop());
    wait_until("a freed slot to be taken by another address", GUARD, || {
        binding_on_a_new_connection(late, tcp)
    });
}

/// With `first_request_timeout` and `idle_timeout` at 1s: a TCP
/// connection that sends nothing, a TLS connection that never starts its
/// handshake, one that finishes it and sends nothing, and a connection
/// that sent a Binding and then nothing are each closed and counted by
/// kind; a client holding an allocation over TCP outlives them all.
pub(super) fn silent_and_idle_connections_are_cut(f: &mut Fixture) {
    let (tcp, tls, cfg) = (tcp_addr(f), tls_addr(f), turn_tls(f));
    let mut holder = TurnClient::tcp(tcp);
    holder
        .allocate(rest("holder"))
        .expect("allocation over TCP");
    let mut silent = tcp_from(ATTACKER, tcp);
    let mut no_handshake = tcp_from(ATTACKER, tls);
    let mut handshake_only = tls_from(ATTACKER, tls, cfg);
    let mut idle = tcp_served(ATTACKER2, tcp);
    super::assert_closed_without_a_byte(&mut silent, "a silent TCP connection");
    super::assert_closed_without_a_byte(&mut no_handshake, "a TLS connection without a handshake");
    assert_tls_closed(
        &mut handshake_only,
        "a TLS connection silent after its handshake",
    );
    assert_closed_eventually(&mut idle.stream, "a connection idle after a Binding");
    wait_metric(
        f,
        "turnpike_connection_timeouts_total",
        &[("kind", "first_request")],
        2.0,
    );
    wait_metric(
        f,
        "turnpike_connection_timeouts_total",
        &[("kind", "handshake")],
        1.0,
    );
    wait_metric(
        f,
        "turnpike_connection_timeouts_total",
        &[("kind", "idle")],
        1.0,
    );
    // The holder was idle just as long: its allocation keeps it.
    assert_eq!(
        holder.refresh(Some(600)),
        200,
        "the allocated connection lives"
    );
    f.bystander_served(2, "after silent connections were cut");
    assert_eq!(timeouts(f, "idle"), 1.0, "the holder was never cut as idle");
}

/// With `frame_timeout` at 1s (and the other read deadlines at 1h): a
/// frame whose header came but whose body never does is cut, and so is
/// one that trickles in a byte at a time (the deadline does not move with
/// each byte); both were served a whole Binding first.
pub(super) fn partial_frames_are_cut(f: &mut Fixture) {
    let tcp = tcp_addr(f);
    // A Binding header announcing 1,000 bytes of attributes, 10 of them sent.
    let mut half = binding_request(new_tid(), false);
    half[2..4].copy_from_slice(&1000u16.to_be_bytes());
    half.extend_from_slice(&[0u8; 10]);
    let mut stalled = tcp_served(ATTACKER, tcp);
    stalled.send(&half);
    assert_closed_eventually(&mut stalled.stream, "a stalled partial frame");
    wait_metric(
        f,
        "turnpike_connection_timeouts_total",
        &[("kind", "frame")],
        1.0,
    );

    let mut trickled = tcp_served(ATTACKER2, tcp);
    let mut writer = trickled.stream.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (stop, bytes) = (stop.clone(), half.clone());
        std::thread::spawn(move || {
            for b in bytes.iter().cycle() {
                if stop.load(Ordering::SeqCst) || writer.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    assert_closed_eventually(&mut trickled.stream, "a trickled partial frame");
    stop.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    wait_metric(
        f,
        "turnpike_connection_timeouts_total",
        &[("kind", "frame")],
        2.0,
    );
    assert_eq!(timeouts(f, "idle") + timeouts(f, "first_request"), 0.0);
    f.bystander_served(2, "after partial frames were cut");
}

/// With `write_timeout` at 1s: a client allocates over TCP, permits a peer
/// and stops reading while the peer floods its relay address. Once the
/// kernel's buffers are full the server's writes make no progress, and the
/// connection is closed (counted as a write timeout) and its allocation
/// ended; the server's queue for it stays bounded meanwhile.
pub(super) fn never_reading_client_is_closed(f: &mut Fixture) {
    let tcp = tcp_addr(f);
    let mut sink = TurnClient::tcp(tcp);
    let relayed = sink.allocate(rest("sink")).expect("allocation over TCP");
    // The peer is on 127.0.0.1, the one peer address the rows' policy
    // allows. A permission is for an address, whatever the port (RFC 8656
    // §9): it names a relay port, the only port on which the server's own
    // addresses may be peers.
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let permitted = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), relayed.port());
    assert_eq!(sink.create_permission(&[permitted]), 200);
    // From here the client reads nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let payload = [0x55u8; 1200];
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = peer.send_to(&payload, relayed);
                n += 1;
                if n.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    wait_until("the never-reading client to be closed", GUARD, || {
        (timeouts(f, "write") >= 1.0).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert_eq!(timeouts(f, "write"), 1.0);
    wait_until("its allocation to end", GUARD, || {
        f.server
            .stderr_text()
            .lines()
            .any(|l| l.contains("allocation ended") && l.contains("connection_closed"))
            .then_some(())
    });
    assert_eq!(
        f.metrics()
            .value("turnpike_connections_open", &[("transport", "tcp")]),
        0.0
    );
    f.bystander_served(2, "after a never-reading client was closed");
}

/// The server runs with a small `RLIMIT_NOFILE` (lowered with prlimit
/// after start: its open descriptors + 80) and `fd_reserve = 40`:
/// connections from one address fill what the reserve leaves, then are
/// refused at accept (counted), and Allocate over UDP still succeeds, ten
/// times, while the connections are held.
pub(super) fn fd_reserve_keeps_allocate_working(f: &mut Fixture) {
    let tcp = tcp_addr(f);
    let pid = f.server.pid() as i32;
    let open = turnpike_sys::process::open_fds_of(pid).unwrap() as u64;
    let limit = open + 80;
    turnpike_sys::process::set_nofile_limit_of(pid, limit, limit).unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..limit {
        let s = tcp_from(ATTACKER, tcp);
        let mut r = FrameReader::new(s);
        r.send(&binding_request(new_tid(), true));
        // A refused connection is closed unread: an end of stream, or a
        // reset (the Binding was never read).
        let closed = match r.try_next_frame() {
            Ok(Some(_)) => {
                held.push(r);
                false
            }
            Ok(None) => true,
            Err(e) if e.contains("reset") => true,
            Err(e) => panic!("neither served nor refused: {e}"),
        };
        if closed {
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert_eq!(refused, 3, "connections past the reserve are refused");
    // At most what the reserve leaves: the 80 free descriptors less 40
    // (and the few the bystander's HTTP requests held while they were
    // counted).
    assert!(!held.is_empty() && held.len() <= 44, "{} held", held.len());
    wait_metric(
        f,
        "turnpike_connections_refused_total",
        &[("reason", "fd_reserve")],
        3.0,
    );
    let mut allocated = Vec::new();
    for i in 0..10 {
        let mut c = TurnClient::udp(f.udp_addr());
        c.allocate(rest(&format!("reserve{i}")))
            .unwrap_or_else(|code| panic!("Allocate {i} with connections at the limit: {code}"));
        allocated.push(c);
    }
    f.bystander_served(2, "with connections at the descriptor limit");
    for r in &held {
        super::assert_still_open(&r.stream, "a connection admitted under the reserve");
    }
}

/// With `first_request_timeout` at 1h: TLS connections that never send a
/// ClientHello, or stop inside one, hold up no one: TLS clients from
/// another address complete handshakes, Bindings and an Allocate while
/// they are open.
pub(super) fn silent_tls_does_not_stall_tls_clients(f: &mut Fixture) {
    let (tls, cfg) = (tls_addr(f), turn_tls(f));
    let silent: Vec<TcpStream> = (0..4).map(|_| tcp_from(ATTACKER, tls)).collect();
    let mut partial = tcp_from(ATTACKER2, tls);
    // The start of a TLS handshake record, and nothing more.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for _ in 0..3 {
        drop(tls_served(BYSTANDER, tls, cfg.clone()));
    }
    let mut c = TurnClient::tls(tls, cfg);
    c.allocate(rest("tls-user")).expect("Allocate over TLS");
    assert_eq!(c.refresh(Some(600)), 200);
    f.bystander_served(2, "while silent TLS connections are open");
    for s in silent.iter().chain([&partial]) {
        super::assert_still_open(s, "a silent TLS connection (first_request_timeout 1h)");
    }
    assert_eq!(timeouts(f, "handshake"), 0.0);
}

/// A new TCP connection from `src` gets a Binding answered with its own
/// address (None while the server closes it at accept).
fn binding_on_a_new_connection(src: Ipv4Addr, tcp: SocketAddr) -> Option<()> {
    let s = tcp_from(src, tcp);
    let me = s.local_addr().unwrap();
    let mut r = FrameReader::new(s);
    r.send(&binding_request(new_tid(), true));
    let frame = r.try_next_frame().ok()??;
    let m = Message::parse(&frame).ok()?;
    (m.class() == Class::Success && m.xor_mapped_address().ok()? == Some(me)).then_some(())
}
