//! Making the driver's sockets: host UDP sockets on the interfaces'
//! addresses (or the given ones), a socket per TURN server (UDP connected
//! to it, or TCP for tokio to connect), optionally inside a network
//! namespace; and a short text for a socket error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use turnpike_proto::core::Transport;

use super::Hosts;

/// The sockets of one side as created (in its namespace).
pub(super) struct Made {
    pub(super) hosts: Vec<std::net::UdpSocket>,
    pub(super) turns: Vec<Result<MadeTurn, String>>,
}

pub(super) enum MadeTurn {
    Udp(std::net::UdpSocket),
    /// Not connected yet: tokio connects it.
    Stream(std::net::TcpStream),
    Skipped,
}

/// A short, stable description of a socket error.
pub fn why(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::EPERM | libc::EACCES) => "blocked by a local firewall".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        Some(libc::EADDRNOTAVAIL) => "address not available".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// Run `f` in the network namespace `/var/run/netns/NAME` (on a thread of
/// its own that joins it), or here when `name` is `None`.
pub fn in_netns<T, F>(name: Option<&str>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let Some(name) = name else {
        return f();
    };
    enter_netns_thread(name, f)
}

fn enter_netns_thread<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("network namespace `{name}`: not a name"),
        ));
    }
    let path = turnpike_sys::netns::path(name);
    let file = std::fs::File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "network namespace {name}: {}: {} (create it with `ip netns add {name}`)",
                path.display(),
                why(&e)
            ),
        )
    })?;
    let name = name.to_string();
    std::thread::spawn(move || {
        // CLONE_NEWNET is per thread: only this thread enters.
        turnpike_sys::netns::enter(&file).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("entering network namespace {name}: {e} (needs root)"),
            )
        })?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Create (in the current namespace) the host sockets and one socket per
/// TURN server: UDP connected to it, or an unconnected TCP socket.
pub(super) fn make_sockets(
    hosts: &Hosts,
    servers: &[(SocketAddr, Transport)],
    want_relay: bool,
) -> io::Result<Made> {
    let addrs: Vec<SocketAddr> = match hosts {
        Hosts::Given(v) => v.clone(),
        Hosts::Interfaces { loopback } => interface_addrs(*loopback)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 0))
            .collect(),
    };
    let mut out = Vec::new();
    for a in addrs {
        let s = std::net::UdpSocket::bind(a).map_err(|e| {
            io::Error::new(e.kind(), format!("binding host socket {a}: {}", why(&e)))
        })?;
        out.push(s);
    }
    let turns = servers
        .iter()
        .map(|&(addr, transport)| {
            if !want_relay {
                return Ok(MadeTurn::Skipped);
            }
            match transport {
                Transport::Udp => {
                    let u =
                        std::net::UdpSocket::bind(SocketAddr::new(unspecified(addr.is_ipv6()), 0))
                            .map_err(|e| format!("socket: {}", why(&e)))?;
                    u.connect(addr).map_err(|e| why(&e))?;
                    Ok(MadeTurn::Udp(u))
                }
                Transport::Tcp | Transport::Tls => {
                    let s = socket2::Socket::new(
                        socket2::Domain::for_address(addr),
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    )
                    .map_err(|e| format!("socket: {}", why(&e)))?;
                    Ok(MadeTurn::Stream(s.into()))
                }
            }
        })
        .collect();
    Ok(Made { hosts: out, turns })
}

/// The addresses of the interfaces that are up (getifaddrs), IPv6
/// link-local ones left out; loopback ones only if `loopback` or if there
/// is no other.
pub fn interface_addrs(loopback: bool) -> io::Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    let mut lo = Vec::new();
    for a in turnpike_sys::iface::addresses()? {
        if let IpAddr::V6(v6) = a.ip {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
        }
        let list = if a.loopback || a.ip.is_loopback() {
            &mut lo
        } else {
            &mut found
        };
        if !list.contains(&a.ip) {
            list.push(a.ip);
        }
    }
    if loopback || found.is_empty() {
        found.extend(lo);
    }
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no network interface has an address",
        ));
    }
    Ok(found)
}
