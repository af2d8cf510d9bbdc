//! Network namespaces: running code with a thread inside one (`setns(2)`
//! is per thread), or moving the calling thread into a new one.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns` keeps named namespaces.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Move the calling thread into the network namespace `ns` (an open
/// `/var/run/netns/NAME` or `/proc/PID/ns/net`). Affects this thread only.
pub fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor we hold open; it changes only the
    // calling thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread inside the named namespace (`ip netns add
/// NAME`), and return what it returns. The thread ends with `f`, so no
/// pooled thread is left in the namespace. Sockets `f` creates stay in the
/// namespace wherever they are used afterwards.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("network namespace `{name}`: not a name"),
        ));
    }
    let p = path(name);
    let file = File::open(&p).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "network namespace {name}: {}: {e} (create it with `ip netns add {name}`)",
                p.display()
            ),
        )
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("entering network namespace {name}: {e} (needs root)"),
                )
            })?;
            drop(file);
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Move the calling thread into a new, empty network namespace (only a
/// loopback interface, down). Needs root.
pub fn unshare() -> io::Result<()> {
    // SAFETY: unshare(2) has no memory preconditions; CLONE_NEWNET on a
    // thread affects that thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
