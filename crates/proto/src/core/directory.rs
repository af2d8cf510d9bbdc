//! The relay directory: what another shard needs to deliver to an
//! allocation whose client is on UDP, published by relayed address.
//!
//! Two clients of this server talking relay to relay (the usual WebRTC
//! case) often sit on different shards: SO_REUSEPORT spreads clients by a
//! hash of their address. Through the kernel, each such datagram would
//! leave shard A's relay socket, wake shard B, enter B's relay socket and
//! leave B's listener socket. Instead, shard A looks B's allocation up
//! here and sends to B's client itself, from its own socket of the same
//! listener (the SO_REUSEPORT sockets of a listener share its address, so
//! the client sees the same five-tuple). B's permission and channel rules
//! apply exactly as on B's own path (RFC 8656 §9, §12.6); only B's
//! allocations without a bandwidth cap are published (the token bucket is
//! the owner's alone), so capped allocations keep the kernel path.
//!
//! An allocation is published when it first receives permitted data from
//! an address of our relays (that first datagram came through the kernel),
//! so idle allocations and those talking only to outside peers cost
//! nothing here (~400 bytes each for those published). From then on the
//! owner republishes a snapshot after every request that may change it
//! (Refresh, CreatePermission, ChannelBind) and withdraws it before the
//! relay port goes back to the pool, so a slot only ever holds the view of
//! the allocation owning that port. Readers check expiry times against
//! their own clock, so expiries need no republishing. Reads are lock-free
//! (`arc-swap`); writes happen on requests and once per allocation on its
//! first relay-to-relay datagram, never otherwise per packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use arc_swap::Guard;
use smallvec::SmallVec;

use super::PortRange;
use super::allocation::{self, Channel, INLINE, Permission, Traffic};
use super::{ChannelNumber, FiveTuple, PeerAddr};

/// A published snapshot of one allocation.
#[derive(Debug)]
pub struct RelayView {
    /// The allocation's admin id.
    pub id: u64,
    /// XOR-RELAYED-ADDRESS: where peers send.
    pub advertised: SocketAddr,
    /// The client's five-tuple (always UDP).
    pub client: FiveTuple,
    pub expires: Instant,
    pub permissions: SmallVec<[Permission; INLINE]>,
    pub channels: SmallVec<[Channel; INLINE]>,
    /// What other shards delivered, kept across republishing.
    pub traffic: Arc<RemoteTraffic>,
}

impl RelayView {
    /// Whether the allocation is alive and `peer`'s IP has a live
    /// permission (RFC 8656 §9).
    #[inline]
    pub fn permitted(&self, peer: PeerAddr, now: Instant) -> bool {
        now < self.expires && allocation::permitted(&self.permissions, peer.ip(), now)
    }

    /// The active channel bound to `peer`, if any (RFC 8656 §12).
    #[inline]
    pub fn channel_by_peer(&self, peer: PeerAddr, now: Instant) -> Option<ChannelNumber> {
        allocation::channel_by_peer(&self.channels, peer, now).map(|c| c.number)
    }
}

/// Peer → client traffic of one allocation delivered by other shards.
#[derive(Debug, Default)]
pub struct RemoteTraffic {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl RemoteTraffic {
    #[inline]
    pub fn add(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `t` with these deliveries added to its peer → client side.
    pub fn added_to(&self, mut t: Traffic) -> Traffic {
        t.packets_in += self.packets.load(Ordering::Relaxed);
        t.bytes_in += self.bytes.load(Ordering::Relaxed);
        t
    }
}

/// One slot per relay port and family (ports are unique per family across
/// shards, see [`super::shared::PortPool`]).
pub struct Directory {
    low: u16,
    v4: Box<[ArcSwapOption<RelayView>]>,
    v6: Box<[ArcSwapOption<RelayView>]>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("ports", &self.v4.len())
            .finish()
    }
}

impl Directory {
    pub fn new(range: PortRange) -> Self {
        let slots = || (0..range.len()).map(|_| ArcSwapOption::empty()).collect();
        Directory {
            low: range.low,
            v4: slots(),
            v6: slots(),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Option<&ArcSwapOption<RelayView>> {
        let i = usize::from(addr.port().checked_sub(self.low)?);
        if addr.is_ipv4() {
            self.v4.get(i)
        } else {
            self.v6.get(i)
        }
    }

    /// Publish (or replace) the view of the allocation owning
    /// `view.advertised`'s port.
    pub fn publish(&self, view: RelayView) {
        if let Some(s) = self.slot(view.advertised) {
            s.store(Some(Arc::new(view)));
        }
    }

    /// Withdraw the view at `advertised`, returning it (for its traffic).
    pub fn withdraw(&self, advertised: SocketAddr) -> Option<Arc<RelayView>> {
        self.slot(advertised)?.swap(None)
    }

    /// The view published for exactly `addr`, if any.
    #[inline]
    pub fn get(&self, addr: SocketAddr) -> Option<ViewRef> {
        let g = self.slot(addr)?.load();
        match &*g {
            Some(v) if v.advertised == addr => Some(ViewRef(g)),
            _ => None,
        }
    }

    /// The view of allocation `id` at `advertised`, if published.
    pub fn get_own(&self, advertised: SocketAddr, id: u64) -> Option<ViewRef> {
        self.get(advertised).filter(|v| v.id == id)
    }
}

/// A view read from the directory (a cheap lock-free guard; hold it only
/// while handling one datagram).
pub struct ViewRef(Guard<Option<Arc<RelayView>>>);

impl std::ops::Deref for ViewRef {
    type Target = RelayView;

    fn deref(&self) -> &RelayView {
        self.0.as_ref().expect("checked by Directory::get")
    }
}
