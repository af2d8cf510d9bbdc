//! A UDP listener socket of one shard.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::batch::{BATCH, MAX_DATAGRAM, RecvBatch};
use super::relay::ShellIo;
use super::shard::Shard;
use crate::config::Transport;
use crate::core::{ClientOutput, DropReason, FiveTuple};

/// Batches handled before yielding to the shard's other tasks.
const BATCHES_PER_WAKE: usize = 8;

/// Receive datagrams in batches (one `recvmmsg` for up to [`BATCH`]), hand
/// each to the core, send what it says. The clock is read once per batch.
/// A send that does not fit the socket buffer is dropped and counted (UDP
/// gives no guarantee anyway; clients retransmit requests).
pub(crate) async fn serve(
    shard: Rc<Shard>,
    sock: Rc<UdpSocket>,
    local: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rx = RecvBatch::new(0, MAX_DATAGRAM, 0);
    let mut out = Vec::with_capacity(1500);
    let fd = sock.as_raw_fd();
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        for _ in 0..BATCHES_PER_WAKE {
            match sock.try_io(Interest::READABLE, || rx.recv(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            }
            let now = super::clock::now();
            let mut core = shard.core.borrow_mut();
            for slot in rx.slots_mut() {
                let Some((buf, len, from)) = slot else {
                    shard.counters.dropped(DropReason::TooLarge);
                    continue;
                };
                let ft = FiveTuple {
                    client: from,
                    server: local,
                    transport: Transport::Udp,
                };
                out.clear();
                let r = core.handle_client(
                    now,
                    &ft,
                    &buf[..len],
                    &mut out,
                    &mut ShellIo { shard: &shard },
                );
                let sent = match r {
                    ClientOutput::None => true,
                    ClientOutput::Reply => {
                        // A request may have created or ended an
                        // allocation: log it before the client hears.
                        super::shard::log_events(&mut core);
                        super::socket::send_to_now(&sock, &out, from).is_ok()
                    }
                    ClientOutput::ToPeer { relay, peer, data } => {
                        shard.send_to_peer(relay, peer, data)
                    }
                };
                if !sent {
                    shard.counters.dropped(DropReason::SendBufferFull);
                }
            }
            drop(core);
            // Log allocation starts and ends as they happen: the core keeps
            // a bounded queue.
            shard.drain_events();
            if rx.count() < BATCH {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}
