//! Registering descriptors with the current tokio runtime.
//!
//! `AsyncFd::register` is unsafe because the wrapped object must keep the
//! same open descriptor for the `AsyncFd`'s whole life. [`IoSafe`] names
//! the types that do.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Types that own one open descriptor for their whole life and always
/// report it from `as_raw_fd` (I/O safety).
pub trait IoSafe: AsRawFd {}
impl IoSafe for std::net::UdpSocket {}
impl IoSafe for std::net::TcpStream {}
impl IoSafe for OwnedFd {}
impl IoSafe for crate::epoll::Epoll {}

/// `inner` registered with the current runtime for readability.
pub fn register_readable<T: IoSafe>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `IoSafe` types own their descriptor and keep it open and
    // unchanged until dropped, which the AsyncFd does when it is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
