//! Connectivity checks (RFC 8445 §6.1.2, §7): pairing local bases with
//! remote candidates, sending checks, answering the peer's (with role
//! conflicts and peer-reflexive candidates), the responses that make a
//! pair valid, and nomination.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::{Agent, Event, Failure, Pair, PairState, Phase, SocketId, Txn};
use crate::ice::candidate::{self, Candidate, Description, Kind, PathKind};
use crate::wire::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, TransactionId, attr,
};

impl Agent {
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

    pub(super) fn add_remote(&mut self, now: Instant, c: Candidate) -> usize {
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
    pub(super) fn maybe_pair(&mut self, l: usize, r: usize) -> Option<usize> {
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

    pub(super) fn pair_priority(&self, l: usize, r: usize) -> u64 {
        let (lp, rp) = (self.locals[l].cand.priority, self.remotes[r].priority);
        if self.controlling {
            candidate::pair_priority(lp, rp)
        } else {
            candidate::pair_priority(rp, lp)
        }
    }

    pub(super) fn begin_checks(&mut self, now: Instant) {
        self.phase = Phase::Checking;
        self.next_check = now;
        self.advance_phase(now);
    }

    /// RFC 8445 §7.3: answer a connectivity check.
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        l: usize,
        from: SocketAddr,
        msg: &Message<'_>,
    ) {
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

    pub(super) fn respond_error(
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

    pub(super) fn switch_role(&mut self, controlling: bool) {
        self.controlling = controlling;
        for p in 0..self.pairs.len() {
            let (l, r) = (self.pairs[p].local, self.pairs[p].remote);
            self.pairs[p].priority = self.pair_priority(l, r);
        }
    }

    pub(super) fn on_response(
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
            return self.on_srflx_response(now, host, from, t, msg);
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

    pub(super) fn nominate(&mut self, p: usize) {
        if !self.pairs[p].nominated {
            self.pairs[p].nominated = true;
            self.emit(Event::Nominated { pair: p });
        }
    }

    pub(super) fn fail_pair(&mut self, p: usize, f: Failure) {
        if !matches!(
            self.pairs[p].state,
            PairState::Failed(_) | PairState::Succeeded
        ) {
            self.pairs[p].state = PairState::Failed(f);
            self.txns.retain(|t| t.pair != Some(p));
            self.emit(Event::PairDone { pair: p });
        }
    }

    /// Send the check of pair `p` (RFC 8445 §7.2.4).
    pub(super) fn send_check(&mut self, now: Instant, p: usize, use_candidate: bool) {
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
}
