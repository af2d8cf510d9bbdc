//! Process-level calls: signals, the effective user, the file-descriptor
//! limit.

use std::io;

/// Send `signal` (e.g. [`libc::SIGTERM`]) to process `pid`; a negative
/// `pid` is a process group. `signal` 0 only checks that the process
/// exists.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) has no memory preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether process `pid` exists (signal 0).
pub fn alive(pid: i32) -> bool {
    kill(pid, 0).is_ok()
}

/// SIGHUP (reload) and SIGUSR1, for tests that drive a server.
pub use libc::{SIGHUP, SIGUSR1};
pub use libc::{SIGINT, SIGKILL, SIGTERM};

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Set RLIMIT_NOFILE's soft and hard limits.
pub fn set_nofile_limit(soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set RLIMIT_NOFILE's soft and hard limits of process `pid` (prlimit(2);
/// lowering another process's limits needs the same user).
pub fn set_nofile_limit_of(pid: i32, soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is valid for the call; a null old-limit pointer is allowed.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &r, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Descriptors process `pid` has open (entries of `/proc/PID/fd`).
pub fn open_fds_of(pid: i32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft
/// limit in force afterwards (1024 if it cannot be read).
pub fn raise_nofile() -> u64 {
    let Ok((soft, hard)) = nofile_limit() else {
        return 1024;
    };
    if soft < hard && set_nofile_limit(hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Whether an I/O error means "out of file descriptors".
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Descriptors this process has open (entries of `/proc/self/fd`).
pub fn open_fds() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_a_limit() {
        assert!(alive(std::process::id() as i32));
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft > 0 && soft <= hard);
        assert!(open_fds().unwrap() > 0);
    }
}
