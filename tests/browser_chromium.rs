//! A real browser through turnpike: headless Debian Chromium, driven over
//! the DevTools protocol (CDP over a WebSocket), connects two
//! RTCPeerConnections relay-only through turnpike and exchanges data.
//!
//! ```text
//!   namespace "web" (tests/common/netns.rs), no route anywhere else:
//!     lo 127.0.0.1           Chromium's DevTools endpoint (the test connects from inside)
//!     v0 10.99.0.1/24 ─veth─ v1 (no address; Chromium gathers only when a
//!                               non-loopback interface is up)
//!     on 10.99.0.1: the test page (a tiny HTTP server in this process),
//!                   turnpike's UDP and TCP listeners and HTTP API,
//!                   relayed addresses 10.99.0.1:40000-40999
//! ```
//!
//! The page (tests/browser_chromium.html) fetches a TURN REST credential
//! from `/api/v1/credentials` (cross-origin: turnpike's CORS allows the
//! page's origin), picks the `turn:` URI of the transport under test from
//! the `uris` it got, creates two peer connections with
//! `iceTransportPolicy: "relay"`, opens a data channel, sends messages one
//! way and gets each echoed back, and reports the selected candidate pair
//! of each side from `getStats()`. The test checks, for `?transport=udp`
//! and for `?transport=tcp`:
//!
//! - every message came back intact and in order;
//! - each side's selected pair is relay ↔ relay, nominated, on turnpike's
//!   relay IP and port range, the local candidate allocated over the
//!   transport under test, and the two sides' pairs mirror each other;
//! - turnpike logged exactly the allocations the browser reported as
//!   relay candidates (same relayed addresses, same client transport);
//! - turnpike's own counters relayed at least the bytes the page sent and
//!   echoed, both towards peers and towards clients.
//!
//! Chromium runs only inside the namespace, which has no route out, so it
//! cannot reach the Internet whatever it tries; its flags also turn off
//! the background services that would try.
//!
//! Root only (namespaces): without root the test prints a loud SKIPPED
//! banner and asserts nothing (a failure with TURNPIKE_NETNS_REQUIRED=1,
//! as scripts/test.sh sets for root). Chromium must be installed
//! (scripts/test.sh installs Debian's `chromium`); as root, a missing
//! Chromium is a failure.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{Lab, Ns};
use common::ops::{Scrape, scrape};
use common::{IO_TIMEOUT, TestServer, Transport, on_path};
use serde_json::{Value, json};

/// The namespace's non-loopback address: page, turnpike and relays.
const HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 40000..=40999;
const SECRET: &str = "browser-test-secret";
const API_KEY: &str = "browser-test-api-key";

/// Messages the page sends per transport, and characters (ASCII, so
/// bytes) per message: 64 KB each way, enough to see in the counters.
const MESSAGES: u32 = 64;
const MESSAGE_LEN: u32 = 1000;

/// How long Chromium may take to open its DevTools endpoint.
const BROWSER_START: Duration = Duration::from_secs(20);
/// How long one ordinary DevTools command may take.
const CDP_LIMIT: Duration = Duration::from_secs(10);
/// The page's limit for each step of a run (credential fetch, data
/// channel open, echoes), in milliseconds; it reports which step ran out.
const PAGE_STEP_MS: u64 = 10_000;
/// How long one whole run may take (a guard above the page's own limits).
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How long turnpike's log and counters may lag behind what the page saw.
const SERVER_LAG: Duration = Duration::from_secs(5);

/// Chromium flags: headless, no sandbox (we are root in a test), no GPU,
/// and none of the background services that would reach the network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--password-store=basic",
    "--mute-audio",
    "--disable-features=MediaRouter,DialMediaRouteProvider,OptimizationHints,Translate",
    "--remote-debugging-port=0",
];

// --- Chromium ----------------------------------------------------------------

/// The Chromium binary: Debian's real one, else `chromium` on PATH.
/// Debian's /usr/bin/chromium is a shell wrapper that adds flags of its
/// own (extensions, GPU rasterization); the binary behind it takes exactly
/// the flags above.
fn chromium_binary() -> PathBuf {
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    for name in ["chromium", "chromium-browser"] {
        if on_path(name) {
            return PathBuf::from(name);
        }
    }
    panic!(
        "Chromium not found (/usr/lib/chromium/chromium, or chromium on PATH): \
         install Debian's chromium (apt-get install chromium); scripts/test.sh does this"
    );
}

/// A headless Chromium inside a namespace, in its own process group; the
/// whole group is killed (SIGKILL) and reaped on drop, and its profile
/// directory removed, also when the test panics.
struct Chromium {
    child: Mutex<Option<Child>>,
    /// stdout and stderr lines, as they came.
    output: Arc<Mutex<Vec<String>>>,
    /// The browser's DevTools WebSocket URL.
    ws_url: String,
    /// --user-data-dir and HOME: a fresh empty directory.
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start(ns: &Ns, binary: &Path) -> Chromium {
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let home = profile.path().join("home");
        let data = profile.path().join("data");
        std::fs::create_dir(&home).expect("create HOME");
        std::fs::create_dir(&data).expect("create user-data-dir");
        // Spawned from a thread inside the namespace, so the browser and
        // every process it starts live there.
        let spawned = ns.in_ns(|| {
            Command::new(binary)
                .args(CHROMIUM_FLAGS)
                .arg(format!("--user-data-dir={}", data.display()))
                .arg("about:blank")
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join(".config"))
                .env("XDG_CACHE_HOME", home.join(".cache"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
        });
        let mut child =
            spawned.unwrap_or_else(|e| panic!("spawn {} in {}: {e}", binary.display(), ns.name()));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let out = output.clone();
            let pipe = child.stdout.take().expect("stdout piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        {
            let out = output.clone();
            let pipe = child.stderr.take().expect("stderr piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_string());
                    }
                    out.lock().unwrap().push(line);
                }
                // Dropping `tx` here tells the waiter the browser is gone.
            });
        }
        let mut chromium = Chromium {
            child: Mutex::new(Some(child)),
            output,
            ws_url: String::new(),
            _profile: profile,
        };
        match rx.recv_timeout(BROWSER_START) {
            Ok(url) => chromium.ws_url = url,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "Chromium printed no \"DevTools listening on\" line within {BROWSER_START:?}\n{}",
                chromium.output_tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = chromium.child.get_mut().unwrap().as_mut().unwrap().wait();
                panic!(
                    "Chromium exited before opening DevTools ({status:?})\n{}",
                    chromium.output_tail()
                )
            }
        }
        chromium
    }

    /// The last lines Chromium printed, without the D-Bus complaints a
    /// machine without a system bus always gets.
    fn output_tail(&self) -> String {
        let lines = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let useful: Vec<&String> = lines
            .iter()
            .filter(|l| !l.contains(":ERROR:dbus/"))
            .collect();
        let skip = useful.len().saturating_sub(40);
        let mut s = format!(
            "---- Chromium output ({} lines, {} D-Bus lines left out; last 40) ----\n",
            lines.len(),
            lines.len() - useful.len()
        );
        for l in &useful[skip..] {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("---- end of Chromium output ----");
        s
    }

    /// Panic if the browser has exited.
    fn assert_running(&self) {
        let status = {
            let mut child = self.child.lock().unwrap();
            child
                .as_mut()
                .expect("browser still owned")
                .try_wait()
                .expect("try_wait")
        };
        if let Some(status) = status {
            panic!("Chromium exited: {status}\n{}", self.output_tail());
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            // The browser leads its own process group (process_group(0)),
            // so this reaches its renderer, GPU and utility processes too.
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // The process group of a child we spawned and have not
                // reaped, so the group id is still ours.
                let _ = turnpike_sys::process::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output_tail());
        }
    }
}

// --- the DevTools protocol -----------------------------------------------------

/// A DevTools client on the browser endpoint, with flattened sessions: a
/// command for a page carries that page's `sessionId`.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Events read while waiting for something else.
    events: VecDeque<Value>,
    /// The page's console messages and uncaught exceptions.
    console: Vec<String>,
}

impl Cdp {
    /// Connect to `ws_url` (ws://127.0.0.1:PORT/...) from inside `ns`,
    /// where the browser's loopback endpoint is.
    fn connect(ns: &Ns, ws_url: &str) -> Result<Cdp, String> {
        let rest = ws_url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("not a ws:// URL: {ws_url:?}"))?;
        let hostport = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|e| format!("DevTools address {hostport:?}: {e}"))?;
        let tcp = ns
            .in_ns(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT))
            .map_err(|e| format!("connect to DevTools at {addr}: {e}"))?;
        tcp.set_read_timeout(Some(CDP_LIMIT)).unwrap();
        tcp.set_write_timeout(Some(CDP_LIMIT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        let (ws, _) = tungstenite::client::client(ws_url, tcp)
            .map_err(|e| format!("WebSocket handshake with {ws_url}: {e}"))?;
        Ok(Cdp {
            ws,
            next_id: 1,
            events: VecDeque::new(),
            console: Vec::new(),
        })
    }

    /// Read one message (JSON), waiting at most until `deadline`.
    fn read(&mut self, deadline: Instant) -> Result<Value, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for DevTools".into());
            }
            self.ws
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| format!("set_read_timeout: {e}"))?;
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .map_err(|e| format!("DevTools sent bad JSON ({e}): {t}"))?;
                    self.note(&v);
                    return Ok(v);
                }
                Ok(tungstenite::Message::Close(f)) => {
                    return Err(format!("DevTools closed the connection: {f:?}"));
                }
                Ok(_) => continue, // ping/pong (answered by tungstenite), binary
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => return Err(format!("DevTools connection: {e}")),
            }
        }
    }

    /// Keep the page's console output for diagnostics.
    fn note(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let p = &v["params"];
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                x.get("value")
                                    .map(|v| v.to_string())
                                    .or_else(|| x["description"].as_str().map(str::to_string))
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.console.push(format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("?"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => {
                self.console
                    .push(format!("exception: {}", v["params"]["exceptionDetails"]));
            }
            Some("Inspector.detached") | Some("Target.targetCrashed") => {
                self.console.push(format!("{v}"));
            }
            _ => {}
        }
    }

    /// Send a command and wait (at most `limit`) for its response; an
    /// error response is an `Err`. Events read meanwhile are kept.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .map_err(|e| format!("send {method}: {e}"))?;
        let deadline = Instant::now() + limit;
        loop {
            let v = self
                .read(deadline)
                .map_err(|e| format!("{method} (limit {limit:?}): {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method} failed: {err}"));
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
            }
        }
    }

    /// Wait (at most `limit`) for an event of `method` from `session`.
    fn wait_event(
        &mut self,
        session: &str,
        method: &str,
        limit: Duration,
    ) -> Result<Value, String> {
        let matches = |v: &Value| v["method"] == method && v["sessionId"] == session;
        if let Some(i) = self.events.iter().position(matches) {
            return Ok(self.events.remove(i).expect("index found"));
        }
        let deadline = Instant::now() + limit;
        loop {
            let v = self
                .read(deadline)
                .map_err(|e| format!("waiting {limit:?} for {method}: {e}"))?;
            if matches(&v) {
                return Ok(v);
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
            }
        }
    }

    fn console_text(&self) -> String {
        if self.console.is_empty() {
            return "(the page logged nothing)".into();
        }
        self.console.join("\n")
    }
}

// --- the page server -----------------------------------------------------------

const PAGE: &str = include_str!("browser_chromium.html");

/// A tiny HTTP/1.1 server for the test page: `GET /` answers the page,
/// anything else 404; one request per connection, a thread per
/// connection (so a browser's idle pre-connection blocks nobody). Stops
/// and joins its thread on drop.
struct PageServer {
    addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Request lines served, for diagnostics.
    requests: Arc<Mutex<Vec<String>>>,
}

impl PageServer {
    fn start(ns: &Ns, ip: Ipv4Addr) -> PageServer {
        let listener = ns
            .in_ns(|| TcpListener::bind((ip, 0)))
            .unwrap_or_else(|e| panic!("bind the page server on {ip} in {}: {e}", ns.name()));
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let listener = listener.try_clone().expect("clone listener");
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = conn {
                        let requests = requests.clone();
                        std::thread::spawn(move || serve_one(stream, &requests));
                    }
                }
            })
        };
        PageServer {
            addr,
            listener,
            stop,
            thread: Some(thread),
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept(2)
        // with EINVAL on Linux; the accept loop then sees `stop`.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(mut stream: TcpStream, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut req = Vec::new();
    let mut chunk = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return, // an idle pre-connection, closed or timed out
            Ok(n) => req.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req);
    let line = text.lines().next().unwrap_or_default().to_string();
    requests.lock().unwrap().push(line.clone());
    let mut words = line.split_whitespace();
    let (status, ctype, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/")) => ("200 OK", "text/html; charset=utf-8", PAGE),
        _ => ("404 Not Found", "text/plain", "not found\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

// --- turnpike --------------------------------------------------------------------

fn config(page_origin: &str) -> String {
    format!(
        r#"
[server]
realm = "browser.test"
threads = 1
public_host = "{HOST}"

[[listen]]
transport = "udp"
addr = "{HOST}:0"

[[listen]]
transport = "tcp"
addr = "{HOST}:0"

[relay]
bind_ip = "{HOST}"
ports = "{lo}-{hi}"

[auth]
secrets = ["{SECRET}"]

[policy]
# Relay to relay: each allocation's peer is the other's relayed address,
# which the default policy refuses as private.
allow_peers = ["{HOST}/32"]

[http]
addr = "{HOST}:0"
api_keys = ["{API_KEY}"]
cors_origins = ["{page_origin}"]
"#,
        lo = RELAY_PORTS.start(),
        hi = RELAY_PORTS.end(),
    )
}

/// turnpike's relayed byte counters: (to_peer, to_client).
fn relayed_bytes(ns: &Ns, server: &TestServer) -> (f64, f64) {
    let http = server.http_addr();
    let s: Scrape = ns.in_ns(|| scrape(http));
    (
        s.value_or_zero("turnpike_relayed_bytes_total", &[("direction", "to_peer")]),
        s.value_or_zero(
            "turnpike_relayed_bytes_total",
            &[("direction", "to_client")],
        ),
    )
}

/// The `relay=` addresses of turnpike's "allocation created" lines for
/// clients on `transport`, each with the line's `client=` address.
fn logged_allocations(stderr: &str, transport: &str) -> Vec<(SocketAddr, SocketAddr)> {
    let field = |l: &str, key: &str| -> Option<String> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let want = format!("transport={transport}");
    stderr
        .lines()
        .filter(|l| l.contains("allocation created") && l.split_whitespace().any(|w| w == want))
        .map(|l| {
            let parse = |key: &str| -> SocketAddr {
                let v = field(l, key).unwrap_or_else(|| panic!("no {key} in log line {l:?}"));
                v.parse()
                    .unwrap_or_else(|e| panic!("bad {key}{v:?} in {l:?}: {e}"))
            };
            (parse("relay="), parse("client="))
        })
        .collect()
}

// --- checking a run --------------------------------------------------------------

/// `return Err(format!(...))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Parse an SDP candidate line (`candidate:FOUNDATION COMPONENT PROTOCOL
/// PRIORITY IP PORT typ TYPE ...`): (type, protocol, address).
fn parse_candidate(line: &str) -> Result<(String, String, SocketAddr), String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        w.len() >= 8 && w[0].starts_with("candidate:") && w[6] == "typ",
        "unexpected candidate line {line:?}"
    );
    let ip: IpAddr = w[4]
        .parse()
        .map_err(|e| format!("candidate address in {line:?}: {e}"))?;
    let port: u16 = w[5]
        .parse()
        .map_err(|e| format!("candidate port in {line:?}: {e}"))?;
    Ok((
        w[7].to_string(),
        w[2].to_ascii_lowercase(),
        SocketAddr::new(ip, port),
    ))
}

/// The address of a candidate from `getStats()`.
fn stats_addr(c: &Value) -> Result<SocketAddr, String> {
    let ip: IpAddr = c["address"]
        .as_str()
        .ok_or_else(|| format!("no address in {c}"))?
        .parse()
        .map_err(|e| format!("address in {c}: {e}"))?;
    let port = c["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("no port in {c}"))?;
    Ok(SocketAddr::new(ip, port))
}

fn is_relay_addr(a: SocketAddr) -> bool {
    a.ip() == IpAddr::V4(HOST) && RELAY_PORTS.contains(&a.port())
}

/// What the page's report proved.
struct Checked {
    /// (local, remote) of pc1's and of pc2's selected pair.
    pairs: [(SocketAddr, SocketAddr); 2],
    /// Every relay candidate either side gathered.
    gathered: BTreeSet<SocketAddr>,
    /// Message bytes sent plus echoed.
    payload: u64,
}

/// Check the report of `run(transport, ...)`: the page used `want_url`,
/// every message came back intact, only relay candidates on turnpike were
/// gathered, and each side's selected pair is a nominated relay <-> relay
/// pair through turnpike, allocated over `transport`, carrying the
/// messages, mirroring the other side's.
fn check_report(report: &Value, transport: &str, want_url: &str) -> Result<Checked, String> {
    ensure!(report.is_object(), "run() resolved to no report");
    if let Some(err) = report.get("error") {
        return Err(format!(
            "the page failed: {}",
            err.as_str().unwrap_or_default()
        ));
    }
    ensure!(
        report["errors"].as_array().is_some_and(|a| a.is_empty()),
        "the page recorded errors: {}",
        report["errors"]
    );
    ensure!(
        report["url"] == want_url,
        "the page used {} instead of {want_url}",
        report["url"]
    );

    // Every message came back intact, in order.
    ensure!(
        report["messagesSent"] == MESSAGES
            && report["repliesReceived"] == MESSAGES
            && report["repliesMatching"] == MESSAGES,
        "{MESSAGES} messages to send; sent {}, replies received {}, matching {}",
        report["messagesSent"],
        report["repliesReceived"],
        report["repliesMatching"]
    );
    let sent = report["charsSent"].as_u64().unwrap_or(0);
    let echoed = report["charsEchoed"].as_u64().unwrap_or(0);
    let want_sent = u64::from(MESSAGES) * u64::from(MESSAGE_LEN);
    let want_echoed = want_sent + u64::from(MESSAGES) * "echo:".len() as u64;
    ensure!(
        sent == want_sent && echoed == want_echoed,
        "sent {sent} and echoed {echoed} characters, expected {want_sent} and {want_echoed}"
    );

    // Gathered candidates: relay only, on turnpike's relay range.
    let mut gathered: [BTreeSet<SocketAddr>; 2] = Default::default();
    for (i, pc) in ["pc1", "pc2"].into_iter().enumerate() {
        for l in report["candidates"][pc].as_array().into_iter().flatten() {
            let (typ, protocol, addr) = parse_candidate(l.as_str().unwrap_or_default())?;
            ensure!(
                typ == "relay" && protocol == "udp" && is_relay_addr(addr),
                "{pc} gathered a {protocol} {typ} candidate {addr}: want only udp relay candidates on {HOST}:{RELAY_PORTS:?}"
            );
            gathered[i].insert(addr);
        }
        ensure!(!gathered[i].is_empty(), "{pc} gathered no relay candidate");
    }

    // The selected pairs.
    let unset = SocketAddr::from((HOST, 0));
    let mut pairs = [(unset, unset); 2];
    for (i, pc) in ["pc1", "pc2"].into_iter().enumerate() {
        let pair = &report[pc];
        ensure!(pair.is_object(), "{pc} has no selected candidate pair");
        // Nominated, and its checks succeeded; a consent check in flight
        // on it shows as "in-progress" for a moment (seen on a busy
        // machine), so either state is fine.
        ensure!(
            pair["nominated"] == true
                && (pair["state"] == "succeeded" || pair["state"] == "in-progress"),
            "{pc}'s selected pair is not a nominated, checked pair: state {}, nominated {}",
            pair["state"],
            pair["nominated"]
        );
        for side in ["local", "remote"] {
            let c = &pair[side];
            let addr = stats_addr(c).map_err(|e| format!("{pc}'s selected {side}: {e}"))?;
            ensure!(
                c["candidateType"] == "relay" && c["protocol"] == "udp" && is_relay_addr(addr),
                "{pc}'s selected {side} candidate is not a udp relay candidate on turnpike's {HOST}:{RELAY_PORTS:?}: {c}"
            );
        }
        let local = &pair["local"];
        ensure!(
            local["url"] == want_url && local["relayProtocol"] == transport,
            "{pc}'s local candidate is not from {want_url} allocated over {transport}: {local}"
        );
        // pc1 sent the messages and got the echoes, pc2 the other way
        // round: the selected pair carried all of them.
        let (out, back) = [(sent, echoed), (echoed, sent)][i];
        ensure!(
            pair["bytesSent"].as_u64().unwrap_or(0) >= out
                && pair["bytesReceived"].as_u64().unwrap_or(0) >= back,
            "{pc}'s selected pair sent {} and received {} bytes, less than the {out} and {back} of its messages",
            pair["bytesSent"],
            pair["bytesReceived"]
        );
        let (l, r) = (stats_addr(local)?, stats_addr(&pair["remote"])?);
        ensure!(
            gathered[i].contains(&l) && gathered[1 - i].contains(&r),
            "{pc}'s pair {l} -> {r} is not between the gathered candidates {gathered:?}"
        );
        pairs[i] = (l, r);
    }
    ensure!(
        pairs[0] == (pairs[1].1, pairs[1].0),
        "the two sides' selected pairs do not mirror each other: {pairs:?}"
    );
    Ok(Checked {
        pairs,
        gathered: gathered.into_iter().flatten().collect(),
        payload: sent + echoed,
    })
}

/// turnpike's side of a run: one "allocation created" line per relay
/// candidate the browser gathered, for clients on `transport`, from the
/// browser's address, at exactly those relayed addresses. Returns how
/// many.
fn check_allocations(
    server: &TestServer,
    transport: &str,
    gathered: &BTreeSet<SocketAddr>,
) -> Result<usize, String> {
    let deadline = Instant::now() + SERVER_LAG;
    let logged = loop {
        let logged = logged_allocations(&server.stderr_text(), transport);
        if logged.len() >= gathered.len() || Instant::now() >= deadline {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let relays: BTreeSet<SocketAddr> = logged.iter().map(|(r, _)| *r).collect();
    ensure!(
        logged.len() == gathered.len() && relays == *gathered,
        "turnpike logged {} {transport} allocations {logged:?}; the browser gathered {gathered:?}",
        logged.len()
    );
    ensure!(
        logged.iter().all(|(_, c)| c.ip() == IpAddr::V4(HOST)),
        "allocations for clients other than the browser on {HOST}: {logged:?}"
    );
    Ok(logged.len())
}

/// turnpike's relayed-byte counters went up by at least `payload` both
/// towards peers and towards clients since `before` (each message crosses
/// one allocation towards its peer and the other towards its client).
/// Returns the increases.
fn check_counters(
    ns: &Ns,
    server: &TestServer,
    before: (f64, f64),
    payload: u64,
) -> Result<(f64, f64), String> {
    let payload = payload as f64;
    let deadline = Instant::now() + SERVER_LAG;
    let (to_peer, to_client) = loop {
        let now = relayed_bytes(ns, server);
        let d = (now.0 - before.0, now.1 - before.1);
        if (d.0 >= payload && d.1 >= payload) || Instant::now() >= deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(
        to_peer >= payload && to_client >= payload,
        "turnpike relayed {to_peer} bytes to peers and {to_client} to clients during the run; \
         the page sent and echoed {payload} bytes of messages"
    );
    Ok((to_peer, to_client))
}

// --- the test ------------------------------------------------------------------------

/// Everything a failure message needs besides its own words.
struct Diag<'a> {
    chromium: &'a Chromium,
    server: &'a TestServer,
    page: &'a PageServer,
}

impl Diag<'_> {
    fn text(&self, cdp: Option<&Cdp>) -> String {
        let stderr = self.server.stderr_text();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "---- page console ----\n{}\n\
             ---- page server requests ----\n{:?}\n\
             {}\n\
             ---- turnpike stderr (last 60 lines) ----\n{tail}\n---- end ----",
            cdp.map_or("(no DevTools connection)".into(), Cdp::console_text),
            self.page.requests.lock().unwrap(),
            self.chromium.output_tail(),
        )
    }
}

/// Open `url` in a new tab: returns the tab's flattened session id once
/// the page has loaded and defines `run`.
fn open_page(cdp: &mut Cdp, url: &str) -> Result<String, String> {
    let target = cdp.call(
        None,
        "Target.createTarget",
        json!({ "url": "about:blank" }),
        CDP_LIMIT,
    )?;
    let target_id = target["targetId"]
        .as_str()
        .ok_or_else(|| format!("no targetId in {target}"))?;
    let attached = cdp.call(
        None,
        "Target.attachToTarget",
        json!({ "targetId": target_id, "flatten": true }),
        CDP_LIMIT,
    )?;
    let session = attached["sessionId"]
        .as_str()
        .ok_or_else(|| format!("no sessionId in {attached}"))?
        .to_string();
    for method in ["Runtime.enable", "Page.enable"] {
        cdp.call(Some(&session), method, json!({}), CDP_LIMIT)?;
    }
    let nav = cdp.call(
        Some(&session),
        "Page.navigate",
        json!({ "url": url }),
        CDP_LIMIT,
    )?;
    ensure!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
    cdp.wait_event(&session, "Page.loadEventFired", CDP_LIMIT)
        .map_err(|e| format!("loading {url}: {e}"))?;
    let ready = cdp.call(
        Some(&session),
        "Runtime.evaluate",
        json!({ "expression": "typeof run", "returnByValue": true }),
        CDP_LIMIT,
    )?;
    ensure!(
        ready["result"]["value"] == "function",
        "the page defines no run(): {ready}"
    );
    Ok(session)
}

#[test]
fn chromium_data_channel_relays_through_turnpike_over_udp_and_tcp() {
    let Some(lab) = Lab::new("browser") else {
        return;
    };
    let binary = chromium_binary();

    let ns = lab.add_ns("web");
    // Two ends of a veth pair in the same namespace: a non-loopback
    // interface that is up, which Chromium needs before it gathers any
    // candidate. Only v0 gets an address, so each peer connection
    // allocates exactly once.
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.add_addr("v0", &format!("{HOST}/24"));
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);

    let page = PageServer::start(&ns, HOST);
    let server = ns.start_turnpike(&config(&page.origin()));
    let api_base = format!("http://{}", server.http_addr());
    let chromium = Chromium::start(&ns, &binary);
    let diag = Diag {
        chromium: &chromium,
        server: &server,
        page: &page,
    };

    let mut cdp = Cdp::connect(&ns, &chromium.ws_url)
        .unwrap_or_else(|e| panic!("DevTools: {e}\n{}", diag.text(None)));
    let session = open_page(&mut cdp, &page.url())
        .unwrap_or_else(|e| panic!("{e}\n{}", diag.text(Some(&cdp))));

    let mut summary = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        let name = transport.to_string();
        let want_url = format!(
            "turn:{HOST}:{}?transport={name}",
            server.addr(transport, false).port()
        );
        let before = relayed_bytes(&ns, &server);

        let expression = format!(
            "run({name:?}, {api_base:?}, {API_KEY:?}, {MESSAGES}, {MESSAGE_LEN}, {PAGE_STEP_MS})"
        );
        let evaluated = cdp
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
                RUN_LIMIT,
            )
            .unwrap_or_else(|e| panic!("{name}: {expression}: {e}\n{}", diag.text(Some(&cdp))));
        let report = &evaluated["result"]["value"];
        let fail = |what: String| -> ! {
            panic!(
                "{name}: {what}\n---- page report ----\n{}\n{}\n{}",
                serde_json::to_string_pretty(report).unwrap_or_default(),
                evaluated
                    .get("exceptionDetails")
                    .map(|x| format!("exceptionDetails: {x}"))
                    .unwrap_or_default(),
                diag.text(Some(&cdp)),
            )
        };
        let checked = check_report(report, &name, &want_url).unwrap_or_else(|e| fail(e));
        let allocations =
            check_allocations(&server, &name, &checked.gathered).unwrap_or_else(|e| fail(e));
        let (to_peer, to_client) =
            check_counters(&ns, &server, before, checked.payload).unwrap_or_else(|e| fail(e));
        chromium.assert_running();

        let [(l1, r1), (l2, r2)] = checked.pairs;
        summary.push(format!(
            "{name}: {want_url}: pc1 selected relay {l1} <-> relay {r1}, pc2 relay {l2} <-> relay {r2} \
             (local relayProtocol {name}); turnpike logged {allocations} {name} allocations at those \
             addresses and relayed {to_peer} B to peers, {to_client} B to clients for {} B of messages",
            checked.payload
        ));
    }
    for s in &summary {
        println!("{s}");
    }
}
