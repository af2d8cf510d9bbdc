//! One epoll wrapper (level-triggered), used by the server's per-shard
//! relay sets and by the load generator. Each fd carries a caller token.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What to watch a descriptor for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    /// Input, and output too (a stream with bytes it could not write yet).
    ReadWrite,
}

impl Interest {
    fn bits(self) -> u32 {
        match self {
            Interest::Read => libc::EPOLLIN as u32,
            Interest::ReadWrite => (libc::EPOLLIN | libc::EPOLLOUT) as u32,
        }
    }
}

/// Most ready descriptors one `epoll_wait` reports.
const MAX_EVENTS: usize = 256;

/// An epoll instance with room for `max_events` ready descriptors per
/// [`Epoll::wait`].
pub struct Epoll {
    fd: OwnedFd,
    tokens: Vec<u64>,
}

impl Epoll {
    pub fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: plain system call; returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            tokens: vec![0; max_events.clamp(1, MAX_EVENTS)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: a valid epoll descriptor; `ev` is valid for the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watch `fd`, reporting `token`. Closing the descriptor removes it.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Change what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Stop watching `fd` (an error, such as a descriptor already closed,
    /// is of no consequence).
    pub fn remove(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::Read);
    }

    /// Wait at most `timeout` (rounded up to a millisecond, at most a
    /// minute; zero polls) and write the tokens of the ready descriptors
    /// into `out` (at most 256); returns how many. An interrupted wait
    /// returns none.
    pub fn wait_into(&self, timeout: Duration, out: &mut [u64]) -> io::Result<usize> {
        let ms = if timeout.is_zero() {
            0
        } else {
            timeout.as_micros().div_ceil(1000).min(60_000) as libc::c_int
        };
        // Not cleared: the kernel writes the first `n`, and only those are
        // read.
        let mut events: [std::mem::MaybeUninit<libc::epoll_event>; MAX_EVENTS] =
            [const { std::mem::MaybeUninit::uninit() }; MAX_EVENTS];
        let max = out.len().clamp(1, MAX_EVENTS);
        // SAFETY: the buffer holds `max` events (MaybeUninit<T> has T's
        // layout); the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                max as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        let n = (n as usize).min(out.len());
        for (o, e) in out.iter_mut().zip(&events[..n]) {
            // SAFETY: epoll_wait wrote the first `n` entries.
            *o = unsafe { e.assume_init() }.u64;
        }
        Ok(n)
    }

    /// [`Epoll::wait_into`] this instance's own buffer (`max_events`
    /// tokens).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<impl Iterator<Item = u64> + '_> {
        let mut tokens = std::mem::take(&mut self.tokens);
        let n = self.wait_into(timeout, &mut tokens);
        self.tokens = tokens;
        let n = n?;
        Ok(self.tokens[..n].iter().copied())
    }

    /// Most tokens one [`Epoll::wait`] returns.
    pub fn capacity(&self) -> usize {
        self.tokens.len()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_token_of_a_readable_socket() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ep = Epoll::new(4).unwrap();
        ep.add(a.as_raw_fd(), 7, Interest::Read).unwrap();
        assert_eq!(ep.wait(Duration::ZERO).unwrap().count(), 0);
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let got: Vec<u64> = ep.wait(Duration::from_secs(5)).unwrap().collect();
        assert_eq!(got, vec![7]);
        ep.remove(a.as_raw_fd());
        assert_eq!(ep.wait(Duration::ZERO).unwrap().count(), 0);
    }
}
