//! A UDP listener socket of one shard.

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::deliver::{Batch, deliver};
use super::relay::ShellIo;
use super::shard::Shard;
use crate::config::Transport;
use turnpike_proto::core::{ClientAddr, DropReason, FiveTuple, RelayId};
use turnpike_sys::batch::{BATCH, MAX_DATAGRAM, RecvBatch, SendBatch, UdpSocketState};

/// Batches handled before yielding to the shard's other tasks.
const BATCHES_PER_WAKE: usize = 8;

/// A listener socket: a plain non-blocking std socket whose readiness
/// tokio reports (through `AsyncFd`, so the task can say "drained" itself
/// and save the `recvmmsg` that would only answer EAGAIN). Sends go
/// straight to the kernel (`send_to` / `sendmmsg` on the fd): tokio's own
/// `try_send_to` answers WouldBlock without trying until its reactor has
/// seen the socket writable, which dropped the first datagrams of fresh
/// sockets; a UDP send never needs to wait.
pub(crate) struct Listener {
    pub(crate) io: AsyncFd<std::net::UdpSocket>,
    /// What this socket learnt about GSO sends.
    pub(crate) gso: UdpSocketState,
}

/// Receive datagrams in batches (one `recvmmsg` for up to [`BATCH`]) and
/// hand each to the core; the clock is read once per batch. What the core
/// decides is performed by [`deliver`]: replies of a batch, and data from
/// one relay for a client of this socket, leave together in one
/// `sendmmsg`; data for peers leaves from each allocation's relay socket,
/// consecutive datagrams for the same relay in one `sendmmsg`. A send that
/// does not fit a socket buffer is dropped and counted (UDP gives no
/// guarantee anyway; clients retransmit requests).
pub(crate) async fn serve(
    shard: Rc<Shard>,
    sock: Rc<Listener>,
    local: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rx = RecvBatch::new(0, MAX_DATAGRAM, 0);
    // What goes back out from this socket, back to back: replies, and
    // data one relay sends another's client (framed by the core); where
    // each lies and for whom.
    let mut replies: Vec<u8> = Vec::with_capacity(BATCH * 128);
    let mut to_clients: Vec<(Range<usize>, SocketAddr)> = Vec::with_capacity(BATCH);
    let fd = sock.io.as_raw_fd();
    loop {
        let mut guard = tokio::select! {
            r = sock.io.readable() => match r {
                Ok(g) => g,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        for _ in 0..BATCHES_PER_WAKE {
            match rx.recv(fd) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(_) => continue,
            }
            let full = rx.count() == BATCH;
            let now = crate::clock::now();
            replies.clear();
            let mut batch = Batch::new(local, &mut to_clients);
            {
                let mut core = shard.core.borrow_mut();
                for slot in rx.slots_mut() {
                    let Some((buf, len, from)) = slot else {
                        shard.counters.dropped(DropReason::TooLarge);
                        continue;
                    };
                    let ft = FiveTuple {
                        client: ClientAddr(from),
                        server: local,
                        transport: Transport::Udp,
                    };
                    let start = replies.len();
                    let buf: &[u8] = buf;
                    let output = core.handle_client(
                        now,
                        &ft,
                        &buf[..len],
                        &mut replies,
                        &mut ShellIo { shard: &shard },
                    );
                    deliver(
                        &shard,
                        &mut core,
                        &ft,
                        output,
                        &mut replies,
                        start,
                        Some(&mut batch),
                    );
                }
            }
            send_to_peers(&shard, &batch.to_peers[..batch.n_peers]);
            if !batch.to_clients.is_empty() {
                let mut b = SendBatch::new();
                for (range, to) in batch.to_clients.iter() {
                    b.push(&replies[range.clone()], *to);
                }
                let lost = b.flush(fd, &sock.gso);
                shard
                    .counters
                    .dropped_n(DropReason::SendBufferFull, lost as u64);
            }
            if !full {
                // Drained: tokio reports the next datagram as new
                // readiness (it keeps one that raced this clear).
                guard.clear_ready();
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Send relayed data from the relay sockets: one `sendmmsg` per run of
/// consecutive datagrams for the same relay (a client's burst), a plain
/// send for a lone one.
fn send_to_peers(shard: &Shard, out: &[(RelayId, SocketAddr, &[u8])]) {
    let relays = shard.relays.borrow();
    let mut i = 0;
    while i < out.len() {
        let relay = out[i].0;
        let mut j = i + 1;
        while j < out.len() && out[j].0 == relay {
            j += 1;
        }
        let Some(Some(r)) = relays.get(relay.0 as usize) else {
            shard
                .counters
                .dropped_n(DropReason::SendBufferFull, (j - i) as u64);
            i = j;
            continue;
        };
        let lost = if j - i == 1 {
            usize::from(r.sock.send_to(out[i].2, out[i].1).is_err())
        } else {
            let mut b = SendBatch::new();
            for &(_, peer, data) in &out[i..j] {
                b.push(data, peer);
            }
            b.flush(r.sock.as_raw_fd(), &r.gso)
        };
        shard
            .counters
            .dropped_n(DropReason::SendBufferFull, lost as u64);
        i = j;
    }
}
