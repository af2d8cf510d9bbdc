//! The `turnpike` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use turnpike::config::{Config, EMBEDDED_NAME};

/// turnpike: a STUN/TURN server for WebRTC.
///
/// Clients list it in iceServers as stun:HOST:3478, turn:HOST:3478 and
/// turns:HOST:5349. Start with `turnpike serve`; it runs on an embedded
/// default (UDP and TCP on port 3478) until you give it a config file.
#[derive(Parser, Debug)]
#[command(name = "turnpike", version, about, long_about)]
struct Cli {
    /// Log filter, e.g. "info", "debug", "turnpike=trace". Overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the STUN/TURN server until SIGINT or SIGTERM.
    Serve {
        /// TOML config file (see conf/turnpike.toml). Without it the
        /// embedded default is used.
        #[arg(short, long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file and print the effective configuration
    /// (defaults filled in). Exits non-zero with the file, key and fix on
    /// error.
    Check {
        /// The TOML file to check.
        path: PathBuf,
    },
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: "FILE: KEY: problem. Fix: ..." (the context chain
            // joined with ": ").
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Config(ConfigCommand::Check { path }) => {
            let cfg = Config::load(&path)?;
            print!("{}", cfg.to_toml());
            eprintln!("{}: OK", path.display());
            Ok(())
        }
        Command::Serve { config } => {
            init_logging(cli.log_level.as_deref());
            serve(config)
        }
    }
}

fn serve(config: Option<PathBuf>) -> Result<()> {
    let (mut cfg, name) = match &config {
        Some(p) => (Config::load(p)?, p.display().to_string()),
        None => (Config::embedded(), EMBEDDED_NAME.to_string()),
    };
    tracing::info!(config = %name, version = env!("CARGO_PKG_VERSION"), "starting turnpike");
    let generated = cfg.auth.is_empty().then(|| {
        let secret = random_secret();
        cfg.auth.secrets.push(secret.clone());
        secret
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")?;
    // Install the signal handlers before the first listener serves and is
    // announced: from then on SIGTERM/SIGINT must mean a clean shutdown,
    // not death by the default disposition.
    let signals = {
        let _rt = rt.enter();
        Signals::install()?
    };
    let handle = turnpike::io::start(&cfg).with_context(|| name.clone())?;
    // One plain line per listener on stdout, for people and scripts (tests
    // read the real port from it when the config says port 0).
    for l in handle.listeners() {
        println!("listening {} {}", l.transport, l.addr);
    }
    if let Some(secret) = generated {
        print_generated_credentials(&secret, handle.listeners());
    }
    let signal = rt.block_on(signals.wait());
    tracing::info!(signal, "shutting down");
    handle.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// 32 random bytes as hex.
fn random_secret() -> String {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("OS randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// No credentials were configured: say so, show the generated secret and
/// an iceServers entry with a 24-hour credential for it.
fn print_generated_credentials(secret: &str, listeners: &[turnpike::io::BoundListener]) {
    use turnpike::config::Transport;
    let expiry = turnpike::io::clock::now().unix + 24 * 3600;
    let username = format!("{expiry}:turnpike");
    let password = turnpike::core::auth::rest_password(secret, &username);
    let host = |a: std::net::SocketAddr| match a.ip() {
        ip if ip.is_unspecified() && a.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        ip if ip.is_ipv6() => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let mut urls = Vec::new();
    for l in listeners.iter().filter(|l| l.addr.is_ipv4()) {
        let url = match l.transport {
            Transport::Udp => format!("turn:{}:{}?transport=udp", host(l.addr), l.addr.port()),
            Transport::Tcp => format!("turn:{}:{}?transport=tcp", host(l.addr), l.addr.port()),
            Transport::Tls => format!("turns:{}:{}?transport=tcp", host(l.addr), l.addr.port()),
        };
        urls.push(format!("\"{url}\""));
    }
    tracing::warn!("no [auth] configured: generated a TURN REST secret for this run only");
    println!("secret {secret}");
    println!(
        "iceServers [{{\"urls\":[{}],\"username\":\"{username}\",\"credential\":\"{password}\"}}]",
        urls.join(",")
    );
}

/// SIGTERM and SIGINT handlers, installed (in a runtime context) before
/// they are waited for, so a signal that arrives early is not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
