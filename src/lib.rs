//! turnpike: a STUN/TURN NAT-traversal server, and the tools around it.
//!
//! The workspace has three crates (see `ARCHITECTURE.md`):
//!
//! ```text
//!   turnpike (this crate)   the tokio shell, HTTP, config, the binary,
//!     │       │             ice-check's driver, the load generator
//!     │       ▼
//!     │     turnpike-sys    every unsafe line: recvmmsg/sendmmsg/GSO,
//!     │                     epoll, socket options, netns, /proc
//!     ▼
//!   turnpike-proto          wire codec, sans-IO core, TURN client,
//!                           ICE agent: no I/O, no clock, no unsafe
//! ```
//!
//! This crate's modules:
//! * [`io`]: the server shell: one shard per core, each a current-thread
//!   runtime owning its core, its listener sockets and its relay sockets;
//!   it reads the clock, performs what the core decides, and nothing else.
//! * [`http`]: the credentials API, metrics, health and admin.
//! * [`config`]: the TOML configuration, its validation, and its mapping
//!   onto the core's types.
//! * [`credentials`], [`sd_notify`], [`tls`], [`clock`]: small services
//!   of the shell; `conn_table`, the connection caps of the HTTP and the
//!   TCP/TLS listeners.
//! * [`cluster`]: the fleet on Redis (issue 14): shared quotas,
//!   revocations, the session registry, load and redirects.
//! * [`http_client`]: the one HTTP client (ureq with the project's rustls
//!   settings), for `ice-check --credentials-url` and the tests.
//! * [`ice`]: the tokio driver of `turnpike ice-check` (the agent itself is
//!   `turnpike_proto::ice`); [`loadgen`]: `turnpike loadgen`. Tools use the
//!   protocol and sys crates, never the server shell.

pub mod clock;
pub mod cluster;
pub mod config;
mod conn_table;
pub mod credentials;
pub mod http;
pub mod http_client;
pub mod ice;
pub mod io;
pub mod loadgen;
pub mod revocation;
pub mod sd_notify;
pub mod tls;
