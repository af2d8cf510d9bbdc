#![allow(
    unreachable_pub,
    reason = "helpers shared by the test binaries, each of which uses a part"
)]

//! Shared harness for the end-to-end tests: runs the built `turnpike`
//! binary on a temporary config, and gives UDP, TCP and TLS clients that
//! speak STUN to it.
//!
//! Every listener in a test config uses port 0 (tests run in parallel);
//! the harness learns the real ports from the `listening TRANSPORT ADDR`
//! lines the server prints on stdout. Every network read has a timeout
//! ([`IO_TIMEOUT`]): a timeout is always a test failure, never a pass.

#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
pub use turnpike::config::Transport;
use turnpike_proto::wire::{
    Class, FrameKind, Message, MessageBuilder, MessageType, Method, TransactionId, attr, frame_len,
};

/// How long any single network read or write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to print its listeners.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to exit after a signal.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test.
pub fn turnpike_bin() -> &'static str {
    env!("CARGO_BIN_EXE_turnpike")
}

/// The SOFTWARE value the server sends by default.
pub fn default_software() -> String {
    format!("turnpike {}", env!("CARGO_PKG_VERSION"))
}

/// Signals [`TestServer::stop`] can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// A running `turnpike serve` child process. Dropping it kills the child.
pub struct TestServer {
    child: Option<Child>,
    listeners: Vec<(Transport, SocketAddr)>,
    /// The HTTP API's address, if the config enables it.
    http: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    /// Every line the server wrote to stdout so far.
    stdout: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

enum StdoutEvent {
    Line(String),
    Eof,
}

impl TestServer {
    /// Write `config_toml` to a temporary file, start the server on it and
    /// wait (at most [`START_TIMEOUT`]) until it has printed one
    /// `listening ...` line per `[[listen]]` entry. Panics with the
    /// server's stderr if it exits or does not get there in time.
    pub fn start(config_toml: &str) -> TestServer {
        Self::start_with_args(config_toml, &[])
    }

    /// [`TestServer::start`] with extra arguments before `serve` (global
    /// options such as `--log-format json`).
    pub fn start_with_args(config_toml: &str, args: &[&str]) -> TestServer {
        // The HTTP API defaults to 127.0.0.1:9641; tests run in parallel, so
        // a config that does not mention [http] gets it on port 0.
        let config_toml = &if config_toml.contains("[http]") {
            config_toml.to_string()
        } else {
            format!("{config_toml}\n[http]\naddr = \"127.0.0.1:0\"\n")
        };
        let parsed = turnpike::config::Config::parse(config_toml, "test config")
            .unwrap_or_else(|e| panic!("the test's own config is invalid: {e}"));
        let expected = parsed.listen.len() + usize::from(parsed.http.addr.is_some());
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("turnpike.toml");
        std::fs::write(&config_path, config_toml).expect("write config");

        let mut child = Command::new(turnpike_bin())
            .args(args)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Keep anyhow's error reports short even when the developer
            // has RUST_BACKTRACE=1 (panics still get a backtrace).
            .env("RUST_LIB_BACKTRACE", "0")
            .spawn()
            .expect("spawn turnpike");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let mut pipe = child.stderr.take().expect("stderr piped");
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
            })
        };
        let (tx, rx) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        {
            let pipe = child.stdout.take().expect("stdout piped");
            let all = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    match line {
                        Ok(l) => {
                            all.lock().unwrap().push(l.clone());
                            if tx.send(StdoutEvent::Line(l)).is_err() {
                                // Nobody listens any more; keep draining so
                                // the child never blocks on a full pipe.
                                continue;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send(StdoutEvent::Eof);
            });
        }

        let mut server = TestServer {
            child: Some(child),
            listeners: Vec::new(),
            http: None,
            stderr,
            stderr_thread: Some(stderr_thread),
            stdout,
            config_path,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.listeners.len() + usize::from(server.http.is_some()) < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(StdoutEvent::Line(l)) => match parse_listening(&l) {
                    Some(x) => server.listeners.push(x),
                    None => match l.strip_prefix("listening http ").map(str::parse) {
                        Some(Ok(a)) => server.http = Some(a),
                        _ => panic!("unexpected stdout line from turnpike: {l:?}"),
                    },
                },
                Ok(StdoutEvent::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.as_mut().unwrap().wait().ok();
                    server.join_stderr();
                    panic!(
                        "turnpike exited before listening (status {status:?}); stderr:\n{}",
                        server.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "turnpike printed {} of {expected} listening lines within {START_TIMEOUT:?}; stderr so far:\n{}",
                    server.listeners.len(),
                    server.stderr_text()
                ),
            }
        }
        server
    }

    /// The bound address of the first listener of a transport and family.
    pub fn addr(&self, transport: Transport, ipv6: bool) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(t, a)| *t == transport && a.is_ipv6() == ipv6)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| {
                panic!(
                    "no {transport} {} listener; have {:?}",
                    if ipv6 { "IPv6" } else { "IPv4" },
                    self.listeners
                )
            })
    }

    /// The HTTP API's bound address (panics if the config disabled it).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("the config enables no HTTP listener")
    }

    /// Every listener, in the order the server printed them.
    pub fn listeners(&self) -> &[(Transport, SocketAddr)] {
        &self.listeners
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server still owned").id()
    }

    /// Every line the server wrote to stdout so far (the `listening` lines
    /// and anything after them).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn join_stderr(&mut self) {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the server process is still running (it must be, after any
    /// input a client can send).
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("server still owned");
        if let Some(status) = child.try_wait().expect("try_wait") {
            self.join_stderr();
            panic!(
                "turnpike exited ({status}); stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Send `signal`, wait (at most [`STOP_TIMEOUT`]) for the process to
    /// exit, and return its status. stderr is complete afterwards.
    pub fn stop(&mut self, signal: Signal) -> ExitStatus {
        let child = self.child.take().expect("server already stopped");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // A pid we spawned and have not reaped.
        let rc = turnpike_sys::process::kill(pid, signal.raw()).map_or(-1, |()| 0);
        assert_eq!(
            rc,
            0,
            "kill({pid}, {}): {}",
            signal.name(),
            std::io::Error::last_os_error()
        );
        let status = match wait_bounded(child, STOP_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                self.join_stderr();
                panic!(
                    "turnpike did not exit within {STOP_TIMEOUT:?} of {}; stderr:\n{}",
                    signal.name(),
                    self.stderr_text()
                );
            }
        };
        self.join_stderr();
        status
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.join_stderr();
            eprintln!(
                "---- turnpike stderr ----\n{}---- end of turnpike stderr ----",
                self.stderr_text()
            );
        }
    }
}

/// `listening udp 127.0.0.1:40001` → (Udp, 127.0.0.1:40001).
fn parse_listening(line: &str) -> Option<(Transport, SocketAddr)> {
    let mut it = line.split_whitespace();
    if it.next()? != "listening" {
        return None;
    }
    let transport = match it.next()? {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        _ => return None,
    };
    let addr = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((transport, addr))
}

/// Wait for `child` to exit, at most `limit`: `Ok(status)`, or
/// `Err(status)` after killing it with SIGKILL when the time is up. A
/// thread blocks in wait(2), so the exit is seen the moment it happens.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Result<ExitStatus, ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait().expect("wait for child"));
    });
    match rx.recv_timeout(limit) {
        Ok(status) => {
            let _ = waiter.join();
            Ok(status)
        }
        Err(_) => {
            // The waiter has not reaped the child yet, so the pid is
            // still that child's.
            let _ = turnpike_sys::process::kill(pid, libc::SIGKILL);
            let status = rx.recv().expect("waiter thread reports");
            let _ = waiter.join();
            Err(status)
        }
    }
}

/// Run the binary with `args` (not `serve`), with a bounded wait, and
/// return (status, stdout, stderr).
pub fn run_turnpike(args: &[&str]) -> (ExitStatus, String, String) {
    run_bounded(Command::new(turnpike_bin()).args(args), START_TIMEOUT)
}

/// Run a command to completion with stdout and stderr captured; kill it
/// and fail if it takes longer than `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LIB_BACKTRACE", "0")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = match wait_bounded(child, limit) {
        Ok(s) => s,
        Err(_) => {
            let (o, e) = (out.join().unwrap(), err.join().unwrap());
            panic!("{cmd:?} did not finish within {limit:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

// --- STUN messages ------------------------------------------------------

/// A fresh random transaction ID.
pub fn new_tid() -> TransactionId {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut b = [0u8; 12];
    rng.fill_bytes(&mut b);
    TransactionId::new(b)
}

/// A Binding request with no attributes, or with only FINGERPRINT.
pub fn binding_request(tid: TransactionId, with_fingerprint: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    );
    if with_fingerprint {
        b.fingerprint();
    }
    buf
}

/// What a Binding success response must look like.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub tid: TransactionId,
    /// The client's transport address as the server must have seen it.
    pub mapped: SocketAddr,
    /// `Some(value)` if SOFTWARE must be present with that value, `None`
    /// if it must be absent.
    pub software: Option<&'a str>,
    pub fingerprint: bool,
}

/// Check a Binding success response exactly: type, transaction ID,
/// attributes in order (XOR-MAPPED-ADDRESS, then SOFTWARE if expected,
/// then FINGERPRINT if expected, and nothing else), their values, and a
/// valid FINGERPRINT.
pub fn check_binding_success(resp: &[u8], want: &Expect<'_>) {
    let msg = Message::parse(resp)
        .unwrap_or_else(|e| panic!("response does not parse: {e}: {resp:02x?}"));
    assert_eq!(msg.method(), Method::BINDING, "method");
    assert_eq!(
        msg.class(),
        Class::Success,
        "class (error code {:?})",
        msg.error_code()
    );
    assert_eq!(msg.transaction_id(), want.tid, "transaction id");
    let mut types = vec![attr::XOR_MAPPED_ADDRESS];
    if want.software.is_some() {
        types.push(attr::SOFTWARE);
    }
    if want.fingerprint {
        types.push(attr::FINGERPRINT);
    }
    let got: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    assert_eq!(got, types, "attribute types in order");
    assert_eq!(
        msg.xor_mapped_address()
            .expect("XOR-MAPPED-ADDRESS decodes"),
        Some(want.mapped),
        "XOR-MAPPED-ADDRESS"
    );
    assert_eq!(
        msg.software().expect("SOFTWARE is UTF-8"),
        want.software,
        "SOFTWARE"
    );
    assert_eq!(
        msg.check_fingerprint(),
        want.fingerprint.then_some(true),
        "FINGERPRINT present iff requested, and valid"
    );
}

/// Parse an error response and return (code, UNKNOWN-ATTRIBUTES list),
/// after checking method, class and transaction ID.
pub fn check_binding_error(resp: &[u8], tid: TransactionId) -> (u16, Vec<u16>) {
    let msg = Message::parse(resp)
        .unwrap_or_else(|e| panic!("response does not parse: {e}: {resp:02x?}"));
    assert_eq!(msg.method(), Method::BINDING, "method");
    assert_eq!(msg.class(), Class::Error, "class");
    assert_eq!(msg.transaction_id(), tid, "transaction id");
    let code = msg
        .error_code()
        .expect("ERROR-CODE decodes")
        .expect("ERROR-CODE present")
        .code;
    let unknown = msg
        .get(attr::UNKNOWN_ATTRIBUTES)
        .map(|a| a.attribute_list().expect("UNKNOWN-ATTRIBUTES").collect())
        .unwrap_or_default();
    (code, unknown)
}

// --- UDP ----------------------------------------------------------------

pub fn loopback(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// A UDP socket on the loopback address of a family, port 0, with read
/// and write timeouts.
pub fn udp_client(ipv6: bool) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(loopback(ipv6), 0)).expect("bind UDP client");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Receive one datagram, which must come from `server`. Panics on timeout.
pub fn udp_recv(sock: &UdpSocket, server: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no datagram from {server} within {IO_TIMEOUT:?} ({e}) on {:?}",
            sock.local_addr()
        )
    });
    assert_eq!(from, server, "datagram from an unexpected source");
    buf.truncate(n);
    buf
}

/// Send `req` to `server` and return the first datagram back.
pub fn udp_roundtrip(sock: &UdpSocket, server: SocketAddr, req: &[u8]) -> Vec<u8> {
    let n = sock.send_to(req, server).expect("send_to");
    assert_eq!(n, req.len(), "short UDP send");
    udp_recv(sock, server)
}

// --- TCP and TLS framing ------------------------------------------------

/// A TCP connection to `addr` with read and write timeouts and Nagle off
/// (so separate writes leave as separate segments).
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads whole RFC 8656 §12.5 frames off a byte stream, cut with
/// [`turnpike_proto::wire::frame_len`]; bytes past a frame are kept for the next.
pub struct FrameReader<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> FrameReader<S> {
    pub fn new(stream: S) -> Self {
        FrameReader {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write all of `bytes` and flush.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
        self.stream.flush().expect("flush");
    }

    /// Read what is there into the buffer: `Ok(0)` at end of stream.
    fn try_fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!(
                    "timeout: nothing from the server within {IO_TIMEOUT:?} ({} bytes buffered)",
                    self.buf.len()
                ))
            }
            Err(e) => Err(format!(
                "read error: {e} ({} bytes buffered)",
                self.buf.len()
            )),
        }
    }

    fn fill(&mut self) -> usize {
        self.try_fill().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next whole STUN frame, `Ok(None)` if the server closed the
    /// stream cleanly between frames, `Err` on a timeout, a read error, a
    /// close in the middle of a frame, ChannelData, or bytes that are not
    /// STUN framing.
    pub fn try_next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            match frame_len(&self.buf) {
                Ok(Some(f)) => {
                    let frame = self.buf[..f.message_len].to_vec();
                    self.buf.drain(..f.len);
                    if f.kind == FrameKind::ChannelData {
                        return Err(format!("server sent ChannelData: {frame:02x?}"));
                    }
                    return Ok(Some(frame));
                }
                Ok(None) => {
                    if self.try_fill()? == 0 {
                        if self.buf.is_empty() {
                            return Ok(None);
                        }
                        return Err(format!(
                            "server closed the stream inside a frame ({} bytes buffered)",
                            self.buf.len()
                        ));
                    }
                }
                Err(e) => return Err(format!("server sent bytes that are not STUN framing: {e}")),
            }
        }
    }

    /// The next whole frame (STUN message). Panics on timeout, on EOF, on
    /// a read error and on anything [`FrameReader::try_next_frame`] refuses.
    pub fn next_frame(&mut self) -> Vec<u8> {
        match self.try_next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => panic!("server closed the stream"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Send one message and read one frame back.
    pub fn roundtrip(&mut self, req: &[u8]) -> Vec<u8> {
        self.send(req);
        self.next_frame()
    }

    /// The server must close the stream with nothing more to say: the next
    /// read is end-of-stream and no bytes are left over.
    pub fn expect_closed(&mut self) {
        let n = self.fill();
        assert!(
            n == 0 && self.buf.is_empty(),
            "expected the server to close the stream with no bytes, got {} bytes: {:02x?}",
            self.buf.len(),
            &self.buf[..self.buf.len().min(64)]
        );
    }
}

// --- TLS ----------------------------------------------------------------

/// A self-signed certificate for `localhost`, 127.0.0.1 and ::1, written as
/// cert.pem and key.pem into its own temporary directory.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

pub fn self_signed_cert() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .expect("generate certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert.pem");
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).expect("write key.pem");
    TestCert {
        cert_path,
        key_path,
        cert_der: ck.cert.der().clone(),
        _dir: dir,
    }
}

impl TestCert {
    /// TOML path string of the certificate (for a `cert = ...` line).
    pub fn cert_toml(&self) -> String {
        toml_str(&self.cert_path)
    }

    pub fn key_toml(&self) -> String {
        toml_str(&self.key_path)
    }

    /// A rustls client config that trusts exactly this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("add root");
        let cfg = rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// A path as a quoted TOML string.
pub fn toml_str(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 temp path");
    format!("{s:?}")
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect with TLS to `addr`, verifying the server certificate against
/// `cfg` for the address's IP, and finish the handshake.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = tcp_connect(addr);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(cfg, name).expect("client connection");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    }
    s
}

// --- TURN end to end: the test client and server-log helpers ------------

/// The synchronous TURN client of the relay tests.
pub mod turn;

impl TestServer {
    /// The stderr lines that contain every one of `needles`.
    pub fn stderr_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.stderr_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Wait until `done(stderr so far)` holds, checking whenever a little
    /// time has passed; panic with `what` and the stderr after `limit`.
    /// Returns the stderr that satisfied it. (The server writes its logs
    /// from its own threads, so polling the collected text is the only
    /// way to wait for a line; the limit is a failure guard, not a delay.)
    pub fn wait_for_stderr(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.stderr_text();
            if done(&text) {
                return text;
            }
            if Instant::now() >= deadline {
                panic!("waited {limit:?} for {what}; stderr:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for a stderr line containing every one of `needles`; return it.
    pub fn wait_for_line(&self, needles: &[&str], limit: Duration) -> String {
        let text = self.wait_for_stderr(&format!("a log line with {needles:?}"), limit, |t| {
            t.lines().any(|l| needles.iter().all(|n| l.contains(n)))
        });
        text.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .expect("found above")
            .to_string()
    }
}

/// The network-namespace NAT lab (root only; see netns.rs).
pub mod netns;

// --- TURN relay interop (tests/interop_coturn_uclient.rs,
// --- interop_webrtc_turn.rs, interop_webrtc_ice.rs) ----------------------

/// A config for relaying on loopback: UDP and TCP listeners on
/// 127.0.0.1 port 0, relay sockets on 127.0.0.1 (and ::1) in `ports`
/// ("LOW-HIGH": give each test file its own range), loopback peers
/// allowed (the default policy refuses them), two shards, and `auth`
/// (the body of the `[auth]` table, e.g. `secrets = ["s"]`).
pub fn loopback_relay_config(ports: &str, auth: &str) -> String {
    format!(
        "[server]\nrealm = \"turnpike.test\"\nthreads = 2\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
         [relay]\nbind_ip = \"127.0.0.1\"\nbind_ip6 = \"::1\"\nports = \"{ports}\"\n\
         [auth]\n{auth}\n\
         [policy]\nallow_peers = [\"127.0.0.1/32\", \"::1/128\"]\nmax_allocations_per_user = 100\n"
    )
}

/// A TURN REST (draft-uberti-behave-turn-rest) credential for `user`
/// under `secret`, valid for an hour: (username, password).
pub fn rest_credential(secret: &str, user: &str) -> (String, String) {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    let username = format!("{expiry}:{user}");
    // Derived here, not with turnpike's own function: the credential must
    // be what any TURN REST issuer would compute.
    use base64::Engine;
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// The `relay=IP:PORT` of every "allocation created" line in the
/// server's stderr log, in order.
pub fn logged_allocations(stderr: &str) -> Vec<SocketAddr> {
    stderr
        .lines()
        .filter(|l| l.contains("allocation created"))
        .map(|l| {
            let v = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("relay="))
                .unwrap_or_else(|| panic!("no relay= in log line {l:?}"));
            v.parse()
                .unwrap_or_else(|e| panic!("bad relay= {v:?} in {l:?}: {e}"))
        })
        .collect()
}

/// (bytes_to_peer, bytes_from_peer) summed over every "allocation
/// ended" line in the server's stderr log: what turnpike itself relayed.
pub fn logged_traffic(stderr: &str) -> (u64, u64) {
    let field = |l: &str, key: &str| -> u64 {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {key} in log line {l:?}"))
    };
    stderr
        .lines()
        .filter(|l| l.contains("allocation ended"))
        .fold((0, 0), |(to, from), l| {
            (
                to + field(l, "bytes_to_peer="),
                from + field(l, "bytes_from_peer="),
            )
        })
}

/// Whether `tool` is an executable file in a directory of `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// A child process killed (SIGKILL) and reaped when dropped, so nothing a
/// test starts outlives it, even when the test panics.
pub struct KillOnDrop {
    pub child: Child,
    pub what: String,
}

impl KillOnDrop {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        KillOnDrop {
            child,
            what: what.into(),
        }
    }

    /// Panic if the child has already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited early: {status}", self.what);
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// then closed). Someone else may take it before it is used: callers
/// retry with another one when their bind fails.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP port 0");
    s.local_addr().expect("local_addr").port()
}

pub mod ops;

/// The fleet on Redis (issue 14): a real `redis-server` per test and node
/// configs (tests/cluster.rs, the namespace fleet lab).
pub mod cluster;
