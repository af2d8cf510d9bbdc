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

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use turnpike_sys::epoll::{Epoll, Interest};

/// Ready relays taken per `epoll_wait`.
pub(crate) const EVENTS: usize = 64;

pub(crate) struct Poller {
    epoll: AsyncFd<Epoll>,
}

impl Poller {
    /// A new epoll set, registered with the current tokio runtime.
    pub(crate) fn new() -> io::Result<Self> {
        let epoll = turnpike_sys::tokio::register_readable(Epoll::new(EVENTS)?)?;
        Ok(Poller { epoll })
    }

    /// Watch `fd` for readability, reporting `id`. Closing the socket
    /// removes it from the set.
    pub(crate) fn add(&self, fd: std::os::fd::RawFd, id: u32) -> io::Result<()> {
        self.epoll.get_ref().add(fd, u64::from(id), Interest::Read)
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
    ) -> io::Result<(usize, AsyncFdReadyGuard<'_, Epoll>)> {
        let mut tokens = [0u64; EVENTS];
        loop {
            let mut guard = self.epoll.readable().await?;
            let n = self
                .epoll
                .get_ref()
                .wait_into(std::time::Duration::ZERO, &mut tokens)?;
            for (o, t) in out.iter_mut().zip(&tokens[..n]) {
                *o = *t as u32;
            }
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            return Ok((n, guard));
        }
    }
}
