//! The Binding responder, RFC 8489 §6.3.

use std::net::SocketAddr;

use super::requests::UNKNOWN_ATTRIBUTE;
use super::{ClientOutput, DropReason, FiveTuple, Now, RateLimitReason, Server};
use crate::wire::{Class, Message, MessageBuilder, attr};

/// RFC 8489 §6.3.1.1 / §7.3.1: a Binding request gets a success response
/// carrying XOR-MAPPED-ADDRESS, the client's transport address as the
/// server saw it (source IP and port of the datagram, or the peer address
/// of the TCP/TLS connection).
///
/// Every answer here is unauthenticated: over UDP it passes the per-source
/// rate limit and stays within three times the request's bytes (issue 12),
/// with no SOFTWARE. A success always fits (XOR-MAPPED-ADDRESS of IPv6 is
/// 24 bytes against a 20-byte request); a 420 drops its reason phrase if
/// it must, else nothing is sent.
pub(super) fn respond<'a>(
    server: &mut Server,
    now: Now,
    req: &Message<'_>,
    ft: &FiveTuple,
    out: &mut Vec<u8>,
) -> ClientOutput<'a> {
    // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
    // Binding needs no authentication.
    let unknown = req.unknown_comprehension_required(attr::known_to_server);
    if !unknown.is_empty() {
        if !server.unauth_allowed(now.mono, ft, RateLimitReason::UnknownAttribute) {
            return ClientOutput::None;
        }
        let sent = server.reject_unsigned(req, ft, out, UNKNOWN_ATTRIBUTE, false, |b, _| {
            b.unknown_attributes(unknown.as_slice());
        });
        return if sent {
            ClientOutput::Reply
        } else {
            ClientOutput::None
        };
    }
    if !server.unauth_allowed(now.mono, ft, RateLimitReason::Binding) {
        return ClientOutput::None;
    }
    let start = out.len();
    let mut b = MessageBuilder::response(out, req, Class::Success);
    b.xor_address(attr::XOR_MAPPED_ADDRESS, canonical(ft.client.0));
    server.finish(b, req, None);
    if out.len() - start > Server::unauth_budget(ft, req) {
        out.truncate(start);
        server.counters.dropped(DropReason::Amplification);
        return ClientOutput::None;
    }
    server.counters.binding_requests.inc();
    server.counters.answered(req.method(), 200);
    ClientOutput::Reply
}

/// IPv4-mapped IPv6 sources (a dual-stack socket) are reported as the IPv4
/// address they carry: `::ffff:a.b.c.d` → `a.b.c.d`.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
