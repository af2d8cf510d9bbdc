//! Relay sockets: one UDP socket per allocation, bound when the core asks
//! (through [`RelayIo`]), kept in the shard's epoll set
//! ([`super::poller`]) and read by one task per shard that hands each
//! datagram to the core and sends the result to the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Mutex;

use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::poller::EVENTS;
use super::shard::Shard;
use crate::config::Transport;
use turnpike_proto::core::{DropReason, Fragmentation, PeerAddr, PeerOutput, RelayId, RelayIo};
use turnpike_sys::batch::{BATCH, SendBatch, UdpSocketState};

/// A bound relay socket: a plain non-blocking std socket (no tokio
/// registration, no task of its own). Dropping it closes the socket, which
/// also takes it out of the shard's epoll set.
pub(crate) struct RelaySocket {
    pub sock: std::net::UdpSocket,
    /// What this socket learnt about GSO sends.
    pub gso: UdpSocketState,
}

/// Relay ports bound ahead for reservations (EVEN-PORT with the R bit),
/// by address. One set for all shards: the RESERVATION-TOKEN may come
/// back on any of them.
#[derive(Default)]
pub(crate) struct HeldPorts(Mutex<HashMap<SocketAddr, std::net::UdpSocket>>);

impl HeldPorts {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::net::UdpSocket>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shell's side of [`RelayIo`] for one shard.
pub(crate) struct ShellIo<'s> {
    pub shard: &'s Rc<Shard>,
}

impl RelayIo for ShellIo<'_> {
    fn bind(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        fragmentation: Fragmentation,
    ) -> std::io::Result<()> {
        // A reserved port was bound when it was reserved: use that socket.
        let held = self.shard.held.map().remove(&addr);
        let std_sock = match held {
            Some(s) => {
                if fragmentation == Fragmentation::DontFragment {
                    turnpike_sys::sockopt::set_dont_fragment(&s, addr.is_ipv6())?;
                }
                s
            }
            None => bind_udp(addr, fragmentation)?,
        };
        self.shard.poller.add(std_sock.as_raw_fd(), relay.0)?;
        let mut relays = self.shard.relays.borrow_mut();
        let i = relay.0 as usize;
        if relays.len() <= i {
            relays.resize_with(i + 1, || None);
        }
        relays[i] = Some(RelaySocket {
            sock: std_sock,
            gso: UdpSocketState::new(self.shard.gso),
        });
        Ok(())
    }

    fn close(&mut self, relay: RelayId) {
        if let Some(slot) = self.shard.relays.borrow_mut().get_mut(relay.0 as usize) {
            *slot = None;
        }
    }

    fn hold(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let s = bind_udp(addr, Fragmentation::Allowed)?;
        self.shard.held.map().insert(addr, s);
        Ok(())
    }

    fn release_hold(&mut self, addr: SocketAddr) {
        self.shard.held.map().remove(&addr);
    }
}

/// A UDP socket on `addr`. With `DontFragment` (RFC 8656 §7.2
/// DONT-FRAGMENT), datagrams leave with DF set and are never fragmented
/// locally.
fn bind_udp(
    addr: SocketAddr,
    fragmentation: Fragmentation,
) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    if fragmentation == Fragmentation::DontFragment {
        turnpike_sys::sockopt::set_dont_fragment(&s, addr.is_ipv6())?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The shard's relay reader: wait for readable relays (one `epoll_wait`
/// reports up to [`EVENTS`]), drain each. Runs until the shard stops.
pub(crate) async fn relay_loop(shard: Rc<Shard>) {
    let mut ready = [0u32; EVENTS];
    loop {
        let (n, mut guard) = match shard.poller.wait(&mut ready).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "relay poller failed");
                return;
            }
        };
        let mut left = false;
        for &id in &ready[..n] {
            left |= drain(&shard, RelayId(id));
        }
        if n < EVENTS && !left {
            guard.clear_ready();
        }
        drop(guard);
        tokio::task::yield_now().await;
    }
}

/// Read one relay's datagrams, up to [`BATCH`] per system call and
/// [`BATCHES_PER_WAKE`] calls (level-triggered epoll reports a relay left
/// with data again). What goes to UDP clients leaves in one `sendmmsg` per
/// listener socket; the ChannelData or Data indication header was written
/// in place in front of each payload. Returns whether the budget ran out
/// with data possibly left.
fn drain(shard: &Rc<Shard>, relay: RelayId) -> bool {
    // The socket may have gone (allocation ended) since the kernel said it
    // was readable.
    let fd = match shard.relays.borrow().get(relay.0 as usize) {
        Some(Some(r)) => r.sock.as_raw_fd(),
        _ => return false,
    };
    for _ in 0..BATCHES_PER_WAKE {
        let mut rx = shard.rx.borrow_mut();
        match rx.recv(fd) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP errors can surface here; nothing to do for them.
            Err(_) => return false,
        }
        let full = rx.count() == BATCH;
        let now = crate::clock::now();
        let udp = shard.udp.borrow();
        // One batch per listener socket (the first few; more are sent one
        // by one), on the stack: no allocation per batch.
        let mut batches: [SendBatch<'_>; BATCHED_LISTENERS] =
            std::array::from_fn(|_| SendBatch::new());
        let mut core = shard.core.borrow_mut();
        for slot in rx.slots_mut() {
            let Some((buf, len, peer)) = slot else {
                shard.counters.dropped(DropReason::TooLarge);
                continue;
            };
            let PeerOutput::ToClient { ft, data } =
                core.handle_peer(now, relay, PeerAddr(peer), buf, len)
            else {
                continue;
            };
            if ft.transport != Transport::Udp {
                if !shard.send_to_client(&ft, data) {
                    shard.counters.dropped(DropReason::SendBufferFull);
                }
                continue;
            }
            let Some(i) = udp.iter().position(|(a, _)| *a == ft.server) else {
                shard.counters.dropped(DropReason::SendBufferFull);
                continue;
            };
            if i >= BATCHED_LISTENERS {
                if udp[i].1.io.get_ref().send_to(data, ft.client.0).is_err() {
                    shard.counters.dropped(DropReason::SendBufferFull);
                }
                continue;
            }
            if batches[i].is_full() {
                let lost = batches[i].flush(udp[i].1.io.as_raw_fd(), &udp[i].1.gso);
                shard
                    .counters
                    .dropped_n(DropReason::SendBufferFull, lost as u64);
            }
            batches[i].push(data, ft.client.0);
        }
        drop(core);
        for (b, (_, s)) in batches.iter_mut().zip(udp.iter()) {
            let lost = b.flush(s.io.as_raw_fd(), &s.gso);
            shard
                .counters
                .dropped_n(DropReason::SendBufferFull, lost as u64);
        }
        if !full {
            return false;
        }
    }
    true
}

/// Batches a relay handles before yielding to the shard's other tasks.
const BATCHES_PER_WAKE: usize = 8;

/// Listener sockets whose sends are batched (typically 1-2 per shard).
const BATCHED_LISTENERS: usize = 4;
