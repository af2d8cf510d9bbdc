//! One generator thread of `loadgen relay`: its allocations' flows, the
//! payloads it stamps and reads back, and its loop (paced or closed-loop
//! sending, receiving, echoing, round-trip times).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    CHANNEL, DataMethod, HEADER, MAGIC, MAX_SIZE, MEASURED, RelayOpts, RoundTrips, Totals,
};
use crate::loadgen::hist::Histogram;
use crate::loadgen::ledger::{Answer, Ledger};
use crate::loadgen::setup::Alloc;
use turnpike_proto::client;
use turnpike_proto::wire::{ChannelData, Class, FrameKind, Message, Method, TransactionId};
use turnpike_sys::batch::{RecvBatch, SendBatch};
use turnpike_sys::epoll::{Epoll, Interest};

/// The epoll token of echo peer socket `k` is `PEER_TOKEN + k` (flows use
/// their index, far below).
const PEER_TOKEN: u64 = 1 << 62;
/// Batches an echo peer reads per wake-up at most (then the loop serves the
/// client sockets and the sending schedule again).
const PEER_DRAIN_BATCHES: usize = 64;

/// What a worker knows about one allocation.
pub(super) struct Flow {
    /// Index into the worker's allocations.
    pub(super) alloc: usize,
    /// Global id carried in the payload.
    pub(super) id: u32,
    pub(super) sends: bool,
    /// Where its data goes: the partner's relayed address or the peer.
    pub(super) peer: SocketAddr,
    pub(super) outstanding: usize,
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) rt: RoundTrips,
    pub(super) offered: u64,
    pub(super) relayed: u64,
    pub(super) totals: Totals,
    pub(super) hist: Histogram,
    pub(super) skipped: u64,
}

pub(super) struct Worker {
    pub(super) allocs: Vec<Alloc>,
    pub(super) flows: Vec<Flow>,
    /// The echo peer sockets this thread serves (echo mode), each with
    /// its GSO state.
    pub(super) peers: Vec<(UdpSocket, turnpike_sys::batch::UdpSocketState)>,
    pub(super) opts: Arc<RelayOpts>,
    /// Originated round trips per second for this worker (paced).
    pub(super) rate: Option<f64>,
}

pub(super) struct Clock {
    pub(super) epoch: Instant,
}

impl Clock {
    pub(super) fn ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

pub(super) fn payload(buf: &mut Vec<u8>, size: usize, flow: u32, seq: u64, now_ns: u64) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&flow.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&now_ns.to_le_bytes());
    buf.resize(start + size, 0xa5);
}

/// (flow, seq with flag) of a payload of ours.
pub(super) fn parse_payload(p: &[u8]) -> Option<(u32, u64)> {
    if p.len() < HEADER || p[..4] != MAGIC {
        return None;
    }
    let flow = u32::from_le_bytes(p[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(p[8..16].try_into().ok()?);
    Some((flow, seq))
}

/// Wrap `data` for the server: ChannelData, or a Send indication.
pub(super) fn wrap(
    out: &mut Vec<u8>,
    method: DataMethod,
    stream: bool,
    peer: SocketAddr,
    data: &[u8],
) {
    match method {
        DataMethod::Channel => ChannelData::encode(CHANNEL, data, stream, out),
        DataMethod::Send => {
            let mut t = [0u8; 12];
            t[..8].copy_from_slice(&data[8..16]);
            t[8..].copy_from_slice(&data[4..8]);
            client::send_indication(out, TransactionId(t), peer, data);
        }
    }
}

/// The application data in a message from the server: ChannelData or a
/// Data indication.
pub(super) fn unwrap(m: &[u8]) -> Option<&[u8]> {
    match turnpike_proto::wire::classify_bytes(m)? {
        FrameKind::ChannelData => ChannelData::parse(m).ok().map(|c| c.data),
        FrameKind::Stun => {
            let msg = Message::parse(m).ok()?;
            (msg.method() == Method::DATA && msg.class() == Class::Indication)
                .then(|| msg.data())
                .flatten()
        }
    }
}

impl Worker {
    pub(super) fn run(
        mut self,
        clock: &Clock,
        t_start: u64,
        t_measure: u64,
        t_stop: u64,
    ) -> (Stats, Vec<Alloc>) {
        let o = self.opts.clone();
        let timeout_ns = o.timeout.as_nanos() as u64;
        let stream = o.target.is_stream();
        let mut st = Stats::default();
        let senders: Vec<usize> = (0..self.flows.len())
            .filter(|&f| self.flows[f].sends)
            .collect();
        let cap = match self.rate {
            Some(r) => (r * (o.timeout.as_secs_f64() + 0.5)) as usize + 4096,
            None => senders.len() * o.window * 2 + 4096,
        };
        let mut ledger = Ledger::new(cap);
        let mut ep = match Epoll::new(1024) {
            Ok(e) => e,
            Err(_) => return (st, self.allocs),
        };
        for (i, f) in self.flows.iter().enumerate() {
            let _ = ep.add(self.allocs[f.alloc].conn.fd(), i as u64, Interest::Read);
        }
        for (k, (p, _)) in self.peers.iter().enumerate() {
            let _ = ep.add(p.as_raw_fd(), PEER_TOKEN + k as u64, Interest::Read);
        }
        let mut rb = RecvBatch::new(0, MAX_SIZE + 64, 0);
        let mut arena: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(256);
        let mut echo: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut echo_spans: Vec<(usize, usize)> = Vec::with_capacity(64);
        let mut originated: u64 = 0;
        let mut rr = 0usize;
        let mut last_burst = 0u64;
        let mut want_out: Vec<bool> = vec![false; self.flows.len()];
        // Wait for the common start.
        while clock.ns() < t_start {
            std::thread::sleep(Duration::from_micros(200));
        }
        let hard_stop = t_stop + timeout_ns + 100_000_000;
        loop {
            let now = clock.ns();
            let sending = now < t_stop;
            if !sending && (ledger.in_flight() == 0 || now >= t_stop + timeout_ns)
                || now >= hard_stop
            {
                break;
            }
            // Expire what is overdue (frees closed-loop windows).
            ledger.expire(now, timeout_ns, |e| {
                if let Some(f) = self.flows.get_mut(e.flow as usize) {
                    f.outstanding = f.outstanding.saturating_sub(1);
                }
            });
            // Originate.
            if sending && !senders.is_empty() {
                let measured = now >= t_measure;
                match self.rate {
                    Some(rate) => {
                        let target = ((now - t_start) as f64 * rate / 1e9) as u64;
                        let mut due = target.saturating_sub(originated);
                        let min = senders.len().min(32) as u64;
                        if due >= min || (due > 0 && now - last_burst >= 1_000_000) {
                            // Never more than 50 ms worth at once: further
                            // behind than that, the rest is skipped (and
                            // reported) rather than sent as one burst.
                            let cap = ((rate * 0.05) as u64).max(min);
                            if due > cap {
                                if measured {
                                    st.skipped += due - cap;
                                }
                                originated += due - cap;
                                due = cap;
                            }
                            last_burst = now;
                            let per = due / senders.len() as u64;
                            let extra = (due % senders.len() as u64) as usize;
                            for k in 0..senders.len() {
                                let idx = (rr + k) % senders.len();
                                let n = per + u64::from(k < extra);
                                if n > 0 {
                                    self.originate(
                                        senders[idx],
                                        n,
                                        measured,
                                        now,
                                        stream,
                                        &mut ledger,
                                        &mut arena,
                                        &mut spans,
                                        &mut st,
                                    );
                                }
                            }
                            rr = (rr + extra) % senders.len();
                            originated += due;
                        }
                    }
                    None => {
                        for &fi in &senders {
                            let free = o.window.saturating_sub(self.flows[fi].outstanding);
                            if free > 0 {
                                self.originate(
                                    fi,
                                    free as u64,
                                    measured,
                                    now,
                                    stream,
                                    &mut ledger,
                                    &mut arena,
                                    &mut spans,
                                    &mut st,
                                );
                            }
                        }
                    }
                }
            }
            // Wait for input.
            let wait = if sending {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(5)
            };
            let ready: Vec<u64> = match ep.wait(wait) {
                Ok(it) => it.collect(),
                Err(_) => break,
            };
            for tok in ready {
                if tok >= PEER_TOKEN {
                    self.peer_echo((tok - PEER_TOKEN) as usize, &mut rb, &mut st);
                    continue;
                }
                let fi = tok as usize;
                let now = clock.ns();
                let (alloc, id, sends, peer) = {
                    let f = &self.flows[fi];
                    (f.alloc, f.id, f.sends, f.peer)
                };
                let conn = &mut self.allocs[alloc].conn;
                if stream {
                    if let Ok(pending) = conn.flush() {
                        if pending != want_out[fi] {
                            want_out[fi] = pending;
                            let interest = if pending {
                                Interest::ReadWrite
                            } else {
                                Interest::Read
                            };
                            let _ = ep.modify(conn.fd(), fi as u64, interest);
                        }
                    }
                }
                echo.clear();
                echo_spans.clear();
                let method = o.method;
                let mut completions: u64 = 0;
                conn.recv(&mut rb, 2, |m| {
                    st.totals.client_received += 1;
                    let Some(data) = unwrap(m) else {
                        st.totals.unknown += 1;
                        return;
                    };
                    let Some((flow, seqf)) = parse_payload(data) else {
                        st.totals.unknown += 1;
                        return;
                    };
                    let measured_msg = seqf & MEASURED != 0;
                    if sends {
                        // Back at the originator.
                        if flow != id {
                            st.totals.unknown += 1;
                            return;
                        }
                        if measured_msg {
                            st.relayed += 1;
                        }
                        match ledger.answer(seqf & !MEASURED, now, timeout_ns) {
                            Answer::OnTime {
                                rtt_ns, measured, ..
                            } => {
                                completions += 1;
                                if measured {
                                    st.rt.completed += 1;
                                    st.hist.record(rtt_ns);
                                }
                            }
                            Answer::Late => {
                                if measured_msg {
                                    st.rt.late += 1;
                                }
                            }
                            Answer::Unknown => st.totals.unknown += 1,
                        }
                    } else {
                        // B: count the forward leg, echo it to A.
                        if measured_msg {
                            st.relayed += 1;
                            st.offered += 1;
                        }
                        let s = echo.len();
                        wrap(&mut echo, method, stream, peer, data);
                        echo_spans.push((s, echo.len()));
                    }
                });
                if completions > 0 {
                    let f = &mut self.flows[fi];
                    f.outstanding = f.outstanding.saturating_sub(completions as usize);
                }
                if !echo_spans.is_empty() {
                    let n = echo_spans.len() as u64;
                    let dropped = conn.send_many(echo_spans.iter().map(|&(s, e)| &echo[s..e]));
                    st.totals.client_sent += n - dropped as u64;
                    st.totals.send_drops += dropped as u64;
                }
                if conn.is_closed() {
                    let _ = ep.modify(conn.fd(), fi as u64, Interest::Read);
                    ep.remove(conn.fd());
                }
            }
        }
        // Whatever is still out is lost.
        ledger.expire(u64::MAX, 0, |_| {});
        st.rt.lost = st.rt.sent.saturating_sub(st.rt.completed);
        (st, self.allocs)
    }

    #[allow(clippy::too_many_arguments)]
    fn originate(
        &mut self,
        fi: usize,
        n: u64,
        measured: bool,
        now: u64,
        stream: bool,
        ledger: &mut Ledger,
        arena: &mut Vec<u8>,
        spans: &mut Vec<(usize, usize)>,
        st: &mut Stats,
    ) {
        let o = &self.opts;
        let f = &mut self.flows[fi];
        arena.clear();
        spans.clear();
        let mut data = Vec::with_capacity(o.size);
        for _ in 0..n {
            let (seq, forced) = ledger.push(fi as u32, measured, now);
            if forced.is_some() {
                f.outstanding = f.outstanding.saturating_sub(1);
            }
            let seqf = if measured { seq | MEASURED } else { seq };
            data.clear();
            payload(&mut data, o.size, f.id, seqf, now);
            let s = arena.len();
            wrap(arena, o.method, stream, f.peer, &data);
            spans.push((s, arena.len()));
        }
        f.outstanding += n as usize;
        if measured {
            st.rt.sent += n;
            st.offered += n;
        }
        let conn = &mut self.allocs[f.alloc].conn;
        let dropped = conn.send_many(spans.iter().map(|&(s, e)| &arena[s..e])) as u64;
        st.totals.client_sent += n - dropped;
        st.totals.send_drops += dropped;
    }

    /// Echo what peer socket `k` holds: up to [`PEER_DRAIN_BATCHES`]
    /// batches, or until it is empty. One peer socket may serve every
    /// allocation of the run (`--peers 1`, the SFU case), so it needs as
    /// many reads per wake-up as all the client sockets together: a cap of
    /// a client socket's share (it was 4 batches) let its receive buffer
    /// overflow in the generator while the server kept up.
    fn peer_echo(&mut self, k: usize, rb: &mut RecvBatch, st: &mut Stats) {
        let Some((p, gso)) = self.peers.get(k) else {
            return;
        };
        let fd = p.as_raw_fd();
        for _ in 0..PEER_DRAIN_BATCHES {
            let got = match rb.recv(fd) {
                Ok(n) => n,
                Err(_) => return,
            };
            let mut sb = SendBatch::new();
            for (slot, len, from) in rb.slots_mut().flatten() {
                let slot: &[u8] = slot;
                st.totals.peer_received += 1;
                match parse_payload(&slot[..len]) {
                    Some((_, seqf)) if seqf & MEASURED != 0 => {
                        st.relayed += 1;
                        st.offered += 1;
                    }
                    Some(_) => {}
                    None => st.totals.unknown += 1,
                }
                sb.push(&slot[..len], from);
            }
            let dropped = sb.flush(fd, gso);
            st.totals.send_drops += dropped as u64;
            if got < turnpike_sys::batch::BATCH {
                return;
            }
        }
    }
}
