//! The Binding responder, RFC 8489 §6.3.

use std::net::SocketAddr;

use super::requests::UNKNOWN_ATTRIBUTE;
use super::{ClientOutput, FiveTuple, Server};
use crate::wire::{Class, Message, MessageBuilder, attr};

/// RFC 8489 §6.3.1.1 / §7.3.1: a Binding request gets a success response
/// carrying XOR-MAPPED-ADDRESS, the client's transport address as the
/// server saw it (source IP and port of the datagram, or the peer address
/// of the TCP/TLS connection).
pub(super) fn respond<'a>(
    server: &Server,
    req: &Message<'_>,
    ft: &FiveTuple,
    out: &mut Vec<u8>,
) -> ClientOutput<'a> {
    // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
    // Binding needs no authentication.
    let unknown = req.unknown_comprehension_required(attr::known_to_server);
    if !unknown.is_empty() {
        server.reject_with(req, out, UNKNOWN_ATTRIBUTE, None, |b| {
            b.unknown_attributes(unknown.as_slice());
        });
        return ClientOutput::Reply;
    }
    let mut b = MessageBuilder::response(out, req, Class::Success);
    b.xor_address(attr::XOR_MAPPED_ADDRESS, canonical(ft.client.0));
    server.finish(b, req, None);
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
