//! Socket options the standard library and socket2 do not offer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with an int option, a pointer to an int that lives
    // for the call, and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized out value and its length, valid for the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams leave with DF set and are never fragmented locally (path-MTU
/// discovery "do"): RFC 8656 §7.2 DONT-FRAGMENT.
pub fn set_dont_fragment(s: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        set_int(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// The largest UDP payload one unfragmented packet to `to` carries: the
/// route's MTU (`IP_MTU` / `IPV6_MTU` of a socket connected to `to`; a
/// connect sends nothing) less the IP and UDP headers.
pub fn route_payload(to: SocketAddr) -> Option<usize> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    let (level, opt, headers) = match to {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU, 20 + 8),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU, 40 + 8),
    };
    let mtu = get_int(probe.as_raw_fd(), level, opt).ok()?;
    usize::try_from(mtu).ok()?.checked_sub(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_route_carries_a_large_payload() {
        // Loopback's MTU is 65536 by default; some labs lower it, never
        // below IPv4's minimum.
        let p = route_payload("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(p >= 548, "{p}");
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&s, false).unwrap();
    }
}
