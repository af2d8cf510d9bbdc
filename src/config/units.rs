//! Value types of the configuration: port ranges and durations.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use turnpike_proto::core::PortRange;

/// A duration written "50ms", "30s", "5m", "1h", "2d" or as plain seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(n: u64) -> Self {
        Span(Duration::from_secs(n))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() != 0 {
            return write!(f, "{}ms", self.0.as_millis());
        }
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "0s"),
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration `{s}`, expected e.g. \"30s\", \"5m\", \"1h\", \"2d\"")
        })?;
        let mult = match unit.trim() {
            "ms" => return Ok(Span(Duration::from_millis(n))),
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            u => {
                return Err(format!(
                    "invalid duration unit `{u}` in `{s}`, use ms, s, m, h or d"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Span::secs)
            .ok_or_else(|| format!("duration `{s}` is too large"))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Span::secs(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}
