//! The ICE connectivity checker: a sans-IO agent (RFC 8445 subset) with its
//! own TURN client, driven by a thin tokio driver for the CLI.

pub mod agent;
pub mod candidate;
pub mod driver;
pub mod turn;

pub use agent::{Agent, AgentConfig, Event, Report, SocketId, Timing, Transmit, TurnServer};
pub use candidate::{Candidate, Description, Kind, PathKind};
