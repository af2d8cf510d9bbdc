//! What an agent found, for the operator and for scripts: candidates,
//! gathering failures and every pair with its state and round trips
//! (serialized as ice-check's JSON).

use std::net::SocketAddr;

use serde::Serialize;

use super::{Agent, Failure, PairState, RttStats};
use crate::core::Transport;
use crate::ice::candidate::{Candidate, Kind, PathKind};

impl Agent {
    /// The results so far.
    pub fn report(&self) -> Report {
        let info = |c: &Candidate| CandidateInfo {
            kind: c.kind,
            addr: c.addr,
            via: c.via,
        };
        let pairs = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let local = &self.locals[p.valid_local.unwrap_or(p.local)].cand;
                let remote = &self.remotes[p.remote];
                let (state, failure) = match &p.state {
                    PairState::Succeeded => ("succeeded", None),
                    PairState::Failed(f) => ("failed", Some(f.clone())),
                    PairState::Waiting => ("waiting", None),
                    PairState::InProgress => ("in-progress", None),
                };
                PairReport {
                    id: i,
                    path: PathKind::of(local.kind, remote.kind),
                    local: info(local),
                    checked_from: info(&self.locals[p.local].cand),
                    remote: info(remote),
                    state: state.to_string(),
                    failure,
                    nominated: p.nominated,
                    check_ms: p.succeeded_at.map(|d| d.as_secs_f64() * 1000.0),
                    rtt: RttStats::of(&p.rtts, p.pings_sent),
                }
            })
            .collect();
        Report {
            role: if self.controlling {
                "controlling"
            } else {
                "controlled"
            }
            .to_string(),
            candidates: self.locals.iter().map(|l| info(&l.cand)).collect(),
            gathering_failures: self
                .gather_failures
                .iter()
                .map(|(what, f)| GatherFailure {
                    what: what.clone(),
                    failure: f.clone(),
                })
                .collect(),
            pairs,
        }
    }
}

/// A candidate in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateInfo {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub addr: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Transport>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairReport {
    pub id: usize,
    pub path: PathKind,
    /// The local candidate the peer saw (from the check's response).
    pub local: CandidateInfo,
    /// The local base the check was sent from.
    pub checked_from: CandidateInfo,
    pub remote: CandidateInfo,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub nominated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
    pub rtt: RttStats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatherFailure {
    pub what: String,
    pub failure: Failure,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub role: String,
    pub candidates: Vec<CandidateInfo>,
    pub gathering_failures: Vec<GatherFailure>,
    pub pairs: Vec<PairReport>,
}

impl Report {
    /// Whether at least one pair of this path kind succeeded.
    pub fn path_works(&self, k: PathKind) -> bool {
        self.pairs
            .iter()
            .any(|p| p.path == k && p.state == "succeeded")
    }
}
