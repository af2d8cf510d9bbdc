//! The `turnpike` command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio::sync::mpsc;
use turnpike::config::{Config, EMBEDDED_NAME, LogFormat};
use turnpike::http::{AppState, Op};
use turnpike::io::ServerHandle;
use turnpike::sd_notify;

mod cli;

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
    /// Log format: text (default) or json (one object per line). Overrides
    /// [log] format.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the STUN/TURN server.
    ///
    /// SIGTERM drains (new allocations are turned away, live ones keep
    /// relaying until they end or http.drain_deadline passes; a second
    /// SIGTERM exits at once). SIGINT stops at once. SIGHUP reloads the
    /// config file. Exit status 0 after a signal; 75 after a drain asked
    /// for over the API or ended by its deadline (so that systemd's
    /// Restart=on-failure starts the server again).
    Serve {
        /// TOML config file (see conf/turnpike.toml). Without it the
        /// embedded default is used.
        #[arg(short, long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Inspect configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint a TURN REST credential offline and print it as JSON (the same
    /// JSON as GET /api/v1/credentials).
    Credentials(CredentialsArgs),
    /// Check which ICE paths (host, server-reflexive, relayed) work
    /// between two agents through TURN servers, with round-trip times.
    ///
    /// Both agents gather host, server-reflexive (STUN) and relayed (TURN)
    /// candidates, check every pair, nominate one and measure round trips
    /// on every pair that works. Progress goes to stderr; the result (a
    /// table, or one JSON document with --json) to stdout. In offer/answer
    /// mode the first line of stdout is this side's description.
    ///
    /// Exit status: 0 when the expectations hold (--expect, or with none:
    /// at least one pair succeeded), 1 when they do not, 2 when the check
    /// could not run.
    IceCheck(Box<cli::ice_check::IceCheckArgs>),
    /// Load generators: relay throughput, allocation set-up rate, Binding
    /// rate, memory per idle allocation. Works against any TURN server
    /// (coturn too). Traffic goes only to --server.
    #[command(subcommand)]
    Loadgen(cli::loadgen::LoadgenCommand),
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

#[derive(Args, Debug)]
struct CredentialsArgs {
    /// The shared secret (see also --secret-file and --config).
    #[arg(long, conflicts_with_all = ["secret_file"])]
    secret: Option<String>,
    /// A file whose first line is the shared secret.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Take the secret (the first of [auth] secrets), the URIs and the TTL
    /// cap from this config file.
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The user the credential is for.
    #[arg(long, default_value = "user")]
    user: String,
    /// Lifetime, e.g. 3600, "30m", "24h" (capped by http.credential_ttl of
    /// the config).
    #[arg(long, default_value = "24h")]
    ttl: turnpike::config::Span,
}

/// Set once logging is initialised: whether it writes JSON. The error
/// that ends the process is then one more JSON line, not plain text.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn init_logging(filter: Option<&str>, format: LogFormat) {
    let _ = JSON_LOGS.set(format == LogFormat::Json);
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::IceCheck(args) = cli.command {
        if let Some(f) = &cli.log_level {
            init_logging(Some(f), LogFormat::Text);
        }
        return cli::ice_check::main(*args);
    }
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // One line: "FILE: KEY: problem. Fix: ..." (the context chain
            // joined with ": "), in the log's format when it is JSON.
            if JSON_LOGS.get() == Some(&true) && tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exit status of a drain that no SIGTERM asked for (`POST
/// /api/v1/drain`), or that its deadline ended with allocations still
/// live: EX_TEMPFAIL, a failure, so that `Restart=on-failure`
/// (systemd/turnpike.service) starts the server again. A stop that systemd
/// itself asked for is never restarted, whatever the status.
const EXIT_DRAIN_RESTART: u8 = 75;

/// Run a command; its exit status.
fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check { path }) => {
            let cfg = Config::load(&path)?;
            print!("{}", cfg.to_toml());
            eprintln!("{}: OK", path.display());
            Ok(0)
        }
        Command::Credentials(args) => credentials(args).map(|()| 0),
        Command::IceCheck(_) => unreachable!("handled in main"),
        Command::Loadgen(cmd) => cli::loadgen::run(cmd).map(|()| 0),
        Command::Serve { config } => {
            // With --log-format the log starts before the config is read,
            // so that an error in the file comes out in that format too.
            let flag = cli.log_format.map(|f| match f {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Text => LogFormat::Text,
            });
            if let Some(format) = flag {
                init_logging(cli.log_level.as_deref(), format);
            }
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::embedded(),
            };
            if flag.is_none() {
                init_logging(cli.log_level.as_deref(), cfg.log.format);
            }
            serve(cfg, config)
        }
    }
}

fn credentials(a: CredentialsArgs) -> Result<()> {
    let cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    let secret = match (&a.secret, &a.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => turnpike::config::read_secret_file(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        (None, None) => {
            let creds = turnpike::io::credentials(&cfg)?;
            match creds.secrets().first() {
                Some(s) => s.clone(),
                None => bail!(
                    "no secret: pass --secret, --secret-file, or --config with [auth] secrets"
                ),
            }
        }
    };
    turnpike::credentials::check_user(&a.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let mut ttl = a.ttl.0.as_secs();
    if a.config.is_some() {
        ttl = ttl.min(cfg.http.credential_ttl.0.as_secs());
    }
    if ttl == 0 {
        bail!("--ttl: must be positive");
    }
    let listeners: Vec<_> = cfg.listen.iter().map(|l| (l.transport, l.addr)).collect();
    let (stun, uris) = turnpike::credentials::uris(&cfg, &listeners);
    let now = turnpike::clock::now().unix;
    let minted = turnpike::credentials::mint(&secret, &a.user, ttl, now, stun, uris);
    println!("{}", serde_json::to_string_pretty(&minted)?);
    Ok(())
}

/// Serve until a signal or a drain ends it; the exit status (see
/// [`EXIT_DRAIN_RESTART`]).
fn serve(mut cfg: Config, path: Option<PathBuf>) -> Result<u8> {
    let name = path
        .as_deref()
        .map_or(EMBEDDED_NAME.to_string(), |p| p.display().to_string());
    tracing::info!(config = %name, version = env!("CARGO_PKG_VERSION"), "starting turnpike");
    drop_bind_capability_unless_needed(&cfg);
    let generated = cfg.auth.is_empty().then(|| {
        let secret = random_secret();
        cfg.auth.secrets.push(secret.clone());
        secret
    });
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")?;
    // Install the signal handlers before the first listener serves and is
    // announced: from then on a signal means what it says, never death by
    // the default disposition.
    let signals = {
        let _rt = rt.enter();
        Signals::install()?
    };
    let handle = Arc::new(turnpike::io::start(&cfg).with_context(|| name.clone())?);
    // Issue 14: the fleet on Redis, with `[cluster] redis_url`.
    if let Err(e) = rt.block_on(async { turnpike::cluster::start(&cfg, &handle) }) {
        handle.shutdown();
        return Err(e.context(name));
    }
    let start_unix = turnpike::clock::now().unix;
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let state = Arc::new(AppState::new(
        handle.clone(),
        Arc::new(cfg.clone()),
        start_unix,
        ops_tx,
    ));
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = rt
        .block_on(turnpike::http::bind(state.clone(), async {
            let _ = http_stop_rx.await;
        }))
        .with_context(|| name.clone());
    let http = match http {
        Ok(h) => h,
        Err(e) => {
            handle.shutdown();
            return Err(e);
        }
    };
    // One plain line per listener on stdout, for people and scripts (tests
    // read the real port from it when the config says port 0).
    for l in handle.listeners() {
        println!("listening {} {}", l.transport, l.addr);
    }
    if let Some((addr, _)) = &http {
        println!("listening http {addr}");
        tracing::info!(%addr, "HTTP API listening");
    }
    let secret_file = match generated
        .as_deref()
        .map(|s| hand_over_generated_credentials(s, handle.listeners()))
        .transpose()
    {
        Ok(f) => f.flatten(),
        Err(e) => {
            handle.shutdown();
            return Err(e);
        }
    };
    state.set_ready(true);
    sd_notify::notify("READY=1");
    let ctl = Control {
        handle: handle.clone(),
        state: state.clone(),
        path,
        generated,
        drain_deadline: cfg.http.drain_deadline.0,
    };
    let stop = rt.block_on(ctl.run(signals, ops_rx));
    if stop.status == 0 {
        tracing::info!(reason = stop.reason, "shutting down");
    } else {
        tracing::warn!(
            reason = stop.reason,
            exit_status = stop.status,
            "shutting down: a drain no SIGTERM asked for, or cut by its deadline, exits non-zero so that a supervisor (Restart=on-failure) starts the server again"
        );
    }
    state.set_ready(false);
    sd_notify::notify("STOPPING=1");
    let _ = http_stop_tx.send(());
    if let Some((_, task)) = http {
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
    }
    handle.shutdown();
    if let Some(f) = secret_file {
        // The secret dies with this run; so does its file.
        let _ = std::fs::remove_file(f);
    }
    tracing::info!("stopped");
    Ok(stop.status)
}

/// Who asked for a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainBy {
    Sigterm,
    Api,
}

/// Without a port below 1024 anywhere (listeners, the HTTP listener, the
/// relay range: relay sockets bind as allocations come), the server never
/// needs CAP_NET_BIND_SERVICE, which the systemd unit grants it: give it up
/// before any thread starts (capabilities are per thread). A reload cannot
/// move a listener or the relay range (those need a restart). Port 0 lets
/// the kernel choose, never below 1024.
fn drop_bind_capability_unless_needed(cfg: &Config) {
    let low = |p: u16| p != 0 && p < 1024;
    let needed = cfg.listen.iter().any(|l| low(l.addr.port()))
        || cfg.http.addr.is_some_and(|a| low(a.port()))
        || low(cfg.relay.ports.low);
    if needed {
        return;
    }
    use turnpike_sys::caps::{CAP_NET_BIND_SERVICE, drop_for_good};
    match drop_for_good(CAP_NET_BIND_SERVICE) {
        Ok(true) => tracing::info!("no port below 1024: CAP_NET_BIND_SERVICE dropped for good"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot drop CAP_NET_BIND_SERVICE"),
    }
}

/// Why the control loop ended, and the exit status that tells it.
struct Stop {
    reason: &'static str,
    status: u8,
}

impl Stop {
    /// Asked for by a signal: SIGINT, a second SIGTERM, or a SIGTERM drain
    /// that every allocation ended.
    fn clean(reason: &'static str) -> Self {
        Stop { reason, status: 0 }
    }
}

/// The process's control loop: signals and API operations.
struct Control {
    handle: Arc<ServerHandle>,
    state: Arc<AppState>,
    path: Option<PathBuf>,
    generated: Option<String>,
    drain_deadline: Duration,
}

/// How often freed memory goes back to the kernel (a walk over the
/// allocator's free lists: well under a millisecond at tens of MiB).
const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(10);

impl Control {
    /// Run until it is time to stop; returns why.
    async fn run(self, mut signals: Signals, mut ops: mpsc::UnboundedReceiver<Op>) -> Stop {
        // The drain in progress: its deadline and who asked for it.
        let mut drain: Option<(tokio::time::Instant, DrainBy)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let watchdog = sd_notify::watchdog_interval();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        // Freed memory back to the kernel now and then, so that RSS falls
        // back after a burst (see turnpike_sys::alloc::release_free_memory).
        let mut trim_tick = tokio::time::interval(MEMORY_TRIM_INTERVAL);
        loop {
            tokio::select! {
                _ = signals.int.recv() => return Stop::clean("SIGINT"),
                _ = signals.term.recv() => {
                    if drain.is_some() {
                        return Stop::clean("second SIGTERM");
                    }
                    drain = Some((self.start_drain("SIGTERM"), DrainBy::Sigterm));
                }
                _ = signals.hup.recv() => {
                    match self.reload() {
                        Ok(notes) => tracing::info!(?notes, "reloaded on SIGHUP"),
                        Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed; keeping the running configuration"),
                    }
                }
                Some(op) = ops.recv() => match op {
                    Op::Reload(reply) => {
                        let r = self.reload();
                        match &r {
                            Ok(notes) => tracing::info!(?notes, "reloaded by API"),
                            Err(e) => tracing::error!(error = %e, "reload by API failed; keeping the running configuration"),
                        }
                        let _ = reply.send(r);
                    }
                    Op::Drain => {
                        if drain.is_none() {
                            drain = Some((self.start_drain("API"), DrainBy::Api));
                        }
                    }
                },
                _ = tick.tick(), if drain.is_some() => {
                    let Some((deadline, by)) = drain else { continue };
                    let left = self.handle.allocations();
                    if left == 0 {
                        return match by {
                            DrainBy::Sigterm => Stop::clean("drained"),
                            DrainBy::Api => Stop { reason: "drained", status: EXIT_DRAIN_RESTART },
                        };
                    }
                    if tokio::time::Instant::from_std(turnpike::clock::instant()) >= deadline {
                        tracing::warn!(allocations = left, "drain deadline passed");
                        return Stop { reason: "drain deadline", status: EXIT_DRAIN_RESTART };
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    sd_notify::notify("WATCHDOG=1");
                }
                _ = trim_tick.tick() => turnpike_sys::alloc::release_free_memory(),
            }
        }
    }

    fn start_drain(&self, by: &str) -> tokio::time::Instant {
        self.handle.set_draining(true);
        sd_notify::notify("STATUS=draining");
        tracing::info!(
            by,
            allocations = self.handle.allocations(),
            deadline_s = self.drain_deadline.as_secs(),
            "draining: new allocations are turned away, live ones keep relaying"
        );
        tokio::time::Instant::from_std(turnpike::clock::instant()) + self.drain_deadline
    }

    /// Re-read the config file and apply it; on any error the running
    /// configuration stays.
    fn reload(&self) -> Result<Vec<String>, String> {
        let Some(path) = &self.path else {
            return Err(
                "running on the embedded default: there is no config file to reload".into(),
            );
        };
        let mut cfg = load(path).map_err(|e| format!("{e:#}"))?;
        if cfg.auth.is_empty() {
            if let Some(s) = &self.generated {
                cfg.auth.secrets.push(s.clone());
            }
        }
        let notes = self
            .handle
            .reload(&cfg)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.state.set_config(Arc::new(cfg));
        Ok(notes)
    }
}

fn load(p: &Path) -> Result<Config> {
    Ok(Config::load(p)?)
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

/// No credentials were configured: say so, and hand the generated secret
/// and an iceServers entry with a 24-hour credential for it to whoever
/// started the server: on stdout when it is a terminal (a person is
/// watching), else into a new file only turnpike's user can read (mode
/// 0600), whose path the log gives. Stdout that is a pipe or a file ends
/// up in journals and CI logs, where a secret has no business. Returns the
/// file, to be removed at exit.
fn hand_over_generated_credentials(
    secret: &str,
    listeners: &[turnpike::io::BoundListener],
) -> Result<Option<PathBuf>> {
    use std::io::IsTerminal;
    let cfg = Config::embedded();
    let ls: Vec<_> = listeners
        .iter()
        .filter(|l| l.addr.is_ipv4())
        .map(|l| (l.transport, l.addr))
        .collect();
    let (_, uris) = turnpike::credentials::uris(&cfg, &ls);
    let now = turnpike::clock::now().unix;
    let m = turnpike::credentials::mint(secret, "turnpike", 24 * 3600, now, None, uris);
    let text = format!(
        "secret {secret}\niceServers {}\n",
        serde_json::to_string(&m.ice_servers).unwrap_or_default()
    );
    if std::io::stdout().is_terminal() {
        tracing::warn!(
            "no [auth] configured: generated a TURN REST secret for this run only (below)"
        );
        print!("{text}");
        return Ok(None);
    }
    let path = write_private_file(&text).context(
        "no [auth] configured and stdout is not a terminal: cannot write the generated secret to a file. Fix: set [auth] secrets (or secret_files), or set RUNTIME_DIRECTORY to a writable directory",
    )?;
    tracing::warn!(
        path = %path.display(),
        "no [auth] configured: generated a TURN REST secret for this run only; it and an iceServers entry are in this file (mode 0600), not on stdout (not a terminal)"
    );
    Ok(Some(path))
}

/// Write `text` into a new file, readable by this user alone, in
/// `$RUNTIME_DIRECTORY` (systemd's RuntimeDirectory=), else
/// `$XDG_RUNTIME_DIR`, else the temporary directory. The name carries the
/// pid and a random part; the file is created new (never through an
/// existing file or symlink).
fn write_private_file(text: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .find_map(|v| {
            let d = std::env::var_os(v)?;
            // RUNTIME_DIRECTORY lists one path per directory, ':'-separated.
            let first = d.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(std::env::temp_dir);
    let tag = &random_secret()[..12];
    let path = dir.join(format!(
        "turnpike-generated-secret-{}-{tag}",
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| path.display().to_string())?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| path.display().to_string())?;
    Ok(path)
}

/// Signal handlers, installed (in a runtime context) before they are
/// waited for, so a signal that arrives early is not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}
