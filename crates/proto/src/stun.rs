//! The STUN client transaction (RFC 8489 §6.2): one engine for every
//! request turnpike sends as a client — the ICE agent's checks and
//! server-reflexive Binding requests, its TURN client's requests, and the
//! load generator's set-up requests.
//!
//! Sans-IO: a [`Transaction`] holds the request's bytes and its timer; it
//! is told the time and says what to do. Over an unreliable transport
//! (UDP) the request is sent, then sent again after RTO, 2×RTO, 4×RTO, …
//! (each interval capped at [`Retransmit::max_rto`]) until
//! [`Retransmit::rc`] transmissions in all; after the last one the client
//! waits [`Retransmit::rm`] × RTO for an answer, then gives up (§6.2.1).
//! Over a reliable transport (TCP, TLS) it is sent once and given up after
//! [`Retransmit::ti`] (§6.2.2).
//!
//! ```text
//!   Transaction::new(now, request, reliability, policy)    first send due now
//!   poll_timeout() ─► when            handle_timeout(now) ─► Send | GiveUp
//!   is_response(&msg): same transaction id and method, a success or error
//! ```
//!
//! [`Transactions`] keeps many of them by transaction id, each with the
//! caller's context (which pair a check is for, which TURN request it is),
//! in id order, so a seeded run retransmits in the same order every time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::{Class, Message, Method, TransactionId};

/// When to retransmit and when to give up (RFC 8489 §6.2.1, §6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    /// RTO: the wait after the first transmission, doubled after each
    /// retransmission.
    pub rto: Duration,
    /// A doubled RTO never exceeds this.
    pub max_rto: Duration,
    /// Rc: transmissions in all over an unreliable transport (at least 1).
    pub rc: u32,
    /// Rm: after the last transmission, wait `rm` × `rto` (the first RTO)
    /// for an answer.
    pub rm: u32,
    /// Ti: over a reliable transport, the one transmission's wait for an
    /// answer.
    pub ti: Duration,
}

impl Retransmit {
    /// RFC 8489's defaults: RTO 500 ms, Rc 7, Rm 16 (a transaction fails
    /// 39.5 s after its first transmission), Ti 39.5 s. STUN sets no cap;
    /// this is the lowest RFC 6298 allows for one (60 s), never reached
    /// with these values.
    pub const RFC8489: Retransmit = Retransmit {
        rto: Duration::from_millis(500),
        max_rto: Duration::from_secs(60),
        rc: 7,
        rm: 16,
        ti: Duration::from_millis(39_500),
    };

    /// The wait after transmission number `sent` (1 is the first).
    fn wait_after(&self, sent: u32, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Reliable => self.ti,
            Reliability::Unreliable if sent >= self.rc => self.rto.saturating_mul(self.rm),
            Reliability::Unreliable => {
                let doubling = 1u32.checked_shl(sent - 1).unwrap_or(u32::MAX);
                self.rto.saturating_mul(doubling).min(self.max_rto)
            }
        }
    }

    /// Transmissions in all.
    fn transmissions(&self, reliability: Reliability) -> u32 {
        match reliability {
            Reliability::Reliable => 1,
            Reliability::Unreliable => self.rc.max(1),
        }
    }
}

/// Whether the transport loses messages (UDP, where the client
/// retransmits) or not (TCP and TLS, where it sends once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reliability {
    Unreliable,
    Reliable,
}

/// What [`Transaction::handle_timeout`] asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send [`Transaction::request`] (the first transmission or a
    /// retransmission).
    Send,
    /// No answer in time: the transaction has failed.
    GiveUp,
}

/// One client transaction: a request and its retransmission timer.
#[derive(Clone, Debug)]
pub struct Transaction {
    id: TransactionId,
    method: Method,
    request: Vec<u8>,
    reliability: Reliability,
    policy: Retransmit,
    sent: u32,
    next: Instant,
}

impl Transaction {
    /// A transaction for `request` (a whole STUN request the caller
    /// built); its first transmission is due at `now`.
    pub fn new(
        now: Instant,
        request: Vec<u8>,
        reliability: Reliability,
        policy: Retransmit,
    ) -> Transaction {
        let msg = Message::parse(&request).expect("invariant: a transaction sends a STUN request");
        Transaction {
            id: msg.transaction_id(),
            method: msg.method(),
            request,
            reliability,
            policy,
            sent: 0,
            next: now,
        }
    }

    pub fn id(&self) -> TransactionId {
        self.id
    }

    /// The request's bytes, as sent every time.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Transmissions so far.
    pub fn transmissions(&self) -> u32 {
        self.sent
    }

    /// When [`Transaction::handle_timeout`] has something to do: the next
    /// transmission, or giving up.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// At `now`: `Send` when a transmission is due (the next wait is
    /// counted from `now`), `GiveUp` when the last wait has passed,
    /// `None` before [`Transaction::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        if now < self.next {
            return None;
        }
        if self.sent >= self.policy.transmissions(self.reliability) {
            return Some(Action::GiveUp);
        }
        self.sent += 1;
        self.next = now + self.policy.wait_after(self.sent, self.reliability);
        Some(Action::Send)
    }

    /// Whether `msg` answers this request (RFC 8489 §6.3): a success or
    /// error response with this transaction id and method. Authenticating
    /// it is the caller's business.
    pub fn is_response(&self, msg: &Message<'_>) -> bool {
        matches!(msg.class(), Class::Success | Class::Error)
            && msg.transaction_id() == self.id
            && msg.method() == self.method
    }
}

/// A transaction whose timer fired, from [`Transactions::poll_due`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due<C> {
    /// Send `request` again.
    Retransmit {
        id: TransactionId,
        request: Vec<u8>,
        context: C,
    },
    /// No answer in time: the transaction is over (and forgotten).
    TimedOut { id: TransactionId, context: C },
}

/// Client transactions in flight, by transaction id, each with the
/// caller's context `C`.
#[derive(Clone, Debug)]
pub struct Transactions<C> {
    policy: Retransmit,
    txns: BTreeMap<TransactionId, (Transaction, C)>,
}

impl<C: Clone> Transactions<C> {
    pub fn new(policy: Retransmit) -> Self {
        Transactions {
            policy,
            txns: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> Retransmit {
        self.policy
    }

    /// Start a transaction for `request` and return the bytes to send now
    /// (its first transmission). A transaction with the same id is
    /// replaced.
    pub fn start(
        &mut self,
        now: Instant,
        request: Vec<u8>,
        reliability: Reliability,
        context: C,
    ) -> Vec<u8> {
        let mut t = Transaction::new(now, request, reliability, self.policy);
        let first = t.handle_timeout(now);
        debug_assert_eq!(first, Some(Action::Send));
        let bytes = t.request.clone();
        self.txns.insert(t.id, (t, context));
        bytes
    }

    /// The earliest instant a transaction needs [`Transactions::poll_due`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txns.values().map(|(t, _)| t.next).min()
    }

    /// The next transaction (in id order) whose timer fired at `now`, or
    /// `None` when none is due. Call until `None`; a retransmitted
    /// transaction is not due again at the same `now`.
    pub fn poll_due(&mut self, now: Instant) -> Option<Due<C>> {
        let (&id, (t, context)) = self.txns.iter_mut().find(|(_, (t, _))| t.next <= now)?;
        match t.handle_timeout(now) {
            Some(Action::Send) => Some(Due::Retransmit {
                id,
                request: t.request.clone(),
                context: context.clone(),
            }),
            Some(Action::GiveUp) | None => {
                let (_, context) = self.txns.remove(&id).expect("invariant: found above");
                Some(Due::TimedOut { id, context })
            }
        }
    }

    /// The context of the transaction `msg` answers, if it answers one
    /// (see [`Transaction::is_response`]). The transaction stays open
    /// until [`Transactions::finish`]: a response the caller rejects
    /// (bad integrity, wrong source) leaves it retransmitting.
    pub fn response_to(&self, msg: &Message<'_>) -> Option<&C> {
        let (t, context) = self.txns.get(&msg.transaction_id())?;
        t.is_response(msg).then_some(context)
    }

    /// End transaction `id` (answered or abandoned); its context.
    pub fn finish(&mut self, id: TransactionId) -> Option<C> {
        self.txns.remove(&id).map(|(_, c)| c)
    }

    /// [`Transactions::response_to`] then [`Transactions::finish`].
    pub fn take_response(&mut self, msg: &Message<'_>) -> Option<C> {
        self.response_to(msg)?;
        self.finish(msg.transaction_id())
    }

    pub fn get(&self, id: TransactionId) -> Option<&C> {
        self.txns.get(&id).map(|(_, c)| c)
    }

    /// The open transactions, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (TransactionId, &C)> {
        self.txns.iter().map(|(id, (_, c))| (*id, c))
    }

    /// Keep only the transactions whose context passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&C) -> bool) {
        self.txns.retain(|_, (_, c)| keep(c));
    }

    pub fn clear(&mut self) {
        self.txns.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MessageBuilder, MessageType};

    const MS: Duration = Duration::from_millis(1);

    /// The manual clock's starting point: any instant will do, the tests
    /// only add to it.
    #[allow(
        clippy::disallowed_methods,
        reason = "an arbitrary starting point for the manual clock, read once per test"
    )]
    fn start() -> Instant {
        Instant::now()
    }

    fn request(id: u8, method: Method) -> Vec<u8> {
        let mut b = Vec::new();
        MessageBuilder::new(
            &mut b,
            MessageType::new(method, Class::Request),
            TransactionId([id; 12]),
        )
        .fingerprint();
        b
    }

    fn response(id: u8, method: Method, class: Class) -> Vec<u8> {
        let mut b = Vec::new();
        MessageBuilder::new(
            &mut b,
            MessageType::new(method, class),
            TransactionId([id; 12]),
        )
        .fingerprint();
        b
    }

    fn txn(
        now: Instant,
        id: u8,
        method: Method,
        reliability: Reliability,
        policy: Retransmit,
    ) -> Transaction {
        Transaction::new(now, request(id, method), reliability, policy)
    }

    /// Drive `t` from `start`, calling `handle_timeout` exactly at each
    /// `poll_timeout`; the offsets (ms) of every transmission and of the
    /// give-up.
    fn schedule(mut t: Transaction, start: Instant) -> (Vec<u64>, u64) {
        let mut sends = Vec::new();
        loop {
            let at = t.poll_timeout();
            let ms = (at - start).as_millis() as u64;
            match t.handle_timeout(at) {
                Some(Action::Send) => sends.push(ms),
                Some(Action::GiveUp) => return (sends, ms),
                None => panic!("not due at its own poll_timeout"),
            }
            assert!(sends.len() <= 64, "never gives up");
        }
    }

    #[test]
    fn rfc8489_example_sends_at_0_500_1500_3500_7500_15500_31500_and_fails_at_39500() {
        let now = start();
        let t = txn(
            now,
            1,
            Method::BINDING,
            Reliability::Unreliable,
            Retransmit::RFC8489,
        );
        let (sends, gave_up) = schedule(t, now);
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(gave_up, 39500, "Rm × RTO = 8 s after the last");
    }

    #[test]
    fn the_doubled_rto_stops_at_the_cap() {
        let now = start();
        let policy = Retransmit {
            rto: 100 * MS,
            max_rto: 300 * MS,
            rc: 6,
            rm: 4,
            ti: Duration::from_secs(1),
        };
        let t = txn(now, 1, Method::BINDING, Reliability::Unreliable, policy);
        let (sends, gave_up) = schedule(t, now);
        // Waits 100, 200, then 300 (not 400, 800, 1600).
        assert_eq!(sends, [0, 100, 300, 600, 900, 1200]);
        // Rm × the first RTO, not the capped one.
        assert_eq!(gave_up, 1600);
    }

    #[test]
    fn reliable_transports_send_once_and_give_up_after_ti() {
        let now = start();
        let t = txn(
            now,
            1,
            Method::ALLOCATE,
            Reliability::Reliable,
            Retransmit::RFC8489,
        );
        let (sends, gave_up) = schedule(t, now);
        assert_eq!(sends, [0], "no retransmission over TCP/TLS");
        assert_eq!(gave_up, 39500);
    }

    #[test]
    fn nothing_happens_before_the_timer_and_waits_count_from_a_late_wake_up() {
        let now = start();
        let mut t = txn(
            now,
            1,
            Method::BINDING,
            Reliability::Unreliable,
            Retransmit::RFC8489,
        );
        assert_eq!(t.handle_timeout(now), Some(Action::Send));
        assert_eq!(t.handle_timeout(now + 499 * MS), None);
        assert_eq!(t.transmissions(), 1);
        // Woken 20 ms late: the retransmission goes now, the next 1 s later.
        assert_eq!(t.handle_timeout(now + 520 * MS), Some(Action::Send));
        assert_eq!(t.poll_timeout(), now + 1520 * MS);
        assert_eq!(t.transmissions(), 2);
    }

    #[test]
    fn a_response_matches_by_transaction_id_method_and_class() {
        let now = start();
        let t = txn(
            now,
            7,
            Method::ALLOCATE,
            Reliability::Unreliable,
            Retransmit::RFC8489,
        );
        let yes = |b: &[u8]| t.is_response(&Message::parse(b).unwrap());
        assert!(yes(&response(7, Method::ALLOCATE, Class::Success)));
        assert!(yes(&response(7, Method::ALLOCATE, Class::Error)));
        assert!(!yes(&response(8, Method::ALLOCATE, Class::Success)), "id");
        assert!(
            !yes(&response(7, Method::REFRESH, Class::Success)),
            "method"
        );
        assert!(!yes(&request(7, Method::ALLOCATE)), "a request");
        assert!(!yes(&response(7, Method::ALLOCATE, Class::Indication)));
    }

    #[test]
    fn transactions_retransmit_in_id_order_and_forget_what_timed_out() {
        let now = start();
        let policy = Retransmit {
            rto: 100 * MS,
            max_rto: Duration::from_secs(8),
            rc: 2,
            rm: 3,
            ti: Duration::from_secs(1),
        };
        let mut ts: Transactions<&str> = Transactions::new(policy);
        assert_eq!(ts.poll_timeout(), None);
        let sent = ts.start(
            now,
            request(2, Method::BINDING),
            Reliability::Unreliable,
            "b",
        );
        assert_eq!(
            sent,
            request(2, Method::BINDING),
            "first transmission at once"
        );
        ts.start(
            now,
            request(1, Method::BINDING),
            Reliability::Unreliable,
            "a",
        );
        ts.start(
            now,
            request(3, Method::ALLOCATE),
            Reliability::Reliable,
            "tcp",
        );
        assert_eq!(ts.poll_timeout(), Some(now + 100 * MS));
        assert_eq!(ts.poll_due(now + 99 * MS), None);

        let at = now + 100 * MS;
        let due: Vec<_> = std::iter::from_fn(|| ts.poll_due(at)).collect();
        assert_eq!(
            due,
            [
                Due::Retransmit {
                    id: TransactionId([1; 12]),
                    request: request(1, Method::BINDING),
                    context: "a"
                },
                Due::Retransmit {
                    id: TransactionId([2; 12]),
                    request: request(2, Method::BINDING),
                    context: "b"
                },
            ]
        );
        // Rc = 2 reached: Rm × RTO = 300 ms after the last.
        assert_eq!(ts.poll_timeout(), Some(now + 400 * MS));
        let at = now + 400 * MS;
        let due: Vec<_> = std::iter::from_fn(|| ts.poll_due(at)).collect();
        assert_eq!(
            due,
            [
                Due::TimedOut {
                    id: TransactionId([1; 12]),
                    context: "a"
                },
                Due::TimedOut {
                    id: TransactionId([2; 12]),
                    context: "b"
                },
            ]
        );
        assert_eq!(ts.len(), 1);
        // The TCP one was never sent again, and times out after Ti.
        assert_eq!(ts.poll_timeout(), Some(now + Duration::from_secs(1)));
        assert_eq!(
            ts.poll_due(now + Duration::from_secs(1)),
            Some(Due::TimedOut {
                id: TransactionId([3; 12]),
                context: "tcp"
            })
        );
        assert!(ts.is_empty());
        assert_eq!(ts.poll_timeout(), None);
    }

    #[test]
    fn an_answered_transaction_stops_retransmitting() {
        let now = start();
        let mut ts: Transactions<u32> = Transactions::new(Retransmit::RFC8489);
        ts.start(
            now,
            request(5, Method::BINDING),
            Reliability::Unreliable,
            42,
        );
        let wrong = response(5, Method::REFRESH, Class::Success);
        assert_eq!(ts.take_response(&Message::parse(&wrong).unwrap()), None);
        let ok = response(5, Method::BINDING, Class::Success);
        let ok = Message::parse(&ok).unwrap();
        assert_eq!(ts.response_to(&ok), Some(&42), "matched, still open");
        assert_eq!(ts.len(), 1);
        assert_eq!(ts.take_response(&ok), Some(42));
        assert_eq!(ts.take_response(&ok), None, "answered once");
        assert_eq!(ts.poll_timeout(), None);
        assert_eq!(ts.poll_due(now + Duration::from_secs(60)), None);
    }
}
