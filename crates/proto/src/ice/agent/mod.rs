//! A sans-IO ICE agent (RFC 8445 subset) built to test paths, not to pick
//! one quietly: it gathers host, server-reflexive and relayed candidates,
//! checks every pair (Binding with PRIORITY, ICE-CONTROLLING/-CONTROLLED
//! and tie-breaker, USE-CANDIDATE, short-term MESSAGE-INTEGRITY and
//! FINGERPRINT, RFC 8489 retransmission, 487 role conflicts,
//! peer-reflexive candidates, triggered checks), nominates, and then
//! measures round trips on every pair that succeeded.
//!
//! Driving it: `start(now)`, then feed [`Agent::handle_packet`] and
//! [`Agent::handle_timeout`] and drain [`Agent::poll_transmit`] /
//! [`Agent::poll_event`]; once gathering is done, give it the other side's
//! [`Description`] with [`Agent::set_remote`]. Left out of RFC 8445: frozen
//! pair states and foundations-based unfreezing (every pair is checked),
//! multiple components, TCP candidates, and keepalives after the test.
//!
//! By job: `gather` (host, server-reflexive and relayed candidates),
//! `checks` (pairs, connectivity checks, role conflicts, nomination),
//! `rtt` (round trips on the pairs that work) and `report` (what was
//! found), with `api` (configuration, transmits, events, failures); this
//! file holds the agent's state and its driving loop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::candidate::{Candidate, Description, Kind, PathKind};
use super::turn::TurnClient;
use crate::stun::{Due, Reliability, Transactions};
use crate::wire::{Class, IntegrityKey, Message, Method, TransactionId};

mod api;
mod checks;
mod gather;
mod report;
mod rtt;

pub use api::{AgentConfig, Event, Failure, PairState, SocketId, Timing, Transmit, TurnServer};
pub use report::{CandidateInfo, GatherFailure, PairReport, Report};
pub use rtt::RttStats;
use rtt::{PING, PONG};

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
            Some(&PING) => self.on_ping(now, l, from, data),
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

    /// Delete TURN allocations (polite end of a run).
    pub fn close(&mut self, now: Instant) {
        for j in 0..self.turns.len() {
            self.turns[j].client.close(now);
            self.flush_turn(j);
        }
    }
}
