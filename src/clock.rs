//! The clock: the one module of the server and its tools that reads the
//! time (clippy.toml bans clock reads everywhere else). The server reads it
//! once per batch of datagrams and passes it into the core.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use turnpike_proto::core::Now;

/// Both clocks, read once.
#[allow(
    clippy::disallowed_methods,
    reason = "this is the clock: the one place that reads it"
)]
pub fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// The monotonic clock alone (deadlines, elapsed times of the tools).
#[allow(
    clippy::disallowed_methods,
    reason = "this is the clock: the one place that reads it"
)]
pub fn instant() -> Instant {
    Instant::now()
}
