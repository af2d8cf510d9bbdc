//! Interop: coturn 4.6's `turnutils_uclient` relays data through the
//! built `turnpike` binary, to coturn's `turnutils_peer` (an echo server)
//! and between its own clients.
//!
//! uclient is a TURN client nobody here wrote: it authenticates with a
//! TURN REST credential it derives itself from the shared secret (`-W`),
//! allocates an RTP relay with EVEN-PORT (R bit) and an RTCP relay with
//! the RESERVATION-TOKEN it got, creates permissions, binds channels in
//! RFC 5766's 0x4000-0x7FFF range (turnpike accepts that range unless
//! `strict_channel_numbers`), and counts every message it sent and got
//! back. Each run must end with every message back and no loss.
//!
//! The tools are part of the test environment: when they are missing the
//! tests fail (they never skip).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UCLIENT: &str = "turnutils_uclient";
const PEER: &str = "turnutils_peer";
const SECRET: &str = "coturn-interop-secret";
/// Messages per client and clients per run: a few seconds each (uclient
/// sends every 20 ms and checks its counters once a second).
const MESSAGES: u32 = 50;
const CLIENTS: u32 = 4;
/// Payload bytes per message (`-l`).
const MESSAGE_LEN: u64 = 100;
/// Whole-run limit for one uclient run (a guard: a run takes ~5 s).
const UCLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long turnutils_peer may take to start echoing.
const PEER_START: Duration = Duration::from_secs(10);

fn require_tools() {
    for tool in [UCLIENT, PEER] {
        assert!(
            on_path(tool),
            "{tool} not found on PATH: install coturn (apt-get install coturn); .ci/run does this"
        );
    }
}

/// A running `turnutils_peer` on 127.0.0.1, echoing UDP; killed on drop.
struct EchoPeer {
    _child: KillOnDrop,
    port: u16,
}

/// Start `turnutils_peer` on a free port and wait until it echoes a
/// probe. If the port was taken in between (the peer exits or never
/// answers), try another.
fn start_peer() -> EchoPeer {
    let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind probe socket");
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut last = String::new();
    for _attempt in 0..5 {
        let port = free_udp_port();
        let child = Command::new(PEER)
            .args(["-p", &port.to_string(), "-L", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PEER}: {e}"));
        let mut child = KillOnDrop::new(child, format!("{PEER} -p {port}"));
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + PEER_START;
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Some(status) = child.child.try_wait().expect("try_wait") {
                last = format!("{PEER} on port {port} exited: {status}");
                break;
            }
            probe
                .send_to(b"turnpike-probe", target)
                .expect("send probe");
            // Each wait ends on an echo, or after 200 ms to probe again
            // (the first probes arrive before the peer has bound).
            if let Ok((n, from)) = probe.recv_from(&mut buf) {
                if from == target && &buf[..n] == b"turnpike-probe" {
                    return EchoPeer {
                        _child: child,
                        port,
                    };
                }
            }
            last = format!("{PEER} on port {port} did not echo within {PEER_START:?}");
        }
    }
    panic!("could not start {PEER}: {last}");
}

/// The totals uclient prints at the end of a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
}

/// Parse
/// `N: : start_mclient: tot_send_msgs=200, tot_recv_msgs=200` and
/// `N: : Total lost packets 0 (0.000000%), total send dropped 0 (...)`.
/// The per-second progress lines (which carry `msz=`) are not the totals.
fn parse_summary(text: &str) -> Option<Summary> {
    let num = |s: &str| -> Option<u64> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    let mut totals = None;
    let mut loss = None;
    for line in text.lines() {
        if line.contains("start_mclient: tot_send_msgs=") && !line.contains("msz=") {
            let sent = num(line.split("tot_send_msgs=").nth(1)?)?;
            let received = num(line.split("tot_recv_msgs=").nth(1)?)?;
            totals = Some((sent, received));
        }
        if let Some((_, rest)) = line.split_once("Total lost packets ") {
            let lost = num(rest)?;
            let send_dropped = num(rest.split("total send dropped ").nth(1)?)?;
            loss = Some((lost, send_dropped));
        }
    }
    let ((sent, received), (lost, send_dropped)) = (totals?, loss?);
    Some(Summary {
        sent,
        received,
        lost,
        send_dropped,
    })
}

/// Run uclient with `args` and the server address last; assert a clean
/// exit, every message back and no loss. Returns the summary.
fn uclient(label: &str, args: &[String]) -> Summary {
    let mut cmd = Command::new(UCLIENT);
    cmd.args(args).arg("127.0.0.1");
    let (status, out, err) = run_bounded(&mut cmd, UCLIENT_LIMIT);
    let text = format!("{out}\n{err}");
    println!("{label}: {UCLIENT} {}\n{text}", args.join(" "));
    assert!(
        status.success(),
        "{label}: {UCLIENT} exited with {status}\n{text}"
    );
    assert!(
        !text.contains("ERROR"),
        "{label}: {UCLIENT} reported an error\n{text}"
    );
    let s = parse_summary(&text)
        .unwrap_or_else(|| panic!("{label}: no summary in {UCLIENT}'s output\n{text}"));
    let expected = u64::from(MESSAGES * CLIENTS);
    assert_eq!(s.sent, expected, "{label}: messages sent\n{text}");
    assert_eq!(
        s.received, s.sent,
        "{label}: every message must come back\n{text}"
    );
    assert_eq!(s.lost, 0, "{label}: lost packets\n{text}");
    assert_eq!(s.send_dropped, 0, "{label}: send dropped\n{text}");
    println!(
        "{label}: sent {} received {} lost {}",
        s.sent, s.received, s.lost
    );
    s
}

fn common_args(port: u16) -> Vec<String> {
    vec![
        "-W".into(),
        SECRET.into(),
        "-u".into(),
        "user".into(),
        "-p".into(),
        port.to_string(),
        "-n".into(),
        MESSAGES.to_string(),
        "-m".into(),
        CLIENTS.to_string(),
        "-l".into(),
        MESSAGE_LEN.to_string(),
    ]
}

/// Stop the server (so its log is complete: allocation events are
/// logged on the shard's next timer tick) and check the allocations it
/// logged: all on 127.0.0.1 inside `low..=high`, at least one per client,
/// and at least one even/odd pair made through EVEN-PORT (R bit) and
/// RESERVATION-TOKEN.
///
/// uclient also allocates a "probe" relay before each group of clients
/// and chains reservation tokens across allocations, so the exact count
/// is an implementation detail of the tool and is only printed.
fn check_allocations(label: &str, server: &mut TestServer, summary: &Summary, low: u16, high: u16) {
    let status = server.stop(Signal::Int);
    assert!(status.success(), "{label}: turnpike exit status {status}");
    let relays = logged_allocations(&server.stderr_text());
    assert!(
        relays.len() >= CLIENTS as usize,
        "{label}: expected at least {CLIENTS} allocations, the server logged {relays:?}"
    );
    for r in &relays {
        assert_eq!(r.ip(), Ipv4Addr::LOCALHOST, "{label}: relay address {r}");
        assert!(
            (low..=high).contains(&r.port()),
            "{label}: relay port {r} outside {low}-{high}"
        );
    }
    let pairs = relays
        .iter()
        .filter(|r| r.port() % 2 == 0 && relays.iter().any(|q| q.port() == r.port() + 1))
        .count();
    assert!(
        pairs >= 1,
        "{label}: expected an even/odd relay port pair (EVEN-PORT + RESERVATION-TOKEN), got {relays:?}"
    );
    // What turnpike says it relayed: at least every message both ways
    // (uclient also sends on its RTCP relays).
    let (to_peer, from_peer) = logged_traffic(&server.stderr_text());
    let payload = summary.sent * MESSAGE_LEN;
    assert!(
        to_peer >= payload && from_peer >= payload,
        "{label}: turnpike relayed {to_peer} bytes to peers and {from_peer} from peers, \
         expected at least {payload} each way"
    );
    println!(
        "{label}: server logged {} allocations, {pairs} even/odd pairs, \
         {to_peer} bytes to peers, {from_peer} bytes from peers",
        relays.len()
    );
}

/// Through the relay to turnutils_peer and back, the client on UDP or
/// TCP (the relay is UDP either way).
fn to_peer(tcp: bool, extra: &[&str], low: u16, high: u16) {
    require_tools();
    let mut server = TestServer::start(&loopback_relay_config(
        &format!("{low}-{high}"),
        &format!("secrets = [\"{SECRET}\"]"),
    ));
    let peer = start_peer();
    let transport = if tcp { Transport::Tcp } else { Transport::Udp };
    let label = format!(
        "uclient {}{}",
        if tcp { "TCP" } else { "UDP" },
        if extra.is_empty() {
            String::new()
        } else {
            format!(" {}", extra.join(" "))
        }
    );
    let label = label.as_str();
    let mut args = common_args(server.addr(transport, false).port());
    args.extend([
        "-e".into(),
        "127.0.0.1".into(),
        "-r".into(),
        peer.port.to_string(),
    ]);
    if tcp {
        args.push("-t".into());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let summary = uclient(label, &args);
    check_allocations(label, &mut server, &summary, low, high);
}

#[test]
fn uclient_udp_through_relay_to_peer() {
    to_peer(false, &[], 41000, 41199);
}

/// `-s`: Send and Data indications instead of channels.
#[test]
fn uclient_udp_send_indications_to_peer() {
    to_peer(false, &["-s"], 41200, 41399);
}

#[test]
fn uclient_tcp_through_relay_to_peer() {
    to_peer(true, &[], 41400, 41599);
}

/// `-y`: each client sends to the next client's relayed address, so data
/// goes relay → relay inside turnpike (both sides need permissions for
/// 127.0.0.1, which the policy allows).
#[test]
fn uclient_client_to_client() {
    require_tools();
    let (low, high) = (41600, 41999);
    let mut server = TestServer::start(&loopback_relay_config(
        &format!("{low}-{high}"),
        &format!("secrets = [\"{SECRET}\"]"),
    ));
    let mut args = common_args(server.addr(Transport::Udp, false).port());
    args.push("-y".into());
    let label = "uclient UDP client-to-client";
    let summary = uclient(label, &args);
    check_allocations(label, &mut server, &summary, low, high);
}

/// A wrong secret must make uclient fail: proves the runs above
/// authenticated for real (and that a failure is seen by these tests).
#[test]
fn uclient_wrong_secret_is_refused() {
    require_tools();
    let mut server = TestServer::start(&loopback_relay_config(
        "41600-41999",
        &format!("secrets = [\"{SECRET}\"]"),
    ));
    let mut args = common_args(server.addr(Transport::Udp, false).port());
    args[1] = "not-the-secret".into();
    args.extend(["-e".into(), "127.0.0.1".into(), "-n".into(), "1".into()]);
    let mut cmd = Command::new(UCLIENT);
    cmd.args(&args).arg("127.0.0.1");
    let (status, out, err) = run_bounded(&mut cmd, UCLIENT_LIMIT);
    let text = format!("{out}\n{err}");
    println!("{text}");
    assert!(
        !status.success(),
        "{UCLIENT} with a wrong secret succeeded\n{text}"
    );
    assert!(
        text.contains("Cannot complete Allocation"),
        "{UCLIENT} with a wrong secret: expected an allocation failure\n{text}"
    );
    server.stop(Signal::Int);
    assert!(
        logged_allocations(&server.stderr_text()).is_empty(),
        "no allocation may be made with a wrong secret"
    );
}

#[test]
fn summary_parser() {
    let text = "1: : start_mclient: msz=2, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0\n\
                3: : start_mclient: tot_send_msgs=40, tot_recv_msgs=39\n\
                3: : Total lost packets 1 (2.5%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        parse_summary(text),
        Some(Summary {
            sent: 40,
            received: 39,
            lost: 1,
            send_dropped: 0
        })
    );
    assert_eq!(parse_summary("3: : Total lost packets 0 (0%)"), None);
}
