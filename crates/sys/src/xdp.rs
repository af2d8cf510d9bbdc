//! The XDP fast path's loader (issue 15): loads `bpf/relay.bpf.c` (built
//! by `build.rs` when clang and the libbpf headers are there), attaches it
//! to interfaces (driver mode first, generic mode as a named fallback),
//! writes and removes the channel routes the server core mirrors, and
//! reads the program's per-CPU counters.
//!
//! Nothing is pinned: the program, its maps and its attachments are
//! kernel objects held by this process's descriptors (`bpf_link`s), so
//! they go away when [`Fastpath`] is dropped, and when the process exits
//! in any way, SIGKILL and a crash included. (aya falls back to a netlink
//! attachment only on a kernel without XDP links, before Linux 5.9; such
//! an attachment would outlive a crash, so [`Fastpath::attach`] refuses it
//! and detaches it again.)
//!
//! Time: a route's expiry is CLOCK_MONOTONIC in nanoseconds, the clock the
//! program reads with `bpf_ktime_get_ns` and Rust's `Instant` reads on
//! Linux; [`monotonic_ns`] reads it.

#![cfg_attr(
    not(turnpike_xdp),
    allow(
        dead_code,
        reason = "the map layouts are used only when the program is built"
    )
)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Whether this build carries the XDP program (clang and the libbpf
/// headers were there when it was built).
pub const BUILT: bool = cfg!(turnpike_xdp);

/// What to install when the program was not built.
pub const MISSING_PACKAGES: &str = "clang libbpf-dev";

/// The program's name in the object (its `SEC("xdp")` function).
pub const PROGRAM: &str = "turnpike_relay";

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP, run by the driver.
    Driver,
    /// Generic XDP, run by the kernel's network stack (slower; the
    /// fallback for drivers without native XDP).
    Generic,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        }
    }
}

/// Why the fast path could not start.
#[derive(Debug)]
pub enum Error {
    /// This build has no XDP program (clang or libbpf-dev was missing).
    NotBuilt,
    /// The kernel refused the program or its maps (typically: no
    /// CAP_BPF/CAP_SYS_ADMIN, or a verifier error).
    Load(String),
    /// An interface of the list does not exist.
    NoInterface(String),
    /// The kernel refused to attach the program to an interface in both
    /// modes (typically: no CAP_NET_ADMIN).
    Attach { iface: String, error: String },
    /// A map operation failed.
    Map(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotBuilt => write!(
                f,
                "this build has no XDP program ({MISSING_PACKAGES} were missing when it was built)"
            ),
            Error::Load(e) => write!(
                f,
                "cannot load the XDP program (needs CAP_BPF and CAP_NET_ADMIN, or root): {e}"
            ),
            Error::NoInterface(i) => write!(f, "no interface named {i:?}"),
            Error::Attach { iface, error } => write!(
                f,
                "cannot attach the XDP program to {iface} (needs CAP_NET_ADMIN): {error}"
            ),
            Error::Map(e) => write!(f, "XDP map operation failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// One channel route, as the program matches and rewrites it: ChannelData
/// on `channel` from `client` to `listener` goes from `relay` to `peer`;
/// a datagram from `peer` to `relay` goes from `listener` to `client`
/// with that channel's header. Until `expires_ns` (CLOCK_MONOTONIC).
/// Client and listener of one family, relay and peer of one (4↔6 when
/// the two differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub channel: u16,
    /// The peer is another relay of this server, advertised at its bound
    /// address: the program hands the data straight to that relay's
    /// client when it has a route from this relay (relay → relay).
    pub peer_is_relay: bool,
    pub expires_ns: u64,
    /// The allocation's admin id: its per-allocation counters.
    pub alloc_id: u64,
}

/// Packets and payload bytes the program relayed in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    pub packets: u64,
    pub bytes: u64,
}

/// What the program relayed for one allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Client → peer.
    pub out: DirStats,
    /// Peer → client.
    pub in_: DirStats,
}

// The maps' layouts: the structs of relay.bpf.c, field for field.
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
const FLAG_PEER_IS_RELAY: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct C2pKey {
    client: [u8; 16],
    listener: [u8; 16],
    client_port: u16,
    listener_port: u16,
    channel: u16,
    family: u8,
    pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct C2pVal {
    relay: [u8; 16],
    peer: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    family: u8,
    flags: u8,
    pad: [u8; 2],
    expires_ns: u64,
    alloc_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct P2cKey {
    peer: [u8; 16],
    relay: [u8; 16],
    peer_port: u16,
    relay_port: u16,
    family: u8,
    pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct P2cVal {
    client: [u8; 16],
    listener: [u8; 16],
    client_port: u16,
    listener_port: u16,
    channel: u16,
    family: u8,
    flags: u8,
    expires_ns: u64,
    alloc_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    packets: u64,
    bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct AllocStatsC {
    c2p_packets: u64,
    c2p_bytes: u64,
    p2c_packets: u64,
    p2c_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Config {
    mtu: u32,
    pad: u32,
}

// SAFETY: each is a #[repr(C)] struct of integers and integer arrays with
// explicit padding fields, so every byte is initialised and any bytes are
// a valid value: what aya's `Pod` asks (it copies them to and from the
// kernel as bytes).
unsafe impl aya::Pod for C2pKey {}
// SAFETY: as above.
unsafe impl aya::Pod for C2pVal {}
// SAFETY: as above.
unsafe impl aya::Pod for P2cKey {}
// SAFETY: as above.
unsafe impl aya::Pod for P2cVal {}
// SAFETY: as above.
unsafe impl aya::Pod for Stats {}
// SAFETY: as above.
unsafe impl aya::Pod for AllocStatsC {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}

/// An address as the maps hold it: 16 bytes (IPv4 in the first 4), and
/// its family.
fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

impl Route {
    /// The family of the client's side (client and listener).
    fn family(&self) -> u8 {
        addr_bytes(self.client.ip()).1
    }

    /// The family of the peer's side (relay and peer).
    fn peer_family(&self) -> u8 {
        addr_bytes(self.peer.ip()).1
    }

    /// Whether client and listener are of one family, and relay and peer
    /// of one (the two may differ: 4↔6).
    pub fn consistent(&self) -> bool {
        addr_bytes(self.listener.ip()).1 == self.family()
            && addr_bytes(self.relay.ip()).1 == self.peer_family()
    }

    fn flags(&self) -> u8 {
        if self.peer_is_relay {
            FLAG_PEER_IS_RELAY
        } else {
            0
        }
    }

    fn c2p_key(&self) -> C2pKey {
        C2pKey {
            client: addr_bytes(self.client.ip()).0,
            listener: addr_bytes(self.listener.ip()).0,
            client_port: self.client.port().to_be(),
            listener_port: self.listener.port().to_be(),
            channel: self.channel.to_be(),
            family: self.family(),
            pad: 0,
        }
    }

    fn c2p_val(&self) -> C2pVal {
        C2pVal {
            relay: addr_bytes(self.relay.ip()).0,
            peer: addr_bytes(self.peer.ip()).0,
            relay_port: self.relay.port().to_be(),
            peer_port: self.peer.port().to_be(),
            family: self.peer_family(),
            flags: self.flags(),
            pad: [0; 2],
            expires_ns: self.expires_ns,
            alloc_id: self.alloc_id,
        }
    }

    fn p2c_key(&self) -> P2cKey {
        P2cKey {
            peer: addr_bytes(self.peer.ip()).0,
            relay: addr_bytes(self.relay.ip()).0,
            peer_port: self.peer.port().to_be(),
            relay_port: self.relay.port().to_be(),
            family: self.peer_family(),
            pad: [0; 3],
        }
    }

    fn p2c_val(&self) -> P2cVal {
        P2cVal {
            client: addr_bytes(self.client.ip()).0,
            listener: addr_bytes(self.listener.ip()).0,
            client_port: self.client.port().to_be(),
            listener_port: self.listener.port().to_be(),
            channel: self.channel.to_be(),
            family: self.family(),
            flags: self.flags(),
            expires_ns: self.expires_ns,
            alloc_id: self.alloc_id,
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the program's
/// `bpf_ktime_get_ns` and of Rust's `Instant` on Linux.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The loaded program, attached to its interfaces, with its maps. Dropping
/// it detaches the program everywhere and frees the maps.
pub struct Fastpath {
    inner: imp::Inner,
    attached: Vec<(String, AttachMode)>,
}

impl fmt::Debug for Fastpath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fastpath")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Fastpath {
    /// Load the program and attach it to each of `interfaces`: driver mode
    /// first, generic mode when the driver refuses. Any failure detaches
    /// what was attached (by dropping it) and is returned.
    pub fn attach(interfaces: &[String]) -> Result<Fastpath, Error> {
        let mut inner = imp::Inner::load()?;
        let mut attached = Vec::with_capacity(interfaces.len());
        let mut mtu = u32::MAX;
        for iface in interfaces {
            let index = crate::iface::index(iface);
            if index == 0 {
                return Err(Error::NoInterface(iface.clone()));
            }
            let mode = inner.attach(index, iface)?;
            attached.push((iface.clone(), mode));
            mtu = mtu.min(interface_mtu(iface).unwrap_or(1500));
        }
        inner.set_mtu(if mtu == u32::MAX { 1500 } else { mtu })?;
        Ok(Fastpath { inner, attached })
    }

    /// The interfaces and how the program is attached to each.
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }

    /// Install or refresh a route (both directions) and the allocation's
    /// counters (kept if they exist).
    pub fn install(&mut self, r: &Route) -> Result<(), Error> {
        if !r.consistent() {
            return Err(Error::Map(
                "a route's client and listener, and its relay and peer, must each be of one family"
                    .into(),
            ));
        }
        self.inner.install(r)
    }

    /// Remove a route (both directions); a route that is not there is no
    /// error.
    pub fn remove(&mut self, r: &Route) {
        self.inner.remove(r);
    }

    /// Forget an allocation's counters (it ended), returning them.
    pub fn forget_allocation(&mut self, alloc_id: u64) -> AllocStats {
        let s = self.inner.alloc_stats(alloc_id);
        self.inner.forget(alloc_id);
        s
    }

    /// What the program relayed for an allocation so far.
    pub fn allocation_stats(&self, alloc_id: u64) -> AllocStats {
        self.inner.alloc_stats(alloc_id)
    }

    /// Everything the program relayed: (client → peer, peer → client).
    pub fn totals(&self) -> (DirStats, DirStats) {
        (self.inner.total(0), self.inner.total(1))
    }

    /// Routes in the maps (client → peer entries), for tests.
    pub fn route_count(&self) -> usize {
        self.inner.route_count()
    }
}

/// The interface's MTU, asked of the kernel (SIOCGIFMTU) in this
/// thread's network namespace (/sys may show another namespace's).
fn interface_mtu(iface: &str) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    let mut req: libc::ifreq = crate::zeroed();
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid, writable ifreq whose name is NUL-terminated
    // (zeroed, and the name is shorter than IFNAMSIZ); SIOCGIFMTU reads the
    // name and writes the MTU into it, nothing else.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if r != 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU succeeded, so it wrote the union's `ifru_mtu`
    // member (and any bytes are a valid c_int anyway).
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

#[cfg(turnpike_xdp)]
mod imp {
    use super::*;
    use aya::Ebpf;
    use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use aya::programs::links::FdLink;
    use aya::programs::{Xdp, XdpMode};

    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

    pub(super) struct Inner {
        // The attachments: dropped first (fields drop in order), each
        // closing its link's only descriptor, which detaches it.
        links: Vec<FdLink>,
        // The program and its maps.
        ebpf: Ebpf,
        c2p: HashMap<MapData, C2pKey, C2pVal>,
        p2c: HashMap<MapData, P2cKey, P2cVal>,
        allocs: PerCpuHashMap<MapData, u64, AllocStatsC>,
        totals: PerCpuArray<MapData, Stats>,
        cfg: Array<MapData, Config>,
    }

    fn map_err(e: impl fmt::Display) -> Error {
        Error::Map(e.to_string())
    }

    fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, Error>
    where
        T: TryFrom<aya::maps::Map>,
        T::Error: fmt::Display,
    {
        let m = ebpf
            .take_map(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))?;
        T::try_from(m).map_err(|e| Error::Load(format!("map {name}: {e}")))
    }

    impl Inner {
        pub(super) fn load() -> Result<Inner, Error> {
            let mut ebpf = Ebpf::load(OBJECT).map_err(|e| Error::Load(e.to_string()))?;
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM)
                .ok_or_else(|| Error::Load(format!("program {PROGRAM} missing")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))?;
            prog.load().map_err(|e| Error::Load(e.to_string()))?;
            Ok(Inner {
                c2p: take(&mut ebpf, "c2p")?,
                p2c: take(&mut ebpf, "p2c")?,
                allocs: take(&mut ebpf, "allocs")?,
                totals: take(&mut ebpf, "totals")?,
                cfg: take(&mut ebpf, "cfg")?,
                links: Vec::new(),
                ebpf,
            })
        }

        fn prog(&mut self) -> Result<&mut Xdp, Error> {
            self.ebpf
                .program_mut(PROGRAM)
                .ok_or_else(|| Error::Load(format!("program {PROGRAM} missing")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| Error::Load(e.to_string()))
        }

        pub(super) fn attach(&mut self, index: u32, iface: &str) -> Result<AttachMode, Error> {
            let prog = self.prog()?;
            let (mode, link) = match prog.attach_to_if_index(index, XdpMode::Driver) {
                Ok(link) => (AttachMode::Driver, link),
                Err(driver) => match prog.attach_to_if_index(index, XdpMode::Skb) {
                    Ok(link) => (AttachMode::Generic, link),
                    Err(generic) => {
                        return Err(Error::Attach {
                            iface: iface.to_owned(),
                            error: format!("driver mode: {driver}; generic mode: {generic}"),
                        });
                    }
                },
            };
            // A netlink attachment (kernels before 5.9) would outlive the
            // process; only a bpf_link dies with it. Taken out of aya's
            // list and kept here: dropping an `FdLink` closes its last
            // descriptor, which detaches it.
            let owned = prog
                .take_link(link)
                .map_err(|e| Error::Load(e.to_string()))?;
            match FdLink::try_from(owned) {
                Ok(fd_link) => {
                    self.links.push(fd_link);
                    Ok(mode)
                }
                Err(e) => Err(Error::Attach {
                    iface: iface.to_owned(),
                    error: format!("no XDP link (kernel older than 5.9?): {e}"),
                }),
            }
        }

        pub(super) fn set_mtu(&mut self, mtu: u32) -> Result<(), Error> {
            self.cfg.set(0, Config { mtu, pad: 0 }, 0).map_err(map_err)
        }

        pub(super) fn install(&mut self, r: &Route) -> Result<(), Error> {
            if self.allocs.get(&r.alloc_id, 0).is_err() {
                let n = aya::util::nr_cpus().map_err(|(s, e)| map_err(format!("{s}: {e}")))?;
                let zero =
                    PerCpuValues::try_from(vec![AllocStatsC::default(); n]).map_err(map_err)?;
                self.allocs.insert(r.alloc_id, zero, 0).map_err(map_err)?;
            }
            self.c2p
                .insert(r.c2p_key(), r.c2p_val(), 0)
                .map_err(map_err)?;
            if let Err(e) = self.p2c.insert(r.p2c_key(), r.p2c_val(), 0) {
                let _ = self.c2p.remove(&r.c2p_key());
                return Err(map_err(e));
            }
            Ok(())
        }

        pub(super) fn remove(&mut self, r: &Route) {
            // Absent entries are fine: nothing to remove.
            let _ = self.c2p.remove(&r.c2p_key());
            let _ = self.p2c.remove(&r.p2c_key());
        }

        pub(super) fn forget(&mut self, alloc_id: u64) {
            let _ = self.allocs.remove(&alloc_id);
        }

        pub(super) fn alloc_stats(&self, alloc_id: u64) -> AllocStats {
            let mut s = AllocStats::default();
            if let Ok(v) = self.allocs.get(&alloc_id, 0) {
                for c in v.iter() {
                    s.out.packets += c.c2p_packets;
                    s.out.bytes += c.c2p_bytes;
                    s.in_.packets += c.p2c_packets;
                    s.in_.bytes += c.p2c_bytes;
                }
            }
            s
        }

        pub(super) fn total(&self, dir: u32) -> DirStats {
            let mut s = DirStats::default();
            if let Ok(v) = self.totals.get(&dir, 0) {
                for c in v.iter() {
                    s.packets += c.packets;
                    s.bytes += c.bytes;
                }
            }
            s
        }

        pub(super) fn route_count(&self) -> usize {
            self.c2p.keys().filter(Result::is_ok).count()
        }
    }
}

#[cfg(not(turnpike_xdp))]
mod imp {
    use super::*;

    /// This build has no program: nothing can be loaded.
    pub(super) enum Inner {}

    impl Inner {
        pub(super) fn load() -> Result<Inner, Error> {
            Err(Error::NotBuilt)
        }
        pub(super) fn attach(&mut self, _: u32, _: &str) -> Result<AttachMode, Error> {
            match *self {}
        }
        pub(super) fn set_mtu(&mut self, _: u32) -> Result<(), Error> {
            match *self {}
        }
        pub(super) fn install(&mut self, _: &Route) -> Result<(), Error> {
            match *self {}
        }
        pub(super) fn remove(&mut self, _: &Route) {
            match *self {}
        }
        pub(super) fn forget(&mut self, _: u64) {
            match *self {}
        }
        pub(super) fn alloc_stats(&self, _: u64) -> AllocStats {
            match *self {}
        }
        pub(super) fn total(&self, _: u32) -> DirStats {
            match *self {}
        }
        pub(super) fn route_count(&self) -> usize {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_program() {
        // The sizes of relay.bpf.c's structs (the kernel checks key and
        // value sizes at every map call; a mismatch would fail there).
        assert_eq!(std::mem::size_of::<C2pKey>(), 40);
        assert_eq!(std::mem::size_of::<C2pVal>(), 56);
        assert_eq!(std::mem::size_of::<P2cKey>(), 40);
        assert_eq!(std::mem::size_of::<P2cVal>(), 56);
        assert_eq!(std::mem::size_of::<AllocStatsC>(), 32);
    }

    #[test]
    fn keys_are_network_order_and_ipv4_is_left_aligned() {
        let r = Route {
            client: "192.0.2.1:5000".parse().unwrap(),
            listener: "192.0.2.2:3478".parse().unwrap(),
            relay: "192.0.2.2:50000".parse().unwrap(),
            peer: "198.51.100.7:9".parse().unwrap(),
            channel: 0x4001,
            peer_is_relay: false,
            expires_ns: 1,
            alloc_id: 7,
        };
        let k = r.c2p_key();
        assert_eq!(&k.client[..4], &[192, 0, 2, 1]);
        assert_eq!(&k.client[4..], &[0; 12]);
        assert_eq!(k.client_port.to_ne_bytes(), 5000u16.to_be_bytes());
        assert_eq!(k.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(k.family, FAMILY_V4);
        assert!(r.consistent());
        // 4↔6: an IPv4 client on an IPv6 allocation.
        let mixed = Route {
            relay: "[2001:db8::2]:50000".parse().unwrap(),
            peer: "[2001:db8::1]:9".parse().unwrap(),
            ..r
        };
        assert!(mixed.consistent());
        assert_eq!(mixed.c2p_key().family, FAMILY_V4);
        assert_eq!(mixed.c2p_val().family, FAMILY_V6);
        assert_eq!(mixed.p2c_key().family, FAMILY_V6);
        assert_eq!(mixed.p2c_val().family, FAMILY_V4);
        let broken = Route {
            peer: "[2001:db8::1]:9".parse().unwrap(),
            ..r
        };
        assert!(!broken.consistent());
    }

    #[test]
    fn loopback_mtu_is_read_from_the_kernel() {
        let mtu = interface_mtu("lo").expect("lo exists");
        assert!(mtu >= 1280, "lo MTU {mtu}");
        assert_eq!(interface_mtu("no-such-if0"), None);
        assert_eq!(interface_mtu("a-name-far-too-long-for-linux"), None);
    }

    #[test]
    fn a_build_without_the_program_names_the_packages() {
        let e = Error::NotBuilt.to_string();
        assert!(e.contains("clang") && e.contains("libbpf-dev"), "{e}");
        let e = Error::Load("EPERM".into()).to_string();
        assert!(e.contains("CAP_BPF") && e.contains("CAP_NET_ADMIN"), "{e}");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
