//! A sans-IO ICE agent (RFC 8445 subset) built to test paths, not to pick
//! one quietly: it gathers host, server-reflexive and relayed candidates,
//! checks every pair (Binding with PRIORITY, ICE-CONTROLLING/-CONTROLLED
//! and tie-breaker, USE-CANDIDATE, short-term MESSAGE-INTEGRITY and
//! FINGERPRINT, RFC 8489 retransmission, 487 role conflicts, peer-reflexive candidates,
//! triggered checks), nominates, and then measures round trips on every
//! pair that succeeded.
//!
//! Driving it: `start(now)`, then feed [`Agent::handle_packet`] and
//! [`Agent::handle_timeout`] and drain [`Agent::poll_transmit`] /
//! [`Agent::poll_event`]; once gathering is done, give it the other side's
//! [`Description`] with [`Agent::set_remote`]. Left out of RFC 8445: frozen
//! pair states and foundations-based unfreezing (every pair is checked),
//! multiple components, TCP candidates, and keepalives after the test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::candidate::{self, Candidate, Description, Kind, PathKind};
use super::turn::{TurnClient, TurnEvent, TurnFailure, TurnState};
use crate::client::Credentials;
use crate::core::Transport;
use crate::stun::{Due, Reliability, Retransmit, Transactions};
use crate::wire::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, TransactionId, attr,
};

/// The driver's sockets: host UDP sockets, and one connection (UDP socket,
/// TCP or TLS stream) per TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketId {
    Host(u16),
    Turn(u16),
}

/// Bytes to send. For a stream socket (`Turn` over TCP/TLS) `to` is the
/// server and the bytes are one whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A TURN server to allocate on.
#[derive(Clone, Debug)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub transport: Transport,
    pub creds: Credentials,
}

/// Timing knobs (all bounded, so a run always ends).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Ta: at most one new check per `pace` (RFC 8445 §6.1.4.2).
    pub pace: Duration,
    /// Retransmission of checks, server-reflexive Binding requests and
    /// TURN requests (RFC 8489 §6.2.1; to a TURN server over TCP or TLS:
    /// one transmission, `ti`).
    pub retransmit: Retransmit,
    /// Gathering gives up on servers after this long.
    pub gather_timeout: Duration,
    /// The controlled side waits this long for a nomination after its own
    /// checks are done.
    pub nomination_wait: Duration,
    /// Data packets per succeeded pair, spacing, and how long to wait for
    /// the last answer.
    pub pings: u32,
    pub ping_interval: Duration,
    pub ping_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pace: Duration::from_millis(20),
            // Transmissions at 0, 0.2, 0.6, 1.4 and 3 s; failed at 6.2 s.
            retransmit: Retransmit {
                rto: Duration::from_millis(200),
                rc: 5,
                rm: 16,
                ti: Duration::from_secs(5),
                ..Retransmit::RFC8489
            },
            gather_timeout: Duration::from_secs(5),
            nomination_wait: Duration::from_secs(3),
            pings: 20,
            ping_interval: Duration::from_millis(20),
            ping_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub controlling: bool,
    /// STUN server for server-reflexive candidates (UDP).
    pub stun_server: Option<SocketAddr>,
    pub turn_servers: Vec<TurnServer>,
    pub timing: Timing,
    /// Only form pairs of this path kind (and skip gathering what it does
    /// not need).
    pub only: Option<PathKind>,
}

/// Why a pair (or a gathering step) failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "lowercase")]
pub enum Failure {
    Timeout,
    /// An error response: from the peer's agent (401 bad credentials) or
    /// the TURN server (403 forbidden peer).
    Error(u16),
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Error(c) => write!(f, "{c}"),
            Failure::Unreachable(w) => write!(f, "unreachable ({w})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed(Failure),
}

/// Things worth telling the operator as they happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Candidate(Candidate),
    GatherFailed {
        what: String,
        failure: Failure,
    },
    GatheringDone,
    PairDone {
        pair: usize,
    },
    Nominated {
        pair: usize,
    },
    /// Checks and measurements are complete.
    Done,
}

struct Local {
    cand: Candidate,
    socket: SocketId,
    /// The address checks from this candidate are sent from: the host
    /// address, or the relayed address.
    base: SocketAddr,
}

struct Pair {
    local: usize,
    remote: usize,
    priority: u64,
    state: PairState,
    /// The local candidate the success response revealed (RFC 8445
    /// §7.2.5.3.2: host, srflx, prflx or relay).
    valid_local: Option<usize>,
    nominated: bool,
    nominate_on_success: bool,
    succeeded_at: Option<Duration>,
    started: Option<Instant>,
    pings_sent: u32,
    sent_at: Vec<Option<Instant>>,
    rtts: Vec<Duration>,
}

/// What a request of ours is for (the context of its transaction).
#[derive(Clone, Copy, Debug)]
struct Txn {
    /// Pair index, or `None` for a srflx gathering request.
    pair: Option<usize>,
    host: u16,
    use_candidate: bool,
    socket: SocketId,
    to: SocketAddr,
}

struct Turn {
    client: TurnClient,
    local: Option<usize>,
    failure: Option<Failure>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Gathering,
    Gathered,
    Checking,
    Nominating,
    AwaitNomination(Instant),
    Pinging(Instant),
    Done,
}

const PING: u8 = 0xE0;
const PONG: u8 = 0xE1;

/// An ICE agent.
pub struct Agent {
    cfg: AgentConfig,
    rng: StdRng,
    controlling: bool,
    tie_breaker: u64,
    ufrag: String,
    pwd: String,
    local_key: IntegrityKey,
    remote_creds: Option<(String, IntegrityKey)>,
    hosts: Vec<SocketAddr>,
    locals: Vec<Local>,
    remotes: Vec<Candidate>,
    pairs: Vec<Pair>,
    turns: Vec<Turn>,
    txns: Transactions<Txn>,
    triggered: VecDeque<usize>,
    next_check: Instant,
    phase: Phase,
    gather_deadline: Instant,
    gather_failures: Vec<(String, Failure)>,
    started: Instant,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

fn random_string<R: Rng>(rng: &mut R, n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Agent {
    /// An agent with host sockets bound at `hosts` (socket `Host(i)` is
    /// `hosts[i]`).
    pub fn new(cfg: AgentConfig, hosts: Vec<SocketAddr>, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ufrag = random_string(&mut rng, 8);
        let pwd = random_string(&mut rng, 24);
        let tie_breaker = rng.random();
        let retransmit = cfg.timing.retransmit;
        Agent {
            controlling: cfg.controlling,
            local_key: IntegrityKey::short_term(&pwd),
            cfg,
            rng,
            tie_breaker,
            ufrag,
            pwd,
            remote_creds: None,
            hosts,
            locals: Vec::new(),
            remotes: Vec::new(),
            pairs: Vec::new(),
            turns: Vec::new(),
            txns: Transactions::new(retransmit),
            triggered: VecDeque::new(),
            next_check: now,
            phase: Phase::Gathering,
            gather_deadline: now,
            gather_failures: Vec::new(),
            started: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn gathering_done(&self) -> bool {
        !matches!(self.phase, Phase::Gathering)
    }

    /// Our ufrag, pwd and candidates.
    pub fn description(&self) -> Description {
        Description {
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
            candidates: self
                .locals
                .iter()
                .filter(|l| l.cand.kind != Kind::Prflx)
                .map(|l| l.cand.clone())
                .collect(),
        }
    }

    fn wants(&self, k: PathKind) -> bool {
        self.cfg.only.is_none_or(|o| o == k)
    }

    fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    fn add_local(&mut self, cand: Candidate, socket: SocketId, base: SocketAddr) -> usize {
        self.locals.push(Local {
            cand: cand.clone(),
            socket,
            base,
        });
        self.emit(Event::Candidate(cand));
        self.locals.len() - 1
    }

    /// Gather: host candidates at once, srflx by STUN, relay by TURN.
    pub fn start(&mut self, now: Instant) {
        self.started = now;
        self.gather_deadline = now + self.cfg.timing.gather_timeout;
        for (i, &addr) in self.hosts.clone().iter().enumerate() {
            let cand = Candidate {
                kind: Kind::Host,
                addr,
                priority: candidate::priority(Kind::Host, 65535 - i as u16),
                foundation: candidate::foundation(Kind::Host, addr.ip(), None, None),
                via: None,
            };
            self.add_local(cand, SocketId::Host(i as u16), addr);
            if let Some(stun) = self.cfg.stun_server {
                if stun.is_ipv4() == addr.is_ipv4() && self.cfg.only != Some(PathKind::Host) {
                    let tid = TransactionId::random(&mut self.rng);
                    let mut b = Vec::new();
                    crate::client::binding(&mut b, tid, true);
                    self.send_txn(
                        now,
                        b,
                        Txn {
                            pair: None,
                            host: i as u16,
                            use_candidate: false,
                            socket: SocketId::Host(i as u16),
                            to: stun,
                        },
                    );
                }
            }
        }
        if self.wants(PathKind::Relay) {
            for (j, t) in self.cfg.turn_servers.clone().into_iter().enumerate() {
                let mut client = TurnClient::new(
                    t.addr,
                    t.transport,
                    t.creds,
                    self.cfg.timing.retransmit,
                    self.rng.random(),
                );
                client.start(now);
                self.turns.push(Turn {
                    client,
                    local: None,
                    failure: None,
                });
                self.flush_turn(j);
            }
        }
        self.check_gathering_done(now);
    }

    /// Start a transaction for `request` and send its first transmission.
    /// Checks go over UDP, or through a relay to the peer's UDP socket:
    /// always retransmitted.
    fn send_txn(&mut self, now: Instant, request: Vec<u8>, t: Txn) {
        let first = self.txns.start(now, request, Reliability::Unreliable, t);
        self.send_from_socket(now, t.socket, t.to, first);
    }

    /// Send from a local socket; relay sockets go through their TURN client.
    fn send_from_socket(&mut self, now: Instant, socket: SocketId, to: SocketAddr, data: Vec<u8>) {
        match socket {
            SocketId::Host(_) => self.out.push_back(Transmit { socket, to, data }),
            SocketId::Turn(j) => {
                if let Some(t) = self.turns.get_mut(j as usize) {
                    t.client.send_to(now, to, &data);
                }
                self.flush_turn(j as usize);
            }
        }
    }

    fn flush_turn(&mut self, j: usize) {
        let Some(t) = self.turns.get_mut(j) else {
            return;
        };
        while let Some(data) = t.client.poll_transmit() {
            self.out.push_back(Transmit {
                socket: SocketId::Turn(j as u16),
                to: t.client.server,
                data,
            });
        }
    }

    fn check_gathering_done(&mut self, now: Instant) {
        if self.phase != Phase::Gathering {
            return;
        }
        let stun_pending = self.txns.iter().any(|(_, t)| t.pair.is_none());
        let turn_pending = self
            .turns
            .iter()
            .any(|t| matches!(t.client.state(), TurnState::Allocating));
        if (stun_pending || turn_pending) && now < self.gather_deadline {
            return;
        }
        // Time is up: whatever is still pending failed.
        let pending: Vec<TransactionId> = self
            .txns
            .iter()
            .filter(|(_, t)| t.pair.is_none())
            .map(|(id, _)| id)
            .collect();
        for id in pending {
            let t = self.txns.finish(id).expect("listed");
            self.gather_failures
                .push((format!("srflx via {}", t.to), Failure::Timeout));
            self.emit(Event::GatherFailed {
                what: format!("srflx via {}", t.to),
                failure: Failure::Timeout,
            });
        }
        for j in 0..self.turns.len() {
            if matches!(self.turns[j].client.state(), TurnState::Allocating) {
                self.turns[j].client.unreachable("gathering timed out");
                self.turn_failed(j, Failure::Timeout);
            }
        }
        self.phase = Phase::Gathered;
        self.emit(Event::GatheringDone);
        if self.remote_creds.is_some() {
            self.begin_checks(now);
        }
    }

    fn turn_failed(&mut self, j: usize, f: Failure) {
        let t = &self.turns[j];
        if t.failure.is_some() {
            return;
        }
        let what = format!("relay via {} {}", t.client.transport, t.client.server);
        self.turns[j].failure = Some(f.clone());
        self.gather_failures.push((what.clone(), f.clone()));
        self.emit(Event::GatherFailed { what, failure: f });
    }

    /// The other side's credentials and candidates.
    pub fn set_remote(&mut self, now: Instant, d: &Description) {
        self.remote_creds = Some((d.ufrag.clone(), IntegrityKey::short_term(&d.pwd)));
        for c in &d.candidates {
            self.add_remote(now, c.clone());
        }
        if self.phase == Phase::Gathered {
            self.begin_checks(now);
        }
    }

    fn add_remote(&mut self, now: Instant, c: Candidate) -> usize {
        if let Some(i) = self.remotes.iter().position(|r| r.addr == c.addr) {
            // Learnt from a check first, signalled now: the signalled
            // candidate replaces the peer-reflexive one (RFC 8445
            // §7.3.1.3), so its pairs show the path they really take.
            if self.remotes[i].kind == Kind::Prflx && c.kind != Kind::Prflx {
                self.remotes[i] = c;
                for p in 0..self.pairs.len() {
                    if self.pairs[p].remote == i {
                        self.pairs[p].priority = self.pair_priority(self.pairs[p].local, i);
                    }
                }
                for l in 0..self.locals.len() {
                    self.maybe_pair(l, i);
                }
            }
            return i;
        }
        // Relays need a permission before the peer's checks can come in.
        for j in 0..self.turns.len() {
            if self.turns[j]
                .client
                .relayed()
                .is_some_and(|r| r.is_ipv4() == c.addr.is_ipv4())
            {
                self.turns[j].client.permit(now, c.addr.ip());
                self.flush_turn(j);
            }
        }
        // A peer-reflexive remote is paired only with the local candidate
        // its check arrived on, by the caller (RFC 8445 §7.3.1.3).
        let signalled = c.kind != Kind::Prflx;
        self.remotes.push(c);
        let r = self.remotes.len() - 1;
        if signalled {
            for l in 0..self.locals.len() {
                self.maybe_pair(l, r);
            }
        }
        r
    }

    /// RFC 8445 §6.1.2: pair a local base (host or relay; srflx candidates
    /// share their host base and add no pair) with a remote of its family.
    fn maybe_pair(&mut self, l: usize, r: usize) -> Option<usize> {
        let local = &self.locals[l];
        let remote = &self.remotes[r];
        if matches!(local.cand.kind, Kind::Srflx | Kind::Prflx)
            || local.base.is_ipv4() != remote.addr.is_ipv4()
        {
            return None;
        }
        if let Some(p) = self
            .pairs
            .iter()
            .position(|p| p.local == l && p.remote == r)
        {
            return Some(p);
        }
        if !self.wants(PathKind::of(local.cand.kind, remote.kind)) {
            return None;
        }
        let priority = self.pair_priority(l, r);
        self.pairs.push(Pair {
            local: l,
            remote: r,
            priority,
            state: PairState::Waiting,
            valid_local: None,
            nominated: false,
            nominate_on_success: false,
            succeeded_at: None,
            started: None,
            pings_sent: 0,
            sent_at: Vec::new(),
            rtts: Vec::new(),
        });
        Some(self.pairs.len() - 1)
    }

    fn pair_priority(&self, l: usize, r: usize) -> u64 {
        let (lp, rp) = (self.locals[l].cand.priority, self.remotes[r].priority);
        if self.controlling {
            candidate::pair_priority(lp, rp)
        } else {
            candidate::pair_priority(rp, lp)
        }
    }

    fn begin_checks(&mut self, now: Instant) {
        self.phase = Phase::Checking;
        self.next_check = now;
        self.advance_phase(now);
    }

    /// Bytes arrived on `socket` from `from`.
    pub fn handle_packet(&mut self, now: Instant, socket: SocketId, from: SocketAddr, data: &[u8]) {
        match socket {
            SocketId::Host(i) => {
                if let Some(l) = self
                    .locals
                    .iter()
                    .position(|x| x.socket == socket && x.cand.kind == Kind::Host)
                {
                    self.on_datagram(now, l, Some(i), from, data);
                }
            }
            SocketId::Turn(j) => {
                let j = j as usize;
                let Some(t) = self.turns.get_mut(j) else {
                    return;
                };
                let peer = t.client.handle_from_server(now, data);
                self.drain_turn_events(now, j);
                self.flush_turn(j);
                if let (Some(pd), Some(l)) = (peer, self.turns[j].local) {
                    self.on_datagram(now, l, None, pd.peer, &pd.data);
                }
            }
        }
        self.advance_phase(now);
    }

    fn drain_turn_events(&mut self, now: Instant, j: usize) {
        while let Some(e) = self.turns[j].client.poll_event() {
            match e {
                TurnEvent::Allocated { relayed, .. } => {
                    let via = self.turns[j].client.transport;
                    let pref = match via {
                        Transport::Udp => 3,
                        Transport::Tcp => 2,
                        Transport::Tls => 1,
                    };
                    let cand = Candidate {
                        kind: Kind::Relay,
                        addr: relayed,
                        priority: candidate::priority(Kind::Relay, pref * 256 + j as u16),
                        foundation: candidate::foundation(
                            Kind::Relay,
                            relayed.ip(),
                            Some(self.turns[j].client.server),
                            Some(via),
                        ),
                        via: Some(via),
                    };
                    let l = self.add_local(cand, SocketId::Turn(j as u16), relayed);
                    self.turns[j].local = Some(l);
                    let remotes: Vec<SocketAddr> = self.remotes.iter().map(|r| r.addr).collect();
                    for addr in remotes.iter().filter(|a| a.is_ipv4() == relayed.is_ipv4()) {
                        self.turns[j].client.permit(now, addr.ip());
                    }
                    for r in 0..self.remotes.len() {
                        if self.remotes[r].kind != Kind::Prflx {
                            self.maybe_pair(l, r);
                        }
                    }
                }
                TurnEvent::Failed(f) => {
                    let failure = match f {
                        TurnFailure::Timeout => Failure::Timeout,
                        TurnFailure::Error(c, _) => Failure::Error(c),
                        TurnFailure::Unreachable(w) => Failure::Unreachable(w),
                    };
                    if let Some(l) = self.turns[j].local {
                        // The allocation died under live pairs.
                        for p in 0..self.pairs.len() {
                            if self.pairs[p].local == l
                                && !matches!(
                                    self.pairs[p].state,
                                    PairState::Succeeded | PairState::Failed(_)
                                )
                            {
                                self.fail_pair(p, failure.clone());
                            }
                        }
                    } else {
                        self.turn_failed(j, failure);
                    }
                }
                TurnEvent::PermissionRefused { ip, code } => {
                    if let Some(l) = self.turns[j].local {
                        for p in 0..self.pairs.len() {
                            let pr = &self.pairs[p];
                            if pr.local == l
                                && self.remotes[pr.remote].addr.ip() == ip
                                && !matches!(pr.state, PairState::Succeeded | PairState::Failed(_))
                            {
                                self.fail_pair(p, Failure::Error(code));
                            }
                        }
                    }
                }
            }
        }
        self.check_gathering_done(now);
    }

    /// A datagram for local candidate `l` (a host socket, or a relay after
    /// unwrapping) from `from`.
    fn on_datagram(
        &mut self,
        now: Instant,
        l: usize,
        host: Option<u16>,
        from: SocketAddr,
        data: &[u8],
    ) {
        match data.first() {
            Some(&PING) => {
                let mut pong = data.to_vec();
                pong[0] = PONG;
                let socket = self.locals[l].socket;
                self.send_from_socket(now, socket, from, pong);
            }
            Some(&PONG) => self.on_pong(now, data),
            Some(&b) if crate::wire::classify(b) == Some(crate::wire::FrameKind::Stun) => {
                let Ok(msg) = Message::parse(data) else {
                    return;
                };
                if msg.check_fingerprint() == Some(false) || msg.method() != Method::BINDING {
                    return;
                }
                match msg.class() {
                    Class::Request => self.on_request(now, l, from, &msg),
                    Class::Success | Class::Error => self.on_response(now, host, l, from, &msg),
                    Class::Indication => {}
                }
            }
            _ => {}
        }
    }

    /// RFC 8445 §7.3: answer a connectivity check.
    fn on_request(&mut self, now: Instant, l: usize, from: SocketAddr, msg: &Message<'_>) {
        let expected = self
            .remote_creds
            .as_ref()
            .map(|(u, _)| format!("{}:{}", self.ufrag, u));
        let user_ok = match (msg.username(), &expected) {
            (Ok(Some(u)), Some(e)) => u == e,
            // Before we know the peer: the part before ':' must be ours.
            (Ok(Some(u)), None) => u.split(':').next() == Some(self.ufrag.as_str()),
            _ => false,
        };
        let socket = self.locals[l].socket;
        if !user_ok || msg.verify_integrity(&self.local_key).is_err() {
            self.respond_error(now, socket, from, msg, 401, "Unauthorized");
            return;
        }
        // §7.3.1.1 role conflicts.
        let theirs_controlling = msg.ice_controlling().ok().flatten();
        let theirs_controlled = msg.ice_controlled().ok().flatten();
        if let (true, Some(t)) = (self.controlling, theirs_controlling) {
            if self.tie_breaker >= t {
                self.respond_error(now, socket, from, msg, 487, "Role Conflict");
                return;
            }
            self.switch_role(false);
        } else if let (false, Some(t)) = (self.controlling, theirs_controlled) {
            if self.tie_breaker >= t {
                self.switch_role(true);
            } else {
                self.respond_error(now, socket, from, msg, 487, "Role Conflict");
                return;
            }
        }
        // Success response with the address we saw.
        let mut b = Vec::new();
        let mut mb = MessageBuilder::response(&mut b, msg, Class::Success);
        mb.xor_address(attr::XOR_MAPPED_ADDRESS, from)
            .integrity(&self.local_key)
            .fingerprint();
        self.send_from_socket(now, socket, from, b);
        // Peer-reflexive remote (§7.3.1.3), then the triggered check
        // (§7.3.1.4).
        let r = match self.remotes.iter().position(|c| c.addr == from) {
            Some(r) => r,
            None => {
                let prio = msg.priority().ok().flatten().unwrap_or(0);
                let foundation = format!("{:08x}", self.rng.random::<u32>());
                self.add_remote(
                    now,
                    Candidate {
                        kind: Kind::Prflx,
                        addr: from,
                        priority: prio,
                        foundation,
                        via: None,
                    },
                )
            }
        };
        let Some(p) = self.maybe_pair(l, r) else {
            return;
        };
        if msg.use_candidate() && !self.controlling {
            if self.pairs[p].state == PairState::Succeeded {
                self.nominate(p);
            } else {
                self.pairs[p].nominate_on_success = true;
            }
        }
        if matches!(
            self.pairs[p].state,
            PairState::Waiting | PairState::Failed(_)
        ) && self.remote_creds.is_some()
            && !self.triggered.contains(&p)
        {
            self.pairs[p].state = PairState::Waiting;
            self.triggered.push_back(p);
        }
    }

    fn respond_error(
        &mut self,
        now: Instant,
        socket: SocketId,
        to: SocketAddr,
        req: &Message<'_>,
        code: u16,
        reason: &str,
    ) {
        let mut b = Vec::new();
        let mut mb = MessageBuilder::response(&mut b, req, Class::Error);
        mb.error_code(code, reason);
        if code == 487 {
            mb.integrity(&self.local_key);
        }
        mb.fingerprint();
        self.send_from_socket(now, socket, to, b);
    }

    fn switch_role(&mut self, controlling: bool) {
        self.controlling = controlling;
        for p in 0..self.pairs.len() {
            let (l, r) = (self.pairs[p].local, self.pairs[p].remote);
            self.pairs[p].priority = self.pair_priority(l, r);
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        host: Option<u16>,
        l: usize,
        from: SocketAddr,
        msg: &Message<'_>,
    ) {
        let tid = msg.transaction_id();
        let Some(&t) = self.txns.response_to(msg) else {
            return;
        };
        let Some(p) = t.pair else {
            // srflx gathering (RFC 8489 Binding on a host socket).
            if host != Some(t.host) || from != t.to {
                return;
            }
            self.txns.finish(tid);
            if let Ok(Some(mapped)) = msg.xor_mapped_address() {
                let base = self.hosts[t.host as usize];
                if mapped != base && !self.locals.iter().any(|x| x.cand.addr == mapped) {
                    let cand = Candidate {
                        kind: Kind::Srflx,
                        addr: mapped,
                        priority: candidate::priority(Kind::Srflx, 65535 - t.host),
                        foundation: candidate::foundation(Kind::Srflx, base.ip(), Some(t.to), None),
                        via: None,
                    };
                    self.add_local(cand, SocketId::Host(t.host), base);
                }
            }
            self.check_gathering_done(now);
            return;
        };
        // §7.2.5.2.1: the response must come from where the check went.
        if from != t.to || self.pairs[p].local != l {
            return;
        }
        let Some((_, rkey)) = &self.remote_creds else {
            return;
        };
        if msg.verify_integrity(rkey).is_err() {
            return;
        }
        self.txns.finish(tid);
        if msg.class() == Class::Error {
            let code = msg.error_code().ok().flatten().map_or(400, |e| e.code);
            if code == 487 {
                // §7.2.5.1: switch role and try again.
                self.switch_role(!self.controlling);
                self.pairs[p].state = PairState::Waiting;
                self.triggered.push_back(p);
            } else {
                self.fail_pair(p, Failure::Error(code));
            }
            return;
        }
        let Ok(Some(mapped)) = msg.xor_mapped_address() else {
            self.fail_pair(p, Failure::Error(400));
            return;
        };
        // §7.2.5.3.2: the valid pair's local candidate is the one whose
        // address the peer saw; an unknown one is peer-reflexive.
        let valid_local = match self
            .locals
            .iter()
            .position(|x| x.cand.addr == mapped && x.socket == self.locals[l].socket)
        {
            Some(v) => v,
            None => {
                let socket = self.locals[l].socket;
                let base = self.locals[l].base;
                let prio = candidate::priority(Kind::Prflx, 65535);
                let foundation = candidate::foundation(Kind::Prflx, base.ip(), None, None);
                self.add_local(
                    Candidate {
                        kind: Kind::Prflx,
                        addr: mapped,
                        priority: prio,
                        foundation,
                        via: None,
                    },
                    socket,
                    base,
                )
            }
        };
        let pair = &mut self.pairs[p];
        pair.valid_local = Some(valid_local);
        if pair.state != PairState::Succeeded {
            pair.state = PairState::Succeeded;
            pair.succeeded_at = Some(now.saturating_duration_since(self.started));
            self.emit(Event::PairDone { pair: p });
        }
        if t.use_candidate || self.pairs[p].nominate_on_success {
            self.nominate(p);
        }
    }

    fn nominate(&mut self, p: usize) {
        if !self.pairs[p].nominated {
            self.pairs[p].nominated = true;
            self.emit(Event::Nominated { pair: p });
        }
    }

    fn fail_pair(&mut self, p: usize, f: Failure) {
        if !matches!(
            self.pairs[p].state,
            PairState::Failed(_) | PairState::Succeeded
        ) {
            self.pairs[p].state = PairState::Failed(f);
            self.txns.retain(|t| t.pair != Some(p));
            self.emit(Event::PairDone { pair: p });
        }
    }

    /// The driver could not send from `socket` to `to` (no route, ICMP
    /// unreachable, connection lost).
    pub fn unreachable(&mut self, now: Instant, socket: SocketId, to: SocketAddr, why: &str) {
        match socket {
            SocketId::Turn(j) => {
                let Some(t) = self.turns.get_mut(j as usize) else {
                    return;
                };
                t.client.unreachable(why);
                self.drain_turn_events(now, j as usize);
            }
            SocketId::Host(_) => {
                let ps: Vec<usize> = (0..self.pairs.len())
                    .filter(|&p| {
                        self.locals[self.pairs[p].local].socket == socket
                            && self.remotes[self.pairs[p].remote].addr == to
                    })
                    .collect();
                for p in ps {
                    self.fail_pair(p, Failure::Unreachable(why.to_string()));
                }
                let gather: Vec<TransactionId> = self
                    .txns
                    .iter()
                    .filter(|(_, t)| t.pair.is_none() && t.socket == socket && t.to == to)
                    .map(|(id, _)| id)
                    .collect();
                for id in gather {
                    self.txns.finish(id);
                    let what = format!("srflx via {to}");
                    self.gather_failures
                        .push((what.clone(), Failure::Unreachable(why.to_string())));
                    self.emit(Event::GatherFailed {
                        what,
                        failure: Failure::Unreachable(why.to_string()),
                    });
                }
                self.check_gathering_done(now);
            }
        }
        self.advance_phase(now);
    }

    /// Send the check of pair `p` (RFC 8445 §7.2.4).
    fn send_check(&mut self, now: Instant, p: usize, use_candidate: bool) {
        let Some((rufrag, rkey)) = self.remote_creds.clone() else {
            return;
        };
        let l = self.pairs[p].local;
        let to = self.remotes[self.pairs[p].remote].addr;
        let tid = TransactionId::random(&mut self.rng);
        let mut b = Vec::new();
        let mut mb = MessageBuilder::new(
            &mut b,
            MessageType::new(Method::BINDING, Class::Request),
            tid,
        );
        mb.text(attr::USERNAME, &format!("{rufrag}:{}", self.ufrag))
            .u32(
                attr::PRIORITY,
                candidate::priority(Kind::Prflx, (self.locals[l].cand.priority >> 8) as u16),
            );
        if self.controlling {
            mb.u64(attr::ICE_CONTROLLING, self.tie_breaker);
        } else {
            mb.u64(attr::ICE_CONTROLLED, self.tie_breaker);
        }
        if use_candidate {
            mb.attr(attr::USE_CANDIDATE, &[]);
        }
        mb.integrity(&rkey).fingerprint();
        let socket = self.locals[l].socket;
        // A nominating re-check leaves a succeeded pair succeeded (if it
        // is lost, the pair still works; it is just not nominated).
        if self.pairs[p].state != PairState::Succeeded {
            self.pairs[p].state = PairState::InProgress;
        }
        self.pairs[p].started.get_or_insert(now);
        self.send_txn(
            now,
            b,
            Txn {
                pair: Some(p),
                host: 0,
                use_candidate,
                socket,
                to,
            },
        );
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = self.txns.poll_timeout();
        let mut consider = |d: Instant| t = Some(t.map_or(d, |t| t.min(d)));
        for turn in &self.turns {
            if let Some(d) = turn.client.poll_timeout() {
                consider(d);
            }
        }
        match self.phase {
            Phase::Gathering => consider(self.gather_deadline),
            Phase::Checking
                if !self.triggered.is_empty()
                    || self.pairs.iter().any(|p| p.state == PairState::Waiting) =>
            {
                consider(self.next_check)
            }
            Phase::AwaitNomination(d) => consider(d),
            Phase::Pinging(until) => {
                // `until` may be past while a late pair's checks or pings
                // are still going: their own times come first then.
                let pings_left = self.pairs.iter().any(|p| {
                    p.state == PairState::Succeeded && p.pings_sent < self.cfg.timing.pings
                });
                if !pings_left && !self.txns.iter().any(|(_, t)| t.pair.is_some()) {
                    consider(until);
                }
                if pings_left {
                    consider(self.next_check);
                }
            }
            _ => {}
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Retransmissions and timeouts of our own requests.
        while let Some(due) = self.txns.poll_due(now) {
            let t = match due {
                Due::Retransmit {
                    request, context, ..
                } => {
                    self.send_from_socket(now, context.socket, context.to, request);
                    continue;
                }
                Due::TimedOut { context, .. } => context,
            };
            match t.pair {
                Some(p) => self.fail_pair(p, Failure::Timeout),
                None => {
                    let what = format!("srflx via {}", t.to);
                    self.gather_failures.push((what.clone(), Failure::Timeout));
                    self.emit(Event::GatherFailed {
                        what,
                        failure: Failure::Timeout,
                    });
                }
            }
        }
        for j in 0..self.turns.len() {
            self.turns[j].client.handle_timeout(now);
            self.drain_turn_events(now, j);
            self.flush_turn(j);
        }
        self.check_gathering_done(now);
        self.advance_phase(now);
    }

    /// Pace checks, nominate, measure, finish.
    fn advance_phase(&mut self, now: Instant) {
        loop {
            match self.phase {
                Phase::Checking => {
                    if now >= self.next_check {
                        let next = self.triggered.pop_front().or_else(|| {
                            (0..self.pairs.len())
                                .filter(|&p| self.pairs[p].state == PairState::Waiting)
                                .max_by_key(|&p| self.pairs[p].priority)
                        });
                        if let Some(p) = next {
                            self.send_check(now, p, false);
                            self.next_check = now + self.cfg.timing.pace;
                        }
                    }
                    let busy = !self.triggered.is_empty()
                        || self
                            .pairs
                            .iter()
                            .any(|p| matches!(p.state, PairState::Waiting | PairState::InProgress));
                    if busy {
                        return;
                    }
                    if self.controlling {
                        let best = (0..self.pairs.len())
                            .filter(|&p| self.pairs[p].state == PairState::Succeeded)
                            .max_by_key(|&p| self.pairs[p].priority);
                        match best {
                            Some(p) if !self.pairs.iter().any(|p| p.nominated) => {
                                self.send_check(now, p, true);
                                self.phase = Phase::Nominating;
                            }
                            _ => self.start_pinging(now),
                        }
                    } else if self.pairs.iter().any(|p| p.nominated) {
                        self.start_pinging(now);
                    } else {
                        self.phase = Phase::AwaitNomination(now + self.cfg.timing.nomination_wait);
                    }
                }
                Phase::Nominating => {
                    if self.txns.iter().any(|(_, t)| t.use_candidate) {
                        return;
                    }
                    self.start_pinging(now);
                }
                Phase::AwaitNomination(until) => {
                    let busy = !self.triggered.is_empty();
                    if busy {
                        self.phase = Phase::Checking;
                        continue;
                    }
                    if self.pairs.iter().any(|p| p.nominated) || now >= until {
                        self.start_pinging(now);
                    } else {
                        return;
                    }
                }
                Phase::Pinging(until) => {
                    // Late triggered checks still get answered and sent.
                    if let Some(p) = self.triggered.pop_front() {
                        self.send_check(now, p, false);
                    }
                    if now >= self.next_check {
                        self.send_pings(now);
                        self.next_check = now + self.cfg.timing.ping_interval;
                    }
                    let all_sent = self
                        .pairs
                        .iter()
                        .filter(|p| p.state == PairState::Succeeded)
                        .all(|p| p.pings_sent >= self.cfg.timing.pings);
                    if all_sent && now >= until && !self.txns.iter().any(|(_, t)| t.pair.is_some())
                    {
                        self.phase = Phase::Done;
                        self.emit(Event::Done);
                    }
                    return;
                }
                Phase::Gathering | Phase::Gathered | Phase::Done => return,
            }
        }
    }

    fn start_pinging(&mut self, now: Instant) {
        let t = &self.cfg.timing;
        let until = now + t.ping_interval * t.pings + t.ping_wait;
        self.phase = Phase::Pinging(until);
        self.next_check = now;
    }

    fn send_pings(&mut self, now: Instant) {
        let limit = self.cfg.timing.pings;
        for p in 0..self.pairs.len() {
            let pair = &self.pairs[p];
            if pair.state != PairState::Succeeded || pair.pings_sent >= limit {
                continue;
            }
            let seq = pair.pings_sent;
            let mut data = Vec::with_capacity(16);
            data.push(PING);
            data.extend_from_slice(&(p as u32).to_be_bytes());
            data.extend_from_slice(&seq.to_be_bytes());
            let l = pair.valid_local.unwrap_or(pair.local);
            let socket = self.locals[l].socket;
            let to = self.remotes[pair.remote].addr;
            let pair = &mut self.pairs[p];
            pair.pings_sent += 1;
            pair.sent_at.push(Some(now));
            self.send_from_socket(now, socket, to, data);
        }
    }

    fn on_pong(&mut self, now: Instant, data: &[u8]) {
        if data.len() < 9 {
            return;
        }
        let p = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let seq = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
        let Some(pair) = self.pairs.get_mut(p) else {
            return;
        };
        if let Some(slot) = pair.sent_at.get_mut(seq) {
            if let Some(sent) = slot.take() {
                pair.rtts.push(now.saturating_duration_since(sent));
            }
        }
    }

    /// Delete TURN allocations (polite end of a run).
    pub fn close(&mut self, now: Instant) {
        for j in 0..self.turns.len() {
            self.turns[j].client.close(now);
            self.flush_turn(j);
        }
    }

    /// The results so far.
    pub fn report(&self) -> Report {
        let info = |c: &Candidate| CandidateInfo {
            kind: c.kind,
            addr: c.addr,
            via: c.via,
        };
        let pairs = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let local = &self.locals[p.valid_local.unwrap_or(p.local)].cand;
                let remote = &self.remotes[p.remote];
                let (state, failure) = match &p.state {
                    PairState::Succeeded => ("succeeded", None),
                    PairState::Failed(f) => ("failed", Some(f.clone())),
                    PairState::Waiting => ("waiting", None),
                    PairState::InProgress => ("in-progress", None),
                };
                PairReport {
                    id: i,
                    path: PathKind::of(local.kind, remote.kind),
                    local: info(local),
                    checked_from: info(&self.locals[p.local].cand),
                    remote: info(remote),
                    state: state.to_string(),
                    failure,
                    nominated: p.nominated,
                    check_ms: p.succeeded_at.map(|d| d.as_secs_f64() * 1000.0),
                    rtt: RttStats::of(&p.rtts, p.pings_sent),
                }
            })
            .collect();
        Report {
            role: if self.controlling {
                "controlling"
            } else {
                "controlled"
            }
            .to_string(),
            candidates: self.locals.iter().map(|l| info(&l.cand)).collect(),
            gathering_failures: self
                .gather_failures
                .iter()
                .map(|(what, f)| GatherFailure {
                    what: what.clone(),
                    failure: f.clone(),
                })
                .collect(),
            pairs,
        }
    }
}

/// A candidate in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateInfo {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub addr: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Transport>,
}

/// Round-trip statistics of a pair, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RttStats {
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl RttStats {
    pub fn of(rtts: &[Duration], sent: u32) -> Self {
        let mut v: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |q: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        let received = v.len() as u32;
        RttStats {
            sent,
            received,
            loss_pct: if sent == 0 {
                0.0
            } else {
                100.0 * f64::from(sent - received.min(sent)) / f64::from(sent)
            },
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: v.last().copied(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairReport {
    pub id: usize,
    pub path: PathKind,
    /// The local candidate the peer saw (from the check's response).
    pub local: CandidateInfo,
    /// The local base the check was sent from.
    pub checked_from: CandidateInfo,
    pub remote: CandidateInfo,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub nominated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
    pub rtt: RttStats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatherFailure {
    pub what: String,
    pub failure: Failure,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub role: String,
    pub candidates: Vec<CandidateInfo>,
    pub gathering_failures: Vec<GatherFailure>,
    pub pairs: Vec<PairReport>,
}

impl Report {
    /// Whether at least one pair of this path kind succeeded.
    pub fn path_works(&self, k: PathKind) -> bool {
        self.pairs
            .iter()
            .any(|p| p.path == k && p.state == "succeeded")
    }
}
