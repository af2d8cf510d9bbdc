//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)` through `libc`, a
//! thin wrapper of our own (the alternatives, quinn-udp among them, carry
//! QUIC-specific machinery — ECN, GRO segment bookkeeping — this server
//! does not use). One system call moves up to [`BATCH`] datagrams.
//!
//! Receive slots have headroom in front (so the core can write a
//! ChannelData or Data indication header in place) and a little tailroom
//! (padding); the buffer is allocated once per shard and reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Largest UDP payload over IPv4/IPv6 (65507 / 65527), rounded up.
pub const MAX_DATAGRAM: usize = 65536;

/// Receive buffers for one `recvmmsg`.
pub struct RecvBatch {
    head: usize,
    stride: usize,
    cap: usize,
    buf: Vec<u8>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    iov: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    len: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    n: usize,
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (sockaddr_storage, iovec,
    // mmsghdr), for which all-zero bytes are a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// `sockaddr_storage` → `SocketAddr` (IPv4 and IPv6 only).
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
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

impl RecvBatch {
    /// `slots` of `cap` bytes each, with `head` bytes of headroom and
    /// `tail` of tailroom around every slot.
    pub fn new(head: usize, cap: usize, tail: usize) -> Self {
        let stride = head + cap + tail;
        RecvBatch {
            head,
            stride,
            cap,
            buf: vec![0u8; stride * BATCH],
            names: Box::new(zeroed()),
            iov: Box::new(zeroed()),
            hdrs: Box::new(zeroed()),
            len: [0; BATCH],
            from: [None; BATCH],
            n: 0,
        }
    }

    /// Read up to [`BATCH`] datagrams without blocking. `WouldBlock` when
    /// none is waiting. Datagrams larger than a slot (truncated) are
    /// skipped.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        for i in 0..BATCH {
            self.iov[i] = libc::iovec {
                // SAFETY: within `buf` (BATCH strides).
                iov_base: unsafe { base.add(i * self.stride + self.head) }.cast(),
                iov_len: self.cap,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: the headers point at buffers we own for the call's
        // duration; the kernel writes at most `iov_len` bytes and a name of
        // at most `msg_namelen` bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        for i in 0..self.n {
            let h = &self.hdrs[i];
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.len[i] = h.msg_len as usize;
            self.from[i] = if truncated {
                None
            } else {
                to_socket_addr(&self.names[i])
            };
        }
        Ok(self.n)
    }

    /// Datagrams read by the last `recv`.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The datagrams read by the last `recv`, each as its whole slot
    /// (headroom, payload at `head..head + len`, tailroom), its length and
    /// its source; `None` for one that was truncated or came from a non-IP
    /// address. The slots are disjoint, so what the caller writes in one
    /// can be held while it works on the next.
    pub fn slots_mut(&mut self) -> impl Iterator<Item = Option<(&mut [u8], usize, SocketAddr)>> {
        let n = self.n;
        self.buf
            .chunks_exact_mut(self.stride)
            .zip(self.len.iter().zip(self.from.iter()))
            .take(n)
            .map(|(slot, (len, from))| from.map(|f| (slot, *len, f)))
    }
}

/// Datagrams queued for one socket, sent with one `sendmmsg`.
pub struct SendBatch<'a> {
    items: [(&'a [u8], Option<SocketAddr>); BATCH],
    n: usize,
}

impl Default for SendBatch<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> SendBatch<'a> {
    pub fn new() -> Self {
        SendBatch {
            items: [(&[], None); BATCH],
            n: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.n == BATCH
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn push(&mut self, data: &'a [u8], to: SocketAddr) {
        debug_assert!(!self.is_full());
        self.items[self.n] = (data, Some(to));
        self.n += 1;
    }

    /// Send everything queued. Returns how many datagrams the kernel did
    /// not take (a full socket buffer: the rest is dropped, as UDP may).
    pub fn flush(&mut self, fd: RawFd) -> usize {
        // Only the first n entries are filled and passed to the kernel: no
        // clearing of the whole arrays (a few KiB) per call.
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let n = self.n;
        for i in 0..n {
            let (data, to) = self.items[i];
            let sa = socket2::SockAddr::from(to.expect("pushed with an address"));
            let name = names[i].as_mut_ptr();
            // SAFETY: copying `sa.len()` bytes of a valid sockaddr into a
            // sockaddr_storage, which is large enough for any address; the
            // kernel reads only `msg_namelen` bytes of it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sa.as_ptr().cast::<u8>(),
                    name.cast::<u8>(),
                    sa.len() as usize,
                );
            }
            let v = iov[i].write(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
            let mut h: libc::mmsghdr = zeroed();
            h.msg_hdr.msg_name = name.cast();
            h.msg_hdr.msg_namelen = sa.len();
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            hdrs[i].write(h);
        }
        // The first n headers are initialised; mmsghdr is plain data.
        let hdrs: &mut [libc::mmsghdr] =
            // SAFETY: entries 0..n were written above, and MaybeUninit<T>
            // has T's layout.
            unsafe { std::slice::from_raw_parts_mut(hdrs.as_mut_ptr().cast::<libc::mmsghdr>(), n) };
        let mut sent = 0;
        let mut failed = 0;
        while sent < n {
            // SAFETY: the headers point at the queued slices (alive for 'a)
            // and the local name/iovec arrays, for the call's duration.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => {}
                // Socket buffer full: drop the rest.
                io::ErrorKind::WouldBlock => break,
                // One bad destination must not drop the others: skip it.
                _ => {
                    failed += 1;
                    sent += 1;
                }
            }
        }
        self.n = 0;
        failed + (n - sent)
    }
}
