//! Human-readable tables of the reports (`--json` prints the structs).

use std::fmt::Write;

use super::{AllocationsReport, BindingReport, IdleReport, Percentiles, RelayReport, ServerUsage};

fn row(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "  {k:<44} {v}");
}

fn pct_rows(out: &mut String, what: &str, p: &Percentiles) {
    row(
        out,
        &format!("{what} p50 / p90 / p99 / p99.9 (µs)"),
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            p.p50_us, p.p90_us, p.p99_us, p.p999_us
        ),
    );
    row(
        out,
        &format!("{what} min / mean / max (µs)"),
        format!(
            "{:.1} / {:.1} / {:.1}   ({} samples)",
            p.min_us, p.mean_us, p.max_us, p.samples
        ),
    );
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn server_rows(out: &mut String, s: &Option<ServerUsage>, unit: &str) {
    match s {
        Some(s) => {
            row(
                out,
                "server CPU (pid)",
                format!(
                    "{:.3} s over {:.2} s = {:.1}% of a core (pid {})",
                    s.cpu_s, s.window_s, s.cpu_pct, s.pid
                ),
            );
            row(
                out,
                &format!("server CPU per {unit}"),
                s.cpu_us_per_unit
                    .map_or("n/a".into(), |u| format!("{u:.2} µs")),
            );
            row(out, "server RSS at end", mib(s.rss_end_bytes));
        }
        None => row(out, "server CPU / RSS", "not measured (no --server-pid)"),
    }
}

pub fn relay(r: &RelayReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "turnpike loadgen relay: {} via {} over {}, {} allocations ({} sending), {} B payload, {} thread(s)",
        r.mode, r.method, r.transport, r.allocations, r.sending_allocations, r.size, r.threads
    );
    let _ = writeln!(
        o,
        "  (one round trip = 2 relayed messages; measured window {:.1} s after {:.1} s warm-up)",
        r.duration_s, r.warmup_s
    );
    if !r.peers.is_empty() {
        let shown: Vec<String> = r.peers.iter().take(4).map(ToString::to_string).collect();
        let more = if r.peers.len() > 4 { ", …" } else { "" };
        row(
            &mut o,
            "echo peers",
            format!("{}: {}{more}", r.peers.len(), shown.join(", ")),
        );
    }
    match (r.target_rate, r.window) {
        (Some(t), _) => row(&mut o, "target (msg/s)", format!("{t:.0}")),
        (None, Some(w)) => row(
            &mut o,
            "target",
            format!("closed loop, {w} round trips in flight per sender"),
        ),
        _ => {}
    }
    row(
        &mut o,
        "offered (msg/s)",
        format!("{:.0}   ({} msgs)", r.offered_per_s, r.offered_msgs),
    );
    row(
        &mut o,
        "relayed (msg/s)",
        format!("{:.0}   ({} msgs)", r.relayed_per_s, r.relayed_msgs),
    );
    row(
        &mut o,
        "round trips sent / back / late",
        format!(
            "{} / {} / {}",
            r.round_trips.sent, r.round_trips.completed, r.round_trips.late
        ),
    );
    row(&mut o, "loss", format!("{:.3}%", r.loss_pct));
    pct_rows(&mut o, "RTT", &r.rtt_us);
    server_rows(&mut o, &r.server, "relayed msg");
    if let Some(m) = &r.machine {
        row(
            &mut o,
            "machine CPU (/proc/stat, all processes)",
            format!(
                "{:.3} s busy = {:.1}% of a core (user {:.3}, system {:.3}, softirq {:.3}, irq {:.3})",
                m.busy_s,
                m.busy_pct,
                m.user_s + m.nice_s,
                m.system_s,
                m.softirq_s,
                m.irq_s
            ),
        );
        let per: Vec<String> = m
            .per_cpu
            .iter()
            .map(|c| {
                format!(
                    "cpu{} {:.3} s (softirq {:.3})",
                    c.cpu, c.busy_s, c.softirq_s
                )
            })
            .collect();
        row(&mut o, "machine CPU by CPU", per.join(", "));
        if !m.complete {
            row(
                &mut o,
                "WARNING",
                format!(
                    "/proc/stat accounted only {:.1}% of the CPUs' time in the window \
                     (lost ticks on a virtual machine): the machine CPU figures are too \
                     low; compare server CPU instead",
                    m.accounted_pct
                ),
            );
        }
        row(
            &mut o,
            "machine CPU per relayed msg",
            m.busy_us_per_unit
                .map_or("n/a".into(), |u| format!("{u:.2} µs")),
        );
    }
    row(
        &mut o,
        "generator CPU",
        format!(
            "{:.2} s ({:.0}% of a core)",
            r.generator_cpu_s,
            100.0 * r.generator_cpu_s / r.duration_s.max(1e-9)
        ),
    );
    if r.generator_skipped > 0 {
        row(
            &mut o,
            "generator fell behind: skipped",
            format!(
                "{} round trips (the generator, not the server, was short of CPU)",
                r.generator_skipped
            ),
        );
    }
    if let Some(d) = r.kernel_udp_rcvbuf_errors.filter(|d| *d > 0) {
        row(
            &mut o,
            "kernel UDP receive-buffer drops",
            format!("{d} (system-wide, measured window)"),
        );
    }
    if r.totals.send_drops > 0 || r.totals.unknown > 0 {
        row(
            &mut o,
            "client send drops / unknown input",
            format!("{} / {}", r.totals.send_drops, r.totals.unknown),
        );
    }
    if r.teardown_failures > 0 {
        row(&mut o, "teardown failures", r.teardown_failures);
    }
    o
}

pub fn binding(r: &BindingReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "turnpike loadgen binding: over {}, {} socket(s), {:.1} s measured after {:.1} s warm-up",
        r.transport, r.sockets, r.duration_s, r.warmup_s
    );
    match (r.target_rate, r.window) {
        (Some(t), _) => row(&mut o, "target (req/s)", format!("{t:.0}")),
        (None, Some(w)) => row(
            &mut o,
            "target",
            format!("closed loop, {w} in flight per socket"),
        ),
        _ => {}
    }
    row(
        &mut o,
        "answered (req/s)",
        format!(
            "{:.0}   ({} of {} sent)",
            r.answered_per_s, r.answered, r.sent
        ),
    );
    row(
        &mut o,
        "loss / late / bad answers",
        format!("{:.3}% / {} / {}", r.loss_pct, r.late, r.bad_answers),
    );
    pct_rows(&mut o, "RTT", &r.rtt_us);
    server_rows(&mut o, &r.server, "request");
    row(
        &mut o,
        "generator CPU",
        format!("{:.2} s", r.generator_cpu_s),
    );
    o
}

pub fn allocations(r: &AllocationsReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "turnpike loadgen allocations: {} set-ups over {}, {} concurrent",
        r.count, r.transport, r.concurrency
    );
    let _ = writeln!(o, "  ({})", r.note);
    row(
        &mut o,
        "set-ups ok / failed",
        format!("{} / {}", r.setups_ok, r.setups_failed),
    );
    row(
        &mut o,
        "set-ups per second",
        format!("{:.0}   ({:.3} s)", r.setups_per_s, r.setup_elapsed_s),
    );
    pct_rows(&mut o, "set-up latency", &r.setup_latency_us);
    pct_rows(
        &mut o,
        "Allocate latency (signed request)",
        &r.allocate_latency_us,
    );
    row(
        &mut o,
        "deletes ok / failed, per second",
        format!(
            "{} / {}, {:.0}",
            r.deletes_ok, r.deletes_failed, r.deletes_per_s
        ),
    );
    server_rows(&mut o, &r.server, "set-up");
    for e in &r.errors {
        row(&mut o, "error", e);
    }
    o
}

pub fn idle(r: &IdleReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "turnpike loadgen idle: {} allocations over {} (set up in {:.2} s, held {:.1} s, {} refresh rounds)",
        r.allocations, r.transport, r.setup_s, r.hold_s, r.refresh_rounds
    );
    let _ = writeln!(o, "  ({})", r.note);
    let opt = |v: Option<u64>| v.map_or("n/a (no --server-pid)".into(), mib);
    row(&mut o, "server RSS before", opt(r.rss_before_bytes));
    row(
        &mut o,
        "server RSS with allocations",
        opt(r.rss_with_allocations_bytes),
    );
    row(
        &mut o,
        "server RSS after delete",
        opt(r.rss_after_delete_bytes),
    );
    row(
        &mut o,
        "bytes per allocation",
        r.bytes_per_allocation
            .map_or("n/a".into(), |b| format!("{b:.0}")),
    );
    row(
        &mut o,
        "deletes ok / failed",
        format!("{} / {}", r.deletes_ok, r.deletes_failed),
    );
    o
}
