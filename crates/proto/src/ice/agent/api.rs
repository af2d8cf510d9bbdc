//! The agent's interface: how it is configured (servers, timing), the
//! sockets it sends from and the bytes it asks to send, the events it
//! reports, and why a pair or a gathering step failed.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{Candidate, PathKind};
use crate::client::Credentials;
use crate::core::Transport;
use crate::stun::Retransmit;

/// The driver's sockets: host UDP sockets, and one connection (UDP socket,
/// TCP or TLS stream) per TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketId {
    Host(u16),
    Turn(u16),
}

/// Bytes to send. For a stream socket (`Turn` over TCP/TLS) `to` is the
/// server and the bytes are one whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A TURN server to allocate on.
#[derive(Clone, Debug)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub transport: Transport,
    pub creds: Credentials,
}

/// Timing knobs (all bounded, so a run always ends).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Ta: at most one new check per `pace` (RFC 8445 §6.1.4.2).
    pub pace: Duration,
    /// Retransmission of checks, server-reflexive Binding requests and
    /// TURN requests (RFC 8489 §6.2.1; to a TURN server over TCP or TLS:
    /// one transmission, `ti`).
    pub retransmit: Retransmit,
    /// Gathering gives up on servers after this long.
    pub gather_timeout: Duration,
    /// The controlled side waits this long for a nomination after its own
    /// checks are done.
    pub nomination_wait: Duration,
    /// Data packets per succeeded pair, spacing, and how long to wait for
    /// the last answer.
    pub pings: u32,
    pub ping_interval: Duration,
    pub ping_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pace: Duration::from_millis(20),
            // Transmissions at 0, 0.2, 0.6, 1.4 and 3 s; failed at 6.2 s.
            retransmit: Retransmit {
                rto: Duration::from_millis(200),
                rc: 5,
                rm: 16,
                ti: Duration::from_secs(5),
                ..Retransmit::RFC8489
            },
            gather_timeout: Duration::from_secs(5),
            nomination_wait: Duration::from_secs(3),
            pings: 20,
            ping_interval: Duration::from_millis(20),
            ping_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub controlling: bool,
    /// STUN server for server-reflexive candidates (UDP).
    pub stun_server: Option<SocketAddr>,
    pub turn_servers: Vec<TurnServer>,
    pub timing: Timing,
    /// Only form pairs of this path kind (and skip gathering what it does
    /// not need).
    pub only: Option<PathKind>,
}

/// Why a pair (or a gathering step) failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "lowercase")]
pub enum Failure {
    Timeout,
    /// An error response: from the peer's agent (401 bad credentials) or
    /// the TURN server (403 forbidden peer).
    Error(u16),
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Error(c) => write!(f, "{c}"),
            Failure::Unreachable(w) => write!(f, "unreachable ({w})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed(Failure),
}

/// Things worth telling the operator as they happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Candidate(Candidate),
    GatherFailed {
        what: String,
        failure: Failure,
    },
    GatheringDone,
    PairDone {
        pair: usize,
    },
    Nominated {
        pair: usize,
    },
    /// Checks and measurements are complete.
    Done,
}
