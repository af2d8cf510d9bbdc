//! `loadgen binding`: STUN Binding requests, paced or closed-loop (a
//! window of requests outstanding per socket), every answer checked
//! (success class, our transaction, XOR-MAPPED-ADDRESS = our address).

use std::time::Duration;

use serde::Serialize;

use super::conn::{Conn, Target};
use super::hist::{Histogram, Percentiles};
use super::ledger::{Answer, Ledger};
use super::{Error, Result, ServerUsage};
use turnpike_proto::wire::{Class, Message, Method, TransactionId};
use turnpike_sys::batch::RecvBatch;
use turnpike_sys::epoll::{Epoll, Interest};

pub(super) const MAX_SOCKETS: usize = 1024;

#[derive(Clone)]
pub struct BindingOpts {
    pub target: Target,
    pub duration: Duration,
    pub warmup: Duration,
    /// Requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Closed loop: requests outstanding per socket.
    pub window: usize,
    pub sockets: usize,
    pub timeout: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BindingReport {
    pub command: String,
    pub transport: String,
    pub sockets: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub target_rate: Option<f64>,
    pub window: Option<usize>,
    /// Requests sent in the measured window.
    pub sent: u64,
    /// Of those, answered with a valid success within the timeout.
    pub answered: u64,
    pub late: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub answered_per_s: f64,
    /// Answers that were not a valid Binding success for us (all phases).
    pub bad_answers: u64,
    pub send_drops: u64,
    pub rtt_us: Percentiles,
    /// Server CPU per answered request.
    pub server: Option<ServerUsage>,
    pub generator_cpu_s: f64,
}

const MEASURED: u64 = 1 << 63;

fn tid(seq: u64) -> TransactionId {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&seq.to_le_bytes());
    t[8..].copy_from_slice(b"TPlg");
    TransactionId(t)
}

fn seq_of(t: &TransactionId) -> Option<u64> {
    (t.0[8..] == *b"TPlg").then(|| u64::from_le_bytes(t.0[..8].try_into().expect("8 bytes")))
}

pub fn binding(o: BindingOpts) -> Result<BindingReport> {
    if o.sockets == 0 || o.sockets > MAX_SOCKETS {
        return Err(Error(format!("--sockets must be 1..={MAX_SOCKETS}")));
    }
    if let Some(r) = o.rate {
        if !(1.0..=super::relay::MAX_RATE).contains(&r) {
            return Err(Error(format!(
                "--rate must be 1..={}",
                super::relay::MAX_RATE
            )));
        }
    } else if o.window == 0 || o.window > 1024 {
        return Err(Error("--window must be 1..=1024".into()));
    }
    if o.duration.is_zero() || o.duration + o.warmup > Duration::from_secs(3600) {
        return Err(Error("--duration must be 1 s..=1 h (with --warmup)".into()));
    }
    turnpike_sys::process::raise_nofile();
    let mut conns = Vec::with_capacity(o.sockets);
    for _ in 0..o.sockets {
        conns.push(Conn::connect(&o.target)?);
    }
    let timeout_ns = o.timeout.as_nanos() as u64;
    let cap = match o.rate {
        Some(r) => (r * (o.timeout.as_secs_f64() + 0.5)) as usize,
        None => o.sockets * o.window * 2,
    };
    let mut ledger = Ledger::new(cap + 4096);
    let mut ep = Epoll::new(1024)?;
    for (i, c) in conns.iter().enumerate() {
        ep.add(c.fd(), i as u64, Interest::Read)?;
    }
    let mut outstanding = vec![0usize; conns.len()];
    let mut rb = RecvBatch::new(0, 2048, 0);
    let mut hist = Histogram::new();
    let (mut sent, mut answered, mut late, mut bad, mut drops) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut arena: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let epoch = crate::clock::instant();
    let ns = || epoch.elapsed().as_nanos() as u64;
    let t_measure = o.warmup.as_nanos() as u64;
    let t_stop = t_measure + o.duration.as_nanos() as u64;
    let mut originated = 0u64;
    let mut rr = 0usize;
    let mut last_burst = 0u64;
    let (mut srv0, mut gen0, mut w0) = (None, 0.0, 0u64);
    let (mut srv1, mut gen1, mut w1) = (None, 0.0, 0u64);
    let mut measuring = false;
    loop {
        let now = ns();
        if !measuring && now >= t_measure && w0 == 0 {
            srv0 = o.server_pid.map(turnpike_sys::procfs::sample).transpose()?;
            gen0 = turnpike_sys::procfs::self_cpu_s();
            w0 = now.max(1);
            measuring = true;
        }
        let sending = now < t_stop;
        if !sending && measuring {
            srv1 = o.server_pid.map(turnpike_sys::procfs::sample).transpose()?;
            gen1 = turnpike_sys::procfs::self_cpu_s();
            w1 = now;
            measuring = false;
        }
        if !sending && (ledger.in_flight() == 0 || now >= t_stop + timeout_ns) {
            break;
        }
        ledger.expire(now, timeout_ns, |e| {
            outstanding[e.flow as usize] = outstanding[e.flow as usize].saturating_sub(1);
        });
        if sending {
            let measured = now >= t_measure;
            let nconns = conns.len();
            let mut send = |ci: usize, n: u64, ledger: &mut Ledger, outstanding: &mut [usize]| {
                arena.clear();
                spans.clear();
                for _ in 0..n {
                    let (seq, forced) = ledger.push(ci as u32, measured, now);
                    if forced.is_some() {
                        outstanding[ci] = outstanding[ci].saturating_sub(1);
                    }
                    let s = arena.len();
                    turnpike_proto::client::binding(
                        &mut arena,
                        tid(if measured { seq | MEASURED } else { seq }),
                        true,
                    );
                    spans.push((s, arena.len()));
                }
                outstanding[ci] += n as usize;
                if measured {
                    sent += n;
                }
                drops += conns[ci].send_many(spans.iter().map(|&(s, e)| &arena[s..e])) as u64;
            };
            match o.rate {
                Some(rate) => {
                    let target = (now as f64 * rate / 1e9) as u64;
                    let mut due = target.saturating_sub(originated);
                    let min = nconns.min(32) as u64;
                    if due >= min || (due > 0 && now - last_burst >= 1_000_000) {
                        let cap = ((rate * 0.05) as u64).max(min);
                        if due > cap {
                            originated += due - cap;
                            due = cap;
                        }
                        last_burst = now;
                        let k = nconns as u64;
                        for j in 0..nconns {
                            let ci = (rr + j) % nconns;
                            let n = due / k + u64::from((j as u64) < due % k);
                            if n > 0 {
                                send(ci, n, &mut ledger, &mut outstanding);
                            }
                        }
                        rr = (rr + (due % k) as usize) % nconns;
                        originated += due;
                    }
                }
                None => {
                    for ci in 0..nconns {
                        let free = o.window.saturating_sub(outstanding[ci]);
                        if free > 0 {
                            send(ci, free as u64, &mut ledger, &mut outstanding);
                        }
                    }
                }
            }
        }
        let wait = Duration::from_millis(if sending { 1 } else { 5 });
        let ready: Vec<u64> = ep.wait(wait)?.collect();
        for tok in ready {
            let ci = tok as usize;
            let now = ns();
            let local = conns[ci].local;
            let mut done = 0usize;
            conns[ci].recv(&mut rb, 2, |m| {
                let ok = Message::parse(m).ok().and_then(|msg| {
                    let good = msg.method() == Method::BINDING
                        && msg.class() == Class::Success
                        && msg.xor_mapped_address().ok().flatten() == Some(local);
                    good.then(|| seq_of(&msg.transaction_id())).flatten()
                });
                let Some(seqf) = ok else {
                    bad += 1;
                    return;
                };
                match ledger.answer(seqf & !MEASURED, now, timeout_ns) {
                    Answer::OnTime {
                        rtt_ns, measured, ..
                    } => {
                        done += 1;
                        if measured {
                            answered += 1;
                            hist.record(rtt_ns);
                        }
                    }
                    Answer::Late => {
                        if seqf & MEASURED != 0 {
                            late += 1;
                        }
                    }
                    Answer::Unknown => bad += 1,
                }
            });
            outstanding[ci] = outstanding[ci].saturating_sub(done);
        }
    }
    if w1 == 0 {
        srv1 = o.server_pid.map(turnpike_sys::procfs::sample).transpose()?;
        gen1 = turnpike_sys::procfs::self_cpu_s();
        w1 = ns();
    }
    let window_s = (w1.saturating_sub(w0)) as f64 / 1e9;
    let dur = o.duration.as_secs_f64();
    let server = match (srv0, srv1) {
        (Some(a), Some(b)) => Some(ServerUsage::new(
            o.server_pid.unwrap_or(0),
            a,
            b,
            window_s,
            answered,
            b.rss,
        )),
        _ => None,
    };
    let lost = sent.saturating_sub(answered);
    Ok(BindingReport {
        command: "binding".into(),
        transport: o.target.transport.as_str().into(),
        sockets: o.sockets,
        duration_s: dur,
        warmup_s: o.warmup.as_secs_f64(),
        target_rate: o.rate,
        window: o.rate.is_none().then_some(o.window),
        sent,
        answered,
        late,
        lost,
        loss_pct: if sent == 0 {
            0.0
        } else {
            100.0 * lost as f64 / sent as f64
        },
        answered_per_s: answered as f64 / dur,
        bad_answers: bad,
        send_drops: drops,
        rtt_us: Percentiles::of_ns(&hist),
        server,
        generator_cpu_s: gen1 - gen0,
    })
}
