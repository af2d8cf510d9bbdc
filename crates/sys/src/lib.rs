//! turnpike-sys: every operating-system detail turnpike needs, behind safe
//! functions. Every `unsafe` block of the project lives in this crate, each
//! with a `SAFETY:` comment saying why it holds.
//!
//! * [`batch`]: `recvmmsg`/`sendmmsg` batches and UDP GSO, with the GSO
//!   state kept per socket ([`batch::UdpSocketState`]).
//! * [`epoll`]: one epoll wrapper (the server's relay sets, the load
//!   generator).
//! * [`sockopt`]: socket options the standard library and socket2 lack
//!   (path-MTU discovery, the route's MTU).
//! * [`netns`]: running code inside a network namespace.
//! * [`iface`]: the host's interface addresses.
//! * [`procfs`]: CPU time and memory of a process and of the machine.
//! * [`process`]: signals, the effective user, the file-descriptor limit.
//! * [`caps`]: capability sets; giving `CAP_NET_BIND_SERVICE` up for good.
//! * [`alloc`]: a counting global allocator for zero-allocation tests.
//! * `tokio` (feature `tokio`): registering a raw socket with tokio.
//! * [`xdp`]: the XDP fast path's loader (issue 15): the program built from
//!   `bpf/relay.bpf.c`, its attachments, routes and counters.
//!
//! Linux only, like the server.

#![allow(
    unsafe_code,
    reason = "this crate is where turnpike's unsafe code lives"
)]

pub mod alloc;
pub mod batch;
pub mod caps;
pub mod epoll;
pub mod iface;
pub mod netns;
pub mod process;
pub mod procfs;
pub mod sockopt;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod xdp;

use std::net::SocketAddr;

/// `sockaddr_storage` → `SocketAddr` (IPv4 and IPv6 only).
pub(crate) fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An all-zero value of a plain C struct.
pub(crate) fn zeroed<T: PlainC>() -> T {
    // SAFETY: `PlainC` is implemented only for C structs made of integers
    // and raw pointers, for which all-zero bytes are a valid value.
    unsafe { std::mem::MaybeUninit::zeroed().assume_init() }
}

/// C structs for which all-zero bytes are a valid value.
pub(crate) trait PlainC {}
impl PlainC for libc::sockaddr_storage {}
impl PlainC for libc::iovec {}
impl PlainC for libc::mmsghdr {}
impl PlainC for libc::epoll_event {}
impl PlainC for libc::rusage {}
impl PlainC for libc::ifreq {}
impl<T: PlainC, const N: usize> PlainC for [T; N] {}
