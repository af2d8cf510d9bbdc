//! A sans-IO TURN client for one allocation (RFC 8656 §6-§12, client
//! side): Allocate with the 401/438 round trips, Refresh before expiry,
//! CreatePermission and ChannelBind on demand (refreshed before they
//! lapse), Send indications until a channel is bound and ChannelData after,
//! Data indications and ChannelData unwrapped. Requests are client
//! transactions of [`crate::stun`]: retransmitted with RTO backoff over UDP
//! (RFC 8489 §6.2.1), sent once over TCP/TLS.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use crate::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use crate::core::Transport;
use crate::stun::{Due, Reliability, Retransmit, Transactions};
use crate::wire::{ChannelData, Class, Message, Method, TransactionId};

/// Why an allocation failed; shown to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnFailure {
    /// No answer from the server.
    Timeout,
    /// An error response (401 wrong credentials, 403, 486 quota, …).
    Error(u16, String),
    /// The connection to the server failed or closed.
    Unreachable(String),
}

impl std::fmt::Display for TurnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnFailure::Timeout => f.write_str("timeout"),
            TurnFailure::Error(c, r) if r.is_empty() => write!(f, "{c}"),
            TurnFailure::Error(c, r) => write!(f, "{c} {r}"),
            TurnFailure::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// The allocation's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnState {
    Allocating,
    Allocated {
        relayed: SocketAddr,
        mapped: SocketAddr,
    },
    Failed(TurnFailure),
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocate { authenticated: bool },
    Refresh,
    Permission(IpAddr),
    Channel(SocketAddr, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Perm {
    Pending,
    Installed {
        refresh_at: Instant,
    },
    /// Refused by the server (403 peer policy, …).
    Refused(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chan {
    number: u16,
    bound: bool,
    refresh_at: Instant,
}

/// What a peer's packet looks like once unwrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerData {
    pub peer: SocketAddr,
    pub data: Vec<u8>,
}

/// Things the owner should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    Allocated {
        relayed: SocketAddr,
        mapped: SocketAddr,
    },
    Failed(TurnFailure),
    /// The server refused a permission for `ip` (403 for a forbidden peer).
    PermissionRefused {
        ip: IpAddr,
        code: u16,
    },
}

/// Packets held per peer while its permission is being installed.
const MAX_QUEUED: usize = 16;

/// One TURN allocation, driven with `now` and a seeded RNG.
pub struct TurnClient {
    pub server: SocketAddr,
    pub transport: Transport,
    creds: Credentials,
    sign: SignOptions,
    state: TurnState,
    session: Option<Session>,
    lifetime: Duration,
    refresh_at: Option<Instant>,
    txns: Transactions<Kind>,
    perms: BTreeMap<IpAddr, Perm>,
    chans: BTreeMap<SocketAddr, Chan>,
    queued: BTreeMap<IpAddr, Vec<(SocketAddr, Vec<u8>)>>,
    next_channel: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    rng: StdRng,
}

impl TurnClient {
    pub fn new(
        server: SocketAddr,
        transport: Transport,
        creds: Credentials,
        retransmit: Retransmit,
        seed: u64,
    ) -> Self {
        use rand::SeedableRng;
        TurnClient {
            server,
            transport,
            creds,
            sign: SignOptions::default(),
            state: TurnState::Allocating,
            session: None,
            lifetime: Duration::from_secs(600),
            refresh_at: None,
            txns: Transactions::new(retransmit),
            perms: BTreeMap::new(),
            chans: BTreeMap::new(),
            queued: BTreeMap::new(),
            next_channel: 0x4000,
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn state(&self) -> &TurnState {
        &self.state
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            TurnState::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// Send the first (unauthenticated) Allocate.
    pub fn start(&mut self, now: Instant) {
        self.request(
            now,
            Kind::Allocate {
                authenticated: false,
            },
        );
    }

    fn tid(&mut self) -> TransactionId {
        TransactionId::random(&mut self.rng)
    }

    fn request(&mut self, now: Instant, kind: Kind) {
        let tid = self.tid();
        let mut buf = Vec::with_capacity(256);
        match (kind, &self.session) {
            (Kind::Allocate { .. }, s) => {
                let o = AllocateOptions {
                    lifetime: Some(self.lifetime.as_secs() as u32),
                    ..Default::default()
                };
                client::allocate(&mut buf, tid, &o, s.as_ref());
            }
            (Kind::Refresh, Some(s)) => {
                client::refresh(&mut buf, tid, Some(self.lifetime.as_secs() as u32), s)
            }
            (Kind::Permission(ip), Some(s)) => {
                client::create_permission(&mut buf, tid, &[SocketAddr::new(ip, 0)], s)
            }
            (Kind::Channel(peer, n), Some(s)) => client::channel_bind(&mut buf, tid, n, peer, s),
            _ => return,
        }
        let reliability = if self.transport.is_stream() {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        let first = self.txns.start(now, buf, reliability, kind);
        self.out.push_back(first);
    }

    fn fail(&mut self, f: TurnFailure) {
        if matches!(
            self.state,
            TurnState::Allocating | TurnState::Allocated { .. }
        ) {
            self.state = TurnState::Failed(f.clone());
            self.events.push_back(TurnEvent::Failed(f));
            self.txns.clear();
        }
    }

    /// The connection to the server broke (TCP/TLS closed, ICMP error).
    pub fn unreachable(&mut self, why: &str) {
        self.fail(TurnFailure::Unreachable(why.to_string()));
    }

    /// Bytes (one datagram, or one whole frame on TCP/TLS) from the
    /// server. Returns a peer's data if it was a Data indication or
    /// ChannelData.
    pub fn handle_from_server(&mut self, now: Instant, data: &[u8]) -> Option<PeerData> {
        match crate::wire::classify_bytes(data)? {
            crate::wire::FrameKind::ChannelData => {
                let cd = ChannelData::parse(data).ok()?;
                let peer = self
                    .chans
                    .iter()
                    .find(|(_, c)| c.number == cd.channel)
                    .map(|(p, _)| *p)?;
                return Some(PeerData {
                    peer,
                    data: cd.data.to_vec(),
                });
            }
            crate::wire::FrameKind::Stun => {}
        }
        let msg = Message::parse(data).ok()?;
        if msg.class() == Class::Indication && msg.method() == Method::DATA {
            let peer = msg.xor_peer_address().ok()??;
            let d = msg.data()?;
            return Some(PeerData {
                peer,
                data: d.to_vec(),
            });
        }
        let kind = *self.txns.response_to(&msg)?;
        let code = match msg.class() {
            Class::Success => 200,
            _ => msg.error_code().ok().flatten().map_or(400, |e| e.code),
        };
        // Authenticated responses must verify (RFC 8489 §9.2.5); a forged
        // one is ignored: the request goes on being retransmitted, and
        // times out.
        if code != 401 && code != 438 {
            if let Some(s) = &self.session {
                if !s.verify(&msg) {
                    return None;
                }
            }
        }
        self.txns.finish(msg.transaction_id());
        self.on_response(now, kind, code, &msg);
        None
    }

    fn on_response(&mut self, now: Instant, kind: Kind, code: u16, msg: &Message<'_>) {
        let reason = msg
            .error_code()
            .ok()
            .flatten()
            .map(|e| e.reason.to_string())
            .unwrap_or_default();
        match (kind, code) {
            (
                Kind::Allocate {
                    authenticated: false,
                },
                401,
            ) => match Session::from_challenge(msg, self.creds.clone(), self.sign) {
                Some(s) => {
                    self.session = Some(s);
                    self.request(
                        now,
                        Kind::Allocate {
                            authenticated: true,
                        },
                    );
                }
                None => self.fail(TurnFailure::Error(
                    401,
                    "challenge without realm/nonce".into(),
                )),
            },
            (_, 438) => {
                // Stale nonce: take the new one and try again.
                if let Some(s) = &mut self.session {
                    if s.update_nonce(msg) {
                        self.request(now, kind);
                        return;
                    }
                }
                self.fail(TurnFailure::Error(438, reason));
            }
            (Kind::Allocate { .. }, 200) => {
                let (Ok(Some(relayed)), Ok(Some(mapped))) =
                    (msg.xor_relayed_address(), msg.xor_mapped_address())
                else {
                    return self.fail(TurnFailure::Error(200, "success without addresses".into()));
                };
                if let Ok(Some(l)) = msg.lifetime() {
                    self.lifetime = Duration::from_secs(u64::from(l));
                }
                self.refresh_at = Some(now + refresh_margin(self.lifetime));
                self.state = TurnState::Allocated { relayed, mapped };
                self.events
                    .push_back(TurnEvent::Allocated { relayed, mapped });
            }
            (Kind::Allocate { .. }, c) => self.fail(TurnFailure::Error(c, reason)),
            (Kind::Refresh, 200) => {
                if let Ok(Some(l)) = msg.lifetime() {
                    self.lifetime = Duration::from_secs(u64::from(l));
                }
                if self.lifetime.is_zero() {
                    self.state = TurnState::Closed;
                    self.refresh_at = None;
                } else {
                    self.refresh_at = Some(now + refresh_margin(self.lifetime));
                }
            }
            (Kind::Refresh, c) => self.fail(TurnFailure::Error(c, reason)),
            (Kind::Permission(ip), 200) => {
                self.perms.insert(
                    ip,
                    Perm::Installed {
                        refresh_at: now + Duration::from_secs(240),
                    },
                );
                for (peer, data) in self.queued.remove(&ip).unwrap_or_default() {
                    self.wrap(now, peer, &data);
                }
            }
            (Kind::Permission(ip), c) => {
                self.perms.insert(ip, Perm::Refused(c));
                self.queued.remove(&ip);
                self.events
                    .push_back(TurnEvent::PermissionRefused { ip, code: c });
            }
            (Kind::Channel(peer, n), 200) => {
                self.chans.insert(
                    peer,
                    Chan {
                        number: n,
                        bound: true,
                        refresh_at: now + Duration::from_secs(540),
                    },
                );
                // ChannelBind also installs the permission (RFC 8656 §11.2).
                self.perms.entry(peer.ip()).or_insert(Perm::Installed {
                    refresh_at: now + Duration::from_secs(240),
                });
            }
            (Kind::Channel(peer, _), _) => {
                // Keep using Send indications for this peer.
                self.chans.remove(&peer);
            }
        }
    }

    /// Ask for a permission towards `ip` now (ICE agents do this for every
    /// remote candidate, so checks from the peer can come in).
    pub fn permit(&mut self, now: Instant, ip: IpAddr) {
        if !matches!(self.state, TurnState::Allocated { .. }) || self.perms.contains_key(&ip) {
            return;
        }
        self.perms.insert(ip, Perm::Pending);
        self.request(now, Kind::Permission(ip));
    }

    /// Whether the server refused the permission for `ip`, and with what.
    pub fn refused(&self, ip: IpAddr) -> Option<u16> {
        match self.perms.get(&ip) {
            Some(Perm::Refused(c)) => Some(*c),
            _ => None,
        }
    }

    /// Send `data` to `peer` through the relay: ChannelData once a channel
    /// is bound, a Send indication before; held briefly while the
    /// permission is being installed.
    pub fn send_to(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        if !matches!(self.state, TurnState::Allocated { .. }) {
            return;
        }
        match self.perms.get(&peer.ip()).copied() {
            None | Some(Perm::Pending) => {
                self.permit(now, peer.ip());
                let q = self.queued.entry(peer.ip()).or_default();
                if q.len() < MAX_QUEUED {
                    q.push((peer, data.to_vec()));
                }
            }
            Some(Perm::Refused(_)) => {}
            Some(Perm::Installed { .. }) => self.wrap(now, peer, data),
        }
    }

    fn wrap(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        let pad = self.transport.is_stream();
        match self.chans.get(&peer) {
            Some(c) if c.bound => {
                let mut buf = Vec::with_capacity(data.len() + 8);
                ChannelData::encode(c.number, data, pad, &mut buf);
                self.out.push_back(buf);
            }
            Some(_) => self.send_indication(peer, data),
            None => {
                self.send_indication(peer, data);
                if self.next_channel <= 0x4FFF {
                    let n = self.next_channel;
                    self.next_channel += 1;
                    self.chans.insert(
                        peer,
                        Chan {
                            number: n,
                            bound: false,
                            refresh_at: now,
                        },
                    );
                    self.request(now, Kind::Channel(peer, n));
                }
            }
        }
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut buf = Vec::with_capacity(data.len() + 48);
        let tid = self.tid();
        client::send_indication(&mut buf, tid, peer, data);
        self.out.push_back(buf);
    }

    /// Delete the allocation (Refresh with LIFETIME 0).
    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, TurnState::Allocated { .. }) {
            self.lifetime = Duration::ZERO;
            self.request(now, Kind::Refresh);
        }
    }

    /// Bytes to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.txns.poll_timeout();
        let mut consider = |d: Instant| t = Some(t.map_or(d, |t| t.min(d)));
        if let Some(r) = self.refresh_at {
            consider(r);
        }
        for p in self.perms.values() {
            if let Perm::Installed { refresh_at } = p {
                consider(*refresh_at);
            }
        }
        for c in self.chans.values().filter(|c| c.bound) {
            consider(c.refresh_at);
        }
        t
    }

    /// Retransmit, time out, refresh.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.txns.poll_due(now) {
            let kind = match due {
                Due::Retransmit { request, .. } => {
                    self.out.push_back(request);
                    continue;
                }
                Due::TimedOut { context, .. } => context,
            };
            match kind {
                Kind::Allocate { .. } | Kind::Refresh => self.fail(TurnFailure::Timeout),
                Kind::Permission(ip) => {
                    self.perms.remove(&ip);
                    self.queued.remove(&ip);
                }
                Kind::Channel(peer, _) => {
                    self.chans.remove(&peer);
                }
            }
        }
        if !matches!(self.state, TurnState::Allocated { .. }) {
            return;
        }
        if self.refresh_at.is_some_and(|r| r <= now) {
            self.refresh_at = None;
            self.request(now, Kind::Refresh);
        }
        let perms: Vec<IpAddr> = self
            .perms
            .iter()
            .filter(|(_, p)| matches!(p, Perm::Installed { refresh_at } if *refresh_at <= now))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in perms {
            self.perms.insert(ip, Perm::Pending);
            self.request(now, Kind::Permission(ip));
        }
        let chans: Vec<(SocketAddr, u16)> = self
            .chans
            .iter()
            .filter(|(_, c)| c.bound && c.refresh_at <= now)
            .map(|(p, c)| (*p, c.number))
            .collect();
        for (peer, n) in chans {
            if let Some(c) = self.chans.get_mut(&peer) {
                c.refresh_at = now + Duration::from_secs(540);
            }
            self.request(now, Kind::Channel(peer, n));
        }
    }

    /// A random 64-bit value from this client's RNG (for callers that want
    /// one stream of randomness).
    pub fn random(&mut self) -> u64 {
        self.rng.random()
    }
}

/// Refresh a minute before expiry (or at half the lifetime if shorter).
fn refresh_margin(lifetime: Duration) -> Duration {
    if lifetime > Duration::from_secs(120) {
        lifetime - Duration::from_secs(60)
    } else {
        lifetime / 2
    }
}
