//! `turnpike loadgen`: load generators for a STUN/TURN server (this one or
//! any other, e.g. coturn), built so that the generator is not the
//! bottleneck: batched `sendmmsg`/`recvmmsg`, epoll, paced sending per
//! thread, and no allocation on the data path.
//!
//! * [`relay`]: data through allocations (client-to-client pairs or an
//!   echo peer), offered vs relayed messages per second, loss, RTT
//!   percentiles, and the server's CPU per relayed message.
//! * [`allocations`]: set-ups per second (Allocate with its 401 round
//!   trip, CreatePermission, ChannelBind), then deletes.
//! * [`binding`]: STUN Binding requests per second and RTT.
//! * [`idle`]: server memory per idle allocation.
//!
//! Every wait has a timeout and every run is bounded in time and count.

mod allocs;
mod binding;
mod conn;
mod hist;
mod ledger;
mod relay;
pub mod report;
mod setup;

pub use allocs::{AllocationsOpts, AllocationsReport, IdleOpts, IdleReport, allocations, idle};
pub use binding::{BindingOpts, BindingReport, binding};
pub use conn::{Target, tls_config};
pub use hist::{Histogram, Percentiles};
pub use relay::{DataMethod, Mode, RelayFamily, RelayOpts, RelayReport, RoundTrips, Totals, relay};
pub use setup::Auth;

use serde::{Deserialize, Serialize};

/// A load generator error: one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The server's resource use over a measured window, from /proc/PID.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerUsage {
    pub pid: u32,
    /// utime + stime over the window.
    pub cpu_s: f64,
    pub window_s: f64,
    /// cpu_s / window_s × 100 (100 = one core busy).
    pub cpu_pct: f64,
    /// What the CPU is divided by (relayed messages, answered requests,
    /// set-ups).
    pub units: u64,
    /// cpu_s / units, in microseconds.
    pub cpu_us_per_unit: Option<f64>,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
}

impl ServerUsage {
    pub fn new(
        pid: u32,
        a: turnpike_sys::procfs::ProcSample,
        b: turnpike_sys::procfs::ProcSample,
        window_s: f64,
        units: u64,
        rss_end: u64,
    ) -> Self {
        let cpu_s = (b.cpu_s - a.cpu_s).max(0.0);
        ServerUsage {
            pid,
            cpu_s,
            window_s,
            cpu_pct: if window_s > 0.0 {
                100.0 * cpu_s / window_s
            } else {
                0.0
            },
            units,
            cpu_us_per_unit: (units > 0).then(|| cpu_s * 1e6 / units as f64),
            rss_start_bytes: a.rss,
            rss_end_bytes: rss_end,
        }
    }
}

/// The whole machine's CPU over a measured window, from `/proc/stat`: what
/// every process and the kernel did, softirq included (where packet
/// processing and XDP run, in no process's time). Everything else running
/// on the machine counts too.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MachineUsage {
    pub window_s: f64,
    /// CPUs online (`busy_pct` can reach 100 × this).
    pub cpus: usize,
    pub user_s: f64,
    pub nice_s: f64,
    pub system_s: f64,
    pub irq_s: f64,
    pub softirq_s: f64,
    /// Not counted in `busy_s`: time a hypervisor gave to someone else.
    pub steal_s: f64,
    pub idle_s: f64,
    /// user + nice + system + irq + softirq.
    pub busy_s: f64,
    /// busy_s / window_s × 100 (100 = one core busy).
    pub busy_pct: f64,
    /// What the CPU is divided by (relayed messages).
    pub units: u64,
    /// busy_s / units, in microseconds.
    pub busy_us_per_unit: Option<f64>,
    /// Each CPU's part (with pinned processes: who did what, softirq
    /// included, which runs on the CPU that sent or received the packet).
    #[serde(default)]
    pub per_cpu: Vec<CpuUsage>,
    /// Every kind of time `/proc/stat` counted over the window (idle,
    /// iowait and steal included), as a share of the CPUs' wall time. A
    /// kernel that accounts by tick loses ticks when its virtual CPUs are
    /// not scheduled and the hypervisor reports no steal: then this falls
    /// well short of 100 and the busy figures above are too low.
    #[serde(default)]
    pub accounted_pct: f64,
    /// `accounted_pct` within 90–110: the busy figures can be compared with
    /// processes' CPU time (which the kernel counts exactly).
    #[serde(default)]
    pub complete: bool,
}

/// One CPU's busy time over the window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    pub cpu: usize,
    /// user + nice + system + irq + softirq.
    pub busy_s: f64,
    pub softirq_s: f64,
}

impl MachineUsage {
    /// From two readings of (all CPUs, each CPU) at the window's edges.
    pub fn new(
        a: &(
            turnpike_sys::procfs::MachineCpu,
            Vec<turnpike_sys::procfs::MachineCpu>,
        ),
        b: &(
            turnpike_sys::procfs::MachineCpu,
            Vec<turnpike_sys::procfs::MachineCpu>,
        ),
        window_s: f64,
        units: u64,
    ) -> Self {
        let busy = |d: &turnpike_sys::procfs::MachineCpu| {
            (d.user + d.nice + d.system + d.irq + d.softirq).max(0.0)
        };
        let d = b.0.since(&a.0);
        let busy_s = busy(&d);
        // The CPUs /proc/stat lists (this process may be pinned to fewer).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let listed = if a.1.is_empty() { cpus } else { a.1.len() };
        let accounted_s = d.busy() + d.idle + d.iowait;
        let accounted_pct = if window_s > 0.0 {
            100.0 * accounted_s / (listed as f64 * window_s)
        } else {
            0.0
        };
        let per_cpu =
            a.1.iter()
                .zip(&b.1)
                .enumerate()
                .map(|(cpu, (x, y))| {
                    let d = y.since(x);
                    CpuUsage {
                        cpu,
                        busy_s: busy(&d),
                        softirq_s: d.softirq,
                    }
                })
                .collect();
        MachineUsage {
            window_s,
            cpus,
            user_s: d.user,
            nice_s: d.nice,
            system_s: d.system,
            irq_s: d.irq,
            softirq_s: d.softirq,
            steal_s: d.steal,
            idle_s: d.idle,
            busy_s,
            busy_pct: if window_s > 0.0 {
                100.0 * busy_s / window_s
            } else {
                0.0
            },
            units,
            busy_us_per_unit: (units > 0).then(|| busy_s * 1e6 / units as f64),
            per_cpu,
            accounted_pct,
            complete: (90.0..=110.0).contains(&accounted_pct),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MachineUsage;
    use turnpike_sys::procfs::MachineCpu;

    fn cpu(busy: f64, idle: f64) -> MachineCpu {
        MachineCpu {
            user: busy,
            idle,
            ..MachineCpu::default()
        }
    }

    /// Two CPUs over a 1 s window: (all, [cpu0, cpu1]) at each edge.
    fn usage(busy: [f64; 2], idle: [f64; 2]) -> MachineUsage {
        let a = (cpu(0.0, 0.0), vec![cpu(0.0, 0.0), cpu(0.0, 0.0)]);
        let b = (
            cpu(busy[0] + busy[1], idle[0] + idle[1]),
            vec![cpu(busy[0], idle[0]), cpu(busy[1], idle[1])],
        );
        MachineUsage::new(&a, &b, 1.0, 1000)
    }

    #[test]
    fn a_window_the_kernel_fully_accounted_is_complete() {
        let m = usage([0.4, 0.3], [0.6, 0.7]);
        assert!((m.accounted_pct - 100.0).abs() < 1e-9, "{m:?}");
        assert!(m.complete);
        assert!((m.busy_s - 0.7).abs() < 1e-9);
        assert_eq!(m.per_cpu.len(), 2);
        assert_eq!(m.busy_us_per_unit, Some(0.7 * 1e6 / 1000.0));
    }

    #[test]
    fn lost_ticks_mark_the_window_incomplete() {
        // What a CI virtual machine printed: 1.54 of 2 CPU-seconds
        // accounted, almost none of it busy, while the server alone used
        // 0.12 s.
        let m = usage([0.01, 0.0], [0.75, 0.78]);
        assert!((m.accounted_pct - 77.0).abs() < 1e-9, "{m:?}");
        assert!(!m.complete);
    }
}
