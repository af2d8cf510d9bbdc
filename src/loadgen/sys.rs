//! The few system interfaces the load generator needs: epoll, the file
//! descriptor limit, and a server's CPU time and RSS from `/proc`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// An epoll instance (level-triggered); each fd carries a caller token.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN as u32) | if out { libc::EPOLLOUT as u32 } else { 0 },
            u64: token,
        };
        // SAFETY: `ev` is valid for the call.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watch `fd` for input.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, false)
    }

    /// Watch for input, and for output too when `out` (a stream with
    /// bytes it could not write yet).
    pub fn modify(&self, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, out)
    }

    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is valid for the call; errors (fd already gone) are
        // of no consequence.
        unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Wait at most `timeout` (rounded up to a millisecond; zero polls) and
    /// return the tokens of the ready fds.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<impl Iterator<Item = u64> + '_> {
        let ms = if timeout.is_zero() {
            0
        } else {
            timeout.as_micros().div_ceil(1000).min(60_000) as libc::c_int
        };
        // SAFETY: the buffer holds `len` events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ms,
            )
        };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the new
/// soft limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is valid for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// Whether an I/O error means "out of file descriptors".
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// A process's CPU time and resident set, read from `/proc/PID`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in seconds (all threads).
    pub cpu_s: f64,
    /// VmRSS in bytes.
    pub rss: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: plain call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15,
/// counted after the parenthesised command name, which may contain
/// spaces), in clock ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ")": state(3) ppid(4) ... utime is field 14, i.e. the 12th here.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS from the text of `/proc/PID/status`, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sample a process. An error when it does not exist (any more).
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bad = |what| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/{what}"));
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| bad("stat"))?;
    let rss = parse_status_rss(&status).ok_or_else(|| bad("status"))?;
    Ok(ProcSample {
        cpu_s: ticks as f64 / ticks_per_second(),
        rss,
    })
}

/// The kernel's UDP RcvbufErrors counter (datagrams dropped because a
/// socket's receive buffer was full), system-wide, from /proc/net/snmp.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    parse_snmp_udp(
        &std::fs::read_to_string("/proc/net/snmp").ok()?,
        "RcvbufErrors",
    )
}

/// A field of the `Udp:` lines (header, then values) of /proc/net/snmp.
pub fn parse_snmp_udp(snmp: &str, field: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// This process's own CPU time (user + system, all threads) in seconds.
pub fn self_cpu_s() -> f64 {
    // SAFETY: `ru` is valid for the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let s = "1234 (turn server) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 120 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(s), Some(370));
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss(s), Some(2048 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn snmp_udp_field() {
        let s = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 2 3 40 7 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_snmp_udp(s, "RcvbufErrors"), Some(7));
        assert_eq!(parse_snmp_udp(s, "InDatagrams"), Some(10));
        assert_eq!(parse_snmp_udp(s, "Nope"), None);
    }

    #[test]
    fn own_process_sample() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss > 0);
        assert!(s.cpu_s >= 0.0);
    }
}
