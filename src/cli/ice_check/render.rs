//! The result: the verdict (which kinds of path work, and whether the
//! expectations hold), as a table for people or as the JSON document for
//! scripts (version 1; fields are only ever added).

use std::net::SocketAddr;

use serde::Serialize;

use super::args::{Mode, ServerUrl};
use turnpike::config::Transport;
use turnpike::ice::driver::Outcome;
use turnpike_proto::ice::agent::{CandidateInfo, Failure, PairReport};
use turnpike_proto::ice::{PathKind, Report, TurnServer};

/// The answer to "does this kind of path work?", for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    pub host: bool,
    pub srflx: bool,
    pub relay: bool,
    pub expectations_met: bool,
}

impl Verdict {
    /// A kind works when every agent that ran has a succeeded pair of it
    /// (in one process both sides must agree; in offer/answer mode this
    /// side's view is what there is).
    pub(crate) fn of(reports: &[Report], expect: &[PathKind]) -> Verdict {
        let works = |k: PathKind| !reports.is_empty() && reports.iter().all(|r| r.path_works(k));
        let (host, srflx, relay) = (
            works(PathKind::Host),
            works(PathKind::Srflx),
            works(PathKind::Relay),
        );
        let expectations_met = if expect.is_empty() {
            host || srflx || relay
        } else {
            expect.iter().all(|&k| works(k))
        };
        Verdict {
            host,
            srflx,
            relay,
            expectations_met,
        }
    }

    pub(crate) fn works(&self, k: PathKind) -> bool {
        match k {
            PathKind::Host => self.host,
            PathKind::Srflx => self.srflx,
            PathKind::Relay => self.relay,
        }
    }
}

pub(super) fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

/// Left-aligned columns, two spaces apart.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) const KINDS: [PathKind; 3] = [PathKind::Host, PathKind::Srflx, PathKind::Relay];

/// The human-readable result.
pub(crate) fn render_table(
    names: &[&str],
    outcome: &Outcome,
    verdict: &Verdict,
    expect: &[PathKind],
) -> String {
    let mut out = String::new();
    for (i, r) in outcome.reports.iter().enumerate() {
        out.push_str(&format!(
            "{} ({}): {} candidates, {} pairs{}\n",
            names[i],
            r.role,
            r.candidates.len(),
            r.pairs.len(),
            if outcome.finished[i] {
                ""
            } else {
                " (not finished)"
            }
        ));
        for g in &r.gathering_failures {
            out.push_str(&format!(
                "  gathering failed: {}: {}\n",
                g.what,
                failure_text(&g.failure)
            ));
        }
        if r.pairs.is_empty() {
            out.push_str("  (no pairs)\n\n");
            continue;
        }
        let mut rows = vec![
            [
                "", "local", "remote", "state", "p50 ms", "p90 ms", "p99 ms", "max ms", "loss",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut pairs: Vec<&PairReport> = r.pairs.iter().collect();
        pairs.sort_by_key(|p| (p.path, p.id));
        for p in pairs {
            let rtt = &p.rtt;
            let loss = if rtt.sent == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", rtt.loss_pct)
            };
            rows.push(vec![
                if p.nominated { "*" } else { "" }.to_string(),
                cand_text(&p.local),
                cand_text(&p.remote),
                state_text(p),
                ms(rtt.p50_ms),
                ms(rtt.p90_ms),
                ms(rtt.p99_ms),
                ms(rtt.max_ms),
                loss,
            ]);
        }
        for line in columns(&rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    for k in KINDS {
        let per: Vec<String> = outcome
            .reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let of: Vec<&PairReport> = r.pairs.iter().filter(|p| p.path == k).collect();
                let ok = of.iter().filter(|p| p.state == "succeeded").count();
                format!("{} {ok}/{}", names[i], of.len())
            })
            .collect();
        let tried = outcome
            .reports
            .iter()
            .any(|r| r.pairs.iter().any(|p| p.path == k));
        // Gathering that failed for this kind (a relay that could not be
        // allocated is a failing relay path, not an untested one).
        let prefix = match k {
            PathKind::Host => None,
            PathKind::Srflx => Some("srflx "),
            PathKind::Relay => Some("relay "),
        };
        let mut gather: Vec<String> = Vec::new();
        for r in &outcome.reports {
            for g in &r.gathering_failures {
                if prefix.is_some_and(|p| g.what.starts_with(p)) {
                    let t = failure_text(&g.failure);
                    if !gather.contains(&t) {
                        gather.push(t);
                    }
                }
            }
        }
        let word = if verdict.works(k) {
            "works"
        } else if tried || !gather.is_empty() {
            "FAILS"
        } else {
            "not tested"
        };
        let mut vias: Vec<Transport> = Vec::new();
        if k == PathKind::Relay {
            for r in &outcome.reports {
                for p in r
                    .pairs
                    .iter()
                    .filter(|p| p.state == "succeeded" && p.path == k)
                {
                    for v in [p.local.via, p.remote.via].into_iter().flatten() {
                        if !vias.contains(&v) {
                            vias.push(v);
                        }
                    }
                }
            }
            vias.sort_by_key(|v| v.as_str());
        }
        let via = if vias.is_empty() {
            String::new()
        } else {
            format!(
                "; TURN over {}",
                vias.iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let gathered = if gather.is_empty() {
            String::new()
        } else {
            format!("; gathering failed: {}", gather.join(", "))
        };
        out.push_str(&format!(
            "{:<6} {:<10} ({} pairs succeeded{via}{gathered})\n",
            k.as_str(),
            word,
            per.join(", ")
        ));
    }
    if outcome.timed_out {
        out.push_str("the run hit --timeout before every agent finished\n");
    }
    if outcome.interrupted {
        out.push_str("interrupted before every agent finished\n");
    }
    if let Some(e) = &outcome.remote_error {
        out.push_str(&format!("no description from the other side: {e}\n"));
    }
    let exp = if expect.is_empty() {
        "some pair succeeded".to_string()
    } else {
        format!(
            "expected {}",
            expect
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    out.push_str(&if verdict.expectations_met {
        format!("OK: {exp}\n")
    } else {
        format!("FAILED: {exp}\n")
    });
    out
}

/// What was run, for the JSON document.
pub(crate) struct RunInfo<'a> {
    pub mode: Option<Mode>,
    pub servers: &'a [ServerUrl],
    pub turn: &'a [TurnServer],
    pub stun: Option<SocketAddr>,
    pub names: &'a [&'a str],
    pub netns: &'a [Option<String>],
    pub expect: &'a [PathKind],
}

/// The JSON document (`--json`), version 1. Stable for scripts: fields
/// are only ever added. Agents are `a` (controlling) and `b`
/// (controlled); offer mode has only `a`, answer mode only `b`.
#[derive(Serialize)]
pub(crate) struct JsonDoc<'a> {
    pub version: u32,
    /// local, offer or answer.
    pub mode: &'static str,
    pub servers: Vec<JsonServer>,
    pub stun: Option<SocketAddr>,
    pub expect: &'a [PathKind],
    /// The run hit --timeout before every agent finished.
    pub timed_out: bool,
    /// Ctrl-C ended the run.
    pub interrupted: bool,
    /// Offer/answer mode: why the other side's description never came.
    pub remote_error: Option<&'a str>,
    pub elapsed_ms: f64,
    pub agents: std::collections::BTreeMap<String, JsonAgent<'a>>,
    pub verdict: Verdict,
}

#[derive(Serialize)]
pub(crate) struct JsonServer {
    pub url: String,
    pub addr: SocketAddr,
    pub transport: Transport,
}

#[derive(Serialize)]
pub(crate) struct JsonAgent<'a> {
    pub netns: Option<&'a str>,
    /// The agent finished its checks and measurements in time.
    pub finished: bool,
    pub host_sockets: &'a [SocketAddr],
    #[serde(flatten)]
    pub report: &'a Report,
}

pub(crate) fn render_json<'a>(
    run: &RunInfo<'a>,
    outcome: &'a Outcome,
    verdict: &Verdict,
) -> JsonDoc<'a> {
    let agents = outcome
        .reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                run.names[i].to_ascii_lowercase(),
                JsonAgent {
                    netns: run.netns[i].as_deref(),
                    finished: outcome.finished[i],
                    host_sockets: &outcome.hosts[i],
                    report: r,
                },
            )
        })
        .collect();
    JsonDoc {
        version: 1,
        mode: match run.mode {
            None => "local",
            Some(Mode::Offer) => "offer",
            Some(Mode::Answer) => "answer",
        },
        servers: run
            .servers
            .iter()
            .zip(run.turn)
            .map(|(u, t)| JsonServer {
                url: u.url(),
                addr: t.addr,
                transport: t.transport,
            })
            .collect(),
        stun: run.stun,
        expect: run.expect,
        timed_out: outcome.timed_out,
        interrupted: outcome.interrupted,
        remote_error: outcome.remote_error.as_deref(),
        elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        agents,
        verdict: *verdict,
    }
}

pub(super) fn cand_text(c: &CandidateInfo) -> String {
    match c.via {
        Some(v) => format!("{}/{v} {}", c.kind, c.addr),
        None => format!("{}/udp {}", c.kind, c.addr),
    }
}

pub(super) fn state_text(p: &PairReport) -> String {
    match &p.failure {
        Some(f) => format!("failed: {}", failure_text(f)),
        None => p.state.clone(),
    }
}

pub(super) fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Timeout => "timeout".into(),
        Failure::Error(c) => c.to_string(),
        Failure::Unreachable(w) => format!("unreachable ({w})"),
    }
}
