//! The sans-IO server core.
//!
//! The core does no I/O, reads no clock and draws no global randomness:
//! the shell passes `now` (and, for TURN, wall time and an RNG) into every
//! call, and sends whatever the core writes into the output buffer. The
//! driving loop, per packet:
//!
//! 1. the shell reads a datagram (UDP) or cuts a frame (TCP/TLS, with
//!    [`crate::wire::frame_len`]) and calls [`Server::handle_client`];
//! 2. the returned [`ClientOutput`] says what to send and where;
//! 3. the shell publishes [`Counters`] as metrics whenever it likes.
//!
//! Tests drive the same calls with a manual clock.

mod binding;
pub mod counters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use counters::{Counter, Counters, DropReason};

use crate::config::{Config, Transport};
use crate::wire::{Class, Message, MessageBuilder, Method, attr};

/// What the core needs from the configuration, resolved once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    pub realm: String,
    /// SOFTWARE attribute, or `None` to send none.
    pub software: Option<String>,
}

impl CoreConfig {
    pub fn from_config(c: &Config) -> Self {
        CoreConfig {
            realm: c.server.realm.clone(),
            software: (!c.server.software.is_empty()).then(|| c.server.software.clone()),
        }
    }
}

/// The five-tuple that identifies a client's association with the server
/// (RFC 8656 §2): client address, server address and transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// What the shell must do after [`Server::handle_client`].
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Nothing to send (indication, or a dropped packet, already counted).
    None,
    /// Send the output buffer to the client on the same five-tuple.
    Reply,
}

/// One server core. The shell owns one per shard (thread).
pub struct Server {
    cfg: Arc<CoreConfig>,
    counters: Arc<Counters>,
}

impl Server {
    pub fn new(cfg: Arc<CoreConfig>, counters: Arc<Counters>) -> Self {
        Server { cfg, counters }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Handle one datagram (UDP) or one whole frame (TCP/TLS) from a
    /// client. Any reply is appended to `out` (which the caller clears).
    ///
    /// RFC 8489 §6.3: a message that is not well-formed STUN is dropped
    /// silently, and so is one whose FINGERPRINT does not match (§14.7), so
    /// a malformed packet never costs more bytes out than it brought in.
    pub fn handle_client(
        &mut self,
        _now: Instant,
        ft: &FiveTuple,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.dropped(DropReason::Malformed);
                return ClientOutput::None;
            }
        };
        if msg.check_fingerprint() == Some(false) {
            self.counters.dropped(DropReason::BadFingerprint);
            return ClientOutput::None;
        }
        match msg.class() {
            Class::Request => self.handle_request(&msg, ft, out),
            Class::Indication | Class::Success | Class::Error => {
                // A Binding indication is a keepalive and gets nothing back
                // (RFC 8489 §6.3.2); responses are not ours to handle.
                self.counters.dropped(DropReason::Unexpected);
                ClientOutput::None
            }
        }
    }

    fn handle_request(
        &mut self,
        msg: &Message<'_>,
        ft: &FiveTuple,
        out: &mut Vec<u8>,
    ) -> ClientOutput {
        // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
        let unknown = msg.unknown_comprehension_required(attr::known_to_server);
        if !unknown.is_empty() {
            let mut b = MessageBuilder::response(out, msg, Class::Error);
            b.error_code(420, "Unknown Attribute")
                .unknown_attributes(unknown.as_slice());
            self.finish(b, msg);
            self.counters.answered(msg.method(), 420);
            return ClientOutput::Reply;
        }
        match msg.method() {
            Method::BINDING => binding::respond(self, msg, ft, out),
            _ => {
                self.error(msg, out, 400, "Unsupported Method");
                ClientOutput::Reply
            }
        }
    }

    /// Write an error response (SOFTWARE, FINGERPRINT as the request asked).
    fn error(&self, req: &Message<'_>, out: &mut Vec<u8>, code: u16, reason: &str) {
        let mut b = MessageBuilder::response(out, req, Class::Error);
        b.error_code(code, reason);
        self.finish(b, req);
        self.counters.answered(req.method(), code);
    }

    /// The trailing attributes every response gets: SOFTWARE unless hidden,
    /// FINGERPRINT if the request carried one (RFC 8489 §14.7 and §14.14).
    fn finish(&self, mut b: MessageBuilder<'_>, req: &Message<'_>) {
        if let Some(sw) = &self.cfg.software {
            b.text(attr::SOFTWARE, sw);
        }
        if req.has_fingerprint() {
            b.fingerprint();
        }
    }
}
