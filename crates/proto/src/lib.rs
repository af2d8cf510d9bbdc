//! turnpike-proto: the protocol half of turnpike. It does no I/O, reads no
//! clock and draws no global randomness: time comes in as an argument
//! ([`core::Now`]), randomness from RNGs seeded by the caller, and every
//! side effect goes out as a value the caller acts on. Everything here runs
//! the same in a test on a manual clock as in the server.
//!
//! * [`wire`]: the zero-copy STUN/TURN codec (RFC 8489, RFC 8656):
//!   borrowed parse, builders, integrity, FINGERPRINT, ChannelData, stream
//!   framing. No state.
//! * [`core`]: the sans-IO TURN server. The driving loop, in five calls:
//!   1. bytes from a client → [`core::Server::handle_client`] → a
//!      [`core::ClientOutput`]: a reply, data for a peer (borrowed from the
//!      input), or a message for one of this server's own clients (relay to
//!      relay: the core decides every route);
//!   2. a datagram on a relay socket → [`core::Server::handle_peer`] → the
//!      framed message for the client, written in place in headroom;
//!   3. [`core::Server::poll_timeout`] / [`core::Server::handle_timeout`]:
//!      expiry of allocations, permissions, channels, reservations;
//!   4. [`core::Server::poll_event`]: allocation start and end;
//!   5. [`core::Counters`]: plain counters the shell publishes as metrics.
//! * [`client`]: the message side of a TURN client (requests, long-term
//!   credential state).
//! * [`stun`]: the STUN client transaction (RFC 8489 retransmission), used
//!   by every request turnpike sends as a client (ICE checks, its TURN
//!   client, the load generator).
//! * [`ice`]: the sans-IO ICE agent (RFC 8445 subset) and its TURN client,
//!   behind `turnpike ice-check`.
//! * `sim` (feature `sim`): the core in memory with a manual clock, for
//!   tests and benchmarks.
//!
//! What may depend on what: this crate depends on no runtime, no OS
//! interface and no configuration format (the server maps its TOML onto
//! [`core::CoreConfig`]). `unsafe` is forbidden here.

#![forbid(unsafe_code)]

pub mod client;
pub mod core;
pub mod ice;
pub mod rest;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stun;
pub mod wire;
