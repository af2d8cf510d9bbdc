//! A UDP listener socket of one shard.

use std::net::SocketAddr;
use std::rc::Rc;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::relay::ShellIo;
use super::shard::Shard;
use crate::config::Transport;
use crate::core::{ClientOutput, DropReason, FiveTuple};

/// Receive datagrams, hand each to the core, send what it says. A send
/// that does not fit the socket buffer is dropped and counted (UDP gives
/// no guarantee anyway; clients retransmit requests).
pub(crate) async fn serve(
    shard: Rc<Shard>,
    sock: Rc<UdpSocket>,
    local: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(1500);
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        loop {
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let ft = FiveTuple {
                client: from,
                server: local,
                transport: Transport::Udp,
            };
            out.clear();
            let now = super::clock::now();
            let r = shard.core.borrow_mut().handle_client(
                now,
                &ft,
                &buf[..n],
                &mut out,
                &mut ShellIo { shard: &shard },
            );
            let sent = match r {
                ClientOutput::None => true,
                ClientOutput::Reply => {
                    // A request may have created or ended an allocation:
                    // log it before the client hears about it.
                    shard.drain_events();
                    super::socket::send_now(&sock, &out, from)
                }
                ClientOutput::ToPeer { relay, peer, data } => shard.send_to_peer(relay, peer, data),
            };
            if !sent {
                shard.counters.dropped(DropReason::SendBufferFull);
            }
        }
    }
}
