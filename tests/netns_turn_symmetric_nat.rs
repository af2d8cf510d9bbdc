//! TURN through symmetric NATs, in a network-namespace lab
//! (tests/common/netns.rs):
//!
//! ```text
//!   c1 10.1.0.2 ── r1 [symmetric NAT] 203.0.113.11 ─┐
//!                                                   br0 ── pub: turnpike 203.0.113.1:3478
//!   c2 10.2.0.2 ── r2 [symmetric NAT] 203.0.113.12 ─┘       relays 203.0.113.1:50000-50999
//! ```
//!
//! Two clients, each behind its own symmetric NAT, allocate on turnpike
//! (over UDP, and in a second test over TCP), give each other their
//! relayed addresses, and exchange data relay to relay with Send/Data
//! indications and with ChannelData. Then the paths ICE would try first
//! are shown to fail in the same lab: a UDP hole punch between the
//! server-reflexive addresses (both sides sending) and host to host
//! between the private networks. A control test runs the same hole punch
//! through port-restricted NATs, where it works: the failure above is the
//! NATs' symmetric mapping, not a broken lab.
//!
//! Root only: without root (or iproute2/nftables) each test prints a loud
//! SKIPPED banner and asserts nothing. CI runs as root.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::netns::{Internet, Lab, Nat, PUBLIC_GATEWAY, RULE_UNSOLICITED, Site, TwoNats};
use common::{IO_TIMEOUT, Transport, new_tid, run_bounded};
use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::wire::{
    ChannelData, Class, FrameKind, Message, Method, TransactionId, frame_len,
};

const SECRET: &str = "netns-lab-secret";
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 50000..=50999;

/// How long "nothing arrives" is waited for. This is the one timed
/// negative check: a direct datagram crosses this lab in well under a
/// millisecond, so a second of silence on both clients' sockets, after
/// the routers' drop counters have already shown where the datagrams
/// died, means none is coming.
const SILENCE: Duration = Duration::from_secs(1);

fn server_addr() -> SocketAddr {
    SocketAddr::from((PUBLIC_GATEWAY, 3478))
}

fn config() -> String {
    format!(
        r#"
[server]
realm = "netns-lab"
threads = 1

[[listen]]
transport = "udp"
addr = "{gw}:3478"

[[listen]]
transport = "tcp"
addr = "{gw}:3478"

[relay]
bind_ip = "{gw}"
ports = "{lo}-{hi}"

[auth]
secrets = ["{SECRET}"]
"#,
        gw = PUBLIC_GATEWAY,
        lo = RELAY_PORTS.start(),
        hi = RELAY_PORTS.end(),
    )
}

fn rest_credentials(user: &str) -> Credentials {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Credentials::rest(SECRET, user, now + 3600)
}

// --- a small TURN client over UDP or TCP -----------------------------------

enum Conn {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, buf: Vec<u8> },
}

/// Something the server sent.
#[derive(Debug)]
enum Incoming {
    Stun(Vec<u8>),
    Channel { channel: u16, data: Vec<u8> },
}

struct TurnClient {
    name: &'static str,
    conn: Conn,
    session: Option<Session>,
}

impl TurnClient {
    fn connect(name: &'static str, site: &Site, transport: Transport) -> TurnClient {
        let conn = match transport {
            Transport::Udp => Conn::Udp(
                site.client
                    .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            ),
            Transport::Tcp => Conn::Tcp {
                stream: site.client.tcp_connect(server_addr()),
                buf: Vec::new(),
            },
            Transport::Tls => unreachable!("not in this lab"),
        };
        TurnClient {
            name,
            conn,
            session: None,
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.conn, Conn::Tcp { .. })
    }

    fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Udp(s) => s.local_addr().unwrap(),
            Conn::Tcp { stream, .. } => stream.local_addr().unwrap(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s) => {
                let n = s.send_to(bytes, server_addr()).expect("send_to server");
                assert_eq!(n, bytes.len(), "short UDP send");
            }
            Conn::Tcp { stream, .. } => stream.write_all(bytes).expect("write to server"),
        }
    }

    /// The next message or ChannelData from the server ([`IO_TIMEOUT`] is
    /// a failure).
    fn recv(&mut self) -> Incoming {
        let name = self.name;
        let frame = match &mut self.conn {
            Conn::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!("{name}: nothing from the server within {IO_TIMEOUT:?}: {e}")
                });
                assert_eq!(from, server_addr(), "{name}: datagram from a stranger");
                buf.truncate(n);
                buf
            }
            Conn::Tcp { stream, buf } => loop {
                match frame_len(buf) {
                    Ok(Some(f)) => {
                        let frame = buf[..f.message_len].to_vec();
                        buf.drain(..f.len);
                        assert!(
                            f.kind == FrameKind::ChannelData || frame.len() >= 20,
                            "{name}: short frame"
                        );
                        break frame;
                    }
                    Ok(None) => {
                        let mut chunk = [0u8; 16384];
                        match stream.read(&mut chunk) {
                            Ok(0) => panic!("{name}: server closed the TCP connection"),
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) => {
                                panic!("{name}: nothing from the server within {IO_TIMEOUT:?}: {e}")
                            }
                        }
                    }
                    Err(e) => panic!("{name}: bad framing from the server: {e}"),
                }
            },
        };
        if (0x40..=0x7f).contains(&frame[0]) {
            let cd = ChannelData::parse(&frame)
                .unwrap_or_else(|e| panic!("{name}: bad ChannelData {e}: {frame:02x?}"));
            Incoming::Channel {
                channel: cd.channel,
                data: cd.data.to_vec(),
            }
        } else {
            Incoming::Stun(frame)
        }
    }

    /// Send a request and return its response (anything else first fails).
    fn transact(&mut self, req: &[u8], tid: TransactionId) -> Vec<u8> {
        self.send(req);
        match self.recv() {
            Incoming::Stun(resp) => {
                let msg = Message::parse(&resp)
                    .unwrap_or_else(|e| panic!("{}: response does not parse: {e}", self.name));
                assert_eq!(msg.transaction_id(), tid, "{}: transaction id", self.name);
                resp
            }
            other => panic!("{}: expected a response, got {other:?}", self.name),
        }
    }

    /// A request that must succeed (integrity checked); returns the
    /// response bytes.
    fn request_ok(
        &mut self,
        what: &str,
        build: impl FnOnce(&mut Vec<u8>, TransactionId, &Session),
    ) -> Vec<u8> {
        let tid = new_tid();
        let mut req = Vec::new();
        build(
            &mut req,
            tid,
            self.session.as_ref().expect("allocated first"),
        );
        let resp = self.transact(&req, tid);
        let msg = Message::parse(&resp).unwrap();
        assert_eq!(
            msg.class(),
            Class::Success,
            "{}: {what} failed: {:?}",
            self.name,
            msg.error_code()
        );
        assert!(
            self.session.as_ref().unwrap().verify(&msg),
            "{}: {what} response integrity",
            self.name
        );
        resp
    }

    /// Allocate with a TURN REST credential (401 challenge, then signed).
    /// Returns (relayed address, server-reflexive address).
    fn allocate(&mut self) -> (SocketAddr, SocketAddr) {
        let opts = AllocateOptions::default();
        let tid = new_tid();
        let mut req = Vec::new();
        client::allocate(&mut req, tid, &opts, None);
        let resp = self.transact(&req, tid);
        let challenge = Message::parse(&resp).unwrap();
        assert_eq!(
            challenge.error_code().unwrap().map(|e| e.code),
            Some(401),
            "{}: unsigned Allocate must be challenged",
            self.name
        );
        self.session = Some(
            Session::from_challenge(
                &challenge,
                rest_credentials(self.name),
                SignOptions::default(),
            )
            .expect("401 carries REALM and NONCE"),
        );
        let resp = self.request_ok("Allocate", |buf, tid, s| {
            client::allocate(buf, tid, &opts, Some(s))
        });
        let msg = Message::parse(&resp).unwrap();
        let relayed = msg
            .xor_relayed_address()
            .unwrap()
            .expect("XOR-RELAYED-ADDRESS");
        let mapped = msg
            .xor_mapped_address()
            .unwrap()
            .expect("XOR-MAPPED-ADDRESS");
        (relayed, mapped)
    }

    fn create_permission(&mut self, peer: SocketAddr) {
        self.request_ok("CreatePermission", |buf, tid, s| {
            client::create_permission(buf, tid, &[peer], s)
        });
    }

    fn channel_bind(&mut self, channel: u16, peer: SocketAddr) {
        self.request_ok("ChannelBind", |buf, tid, s| {
            client::channel_bind(buf, tid, channel, peer, s)
        });
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut buf = Vec::new();
        client::send_indication(&mut buf, new_tid(), peer, data);
        self.send(&buf);
    }

    fn channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut buf = Vec::new();
        ChannelData::encode(channel, data, self.is_stream(), &mut buf);
        self.send(&buf);
    }

    fn expect_data_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        match self.recv() {
            Incoming::Stun(m) => {
                let msg = Message::parse(&m).unwrap();
                assert_eq!(
                    (msg.method(), msg.class()),
                    (Method::DATA, Class::Indication),
                    "{}: expected a Data indication",
                    self.name
                );
                assert_eq!(
                    msg.xor_peer_address().unwrap(),
                    Some(peer),
                    "{}: peer",
                    self.name
                );
                assert_eq!(msg.data(), Some(data), "{}: DATA", self.name);
            }
            other => panic!("{}: expected a Data indication, got {other:?}", self.name),
        }
    }

    fn expect_channel_data(&mut self, want_channel: u16, want: &[u8]) {
        match self.recv() {
            Incoming::Channel { channel, data } => {
                assert_eq!(channel, want_channel, "{}: channel", self.name);
                assert_eq!(data, want, "{}: channel data", self.name);
            }
            other => panic!("{}: expected ChannelData, got {other:?}", self.name),
        }
    }
}

/// The server-reflexive address of a UDP socket, from a Binding request.
fn udp_srflx(sock: &UdpSocket) -> SocketAddr {
    let tid = new_tid();
    let mut req = Vec::new();
    client::binding(&mut req, tid, true);
    let resp = common::udp_roundtrip(sock, server_addr(), &req);
    let msg = Message::parse(&resp).unwrap();
    assert_eq!(msg.transaction_id(), tid);
    msg.xor_mapped_address()
        .unwrap()
        .expect("XOR-MAPPED-ADDRESS")
}

/// A UDP socket in the site's client namespace and its server-reflexive
/// address.
fn udp_with_srflx(site: &Site) -> (UdpSocket, SocketAddr) {
    let s = site
        .client
        .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let srflx = udp_srflx(&s);
    (s, srflx)
}

// --- the tests -------------------------------------------------------------

fn relay_through_symmetric_nats(prefix: &str, transport: Transport) {
    let Some(lab) = Lab::new(prefix) else {
        return;
    };
    let TwoNats { internet, a, b } = lab.two_nats(Nat::Symmetric, Nat::Symmetric);
    let server = internet.ns.start_turnpike(&config());
    assert_eq!(server.addr(Transport::Udp, false), server_addr());
    assert_eq!(server.addr(Transport::Tcp, false), server_addr());

    // Allocate.
    let mut ca = TurnClient::connect("alice", &a, transport);
    let mut cb = TurnClient::connect("bob", &b, transport);
    let (a_relay, a_mapped) = ca.allocate();
    let (b_relay, b_mapped) = cb.allocate();
    for (who, site, local, relay, mapped) in [
        ("alice", &a, ca.local_addr(), a_relay, a_mapped),
        ("bob", &b, cb.local_addr(), b_relay, b_mapped),
    ] {
        let local = SocketAddr::from((site.client_ip, local.port()));
        eprintln!(
            "{transport}: {who} {local} behind {:?} NAT: server-reflexive {mapped}, relayed {relay}",
            site.nat.nat
        );
        assert_eq!(
            mapped.ip(),
            site.outside_ip,
            "{who}: seen from the NAT's address"
        );
        assert_eq!(relay.ip(), PUBLIC_GATEWAY, "{who}: relay address");
        assert!(
            RELAY_PORTS.contains(&relay.port()),
            "{who}: relay port {relay}"
        );
    }

    // Each allocation's peer is the other allocation's relayed address.
    ca.create_permission(b_relay);
    cb.create_permission(a_relay);

    // Send indication in, Data indication out (no channel yet).
    ca.send_indication(b_relay, b"alice->bob by Send");
    cb.expect_data_indication(a_relay, b"alice->bob by Send");
    cb.send_indication(a_relay, b"bob->alice by Send");
    ca.expect_data_indication(b_relay, b"bob->alice by Send");

    // Channels; numbers are per allocation, so each side picks its own.
    let (a_ch, b_ch) = (0x4000, 0x4001);
    ca.channel_bind(a_ch, b_relay);
    cb.channel_bind(b_ch, a_relay);
    ca.channel_data(a_ch, b"alice->bob by ChannelData");
    cb.expect_channel_data(b_ch, b"alice->bob by ChannelData");
    cb.channel_data(b_ch, b"bob->alice by ChannelData");
    ca.expect_channel_data(a_ch, b"bob->alice by ChannelData");
    // With a channel bound, data from that peer comes as ChannelData
    // even when the other side used a Send indication.
    ca.send_indication(b_relay, b"alice->bob by Send, channel bound");
    cb.expect_channel_data(b_ch, b"alice->bob by Send, channel bound");
    cb.send_indication(a_relay, b"bob->alice by Send, channel bound");
    ca.expect_channel_data(a_ch, b"bob->alice by Send, channel bound");
    eprintln!("{transport}: relayed both ways by Send/Data indications and by ChannelData");

    // The direct paths fail. UDP sockets with server-reflexive addresses:
    // over UDP the TURN sockets themselves (as an ICE agent's host
    // candidates), over TCP fresh UDP sockets that ask for theirs.
    let (sa, sb) = match (&ca.conn, &cb.conn) {
        (Conn::Udp(x), Conn::Udp(y)) => (
            (x.try_clone().unwrap(), a_mapped),
            (y.try_clone().unwrap(), b_mapped),
        ),
        _ => (udp_with_srflx(&a), udp_with_srflx(&b)),
    };
    let (a_sock, a_srflx) = sa;
    let (b_sock, b_srflx) = sb;
    let a_host = SocketAddr::from((a.client_ip, a_sock.local_addr().unwrap().port()));
    let b_host = SocketAddr::from((b.client_ip, b_sock.local_addr().unwrap().port()));
    direct_paths_fail(
        &internet,
        &a,
        &b,
        (&a_sock, a_host, a_srflx),
        (&b_sock, b_host, b_srflx),
    );
}

/// Hole punch both ways between server-reflexive addresses (three rounds,
/// each side sending each round, as ICE connectivity checks would), and
/// host to host between the private addresses; nothing may arrive.
fn direct_paths_fail(
    internet: &Internet,
    a: &Site,
    b: &Site,
    (a_sock, a_host, a_srflx): (&UdpSocket, SocketAddr, SocketAddr),
    (b_sock, b_host, b_srflx): (&UdpSocket, SocketAddr, SocketAddr),
) {
    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        let m = format!("alice->bob srflx round {round}");
        a_sock.send_to(m.as_bytes(), b_srflx).unwrap();
        let m = format!("bob->alice srflx round {round}");
        b_sock.send_to(m.as_bytes(), a_srflx).unwrap();
    }
    eprintln!(
        "tried: {ROUNDS} rounds of hole punching, alice {a_host} (srflx {a_srflx}) -> bob's srflx {b_srflx} \
         and bob {b_host} (srflx {b_srflx}) -> alice's srflx {a_srflx}"
    );
    // Positive evidence first: every punch reached the other NAT and died
    // there as unsolicited inbound UDP. A symmetric NAT sends each punch
    // from a new port (not the srflx port the peer aims back at), so the
    // other side's conntrack never matches.
    b.router.wait_nft_packets(RULE_UNSOLICITED, ROUNDS);
    a.router.wait_nft_packets(RULE_UNSOLICITED, ROUNDS);
    eprintln!(
        "dropped as unsolicited inbound UDP: {ROUNDS} punches at bob's NAT ({}), {ROUNDS} at alice's NAT ({})",
        b.outside_ip, a.outside_ip
    );

    // Host to host: the private networks are not routed on the Internet.
    a_sock.send_to(b"alice->bob host", b_host).unwrap();
    b_sock.send_to(b"bob->alice host", a_host).unwrap();
    eprintln!("tried: host to host, alice {a_host} -> bob {b_host} and back");
    let (status, out, err) = run_bounded(
        Command::new("ip").args([
            "-n",
            a.router.name(),
            "route",
            "get",
            &b_host.ip().to_string(),
        ]),
        IO_TIMEOUT,
    );
    eprintln!(
        "alice's NAT: route get {}: {status} {}{}",
        b_host.ip(),
        out.trim(),
        err.trim()
    );
    for private in [a_host.ip(), b_host.ip()] {
        let (status, _, err) = run_bounded(
            Command::new("ip").args([
                "-n",
                internet.ns.name(),
                "route",
                "get",
                &private.to_string(),
            ]),
            IO_TIMEOUT,
        );
        assert!(
            !status.success() && err.contains("unreachable"),
            "the Internet must have no route to {private}: {status} {err}"
        );
        eprintln!("the Internet: route get {private}: {}", err.trim());
    }

    // The one timed negative check: see SILENCE.
    expect_silence(&[("bob", b_sock), ("alice", a_sock)]);
}

/// Wait [`SILENCE`] in total; any datagram on any of `socks` that does not
/// come from the TURN server is a direct path that worked: fail.
fn expect_silence(socks: &[(&str, &UdpSocket)]) {
    let deadline = Instant::now() + SILENCE;
    let mut buf = [0u8; 2048];
    for (who, sock) in socks {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                sock.set_nonblocking(true).unwrap();
            } else {
                sock.set_read_timeout(Some(left)).unwrap();
            }
            let r = sock.recv_from(&mut buf);
            sock.set_nonblocking(false).unwrap();
            sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            match r {
                Ok((_, from)) if from == server_addr() => continue,
                Ok((n, from)) => panic!(
                    "{who}: a direct datagram arrived from {from}: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("{who}: recv: {e}"),
            }
        }
    }
    eprintln!("nothing arrived directly within {SILENCE:?}");
}

#[test]
fn relay_through_symmetric_nats_udp() {
    relay_through_symmetric_nats("tsymu", Transport::Udp);
}

/// The allocations over TCP; the relay itself is UDP.
#[test]
fn relay_through_symmetric_nats_tcp() {
    relay_through_symmetric_nats("tsymt", Transport::Tcp);
}

/// Control: the same hole punch through two port-restricted NATs works,
/// so the failure through symmetric NATs is their mapping, not the lab.
/// Alice's first punch dies at Bob's NAT (counted as unsolicited, and not
/// tracked, so it cannot claim the tuple); Bob's punch then matches the
/// mapping Alice opened and arrives; Alice's second punch matches the one
/// Bob opened and arrives.
#[test]
fn control_hole_punch_works_through_port_restricted_nats() {
    let Some(lab) = Lab::new("tprc") else {
        return;
    };
    let TwoNats { internet, a, b } = lab.two_nats(Nat::PortRestricted, Nat::PortRestricted);
    let _server = internet.ns.start_turnpike(&config());
    let (a_sock, a_srflx) = udp_with_srflx(&a);
    let (b_sock, b_srflx) = udp_with_srflx(&b);
    for (who, sock, srflx, site) in [
        ("alice", &a_sock, a_srflx, &a),
        ("bob", &b_sock, b_srflx, &b),
    ] {
        let local = sock.local_addr().unwrap().port();
        eprintln!("{who} {}:{local}: srflx {srflx}", site.client_ip);
        assert_eq!(
            srflx,
            SocketAddr::from((site.outside_ip, local)),
            "{who}: port kept"
        );
    }

    a_sock.send_to(b"punch 1 alice->bob", b_srflx).unwrap();
    b.router.wait_nft_packets(RULE_UNSOLICITED, 1);
    b_sock.send_to(b"punch 2 bob->alice", a_srflx).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = a_sock
        .recv_from(&mut buf)
        .expect("alice receives bob's punch");
    assert_eq!((&buf[..n], from), (&b"punch 2 bob->alice"[..], b_srflx));
    a_sock.send_to(b"punch 3 alice->bob", b_srflx).unwrap();
    let (n, from) = b_sock
        .recv_from(&mut buf)
        .expect("bob receives alice's punch");
    assert_eq!((&buf[..n], from), (&b"punch 3 alice->bob"[..], a_srflx));
    eprintln!("direct path open both ways between {a_srflx} and {b_srflx}");
}
