//! Which peers relaying may reach (RFC 8656 §21.1 and §22.2: a relay must
//! not become a way into the operator's own networks).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

impl Cidr {
    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        match *self {
            Cidr::V4 { len, .. } | Cidr::V6 { len, .. } => len,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4 { net, len }, IpAddr::V4(a)) => mask32(u32::from(a), len) == net,
            (Cidr::V6 { net, len }, IpAddr::V6(a)) => mask128(u128::from(a), len) == net,
            _ => false,
        }
    }
}

fn mask32(v: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask128(v: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(len)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128).
    /// Host bits must be zero, so a typo such as "10.1.2.3/8" is caught.
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len {
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0-{max}"))?,
            None => max,
        };
        let c = match ip {
            IpAddr::V4(a) => Cidr::V4 {
                net: mask32(u32::from(a), len),
                len,
            },
            IpAddr::V6(a) => Cidr::V6 {
                net: mask128(u128::from(a), len),
                len,
            },
        };
        let exact = match (c, ip) {
            (Cidr::V4 { net, .. }, IpAddr::V4(a)) => net == u32::from(a),
            (Cidr::V6 { net, .. }, IpAddr::V6(a)) => net == u128::from(a),
            _ => false,
        };
        if !exact {
            return Err(format!("`{s}` has host bits set below the /{len} prefix"));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { net, len } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Cidr::V6 { net, len } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

/// Networks refused by default: "this" network, loopback, RFC 1918,
/// shared CGN space, link-local (cloud metadata at 169.254.169.254), IETF
/// protocol assignments, benchmarking, multicast, reserved, broadcast, and
/// their IPv6 counterparts (unspecified, loopback, ULA, link-local,
/// multicast); and the IPv6 ranges that lead back into IPv4 or into
/// networks nobody should reach from a relay: 6to4 (`2002::/16`), Teredo
/// (`2001::/32`), local-use NAT64 (`64:ff9b:1::/48`, RFC 8215), SIIT's
/// IPv4-translated addresses (`::ffff:0:0:0/96`), discard-only
/// (`100::/64`), the deprecated site-local (`fec0::/10`) and SRv6 SIDs
/// (`5f00::/16`). An operator may allow 6to4, Teredo or NAT64 ranges:
/// the IPv4 address they embed is judged as well (see
/// [`PeerPolicy::allows`]).
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "2002::/16",
    "2001::/32",
    "64:ff9b:1::/48",
    "::ffff:0:0:0/96",
    "100::/64",
    "fec0::/10",
    "5f00::/16",
];

/// The IPv4 address an IPv6 address stands for at the socket level:
/// IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d`
/// (deprecated, but some stacks still route it). Such a peer is judged
/// (and relayed to) as the IPv4 address, which closes the
/// `::ffff:127.0.0.1` bypass that has hit other TURN servers. Addresses
/// that only *embed* an IPv4 address on the way through a translator or
/// tunnel (NAT64, 6to4, Teredo) stay IPv6; [`PeerPolicy::allows`] judges
/// the embedded address as well.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        // ::a.b.c.d, except :: and ::1 which are themselves.
        return IpAddr::V4(low32(v6));
    }
    ip
}

/// `canonical_ip` for a socket address.
pub fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

/// The last 32 bits of an IPv6 address as an IPv4 address.
fn low32(v6: Ipv6Addr) -> Ipv4Addr {
    let o = v6.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

/// The prefix lengths RFC 6052 §2.2 defines for IPv4-embedded IPv6
/// addresses.
pub const NAT64_PREFIX_LENGTHS: [u8; 6] = [32, 40, 48, 56, 64, 96];

/// The NAT64 well-known prefix (RFC 6052 §2.1).
const NAT64_WKP: Nat64Prefix = Nat64Prefix {
    net: 0x0064_ff9b_u128 << 96,
    len: 96,
};

/// A NAT64 prefix (RFC 6052): an IPv6 prefix of length 32, 40, 48, 56, 64
/// or 96 whose addresses embed an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat64Prefix {
    net: u128,
    len: u8,
}

impl Nat64Prefix {
    fn contains(&self, v6: Ipv6Addr) -> bool {
        mask128(u128::from(v6), self.len) == self.net
    }

    /// The IPv4 address embedded in `v6`, RFC 6052 §2.2: the 32 bits after
    /// the prefix, skipping bits 64-71 (the "u" octet) for the prefix
    /// lengths whose IPv4 part would straddle them.
    pub fn embedded(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        if !self.contains(v6) {
            return None;
        }
        let o = v6.octets();
        let b = match self.len {
            32 => [o[4], o[5], o[6], o[7]],
            40 => [o[5], o[6], o[7], o[9]],
            48 => [o[6], o[7], o[9], o[10]],
            56 => [o[7], o[9], o[10], o[11]],
            64 => [o[9], o[10], o[11], o[12]],
            _ => [o[12], o[13], o[14], o[15]],
        };
        Some(Ipv4Addr::from(b))
    }
}

impl FromStr for Nat64Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<Cidr>()? {
            Cidr::V6 { net, len } if NAT64_PREFIX_LENGTHS.contains(&len) => {
                Ok(Nat64Prefix { net, len })
            }
            Cidr::V6 { len, .. } => Err(format!(
                "`{s}`: a NAT64 prefix is /32, /40, /48, /56, /64 or /96 (RFC 6052), not /{len}"
            )),
            Cidr::V4 { .. } => Err(format!("`{s}`: a NAT64 prefix is an IPv6 prefix")),
        }
    }
}

/// The IPv4 addresses an IPv6 address embeds on its way through a tunnel
/// or translator: 6to4 (`2002:AABB:CCDD::/48` is A.B.C.D, RFC 3056),
/// Teredo (`2001:0::/32`: the server in bits 32-63, the client in the last
/// 32 bits inverted, RFC 4380; both), the NAT64 well-known prefix
/// `64:ff9b::/96`, the local-use prefix `64:ff9b:1::/48` (as a /96: other
/// lengths must be listed in `nat64`), SIIT's `::ffff:0:a.b.c.d`
/// (RFC 7915), and each configured NAT64 prefix. At most four apply to
/// one address; `f` is called for each and the answer is whether all
/// passed.
fn embedded_all(v6: Ipv6Addr, nat64: &[Nat64Prefix], mut f: impl FnMut(Ipv4Addr) -> bool) -> bool {
    let o = v6.octets();
    let s = v6.segments();
    if s[0] == 0x2002 && !f(Ipv4Addr::new(o[2], o[3], o[4], o[5])) {
        return false;
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        if !f(server) || !f(client) {
            return false;
        }
    }
    let wkp_like =
        NAT64_WKP.contains(v6) || s[..3] == [0x64, 0xff9b, 1] || s[..6] == [0, 0, 0, 0, 0xffff, 0];
    if wkp_like && !f(low32(v6)) {
        return false;
    }
    nat64.iter().filter_map(|p| p.embedded(v6)).all(f)
}

/// The server's own addresses and ports, which the shell knows (listener,
/// relay and advertised addresses, every interface address; the bound
/// listener ports; the relay port range) and the core needs to refuse
/// relaying into the server itself (see [`PeerPolicy::allows_peer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnAddresses {
    /// Sorted, without duplicates; loopback and unspecified addresses are
    /// own addresses whether listed or not.
    ips: Vec<IpAddr>,
    /// Ports of every listener (all transports), sorted.
    listener_ports: Vec<u16>,
    /// The relay port range, inclusive.
    relay_ports: (u16, u16),
}

impl Default for OwnAddresses {
    fn default() -> Self {
        OwnAddresses {
            ips: Vec::new(),
            listener_ports: Vec::new(),
            relay_ports: (49152, 65535),
        }
    }
}

impl OwnAddresses {
    pub fn new(
        ips: impl IntoIterator<Item = IpAddr>,
        listener_ports: impl IntoIterator<Item = u16>,
        relay_ports: (u16, u16),
    ) -> Self {
        let mut own = OwnAddresses {
            ips: Vec::new(),
            listener_ports: Vec::new(),
            relay_ports,
        };
        own.add_ips(ips);
        own.add_listener_ports(listener_ports);
        own
    }

    /// Add addresses (canonicalised; unspecified ones are implied).
    pub fn add_ips(&mut self, ips: impl IntoIterator<Item = IpAddr>) {
        self.ips.extend(
            ips.into_iter()
                .map(canonical_ip)
                .filter(|ip| !ip.is_unspecified()),
        );
        self.ips.sort_unstable();
        self.ips.dedup();
    }

    pub fn add_listener_ports(&mut self, ports: impl IntoIterator<Item = u16>) {
        self.listener_ports
            .extend(ports.into_iter().filter(|&p| p != 0));
        self.listener_ports.sort_unstable();
        self.listener_ports.dedup();
    }

    /// The relay port range in force (a new range needs a restart, so a
    /// reload keeps the running one).
    pub fn set_relay_ports(&mut self, relay_ports: (u16, u16)) {
        self.relay_ports = relay_ports;
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    pub fn listener_ports(&self) -> &[u16] {
        &self.listener_ports
    }

    /// Whether `ip` (canonical) reaches this host: a listed address, any
    /// loopback address (all of 127.0.0.0/8 is the host) or unspecified.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.ips.binary_search(&ip).is_ok()
    }

    fn is_relay_port(&self, port: u16) -> bool {
        (self.relay_ports.0..=self.relay_ports.1).contains(&port)
    }
}

/// The peer policy: explicit deny, then explicit allow, then the default
/// deny list; anything else is allowed. An address that embeds an IPv4
/// address (6to4, Teredo, NAT64) must pass for both; the server's own
/// addresses only on relay ports (see [`PeerPolicy::allows_peer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    deny: Vec<Cidr>,
    allow: Vec<Cidr>,
    default_deny: Vec<Cidr>,
    /// Network-specific NAT64 prefixes (`policy.nat64_prefixes`).
    nat64: Vec<Nat64Prefix>,
    own: OwnAddresses,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::new::<&str>(&[], &[]).expect("built-in lists parse")
    }
}

impl PeerPolicy {
    pub fn new<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Self, String> {
        let parse = |l: &[S]| -> Result<Vec<Cidr>, String> {
            l.iter().map(|s| s.as_ref().parse()).collect()
        };
        Ok(PeerPolicy {
            deny: parse(deny)?,
            allow: parse(allow)?,
            default_deny: DEFAULT_DENY
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?,
            nat64: Vec::new(),
            own: OwnAddresses::default(),
        })
    }

    /// With network-specific NAT64 prefixes: treated like `64:ff9b::/96`
    /// (not refused by the default list; the embedded IPv4 address is
    /// judged).
    pub fn with_nat64<S: AsRef<str>>(mut self, prefixes: &[S]) -> Result<Self, String> {
        self.nat64 = prefixes
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// With the server's own addresses and ports.
    pub fn with_own(mut self, own: OwnAddresses) -> Self {
        self.own = own;
        self
    }

    pub fn own(&self) -> &OwnAddresses {
        &self.own
    }

    pub fn own_mut(&mut self) -> &mut OwnAddresses {
        &mut self.own
    }

    /// One address by the lists alone: explicit deny, explicit allow, a
    /// configured NAT64 prefix, the default deny list.
    fn listed(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        if let IpAddr::V6(v6) = ip {
            if self.nat64.iter().any(|p| p.contains(v6)) {
                return true;
            }
        }
        !self.default_deny.iter().any(|c| c.contains(ip))
    }

    /// Whether relaying to `ip` is allowed. The address is canonicalised
    /// first (see [`canonical_ip`]): an IPv4-mapped address is judged as
    /// the IPv4 address. An IPv6 address that embeds IPv4 addresses (6to4,
    /// Teredo, NAT64, configured NAT64 prefixes) is allowed only if it and
    /// every address it embeds are: allowing `2002::/16` does not open
    /// `2002:7f00:1::` (127.0.0.1).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if !self.listed(ip) {
            return false;
        }
        match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => embedded_all(v6, &self.nat64, |v4| self.listed(IpAddr::V4(v4))),
        }
    }

    /// Whether relaying to `peer` (address and port) is allowed: the
    /// address by [`PeerPolicy::allows`], and then the own-address rule
    /// ([`PeerPolicy::own_port_allowed`]).
    pub fn allows_peer(&self, peer: SocketAddr) -> bool {
        self.allows(peer.ip()) && self.own_port_allowed(peer)
    }

    /// The own-address rule. A peer that is one of the server's own
    /// addresses (or embeds one, through NAT64, 6to4 or Teredo) is
    ///
    /// - refused on a listener port, always, even when `allow_peers`
    ///   covers it: TURN inside TURN, a relay that talks to itself;
    /// - allowed on a relay port (clients of this server relaying to each
    ///   other), if the address passes the policy;
    /// - on any other port, refused unless an `allow_peers` entry other
    ///   than a /0 covers the address: an operator who allowed
    ///   `127.0.0.0/8` (or this host's private address) chose to let
    ///   relays reach local services; an operator who only left a public
    ///   address allowed by default did not, so host-local UDP services
    ///   that trust their own source address stay out of reach.
    pub fn own_port_allowed(&self, peer: SocketAddr) -> bool {
        let ip = canonical_ip(peer.ip());
        let port = peer.port();
        let ok = |ip: IpAddr| {
            if !self.own.contains(ip) {
                return true;
            }
            if self.own.listener_ports.binary_search(&port).is_ok() {
                return false;
            }
            self.own.is_relay_port(port) || self.explicitly_allowed(ip)
        };
        if !ok(ip) {
            return false;
        }
        match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => embedded_all(v6, &self.nat64, |v4| ok(IpAddr::V4(v4))),
        }
    }

    /// Covered by an `allow_peers` entry narrower than /0.
    fn explicitly_allowed(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|c| c.prefix_len() > 0 && c.contains(ip))
    }

    /// `allow_peers` entries an operator should think twice about, with
    /// why: one that covers a loopback address, the cloud metadata
    /// address 169.254.169.254, or everything (a /0).
    pub fn dangerous_allows(&self) -> Vec<(usize, Cidr, &'static str)> {
        let loopback: [IpAddr; 2] = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
        let metadata: IpAddr = Ipv4Addr::new(169, 254, 169, 254).into();
        self.allow
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let why = if c.prefix_len() == 0 {
                    "allows every address (a /0)"
                } else if c.contains(metadata) {
                    "allows the cloud metadata address 169.254.169.254"
                } else if loopback.iter().any(|&l| c.contains(l)) {
                    "allows loopback: relays reach services on this host"
                } else {
                    return None;
                };
                Some((i, *c, why))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_every_listed_range_and_its_ipv6_forms() {
        let p = PeerPolicy::default();
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "::0.0.0.2",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            // The IPv6 ranges added by issue 12, each with a harmless
            // embedded address: the range itself is refused.
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
            "64:ff9b:1::808:808",
            "::ffff:0:808:808",
            "100::1",
            "fec0::1",
            "5f00::1",
        ] {
            assert!(!p.allows(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "203.0.113.7",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(p.allows(ip(good)), "{good} must be allowed");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Every IPv6 form that embeds an IPv4 address, with the IPv6 range
    /// itself allowed by the operator: the embedded address decides.
    #[test]
    fn embedded_ipv4_is_judged_even_when_the_ipv6_range_is_allowed() {
        let p = PeerPolicy::new(
            &[
                "2002::/16",
                "2001::/32",
                "64:ff9b:1::/48",
                "::ffff:0:0:0/96",
            ],
            &["198.51.100.0/24"],
        )
        .unwrap()
        .with_nat64(&["2001:db8:64::/96", "2001:db8:100::/40", "2001:db8:200::/48"])
        .unwrap();
        let refused = [
            // 6to4 of 127.0.0.1, 10.1.2.3, 169.254.169.254, and of an
            // explicitly denied public address.
            ("2002:7f00:1::1", "6to4 127.0.0.1"),
            ("2002:a01:203::", "6to4 10.1.2.3"),
            ("2002:a9fe:a9fe:1::5", "6to4 169.254.169.254"),
            ("2002:c633:6401::1", "6to4 of a deny_peers address"),
            // Teredo: the server 127.0.0.1 (bits 32-63) and a public
            // client; then a public server and the client 10.0.0.1
            // (inverted: f5ff:fffe).
            ("2001:0:7f00:1::f7f7:f7f7", "Teredo server 127.0.0.1"),
            ("2001:0:808:808::f5ff:fffe", "Teredo client 10.0.0.1"),
            // NAT64: well-known, local-use (as /96), SIIT.
            ("64:ff9b::7f00:1", "NAT64 127.0.0.1"),
            ("64:ff9b::c0a8:101", "NAT64 192.168.1.1"),
            ("64:ff9b:1::a00:1", "local-use NAT64 10.0.0.1"),
            ("::ffff:0:7f00:1", "SIIT 127.0.0.1"),
            // Configured prefixes: /96, /40 and /48 with the u octet
            // (bits 64-71) skipped.
            ("2001:db8:64::7f00:1", "configured /96 127.0.0.1"),
            ("2001:db8:17f:0:1::", "configured /40 127.0.0.1"),
            ("2001:db8:200:a00:1:100::", "configured /48 10.0.1.1"),
            // IPv4-mapped is the IPv4 address itself.
            ("::ffff:127.0.0.1", "mapped 127.0.0.1"),
            ("::ffff:198.51.100.7", "mapped deny_peers address"),
        ];
        for (bad, what) in refused {
            assert!(!p.allows(ip(bad)), "{bad} ({what}) must be refused");
        }
        let allowed = [
            ("2002:808:808::1", "6to4 8.8.8.8"),
            ("2001:0:808:808::f7f7:f7f7", "Teredo 8.8.8.8 / 8.8.8.8"),
            ("64:ff9b::808:808", "NAT64 8.8.8.8"),
            ("64:ff9b:1::808:808", "local-use NAT64 8.8.8.8"),
            ("::ffff:0:808:808", "SIIT 8.8.8.8"),
            ("2001:db8:64::808:808", "configured /96 8.8.8.8"),
            ("2001:db8:108:0:8:800::", "configured /40 8.8.8.8"),
            ("2001:db8:200:808:8:800::", "configured /48 8.8.8.8"),
            ("::ffff:8.8.8.8", "mapped 8.8.8.8"),
        ];
        for (good, what) in allowed {
            assert!(p.allows(ip(good)), "{good} ({what}) must be allowed");
        }
    }

    #[test]
    fn default_policy_judges_nat64_and_configured_prefixes_only_when_listed() {
        // 64:ff9b::/96 is allowed by default, its embedded address judged.
        let p = PeerPolicy::default();
        assert!(p.allows(ip("64:ff9b::808:808")));
        assert!(!p.allows(ip("64:ff9b::a00:1")));
        // A network-specific prefix: unlisted, it is an ordinary (global)
        // IPv6 network; listed, it is treated like the well-known one,
        // even inside a range the default list refuses.
        let plain = ip("2001:db8:64::a00:1");
        assert!(p.allows(plain));
        let p = PeerPolicy::default()
            .with_nat64(&["2001:db8:64::/96", "64:ff9b:1:2::/64"])
            .unwrap();
        assert!(!p.allows(plain), "10.0.0.1 through the configured prefix");
        assert!(p.allows(ip("2001:db8:64::808:808")));
        assert!(p.allows(ip("64:ff9b:1:2:8:808:800:0")), "/64: 8.8.8.8");
        assert!(!p.allows(ip("64:ff9b:1:2:7f:0:100:0")), "/64: 127.0.0.1");
        // deny_peers still wins over a configured prefix.
        let p = PeerPolicy::new(&[] as &[&str], &["2001:db8:64::/96"])
            .unwrap()
            .with_nat64(&["2001:db8:64::/96"])
            .unwrap();
        assert!(!p.allows(ip("2001:db8:64::808:808")));
    }

    #[test]
    fn nat64_prefixes_are_validated_per_rfc_6052() {
        for ok in [
            "2001:db8::/32",
            "2001:db8:100::/40",
            "2001:db8:122::/48",
            "2001:db8:122:300::/56",
            "2001:db8:122:344::/64",
            "2001:db8:122:344::/96",
        ] {
            ok.parse::<Nat64Prefix>().unwrap();
        }
        for bad in [
            "2001:db8::/33",
            "2001:db8::/128",
            "10.0.0.0/8",
            "2001:db8::1/96",
        ] {
            assert!(bad.parse::<Nat64Prefix>().is_err(), "{bad}");
        }
        // RFC 6052 §2.4's table: 192.0.2.33 in each length.
        for (prefix, addr) in [
            ("2001:db8::/32", "2001:db8:c000:221::"),
            ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
            ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
            ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
            ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
            ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
        ] {
            let p: Nat64Prefix = prefix.parse().unwrap();
            let IpAddr::V6(a) = ip(addr) else { panic!() };
            assert_eq!(
                p.embedded(a),
                Some(Ipv4Addr::new(192, 0, 2, 33)),
                "{prefix}"
            );
        }
    }

    /// The server's own addresses: only relay ports; never a listener port,
    /// even when allow_peers covers the address; other ports only when an
    /// allow_peers entry (not a /0) covers it.
    #[test]
    fn own_addresses_only_on_relay_ports() {
        let own = OwnAddresses::new(
            [ip("203.0.113.10"), ip("192.0.2.10"), ip("2001:db8::10")],
            [3478, 5349],
            (50000, 50099),
        );
        let p = PeerPolicy::default()
            .with_nat64(&["2001:db8:64::/96"])
            .unwrap()
            .with_own(own.clone());
        for good in [
            "203.0.113.10:50000",
            "203.0.113.10:50099",
            "[2001:db8::10]:50042",
            "[::ffff:203.0.113.10]:50001",
            "203.0.113.11:3478",
            "8.8.8.8:53",
        ] {
            assert!(p.allows_peer(sa(good)), "{good} must be allowed");
        }
        for bad in [
            "203.0.113.10:3478",
            "203.0.113.10:5349",
            "203.0.113.10:53",
            "203.0.113.10:49999",
            "203.0.113.10:50100",
            "192.0.2.10:22",
            "[2001:db8::10]:3478",
            "[2001:db8::10]:123",
            "[::ffff:203.0.113.10]:3478",
            // The own public address through NAT64 (well-known and
            // configured prefixes) is still the own address.
            "[64:ff9b::cb00:710a]:3478",
            "[64:ff9b::cb00:710a]:161",
            "[2001:db8:64::cb00:710a]:3478",
        ] {
            assert!(!p.allows_peer(sa(bad)), "{bad} must be refused");
        }
        // Loopback is the host even when not listed. allow_peers covering
        // it opens other ports but never a listener port.
        let p = PeerPolicy::new(&["127.0.0.0/8", "::1/128"], &[])
            .unwrap()
            .with_own(own.clone());
        assert!(p.allows_peer(sa("127.0.0.1:40000")));
        assert!(p.allows_peer(sa("127.0.0.2:50000")));
        assert!(p.allows_peer(sa("[::1]:40000")));
        assert!(!p.allows_peer(sa("127.0.0.1:3478")), "listener port");
        assert!(!p.allows_peer(sa("127.0.0.2:5349")), "listener port");
        assert!(!p.allows_peer(sa("[::1]:3478")), "listener port");
        // A /0 is not an explicit allow of the own addresses.
        let p = PeerPolicy::new(&["0.0.0.0/0"], &[])
            .unwrap()
            .with_own(own.clone());
        assert!(p.allows_peer(sa("10.0.0.1:53")), "the /0 allows others");
        assert!(!p.allows_peer(sa("127.0.0.1:53")));
        assert!(!p.allows_peer(sa("203.0.113.10:53")));
        assert!(p.allows_peer(sa("203.0.113.10:50000")));
        // An explicit entry for the own public address opens other ports,
        // still not the listener.
        let p = PeerPolicy::new(&["203.0.113.10/32"], &[])
            .unwrap()
            .with_own(own);
        assert!(p.allows_peer(sa("203.0.113.10:53")));
        assert!(!p.allows_peer(sa("203.0.113.10:3478")));
    }

    #[test]
    fn dangerous_allow_entries_are_named() {
        let p = PeerPolicy::new(
            &[
                "10.0.0.0/8",
                "127.0.0.1/32",
                "169.254.0.0/16",
                "::/0",
                "::1/128",
                "192.168.0.0/16",
                "0.0.0.0/0",
            ],
            &[],
        )
        .unwrap();
        let d: Vec<usize> = p.dangerous_allows().iter().map(|(i, _, _)| *i).collect();
        assert_eq!(d, vec![1, 2, 3, 4, 6]);
        assert!(PeerPolicy::default().dangerous_allows().is_empty());
    }

    #[test]
    fn allow_and_deny_lists() {
        let p =
            PeerPolicy::new(&["127.0.0.1/32", "10.0.0.0/8"], &["10.1.0.0/16", "8.8.8.8"]).unwrap();
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::ffff:127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(p.allows(ip("10.2.3.4")));
        assert!(!p.allows(ip("10.1.3.4")), "deny beats allow");
        assert!(!p.allows(ip("8.8.8.8")));
        assert!(!p.allows(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn cidr_parse() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert!("10.1.2.3/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("9.9.9.9")));
    }
}
