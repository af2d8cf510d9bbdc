//! Progress on stderr as the run goes: timestamped lines, or on a
//! terminal the same lines under a spinner that shows each agent's
//! phase.

use std::io::Write;
use std::time::{Duration, Instant};

use super::render::{cand_text, failure_text, state_text};
use turnpike::ice::driver::Observer;
use turnpike_proto::ice::{Agent, Event, Kind};

/// Progress on stderr: timestamped lines, or on a terminal the same
/// lines (without times) under a spinner line that shows each agent's
/// phase.
pub(super) struct Progress {
    start: Instant,
    tty: bool,
    names: Vec<&'static str>,
    spin: usize,
    status_shown: bool,
    /// No spinner while this side waits for the other's description (a
    /// person may be pasting it on this terminal).
    paused: bool,
}

impl Progress {
    /// `paused`: no spinner until the other side's description arrives.
    pub(super) fn new(tty: bool, names: Vec<&'static str>, paused: bool) -> Progress {
        Progress {
            start: turnpike::clock::instant(),
            tty,
            names,
            spin: 0,
            status_shown: false,
            paused,
        }
    }

    pub(super) fn finish(&mut self) {
        if self.tty && self.status_shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.status_shown = false;
        }
    }

    fn line(&mut self, who: usize, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            if self.status_shown {
                let _ = write!(err, "\r\x1b[2K");
                self.status_shown = false;
            }
            let _ = writeln!(err, "{} {text}", self.names[who]);
        } else {
            let t = self.start.elapsed().as_secs_f64();
            let _ = writeln!(err, "[{t:7.3}s] {} {text}", self.names[who]);
        }
    }

    fn phase(a: &Agent) -> String {
        if a.is_done() {
            return "done".into();
        }
        if !a.gathering_done() {
            return "gathering".into();
        }
        let r = a.report();
        if r.pairs.is_empty() {
            return "waiting for the other side".into();
        }
        let finished = r
            .pairs
            .iter()
            .filter(|p| p.state == "succeeded" || p.state == "failed")
            .count();
        if finished == r.pairs.len() {
            "measuring".into()
        } else {
            format!("checking {finished}/{}", r.pairs.len())
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, side: usize, agent: &Agent, event: &Event) {
        match event {
            Event::Candidate(c) => {
                let text = match (c.kind, c.via) {
                    (Kind::Relay, Some(v)) => {
                        format!("candidate relay {} (TURN over {v})", c.addr)
                    }
                    (k, _) => format!("candidate {k} {}", c.addr),
                };
                self.line(side, &text);
            }
            Event::GatherFailed { what, failure } => {
                self.line(
                    side,
                    &format!("gathering failed: {what}: {}", failure_text(failure)),
                );
            }
            Event::GatheringDone => {
                let r = agent.report();
                self.line(
                    side,
                    &format!(
                        "gathering done: {} candidate(s), {} failure(s)",
                        r.candidates.len(),
                        r.gathering_failures.len()
                    ),
                );
            }
            Event::PairDone { pair } => {
                if let Some(p) = agent.report().pairs.get(*pair) {
                    self.line(
                        side,
                        &format!(
                            "pair #{} {}: {} -> {}: {}",
                            p.id,
                            p.path.as_str(),
                            cand_text(&p.local),
                            cand_text(&p.remote),
                            state_text(p),
                        ),
                    );
                }
            }
            Event::Nominated { pair } => {
                if let Some(p) = agent.report().pairs.get(*pair) {
                    self.line(
                        side,
                        &format!(
                            "nominated pair #{} {}: {} -> {}",
                            p.id,
                            p.path.as_str(),
                            cand_text(&p.local),
                            cand_text(&p.remote)
                        ),
                    );
                }
            }
            Event::Done => self.line(side, "done"),
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        self.tty.then_some(Duration::from_millis(100))
    }

    fn tick(&mut self, agents: &[&Agent]) {
        if self.paused {
            return;
        }
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        self.spin = (self.spin + 1) % FRAMES.len();
        let parts: Vec<String> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}: {}", self.names[i], Self::phase(a)))
            .collect();
        let t = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} {t:4.1}s  {}",
            FRAMES[self.spin],
            parts.join("  |  ")
        );
        let _ = err.flush();
        self.status_shown = true;
    }

    fn remote_arrived(&mut self) {
        self.paused = false;
        self.line(0, "got the other side's description");
    }
}
