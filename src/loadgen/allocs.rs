//! `loadgen allocations` (set-up rate) and `loadgen idle` (memory per idle
//! allocation).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde::Serialize;

use super::conn::Target;
use super::hist::{Histogram, Percentiles};
use super::setup::{self, Alloc, Auth, Step};
use super::{Error, Result, ServerUsage};

pub(super) const MAX_COUNT: usize = 20_000;
const CHANNEL: u16 = 0x4000;

#[derive(Clone)]
pub struct AllocationsOpts {
    pub target: Target,
    pub auth: Auth,
    pub count: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AllocationsReport {
    pub command: String,
    pub transport: String,
    pub count: usize,
    pub concurrency: usize,
    /// Set-ups that completed (Allocate with its 401 round trip,
    /// CreatePermission, ChannelBind, every response verified).
    pub setups_ok: usize,
    pub setups_failed: usize,
    pub errors: Vec<String>,
    pub setup_elapsed_s: f64,
    pub setups_per_s: f64,
    /// Per set-up: first request to ChannelBind success.
    pub setup_latency_us: Percentiles,
    /// Per set-up: the signed Allocate, first transmission to success (the
    /// 401 round trip before it left out): what a cluster admission in
    /// Redis adds to an Allocate shows here (issue 14).
    #[serde(default)]
    pub allocate_latency_us: Percentiles,
    pub deletes_ok: usize,
    pub deletes_failed: usize,
    pub delete_elapsed_s: f64,
    pub deletes_per_s: f64,
    /// Server CPU over the set-up phase, per set-up.
    pub server: Option<ServerUsage>,
    pub note: String,
}

/// A local UDP socket to name as the peer of permissions and channels (it
/// receives nothing: no data is sent).
fn dummy_peer(target: &Target) -> Result<(UdpSocket, SocketAddr)> {
    let s = UdpSocket::bind(if target.server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })?;
    let a = s.local_addr()?;
    Ok((s, a))
}

fn setup_steps(peer: SocketAddr) -> Vec<Step> {
    vec![
        Step::Allocate,
        Step::Permission(peer),
        Step::Channel(CHANNEL, peer),
    ]
}

/// Delete (Refresh 0) every allocation that got one; failures counted.
pub(super) fn teardown(allocs: &mut [Alloc], concurrency: usize) -> (usize, usize, f64) {
    let which: Vec<usize> = (0..allocs.len())
        .filter(|&i| allocs[i].session.is_some() && allocs[i].relayed.is_some())
        .collect();
    let t = crate::clock::instant();
    let outs = setup::drive(
        allocs,
        &which,
        None,
        |_, _| vec![Step::Refresh(0)],
        concurrency,
        crate::clock::instant()
            + Duration::from_secs(30)
            + Duration::from_millis(2 * which.len() as u64),
    )
    .unwrap_or_default();
    let ok = outs.iter().filter(|o| o.is_ok()).count();
    (ok, which.len() - ok, t.elapsed().as_secs_f64())
}

pub fn allocations(o: AllocationsOpts) -> Result<AllocationsReport> {
    if o.count == 0 || o.count > MAX_COUNT {
        return Err(Error(format!("--count must be 1..={MAX_COUNT}")));
    }
    if o.concurrency == 0 || o.concurrency > 4096 {
        return Err(Error("--concurrency must be 1..=4096".into()));
    }
    turnpike_sys::process::raise_nofile();
    let (_peer_sock, peer) = dummy_peer(&o.target)?;
    let mut allocs = setup::connect_all(&o.target, o.count, &o.auth)?;
    let which: Vec<usize> = (0..allocs.len()).collect();
    let srv0 = o.server_pid.map(turnpike_sys::procfs::sample).transpose()?;
    let t0 = crate::clock::instant();
    let mut allocate_ns = Vec::with_capacity(o.count);
    let outs = setup::drive_timed(
        &mut allocs,
        &which,
        Some(&o.target),
        |_, _| setup_steps(peer),
        o.concurrency,
        t0 + Duration::from_secs(60) + Duration::from_millis(10 * o.count as u64),
        Some(&mut allocate_ns),
    )?;
    let elapsed = t0.elapsed().as_secs_f64();
    let srv1 = o.server_pid.map(turnpike_sys::procfs::sample).transpose()?;
    let (ok, errors) = setup::summarize(&outs);
    let mut h = Histogram::new();
    for d in outs.iter().flatten() {
        h.record(d.as_nanos() as u64);
    }
    let mut ha = Histogram::new();
    for ns in allocate_ns {
        ha.record(ns);
    }
    let (dok, dfail, delapsed) = teardown(&mut allocs, o.concurrency);
    let server = match (srv0, srv1) {
        (Some(a), Some(b)) => Some(ServerUsage::new(
            o.server_pid.unwrap_or(0),
            a,
            b,
            elapsed,
            ok as u64,
            b.rss,
        )),
        _ => None,
    };
    Ok(AllocationsReport {
        command: "allocations".into(),
        transport: o.target.transport.as_str().into(),
        count: o.count,
        concurrency: o.concurrency,
        setups_ok: ok,
        setups_failed: outs.len() - ok,
        errors,
        setup_elapsed_s: elapsed,
        setups_per_s: ok as f64 / elapsed.max(1e-9),
        setup_latency_us: Percentiles::of_ns(&h),
        allocate_latency_us: Percentiles::of_ns(&ha),
        deletes_ok: dok,
        deletes_failed: dfail,
        delete_elapsed_s: delapsed,
        deletes_per_s: dok as f64 / delapsed.max(1e-9),
        server,
        note: "one set-up = Allocate (401 challenge, then the signed request) + CreatePermission + ChannelBind, every response checked; TCP/TLS connections are opened before the clock starts".into(),
    })
}

#[derive(Clone)]
pub struct IdleOpts {
    pub target: Target,
    pub auth: Auth,
    pub allocations: usize,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    pub hold: Duration,
    /// Time for the server to settle before RSS is read.
    pub settle: Duration,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct IdleReport {
    pub command: String,
    pub transport: String,
    pub allocations: usize,
    pub setup_s: f64,
    pub hold_s: f64,
    pub refresh_rounds: usize,
    pub rss_before_bytes: Option<u64>,
    pub rss_with_allocations_bytes: Option<u64>,
    pub rss_after_delete_bytes: Option<u64>,
    /// (with − before) / allocations.
    pub bytes_per_allocation: Option<f64>,
    pub deletes_ok: usize,
    pub deletes_failed: usize,
    pub fd_limit: u64,
    pub note: String,
}

/// Refresh cadence for held allocations: well inside the 300 s permission
/// lifetime.
const REFRESH_EVERY: Duration = Duration::from_secs(120);

pub fn idle(o: IdleOpts) -> Result<IdleReport> {
    if o.allocations == 0 || o.allocations > MAX_COUNT {
        return Err(Error(format!("--allocations must be 1..={MAX_COUNT}")));
    }
    if o.hold > Duration::from_secs(24 * 3600) {
        return Err(Error("--hold must be at most 24 h".into()));
    }
    let fd_limit = turnpike_sys::process::raise_nofile();
    if (o.allocations as u64) + 64 > fd_limit {
        return Err(Error(format!(
            "{} allocations need {} client sockets (one five-tuple each) but RLIMIT_NOFILE allows {fd_limit}: raise the hard limit (ulimit -Hn) or ask for fewer",
            o.allocations,
            o.allocations + 64
        )));
    }
    let (_peer_sock, peer) = dummy_peer(&o.target)?;
    let rss = |pid: Option<u32>| -> Result<Option<u64>> {
        Ok(pid
            .map(turnpike_sys::procfs::sample)
            .transpose()?
            .map(|s| s.rss))
    };
    let before = rss(o.server_pid)?;
    let t0 = crate::clock::instant();
    let mut allocs = setup::connect_all(&o.target, o.allocations, &o.auth)?;
    let budget = Duration::from_secs(60) + Duration::from_millis(10 * o.allocations as u64);
    if let Err(e) = setup::drive_all(
        &mut allocs,
        Some(&o.target),
        |_, _| setup_steps(peer),
        o.concurrency,
        "set-up",
        budget,
    ) {
        teardown(&mut allocs, o.concurrency);
        return Err(e);
    }
    let setup_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(o.settle);
    let with = rss(o.server_pid)?;
    // Hold, refreshing allocation, permission and channel as needed.
    let hold_start = crate::clock::instant();
    let mut rounds = 0;
    let mut next_refresh = hold_start + REFRESH_EVERY;
    while hold_start.elapsed() < o.hold {
        let left = o.hold.saturating_sub(hold_start.elapsed());
        let until_refresh = next_refresh.saturating_duration_since(crate::clock::instant());
        std::thread::sleep(left.min(until_refresh).min(Duration::from_secs(1)));
        if crate::clock::instant() >= next_refresh && hold_start.elapsed() < o.hold {
            if let Err(e) = setup::drive_all(
                &mut allocs,
                None,
                |_, _| {
                    vec![
                        Step::Refresh(600),
                        Step::Permission(peer),
                        Step::Channel(CHANNEL, peer),
                    ]
                },
                o.concurrency,
                "refresh",
                budget,
            ) {
                teardown(&mut allocs, o.concurrency);
                return Err(e);
            }
            rounds += 1;
            next_refresh = crate::clock::instant() + REFRESH_EVERY;
        }
    }
    let hold_s = hold_start.elapsed().as_secs_f64();
    let (dok, dfail, _) = teardown(&mut allocs, o.concurrency);
    drop(allocs);
    std::thread::sleep(o.settle);
    let after = rss(o.server_pid)?;
    let per = match (before, with) {
        (Some(b), Some(w)) => Some((w as f64 - b as f64) / o.allocations as f64),
        _ => None,
    };
    Ok(IdleReport {
        command: "idle".into(),
        transport: o.target.transport.as_str().into(),
        allocations: o.allocations,
        setup_s,
        hold_s,
        refresh_rounds: rounds,
        rss_before_bytes: before,
        rss_with_allocations_bytes: with,
        rss_after_delete_bytes: after,
        bytes_per_allocation: per,
        deletes_ok: dok,
        deletes_failed: dfail,
        fd_limit,
        note: "each allocation: its own client socket, one permission and one channel to a local peer; RSS is the server's VmRSS (user-space memory; kernel socket buffers are not in it)".into(),
    })
}
