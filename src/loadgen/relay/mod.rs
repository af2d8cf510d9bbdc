//! `loadgen relay`: data through allocations, paced or closed-loop, with
//! round-trip times and loss.
//!
//! Two modes:
//! * **c2c**: allocations in pairs A/B, each permitted (and channel-bound)
//!   to the other's relayed address. A sends; B echoes what it gets back to
//!   A. Each message crosses the server twice per round trip: A→B, then
//!   B→A.
//! * **echo**: every allocation is permitted (and channel-bound) to a UDP
//!   "peer" socket the generator runs (one per thread, or `peers` of
//!   them: allocation i talks to peer i mod `peers`), which sends every
//!   datagram straight back (batched). Client→peer, then peer→client.
//!
//! Either way one round trip is **two relayed messages**, and a relayed
//! message is one payload that entered the server from one side and left
//! it on the other, counted when it arrives (at B or the peer, and back at
//! A or the client).
//!
//! The echo peers bind to loopback of the server's family unless told
//! otherwise: `peer_bind` picks their address (a server in another
//! network namespace reaches them there), and `peer_netns` opens their
//! sockets inside a named network namespace (a helper thread joins it,
//! creates them and ends; a socket stays in the namespace it was created
//! in), so generator, server and peers can sit in three namespaces.
//!
//! This file holds the options, the report and the run (set-up, threads,
//! tear-down); `worker` is one thread's data path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::conn::Target;
use super::hist::Percentiles;
use super::setup::{self, Alloc, Auth, Step};
use super::{Error, MachineUsage, Result, ServerUsage};

mod worker;

use worker::{Clock, Flow, Stats, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    C2c,
    Echo,
}

/// The address family of the relayed addresses the allocations ask for
/// (REQUESTED-ADDRESS-FAMILY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayFamily {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMethod {
    Channel,
    Send,
}

/// Limits: beyond them the run is refused rather than attempted.
pub(super) const MAX_ALLOCATIONS: usize = 20_000;
pub(super) const MAX_RATE: f64 = 2_000_000.0;
pub(super) const MAX_THREADS: usize = 16;
/// Warm-up plus duration: kept under the 300 s permission lifetime, so no
/// refresh is needed while the data flows.
pub(super) const MAX_RUN: Duration = Duration::from_secs(240);
pub(super) const MIN_SIZE: usize = HEADER;
pub(super) const MAX_SIZE: usize = 8192;

const CHANNEL: u16 = 0x4000;
const MAGIC: [u8; 4] = *b"TPlg";
/// Payload header: magic, flow, seq (top bit: measured), send time.
const HEADER: usize = 24;
const MEASURED: u64 = 1 << 63;

#[derive(Clone)]
pub struct RelayOpts {
    pub target: Target,
    pub auth: Auth,
    pub allocations: usize,
    pub mode: Mode,
    pub method: DataMethod,
    /// Payload bytes per message.
    pub size: usize,
    /// Offered relayed messages per second, in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Closed loop: round trips outstanding per sending allocation.
    pub window: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// A message not back within this is lost.
    pub timeout: Duration,
    pub server_pid: Option<u32>,
    pub threads: usize,
    /// Echo mode: the address the echo peers bind to (each socket's port
    /// chosen by the kernel); `None`: loopback of the server's family.
    pub peer_bind: Option<IpAddr>,
    /// Echo mode: open the echo peers' sockets inside this named network
    /// namespace (`ip netns add NAME`; needs root).
    pub peer_netns: Option<String>,
    /// Echo mode: how many echo peer sockets (allocation i talks to peer
    /// i mod `peers`); `None`: one per thread. As many as allocations
    /// gives every allocation a peer endpoint of its own.
    pub peers: Option<usize>,
    /// The relayed addresses' family, asked for in every Allocate; `None`:
    /// not asked (the server's default, IPv4).
    pub relay_family: Option<RelayFamily>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RoundTrips {
    /// Started in the measured window.
    pub sent: u64,
    /// Back within the timeout.
    pub completed: u64,
    /// Back, but after the timeout (counted lost).
    pub late: u64,
    /// sent − completed.
    pub lost: u64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Totals {
    /// Data messages the client sockets handed to the kernel, all phases.
    pub client_sent: u64,
    /// Data messages the client sockets received, all phases.
    pub client_received: u64,
    /// Datagrams the echo peers received (echo mode), all phases.
    pub peer_received: u64,
    /// Datagrams the kernel would not take (socket buffer full).
    pub send_drops: u64,
    /// Received data that was not ours or did not parse.
    pub unknown: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RelayReport {
    pub command: String,
    pub mode: String,
    pub method: String,
    pub transport: String,
    pub allocations: usize,
    pub sending_allocations: usize,
    pub size: usize,
    pub threads: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Asked for (`--rate`), relayed messages per second; null: closed loop.
    pub target_rate: Option<f64>,
    pub window: Option<usize>,
    /// Messages the generator sent towards the relay in the measured
    /// window: round trips started plus echoes sent for them.
    pub offered_msgs: u64,
    pub offered_per_s: f64,
    /// Messages of measured round trips that crossed the server (arrived at
    /// B / the peer, and back at A / the client).
    pub relayed_msgs: u64,
    pub relayed_per_s: f64,
    pub round_trips: RoundTrips,
    /// Round trips lost, percent of round trips sent.
    pub loss_pct: f64,
    pub rtt_us: Percentiles,
    pub server: Option<ServerUsage>,
    /// The whole machine's CPU over the measured window (`/proc/stat`;
    /// null where it cannot be read), per relayed message: generator,
    /// server and the kernel's softirq work together.
    #[serde(default)]
    pub machine: Option<MachineUsage>,
    /// The generator's own CPU seconds (all threads) in the measured window.
    pub generator_cpu_s: f64,
    /// Round trips the pacer skipped in the measured window because the
    /// generator fell more than 50 ms behind its schedule (0 when it kept
    /// up; then offered ≈ target).
    pub generator_skipped: u64,
    /// Datagrams the kernel dropped for a full socket receive buffer during
    /// the measured window (UDP RcvbufErrors of /proc/net/snmp:
    /// system-wide, so anything else running counts too). Where UDP loss
    /// usually happens: a server (or generator) socket that overflowed.
    pub kernel_udp_rcvbuf_errors: Option<u64>,
    pub totals: Totals,
    /// Echo mode: the echo peers' addresses (what the allocations are
    /// permitted and channel-bound to); empty in c2c.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    pub setup_s: f64,
    pub teardown_failures: usize,
    pub definitions: String,
}

const DEFINITIONS: &str = "one round trip = 2 relayed messages (c2c: A->B via the server, B echoes B->A; echo: client->peer, peer->client). offered = round trips started + echoes sent in the measured window; relayed = messages of those round trips that arrived on the far side; loss = round trips not back within the timeout; server CPU per relayed message = server utime+stime over the measured window / relayed; machine CPU per relayed message = user+nice+system+irq+softirq of all CPUs (/proc/stat) over the measured window / relayed";

impl RelayOpts {
    fn check(&self) -> Result<()> {
        if self.allocations == 0 || self.allocations > MAX_ALLOCATIONS {
            return Err(Error(format!(
                "--allocations must be 1..={MAX_ALLOCATIONS}"
            )));
        }
        if self.mode == Mode::C2c && !self.allocations.is_multiple_of(2) {
            return Err(Error(
                "--mode c2c needs an even --allocations (pairs)".into(),
            ));
        }
        if let Some(r) = self.rate {
            if !(1.0..=MAX_RATE).contains(&r) {
                return Err(Error(format!("--rate must be 1..={MAX_RATE}")));
            }
        } else if self.window == 0 || self.window > 1024 {
            return Err(Error("--window must be 1..=1024".into()));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error(format!("--threads must be 1..={MAX_THREADS}")));
        }
        if self.size < MIN_SIZE || self.size > MAX_SIZE {
            return Err(Error(format!("--size must be {MIN_SIZE}..={MAX_SIZE}")));
        }
        if self.duration.is_zero() || self.duration + self.warmup > MAX_RUN {
            return Err(Error(format!(
                "--duration must be positive and --warmup + --duration at most {}s",
                MAX_RUN.as_secs()
            )));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(10) {
            return Err(Error("--timeout must be 1 ms..=10 s".into()));
        }
        if self.mode != Mode::Echo
            && (self.peer_bind.is_some() || self.peer_netns.is_some() || self.peers.is_some())
        {
            return Err(Error(
                "--peer-bind, --peer-netns and --peers are for --mode echo (c2c has no external peer)"
                    .into(),
            ));
        }
        if let Some(n) = self.peers {
            if n == 0 || n > self.allocations {
                return Err(Error("--peers must be 1..=--allocations".into()));
            }
        }
        if let Some(ip) = self.peer_bind {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(Error(format!(
                    "--peer-bind {ip}: the echo peers need one unicast address (the allocations are permitted to it)"
                )));
            }
        }
        Ok(())
    }
}

/// Run the relay load and report.
pub fn relay(opts: RelayOpts) -> Result<RelayReport> {
    opts.check()?;
    turnpike_sys::process::raise_nofile();
    let o = Arc::new(opts);
    let threads = o.threads.min(match o.mode {
        Mode::C2c => o.allocations / 2,
        Mode::Echo => o.allocations,
    });
    let setup_start = crate::clock::instant();
    // Echo peers: one per thread, or --peers of them.
    let peers = if o.mode == Mode::Echo {
        echo_peers(&o, o.peers.unwrap_or(threads))?
    } else {
        Vec::new()
    };
    let peer_sockaddrs: Vec<SocketAddr> = peers
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<std::io::Result<_>>()?;
    let mut allocs = setup::connect_all(&o.target, o.allocations, &o.auth)?;
    let family = o.relay_family.map(|f| match f {
        RelayFamily::Ipv4 => turnpike_proto::wire::attr::FAMILY_IPV4,
        RelayFamily::Ipv6 => turnpike_proto::wire::attr::FAMILY_IPV6,
    });
    for a in &mut allocs {
        a.family = family;
    }
    let budget = Duration::from_secs(30) + Duration::from_millis(5 * o.allocations as u64);
    if let Err(e) = setup::drive_all(
        &mut allocs,
        Some(&o.target),
        |_, _| vec![Step::Allocate],
        64,
        "Allocate",
        budget,
    ) {
        super::allocs::teardown(&mut allocs, 64);
        return Err(e);
    }
    let relayed: Vec<SocketAddr> = allocs
        .iter()
        .map(|a| a.relayed.expect("every allocation succeeded"))
        .collect();
    if let (Some(p), Some(r)) = (peer_sockaddrs.first(), relayed.first()) {
        if p.is_ipv4() != r.is_ipv4() {
            super::allocs::teardown(&mut allocs, 64);
            return Err(Error(format!(
                "the echo peers ({}) and the relayed addresses ({}) are of different families: pick --peer-bind and --relay-family to match",
                p.ip(),
                r.ip()
            )));
        }
    }
    // Who talks to whom, and which thread owns each allocation.
    let peer_of = |i: usize| -> SocketAddr {
        match o.mode {
            Mode::C2c => relayed[i ^ 1],
            Mode::Echo => peer_sockaddrs[i % peer_sockaddrs.len()],
        }
    };
    let thread_of = |i: usize| match o.mode {
        Mode::C2c => (i / 2) % threads,
        Mode::Echo => i % threads,
    };
    let peer_addrs: Vec<SocketAddr> = (0..allocs.len()).map(peer_of).collect();
    let method = o.method;
    if let Err(e) = setup::drive_all(
        &mut allocs,
        None,
        |i, _| {
            let p = peer_addrs[i];
            let mut v = vec![Step::Permission(p)];
            if method == DataMethod::Channel {
                v.push(Step::Channel(CHANNEL, p));
            }
            v
        },
        64,
        "CreatePermission/ChannelBind",
        budget,
    ) {
        super::allocs::teardown(&mut allocs, 64);
        return Err(e);
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    // Hand the allocations to their threads.
    let mut workers: Vec<Worker> = (0..threads)
        .map(|_| Worker {
            allocs: Vec::new(),
            flows: Vec::new(),
            peers: Vec::new(),
            opts: o.clone(),
            rate: None,
        })
        .collect();
    // Peer socket k is served by thread k mod threads (any thread may
    // echo for any allocation: the echo goes back to the relay it came
    // from).
    for (k, p) in peers.into_iter().enumerate() {
        workers[k % threads]
            .peers
            .push((p, turnpike_sys::batch::UdpSocketState::new(true)));
    }
    let mut global_index: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for (i, a) in allocs.into_iter().enumerate() {
        let t = thread_of(i);
        let w = &mut workers[t];
        let sends = match o.mode {
            Mode::C2c => i % 2 == 0,
            Mode::Echo => true,
        };
        w.flows.push(Flow {
            alloc: w.allocs.len(),
            id: w.flows.len() as u32,
            sends,
            peer: peer_addrs[i],
            outstanding: 0,
        });
        w.allocs.push(a);
        global_index[t].push(i);
    }
    let sending_allocations: usize = workers
        .iter()
        .map(|w| w.flows.iter().filter(|f| f.sends).count())
        .sum();
    if let Some(rate) = o.rate {
        // `rate` counts relayed messages: two per round trip.
        let per_flow = rate / 2.0 / sending_allocations as f64;
        for w in &mut workers {
            let n = w.flows.iter().filter(|f| f.sends).count();
            w.rate = Some(per_flow * n as f64);
        }
    }

    let clock = Arc::new(Clock {
        epoch: crate::clock::instant(),
    });
    let t_start = 50_000_000u64;
    let t_measure = t_start + o.warmup.as_nanos() as u64;
    let t_stop = t_measure + o.duration.as_nanos() as u64;
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let c = clock.clone();
            std::thread::Builder::new()
                .name("loadgen".into())
                .spawn(move || w.run(&c, t_start, t_measure, t_stop))
        })
        .collect::<std::io::Result<_>>()?;
    // Sample the server and ourselves at the window's edges.
    let sleep_until = |t: u64| {
        let now = clock.ns();
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    };
    sleep_until(t_measure);
    let srv0 = o.server_pid.map(turnpike_sys::procfs::sample).transpose();
    let mach0 = turnpike_sys::procfs::machine_cpu_per_cpu().ok();
    let gen0 = turnpike_sys::procfs::self_cpu_s();
    let drops0 = turnpike_sys::procfs::udp_rcvbuf_errors();
    let w0 = clock.ns();
    sleep_until(t_stop);
    let srv1 = o.server_pid.map(turnpike_sys::procfs::sample).transpose();
    let mach1 = turnpike_sys::procfs::machine_cpu_per_cpu().ok();
    let gen1 = turnpike_sys::procfs::self_cpu_s();
    let drops1 = turnpike_sys::procfs::udp_rcvbuf_errors();
    let w1 = clock.ns();
    let mut stats = Stats::default();
    let mut back: Vec<(usize, Alloc)> = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        let (s, allocs) = h
            .join()
            .map_err(|_| Error("a load thread panicked".into()))?;
        stats.rt.sent += s.rt.sent;
        stats.rt.completed += s.rt.completed;
        stats.rt.late += s.rt.late;
        stats.rt.lost += s.rt.lost;
        stats.offered += s.offered;
        stats.relayed += s.relayed;
        stats.totals.client_sent += s.totals.client_sent;
        stats.totals.client_received += s.totals.client_received;
        stats.totals.peer_received += s.totals.peer_received;
        stats.totals.send_drops += s.totals.send_drops;
        stats.totals.unknown += s.totals.unknown;
        stats.hist.merge(&s.hist);
        stats.skipped += s.skipped;
        back.extend(global_index[t].iter().copied().zip(allocs));
    }
    let srv_end = o.server_pid.map(turnpike_sys::procfs::sample).transpose();
    back.sort_by_key(|(i, _)| *i);
    let mut allocs: Vec<Alloc> = back.into_iter().map(|(_, a)| a).collect();
    let everyone: Vec<usize> = (0..allocs.len()).collect();
    let deletes = setup::drive(
        &mut allocs,
        &everyone,
        None,
        |_, _| vec![Step::Refresh(0)],
        64,
        crate::clock::instant() + Duration::from_secs(20),
    )?;
    let teardown_failures = deletes.iter().filter(|d| d.is_err()).count();

    let window_s = (w1 - w0) as f64 / 1e9;
    let dur = o.duration.as_secs_f64();
    let server = match (srv0, srv1, srv_end) {
        (Ok(Some(a)), Ok(Some(b)), Ok(Some(e))) => Some(ServerUsage::new(
            o.server_pid.unwrap_or(0),
            a,
            b,
            window_s,
            stats.relayed,
            e.rss,
        )),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Err(Error(format!(
                "reading /proc of --server-pid {}: {e}",
                o.server_pid.unwrap_or(0)
            )));
        }
        _ => None,
    };
    let rt = stats.rt.clone();
    Ok(RelayReport {
        command: "relay".into(),
        mode: format!("{:?}", o.mode).to_lowercase(),
        method: format!("{:?}", o.method).to_lowercase(),
        transport: o.target.transport.as_str().into(),
        allocations: o.allocations,
        sending_allocations,
        size: o.size,
        threads,
        duration_s: dur,
        warmup_s: o.warmup.as_secs_f64(),
        target_rate: o.rate,
        window: o.rate.is_none().then_some(o.window),
        offered_msgs: stats.offered,
        offered_per_s: stats.offered as f64 / dur,
        relayed_msgs: stats.relayed,
        relayed_per_s: stats.relayed as f64 / dur,
        loss_pct: if rt.sent == 0 {
            0.0
        } else {
            100.0 * rt.lost as f64 / rt.sent as f64
        },
        round_trips: rt,
        rtt_us: Percentiles::of_ns(&stats.hist),
        server,
        machine: mach0
            .zip(mach1)
            .map(|(a, b)| MachineUsage::new(&a, &b, window_s, stats.relayed)),
        generator_cpu_s: gen1 - gen0,
        generator_skipped: stats.skipped,
        kernel_udp_rcvbuf_errors: drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a)),
        totals: stats.totals,
        peers: peer_sockaddrs,
        setup_s,
        teardown_failures,
        definitions: DEFINITIONS.into(),
    })
}

/// The echo peers: `n` non-blocking UDP sockets, bound to
/// `peer_bind` (or loopback of the server's family), created inside
/// `peer_netns` when given.
fn echo_peers(o: &RelayOpts, n: usize) -> Result<Vec<UdpSocket>> {
    let ip = o.peer_bind.unwrap_or(if o.target.server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    });
    let open = || -> Result<Vec<UdpSocket>> {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| {
                    Error(format!(
                        "binding an echo peer to {ip}{}: {e}",
                        o.peer_netns
                            .as_deref()
                            .map(|n| format!(" in network namespace {n}"))
                            .unwrap_or_default()
                    ))
                })?;
                let r = socket2::SockRef::from(&s);
                let _ = r.set_recv_buffer_size(4 << 20);
                let _ = r.set_send_buffer_size(4 << 20);
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    };
    match &o.peer_netns {
        None => open(),
        Some(ns) => turnpike_sys::netns::run_in(ns, open).map_err(|e| Error(e.to_string()))?,
    }
}
