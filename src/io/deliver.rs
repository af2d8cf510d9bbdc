//! What the shell does with the core's answer to a packet from a client:
//! one match over [`ClientOutput`], shared by the batched UDP path
//! ([`super::udp`]) and the stream connections ([`super::stream`]). The
//! core has decided the route (a reply, a peer through the kernel, or a
//! client of one of this server's relays); this only moves bytes.

use std::net::SocketAddr;
use std::ops::Range;

use super::shard::{Shard, log_events};
use crate::config::Transport;
use turnpike_proto::core::{ClientOutput, DropReason, FiveTuple, RelayId, Server};
use turnpike_sys::batch::BATCH;

/// Sends that wait for the end of a batch of datagrams read from one UDP
/// listener socket: datagrams for that socket's clients (replies, and data
/// from one relay for another's client) leave in one `sendmmsg` from it;
/// data for peers leaves from the relay sockets, a run for one relay in
/// one `sendmmsg` (see [`super::udp`]).
pub(super) struct Batch<'d, 'r> {
    /// The listener socket's address.
    pub local: SocketAddr,
    /// Datagrams for its clients: (range in the output buffer, client).
    pub to_clients: &'r mut Vec<(Range<usize>, SocketAddr)>,
    /// Data for peers: (relay, peer, data), in arrival order.
    pub to_peers: [(RelayId, SocketAddr, &'d [u8]); BATCH],
    pub n_peers: usize,
}

impl<'d, 'r> Batch<'d, 'r> {
    pub(super) fn new(
        local: SocketAddr,
        to_clients: &'r mut Vec<(Range<usize>, SocketAddr)>,
    ) -> Self {
        to_clients.clear();
        Batch {
            local,
            to_clients,
            to_peers: [(RelayId(0), local, &[]); BATCH],
            n_peers: 0,
        }
    }
}

/// Act on `output`, the core's answer to a packet from the client of
/// `from`; what the core wrote for it lies in `out` from `start` on. With
/// `batch` (datagrams of one UDP listener socket) sends to that socket's
/// clients and to peers wait for the end of the batch; without (a stream
/// connection) everything leaves now. A send that cannot be made or
/// queued is dropped and counted.
pub(super) fn deliver<'d>(
    shard: &Shard,
    core: &mut Server,
    from: &FiveTuple,
    output: ClientOutput<'d>,
    out: &mut Vec<u8>,
    start: usize,
    batch: Option<&mut Batch<'d, '_>>,
) {
    match output {
        ClientOutput::None => {
            out.truncate(start);
            // An Allocate parked for the cluster's admission (issue 14)
            // has a question to send now.
            super::fleet::forward_admissions(shard, core);
        }
        ClientOutput::Reply => {
            // A request may have created or ended an allocation: log it
            // before the client hears.
            let fast = super::fastpath::apply(core, &shard.fastpath);
            log_events(shard, core, &fast);
            to_client(shard, from, start..out.len(), out, start, batch);
        }
        ClientOutput::ToClient { ft, range } => to_client(shard, &ft, range, out, start, batch),
        ClientOutput::ToPeer { relay, peer, data } => {
            out.truncate(start);
            match batch {
                Some(b) => {
                    b.to_peers[b.n_peers] = (relay, peer.0, data);
                    b.n_peers += 1;
                }
                None => {
                    if !shard.send_from_relay(relay, peer.0, data) {
                        shard.counters.dropped(DropReason::SendBufferFull);
                    }
                }
            }
        }
    }
}

/// Send `out[range]` to the client of `ft`: with the batch when it is a
/// client of the batch's socket, else now.
fn to_client(
    shard: &Shard,
    ft: &FiveTuple,
    range: Range<usize>,
    out: &mut Vec<u8>,
    start: usize,
    batch: Option<&mut Batch<'_, '_>>,
) {
    if let Some(b) = batch {
        if ft.transport == Transport::Udp && ft.server == b.local {
            b.to_clients.push((range, ft.client.0));
            return;
        }
    }
    if !shard.send_to_client(ft, &out[range]) {
        shard.counters.dropped(DropReason::SendBufferFull);
    }
    out.truncate(start);
}
