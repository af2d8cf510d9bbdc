//! Interop: two webrtc-rs ICE agents (`webrtc-ice` 0.17) connect through
//! turnpike with relay candidates only.
//!
//! Each agent gets `turn:127.0.0.1:PORT?transport=udp` with a TURN REST
//! credential and gathers nothing but a relay candidate (webrtc-ice uses
//! its own `turn` client for that). Candidates and ufrag/pwd are swapped
//! in-process, as signaling would (marshalled to SDP candidate lines and
//! parsed back). One agent dials, the other accepts; the connectivity
//! checks, the nomination and then the application data all go agent →
//! turnpike → relay → relay → turnpike → agent.
//!
//! webrtc-ice settings this needed: `candidate_types: [Relay]` and
//! `network_types: [Udp4]` (relay gathering is UDP over IPv4 only in this
//! version). `include_loopback` was not needed: it only filters host
//! candidates, and relay gathering binds its socket on 0.0.0.0 whatever
//! the filters say; the relayed addresses being 127.0.0.1 does not matter
//! to the pairing either. mDNS is disabled (`MulticastDnsMode::Disabled`)
//! so the agents open no multicast socket: nothing here may leave the
//! host. Everything else is the crate's default (including the 2 s
//! minimum wait before a relay pair is nominated).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::sync::{mpsc, watch};
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState;
use webrtc_ice::url::Url;
use webrtc_util::Conn;

const SECRET: &str = "webrtc-ice-secret";
const PORTS: (u16, u16) = (43000, 43499);
/// Limit for gathering and for reaching Connected (guards only: it takes
/// about 2 s, most of it the agent's own relay nomination wait).
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
const MESSAGES: usize = 5;

async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// An agent with only a relay candidate from turnpike, which reports
/// every gathered candidate (marshalled) on the returned channel, `None`
/// when gathering is done, and its state changes on the watch.
async fn relay_agent(
    turn: SocketAddr,
    user: &str,
    controlling: bool,
) -> (
    Arc<Agent>,
    mpsc::UnboundedReceiver<Option<String>>,
    watch::Receiver<ConnectionState>,
) {
    let mut url = Url::parse_url(&format!("turn:{turn}?transport=udp")).expect("TURN URL");
    let (username, password) = rest_credential(SECRET, user);
    url.username = username;
    url.password = password;
    let agent = Agent::new(AgentConfig {
        urls: vec![url],
        network_types: vec![NetworkType::Udp4],
        candidate_types: vec![CandidateType::Relay],
        multicast_dns_mode: MulticastDnsMode::Disabled,
        is_controlling: controlling,
        ..Default::default()
    })
    .await
    .expect("Agent::new");
    let agent = Arc::new(agent);

    let (cand_tx, cand_rx) = mpsc::unbounded_channel();
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            let _ = cand_tx.send(c.map(|c| c.marshal()));
            Box::pin(async {})
        },
    ));
    let (state_tx, state_rx) = watch::channel(ConnectionState::New);
    agent.on_connection_state_change(Box::new(move |s: ConnectionState| {
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));
    agent.gather_candidates().expect("gather_candidates");
    (agent, cand_rx, state_rx)
}

/// Every candidate an agent gathered, as SDP candidate strings.
async fn gathered(label: &str, rx: &mut mpsc::UnboundedReceiver<Option<String>>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match within(&format!("{label}: gathering"), CONNECT_LIMIT, rx.recv()).await {
            Some(Some(c)) => out.push(c),
            Some(None) | None => return out,
        }
    }
}

/// The single relay candidate of `cands`: its relayed address, which must
/// be on 127.0.0.1 in turnpike's relay range.
fn relayed_address(label: &str, cands: &[String]) -> SocketAddr {
    assert_eq!(
        cands.len(),
        1,
        "{label}: expected exactly one (relay) candidate, got {cands:?}"
    );
    let c = unmarshal_candidate(&cands[0]).expect("candidate parses");
    assert_eq!(c.candidate_type(), CandidateType::Relay, "{label}: {c}");
    let addr = SocketAddr::new(
        c.address().parse().expect("candidate address is an IP"),
        c.port(),
    );
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "{label}: {c}");
    assert!(
        (PORTS.0..=PORTS.1).contains(&addr.port()),
        "{label}: relayed port outside turnpike's range: {c}"
    );
    addr
}

fn add_remote(agent: &Agent, cands: &[String]) {
    for s in cands {
        let c: Arc<dyn Candidate + Send + Sync> =
            Arc::new(unmarshal_candidate(s).expect("candidate parses"));
        agent
            .add_remote_candidate(&c)
            .expect("add_remote_candidate");
    }
}

/// The selected pair must be relay ↔ relay, between the two relayed
/// addresses turnpike handed out.
fn check_selected(label: &str, agent: &Agent, local: SocketAddr, remote: SocketAddr) {
    let pair = agent
        .get_selected_candidate_pair()
        .unwrap_or_else(|| panic!("{label}: connected without a selected pair"));
    let addr = |c: &Arc<dyn Candidate + Send + Sync>| {
        SocketAddr::new(c.address().parse().expect("IP"), c.port())
    };
    println!(
        "{label}: selected pair {} {} <-> {} {}",
        pair.local.candidate_type(),
        addr(&pair.local),
        pair.remote.candidate_type(),
        addr(&pair.remote)
    );
    assert_eq!(pair.local.candidate_type(), CandidateType::Relay, "{label}");
    assert_eq!(
        pair.remote.candidate_type(),
        CandidateType::Relay,
        "{label}"
    );
    assert_eq!(addr(&pair.local), local, "{label}: local relayed address");
    assert_eq!(
        addr(&pair.remote),
        remote,
        "{label}: remote relayed address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_connect_relay_to_relay_through_turnpike() {
    let mut server = TestServer::start(&loopback_relay_config(
        &format!("{}-{}", PORTS.0, PORTS.1),
        &format!("secrets = [\"{SECRET}\"]"),
    ));
    let turn = server.addr(Transport::Udp, false);

    let (a, mut a_cands, mut a_state) = relay_agent(turn, "ice-a", true).await;
    let (b, mut b_cands, mut b_state) = relay_agent(turn, "ice-b", false).await;
    let a_list = gathered("agent A", &mut a_cands).await;
    let b_list = gathered("agent B", &mut b_cands).await;
    println!("agent A candidates: {a_list:?}\nagent B candidates: {b_list:?}");
    let a_relay = relayed_address("agent A", &a_list);
    let b_relay = relayed_address("agent B", &b_list);
    assert_ne!(a_relay, b_relay, "two allocations, two relayed addresses");

    // Signaling, in-process.
    add_remote(&a, &b_list);
    add_remote(&b, &a_list);
    let (a_ufrag, a_pwd) = a.get_local_user_credentials().await;
    let (b_ufrag, b_pwd) = b.get_local_user_credentials().await;
    let (_a_cancel, a_cancel_rx) = mpsc::channel(1);
    let (_b_cancel, b_cancel_rx) = mpsc::channel(1);
    let (a_conn, b_conn) = within("dial/accept", CONNECT_LIMIT, async {
        tokio::join!(
            a.dial(a_cancel_rx, b_ufrag, b_pwd),
            b.accept(b_cancel_rx, a_ufrag, a_pwd)
        )
    })
    .await;
    let a_conn = a_conn.expect("agent A dial");
    let b_conn = b_conn.expect("agent B accept");

    for (label, state) in [("agent A", &mut a_state), ("agent B", &mut b_state)] {
        within(
            &format!("{label}: Connected"),
            CONNECT_LIMIT,
            state.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await
        .expect("state channel open");
    }
    check_selected("agent A", &a, a_relay, b_relay);
    check_selected("agent B", &b, b_relay, a_relay);

    // Application data both ways over the ICE conns.
    let mut buf = vec![0u8; 1500];
    for i in 0..MESSAGES {
        let ping = format!("ping {i} from A");
        a_conn.send(ping.as_bytes()).await.expect("A send");
        let n = within("B recv", IO_TIMEOUT, b_conn.recv(&mut buf))
            .await
            .expect("B recv");
        assert_eq!(&buf[..n], ping.as_bytes(), "message {i} at B");

        let pong = format!("pong {i} from B");
        b_conn.send(pong.as_bytes()).await.expect("B send");
        let n = within("A recv", IO_TIMEOUT, a_conn.recv(&mut buf))
            .await
            .expect("A recv");
        assert_eq!(&buf[..n], pong.as_bytes(), "message {i} at A");
    }
    println!("{MESSAGES} messages each way over the relay-relay pair");

    within("agent A close", CONNECT_LIMIT, a.close())
        .await
        .expect("close A");
    within("agent B close", CONNECT_LIMIT, b.close())
        .await
        .expect("close B");

    // turnpike's side: exactly the two allocations whose relayed
    // addresses the agents used, and it relayed the traffic.
    let status = server.stop(Signal::Int);
    assert!(status.success(), "turnpike exit status {status}");
    let log = server.stderr_text();
    let mut logged = logged_allocations(&log);
    logged.sort();
    let mut expected = vec![a_relay, b_relay];
    expected.sort();
    assert_eq!(
        logged, expected,
        "turnpike's \"allocation created\" lines vs the agents' relay candidates:\n{log}"
    );
    let (to_peer, from_peer) = logged_traffic(&log);
    println!("turnpike relayed {to_peer} bytes to peers and {from_peer} bytes from peers");
    let payload = (2 * MESSAGES * "ping 0 from A".len()) as u64;
    assert!(
        to_peer >= payload && from_peer >= payload,
        "turnpike relayed {to_peer}/{from_peer} bytes, expected at least {payload} each way"
    );
}
