//! The shell's clock: the only place the server reads the time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Now;

/// Both clocks, read once.
pub fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}
