//! Messages in flight, by sequence number: a ring that remembers when each
//! was sent, so an answer gives its round-trip time and anything not
//! answered within the timeout is counted lost exactly once (a late answer
//! after that is counted late, never as a second outcome).

#[derive(Clone, Copy, Default)]
struct Entry {
    seq: u64,
    sent_ns: u64,
    flow: u32,
    measured: bool,
    state: State,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Free,
    Pending,
    Done,
    Expired,
}

/// What an answer turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// First answer within the timeout: round-trip time, flow, measured.
    OnTime {
        rtt_ns: u64,
        flow: u32,
        measured: bool,
    },
    /// After its timeout (already counted lost).
    Late,
    /// A second answer, or one for a number never sent.
    Unknown,
}

/// A message given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Expired {
    pub flow: u32,
    pub measured: bool,
}

pub(super) struct Ledger {
    ring: Vec<Entry>,
    mask: u64,
    next: u64,
    oldest: u64,
    pending: u64,
}

impl Ledger {
    /// Room for at least `capacity` messages in flight (rounded up to a
    /// power of two, at least 1024).
    pub(super) fn new(capacity: usize) -> Self {
        let cap = capacity.clamp(1024, 1 << 24).next_power_of_two();
        Ledger {
            ring: vec![Entry::default(); cap],
            mask: cap as u64 - 1,
            next: 0,
            oldest: 0,
            pending: 0,
        }
    }

    /// Messages sent and neither answered nor expired yet.
    pub(super) fn in_flight(&self) -> u64 {
        self.pending
    }

    /// Record a message sent now; returns its sequence number. When the
    /// ring is full the oldest message is expired first and returned too.
    pub(super) fn push(
        &mut self,
        flow: u32,
        measured: bool,
        now_ns: u64,
    ) -> (u64, Option<Expired>) {
        let mut forced = None;
        if self.next - self.oldest > self.mask {
            let e = &mut self.ring[(self.oldest & self.mask) as usize];
            if e.state == State::Pending {
                e.state = State::Expired;
                self.pending -= 1;
                forced = Some(Expired {
                    flow: e.flow,
                    measured: e.measured,
                });
            }
            self.oldest += 1;
        }
        let seq = self.next;
        self.next += 1;
        self.pending += 1;
        self.ring[(seq & self.mask) as usize] = Entry {
            seq,
            sent_ns: now_ns,
            flow,
            measured,
            state: State::Pending,
        };
        (seq, forced)
    }

    /// An answer for `seq` arrived at `now_ns`.
    pub(super) fn answer(&mut self, seq: u64, now_ns: u64, timeout_ns: u64) -> Answer {
        if seq >= self.next {
            return Answer::Unknown;
        }
        let e = &mut self.ring[(seq & self.mask) as usize];
        if e.seq != seq {
            // Overwritten long ago: it expired before that.
            return if seq < self.oldest {
                Answer::Late
            } else {
                Answer::Unknown
            };
        }
        match e.state {
            State::Pending => {
                let rtt = now_ns.saturating_sub(e.sent_ns);
                if rtt > timeout_ns {
                    // Too late: it stays pending, so the next `expire`
                    // counts it lost (once).
                    return Answer::Late;
                }
                e.state = State::Done;
                self.pending -= 1;
                Answer::OnTime {
                    rtt_ns: rtt,
                    flow: e.flow,
                    measured: e.measured,
                }
            }
            State::Expired => Answer::Late,
            State::Done | State::Free => Answer::Unknown,
        }
    }

    /// Give up on everything sent before `now_ns - timeout_ns` (all of it
    /// when `timeout_ns` is 0 and `now_ns` is u64::MAX) and not answered;
    /// `f` is called once per message given up on.
    pub(super) fn expire(&mut self, now_ns: u64, timeout_ns: u64, mut f: impl FnMut(Expired)) {
        let cutoff = now_ns.saturating_sub(timeout_ns);
        while self.oldest < self.next {
            let e = &mut self.ring[(self.oldest & self.mask) as usize];
            if e.state == State::Pending {
                if e.sent_ns >= cutoff && now_ns != u64::MAX {
                    break;
                }
                e.state = State::Expired;
                self.pending -= 1;
                f(Expired {
                    flow: e.flow,
                    measured: e.measured,
                });
            }
            self.oldest += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_time_late_unknown() {
        let mut l = Ledger::new(4);
        let (a, _) = l.push(1, true, 1_000);
        let (b, _) = l.push(2, false, 2_000);
        assert_eq!(
            l.answer(a, 11_000, 1_000_000),
            Answer::OnTime {
                rtt_ns: 10_000,
                flow: 1,
                measured: true
            }
        );
        assert_eq!(l.answer(a, 12_000, 1_000_000), Answer::Unknown, "duplicate");
        assert_eq!(l.answer(99, 12_000, 1_000_000), Answer::Unknown);
        let mut lost = Vec::new();
        l.expire(2_000_000, 1_000_000, |e| lost.push(e));
        assert_eq!(
            lost,
            vec![Expired {
                flow: 2,
                measured: false
            }]
        );
        assert_eq!(l.answer(b, 2_000_001, 1_000_000), Answer::Late);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn answer_past_timeout_is_late_and_later_expired_once() {
        let mut l = Ledger::new(4);
        let (a, _) = l.push(0, true, 0);
        assert_eq!(l.answer(a, 5_000, 1_000), Answer::Late);
        let mut n = 0;
        l.expire(5_000, 1_000, |_| n += 1);
        assert_eq!(n, 1, "lost exactly once");
        assert_eq!(l.answer(a, 6_000, 1_000), Answer::Late);
    }

    #[test]
    fn full_ring_forces_expiry() {
        let mut l = Ledger::new(1);
        let cap = l.ring.len() as u64;
        let mut forced = 0;
        for i in 0..cap + 3 {
            if l.push(0, true, i).1.is_some() {
                forced += 1;
            }
        }
        assert_eq!(forced, 3);
        assert_eq!(l.in_flight(), cap);
        let mut n = 0;
        l.expire(u64::MAX, 0, |_| n += 1);
        assert_eq!(n, cap);
    }
}
