//! The tokio driver behind `turnpike ice-check`: it owns the sockets of one
//! or two [`Agent`]s and pumps them. Nothing here knows ICE; the loop is the
//! agent's five calls:
//!
//! ```text
//!   poll_transmit ──► host UDP socket / UDP socket to a TURN server /
//!                     TCP or TLS stream to a TURN server (one frame each)
//!   handle_packet ◄── datagrams, and stream bytes cut into frames
//!   handle_timeout ◄─ when poll_timeout says
//!   unreachable ◄──── send errors (no route, EPERM from a firewall), ICMP
//!                     refusals on the connected TURN sockets, streams that
//!                     fail to connect, to handshake, or close
//!   poll_event ─────► the [`Observer`]
//! ```
//!
//! Every run ends: an overall deadline stops it with whatever the agents
//! found by then, and every connect and handshake has a timeout.
//!
//! On Linux an agent's sockets may live in another network namespace
//! ([`Side::netns`]): they are created on a short-lived thread that has
//! `setns`'d into `/var/run/netns/NAME` and handed back to tokio. A socket
//! keeps the namespace it was created in, so a TCP socket made there
//! connects from there too.
//!
//! By job: this file runs the loop; `sockets` makes the sockets (in a
//! namespace if asked), `tasks` reads them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use turnpike_proto::core::Transport;
use turnpike_proto::ice::{Agent, AgentConfig, Description, Event, Report, SocketId, Transmit};

mod sockets;
mod tasks;

use sockets::{MadeTurn, make_sockets};
pub use sockets::{in_netns, interface_addrs, why};
use tasks::{StreamCtx, read_udp, run_stream};

/// Which host candidates an agent gets.
#[derive(Clone, Debug)]
pub enum Hosts {
    /// Bind exactly these (port 0 picks one).
    Given(Vec<SocketAddr>),
    /// Every address of every interface that is up, except IPv6
    /// link-local ones; loopback only if asked or if there is nothing else.
    Interfaces { loopback: bool },
}

/// One agent to run.
#[derive(Clone, Debug)]
pub struct Side {
    pub config: AgentConfig,
    pub hosts: Hosts,
    /// Create this agent's sockets in the network namespace
    /// `/var/run/netns/NAME` (Linux, needs CAP_SYS_ADMIN).
    pub netns: Option<String>,
    pub seed: u64,
    /// Per TURN server (same index as `config.turn_servers`): the name to
    /// verify a TLS server's certificate against.
    pub tls_names: Vec<Option<ServerName<'static>>>,
}

/// Limits and TLS settings of a run.
#[derive(Clone)]
pub struct Options {
    pub tls: Arc<rustls::ClientConfig>,
    /// The whole run (in offer/answer mode: the wait for the other side's
    /// description, then the checks, each).
    pub deadline: Duration,
    /// TCP connect and TLS handshake, each.
    pub connect_timeout: Duration,
    /// After the agent is done, keep answering the peer this long (offer
    /// and answer mode, where the peer is another process that may still
    /// be checking or measuring).
    pub linger: Duration,
}

/// How descriptions reach the other agent.
pub enum Exchange {
    /// Both agents run here: swap descriptions once both have gathered.
    Local,
    /// One agent runs here: `publish` gets its description once gathered;
    /// the other side's arrives on `incoming` (an `Err` ends the run).
    Remote {
        publish: Box<dyn FnMut(&Description) + Send>,
        incoming: mpsc::Receiver<Result<Description, String>>,
    },
}

/// Told what happens, as it happens.
pub trait Observer {
    fn event(&mut self, side: usize, agent: &Agent, event: &Event);
    /// How often [`Observer::tick`] wants to be called (a spinner).
    fn tick_every(&self) -> Option<Duration> {
        None
    }
    fn tick(&mut self, _agents: &[&Agent]) {}
    /// The other side's description arrived (offer/answer mode).
    fn remote_arrived(&mut self) {}
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub reports: Vec<Report>,
    /// Per side: the agent finished its checks and measurements.
    pub finished: Vec<bool>,
    /// The deadline cut the run short.
    pub timed_out: bool,
    /// The `stop` future of [`Driver::run`] did (Ctrl-C).
    pub interrupted: bool,
    /// In offer/answer mode: whether the other side's description came,
    /// and why not.
    pub remote_received: bool,
    pub remote_error: Option<String>,
    pub elapsed: Duration,
    /// The host addresses each side's sockets were bound to.
    pub hosts: Vec<Vec<SocketAddr>>,
}

enum Input {
    Packet {
        side: usize,
        socket: SocketId,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Unreachable {
        side: usize,
        socket: SocketId,
        to: SocketAddr,
        why: String,
    },
}

/// Sending goes straight to the (non-blocking) std socket, a duplicate of
/// the one tokio reads from: a socket tokio has just adopted reports no
/// write readiness until its first poll, so tokio's `try_send` would drop
/// the very first datagrams.
enum TurnIo {
    Udp(std::net::UdpSocket),
    Stream(mpsc::Sender<Vec<u8>>),
    /// Never opened (the agent was not asked for relays), or it failed to
    /// open and the agent was told.
    None,
}

struct SideIo {
    agent: Agent,
    hosts: Vec<std::net::UdpSocket>,
    addrs: Vec<SocketAddr>,
    turns: Vec<TurnIo>,
    done_at: Option<Instant>,
}

/// The running sockets and agents.
pub struct Driver {
    sides: Vec<SideIo>,
    inputs: mpsc::Receiver<Input>,
    readers: Vec<JoinHandle<()>>,
    streams: Vec<JoinHandle<()>>,
    opts: Options,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for t in self.readers.iter().chain(&self.streams) {
            t.abort();
        }
    }
}

impl Driver {
    /// Create every socket (in the sides' namespaces), start the stream
    /// connections and the agents.
    pub fn start(sides: Vec<Side>, opts: Options) -> io::Result<Driver> {
        let (tx, inputs) = mpsc::channel(4096);
        let mut readers = Vec::new();
        let mut streams = Vec::new();
        let mut ios = Vec::new();
        let now = crate::clock::instant();
        for (s, side) in sides.into_iter().enumerate() {
            let servers: Vec<(SocketAddr, Transport)> = side
                .config
                .turn_servers
                .iter()
                .map(|t| (t.addr, t.transport))
                .collect();
            let want_relay = side
                .config
                .only
                .is_none_or(|o| o == turnpike_proto::ice::PathKind::Relay);
            let hosts_spec = side.hosts.clone();
            let made = in_netns(side.netns.as_deref(), move || {
                make_sockets(&hosts_spec, &servers, want_relay)
            })?;
            let mut hosts = Vec::new();
            let mut addrs = Vec::new();
            for (i, h) in made.hosts.into_iter().enumerate() {
                addrs.push(h.local_addr()?);
                h.set_nonblocking(true)?;
                hosts.push(h.try_clone()?);
                readers.push(tokio::spawn(read_udp(
                    UdpSocket::from_std(h)?,
                    s,
                    SocketId::Host(i as u16),
                    None,
                    tx.clone(),
                )));
            }
            let mut agent = Agent::new(side.config.clone(), addrs.clone(), side.seed, now);
            agent.start(now);
            let mut turns = Vec::new();
            let mut failed = Vec::new();
            for (j, m) in made.turns.into_iter().enumerate() {
                let server = side.config.turn_servers[j].addr;
                let id = SocketId::Turn(j as u16);
                match m {
                    Ok(MadeTurn::Udp(u)) => {
                        u.set_nonblocking(true)?;
                        let send = u.try_clone()?;
                        readers.push(tokio::spawn(read_udp(
                            UdpSocket::from_std(u)?,
                            s,
                            id,
                            Some(server),
                            tx.clone(),
                        )));
                        turns.push(TurnIo::Udp(send));
                    }
                    Ok(MadeTurn::Stream(t)) => {
                        t.set_nonblocking(true)?;
                        let sock = TcpSocket::from_std_stream(t);
                        let tls = match side.config.turn_servers[j].transport {
                            Transport::Tls => {
                                let name = side
                                    .tls_names
                                    .get(j)
                                    .cloned()
                                    .flatten()
                                    .unwrap_or(ServerName::IpAddress(server.ip().into()));
                                Some((opts.tls.clone(), name))
                            }
                            _ => None,
                        };
                        let (out_tx, out_rx) = mpsc::channel(256);
                        streams.push(tokio::spawn(run_stream(
                            StreamCtx {
                                side: s,
                                id,
                                server,
                                inputs: tx.clone(),
                                connect_timeout: opts.connect_timeout,
                            },
                            sock,
                            tls,
                            out_rx,
                        )));
                        turns.push(TurnIo::Stream(out_tx));
                    }
                    Ok(MadeTurn::Skipped) => turns.push(TurnIo::None),
                    Err(why) => {
                        turns.push(TurnIo::None);
                        failed.push((id, server, why));
                    }
                }
            }
            for (id, server, why) in failed {
                agent.unreachable(now, id, server, &why);
            }
            ios.push(SideIo {
                agent,
                hosts,
                addrs,
                turns,
                done_at: None,
            });
        }
        Ok(Driver {
            sides: ios,
            inputs,
            readers,
            streams,
            opts,
        })
    }

    /// The agents (for observers and reports).
    pub fn agents(&self) -> Vec<&Agent> {
        self.sides.iter().map(|s| &s.agent).collect()
    }

    /// Send what the agents want sent; send errors go back to them as
    /// `unreachable`, which may make them send more.
    fn flush(&mut self, now: Instant) {
        for s in 0..self.sides.len() {
            while let Some(t) = self.sides[s].agent.poll_transmit() {
                if let Some(why) = self.send(s, &t) {
                    self.sides[s].agent.unreachable(now, t.socket, t.to, &why);
                }
            }
        }
    }

    fn send(&mut self, s: usize, t: &Transmit) -> Option<String> {
        let side = &mut self.sides[s];
        let r = match t.socket {
            SocketId::Host(i) => match side.hosts.get(i as usize) {
                Some(h) => h.send_to(&t.data, t.to).map(drop),
                None => return None,
            },
            SocketId::Turn(j) => match side.turns.get(j as usize) {
                Some(TurnIo::Udp(u)) => u.send(&t.data).map(drop),
                Some(TurnIo::Stream(tx)) => {
                    return match tx.try_send(t.data.clone()) {
                        Ok(()) => None,
                        // A full queue loses the frame, as a full UDP
                        // buffer loses a datagram; the agent retransmits.
                        Err(mpsc::error::TrySendError::Full(_)) => None,
                        // The stream task ended and has said why.
                        Err(mpsc::error::TrySendError::Closed(_)) => None,
                    };
                }
                Some(TurnIo::None) | None => return None,
            },
        };
        match r {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(why(&e)),
        }
    }

    fn drain_events(&mut self, obs: &mut dyn Observer) {
        for s in 0..self.sides.len() {
            while let Some(e) = self.sides[s].agent.poll_event() {
                obs.event(s, &self.sides[s].agent, &e);
            }
        }
    }

    /// Run until every agent is done (and has lingered), the deadline, or
    /// `stop` completes; then delete the TURN allocations.
    pub async fn run(
        &mut self,
        mut exchange: Exchange,
        obs: &mut dyn Observer,
        stop: impl std::future::Future<Output = ()>,
    ) -> Outcome {
        let mut stop = std::pin::pin!(stop);
        let mut interrupted = false;
        let start = crate::clock::instant();
        let mut deadline = start + self.opts.deadline;
        let mut exchanged = false;
        let mut published = false;
        let mut remote_received = false;
        let mut timed_out = false;
        let mut remote_error = None;
        let tick_every = obs.tick_every();
        let mut next_tick = start;
        loop {
            let now = crate::clock::instant();
            self.flush(now);
            self.drain_events(obs);
            if self.sides.iter().all(|s| s.agent.gathering_done()) {
                match &mut exchange {
                    Exchange::Local if !exchanged => {
                        exchanged = true;
                        let d: Vec<Description> =
                            self.sides.iter().map(|s| s.agent.description()).collect();
                        let n = d.len();
                        for (i, s) in self.sides.iter_mut().enumerate() {
                            s.agent.set_remote(now, &d[(i + 1) % n]);
                        }
                        continue;
                    }
                    Exchange::Remote { publish, .. } if !published => {
                        published = true;
                        publish(&self.sides[0].agent.description());
                    }
                    _ => {}
                }
            }
            for s in &mut self.sides {
                if s.agent.is_done() && s.done_at.is_none() {
                    s.done_at = Some(now);
                }
            }
            let linger_end = self
                .sides
                .iter()
                .map(|s| s.done_at.map(|d| d + self.opts.linger))
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max());
            if linger_end.is_some_and(|e| now >= e) {
                break;
            }
            if now >= deadline {
                timed_out = true;
                break;
            }
            let mut wake = deadline;
            if let Some(e) = linger_end {
                wake = wake.min(e);
            }
            for s in &self.sides {
                if let Some(t) = s.agent.poll_timeout() {
                    wake = wake.min(t);
                }
            }
            if let Some(every) = tick_every {
                if now >= next_tick {
                    next_tick = now + every;
                    obs.tick(&self.agents());
                }
                wake = wake.min(next_tick);
            }
            let incoming = match &mut exchange {
                Exchange::Remote { incoming, .. } if !remote_received => Some(incoming),
                _ => None,
            };
            tokio::select! {
                biased;
                () = &mut stop => {
                    interrupted = true;
                    break;
                }
                Some(inp) = self.inputs.recv() => {
                    let now = crate::clock::instant();
                    match inp {
                        Input::Packet { side, socket, from, data } => {
                            self.sides[side].agent.handle_packet(now, socket, from, &data);
                        }
                        Input::Unreachable { side, socket, to, why } => {
                            self.sides[side].agent.unreachable(now, socket, to, &why);
                        }
                    }
                }
                d = async { incoming.expect("guarded").recv().await }, if incoming.is_some() => {
                    let now = crate::clock::instant();
                    match d {
                        Some(Ok(d)) => {
                            remote_received = true;
                            self.sides[0].agent.set_remote(now, &d);
                            // The checks get a whole deadline of their own.
                            deadline = now + self.opts.deadline;
                            obs.remote_arrived();
                        }
                        Some(Err(e)) => {
                            // No description will come: finish now with
                            // what there is.
                            remote_error = Some(e);
                            break;
                        }
                        None => {
                            remote_error = Some("no description from the other side".into());
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = crate::clock::instant();
                    for s in &mut self.sides {
                        if s.agent.poll_timeout().is_some_and(|t| t <= now) {
                            s.agent.handle_timeout(now);
                        }
                    }
                }
            }
        }
        let now = crate::clock::instant();
        self.drain_events(obs);
        let reports = self.sides.iter().map(|s| s.agent.report()).collect();
        let finished = self.sides.iter().map(|s| s.agent.is_done()).collect();
        let hosts = self.sides.iter().map(|s| s.addrs.clone()).collect();
        // Delete the allocations, then let the streams write that out.
        for s in &mut self.sides {
            s.agent.close(now);
        }
        self.flush(now);
        for s in &mut self.sides {
            s.turns.clear();
        }
        let streams = std::mem::take(&mut self.streams);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for t in streams {
                let _ = t.await;
            }
        })
        .await;
        Outcome {
            reports,
            finished,
            timed_out,
            interrupted,
            remote_received,
            remote_error,
            elapsed: now.saturating_duration_since(start),
            hosts,
        }
    }
}
