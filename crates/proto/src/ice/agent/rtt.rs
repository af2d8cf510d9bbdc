//! Round trips on the pairs that work: after the checks, `pings` small
//! packets per succeeded pair (not STUN: a 0xE0 byte, the pair, a
//! sequence number), echoed by the peer with 0xE1; their round-trip
//! times become [`RttStats`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Agent, PairState, Phase};

pub(super) const PING: u8 = 0xE0;
pub(super) const PONG: u8 = 0xE1;

impl Agent {
    pub(super) fn start_pinging(&mut self, now: Instant) {
        let t = &self.cfg.timing;
        let until = now + t.ping_interval * t.pings + t.ping_wait;
        self.phase = Phase::Pinging(until);
        self.next_check = now;
    }

    pub(super) fn send_pings(&mut self, now: Instant) {
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

    /// The peer measures: echo its ping from the candidate it reached.
    pub(super) fn on_ping(&mut self, now: Instant, l: usize, from: SocketAddr, data: &[u8]) {
        let mut pong = data.to_vec();
        pong[0] = PONG;
        let socket = self.locals[l].socket;
        self.send_from_socket(now, socket, from, pong);
    }

    pub(super) fn on_pong(&mut self, now: Instant, data: &[u8]) {
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
