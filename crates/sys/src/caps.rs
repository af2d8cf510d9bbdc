//! Linux capabilities: reading a thread's sets, and giving one up for good.
//!
//! Capabilities belong to threads, not processes: a thread that drops one
//! leaves its siblings holding it, and threads it starts later inherit what
//! it has then. So [`drop_for_good`] refuses to run once a second thread
//! exists; the server calls it first thing, before any runtime starts.

use std::io;

/// `CAP_NET_BIND_SERVICE`: binding TCP and UDP ports below 1024.
pub const CAP_NET_BIND_SERVICE: u32 = 10;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets, one bit per capability number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl CapSets {
    /// Whether `cap` is in the permitted set (so the thread holds it or
    /// can make it effective).
    pub fn permits(&self, cap: u32) -> bool {
        self.permitted & (1u64 << cap) != 0
    }
}

fn join(d: &[Data; 2], f: impl Fn(&Data) -> u32) -> u64 {
    u64::from(f(&d[0])) | (u64::from(f(&d[1])) << 32)
}

/// The calling thread's capability sets (capget(2)).
pub fn current() -> io::Result<CapSets> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget reads the header and, for version 3, writes two data
    // structs; both point at live values of the kernel's layout (repr(C)).
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CapSets {
        effective: join(&d, |x| x.effective),
        permitted: join(&d, |x| x.permitted),
        inheritable: join(&d, |x| x.inheritable),
    })
}

fn set(c: CapSets) -> io::Result<()> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let d = [0, 1].map(|i| Data {
        effective: half(c.effective, i),
        permitted: half(c.permitted, i),
        inheritable: half(c.inheritable, i),
    });
    // SAFETY: capset reads the header and two data structs of the kernel's
    // layout, all live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: u32) -> io::Result<()> {
    let (a2, a3) = match option {
        libc::PR_CAP_AMBIENT => (libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong, arg),
        _ => (libc::c_ulong::from(arg), 0),
    };
    // SAFETY: these prctl options take integers only; nothing is read or
    // written through a pointer.
    let rc = unsafe {
        libc::prctl(
            option,
            a2,
            libc::c_ulong::from(a3),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Give up `cap` in the calling thread, for good: out of the ambient set
/// (`PR_CAP_AMBIENT_LOWER`), the effective, permitted and inheritable sets
/// (capset: lowering needs no privilege, and nothing short of executing a
/// privileged program raises a permitted set again, which
/// `NoNewPrivileges` forbids), and the bounding set when allowed
/// (`PR_CAPBSET_DROP` needs `CAP_SETPCAP`; without it the capability is
/// gone anyway). Returns whether the thread held it (permitted) before.
///
/// Other threads keep what they have: see [`drop_for_good`].
pub fn drop_in_this_thread(cap: u32) -> io::Result<bool> {
    if cap > 63 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no such capability",
        ));
    }
    match prctl(libc::PR_CAP_AMBIENT, cap) {
        // EINVAL: a kernel before 4.3, without ambient capabilities.
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        _ => {}
    }
    let before = current()?;
    let bit = !(1u64 << cap);
    set(CapSets {
        effective: before.effective & bit,
        permitted: before.permitted & bit,
        inheritable: before.inheritable & bit,
    })?;
    match prctl(libc::PR_CAPBSET_DROP, cap) {
        Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
        _ => {}
    }
    Ok(before.permits(cap))
}

/// [`drop_in_this_thread`] for the whole process, which must have one
/// thread only (checked in `/proc/self/status`): call it before starting
/// any thread or runtime.
pub fn drop_for_good(cap: u32) -> io::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "{threads} threads: capabilities are per thread, so they must be dropped before a second thread starts"
        )));
    }
    drop_in_this_thread(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (capabilities are per thread, and the test
    /// harness runs other tests in other threads): a thread that held the
    /// capability (as root does) no longer does, and cannot take it back;
    /// the other sets keep the rest.
    #[test]
    fn a_dropped_capability_is_gone_from_every_set_of_the_thread() {
        std::thread::spawn(|| {
            let before = current().unwrap();
            let had = drop_in_this_thread(CAP_NET_BIND_SERVICE).unwrap();
            assert_eq!(had, before.permits(CAP_NET_BIND_SERVICE));
            let after = current().unwrap();
            let bit = 1u64 << CAP_NET_BIND_SERVICE;
            assert_eq!(after.effective & bit, 0);
            assert_eq!(after.permitted & bit, 0);
            assert_eq!(after.inheritable & bit, 0);
            assert_eq!(after.permitted, before.permitted & !bit, "only that one");
            // Raising it again fails: it is not in the permitted set.
            let again = CapSets {
                effective: after.effective | bit,
                ..after
            };
            assert!(set(again).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_whole_process_version_refuses_a_second_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let e = drop_for_good(CAP_NET_BIND_SERVICE).unwrap_err();
        assert!(e.to_string().contains("threads"), "{e}");
        drop(tx);
        other.join().unwrap();
    }
}
