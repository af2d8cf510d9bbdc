//! One shard: a current-thread runtime owning a server core, its own
//! socket of every listener, and the relay sockets of its allocations.
//! Tasks of a shard share it through `Rc` and borrow the core only between
//! awaits: no locks, no channels on the packet path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::relay::{HeldPorts, RelaySocket, ShellIo};
use super::stream::ConnOut;
use crate::config::Transport;
use turnpike_proto::core::{
    ClientAddr, Counters, Event, FiveTuple, PEER_HEADROOM, PEER_TAILROOM, Server, Setup, Traffic,
};

/// The sockets handed to one shard.
#[derive(Default)]
pub(crate) struct Sockets {
    /// Whether UDP sockets start with GSO on (`[server] udp_gso`).
    pub gso: bool,
    /// The XDP fast path (issue 15), shared by every shard.
    pub(super) fastpath: Arc<super::fastpath::Slot>,
    pub(super) udp: Vec<(socket2::Socket, SocketAddr)>,
    pub(super) stream: Vec<(
        socket2::Socket,
        SocketAddr,
        Option<Arc<rustls::ServerConfig>>,
    )>,
    /// Where the core's admission questions go (issue 14; with a cluster).
    pub(super) admit: Option<mpsc::Sender<crate::cluster::FromShard>>,
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

/// The timer task wakes at least this often (and exactly at deadlines).
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// State shared by the tasks of one shard.
pub(crate) struct Shard {
    pub core: RefCell<Server>,
    pub counters: Arc<Counters>,
    /// Relay sockets indexed by `RelayId`.
    pub relays: RefCell<Vec<Option<RelaySocket>>>,
    /// Receive batch for relay sockets, with headroom for in-place
    /// ChannelData / Data indication headers.
    pub rx: RefCell<turnpike_sys::batch::RecvBatch>,
    pub udp: RefCell<Vec<(SocketAddr, Rc<super::udp::Listener>)>>,
    pub conns: RefCell<HashMap<FiveTuple, Rc<ConnOut>>>,
    /// Reserved relay ports bound ahead (shared by all shards).
    pub held: Arc<HeldPorts>,
    /// The epoll set of this shard's relay sockets.
    pub poller: super::poller::Poller,
    /// Whether relay sockets start with GSO on (`[server] udp_gso`).
    pub gso: bool,
    /// The door of the TCP and TLS listeners, shared by every shard.
    pub gate: Arc<super::gate::Gate>,
    /// The XDP fast path (issue 15), shared by every shard.
    pub fastpath: Arc<super::fastpath::Slot>,
    /// This shard's index, and where its core's admission questions go
    /// (issue 14).
    pub id: usize,
    pub admit: Option<mpsc::Sender<crate::cluster::FromShard>>,
    /// Wakes the timer task to look at the core's next deadline again (a
    /// parked Allocate's budget, issue 14).
    pub timer_wake: tokio::sync::Notify,
}

impl Shard {
    /// Send bytes to a client on its five-tuple: a datagram from the
    /// listener socket it used, or into its connection's output buffer.
    /// False when it could not be queued (counted by the caller).
    pub(super) fn send_to_client(&self, ft: &FiveTuple, data: &[u8]) -> bool {
        match ft.transport {
            Transport::Udp => {
                let udp = self.udp.borrow();
                let Some((_, sock)) = udp.iter().find(|(a, _)| *a == ft.server) else {
                    return false;
                };
                sock.io.get_ref().send_to(data, ft.client.0).is_ok()
            }
            Transport::Tcp | Transport::Tls => match self.conns.borrow().get(ft) {
                Some(c) => c.push(data),
                None => false,
            },
        }
    }

    /// Send from an allocation's relay socket to a peer (a plain
    /// non-blocking send: the kernel takes it or the datagram is dropped).
    /// False when it was not sent (counted by the caller).
    pub(super) fn send_from_relay(
        &self,
        relay: turnpike_proto::core::RelayId,
        peer: SocketAddr,
        data: &[u8],
    ) -> bool {
        matches!(self.relays.borrow().get(relay.0 as usize), Some(Some(r)) if r.sock.send_to(data, peer).is_ok())
    }

    /// Log allocation events the core queued (see [`log_events`]).
    pub(super) fn drain_events(&self) {
        let mut core = self.core.borrow_mut();
        let fast = super::fastpath::apply(&mut core, &self.fastpath);
        log_events(self, &mut core, &fast);
        super::fleet::forward_admissions(self, &mut core);
    }
}

/// Log allocation events the core queued. Called right after a request
/// was handled (before its response goes out), after timers, control
/// requests and closed connections, so lines come in the order things
/// happened and the core's bounded queue never fills.
///
/// An ended allocation's traffic adds what the XDP fast path relayed for
/// it (`fast`: by allocation id, from [`super::fastpath::apply`]).
pub(crate) fn log_events(shard: &Shard, core: &mut Server, fast: &[(u64, Traffic)]) {
    let redact = core.config().redact_client_ips;
    let client = |a: SocketAddr| {
        if redact {
            super::redact(a)
        } else {
            a.to_string()
        }
    };
    while let Some(e) = core.poll_event() {
        match e {
            Event::AllocationCreated {
                id,
                ft,
                relay,
                username,
                lifetime,
            } => tracing::info!(
                id,
                user = %super::log_safe(&username),
                client = %client(ft.client.0),
                server = %ft.server,
                transport = %ft.transport,
                %relay,
                lifetime = lifetime.as_secs(),
                "allocation created"
            ),
            Event::AllocationEnded {
                id,
                ft,
                relay,
                username,
                reason,
                duration,
                mut traffic,
            } => {
                if let Some((_, f)) = fast.iter().find(|(i, _)| *i == id) {
                    traffic.packets_out += f.packets_out;
                    traffic.bytes_out += f.bytes_out;
                    traffic.packets_in += f.packets_in;
                    traffic.bytes_in += f.bytes_in;
                }
                super::fleet::ended(shard, id, &username);
                tracing::info!(
                id,
                user = %super::log_safe(&username),
                client = %client(ft.client.0),
                server = %ft.server,
                transport = %ft.transport,
                %relay,
                reason = reason.name(),
                duration_s = duration.as_secs(),
                bytes_to_peer = traffic.bytes_out,
                bytes_from_peer = traffic.bytes_in,
                "allocation ended"
                );
            }
        }
    }
}

pub(crate) fn run(
    id: usize,
    sockets: Sockets,
    setup: Setup,
    shutdown: watch::Receiver<bool>,
    control: mpsc::UnboundedReceiver<super::control::Control>,
    held: Arc<HeldPorts>,
    gate: Arc<super::gate::Gate>,
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
        let poller = match super::poller::Poller::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot create the relay epoll set");
                return;
            }
        };
        let shard = Rc::new(Shard {
            poller,
            counters: setup.counters.clone(),
            core: RefCell::new(Server::new(setup)),
            relays: RefCell::new(Vec::new()),
            rx: RefCell::new(turnpike_sys::batch::RecvBatch::new(
                PEER_HEADROOM,
                turnpike_sys::batch::MAX_DATAGRAM,
                PEER_TAILROOM,
            )),
            udp: RefCell::new(Vec::new()),
            conns: RefCell::new(HashMap::new()),
            held,
            gso: sockets.gso,
            gate,
            fastpath: sockets.fastpath,
            id,
            admit: sockets.admit,
            timer_wake: tokio::sync::Notify::new(),
        });
        if shard.fastpath.attached() {
            shard
                .core
                .borrow_mut()
                .set_fastpath(crate::clock::now(), true);
        }
        tokio::task::spawn_local(super::relay::relay_loop(shard.clone()));
        for (s, addr) in sockets.udp {
            let std_sock: std::net::UdpSocket = s.into();
            let sock = match turnpike_sys::tokio::register_readable(std_sock) {
                Ok(io) => Rc::new(super::udp::Listener {
                    io,
                    gso: turnpike_sys::batch::UdpSocketState::new(sockets.gso),
                }),
                Err(e) => {
                    tracing::error!(shard = id, %addr, error = %e, "cannot register UDP socket");
                    continue;
                }
            };
            shard.udp.borrow_mut().push((addr, sock.clone()));
            tokio::task::spawn_local(super::udp::serve(
                shard.clone(),
                sock,
                addr,
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
                shard.clone(),
                listener,
                addr,
                tls,
                shutdown.clone(),
            ));
        }
        timer_loop(&shard, shutdown, control).await;
        // Shutting down: end every allocation so its log line is written
        // and its relay socket closed.
        let now = crate::clock::now();
        shard
            .core
            .borrow_mut()
            .delete_all(now, &mut ShellIo { shard: &shard });
        shard.drain_events();
    });
    tracing::debug!(shard = id, "shard stopped");
}

/// Run the core's timers and control requests until shutdown: sleep until
/// the next deadline (at most a second, so new earlier deadlines are never
/// missed by more), then let the core expire what is due.
async fn timer_loop(
    shard: &Rc<Shard>,
    mut shutdown: watch::Receiver<bool>,
    mut control: mpsc::UnboundedReceiver<super::control::Control>,
) {
    loop {
        let next = shard.core.borrow().poll_timeout();
        let now = tokio::time::Instant::from_std(crate::clock::instant());
        let wake = match next {
            Some(t) => tokio::time::Instant::from_std(t).min(now + MAX_TIMER_SLEEP),
            None => now + MAX_TIMER_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some(c) = control.recv() => {
                serve_control(shard, c);
                shard.drain_events();
                continue;
            }
            () = shard.timer_wake.notified() => continue,
            r = shutdown.wait_for(|s| *s) => { let _ = r; return; }
        }
        let now = crate::clock::now();
        shard
            .core
            .borrow_mut()
            .handle_timeout(now, &mut ShellIo { shard });
        super::fleet::expire_admissions(shard, now);
        shard.drain_events();
    }
}

fn serve_control(shard: &Rc<Shard>, c: super::control::Control) {
    use super::control::Control;
    let now = crate::clock::now();
    let mut core = shard.core.borrow_mut();
    match c {
        Control::Config(cfg) => core.set_config(cfg),
        Control::Credentials(creds) => {
            core.set_credentials(now, creds, &mut ShellIo { shard });
        }
        Control::Revocations(set, done) => {
            let ended = core.set_revocations(now, set, &mut ShellIo { shard });
            let _ = done.send(ended);
        }
        Control::Sessions(tx) => {
            let mut sessions = core.sessions(now);
            shard.fastpath.add_to_sessions(&mut sessions);
            let _ = tx.send(sessions);
        }
        Control::Fastpath(on) => core.set_fastpath(now, on),
        Control::Delete(id, tx) => {
            let found = core.delete_session(id, now, &mut ShellIo { shard });
            let _ = tx.send(found);
        }
        Control::Fleet(f) => core.set_fleet(f),
        Control::Admitted(ticket, verdict) => {
            drop(core);
            super::fleet::admitted(shard, now, ticket, verdict);
        }
    }
}

/// Accept connections until shutdown. Each is admitted by the gate (caps,
/// descriptor reserve) or closed at once, then served in a task of its own:
/// a TLS handshake runs there too, under `first_request_timeout`, so the
/// loop never waits for a client.
async fn accept_loop(
    shard: Rc<Shard>,
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use super::gate::ConnTimeout;
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let opened = crate::clock::instant();
        let (slot, limits) = match shard.gate.admit(&stream, peer.ip()) {
            Ok(x) => x,
            Err(why) => {
                tracing::debug!(client = %peer, cap = why.name(), "connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The connection's own local address is specific even when the
        // listener is a wildcard.
        let ft = FiveTuple {
            client: ClientAddr(peer),
            server: stream.local_addr().unwrap_or(local),
            transport,
        };
        let shard = shard.clone();
        let shutdown = shutdown.clone();
        let conn = super::stream::Conn {
            ft,
            limits,
            opened,
            _slot: slot,
        };
        match &acceptor {
            None => {
                tokio::task::spawn_local(super::stream::serve(shard, stream, conn, shutdown));
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::task::spawn_local(async move {
                    let deadline = tokio::time::Instant::from_std(opened + limits.first_request);
                    // Pinned here so that a timed-out handshake's socket
                    // is closed after it is counted.
                    let accept = acc.accept(stream);
                    tokio::pin!(accept);
                    match tokio::time::timeout_at(deadline, &mut accept).await {
                        Ok(Ok(tls)) => super::stream::serve(shard, tls, conn, shutdown).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            shard.gate.stats.timed_out(ConnTimeout::Handshake);
                            tracing::debug!(client = %peer, "TLS handshake timed out (limits.first_request_timeout)");
                        }
                    }
                });
            }
        }
    }
}
