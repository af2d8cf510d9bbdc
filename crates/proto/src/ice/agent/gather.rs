//! Gathering: host candidates at once, server-reflexive ones from STUN
//! Binding requests on the host sockets, relayed ones from a TURN client
//! per server; gathering ends when every request is answered or has
//! failed, or at the gathering deadline.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::{Agent, Event, Failure, PairState, Phase, SocketId, Turn, Txn};
use crate::core::Transport;
use crate::ice::candidate::{self, Candidate, Kind, PathKind};
use crate::ice::turn::{TurnClient, TurnEvent, TurnFailure, TurnState};
use crate::wire::{Message, TransactionId};

impl Agent {
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

    pub(super) fn check_gathering_done(&mut self, now: Instant) {
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

    pub(super) fn turn_failed(&mut self, j: usize, f: Failure) {
        let t = &self.turns[j];
        if t.failure.is_some() {
            return;
        }
        let what = format!("relay via {} {}", t.client.transport, t.client.server);
        self.turns[j].failure = Some(f.clone());
        self.gather_failures.push((what.clone(), f.clone()));
        self.emit(Event::GatherFailed { what, failure: f });
    }

    pub(super) fn drain_turn_events(&mut self, now: Instant, j: usize) {
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

    /// The answer to a server-reflexive gathering request (RFC 8489
    /// Binding on a host socket): a srflx candidate.
    pub(super) fn on_srflx_response(
        &mut self,
        now: Instant,
        host: Option<u16>,
        from: SocketAddr,
        t: Txn,
        msg: &Message<'_>,
    ) {
        if host != Some(t.host) || from != t.to {
            return;
        }
        self.txns.finish(msg.transaction_id());
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
    }
}
