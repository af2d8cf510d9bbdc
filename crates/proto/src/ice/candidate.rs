//! ICE candidates (RFC 8445 §5.1): kinds, priorities, foundations, and the
//! compact text form exchanged between two `ice-check` runs.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::core::Transport;

/// Candidate types, RFC 8445 §5.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl Kind {
    /// RFC 8445 §5.1.2.2 recommended type preferences.
    pub fn type_preference(self) -> u32 {
        match self {
            Kind::Host => 126,
            Kind::Prflx => 110,
            Kind::Srflx => 100,
            Kind::Relay => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Srflx => "srflx",
            Kind::Prflx => "prflx",
            Kind::Relay => "relay",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "host" => Kind::Host,
            "srflx" => Kind::Srflx,
            "prflx" => Kind::Prflx,
            "relay" => Kind::Relay,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of path a pair tests: the "furthest" of its two ends (a pair
/// with a relay end goes through TURN; otherwise one with a reflexive end
/// crosses a NAT mapping; otherwise host to host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Host,
    Srflx,
    Relay,
}

impl PathKind {
    pub fn of(a: Kind, b: Kind) -> PathKind {
        let rank = |k: Kind| match k {
            Kind::Host => PathKind::Host,
            Kind::Srflx | Kind::Prflx => PathKind::Srflx,
            Kind::Relay => PathKind::Relay,
        };
        rank(a).max(rank(b))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Relay => "relay",
        }
    }
}

impl std::str::FromStr for PathKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(PathKind::Host),
            "srflx" => Ok(PathKind::Srflx),
            "relay" => Ok(PathKind::Relay),
            _ => Err(format!("`{s}`: expected host, srflx or relay")),
        }
    }
}

/// A candidate as exchanged between agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub priority: u32,
    pub foundation: String,
    /// For relay candidates: how the agent reaches its TURN server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Transport>,
}

/// RFC 8445 §5.1.2.1: `(2^24)*type + (2^8)*local + (256 - component)`,
/// component 1.
pub fn priority(kind: Kind, local_preference: u16) -> u32 {
    (kind.type_preference() << 24) | (u32::from(local_preference) << 8) | 255
}

/// RFC 8445 §6.1.2.3: pair priority from the controlling (`g`) and
/// controlled (`d`) candidates' priorities.
pub fn pair_priority(g: u32, d: u32) -> u64 {
    let (g, d) = (u64::from(g), u64::from(d));
    (1 << 32) * g.min(d) + 2 * g.max(d) + u64::from(g > d)
}

/// RFC 8445 §5.1.1.3: same type, base IP, server and transport → same
/// foundation. A short stable hash of those.
pub fn foundation(
    kind: Kind,
    base: std::net::IpAddr,
    server: Option<SocketAddr>,
    via: Option<Transport>,
) -> String {
    let mut h: u32 = 2166136261;
    let mut feed = |b: &[u8]| {
        for x in b {
            h = (h ^ u32::from(*x)).wrapping_mul(16777619);
        }
    };
    feed(kind.as_str().as_bytes());
    feed(base.to_string().as_bytes());
    if let Some(s) = server {
        feed(s.to_string().as_bytes());
    }
    if let Some(t) = via {
        feed(t.as_str().as_bytes());
    }
    format!("{h:08x}")
}

impl Candidate {
    /// `kind addr priority foundation [via]`, one line.
    pub fn to_line(&self) -> String {
        let via = self.via.map_or(String::new(), |t| format!(" {t}"));
        format!(
            "{} {} {} {}{via}",
            self.kind, self.addr, self.priority, self.foundation
        )
    }

    pub fn from_line(s: &str) -> Result<Self, String> {
        let mut it = s.split_whitespace();
        let bad = || format!("bad candidate `{s}`");
        let kind = Kind::parse(it.next().ok_or_else(bad)?).ok_or_else(bad)?;
        let addr = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let priority = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let foundation = it.next().ok_or_else(bad)?.to_string();
        let via = match it.next() {
            None => None,
            Some("udp") => Some(Transport::Udp),
            Some("tcp") => Some(Transport::Tcp),
            Some("tls") => Some(Transport::Tls),
            Some(_) => return Err(bad()),
        };
        Ok(Candidate {
            kind,
            addr,
            priority,
            foundation,
            via,
        })
    }
}

/// What one side tells the other: credentials and candidates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub ufrag: String,
    pub pwd: String,
    pub candidates: Vec<Candidate>,
}

impl Description {
    /// A single copy-pasteable token: base64url of the lines
    /// `ufrag`, `pwd`, then one candidate per line.
    pub fn to_blob(&self) -> String {
        use base64::Engine;
        let mut text = format!("{}\n{}\n", self.ufrag, self.pwd);
        for c in &self.candidates {
            text.push_str(&c.to_line());
            text.push('\n');
        }
        format!(
            "tpice1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
        )
    }

    pub fn from_blob(blob: &str) -> Result<Self, String> {
        use base64::Engine;
        let b = blob
            .trim()
            .strip_prefix("tpice1.")
            .ok_or("not an ice-check blob (it starts with tpice1.)")?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b)
            .map_err(|e| format!("blob is not base64url: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| "blob is not text".to_string())?;
        let mut lines = text.lines();
        let ufrag = lines.next().ok_or("blob has no ufrag")?.to_string();
        let pwd = lines.next().ok_or("blob has no pwd")?.to_string();
        if ufrag.len() < 4 || pwd.len() < 22 {
            return Err("ufrag or pwd too short (RFC 8445 §5.3: 24 and 128 bits)".into());
        }
        let candidates = lines
            .filter(|l| !l.trim().is_empty())
            .map(Candidate::from_line)
            .collect::<Result<_, _>>()?;
        Ok(Description {
            ufrag,
            pwd,
            candidates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_rfc_8445() {
        assert_eq!(priority(Kind::Host, 65535), 2_130_706_431);
        assert!(priority(Kind::Host, 1) > priority(Kind::Prflx, 65535));
        assert!(priority(Kind::Prflx, 1) > priority(Kind::Srflx, 65535));
        assert!(priority(Kind::Srflx, 1) > priority(Kind::Relay, 65535));
        // Pair priority is symmetric in who computes it.
        assert_eq!(pair_priority(10, 20), (1 << 32) * 10 + 40);
        assert_eq!(pair_priority(20, 10), (1 << 32) * 10 + 40 + 1);
    }

    #[test]
    fn blob_round_trips() {
        let d = Description {
            ufrag: "abcd".into(),
            pwd: "0123456789abcdefghijkl".into(),
            candidates: vec![
                Candidate {
                    kind: Kind::Host,
                    addr: "10.0.0.1:5000".parse().unwrap(),
                    priority: priority(Kind::Host, 65535),
                    foundation: foundation(Kind::Host, "10.0.0.1".parse().unwrap(), None, None),
                    via: None,
                },
                Candidate {
                    kind: Kind::Relay,
                    addr: "[2001:db8::1]:50000".parse().unwrap(),
                    priority: priority(Kind::Relay, 1),
                    foundation: "f".into(),
                    via: Some(Transport::Tls),
                },
            ],
        };
        let blob = d.to_blob();
        assert!(!blob.contains(char::is_whitespace));
        assert_eq!(Description::from_blob(&blob).unwrap(), d);
        assert!(Description::from_blob("nope").is_err());
    }

    #[test]
    fn path_kind_is_the_furthest_end() {
        assert_eq!(PathKind::of(Kind::Host, Kind::Host), PathKind::Host);
        assert_eq!(PathKind::of(Kind::Host, Kind::Srflx), PathKind::Srflx);
        assert_eq!(PathKind::of(Kind::Prflx, Kind::Host), PathKind::Srflx);
        assert_eq!(PathKind::of(Kind::Relay, Kind::Prflx), PathKind::Relay);
    }
}
