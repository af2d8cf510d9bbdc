//! The allocation table of one core: the allocations in their slots, the
//! slots' generations (a timer entry names a slot at a generation, so it
//! cannot fire for a later allocation in the same slot), the free list,
//! and the two indexes the packet path uses: by client five-tuple (a hash,
//! for every packet from a client) and by advertised relay address (an
//! index by port, for data from one of our relays to another). An
//! allocation's slot is its [`RelayId`](super::RelayId).

use std::net::SocketAddr;

use super::allocation::Allocation;
use super::slots::Slots;
use super::{FiveTuple, PortRange};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub(super) struct Table {
    slots: Slots<Allocation>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_ft: FastMap<FiveTuple, u32>,
    by_port: ByPort,
}

impl Table {
    /// An empty table for relays on `ports`.
    pub(super) fn new(ports: PortRange) -> Self {
        Table {
            slots: Slots::default(),
            generations: Vec::new(),
            free: Vec::new(),
            by_ft: FastMap::default(),
            by_port: ByPort::new(ports),
        }
    }

    /// Live allocations.
    pub(super) fn len(&self) -> usize {
        self.by_ft.len()
    }

    /// Slots ever used: the table's high-water mark, and the bound of its
    /// slot numbers.
    pub(super) fn slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The slot of the allocation on `ft`.
    #[inline]
    pub(super) fn slot_of(&self, ft: &FiveTuple) -> Option<u32> {
        self.by_ft.get(ft).copied()
    }

    #[inline]
    pub(super) fn get(&self, slot: u32) -> Option<&Allocation> {
        self.slots.get(slot as usize)?.as_ref()
    }

    #[inline]
    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut Allocation> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The slot of the allocation whose relay peers know as `addr`
    /// (its XOR-RELAYED-ADDRESS).
    #[inline]
    pub(super) fn by_advertised(&self, addr: SocketAddr) -> Option<u32> {
        let slot = self.by_port.get(addr)?;
        self.get(slot)
            .is_some_and(|a| a.advertised == addr)
            .then_some(slot)
    }

    /// The slot of the allocation with admin id `id`.
    pub(super) fn find_id(&self, id: u64) -> Option<u32> {
        self.iter().find(|(_, a)| a.id == id).map(|(s, _)| s)
    }

    /// The live allocations and their slots, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Allocation)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(s, a)| Some((s as u32, a.as_ref()?)))
    }

    /// An empty slot for a new allocation: a freed one, else a new one.
    /// Give it back with [`Table::unreserve`] if no allocation comes of it.
    pub(super) fn reserve(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.generations.push(0);
            self.slots.push_empty() as u32
        })
    }

    pub(super) fn unreserve(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Put `a` in its reserved slot at the slot's next generation and
    /// index it; returns the generation.
    pub(super) fn install(&mut self, slot: u32, mut a: Allocation) -> u32 {
        let g = &mut self.generations[slot as usize];
        *g = g.wrapping_add(1);
        a.generation = *g;
        self.by_ft.insert(a.ft, slot);
        self.by_port.insert(a.advertised, slot);
        self.slots[slot as usize] = Some(a);
        self.generations[slot as usize]
    }

    /// Take the allocation out of `slot`, unindexed; the slot is free.
    pub(super) fn remove(&mut self, slot: u32) -> Option<Allocation> {
        let a = self.slots.get_mut(slot as usize)?.take()?;
        self.by_ft.remove(&a.ft);
        self.by_port.remove(a.advertised, slot);
        self.free.push(slot);
        Some(a)
    }
}

/// The allocations of one core by the relay address peers know them at
/// (XOR-RELAYED-ADDRESS): one cell per relay port and family, since a port
/// belongs to one allocation at a time in a family (see
/// [`super::shared::PortPool`]), so a lookup is an index, not a hash. A
/// cell holds a candidate; the caller compares the whole address. Zeroed
/// memory means "none", so only the pages of ports in use are touched.
struct ByPort {
    low: u16,
    /// Slot + 1 per port, 0 for none.
    v4: Box<[u32]>,
    v6: Box<[u32]>,
}

impl ByPort {
    fn new(range: PortRange) -> Self {
        ByPort {
            low: range.low,
            v4: vec![0; range.len()].into_boxed_slice(),
            v6: vec![0; range.len()].into_boxed_slice(),
        }
    }

    fn cell(&mut self, addr: SocketAddr) -> Option<&mut u32> {
        let i = usize::from(addr.port().checked_sub(self.low)?);
        if addr.is_ipv4() {
            self.v4.get_mut(i)
        } else {
            self.v6.get_mut(i)
        }
    }

    fn insert(&mut self, addr: SocketAddr, slot: u32) {
        if let Some(c) = self.cell(addr) {
            *c = slot + 1;
        }
    }

    /// Forget `slot` at `addr` (if it is still the one there).
    fn remove(&mut self, addr: SocketAddr, slot: u32) {
        if let Some(c) = self.cell(addr) {
            if *c == slot + 1 {
                *c = 0;
            }
        }
    }

    /// The slot whose relay has `addr`'s port and family, if any.
    #[inline]
    fn get(&self, addr: SocketAddr) -> Option<u32> {
        let i = usize::from(addr.port().checked_sub(self.low)?);
        let c = if addr.is_ipv4() {
            self.v4.get(i)
        } else {
            self.v6.get(i)
        };
        c.and_then(|&c| c.checked_sub(1))
    }
}
