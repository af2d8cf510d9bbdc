//! turnpike: a STUN/TURN NAT-traversal server.
//!
//! The crate is layered so that protocol logic never touches a socket or a
//! clock (see `ARCHITECTURE.md`):
//!
//! ```text
//!   config ──► io (tokio shell: listeners, shards, relay sockets)
//!                │  bytes + now
//!                ▼
//!              core (sans-IO: binding, allocations, auth, timers)
//!                │  borrowed parse / build
//!                ▼
//!              wire (STUN + ChannelData codec, no state)
//! ```
//!
//! * [`wire`]: zero-copy STUN/TURN codec (RFC 8489, RFC 8656).
//! * [`core`]: the server state machine; every call takes `now`.
//! * [`io`]: the tokio shell that owns sockets and drives the core.
//! * [`config`]: the TOML configuration and its validation.

pub mod client;
pub mod config;
pub mod core;
pub mod credentials;
pub mod http;
pub mod ice;
pub mod io;
pub mod loadgen;
pub mod sd_notify;
pub mod sim;
pub mod wire;
