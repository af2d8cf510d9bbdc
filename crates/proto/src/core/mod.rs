//! The sans-IO server core: STUN Binding (RFC 8489) and TURN (RFC 8656).
//!
//! The core does no I/O, reads no clock and draws no global randomness.
//! The shell passes the time ([`Now`]) into every call, gives the core a
//! seeded RNG at construction, and performs the two side effects the core
//! asks for through [`RelayIo`] (bind and close a relay socket). The
//! driving loop:
//!
//! 1. bytes from a client → [`Server::handle_client`] → [`ClientOutput`],
//!    the final route: a reply for the client in `out`; data to send from
//!    a relay socket to a peer (borrowed from the input, no copy); or, when
//!    the peer is one of this server's relays (this core's, or another
//!    shard's published in the [`directory`]), the message for that
//!    relay's client, framed in `out` (one copy, no trip through the
//!    kernel);
//! 2. a datagram on a relay socket → [`Server::handle_peer`] →
//!    [`PeerOutput`]: the ChannelData or Data indication for the client,
//!    written in place in the headroom in front of the payload;
//! 3. when [`Server::poll_timeout`] passes → [`Server::handle_timeout`]
//!    (expiry of allocations, permissions, channels, reservations);
//! 4. [`Server::poll_event`] for allocation start/end (logs, admin);
//! 5. [`Counters`] are read by the shell whenever it publishes metrics.
//!
//! Tests drive exactly these calls with a manual clock.

pub mod allocation;
pub mod auth;
mod binding;
pub mod counters;
pub mod directory;
pub mod policy;
pub mod shared;
mod slots;
mod timers;
mod turn;
mod types;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use allocation::{Allocation, Traffic};
pub use auth::{Authenticator, Credentials, StaticCredential};
pub use binding::canonical;
pub use counters::{AuthFailureReason, Counter, Counters, DropReason, EndReason, Gauge};
pub use policy::PeerPolicy;
pub use shared::Shared;
pub use types::{PortRange, Transport};

use crate::wire::{
    CHANNEL_DATA_HEADER_LEN, Class, FrameKind, IntegrityKey, Message, MessageBuilder, Method, attr,
};
use timers::{Due, Timers};

/// The time, as the shell read it: a monotonic instant for deadlines and
/// Unix seconds for REST usernames and nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix: u64,
}

impl Now {
    pub fn new(mono: Instant, unix: u64) -> Self {
        Now { mono, unix }
    }

    /// `d` later on both clocks.
    pub fn plus(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            unix: self.unix + d.as_secs(),
        }
    }
}

/// The five-tuple that identifies a client's association with the server
/// (RFC 8656 §2): client address, server address and transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Handle of a relay socket: the slot of its allocation. The shell keeps
/// its sockets in a table indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u32);

/// The side effects the core needs from the shell, synchronously.
pub trait RelayIo {
    /// Bind a UDP relay socket for `relay` on `addr`. An error (port taken
    /// by another process) makes the core try another port.
    fn bind(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> std::io::Result<()>;
    /// The allocation behind `relay` is gone: close its socket.
    fn close(&mut self, relay: RelayId);
    /// Bind `addr` now and keep it for a reservation (RFC 8656 §7.2: the
    /// port after an EVEN-PORT allocation with the R bit), so no other
    /// process can take it before the RESERVATION-TOKEN comes back; a
    /// later [`RelayIo::bind`] of the same address, from any shard, uses
    /// what was kept. An error (port taken) makes the core try another
    /// pair. The default keeps nothing.
    fn hold(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let _ = addr;
        Ok(())
    }
    /// The reservation of `addr` ended unused: let go of what
    /// [`RelayIo::hold`] kept.
    fn release_hold(&mut self, addr: SocketAddr) {
        let _ = addr;
    }
}

/// What the shell must do after [`Server::handle_client`].
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOutput<'a> {
    /// Nothing to send (indication, or a dropped packet, already counted).
    None,
    /// Send the output buffer to the client on the same five-tuple.
    Reply,
    /// Send `data` from the relay socket of `relay` to `peer`.
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// Send `out[range]` to the client of `ft`. The peer was one of this
    /// server's relays (two of its clients talking relay to relay): an
    /// allocation of this core, or another shard's published in the relay
    /// directory ([`directory`]). The core applied that allocation's
    /// permission and channel rules and framed the data for its client
    /// (ChannelData or a Data indication from the sender's relayed
    /// address) in `out`, after what `out` held before the call: exactly
    /// what that client would get had the datagram crossed the kernel from
    /// relay socket to relay socket.
    ToClient {
        ft: FiveTuple,
        range: std::ops::Range<usize>,
    },
}

/// What the shell must do after [`Server::handle_peer`].
#[derive(Debug, PartialEq, Eq)]
pub enum PeerOutput<'b> {
    None,
    /// Send `data` (ChannelData or a Data indication) to the client of
    /// `ft`.
    ToClient {
        ft: FiveTuple,
        data: &'b [u8],
    },
}

/// Bytes [`Server::handle_peer`] needs free in front of the payload: a
/// STUN header, XOR-PEER-ADDRESS (IPv6) and the DATA attribute header.
pub const PEER_HEADROOM: usize = 20 + 24 + 4;
/// Bytes it needs free after the payload (padding to four bytes).
pub const PEER_TAILROOM: usize = 4;

/// Whether `len` bytes from `peer` fit a Data indication: a STUN body
/// (XOR-PEER-ADDRESS and DATA, padded) of at most 65532 bytes, the largest
/// multiple of four the 16-bit length field can hold. An IPv6 peer can
/// send up to 65527 bytes in one datagram; more than 65504 do not fit.
fn data_indication_fits(len: usize, peer: SocketAddr) -> bool {
    let addr = if peer.is_ipv6() { 20 } else { 8 };
    4 + addr + 4 + crate::wire::pad4(len) <= crate::wire::MAX_FRAME - crate::wire::HEADER_LEN
}

/// RFC 8656 §7.2: the default allocation lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §7.2: a reserved port is held for about 30 seconds.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A relay address family the server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayFamily {
    pub bind: IpAddr,
    /// XOR-RELAYED-ADDRESS IP: `public_ip`, else `bind`; the shell
    /// replaces a wildcard with the host's primary address at start.
    pub advertised: IpAddr,
    /// Relay sockets bind the wildcard and no public address is set: then
    /// the address the client reached the server at (if known and of this
    /// family) is the one advertised, since it is one peers on that
    /// network can reach too.
    pub follow_local: bool,
}

impl RelayFamily {
    /// The IP to put in XOR-RELAYED-ADDRESS for a client that reached the
    /// server at `server`.
    pub fn advertised_for(&self, server: SocketAddr) -> IpAddr {
        let local = server.ip();
        if self.follow_local && !local.is_unspecified() && local.is_ipv6() == self.bind.is_ipv6() {
            local
        } else {
            self.advertised
        }
    }
}

/// What the core needs from the configuration, resolved once (and again
/// on reload).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub realm: String,
    /// SOFTWARE attribute, or `None` to send none.
    pub software: Option<String>,
    pub relay4: Option<RelayFamily>,
    pub relay6: Option<RelayFamily>,
    pub max_lifetime: Duration,
    pub policy: PeerPolicy,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Bytes per second per allocation; 0 = unlimited.
    pub max_bytes_per_sec: u64,
    /// ChannelBind only in RFC 8656's 0x4000-0x4FFF (else RFC 5766's
    /// 0x4000-0x7FFF).
    pub strict_channel_numbers: bool,
    /// While draining, new Allocates are turned away (300 with
    /// ALTERNATE-SERVER if one is set, else 486).
    pub draining: bool,
    pub alternate_servers: Vec<SocketAddr>,
    /// Not used by the core: tells the shell to mask client addresses in
    /// its logs (kept here so a reload changes it with the rest).
    pub redact_client_ips: bool,
    /// Publish allocations with UDP clients in the relay directory so
    /// other shards deliver to them directly ([`directory`]); pointless
    /// with one shard, so the shell turns it off then.
    pub publish_relays: bool,
}

/// Allocation start and end, for logs and the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    AllocationCreated {
        id: u64,
        ft: FiveTuple,
        relay: SocketAddr,
        username: String,
        lifetime: Duration,
    },
    AllocationEnded {
        id: u64,
        ft: FiveTuple,
        relay: SocketAddr,
        username: String,
        reason: EndReason,
        duration: Duration,
        traffic: Traffic,
    },
}

/// Events kept for the shell before the oldest are dropped, at least (see
/// [`Server::push_event`]).
const MAX_EVENTS: usize = 4096;

/// An allocation as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub ft: FiveTuple,
    pub username: String,
    pub relay: SocketAddr,
    pub advertised: SocketAddr,
    pub age: Duration,
    pub expires_in: Duration,
    pub permissions: Vec<IpAddr>,
    pub channels: Vec<(u16, SocketAddr)>,
    pub traffic: Traffic,
}

/// Everything [`Server::new`] needs.
pub struct Setup {
    pub cfg: Arc<CoreConfig>,
    pub creds: Arc<Credentials>,
    pub shared: Arc<Shared>,
    pub counters: Arc<Counters>,
    /// Seeds the core's RNG (relay ports, tokens, transaction IDs).
    pub seed: u64,
    /// Key of the stateless nonces; shards of one server share it.
    pub nonce_key: [u8; 32],
    /// Tags allocation ids so ids of different shards never collide.
    pub shard: u16,
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One server core. The shell owns one per shard (thread).
pub struct Server {
    cfg: Arc<CoreConfig>,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
    auth: Authenticator,
    rng: StdRng,
    slots: slots::Slots<Allocation>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_ft: FastMap<FiveTuple, u32>,
    /// Live allocations by advertised relay address (relay to relay).
    by_port: slots::ByPort,
    timers: Timers,
    events: VecDeque<Event>,
    next_id: u64,
}

impl Server {
    pub fn new(s: Setup) -> Self {
        Server {
            by_port: slots::ByPort::new(s.shared.pool(false).range()),
            auth: Authenticator::new(s.creds, &s.nonce_key),
            cfg: s.cfg,
            counters: s.counters,
            shared: s.shared,
            rng: StdRng::seed_from_u64(s.seed),
            slots: slots::Slots::default(),
            generations: Vec::new(),
            free: Vec::new(),
            by_ft: FastMap::default(),
            timers: Timers::default(),
            events: VecDeque::new(),
            next_id: u64::from(s.shard) << 48,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Derived keys cached by the authenticator.
    pub fn cached_keys(&self) -> usize {
        self.auth.cached_keys()
    }

    /// Entries in the timer heap (live and stale), for memory tests.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swap in a new configuration (reload): peer policy, quotas, caps,
    /// lifetimes, draining. Live allocations keep relaying.
    pub fn set_config(&mut self, cfg: Arc<CoreConfig>) {
        self.cfg = cfg;
    }

    /// Swap in new credentials (reload). Live allocations keep their keys.
    pub fn set_credentials(&mut self, creds: Arc<Credentials>) {
        self.auth.set_credentials(creds);
    }

    /// Allocations alive on this core.
    pub fn allocation_count(&self) -> usize {
        self.by_ft.len()
    }

    /// The earliest instant [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Next allocation start/end event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queue an event. The queue is bounded so a shell that never polls
    /// does not grow without limit, but the bound must hold what a single
    /// call can queue when the shell does poll after every call: one end
    /// per allocation of this core ([`Server::delete_all`] at shutdown, a
    /// timer batch). Twice the core's allocation high-water mark (its
    /// slot table) covers that and stays bounded by `max_allocations`.
    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS.max(2 * self.slots.len()) {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Handle one datagram (UDP) or one whole frame (TCP/TLS) from a
    /// client. A reply is appended to `out` (which the caller clears).
    ///
    /// RFC 8489 §6.3 and RFC 8656 §12: the first two bits tell STUN (00)
    /// from ChannelData (01); anything else, or a message that is not
    /// well-formed, is dropped silently and counted, as is one whose
    /// FINGERPRINT does not match (§14.7). A malformed packet never costs
    /// more bytes out than it brought in.
    pub fn handle_client<'a, I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> ClientOutput<'a> {
        match crate::wire::classify_bytes(data) {
            Some(FrameKind::Stun) => {}
            Some(FrameKind::ChannelData) => {
                return self.client_channel_data(now.mono, ft, data, out);
            }
            None => {
                self.counters.dropped(DropReason::Malformed);
                return ClientOutput::None;
            }
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.dropped(DropReason::Malformed);
                return ClientOutput::None;
            }
        };
        if msg.check_fingerprint() == Some(false) {
            self.counters.dropped(DropReason::BadFingerprint);
            return ClientOutput::None;
        }
        match (msg.class(), msg.method()) {
            (Class::Request, Method::BINDING) => {
                // RFC 8489 §6.3.1: unknown comprehension-required
                // attributes → 420. Binding needs no authentication.
                let unknown = msg.unknown_comprehension_required(attr::known_to_server);
                if !unknown.is_empty() {
                    let mut b = MessageBuilder::response(out, &msg, Class::Error);
                    b.error_code(420, "Unknown Attribute")
                        .unknown_attributes(unknown.as_slice());
                    self.finish(b, &msg, None);
                    self.counters.answered(msg.method(), 420);
                    return ClientOutput::Reply;
                }
                binding::respond(self, &msg, ft, out)
            }
            (Class::Request, _) => self.turn_request(now, ft, &msg, out, io),
            (Class::Indication, Method::SEND) => self.send_indication(now.mono, ft, &msg, out),
            _ => {
                // A Binding indication is a keepalive and gets nothing
                // back (RFC 8489 §6.3.2); responses are not ours.
                self.counters.dropped(DropReason::Unexpected);
                ClientOutput::None
            }
        }
    }

    /// Handle a datagram that arrived on the relay socket of `relay` from
    /// `peer` (RFC 8656 §11.3 and §12.6). The payload is
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]`; `buf` must have
    /// [`PEER_TAILROOM`] spare bytes after it. The message for the client
    /// is written in place around the payload: a ChannelData header if the
    /// peer has a channel, else a Data indication.
    pub fn handle_peer<'b>(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
        buf: &'b mut [u8],
        len: usize,
    ) -> PeerOutput<'b> {
        match self.peer_in(now.mono, relay.0, peer, buf, len) {
            Some((ft, range)) => PeerOutput::ToClient {
                ft,
                data: &buf[range],
            },
            None => PeerOutput::None,
        }
    }

    /// [`Server::handle_peer`] for the allocation in `slot`: the client's
    /// five-tuple and where its message lies in `buf`, or `None` (dropped
    /// and counted).
    fn peer_in(
        &mut self,
        now: Instant,
        slot: u32,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, std::ops::Range<usize>)> {
        let Some(Some(a)) = self.slots.get_mut(slot as usize) else {
            self.counters.dropped(DropReason::NoAllocation);
            return None;
        };
        if buf.len() < PEER_HEADROOM + len + PEER_TAILROOM {
            self.counters.dropped(DropReason::Malformed);
            return None;
        }
        if !a.permitted(peer.ip(), now) {
            self.counters.dropped(DropReason::NoPermission);
            return None;
        }
        let channel = a.channel_by_peer(peer, now).map(|ch| ch.number);
        if channel.is_none() && !data_indication_fits(len, peer) {
            // A STUN length field cannot say how long this Data
            // indication would be; sent anyway it would put a TCP/TLS
            // stream out of step for good.
            self.counters.dropped(DropReason::TooLarge);
            return None;
        }
        if !a.bucket.take(len, now) {
            self.counters.dropped(DropReason::Bandwidth);
            return None;
        }
        a.traffic.packets_in += 1;
        a.traffic.bytes_in += len as u64;
        let ft = a.ft;
        if !a.published && self.is_relay_address(peer) {
            // Relay-to-relay traffic from another shard: publish, so its
            // next datagrams come straight to the client.
            self.publish(slot, true);
        }
        Some((ft, self.frame_for_client(ft, channel, peer, buf, len)))
    }

    /// [`Server::handle_peer`] for an allocation of any shard published in
    /// the relay directory ([`directory`]): a datagram from one of our
    /// relays (`peer`, its advertised address) for the relay of `view`,
    /// framed for `view`'s UDP client in place in `buf` (same layout as
    /// for `handle_peer`). The same rules apply as on the owner's path
    /// (RFC 8656 §9 permission, §12.6 channel or Data indication);
    /// published allocations have no bandwidth cap. Returns the client's
    /// five-tuple and where the message lies in `buf`.
    pub fn handle_peer_published(
        &mut self,
        now: Now,
        view: &directory::RelayView,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, std::ops::Range<usize>)> {
        self.published_in(now.mono, view, peer, buf, len)
    }

    fn published_in(
        &mut self,
        now: Instant,
        view: &directory::RelayView,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, std::ops::Range<usize>)> {
        if buf.len() < PEER_HEADROOM + len + PEER_TAILROOM {
            self.counters.dropped(DropReason::Malformed);
            return None;
        }
        if !view.permitted(peer, now) {
            self.counters.dropped(DropReason::NoPermission);
            return None;
        }
        let channel = view.channel_by_peer(peer, now);
        if channel.is_none() && !data_indication_fits(len, peer) {
            self.counters.dropped(DropReason::TooLarge);
            return None;
        }
        view.traffic.add(len);
        let range = self.frame_for_client(view.client, channel, peer, buf, len);
        Some((view.client, range))
    }

    /// The slot of this core's allocation whose relay peers know as
    /// `addr`, if any.
    #[inline]
    fn own_relay(&self, addr: SocketAddr) -> Option<u32> {
        let slot = self.by_port.get(addr)?;
        match self.slots.get(slot as usize) {
            Some(Some(a)) if a.advertised == addr => Some(slot),
            _ => None,
        }
    }

    /// Whether `addr` may be one of this server's relays: a relay IP (bound
    /// or advertised) and a port of the relay range.
    fn is_relay_address(&self, addr: SocketAddr) -> bool {
        let fam = if addr.is_ipv4() {
            &self.cfg.relay4
        } else {
            &self.cfg.relay6
        };
        fam.is_some_and(|f| addr.ip() == f.bind || addr.ip() == f.advertised)
            && self
                .shared
                .pool(addr.is_ipv6())
                .range()
                .contains(addr.port())
    }

    /// Count a datagram from `peer` for the client of `ft` and write its
    /// framing around the payload at `buf[PEER_HEADROOM..][..len]`: a
    /// ChannelData header (padded over TCP/TLS, RFC 8656 §12.5) when
    /// `channel`, else a Data indication (§11.6). Returns the message's
    /// range in `buf`.
    fn frame_for_client(
        &mut self,
        ft: FiveTuple,
        channel: Option<u16>,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> std::ops::Range<usize> {
        self.counters.relayed_packets_in.inc();
        self.counters.relayed_bytes_in.add(len as u64);
        match channel {
            Some(number) => {
                let start = PEER_HEADROOM - CHANNEL_DATA_HEADER_LEN;
                buf[start..PEER_HEADROOM]
                    .copy_from_slice(&crate::wire::ChannelData::header(number, len));
                let mut end = PEER_HEADROOM + len;
                if ft.transport.is_stream() {
                    // RFC 8656 §12.5: padded to four bytes over TCP/TLS.
                    let padded = PEER_HEADROOM + crate::wire::pad4(len);
                    buf[end..padded].fill(0);
                    end = padded;
                }
                start..end
            }
            None => {
                let tid = crate::wire::TransactionId::random(&mut self.rng);
                crate::wire::data_indication_in_place(buf, PEER_HEADROOM, len, peer, tid)
            }
        }
    }

    /// Expire whatever is due at `now`: allocations (their relay sockets
    /// are closed through `io`), permissions, channels, reservations.
    pub fn handle_timeout<I: RelayIo>(&mut self, now: Now, io: &mut I) {
        while let Some((at, due)) = self.timers.pop_due(now.mono) {
            match due {
                Due::Reservation(token) => {
                    if let Some(r) = self.shared.expire_reservation(token, now.mono) {
                        io.release_hold(SocketAddr::new(r.ip, r.port));
                    }
                }
                Due::Allocation { slot, generation } => {
                    let Some(Some(a)) = self.slots.get_mut(slot as usize) else {
                        continue;
                    };
                    if a.generation != generation || a.next_check != at {
                        continue; // stale entry
                    }
                    if a.expires <= now.mono {
                        self.delete(slot, now.mono, EndReason::Expired, io);
                        continue;
                    }
                    let swept = a.sweep(now.mono);
                    let next = a.earliest_deadline();
                    a.next_check = next;
                    self.counters
                        .permissions_active
                        .add(-(swept.permissions_removed as i64));
                    self.counters
                        .channels_active
                        .add(-(swept.channels_deactivated as i64));
                    self.timers.push(next, Due::Allocation { slot, generation });
                }
            }
        }
    }

    /// A TCP/TLS connection closed: its allocation goes (RFC 8656 §3.1).
    pub fn connection_closed<I: RelayIo>(&mut self, now: Now, ft: &FiveTuple, io: &mut I) {
        if let Some(&slot) = self.by_ft.get(ft) {
            self.delete(slot, now.mono, EndReason::ConnectionClosed, io);
        }
    }

    /// The allocations on this core, for the admin API.
    pub fn sessions(&self, now: Now) -> Vec<SessionInfo> {
        let now = now.mono;
        self.slots
            .iter()
            .flatten()
            .map(|a| SessionInfo {
                id: a.id,
                ft: a.ft,
                username: a.username.to_string(),
                relay: a.relay,
                advertised: a.advertised,
                age: now.saturating_duration_since(a.created),
                expires_in: a.expires.saturating_duration_since(now),
                permissions: a
                    .permissions
                    .iter()
                    .filter(|p| now < p.expires)
                    .map(|p| p.ip)
                    .collect(),
                channels: a
                    .channels
                    .iter()
                    .filter(|c| c.active(now))
                    .map(|c| (c.number, c.peer))
                    .collect(),
                traffic: match self.shared.directory.get_own(a.advertised, a.id) {
                    Some(v) => v.traffic.added_to(a.traffic),
                    None => a.traffic,
                },
            })
            .collect()
    }

    /// Delete an allocation by admin id; false if none here.
    pub fn delete_session<I: RelayIo>(&mut self, id: u64, now: Now, io: &mut I) -> bool {
        let slot = self
            .slots
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| a.id == id));
        match slot {
            Some(s) => {
                self.delete(s as u32, now.mono, EndReason::Admin, io);
                true
            }
            None => false,
        }
    }

    /// End every allocation (shutdown).
    pub fn delete_all<I: RelayIo>(&mut self, now: Now, io: &mut I) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                self.delete(slot as u32, now.mono, EndReason::Shutdown, io);
            }
        }
    }

    fn delete<I: RelayIo>(&mut self, slot: u32, now: Instant, why: EndReason, io: &mut I) {
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.by_ft.remove(&a.ft);
        self.by_port.remove(a.advertised, slot);
        self.free.push(slot);
        io.close(RelayId(slot));
        // Out of the directory before the port can go to anyone else.
        let traffic = match self.shared.directory.withdraw(a.advertised) {
            Some(v) if v.id == a.id => v.traffic.added_to(a.traffic),
            _ => a.traffic,
        };
        self.shared.pool(a.relay.is_ipv6()).release(a.relay.port());
        self.shared.release(&a.quota_user);
        self.counters.ended(why);
        self.counters
            .active(a.ft.transport, a.relay.is_ipv6())
            .add(-1);
        self.counters
            .permissions_active
            .add(-(a.permissions.len() as i64));
        self.counters
            .channels_active
            .add(-(a.channels.iter().filter(|c| c.counted).count() as i64));
        self.push_event(Event::AllocationEnded {
            id: a.id,
            ft: a.ft,
            relay: a.relay,
            username: a.username.into(),
            reason: why,
            duration: now.saturating_duration_since(a.created),
            traffic,
        });
    }

    /// Publish the allocation in `slot` in the relay directory, or replace
    /// its view, when other shards may deliver to it directly: a UDP
    /// client and no bandwidth cap. With `first`, this is the allocation's
    /// first relay-to-relay datagram (see [`Server::handle_peer`]); without,
    /// only an allocation already published is republished (after every
    /// request that may have changed it). See [`directory`].
    fn publish(&mut self, slot: u32, first: bool) {
        let Some(Some(a)) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if !(a.published || first)
            || !self.cfg.publish_relays
            || a.ft.transport != Transport::Udp
            || !a.bucket.unlimited()
        {
            return;
        }
        a.published = true;
        let dir = &self.shared.directory;
        let traffic = dir
            .get_own(a.advertised, a.id)
            .map(|v| v.traffic.clone())
            .unwrap_or_default();
        dir.publish(directory::RelayView {
            id: a.id,
            advertised: a.advertised,
            client: a.ft,
            expires: a.expires,
            permissions: a.permissions.clone(),
            channels: a.channels.clone(),
            traffic,
        });
    }

    /// Re-file an allocation in the timer heap if its earliest deadline
    /// moved earlier (a later one is found when the current entry fires).
    fn reschedule(&mut self, slot: u32) {
        if let Some(Some(a)) = self.slots.get_mut(slot as usize) {
            let d = a.earliest_deadline();
            if d < a.next_check {
                a.next_check = d;
                self.timers.push(
                    d,
                    Due::Allocation {
                        slot,
                        generation: a.generation,
                    },
                );
            }
        }
    }

    /// The trailing attributes of every response: SOFTWARE unless hidden,
    /// MESSAGE-INTEGRITY(-SHA256) for an authenticated request, signed the
    /// way the request was (RFC 8489 §9.2.4), FINGERPRINT if the request
    /// carried one (§14.7).
    fn finish(
        &self,
        mut b: MessageBuilder<'_>,
        req: &Message<'_>,
        sign: Option<(&IntegrityKey, bool)>,
    ) {
        if let Some(sw) = &self.cfg.software {
            b.text(attr::SOFTWARE, sw);
        }
        match sign {
            Some((key, true)) => {
                b.integrity_sha256(key);
            }
            Some((key, false)) => {
                b.integrity(key);
            }
            None => {}
        }
        if req.has_fingerprint() {
            b.fingerprint();
        }
    }

    /// An error response, signed if `sign` is given.
    fn error(
        &self,
        req: &Message<'_>,
        out: &mut Vec<u8>,
        code: u16,
        reason: &str,
        sign: Option<(&IntegrityKey, bool)>,
    ) {
        let mut b = MessageBuilder::response(out, req, Class::Error);
        b.error_code(code, reason);
        self.finish(b, req, sign);
        self.counters.answered(req.method(), code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_size_limit() {
        let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        // IPv4: every UDP payload (at most 65507 bytes) fits.
        assert!(data_indication_fits(65507, v4));
        // IPv6: 20 + 4 + 20 + 4 + 65504 = 65552 = 20 + 65532, the most a
        // STUN length field can say.
        assert!(data_indication_fits(65504, v6));
        assert!(!data_indication_fits(65505, v6));
        assert!(!data_indication_fits(65527, v6));
        assert!(data_indication_fits(0, v6));
    }
}
