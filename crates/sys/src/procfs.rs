//! Reading `/proc`: a process's CPU time and resident set, the kernel's
//! UDP drop counter, and the whole machine's CPU time by kind (user,
//! system, irq, softirq), which is where work done in the kernel on a
//! process's behalf (XDP, softirq) shows.

use std::io;

/// A process's CPU time and resident set, read from `/proc/PID`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in seconds (all threads).
    pub cpu_s: f64,
    /// VmRSS in bytes.
    pub rss: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
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
    let mut ru: libc::rusage = crate::zeroed();
    // SAFETY: `ru` is valid for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The machine's CPU time by kind, all CPUs together, in seconds: the
/// first line of `/proc/stat`. Work the kernel does in softirq (packet
/// processing, XDP) is in `softirq`, not in any process's time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MachineCpu {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl MachineCpu {
    /// Time spent working (everything but idle and iowait).
    pub fn busy(&self) -> f64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            user: self.user - earlier.user,
            nice: self.nice - earlier.nice,
            system: self.system - earlier.system,
            idle: self.idle - earlier.idle,
            iowait: self.iowait - earlier.iowait,
            irq: self.irq - earlier.irq,
            softirq: self.softirq - earlier.softirq,
            steal: self.steal - earlier.steal,
        }
    }
}

/// The `cpu` line of `/proc/stat` text, in seconds.
pub fn parse_proc_stat(stat: &str) -> Option<MachineCpu> {
    parse_cpu_line(stat.lines().find(|l| l.starts_with("cpu "))?)
}

/// The `cpuN` lines of `/proc/stat` text, in seconds, indexed by N (a CPU
/// that is offline, so has no line, reads as all zero).
pub fn parse_proc_stat_per_cpu(stat: &str) -> Vec<MachineCpu> {
    let mut v: Vec<MachineCpu> = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let Some((n, _)) = rest.split_once(' ') else {
            continue;
        };
        let (Ok(n), Some(c)) = (n.parse::<usize>(), parse_cpu_line(line)) else {
            continue;
        };
        if n >= 4096 {
            continue;
        }
        if v.len() <= n {
            v.resize(n + 1, MachineCpu::default());
        }
        v[n] = c;
    }
    v
}

/// One `cpu`/`cpuN` line, in seconds.
fn parse_cpu_line(line: &str) -> Option<MachineCpu> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let hz = ticks_per_second();
    let f = |i: usize| v.get(i).copied().unwrap_or(0) as f64 / hz;
    Some(MachineCpu {
        user: f(0),
        nice: f(1),
        system: f(2),
        idle: f(3),
        iowait: f(4),
        irq: f(5),
        softirq: f(6),
        steal: f(7),
    })
}

/// The machine's CPU time now.
pub fn machine_cpu() -> io::Result<MachineCpu> {
    let s = std::fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&s).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat"))
}

/// The machine's CPU time now, all CPUs together and each CPU, from one
/// reading of `/proc/stat`.
pub fn machine_cpu_per_cpu() -> io::Result<(MachineCpu, Vec<MachineCpu>)> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let all = parse_proc_stat(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat"))?;
    Ok((all, parse_proc_stat_per_cpu(&s)))
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
    fn proc_stat_cpu_line() {
        let s = "cpu  100 0 50 1000 5 1 2 0 0 0\ncpu0 50 0 25 500 2 0 1 0 0 0\nintr 1\n";
        let c = parse_proc_stat(s).unwrap();
        let hz = ticks_per_second();
        assert_eq!(c.user, 100.0 / hz);
        assert_eq!(c.softirq, 2.0 / hz);
        assert_eq!(c.busy(), 153.0 / hz);
        assert!(machine_cpu().unwrap().busy() > 0.0);
    }

    #[test]
    fn proc_stat_per_cpu_lines() {
        let s = "cpu  100 0 50 1000 5 1 2 0 0 0
cpu0 50 0 25 500 2 0 1 0 0 0
cpu2 7 0 1 9 0 0 3 0 0 0
intr 1
cpufreq x
";
        let v = parse_proc_stat_per_cpu(s);
        let hz = ticks_per_second();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].user, 50.0 / hz);
        assert_eq!(v[1], MachineCpu::default(), "no line: offline");
        assert_eq!(v[2].softirq, 3.0 / hz);
        let (all, per) = machine_cpu_per_cpu().unwrap();
        assert!(all.busy() > 0.0);
        assert!(!per.is_empty());
    }

    #[test]
    fn own_process_sample() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss > 0);
        assert!(s.cpu_s >= 0.0);
    }
}
