//! One epoll set per shard for all its relay sockets.
//!
//! A relay socket per allocation is what TURN asks for, but a tokio task
//! and reactor registration per socket costs hundreds of bytes per idle
//! allocation. Instead each shard keeps its relay sockets as plain
//! non-blocking std sockets in an epoll set of its own, whose single fd is
//! registered with tokio: one task waits on it, asks the kernel which
//! relays are readable (`epoll_wait` with no timeout, up to [`EVENTS`] at
//! a time) and drains those. Level-triggered, so a relay left with data
//! (budget exhausted) is reported again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// Ready relays taken per `epoll_wait`.
pub(crate) const EVENTS: usize = 64;

pub(crate) struct Poller {
    epoll: AsyncFd<OwnedFd>,
}

impl Poller {
    /// A new epoll set, registered with the current tokio runtime.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `owned` is an open descriptor the AsyncFd owns until it
        // is dropped, and OwnedFd always reports the same fd.
        let epoll =
            unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Poller { epoll })
    }

    /// Watch `fd` for readability, reporting `id`. Closing the socket
    /// removes it from the set.
    pub(crate) fn add(&self, fd: RawFd, id: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::from(id),
        };
        // SAFETY: valid epoll fd, valid socket fd, event on the stack.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Wait until some relays are readable; returns how many ids were put
    /// in `out`, and the readiness guard: once the caller has drained every
    /// one of them (and there were fewer than [`EVENTS`]), it calls
    /// `clear_ready` on it, saving the `epoll_wait` that would only answer
    /// "none". A datagram arriving meanwhile is new readiness tokio keeps
    /// (clearing only removes what this guard saw).
    pub(crate) async fn wait(
        &self,
        out: &mut [u32; EVENTS],
    ) -> io::Result<(usize, AsyncFdReadyGuard<'_, OwnedFd>)> {
        let mut events: [libc::epoll_event; EVENTS] =
            // SAFETY: epoll_event is plain data; zero is a valid value.
            unsafe { std::mem::zeroed() };
        loop {
            let mut guard = self.epoll.readable().await?;
            // SAFETY: valid epoll fd and an event buffer of EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            let n = n as usize;
            for (o, e) in out.iter_mut().zip(&events[..n]) {
                *o = e.u64 as u32;
            }
            return Ok((n, guard));
        }
    }
}
