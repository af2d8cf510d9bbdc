//! Which peers relaying may reach (RFC 8656 §21.1 and §22.2: a relay must
//! not become a way into the operator's own networks).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

impl Cidr {
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
/// multicast).
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
];

/// The IPv4 address an IPv6 address stands for, if it embeds one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated,
/// but some stacks still route it), and the NAT64 well-known prefix
/// `64:ff9b::a.b.c.d` (RFC 6052). Checking the embedded address closes the
/// `::ffff:127.0.0.1` bypass that has hit other TURN servers.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        // ::a.b.c.d, except :: and ::1 which are themselves.
        return IpAddr::V4(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(low);
    }
    ip
}

/// `canonical_ip` for a socket address.
pub fn canonical_addr(a: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(canonical_ip(a.ip()), a.port())
}

/// The peer policy: explicit deny, then explicit allow, then the default
/// deny list; anything else is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    deny: Vec<Cidr>,
    allow: Vec<Cidr>,
    default_deny: Vec<Cidr>,
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
        })
    }

    /// Whether relaying to `ip` is allowed. The address is canonicalised
    /// first (see [`canonical_ip`]); an address that embeds an IPv4 address
    /// is judged as that IPv4 address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !self.default_deny.iter().any(|c| c.contains(ip))
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
