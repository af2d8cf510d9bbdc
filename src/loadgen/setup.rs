//! TURN control requests for many allocations at once: a small event loop
//! that keeps up to `concurrency` allocations each working through its list
//! of steps (Allocate with the 401 round trip, CreatePermission,
//! ChannelBind, Refresh), every response checked (transaction ID, class,
//! MESSAGE-INTEGRITY), UDP requests retransmitted (each request is a
//! [`turnpike_proto::stun::Transaction`]), everything bounded by timeouts
//! and an overall deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::conn::{Conn, Target};
use super::{Error, Result};
use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::stun::{Action, Reliability, Retransmit, Transaction};
use turnpike_proto::wire::{Class, Message, TransactionId};
use turnpike_sys::batch::RecvBatch;
use turnpike_sys::epoll::{Epoll, Interest};
use turnpike_sys::process::is_fd_exhaustion;

/// How the generator authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// TURN REST: a credential per allocation, minted from the secret for
    /// user "lgN".
    Rest { secret: String },
    /// One static long-term user for every allocation.
    Static { user: String, password: String },
}

impl Auth {
    pub fn credentials(&self, i: usize) -> Credentials {
        match self {
            Auth::Rest { secret } => {
                let expiry = crate::clock::now().unix + 24 * 3600;
                Credentials::rest(secret, &format!("lg{i}"), expiry)
            }
            Auth::Static { user, password } => Credentials::new(user.clone(), password.clone()),
        }
    }
}

/// One allocation as the generator knows it.
pub(super) struct Alloc {
    pub conn: Conn,
    pub creds: Credentials,
    pub session: Option<Session>,
    pub relayed: Option<SocketAddr>,
    /// REQUESTED-ADDRESS-FAMILY of its Allocate (`attr::FAMILY_IPV4` /
    /// `FAMILY_IPV6`); `None`: not sent (the server's default, IPv4).
    pub family: Option<u8>,
}

/// A control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Allocate,
    Permission(SocketAddr),
    Channel(u16, SocketAddr),
    Refresh(u32),
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Allocate => "Allocate",
            Step::Permission(_) => "CreatePermission",
            Step::Channel(..) => "ChannelBind",
            Step::Refresh(0) => "Refresh(0)",
            Step::Refresh(_) => "Refresh",
        }
    }
}

/// Retransmission of a set-up request over UDP: sent at 0, 0.25, 0.75 and
/// 1.75 s, given up at 3.75 s; over TCP/TLS sent once and given up after
/// 4 s.
const RETRANSMIT: Retransmit = Retransmit {
    rto: Duration::from_millis(250),
    rc: 4,
    rm: 8,
    ti: Duration::from_secs(4),
    ..Retransmit::RFC8489
};

/// Open `n` five-tuples. Running out of file descriptors is reported as
/// such, with the limit.
pub(super) fn connect_all(target: &Target, n: usize, auth: &Auth) -> Result<Vec<Alloc>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let conn = Conn::connect(target).map_err(|e| {
            if is_fd_exhaustion(&e) {
                Error(format!(
                    "out of file descriptors after {i} client sockets (RLIMIT_NOFILE soft limit {}; each allocation needs its own five-tuple, so one socket): {e}",
                    turnpike_sys::process::raise_nofile()
                ))
            } else {
                Error(format!("connecting client socket {i} to {}: {e}", target.server))
            }
        })?;
        v.push(Alloc {
            conn,
            creds: auth.credentials(i),
            session: None,
            relayed: None,
            family: None,
        });
    }
    Ok(v)
}

struct Active {
    alloc: usize,
    steps: Vec<Step>,
    k: usize,
    /// The request of step `k`.
    txn: Transaction,
    stale: u32,
    reconnects: u32,
    started: Instant,
    /// When the current step's request was first sent.
    step_started: Instant,
}

/// The outcome of one allocation's steps: the time from its first request
/// to its last response, or why it failed.
pub(super) type Outcome = std::result::Result<Duration, String>;

/// Run `steps(i)` for each allocation index in `which`, keeping at most
/// `concurrency` in flight. Returns one outcome per entry of `which`, in
/// order. Nothing waits past `deadline`. With `reconnect`, an Allocate
/// answered 437 (the five-tuple still has an allocation, e.g. a reused
/// ephemeral port whose earlier allocation was never deleted) is retried
/// from a new socket, twice at most.
pub(super) fn drive(
    allocs: &mut [Alloc],
    which: &[usize],
    reconnect: Option<&Target>,
    steps: impl Fn(usize, &Alloc) -> Vec<Step>,
    concurrency: usize,
    deadline: Instant,
) -> Result<Vec<Outcome>> {
    drive_timed(allocs, which, reconnect, steps, concurrency, deadline, None)
}

/// [`drive`], also recording in `allocate_ns` how long each successful
/// Allocate took: its signed request's first transmission to its success
/// (the 401 round trip before it left out; retransmissions included). That
/// is where a server that asks something else before answering (a cluster
/// admission in Redis) spends its time.
pub(super) fn drive_timed(
    allocs: &mut [Alloc],
    which: &[usize],
    reconnect: Option<&Target>,
    steps: impl Fn(usize, &Alloc) -> Vec<Step>,
    concurrency: usize,
    deadline: Instant,
    mut allocate_ns: Option<&mut Vec<u64>>,
) -> Result<Vec<Outcome>> {
    let concurrency = concurrency.clamp(1, 4096);
    let mut out: Vec<Option<Outcome>> = vec![None; which.len()];
    let mut slots: Vec<Option<(usize, Active)>> = (0..concurrency).map(|_| None).collect();
    let mut free: Vec<usize> = (0..concurrency).rev().collect();
    let mut ep = Epoll::new(concurrency.min(1024))?;
    let mut rb = RecvBatch::new(0, 4096, 0);
    let mut rng = SmallRng::from_os_rng();
    let mut next = 0;
    let mut live = 0;
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    loop {
        // Start new ones.
        while next < which.len() && !free.is_empty() {
            let s = free.pop().expect("checked non-empty");
            let i = which[next];
            let a = &mut allocs[i];
            let st = steps(i, a);
            let Some(&first) = st.first() else {
                out[next] = Some(Ok(Duration::ZERO));
                free.push(s);
                next += 1;
                continue;
            };
            let now = crate::clock::instant();
            let act = Active {
                alloc: i,
                steps: st,
                k: 0,
                txn: request(first, a, &mut rng, now),
                stale: 0,
                reconnects: 0,
                started: now,
                step_started: now,
            };
            ep.add(a.conn.fd(), s as u64, Interest::Read)?;
            slots[s] = Some((next, act));
            next += 1;
            live += 1;
        }
        if live == 0 && next >= which.len() {
            break;
        }
        let now = crate::clock::instant();
        if now >= deadline {
            for (s, slot) in slots.iter_mut().enumerate() {
                if let Some((o, act)) = slot.take() {
                    ep.remove(allocs[act.alloc].conn.fd());
                    out[o] = Some(Err(format!(
                        "{}: overall deadline passed",
                        act.steps[act.k].name()
                    )));
                    free.push(s);
                }
            }
            for o in out.iter_mut().skip(next) {
                *o = Some(Err("not started before the deadline".into()));
            }
            break;
        }
        // (Re)transmit what is due; fail what has run out of attempts.
        let mut wake = deadline;
        #[allow(clippy::needless_range_loop)] // slots[s] is taken inside
        for s in 0..slots.len() {
            let Some((o, act)) = &mut slots[s] else {
                continue;
            };
            let a = &mut allocs[act.alloc];
            let failure = match act.txn.handle_timeout(now) {
                None => None,
                Some(Action::GiveUp) => Some("timeout".to_string()),
                Some(Action::Send) => match a.conn.send(act.txn.request()) {
                    Err(e) if a.conn.is_stream() || e.kind() != std::io::ErrorKind::WouldBlock => {
                        Some(format!("send: {e}"))
                    }
                    // A full UDP buffer loses the datagram, as the network
                    // may: the retransmission covers it.
                    _ => None,
                },
            };
            if let Some(why) = failure {
                let o = *o;
                let act = slots[s].take().expect("a live slot").1;
                ep.remove(allocs[act.alloc].conn.fd());
                out[o] = Some(Err(format!("{}: {why}", act.steps[act.k].name())));
                free.push(s);
                live -= 1;
                continue;
            }
            wake = wake.min(act.txn.poll_timeout());
        }
        let wait = wake
            .saturating_duration_since(crate::clock::instant())
            .min(Duration::from_millis(50));
        let ready: Vec<u64> = ep.wait(wait)?.collect();
        for tok in ready {
            let s = tok as usize;
            let Some((o, act)) = &mut slots[s] else {
                continue;
            };
            let a = &mut allocs[act.alloc];
            msgs.clear();
            a.conn.recv(&mut rb, 4, |m| msgs.push(m.to_vec()));
            let mut verdict: Option<Outcome> = None;
            for m in &msgs {
                match on_response(act, a, m, &mut rng) {
                    Progress::Ignore | Progress::Resend => {}
                    Progress::Next => {
                        if act.steps[act.k] == Step::Allocate {
                            if let Some(v) = allocate_ns.as_deref_mut() {
                                v.push(act.step_started.elapsed().as_nanos() as u64);
                            }
                        }
                        act.k += 1;
                        if act.k == act.steps.len() {
                            verdict = Some(Ok(act.started.elapsed()));
                            break;
                        }
                        rebuild(act, a, &mut rng);
                    }
                    Progress::Fail(why) => {
                        verdict = Some(Err(why));
                        break;
                    }
                    Progress::Reconnect(why) => {
                        let fresh = match reconnect {
                            Some(t) if act.reconnects < 2 => Conn::connect(t),
                            _ => {
                                verdict = Some(Err(why));
                                break;
                            }
                        };
                        ep.remove(a.conn.fd());
                        match fresh {
                            Ok(c) => {
                                a.conn = c;
                                a.session = None;
                                a.relayed = None;
                                ep.add(a.conn.fd(), s as u64, Interest::Read)?;
                                act.reconnects += 1;
                                rebuild(act, a, &mut rng);
                            }
                            Err(e) => verdict = Some(Err(format!("{why}; reconnecting: {e}"))),
                        }
                        break;
                    }
                }
            }
            if verdict.is_none() && a.conn.is_closed() {
                verdict = Some(Err(format!(
                    "{}: the server closed the connection",
                    act.steps[act.k].name()
                )));
            }
            if let Some(v) = verdict {
                let o = *o;
                let act = slots[s].take().expect("a live slot").1;
                ep.remove(allocs[act.alloc].conn.fd());
                out[o] = Some(v);
                free.push(s);
                live -= 1;
            }
        }
        // Send immediately what became due (next round trip).
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not run".into())))
        .collect())
}

enum Progress {
    Ignore,
    /// The same step again, as a new request (after 401 or 438).
    Resend,
    Next,
    Fail(String),
    /// Retry the Allocate from a new five-tuple.
    Reconnect(String),
}

/// The request of `step` for allocation `a`, as a new transaction whose
/// first transmission is due at `now`.
fn request(step: Step, a: &Alloc, rng: &mut SmallRng, now: Instant) -> Transaction {
    let tid = TransactionId::random(rng);
    let mut req = Vec::with_capacity(256);
    let s = a.session.as_ref();
    match step {
        Step::Allocate => {
            let opts = AllocateOptions {
                family: a.family,
                ..AllocateOptions::default()
            };
            client::allocate(&mut req, tid, &opts, s);
        }
        Step::Permission(p) => {
            client::create_permission(&mut req, tid, &[p], s.expect("allocated"));
        }
        Step::Channel(ch, p) => {
            client::channel_bind(&mut req, tid, ch, p, s.expect("allocated"));
        }
        Step::Refresh(l) => {
            client::refresh(&mut req, tid, Some(l), s.expect("allocated"));
        }
    }
    let reliability = if a.conn.is_stream() {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    };
    Transaction::new(now, req, reliability, RETRANSMIT)
}

/// A new request for the current step (a new transaction, due now).
fn rebuild(act: &mut Active, a: &Alloc, rng: &mut SmallRng) {
    let now = crate::clock::instant();
    act.txn = request(act.steps[act.k], a, rng, now);
    act.step_started = now;
}

fn on_response(act: &mut Active, a: &mut Alloc, m: &[u8], rng: &mut SmallRng) -> Progress {
    let Ok(msg) = Message::parse(m) else {
        return Progress::Ignore;
    };
    let step = act.steps[act.k];
    if !act.txn.is_response(&msg) {
        return Progress::Ignore;
    }
    match msg.class() {
        Class::Success => {
            let Some(sess) = &a.session else {
                return Progress::Fail(format!("{}: success without a session", step.name()));
            };
            if !sess.verify(&msg) {
                return Progress::Fail(format!("{}: bad MESSAGE-INTEGRITY", step.name()));
            }
            if step == Step::Allocate {
                match msg.xor_relayed_address() {
                    Ok(Some(r)) => a.relayed = Some(r),
                    _ => {
                        return Progress::Fail("Allocate: no XOR-RELAYED-ADDRESS".into());
                    }
                }
            }
            Progress::Next
        }
        Class::Error => {
            let (code, reason) = match msg.error_code() {
                Ok(Some(e)) => (e.code, e.reason.to_string()),
                _ => (0, String::new()),
            };
            if code == 401 && step == Step::Allocate && a.session.is_none() {
                match Session::from_challenge(&msg, a.creds.clone(), SignOptions::default()) {
                    Some(s) => {
                        a.session = Some(s);
                        rebuild(act, a, rng);
                        return Progress::Resend;
                    }
                    None => return Progress::Fail("401 without REALM/NONCE".into()),
                }
            }
            if code == 438 && act.stale < 3 {
                if let Some(s) = &mut a.session {
                    if s.update_nonce(&msg) {
                        act.stale += 1;
                        rebuild(act, a, rng);
                        return Progress::Resend;
                    }
                }
            }
            let why = format!("{}: {code} {reason}", step.name());
            if code == 437 && step == Step::Allocate {
                return Progress::Reconnect(why);
            }
            Progress::Fail(why)
        }
        _ => Progress::Ignore,
    }
}

/// Summary of a batch of outcomes: (successes, first few distinct errors).
pub(super) fn summarize(outcomes: &[Outcome]) -> (usize, Vec<String>) {
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let mut errs: Vec<String> = Vec::new();
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        if errs.len() < 5 && !errs.contains(e) {
            errs.push(e.clone());
        }
    }
    (ok, errs)
}

/// Set up every allocation with `steps`, failing with the first errors if
/// any did not make it.
pub(super) fn drive_all(
    allocs: &mut [Alloc],
    reconnect: Option<&Target>,
    steps: impl Fn(usize, &Alloc) -> Vec<Step>,
    concurrency: usize,
    what: &str,
    budget: Duration,
) -> Result<Vec<Duration>> {
    let which: Vec<usize> = (0..allocs.len()).collect();
    let deadline = crate::clock::instant() + budget;
    let outs = drive(allocs, &which, reconnect, steps, concurrency, deadline)?;
    let (ok, errs) = summarize(&outs);
    if ok < outs.len() {
        return Err(Error(format!(
            "{what}: {} of {} failed: {}",
            outs.len() - ok,
            outs.len(),
            errs.join("; ")
        )));
    }
    Ok(outs.into_iter().map(|o| o.unwrap_or_default()).collect())
}
