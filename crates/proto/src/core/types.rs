//! The types the core's interface is written in: the time, a client's
//! five-tuple, relay ids, transports and port ranges, what the entry
//! points return, the side effects the core asks of the shell, and the
//! events and session records it reports.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::allocation::Traffic;
use super::counters::EndReason;

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
    pub client: ClientAddr,
    /// The server's own address the client reached (a listener's).
    pub server: SocketAddr,
    pub transport: Transport,
}

/// An IP address family: of a relay, a peer, a port pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: SocketAddr) -> Family {
        Family::of_ip(addr.ip())
    }

    pub fn of_ip(ip: IpAddr) -> Family {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    /// The metric label value.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// A client's transport address (RFC 8656 §2): where its datagrams come
/// from, or the remote end of its TCP/TLS connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr(pub SocketAddr);

/// A peer's transport address as an allocation sees it (RFC 8656 §2):
/// where relayed data goes to, or came from. One of this server's own
/// relays may be the peer (two clients relaying to each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(pub SocketAddr);

/// A channel number (RFC 8656 §12: 0x4000-0x4FFF, or 0x4000-0x7FFF as
/// RFC 5766 allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(pub u16);

impl PeerAddr {
    #[inline]
    pub fn ip(self) -> IpAddr {
        self.0.ip()
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
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
        fragmentation: Fragmentation,
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

/// Whether the datagrams a relay socket sends may be fragmented: RFC 8656
/// §7.2, DONT-FRAGMENT asks that they leave with the DF bit set and are
/// never fragmented locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragmentation {
    Allowed,
    DontFragment,
}

/// What the shell must do after [`Server::handle_client`](super::Server::handle_client).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOutput<'a> {
    /// Nothing to send (indication, or a dropped packet, already counted).
    None,
    /// Send the output buffer to the client on the same five-tuple.
    Reply,
    /// Send `data` from the relay socket of `relay` to `peer`.
    ToPeer {
        relay: RelayId,
        peer: PeerAddr,
        data: &'a [u8],
    },
    /// Send `out[range]` to the client of `ft`. The peer was one of this
    /// server's relays (two of its clients talking relay to relay): an
    /// allocation of this core, or another shard's published in the relay
    /// directory ([`super::directory`]). The core applied that allocation's
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

/// What the shell must do after [`Server::handle_peer`](super::Server::handle_peer).
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

/// Bytes [`Server::handle_peer`](super::Server::handle_peer) needs free in front of the payload: a
/// STUN header, XOR-PEER-ADDRESS (IPv6) and the DATA attribute header.
pub const PEER_HEADROOM: usize = 20 + 24 + 4;
/// Bytes it needs free after the payload (padding to four bytes).
pub const PEER_TAILROOM: usize = 4;

/// RFC 8656 §7.2: the default allocation lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §7.2: a reserved port is held for about 30 seconds.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

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
    pub channels: Vec<(ChannelNumber, PeerAddr)>,
    pub traffic: Traffic,
}

/// Client transports, RFC 8656 §3.1. Written `udp`, `tcp`, `tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// TCP and TLS carry STUN framed on a byte stream (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            _ => Err(format!(
                "unknown variant `{s}`, expected one of `udp`, `tcp`, `tls`"
            )),
        }
    }
}

/// An inclusive port range written "LOW-HIGH".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.high - self.low) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, p: u16) -> bool {
        (self.low..=self.high).contains(&p)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid port range `{s}`, expected \"LOW-HIGH\" such as \"49152-65535\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let low: u16 = a.trim().parse().map_err(|_| bad())?;
        let high: u16 = b.trim().parse().map_err(|_| bad())?;
        if low == 0 || low > high {
            return Err(format!("invalid port range `{s}`: need 1 <= LOW <= HIGH"));
        }
        Ok(PortRange { low, high })
    }
}

/// Written as "LOW-HIGH".
impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
