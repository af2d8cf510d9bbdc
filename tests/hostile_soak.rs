//! The hostile soak (issue 12, item 9): a few minutes of well-behaved
//! load and attacks at the same time, against the built server. Not in the
//! default test run; run it on purpose, on a quiet machine:
//!
//! ```sh
//! cargo test --release --test hostile_soak -- --ignored --nocapture
//! ```
//!
//! (`TURNPIKE_SOAK_SECS` sets the length, 120 s by default;
//! `TURNPIKE_SOAK_ALLOCATIONS` the steady allocations, 5,000;
//! `TURNPIKE_SOAK_FLOOD_PPS` the UDP flood, 20,000 datagrams/s;
//! `TURNPIKE_SOAK_ROUNDS` the attack rounds, 2;
//! `TURNPIKE_SOAK_ATTACKS` which attacks run, all by default:
//! `udp,tcp,loris,nonreader`.)
//!
//! Well-behaved, from 127.0.0.1:
//! - `turnpike loadgen relay`: the steady allocations in client-to-client
//!   pairs, ChannelData at a fixed rate for the whole run;
//! - churn: `turnpike loadgen allocations` over and over (allocations
//!   created and deleted).
//!
//! Hostile, each from its own loopback addresses (127.0.0.0/8 is all ours):
//! - an unauthenticated UDP flood (Allocate without credentials, Binding);
//! - a TCP connection flood that holds every connection it gets;
//! - slow-loris: a STUN header, then a byte now and then;
//! - clients that send requests over TCP and never read the answers.
//!
//! It runs in phases of the same length on one server: the well-behaved
//! load alone twice (a warm-up, then the baseline), then the well-behaved
//! load with every attack, twice (`TURNPIKE_SOAK_ROUNDS`). It asserts that
//! the well-behaved flows lose nothing in any, that the flood's answers
//! stay within 3x its bytes and within the per-source limit, that after
//! each attack round the server's open file descriptors come back to the
//! level the baseline phase left, its live heap and its RSS within 1.5x of
//! it, and that the second round leaves RSS within 15 % of where the first
//! left it (a plateau, not a ramp); and it prints the numbers
//! `benches/RESULTS.md` records.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its loops"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{TestServer, Transport, loopback_relay_config, turnpike_bin};

const SECRET: &str = "soak-secret";
/// `limits.unauth_burst` of the soak's server (the rate is the default).
const BURST: u64 = 16_000;
const RATE: u64 = 1_000;
/// Churn set-ups a second, at most (each asks for one 401).
const CHURN_PER_S: u64 = 400;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The allocator's bytes in use and free, from the server's `/metrics`.
fn heap(http: std::net::SocketAddr) -> (f64, f64) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    (
        gauge("turnpike_heap_in_use_bytes") / 1048576.0,
        gauge("turnpike_heap_free_bytes") / 1048576.0,
    )
}

/// Open file descriptors and RSS (bytes) of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (fds, rss_kib * 1024)
}

/// A source address of the attackers: 127.0.0.`n`.
fn src(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A STUN request header (no attributes), method `m`.
fn stun_header(m: u16, body: u16, tid: u64) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&m.to_be_bytes());
    h[2..4].copy_from_slice(&body.to_be_bytes());
    h[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    h[12..20].copy_from_slice(&tid.to_be_bytes());
    h
}

/// The smallest unauthenticated Allocate: REQUESTED-TRANSPORT only.
fn unauth_allocate(tid: u64) -> Vec<u8> {
    let mut m = stun_header(0x0003, 8, tid).to_vec();
    m.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

#[derive(Default)]
struct Tally {
    udp_sent_bytes: AtomicU64,
    udp_answer_bytes: AtomicU64,
    udp_answers: AtomicU64,
    tcp_opened: AtomicU64,
    tcp_refused: AtomicU64,
    tcp_closed_by_server: AtomicU64,
    loris_cut: AtomicU64,
    nonreader_cut: AtomicU64,
}

fn spawn(
    stop: &Arc<AtomicBool>,
    f: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || f(stop))
}

/// Whether the server closed `s` (a read returns EOF or an error).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() != ErrorKind::WouldBlock)
}

#[test]
#[ignore = "minutes of load: run it on purpose (see the file's doc)"]
fn hostile_soak() {
    let secs = env_or("TURNPIKE_SOAK_SECS", 120);
    let allocations = env_or("TURNPIKE_SOAK_ALLOCATIONS", 5000);
    // The per-source limit on unauthenticated answers stays on at its
    // default rate (1,000/s). The well-behaved loads all come from
    // 127.0.0.1: the set-up of the steady allocations asks for one 401 per
    // allocation at once, which the largest burst (16,000) covers, and the
    // churn is paced below the rate (CHURN_PER_S). The flood's sources get
    // the same limit.
    let config = loopback_relay_config("20000-60000", &format!("secrets = [\"{SECRET}\"]"))
        + &format!("\n[limits]\nunauth_burst = {BURST}\n")
        + "[http]\naddr = \"127.0.0.1:0\"\n";
    let server = TestServer::start(&config);
    let pid = server.pid();
    let udp = server.addr(Transport::Udp, false);
    let tcp = server.addr(Transport::Tcp, false);

    let loadgen = |args: &[&str]| {
        let mut c = Command::new(turnpike_bin());
        c.arg("loadgen")
            .args(args)
            .args(["--server", &udp.to_string(), "--secret", SECRET, "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "loadgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // The steady allocations and their ChannelData, for one phase.
    let steady = || {
        loadgen(&[
            "relay",
            "--allocations",
            &allocations.to_string(),
            "--mode",
            "c2c",
            "--rate",
            "10000",
            "--duration",
            &secs.to_string(),
            "--warmup",
            "5",
            "--timeout-ms",
            "3000",
        ])
    };

    // Phases one and two, the warm-up and the baseline: the well-behaved
    // load alone, each as long as the soak (the steady allocations
    // relaying, and the churn). The server's tables, caches and allocator
    // grow to that load in the first; the second shows where they settle
    // (2026-12-04, 40 s phases: RSS rose 6 MiB from the first phase to a
    // second one with no attack at all, as much as with the TCP flood).
    // What the server holds after the baseline is the level the attacks
    // of the last phase must leave it at.
    for phase in ["warm-up", "baseline"] {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, churning) = churn(&stop, &loadgen);
        let warm = json(steady().output().unwrap());
        stop.store(true, Ordering::Relaxed);
        churning.join().unwrap();
        assert_eq!(warm["round_trips"]["lost"], 0, "{phase}: {warm}");
        assert_eq!(failed.load(Ordering::Relaxed), 0, "{phase}: churn failed");
        // Let 127.0.0.1's bucket refill and the server hand freed memory
        // back (every 10 s).
        std::thread::sleep(Duration::from_secs(BURST / RATE + 2));
        let (fds, rss) = usage(pid);
        println!(
            "{phase} phase: {} round trips, none lost; churn {} set-ups; {fds} fds, RSS {:.1} MiB",
            warm["round_trips"]["sent"],
            ok.load(Ordering::Relaxed),
            rss as f64 / 1048576.0
        );
    }
    let (fds0, rss0) = usage(pid);
    let heap0 = heap(server.http_addr());
    println!(
        "after the baseline phase: {fds0} fds, RSS {:.1} MiB (heap in use {:.1} MiB, free {:.1} MiB)",
        rss0 as f64 / 1048576.0,
        heap0.0,
        heap0.1
    );

    // The attack phase, `TURNPIKE_SOAK_ROUNDS` times (2 by default): each
    // round must leave the server where the baseline left it (fds exactly,
    // live heap and RSS within 1.5x), and the last must leave RSS where the
    // first did (what the allocator keeps after an attack is a plateau,
    // not a ramp).
    let rounds = env_or("TURNPIKE_SOAK_ROUNDS", 2);
    let mut ends: Vec<(u64, f64)> = Vec::new();
    for round in 1..=rounds {
        println!("--- attack round {round} of {rounds} ---");
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();

        // The steady allocations and their ChannelData.
        let relay = steady()
            .args(["--server-pid", &pid.to_string()])
            .spawn()
            .unwrap();

        // Churn.
        let (churn_ok, churn_failed, churn_thread) = churn(&stop, &loadgen);
        threads.push(churn_thread);

        // The unauthenticated UDP flood: 4 sources, paced to
        // TURNPIKE_SOAK_FLOOD_PPS in total (each source far above the
        // per-source limit; the total within what 2 cores carry next to
        // everything else here).
        let attacks = std::env::var("TURNPIKE_SOAK_ATTACKS")
            .unwrap_or_else(|_| "udp,tcp,loris,nonreader".into());
        let on = |a: &str| attacks.split(',').any(|x| x == a);
        let flood_started = Instant::now();
        let per_tick = (env_or("TURNPIKE_SOAK_FLOOD_PPS", 20_000) / 4 / 100).max(1);
        for n in (2..6).filter(|_| on("udp")) {
            let t = tally.clone();
            threads.push(spawn(&stop, move |stop| {
                let start = Instant::now();
                let mut ticks = 0u32;
                let s = UdpSocket::bind((src(n), 0)).unwrap();
                s.set_nonblocking(true).unwrap();
                let mut tid = 0u64;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..per_tick {
                        tid += 1;
                        let m = if tid.is_multiple_of(2) {
                            unauth_allocate(tid)
                        } else {
                            stun_header(0x0001, 0, tid).to_vec()
                        };
                        if s.send_to(&m, udp).is_ok() {
                            t.udp_sent_bytes
                                .fetch_add(m.len() as u64, Ordering::Relaxed);
                        }
                    }
                    while let Ok((k, _)) = s.recv_from(&mut buf) {
                        t.udp_answer_bytes.fetch_add(k as u64, Ordering::Relaxed);
                        t.udp_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    // 100 ticks a second.
                    ticks += 1;
                    let next = start + Duration::from_millis(10) * ticks;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(200));
                while let Ok((k, _)) = s.recv_from(&mut buf) {
                    t.udp_answer_bytes.fetch_add(k as u64, Ordering::Relaxed);
                    t.udp_answers.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }

        // The TCP connection flood: connect from 4 sources, hold everything.
        for n in (10..14).filter(|_| on("tcp")) {
            let t = tally.clone();
            threads.push(spawn(&stop, move |stop| {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if held.len() < 4000 {
                        let sock = socket2_connect(src(n), tcp);
                        match sock {
                            Some(s) => {
                                t.tcp_opened.fetch_add(1, Ordering::Relaxed);
                                held.push(s);
                            }
                            None => {
                                t.tcp_refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if held.len().is_multiple_of(256) {
                        let before = held.len();
                        held.retain_mut(|s| !closed_by_peer(s));
                        t.tcp_closed_by_server
                            .fetch_add((before - held.len()) as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }));
        }

        // Slow-loris: 200 connections, a header promising 500 bytes, then a
        // byte every half second.
        if on("loris") {
            let t = tally.clone();
            threads.push(spawn(&stop, move |stop| {
                let mut conns: Vec<TcpStream> = (0..200)
                    .filter_map(|_| socket2_connect(src(20), tcp))
                    .collect();
                for (i, c) in conns.iter_mut().enumerate() {
                    let _ = c.write_all(&stun_header(0x0001, 500, i as u64));
                }
                while !stop.load(Ordering::Relaxed) && !conns.is_empty() {
                    std::thread::sleep(Duration::from_millis(500));
                    let before = conns.len();
                    conns.retain_mut(|c| c.write_all(&[0]).is_ok() && !closed_by_peer(c));
                    t.loris_cut
                        .fetch_add((before - conns.len()) as u64, Ordering::Relaxed);
                }
            }));
        }

        // Never-reading clients: Binding requests over TCP, answers never read.
        for k in (0..20u64).filter(|_| on("nonreader")) {
            let t = tally.clone();
            threads.push(spawn(&stop, move |stop| {
                let Some(mut c) = socket2_connect(src(30), tcp) else {
                    return;
                };
                let mut tid = k << 32;
                let mut burst = Vec::with_capacity(20 * 512);
                'outer: while !stop.load(Ordering::Relaxed) {
                    burst.clear();
                    for _ in 0..512 {
                        tid += 1;
                        burst.extend_from_slice(&stun_header(0x0001, 0, tid));
                    }
                    let mut off = 0;
                    while off < burst.len() {
                        match c.write(&burst[off..]) {
                            Ok(0) => break 'outer,
                            Ok(n) => off += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                if stop.load(Ordering::Relaxed) {
                                    break 'outer;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            Err(_) => {
                                t.nonreader_cut.fetch_add(1, Ordering::Relaxed);
                                break 'outer;
                            }
                        }
                    }
                }
            }));
        }

        // The steady run ends the soak.
        let out = relay.wait_with_output().unwrap();
        stop.store(true, Ordering::Relaxed);
        let flood_secs = flood_started.elapsed().as_secs_f64() + 0.2;
        for t in threads {
            t.join().unwrap();
        }
        let report = json(out);

        // Everything the attackers held is closed; wait (bounded) for the
        // server to let go of it too.
        if let Ok(hold) = std::env::var("TURNPIKE_SOAK_HOLD_SECS") {
            // A window to look at the server before the end is measured.
            println!("holding {hold} s (server pid {pid})");
            std::thread::sleep(Duration::from_secs(hold.parse().unwrap()));
        }
        // The server hands freed memory back every 10 s: wait (bounded) for
        // both to come back. Descriptors come back exactly. Live memory (the
        // heap in use, mallinfo2) comes back to what the well-behaved load
        // alone reaches: it grows phase to phase by a few MiB with or
        // without attacks (2026-12-04, 40 s phases: 22.5 -> 27.9 MiB with
        // every attack, 22.4 -> 27.6 MiB with none), so the bound is 1.5x
        // the baseline's, which a leak of even 4 bytes per attacking
        // connection (millions here) would break. RSS: a connection that
        // sends nothing holds a few hundred bytes of buffers, and the key
        // cache's entries allocate nothing of their own, so the flood no
        // longer leaves glibc's heap strewn with pages it cannot hand back
        // (it left 12 MiB before; see benches/RESULTS.md): within 1.5x the
        // baseline.
        let rss_limit = rss0 + rss0 / 2;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut fds1, mut rss1) = usage(pid);
        while (fds1 > fds0 || rss1 > rss_limit) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            (fds1, rss1) = usage(pid);
        }
        // Then one more of the server's 10 s hand-backs, so every round's
        // RSS is read at the same point (after a trim).
        std::thread::sleep(Duration::from_secs(11));
        (fds1, rss1) = usage(pid);

        let sent = tally.udp_sent_bytes.load(Ordering::Relaxed);
        let answered = tally.udp_answer_bytes.load(Ordering::Relaxed);
        println!("--- hostile soak, {secs} s ---");
        println!(
            "steady: {} allocations, offered {} msgs, relayed {}, loss {:.4} %, round trips {}",
            report["allocations"],
            report["offered_msgs"],
            report["relayed_msgs"],
            report["loss_pct"],
            report["round_trips"]
        );
        println!("server: {}", report["server"]);
        println!(
            "churn: {} set-ups ok, {} failed",
            churn_ok.load(Ordering::Relaxed),
            churn_failed.load(Ordering::Relaxed)
        );
        println!(
            "udp flood: {sent} bytes sent, {answered} bytes answered ({} answers), factor {:.3}",
            tally.udp_answers.load(Ordering::Relaxed),
            answered as f64 / sent.max(1) as f64
        );
        println!(
            "tcp flood: {} opened, {} refused at connect, {} closed by the server",
            tally.tcp_opened.load(Ordering::Relaxed),
            tally.tcp_refused.load(Ordering::Relaxed),
            tally.tcp_closed_by_server.load(Ordering::Relaxed)
        );
        println!(
            "slow-loris: {} of 200 cut; never-reading: {} of 20 cut",
            tally.loris_cut.load(Ordering::Relaxed),
            tally.nonreader_cut.load(Ordering::Relaxed)
        );
        let heap1 = heap(server.http_addr());
        println!(
            "end: {fds1} fds (start {fds0}), RSS {:.1} MiB (start {:.1} MiB), heap in use {:.1} MiB, free {:.1} MiB",
            rss1 as f64 / 1048576.0,
            rss0 as f64 / 1048576.0,
            heap1.0,
            heap1.1
        );

        assert_eq!(
            report["round_trips"]["lost"], 0,
            "the steady flows lost round trips: {report}"
        );
        assert_eq!(
            churn_failed.load(Ordering::Relaxed),
            0,
            "churn set-ups failed"
        );
        assert!(churn_ok.load(Ordering::Relaxed) > 0);
        assert!(
            answered <= 3 * sent,
            "the flood was amplified: {answered} bytes for {sent}"
        );
        // Four flooding sources, each held to the limit: the burst, then the
        // rate (5 % for the bucket's refill rounding and the last tick).
        let answers = tally.udp_answers.load(Ordering::Relaxed);
        if on("udp") {
            let cap = (4.0 * (BURST as f64 + RATE as f64 * flood_secs) * 1.05) as u64;
            println!("udp flood: {answers} answers over {flood_secs:.1} s; the limit allows {cap}");
            assert!(
                answers <= cap,
                "the per-source limit let {answers} answers through, over {cap}"
            );
        }
        assert!(fds1 <= fds0, "fds did not come back: {fds1} > {fds0}");
        // Live memory: within 1.5x what the well-behaved load alone left.
        assert!(
            heap1.0 <= 1.5 * heap0.0,
            "live heap did not come back: {:.1} MiB vs {:.1} MiB after the baseline",
            heap1.0,
            heap0.0
        );
        // RSS: within 1.5x the level the well-behaved load alone left.
        assert!(rss1 <= rss_limit, "RSS did not come back: {rss1} vs {rss0}");
        ends.push((rss1, heap1.0));
        if round < rounds {
            // As between the well-behaved phases: the source's bucket refills.
            std::thread::sleep(Duration::from_secs(BURST / RATE + 2));
        }
    }
    // The plateau: the last round leaves RSS within 15 % of where the first
    // left it. A leak of 2 bytes per attacking connection (millions a
    // round) would add more. (The live heap is held to the baseline's 1.5x
    // in every round above; it steps up a few MiB from phase to phase with
    // the well-behaved load alone, so it is printed here, not compared.)
    let (rss_first, heap_first) = ends[0];
    let (rss_last, heap_last) = ends[ends.len() - 1];
    println!(
        "plateau: RSS after round 1 {:.1} MiB, after round {rounds} {:.1} MiB; heap in use {heap_first:.1} -> {heap_last:.1} MiB",
        rss_first as f64 / 1048576.0,
        rss_last as f64 / 1048576.0
    );
    assert!(
        rss_last as f64 <= 1.15 * rss_first as f64,
        "RSS grew from round to round: {rss_first} -> {rss_last}"
    );
}

/// The churn: `turnpike loadgen allocations` (200 set-ups and deletes)
/// over and over, paced to [`CHURN_PER_S`], until `stop`. Returns the
/// set-ups that succeeded and failed so far, and the thread.
fn churn(
    stop: &Arc<AtomicBool>,
    loadgen: &dyn Fn(&[&str]) -> Command,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, JoinHandle<()>) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let mut cmd = loadgen(&["allocations", "--count", "200", "--concurrency", "8"]);
    let handle = spawn(stop, move |stop| {
        let start = Instant::now();
        let mut runs = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // Paced: run k starts no earlier than k * 200 / CHURN_PER_S s.
            let due = start + Duration::from_millis(200_000 / CHURN_PER_S) * runs;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            runs += 1;
            let out = cmd.output().unwrap();
            // A run with failed set-ups exits non-zero; its report still
            // says what failed.
            let Ok(r) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                panic!("loadgen: {}", String::from_utf8_lossy(&out.stderr));
            };
            if r["setups_failed"] != 0 {
                println!("churn errors: {}", r["errors"]);
            }
            ok2.fetch_add(r["setups_ok"].as_u64().unwrap(), Ordering::Relaxed);
            failed2.fetch_add(r["setups_failed"].as_u64().unwrap(), Ordering::Relaxed);
        }
    });
    (ok, failed, handle)
}

/// A non-blocking TCP connection to `to` from `from` (port chosen by the
/// kernel); None if refused or not established within a second.
fn socket2_connect(from: Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::from((from, 0)).into()).ok()?;
    sock.connect_timeout(&to.into(), Duration::from_secs(1))
        .ok()?;
    let s: TcpStream = sock.into();
    s.set_nonblocking(true).ok()?;
    Some(s)
}
