//! Binding listener sockets: one per shard on the same address with
//! SO_REUSEPORT, after checking that no other process holds the port.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Which kind of socket to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Udp,
    Tcp,
}

fn new_socket(addr: SocketAddr, kind: Kind) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = match kind {
        Kind::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
        Kind::Tcp => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
    };
    if addr.is_ipv6() {
        // An IPv6 wildcard listener serves IPv6 only, so that 0.0.0.0 and
        // [::] on one port can coexist and IPv4 clients are seen as IPv4.
        s.set_only_v6(true)?;
    }
    if kind == Kind::Tcp {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Bind `count` sockets on `addr` sharing it through SO_REUSEPORT, so the
/// kernel spreads clients over the shards. A port another process already
/// holds is refused first (a plain bind without SO_REUSEPORT would fail),
/// so two servers cannot silently split one port's traffic. Port 0 binds
/// the first socket and the rest join the port it got.
pub(super) fn bind_group(addr: SocketAddr, kind: Kind, count: usize) -> io::Result<Vec<Socket>> {
    if addr.port() != 0 {
        let probe = new_socket(addr, kind)?;
        probe.bind(&addr.into())?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let s = new_socket(at, kind)?;
        s.set_reuse_port(true)?;
        s.bind(&at.into())?;
        if kind == Kind::Tcp {
            s.listen(1024)?;
        } else {
            // Room for bursts while a shard is busy; the kernel caps this
            // at net.core.rmem_max.
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
        }
        if at.port() == 0 {
            at = s.local_addr()?.as_socket().unwrap_or(at);
        }
        out.push(s);
    }
    Ok(out)
}
