//! `turnpike loadgen`: the command line of the load generators (the
//! generators themselves are `turnpike::loadgen`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub(crate) enum LoadgenCommand {
    /// Relay data through allocations and measure offered vs relayed
    /// messages per second, loss and RTT (one round trip = 2 relayed
    /// messages).
    Relay(RelayArgs),
    /// Set up --count allocations (Allocate with its 401 round trip,
    /// CreatePermission, ChannelBind), then delete them; set-ups per second.
    Allocations(AllocationsArgs),
    /// STUN Binding requests per second and their RTT.
    Binding(BindingArgs),
    /// Hold --allocations idle allocations (one permission and one channel
    /// each) and report the server's RSS per allocation.
    Idle(IdleArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct TargetArgs {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: std::net::SocketAddr,
    /// Client transport to the server.
    #[arg(long, default_value = "udp")]
    transport: TransportArg,
    /// TLS: trust any certificate (self-signed benchmark servers).
    #[arg(long)]
    insecure: bool,
    /// TLS: trust the PEM certificate(s) in this file.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum TransportArg {
    Udp,
    Tcp,
    Tls,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct AuthArgs {
    /// TURN REST shared secret (a credential per allocation, user "lgN").
    #[arg(long, conflicts_with_all = ["user", "password"], required_unless_present = "user")]
    secret: Option<String>,
    /// Static long-term user (with --password).
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// Allocations (c2c: an even number, in pairs).
    #[arg(long, default_value_t = 2)]
    allocations: usize,
    #[arg(long, default_value = "c2c")]
    mode: ModeArg,
    /// How data is sent: ChannelData or Send/Data indications.
    #[arg(long, default_value = "channel")]
    method: MethodArg,
    /// Payload bytes per message (at least 24: sequence number and
    /// timestamp).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Offered relayed messages per second, in total (round trips × 2).
    /// Without it: closed loop with --window round trips in flight per
    /// sending allocation.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// A round trip not back within this many milliseconds is lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Server process to measure (CPU from /proc/PID/stat, VmRSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sending threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Echo mode: the IP address the echo peers bind to (default: loopback
    /// of the server's family). The allocations are permitted and
    /// channel-bound to it, so the server must reach it.
    #[arg(long, value_name = "ADDR")]
    peer_bind: Option<std::net::IpAddr>,
    /// Echo mode: open the echo peers' sockets inside this network
    /// namespace (`ip netns add NAME`; needs root), e.g. a peers namespace
    /// behind the server's, while the generator runs in another.
    #[arg(long, value_name = "NAME")]
    peer_netns: Option<String>,
    /// Echo mode: how many echo peer sockets (allocation i talks to peer i
    /// mod N; default one per thread). --peers = --allocations gives each
    /// allocation a peer endpoint of its own.
    #[arg(long, value_name = "N")]
    peers: Option<usize>,
    /// Ask for relayed addresses of this family in every Allocate
    /// (REQUESTED-ADDRESS-FAMILY); default: not asked (IPv4). With an IPv4
    /// server address and ipv6 here, clients reach IPv6 peers (4↔6).
    #[arg(long, value_name = "FAMILY")]
    relay_family: Option<RelayFamilyArg>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum RelayFamilyArg {
    Ipv4,
    Ipv6,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum ModeArg {
    C2c,
    Echo,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum MethodArg {
    Channel,
    Send,
}

#[derive(Args, Debug)]
pub(crate) struct AllocationsArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Set-ups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args, Debug)]
pub(crate) struct BindingArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Requests per second in total. Without it: closed loop with --window
    /// requests in flight per socket.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Client sockets (the server spreads five-tuples over its threads).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args, Debug)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[arg(long, default_value_t = 1000)]
    allocations: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Server process whose VmRSS is read.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to hold the allocations (refreshed as needed).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Seconds to let the server settle before reading its RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

fn secs(what: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        bail!("{what}: seconds must be 0..=86400");
    }
    Ok(Duration::from_secs_f64(v))
}

fn target(t: &TargetArgs) -> Result<turnpike::loadgen::Target> {
    use turnpike::config::Transport;
    let transport = match t.transport {
        TransportArg::Udp => Transport::Udp,
        TransportArg::Tcp => Transport::Tcp,
        TransportArg::Tls => Transport::Tls,
    };
    let tls = match transport {
        Transport::Tls => Some(
            turnpike::loadgen::tls_config(t.ca.as_deref(), t.insecure)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        _ => None,
    };
    Ok(turnpike::loadgen::Target {
        server: t.server,
        transport,
        tls,
    })
}

fn auth(a: &AuthArgs) -> turnpike::loadgen::Auth {
    match (&a.secret, &a.user, &a.password) {
        (Some(s), _, _) => turnpike::loadgen::Auth::Rest { secret: s.clone() },
        (None, Some(u), Some(p)) => turnpike::loadgen::Auth::Static {
            user: u.clone(),
            password: p.clone(),
        },
        // clap requires one or the other.
        _ => turnpike::loadgen::Auth::Rest {
            secret: String::new(),
        },
    }
}

fn emit<T: serde::Serialize>(json: bool, r: &T, human: impl Fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{}", human(r));
    }
    Ok(())
}

/// Run one load generator and print its report.
pub(crate) fn run(cmd: LoadgenCommand) -> Result<()> {
    use turnpike::loadgen::{self as lg, report};
    match cmd {
        LoadgenCommand::Relay(a) => {
            let o = lg::RelayOpts {
                target: target(&a.target)?,
                auth: auth(&a.auth),
                allocations: a.allocations,
                mode: match a.mode {
                    ModeArg::C2c => lg::Mode::C2c,
                    ModeArg::Echo => lg::Mode::Echo,
                },
                method: match a.method {
                    MethodArg::Channel => lg::DataMethod::Channel,
                    MethodArg::Send => lg::DataMethod::Send,
                },
                size: a.size,
                rate: a.rate,
                window: a.window,
                duration: secs("--duration", a.duration)?,
                warmup: secs("--warmup", a.warmup)?,
                timeout: Duration::from_millis(a.timeout_ms),
                server_pid: a.server_pid,
                threads: a.threads,
                peer_bind: a.peer_bind,
                peer_netns: a.peer_netns,
                peers: a.peers,
                relay_family: a.relay_family.map(|f| match f {
                    RelayFamilyArg::Ipv4 => lg::RelayFamily::Ipv4,
                    RelayFamilyArg::Ipv6 => lg::RelayFamily::Ipv6,
                }),
            };
            let r = lg::relay(o)?;
            emit(a.target.json, &r, report::relay)
        }
        LoadgenCommand::Allocations(a) => {
            let r = lg::allocations(lg::AllocationsOpts {
                target: target(&a.target)?,
                auth: auth(&a.auth),
                count: a.count,
                concurrency: a.concurrency,
                server_pid: a.server_pid,
            })?;
            emit(a.target.json, &r, report::allocations)?;
            if r.setups_failed > 0 {
                bail!("{} of {} set-ups failed", r.setups_failed, r.count);
            }
            Ok(())
        }
        LoadgenCommand::Binding(a) => {
            let r = lg::binding(lg::BindingOpts {
                target: target(&a.target)?,
                duration: secs("--duration", a.duration)?,
                warmup: secs("--warmup", a.warmup)?,
                rate: a.rate,
                window: a.window,
                sockets: a.sockets,
                timeout: Duration::from_millis(a.timeout_ms),
                server_pid: a.server_pid,
            })?;
            emit(a.target.json, &r, report::binding)
        }
        LoadgenCommand::Idle(a) => {
            let r = lg::idle(lg::IdleOpts {
                target: target(&a.target)?,
                auth: auth(&a.auth),
                allocations: a.allocations,
                concurrency: a.concurrency,
                server_pid: a.server_pid,
                hold: secs("--hold", a.hold)?,
                settle: secs("--settle", a.settle)?,
            })?;
            emit(a.target.json, &r, report::idle)
        }
    }
}
