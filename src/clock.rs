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

/// `t` (a monotonic instant) as CLOCK_MONOTONIC nanoseconds, the clock
/// the XDP fast path's program reads (issue 15). The kernel's clock is
/// read before the `Instant`, so the result is never later than `t`: a
/// route never outlives what allowed it. An instant already past gives
/// now (expired at once).
#[allow(
    clippy::disallowed_methods,
    reason = "this is the clock: the one place that reads it"
)]
pub fn monotonic_ns_at(t: Instant) -> u64 {
    let kernel = turnpike_sys::xdp::monotonic_ns();
    let now = Instant::now();
    let ahead = t.saturating_duration_since(now).as_nanos();
    kernel.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
}

/// The monotonic clock alone (deadlines, elapsed times of the tools).
#[allow(
    clippy::disallowed_methods,
    reason = "this is the clock: the one place that reads it"
)]
pub fn instant() -> Instant {
    Instant::now()
}
