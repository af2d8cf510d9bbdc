//! Relay sockets: one UDP socket per allocation, bound when the core asks
//! (through [`RelayIo`]) and read by a small task that hands each datagram
//! to the core and sends the result to the client.

use std::net::SocketAddr;
use std::rc::Rc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::shard::Shard;
use crate::core::{DropReason, PEER_HEADROOM, PEER_TAILROOM, PeerOutput, RelayId, RelayIo};

/// A bound relay socket and the task reading it.
pub(crate) struct RelaySocket {
    pub sock: Rc<UdpSocket>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.task.abort();
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
        dont_fragment: bool,
    ) -> std::io::Result<()> {
        let std_sock = bind_udp(addr, dont_fragment)?;
        let sock = Rc::new(UdpSocket::from_std(std_sock)?);
        let task = tokio::task::spawn_local(read_loop(self.shard.clone(), relay, sock.clone()));
        let mut relays = self.shard.relays.borrow_mut();
        let i = relay.0 as usize;
        if relays.len() <= i {
            relays.resize_with(i + 1, || None);
        }
        relays[i] = Some(RelaySocket { sock, task });
        Ok(())
    }

    fn close(&mut self, relay: RelayId) {
        if let Some(slot) = self.shard.relays.borrow_mut().get_mut(relay.0 as usize) {
            *slot = None;
        }
    }
}

/// A UDP socket on `addr`. With `dont_fragment` (RFC 8656 §7.2
/// DONT-FRAGMENT), datagrams leave with DF set and are never fragmented
/// locally.
fn bind_udp(addr: SocketAddr, dont_fragment: bool) -> std::io::Result<std::net::UdpSocket> {
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
    if dont_fragment {
        set_df(&s, addr.is_ipv6())?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_df(s: &Socket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, opt, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt with a valid fd, an int option and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Read datagrams from peers until the allocation goes (the task is
/// aborted) or the socket fails. The shard's receive buffer is borrowed
/// only between awaits, so a thousand idle relays cost no buffers.
async fn read_loop(shard: Rc<Shard>, relay: RelayId, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let mut buf = shard.rx.borrow_mut();
        let cap = buf.len() - PEER_HEADROOM - PEER_TAILROOM;
        loop {
            let (n, peer) = match sock.try_recv_from(&mut buf[PEER_HEADROOM..PEER_HEADROOM + cap]) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue, // ICMP errors surface here on Linux; ignore
            };
            let now = super::clock::now();
            let out = shard
                .core
                .borrow_mut()
                .handle_peer(now.mono, relay, peer, &mut buf, n);
            if let PeerOutput::ToClient { ft, data } = out {
                if !shard.send_to_client(&ft, data) {
                    shard.counters.dropped(DropReason::SendBufferFull);
                }
            }
        }
    }
}
