//! A UDP listener socket of one shard.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::config::Transport;
use crate::core::{ClientOutput, FiveTuple, Server};

/// Receive datagrams, hand each to the core, send replies. A reply that
/// does not fit the socket's send buffer is dropped (UDP gives no
/// guarantee anyway; the client retransmits).
pub(crate) async fn serve(
    sock: UdpSocket,
    local: SocketAddr,
    core: Rc<RefCell<Server>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(1500);
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%local, error = %e, "recv failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let ft = FiveTuple {
            client: from,
            server: local,
            transport: Transport::Udp,
        };
        out.clear();
        let r = core
            .borrow_mut()
            .handle_client(Instant::now(), &ft, &buf[..n], &mut out);
        if r == ClientOutput::Reply {
            let _ = sock.try_send_to(&out, from);
        }
    }
}
