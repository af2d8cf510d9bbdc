//! The sans-IO side of the ICE connectivity checker: an agent (RFC 8445
//! subset) with its own TURN client. The tokio driver that owns sockets is
//! in the `turnpike` crate (`turnpike::ice`).

pub mod agent;
pub mod candidate;
pub mod turn;

pub use agent::{Agent, AgentConfig, Event, Report, SocketId, Timing, Transmit, TurnServer};
pub use candidate::{Candidate, Description, Kind, PathKind};
