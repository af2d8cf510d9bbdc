//! One shard: a current-thread runtime owning a server core and its own
//! socket of every listener.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Transport;
use crate::core::{CoreConfig, Counters, FiveTuple, Server};

/// The sockets handed to one shard.
#[derive(Default)]
pub(crate) struct Sockets {
    udp: Vec<(socket2::Socket, SocketAddr)>,
    stream: Vec<(
        socket2::Socket,
        SocketAddr,
        Option<Arc<rustls::ServerConfig>>,
    )>,
}

impl Sockets {
    pub(crate) fn push(
        &mut self,
        t: Transport,
        addr: SocketAddr,
        s: socket2::Socket,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        match t {
            Transport::Udp => self.udp.push((s, addr)),
            Transport::Tcp | Transport::Tls => self.stream.push((s, addr, tls)),
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) fn run(
    id: usize,
    sockets: Sockets,
    cfg: Arc<CoreConfig>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot build shard runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let core = Rc::new(RefCell::new(Server::new(cfg, counters)));
        for (s, addr) in sockets.udp {
            let sock = match tokio::net::UdpSocket::from_std(s.into()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(shard = id, %addr, error = %e, "cannot register UDP socket");
                    continue;
                }
            };
            tokio::task::spawn_local(super::udp::serve(
                sock,
                addr,
                core.clone(),
                shutdown.clone(),
            ));
        }
        for (s, addr, tls) in sockets.stream {
            let listener = match tokio::net::TcpListener::from_std(s.into()) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(shard = id, %addr, error = %e, "cannot register TCP listener");
                    continue;
                }
            };
            tokio::task::spawn_local(accept_loop(
                listener,
                addr,
                tls,
                core.clone(),
                shutdown.clone(),
            ));
        }
        let mut shutdown = shutdown;
        let _ = shutdown.wait_for(|s| *s).await;
    });
    tracing::debug!(shard = id, "shard stopped");
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    core: Rc<RefCell<Server>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let transport = if acceptor.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let ft = FiveTuple {
            client: peer,
            server: local,
            transport,
        };
        let core = core.clone();
        let shutdown = shutdown.clone();
        match &acceptor {
            None => {
                tokio::task::spawn_local(super::stream::serve(stream, ft, core, shutdown));
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::task::spawn_local(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                        Ok(Ok(tls)) => super::stream::serve(tls, ft, core, shutdown).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
