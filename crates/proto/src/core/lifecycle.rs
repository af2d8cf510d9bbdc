//! An allocation's life after Allocate: expiry of the allocation, its
//! permissions and channels and of port reservations (the timer heap), the
//! ways it ends (Refresh 0, expiry, a closed TCP/TLS connection, the admin
//! API, shutdown), and the admin API's view of it.

use std::net::SocketAddr;
use std::time::Instant;

use super::timers::Due;
use super::{EndReason, Event, Family, FiveTuple, Now, RelayId, RelayIo, Server, SessionInfo};

impl Server {
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
                    let Some(a) = self.table.get_mut(slot) else {
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
                    self.mirror(slot, now.mono);
                }
            }
        }
    }

    /// A TCP/TLS connection closed: its allocation goes (RFC 8656 §3.1).
    pub fn connection_closed<I: RelayIo>(&mut self, now: Now, ft: &FiveTuple, io: &mut I) {
        // An Allocate of it waiting for the cluster goes too (issue 14).
        self.fleet.forget(ft);
        if let Some(slot) = self.table.slot_of(ft) {
            self.delete(slot, now.mono, EndReason::ConnectionClosed, io);
        }
    }

    /// Whether the client of `ft` holds an allocation here (the shell
    /// closes idle TCP/TLS connections that hold none).
    pub fn has_allocation(&self, ft: &FiveTuple) -> bool {
        self.table.slot_of(ft).is_some()
    }

    /// The allocations on this core, for the admin API.
    pub fn sessions(&self, now: Now) -> Vec<SessionInfo> {
        let now = now.mono;
        self.table
            .iter()
            .map(|(_, a)| SessionInfo {
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
        match self.table.find_id(id) {
            Some(slot) => {
                self.delete(slot, now.mono, EndReason::Admin, io);
                true
            }
            None => false,
        }
    }

    /// End every allocation (shutdown).
    pub fn delete_all<I: RelayIo>(&mut self, now: Now, io: &mut I) {
        for slot in 0..self.table.slots() {
            self.delete(slot, now.mono, EndReason::Shutdown, io);
        }
    }

    /// End the allocation in `slot` (nothing if the slot is empty): its
    /// relay socket closes, its view leaves the directory, its port and
    /// quota go back, an end event is queued.
    pub(super) fn delete<I: RelayIo>(
        &mut self,
        slot: u32,
        now: Instant,
        why: EndReason,
        io: &mut I,
    ) {
        let Some(a) = self.table.remove(slot) else {
            return;
        };
        io.close(RelayId(slot));
        self.unmirror(&a);
        // Out of the directory before the port can go to anyone else.
        let traffic = match self.shared.directory.withdraw(a.advertised) {
            Some(v) if v.id == a.id => v.traffic.added_to(a.traffic),
            _ => a.traffic,
        };
        self.shared
            .pool(Family::of(a.relay))
            .release(a.relay.port());
        self.shared.release(&a.quota_user);
        self.counters.ended(why);
        self.counters
            .active(a.ft.transport, Family::of(a.relay))
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

    /// Re-file an allocation in the timer heap if its earliest deadline
    /// moved earlier (a later one is found when the current entry fires).
    pub(super) fn reschedule(&mut self, slot: u32) {
        if let Some(a) = self.table.get_mut(slot) {
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
}
