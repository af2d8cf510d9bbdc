//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)` through `libc`, a
//! thin wrapper of our own (the alternatives, quinn-udp among them, carry
//! QUIC-specific machinery — ECN, GRO segment bookkeeping — this server
//! does not use). One system call moves up to [`BATCH`] datagrams.
//!
//! GSO state is kept per socket ([`UdpSocketState`], as quinn-udp does): a
//! refusal learnt on one socket (a small-MTU route, a device without
//! checksum offload) changes how that socket sends, not every socket of
//! the process.
//!
//! Receive slots have headroom in front (so the core can write a
//! ChannelData or Data indication header in place) and a little tailroom
//! (padding); the buffer is allocated once per shard and reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::{to_socket_addr, zeroed};

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
    ///
    /// Datagrams for the same destination leave as one UDP GSO send
    /// (`UDP_SEGMENT`, Linux 4.18+) when they have the same size (the last
    /// of a run may be shorter) of at most 1452 bytes (so a segment fits a
    /// 1500-byte MTU): the kernel builds the headers and routes once for
    /// the run instead of once per datagram. Order is kept per
    /// destination (all UDP promises); datagrams for different
    /// destinations may leave in another order than they were queued. If
    /// the kernel refuses a run, it is sent datagram by datagram, and GSO
    /// is switched off for the process. When the size was the problem (a
    /// route with a smaller MTU), runs are kept below that route's limit
    /// instead. The limit is per process, not per route: after one
    /// small-MTU destination, larger datagrams to every destination leave
    /// one by one. They are still delivered, only batched less. What was
    /// learnt is kept in `state`, the socket's own.
    pub fn flush(&mut self, fd: RawFd, state: &UdpSocketState) -> usize {
        let n = self.n;
        self.n = 0;
        if n == 0 {
            return 0;
        }
        // Group by destination, stable (insertion sort: n <= 32).
        let mut order = [0u8; BATCH];
        for (i, o) in order.iter_mut().enumerate().take(n) {
            *o = i as u8;
        }
        let gso = state.gso_enabled();
        if gso {
            for i in 1..n {
                let mut j = i;
                while j > 0 && self.items[order[j - 1] as usize].1 > self.items[order[j] as usize].1
                {
                    order.swap(j - 1, j);
                    j -= 1;
                }
            }
        }
        // Only the entries used are filled and passed to the kernel: no
        // clearing of the whole arrays (a few KiB) per call.
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        let mut cmsgs = [[0u64; 4]; BATCH];
        // Datagrams carried by each header, and its destination.
        let mut carried = [0u8; BATCH];
        let mut dest: [MaybeUninit<SocketAddr>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut m = 0; // headers
        let mut k = 0; // datagrams placed
        while k < n {
            let first = order[k] as usize;
            let (data, to) = self.items[first];
            let to = to.expect("pushed with an address");
            let seg = data.len();
            // The run: same destination, same size, the last one may be
            // shorter; at most GSO_MAX_SEGMENTS and 64 KiB in all.
            let mut run = 1;
            let mut total = seg;
            if gso && seg > 0 && seg <= state.gso_max_segment() {
                while k + run < n && run < GSO_MAX_SEGMENTS {
                    let (d, t) = self.items[order[k + run] as usize];
                    if t != Some(to)
                        || d.len() > seg
                        || d.is_empty()
                        || total + d.len() > GSO_MAX_BYTES
                    {
                        break;
                    }
                    total += d.len();
                    run += 1;
                    if d.len() < seg {
                        break;
                    }
                }
            }
            for r in 0..run {
                let (d, _) = self.items[order[k + r] as usize];
                iov[k + r].write(libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                });
            }
            let sa = socket2::SockAddr::from(to);
            let name = names[m].as_mut_ptr();
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
            let mut h: libc::mmsghdr = zeroed();
            h.msg_hdr.msg_name = name.cast();
            h.msg_hdr.msg_namelen = sa.len();
            h.msg_hdr.msg_iov = iov[k].as_mut_ptr();
            h.msg_hdr.msg_iovlen = run as _;
            if run > 1 {
                set_segment_cmsg(&mut cmsgs[m], seg as u16, &mut h.msg_hdr);
            }
            hdrs[m].write(h);
            carried[m] = run as u8;
            dest[m].write(to);
            m += 1;
            k += run;
        }
        let hdrs: &mut [libc::mmsghdr] =
            // SAFETY: entries 0..m were written above, and MaybeUninit<T>
            // has T's layout.
            unsafe { std::slice::from_raw_parts_mut(hdrs.as_mut_ptr().cast::<libc::mmsghdr>(), m) };
        let mut sent = 0; // headers
        let mut lost = 0; // datagrams
        while sent < m {
            // SAFETY: the headers point at the queued slices (alive for 'a)
            // and the local name/iovec/cmsg arrays, for the call's duration.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[sent..].as_mut_ptr(),
                    (m - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                // Socket buffer full: drop the rest.
                io::ErrorKind::WouldBlock => break,
                _ if carried[sent] > 1
                    && matches!(
                        err.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE | libc::ENOPROTOOPT)
                    ) =>
                {
                    let h = &hdrs[sent].msg_hdr;
                    // SAFETY: msg_iov points at msg_iovlen >= 2 iovecs.
                    let seg = unsafe { (*h.msg_iov).iov_len };
                    // SAFETY: written with header `sent` above.
                    let to = unsafe { dest[sent].assume_init() };
                    let too_big = matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE));
                    if too_big && seg > GSO_MIN_SEGMENT {
                        state.refused_segment(seg, to);
                    } else {
                        // No GSO here (old kernel, a device without
                        // checksum offload): off for good.
                        state.gso_off.store(true, Ordering::Relaxed);
                    }
                    // This run one datagram at a time.
                    for i in 0..h.msg_iovlen {
                        // SAFETY: msg_iov points at msg_iovlen iovecs
                        // written above.
                        let v = unsafe { &*h.msg_iov.add(i) };
                        // SAFETY: a plain sendto of one iovec's bytes to
                        // the header's address.
                        let r = unsafe {
                            libc::sendto(
                                fd,
                                v.iov_base,
                                v.iov_len,
                                libc::MSG_DONTWAIT,
                                h.msg_name.cast(),
                                h.msg_namelen,
                            )
                        };
                        if r < 0 {
                            lost += 1;
                        }
                    }
                    sent += 1;
                }
                // One bad destination must not drop the others: skip it.
                _ => {
                    lost += carried[sent] as usize;
                    sent += 1;
                }
            }
        }
        lost + carried[sent..m].iter().map(|&c| c as usize).sum::<usize>()
    }
}

/// Most datagrams the kernel takes in one GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes of payload in one GSO send (an IP packet's limit, headers
/// included, is 65535).
const GSO_MAX_BYTES: usize = 65_000;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

/// Below this, a refusal is not about the MTU (IPv4's minimum reassembly
/// size): GSO goes off instead.
const GSO_MIN_SEGMENT: usize = 548;
/// The segment cap a socket starts with: what a 1500-byte Ethernet MTU
/// carries over IPv6 (1500 − 40 − 8).
pub const GSO_START_SEGMENT: usize = 1452;

/// What one UDP socket has learnt about sending with GSO. Atomics
/// (relaxed) so a socket shared between threads can share it; one owner
/// pays two uncontended loads per batch.
#[derive(Debug)]
pub struct UdpSocketState {
    gso_off: AtomicBool,
    /// Largest segment sent with GSO: lowered when the kernel refuses a
    /// size (a segment must fit the route's MTU).
    max_segment: AtomicUsize,
}

impl UdpSocketState {
    /// A socket's state, GSO on or off from the start (`[server] udp_gso`).
    pub fn new(gso: bool) -> Self {
        UdpSocketState {
            gso_off: AtomicBool::new(!gso),
            max_segment: AtomicUsize::new(GSO_START_SEGMENT),
        }
    }

    /// Whether runs still leave as GSO sends (a refusal other than the
    /// size switches it off for this socket).
    pub fn gso_enabled(&self) -> bool {
        !self.gso_off.load(Ordering::Relaxed)
    }

    /// The largest segment size GSO sends of this socket use now.
    pub fn gso_max_segment(&self) -> usize {
        self.max_segment.load(Ordering::Relaxed)
    }

    /// The kernel refused a GSO run of `seg`-byte segments to `to` with
    /// EMSGSIZE (EINVAL on older kernels). It does not fragment GSO sends,
    /// so each segment plus its IP and UDP headers must fit the route's
    /// MTU. Ask the route what fits (one probe, on the rare refusal) and
    /// keep runs below it:
    /// - the route carries less than `seg`: the cap drops to what it
    ///   carries (GSO goes off if that is under [`GSO_MIN_SEGMENT`]);
    /// - the route carries `seg`: the refusal was about something else, so
    ///   GSO goes off;
    /// - no answer: the cap drops to `seg - 1`.
    fn refused_segment(&self, seg: usize, to: SocketAddr) {
        match crate::sockopt::route_payload(to) {
            Some(fits) if fits >= seg || fits < GSO_MIN_SEGMENT => {
                self.gso_off.store(true, Ordering::Relaxed);
            }
            Some(fits) => {
                self.max_segment.fetch_min(fits, Ordering::Relaxed);
            }
            None => {
                self.max_segment.fetch_min(seg - 1, Ordering::Relaxed);
            }
        }
    }
}

impl Default for UdpSocketState {
    fn default() -> Self {
        Self::new(true)
    }
}

/// Write a `UDP_SEGMENT` control message (segment size `seg`) into `buf`
/// and point `h` at it.
fn set_segment_cmsg(buf: &mut [u64; 4], seg: u16, h: &mut libc::msghdr) {
    // SAFETY: CMSG_SPACE(2) = 24 bytes fit the 32-byte, 8-aligned buffer;
    // CMSG_FIRSTHDR of a msghdr whose control points at it is its start.
    unsafe {
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn recv_all(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = s.recv_from(&mut buf).expect("datagram");
                buf[..len].to_vec()
            })
            .collect()
    }

    /// Runs for one destination (same size, a shorter last one, a longer
    /// one that must start a new run) interleaved with another
    /// destination: every datagram arrives whole, once, in order per
    /// destination, whether GSO is on or off.
    #[test]
    fn flush_keeps_datagrams_and_per_destination_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ta, tb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let sizes_a = [100usize, 100, 100, 60, 100, 200, 200, 1];
        let sizes_b = [100usize, 100, 300];
        let data_a: Vec<Vec<u8>> = sizes_a
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        let data_b: Vec<Vec<u8>> = sizes_b
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![0x80 | i as u8; n])
            .collect();
        let mut batch = SendBatch::new();
        // Interleaved: a0 b0 a1 a2 b1 a3 ... as a listener's replies are.
        let (mut ia, mut ib) = (0, 0);
        while ia < data_a.len() || ib < data_b.len() {
            for _ in 0..2 {
                if ia < data_a.len() {
                    batch.push(&data_a[ia], ta);
                    ia += 1;
                }
            }
            if ib < data_b.len() {
                batch.push(&data_b[ib], tb);
                ib += 1;
            }
        }
        let state = UdpSocketState::new(true);
        assert_eq!(batch.flush(tx.as_raw_fd(), &state), 0);
        // The runs went out as GSO sends (a refusal would switch it off).
        assert!(state.gso_enabled(), "the kernel refused UDP_SEGMENT");
        assert_eq!(recv_all(&a, data_a.len()), data_a);
        assert_eq!(recv_all(&b, data_b.len()), data_b);
    }

    /// Datagrams above the GSO segment cap (here 2000 bytes over loopback)
    /// leave one by one and arrive whole.
    #[test]
    fn datagrams_above_the_segment_cap_arrive_whole() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ta = a.local_addr().unwrap();
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 2000]).collect();
        let mut batch = SendBatch::new();
        for d in &data {
            batch.push(d, ta);
        }
        assert_eq!(batch.flush(tx.as_raw_fd(), &UdpSocketState::new(true)), 0);
        let mut buf = [0u8; 4096];
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for d in &data {
            let (len, _) = a.recv_from(&mut buf).expect("datagram");
            assert_eq!(&buf[..len], &d[..]);
        }
    }
}
