//! Interop: the TURN client of webrtc-rs (the `turn` crate, 0.17) against
//! the built `turnpike` binary over UDP.
//!
//! The client asks turnpike for its reflexive address (Binding),
//! allocates with long-term credentials (a TURN REST credential, and a
//! static user), and relays data to a UDP peer on loopback and back. On
//! its first send to a peer the client creates a permission, sends the
//! data in a Send indication and binds a channel in the background; later
//! data goes as ChannelData. The client's socket is wrapped in a
//! [`SpyConn`] that classifies every datagram, so the tests can assert
//! that both the indication path and the channel path were taken, in both
//! directions, and not just that bytes arrived. A logger records the
//! crate's warnings and errors (failed ChannelBind, failed refresh, ...):
//! there must be none.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ::turn::client::{Client, ClientConfig};
use async_trait::async_trait;
use common::*;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

const SECRET: &str = "webrtc-turn-secret";
const PORTS: (u16, u16) = (42000, 42799);
/// Round trips client → relay → peer → relay → client per test, at
/// least; then more until the client has sent `CHANNEL_DATA_WANTED`
/// ChannelData (it switches once its background ChannelBind has been
/// answered, which on a loaded host can take more than a few round trips)
/// or `MAX_ROUND_TRIPS` have gone by.
const ROUND_TRIPS: usize = 12;
const CHANNEL_DATA_WANTED: u64 = 3;
const MAX_ROUND_TRIPS: usize = 2000;
/// Limit for one client call that runs STUN transactions (the crate
/// retransmits for up to ~8 s before it gives up on its own).
const CALL_LIMIT: Duration = Duration::from_secs(15);

// --- what the crate logs --------------------------------------------------

/// Warnings and errors logged by the webrtc crates (`log` facade).
static PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct ProblemLogger;

impl log::Log for ProblemLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            PROBLEMS
                .lock()
                .unwrap()
                .push(format!("{} {}: {}", r.level(), r.target(), r.args()));
        }
    }

    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        log::set_logger(&ProblemLogger).expect("no other logger");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

fn assert_no_problems() {
    let p = PROBLEMS.lock().unwrap();
    assert!(
        p.is_empty(),
        "the turn crate logged warnings or errors:\n{}",
        p.join("\n")
    );
}

// --- a socket that watches what the client sends and receives -------------

/// What crossed the client's socket, by kind (RFC 8656 §12: the first two
/// bits tell STUN from ChannelData).
#[derive(Default)]
struct Seen {
    sent_channel_data: AtomicU64,
    sent_send_indications: AtomicU64,
    recv_channel_data: AtomicU64,
    recv_data_indications: AtomicU64,
    /// Channel numbers seen in ChannelData from the server.
    recv_channels: Mutex<Vec<u16>>,
}

/// STUN message type: Send indication 0x0016, Data indication 0x0017.
fn stun_type(b: &[u8]) -> Option<u16> {
    (b.len() >= 20 && b[0] >> 6 == 0).then(|| u16::from_be_bytes([b[0], b[1]]))
}

fn channel_number(b: &[u8]) -> Option<u16> {
    (b.len() >= 4 && b[0] >> 6 == 1).then(|| u16::from_be_bytes([b[0], b[1]]))
}

/// A tokio UDP socket that counts datagrams by kind.
struct SpyConn {
    sock: UdpSocket,
    seen: Arc<Seen>,
}

#[async_trait]
impl Conn for SpyConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.sock.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let (n, _) = self.recv_from(buf).await?;
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf).await?;
        let b = &buf[..n];
        if let Some(ch) = channel_number(b) {
            self.seen.recv_channel_data.fetch_add(1, Ordering::Relaxed);
            self.seen.recv_channels.lock().unwrap().push(ch);
        } else if stun_type(b) == Some(0x0017) {
            self.seen
                .recv_data_indications
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if channel_number(buf).is_some() {
            self.seen.sent_channel_data.fetch_add(1, Ordering::Relaxed);
        } else if stun_type(buf) == Some(0x0016) {
            self.seen
                .sent_send_indications
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.sock.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

// --- the tests --------------------------------------------------------------

async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

fn start_server() -> TestServer {
    TestServer::start(&loopback_relay_config(
        &format!("{}-{}", PORTS.0, PORTS.1),
        &format!("secrets = [\"{SECRET}\"]\nusers = {{ alice = \"alice-password\" }}"),
    ))
}

/// Binding, Allocate, then lock-step round trips through the relay to a
/// loopback peer; returns how many and what the spy saw.
async fn relay_round_trips(
    server: &TestServer,
    username: String,
    password: String,
) -> (usize, Arc<Seen>) {
    install_logger();
    let turn = server.addr(Transport::Udp, false);
    let seen = Arc::new(Seen::default());
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind client socket");
    let local = sock.local_addr().unwrap();
    let conn = Arc::new(SpyConn {
        sock,
        seen: seen.clone(),
    });
    let client = Client::new(ClientConfig {
        stun_serv_addr: turn.to_string(),
        turn_serv_addr: turn.to_string(),
        username,
        password,
        realm: String::new(), // learnt from the 401
        software: "turnpike-interop-test".into(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("turn::client::Client::new");
    client.listen().await.expect("listen");

    // Reflexive address: on loopback, exactly the client's own address.
    let reflexive = within(
        "send_binding_request",
        CALL_LIMIT,
        client.send_binding_request(),
    )
    .await
    .expect("Binding through the turn crate");
    assert_eq!(reflexive, local, "XOR-MAPPED-ADDRESS");

    let relay = within("allocate", CALL_LIMIT, client.allocate())
        .await
        .expect("Allocate through the turn crate");
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(relayed.ip(), Ipv4Addr::LOCALHOST, "relayed IP");
    assert!(
        (PORTS.0..=PORTS.1).contains(&relayed.port()),
        "relayed port {relayed} outside the configured range"
    );

    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind peer socket");
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    let mut trips = 0;
    while trips < ROUND_TRIPS
        || seen.sent_channel_data.load(Ordering::Relaxed) < CHANNEL_DATA_WANTED
    {
        assert!(
            trips < MAX_ROUND_TRIPS,
            "the client still sends no ChannelData after {trips} round trips"
        );
        let i = trips;
        trips += 1;
        let out = format!("to peer #{i} {}", "x".repeat((i % 20) * 37));
        // (send_to returns the size of what went on the wire, the Send
        // indication or ChannelData, not the payload's.)
        within(
            "relay send_to",
            CALL_LIMIT,
            relay.send_to(out.as_bytes(), peer_addr),
        )
        .await
        .unwrap_or_else(|e| panic!("round trip {i}: relay send_to: {e}"));

        let (n, from) = within(
            &format!("round trip {i}: peer recv"),
            IO_TIMEOUT,
            peer.recv_from(&mut buf),
        )
        .await
        .unwrap();
        assert_eq!(
            from, relayed,
            "round trip {i}: the peer sees the relayed address"
        );
        assert_eq!(
            &buf[..n],
            out.as_bytes(),
            "round trip {i}: payload at the peer"
        );

        let back = format!("from peer #{i} {}", "y".repeat((i % 20) * 53));
        peer.send_to(back.as_bytes(), relayed).await.unwrap();
        let (n, from) = within(
            &format!("round trip {i}: relay recv_from"),
            IO_TIMEOUT,
            relay.recv_from(&mut buf),
        )
        .await
        .unwrap_or_else(|e| panic!("round trip {i}: relay recv_from: {e}"));
        assert_eq!(from, peer_addr, "round trip {i}: the client sees the peer");
        assert_eq!(
            &buf[..n],
            back.as_bytes(),
            "round trip {i}: payload at the client"
        );
    }

    // A second peer on the same IP: covered by the permission (RFC 8656
    // §9: permissions are per IP), but with no channel, so turnpike must
    // hand its datagram to the client in a Data indication.
    let other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind second peer socket");
    let other_addr = other.local_addr().unwrap();
    let before = seen.recv_data_indications.load(Ordering::Relaxed);
    other
        .send_to(b"unsolicited, no channel", relayed)
        .await
        .unwrap();
    let (n, from) = within(
        "relay recv_from (second peer)",
        IO_TIMEOUT,
        relay.recv_from(&mut buf),
    )
    .await
    .expect("relay recv_from (second peer)");
    assert_eq!(from, other_addr, "the client sees the second peer");
    assert_eq!(&buf[..n], b"unsolicited, no channel");
    assert_eq!(
        seen.recv_data_indications.load(Ordering::Relaxed),
        before + 1,
        "a peer without a channel arrives in a Data indication"
    );

    within("relay close", CALL_LIMIT, relay.close())
        .await
        .expect("close relay conn");
    within("client close", CALL_LIMIT, client.close())
        .await
        .expect("close client");
    (trips, seen)
}

fn report(label: &str, trips: usize, seen: &Seen) {
    let (cd_out, si, cd_in, di) = (
        seen.sent_channel_data.load(Ordering::Relaxed),
        seen.sent_send_indications.load(Ordering::Relaxed),
        seen.recv_channel_data.load(Ordering::Relaxed),
        seen.recv_data_indications.load(Ordering::Relaxed),
    );
    println!(
        "{label}: {trips} round trips + 1 datagram from a second peer; client sent {si} Send \
         indications and {cd_out} ChannelData, received {di} Data indications and {cd_in} ChannelData"
    );
    assert_eq!(
        si + cd_out,
        trips as u64,
        "{label}: every payload leaves as a Send indication or ChannelData"
    );
    assert_eq!(
        di + cd_in,
        trips as u64 + 1,
        "{label}: every reply, and the second peer's datagram, arrives as a Data indication or ChannelData"
    );
    // The first send precedes the ChannelBind (the client binds in the
    // background), so it is a Send indication; once the bind is done the
    // client uses ChannelData and turnpike answers in kind. Whether the
    // peer's first reply beats the ChannelBind is a race, so which way
    // it came is not asserted; the second peer's Data indication is.
    assert!(si >= 1, "{label}: the first send must be a Send indication");
    assert!(di >= 1, "{label}: no Data indication reached the client");
    assert!(cd_out >= 1, "{label}: the client never used its channel");
    assert!(cd_in >= 1, "{label}: turnpike never sent ChannelData");
    let channels = seen.recv_channels.lock().unwrap();
    assert!(
        channels.iter().all(|c| (0x4000..=0x7FFF).contains(c)),
        "{label}: channel numbers {channels:x?}"
    );
    assert!(
        channels.windows(2).all(|w| w[0] == w[1]),
        "{label}: one peer, one channel: {channels:x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credential_allocate_and_relay() {
    let mut server = start_server();
    let (username, password) = rest_credential(SECRET, "webrtc-rs");
    let (trips, seen) = relay_round_trips(&server, username.clone(), password).await;
    report("REST credential", trips, &seen);
    assert_no_problems();
    server.stop(Signal::Int);
    let log = server.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("allocation created") && l.contains(&format!("user={username}"))),
        "turnpike did not log the allocation for {username}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_user_allocate_and_relay() {
    let mut server = start_server();
    let (trips, seen) = relay_round_trips(&server, "alice".into(), "alice-password".into()).await;
    report("static user", trips, &seen);
    assert_no_problems();
    server.stop(Signal::Int);
    let log = server.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("allocation created") && l.contains("user=alice")),
        "turnpike did not log the allocation for alice:\n{log}"
    );
}

/// A wrong password must fail the Allocate (so the passes above mean
/// something): the turn crate reports the error response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let server = start_server();
    let turn = server.addr(Transport::Udp, false);
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: turn.to_string(),
        username: "alice".into(),
        password: "not-alice-password".into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let r = within("allocate", CALL_LIMIT, client.allocate()).await;
    let err = match r {
        Ok(_) => panic!("Allocate with a wrong password succeeded"),
        Err(e) => e.to_string(),
    };
    println!("wrong password: {err}");
    assert!(err.contains("401"), "expected a 401, got {err}");
    client.close().await.unwrap();
}
