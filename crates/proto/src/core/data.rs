//! The data plane, both directions: client → peer (ChannelData and Send
//! indications, RFC 8656 §12.6 and §10.2), peer → client (§11.3, §12.6:
//! ChannelData or a Data indication, framed in place in headroom in front
//! of the payload), and relay → relay, when a client's peer is one of this
//! server's own relays: the core decides that route too, so the shell only
//! moves bytes (see [`Server::route`]). Also here: the owner's side of the
//! relay directory (publishing, see [`super::directory`]).

use std::ops::Range;
use std::time::Instant;

use super::policy::canonical_addr;
use super::{
    ChannelNumber, ClientOutput, DropReason, Family, FiveTuple, Now, PEER_HEADROOM, PEER_TAILROOM,
    PeerAddr, PeerOutput, RelayId, Server, Transport, directory,
};
use crate::wire::{CHANNEL_DATA_HEADER_LEN, ChannelData, Message};

/// Whether `len` bytes from `peer` fit a Data indication: a STUN body
/// (XOR-PEER-ADDRESS and DATA, padded) of at most 65532 bytes, the largest
/// multiple of four the 16-bit length field can hold. An IPv6 peer can
/// send up to 65527 bytes in one datagram; more than 65504 do not fit.
fn data_indication_fits(len: usize, peer: PeerAddr) -> bool {
    let addr = if peer.0.is_ipv6() { 20 } else { 8 };
    4 + addr + 4 + crate::wire::pad4(len) <= crate::wire::MAX_FRAME - crate::wire::HEADER_LEN
}

/// Why [`Server::publish`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Publish {
    /// The allocation's first permitted datagram from one of our relays
    /// (see [`Server::handle_peer`]): publish it.
    FirstRelayDatagram,
    /// A request may have changed it: republish it if it is published.
    Republish,
}

impl Server {
    /// Send indication, RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if
    /// a permission exists; otherwise drop (indications get no answer).
    pub(super) fn send_indication<'a>(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'a>,
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Some(slot) = self.table.slot_of(ft) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_peer_address(), msg.data()) else {
            self.counters.dropped(DropReason::Malformed);
            return ClientOutput::None;
        };
        let peer = PeerAddr(canonical_addr(peer));
        // The permission is per address; the port is judged here: one of
        // the server's own addresses only on a relay port (ChannelData
        // needs no check, its channel's peer was judged at ChannelBind).
        if !self.cfg.policy.own_port_allowed(peer.0) {
            self.counters.dropped(DropReason::PeerPolicy);
            return ClientOutput::None;
        }
        self.relay_out(now, slot, peer, data, out)
    }

    /// ChannelData from a client, RFC 8656 §12.6.
    pub(super) fn client_channel_data<'a>(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Ok(cd) = ChannelData::parse(data) else {
            self.counters.dropped(DropReason::Malformed);
            return ClientOutput::None;
        };
        let Some(slot) = self.table.slot_of(ft) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let Some(a) = self.table.get(slot) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let Some(ch) = a.channel_by_number(ChannelNumber(cd.channel), now) else {
            self.counters.dropped(DropReason::NoChannel);
            return ClientOutput::None;
        };
        let peer = ch.peer;
        self.relay_out(now, slot, peer, cd.data, out)
    }

    /// The common tail of client → peer relaying: permission, peer policy
    /// (counted separately when it is why there is no permission),
    /// bandwidth, accounting; then the route ([`Server::route`]).
    #[inline]
    fn relay_out<'a>(
        &mut self,
        now: Instant,
        slot: u32,
        peer: PeerAddr,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Some(a) = self.table.get_mut(slot) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        if !a.permitted(peer.ip(), now) {
            let why = if self.cfg.policy.allows(peer.ip()) {
                DropReason::NoPermission
            } else {
                DropReason::PeerPolicy
            };
            self.counters.dropped(why);
            return ClientOutput::None;
        }
        if !a.bucket.take(data.len(), now) {
            self.counters.dropped(DropReason::Bandwidth);
            return ClientOutput::None;
        }
        a.traffic.packets_out += 1;
        a.traffic.bytes_out += data.len() as u64;
        // What the receiving side sees as the peer, relay to relay.
        let from = PeerAddr(a.advertised);
        self.counters.relayed_packets_out.inc();
        self.counters.relayed_bytes_out.add(data.len() as u64);
        self.route(now, slot, from, peer, data, out)
    }

    /// Where `data`, leaving the relay in `slot` (which peers know as
    /// `from`) for `peer`, goes. To one of this core's relays: handed to
    /// that allocation as if it had arrived on its socket from `from`
    /// (`relayed_local`). To another shard's relay published in the relay
    /// directory: framed for its UDP client under its rules, to be sent
    /// from this shard's socket of the client's listener (the sockets of
    /// a listener share its address, so the client sees its five-tuple),
    /// without waking the other shard (`relayed_cross_shard`). Either way
    /// the one copy is into `out`. Anywhere else: through the kernel, from
    /// the relay socket, no copy.
    #[inline]
    fn route<'a>(
        &mut self,
        now: Instant,
        slot: u32,
        from: PeerAddr,
        peer: PeerAddr,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        if let Some(to) = self.table.by_advertised(peer.0) {
            self.counters.relayed_local.inc();
            return self
                .relay_to_relay(data, out, |s, buf, len| s.peer_in(now, to, from, buf, len));
        }
        if self.cfg.publish_relays {
            // One shard (publishing off): nothing is published, no lookup.
            if let Some(view) = self.shared.directory.get(peer.0) {
                self.counters.relayed_cross_shard.inc();
                return self.relay_to_relay(data, out, |s, buf, len| {
                    s.published_in(now, &view, from, buf, len)
                });
            }
        }
        ClientOutput::ToPeer {
            relay: RelayId(slot),
            peer,
            data,
        }
    }

    /// Copy `data` into `out` with room around it for the receiving
    /// allocation's framing, and let `frame` apply that allocation's rules
    /// and write it (see [`Server::handle_peer`]).
    fn relay_to_relay<'a>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        frame: impl FnOnce(&mut Self, &mut [u8], usize) -> Option<(FiveTuple, Range<usize>)>,
    ) -> ClientOutput<'a> {
        let base = out.len();
        out.resize(base + PEER_HEADROOM, 0);
        out.extend_from_slice(data);
        out.resize(base + PEER_HEADROOM + data.len() + PEER_TAILROOM, 0);
        match frame(self, &mut out[base..], data.len()) {
            Some((ft, r)) => ClientOutput::ToClient {
                ft,
                range: base + r.start..base + r.end,
            },
            None => {
                out.truncate(base);
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
        peer: PeerAddr,
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
        peer: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
        let Some(a) = self.table.get_mut(slot) else {
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
            self.publish(slot, Publish::FirstRelayDatagram);
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
    ///
    /// [`Server::handle_client`] takes this step itself when a client's
    /// peer is a published relay (a shell never needs to call it); it is
    /// public so tests and benchmarks can drive that step alone.
    pub fn handle_peer_published(
        &mut self,
        now: Now,
        view: &directory::RelayView,
        peer: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
        self.published_in(now.mono, view, peer, buf, len)
    }

    fn published_in(
        &mut self,
        now: Instant,
        view: &directory::RelayView,
        peer: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
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

    /// Whether `addr` may be one of this server's relays: a relay IP (bound
    /// or advertised) and a port of the relay range.
    pub(super) fn is_relay_address(&self, PeerAddr(addr): PeerAddr) -> bool {
        let family = Family::of(addr);
        self.cfg
            .relay(family)
            .is_some_and(|f| addr.ip() == f.bind || addr.ip() == f.advertised)
            && self.shared.pool(family).range().contains(addr.port())
    }

    /// Count a datagram from `peer` for the client of `ft` and write its
    /// framing around the payload at `buf[PEER_HEADROOM..][..len]`: a
    /// ChannelData header (padded over TCP/TLS, RFC 8656 §12.5) when
    /// `channel`, else a Data indication (§11.6). Returns the message's
    /// range in `buf`.
    fn frame_for_client(
        &mut self,
        ft: FiveTuple,
        channel: Option<ChannelNumber>,
        peer: PeerAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Range<usize> {
        self.counters.relayed_packets_in.inc();
        self.counters.relayed_bytes_in.add(len as u64);
        match channel {
            Some(ChannelNumber(number)) => {
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
                crate::wire::data_indication_in_place(buf, PEER_HEADROOM, len, peer.0, tid)
            }
        }
    }

    /// Publish the allocation in `slot` in the relay directory, or replace
    /// its view, when other shards may deliver to it directly: a UDP
    /// client and no bandwidth cap. See [`directory`].
    pub(super) fn publish(&mut self, slot: u32, when: Publish) {
        let Some(a) = self.table.get_mut(slot) else {
            return;
        };
        if !(a.published || when == Publish::FirstRelayDatagram)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_size_limit() {
        let v4 = PeerAddr("192.0.2.1:9".parse().unwrap());
        let v6 = PeerAddr("[2001:db8::1]:9".parse().unwrap());
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
