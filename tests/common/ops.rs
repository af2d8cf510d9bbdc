//! Helpers for the operations tests (HTTP API, metrics, reload, drain,
//! logs):
//!
//! - HTTP requests through the project's one client
//!   (`turnpike::http_client`, which `ice-check --credentials-url` uses
//!   too): any method and headers (Origin, preflight OPTIONS,
//!   Authorization), and the status, headers and body of every answer;
//! - a strict parser of the Prometheus text format (`name{labels} value`);
//! - a small synchronous TURN client over UDP, TCP and TLS built on
//!   `turnpike_proto::client`;
//! - process control the base harness lacks: sending any signal, waiting
//!   for the server to exit on its own, starting it with extra arguments,
//!   and waiting (bounded) for a line on its stderr.
//!
//! Every wait is bounded; running out of time is a test failure.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::wire::{ChannelData, Class, FrameKind, Message, frame_len};

use turnpike::http_client::HttpClient;

use super::{
    IO_TIMEOUT, TestServer, TlsStream, new_tid, tcp_connect, tls_connect, udp_client, wait_bounded,
};

/// How long a condition polled with [`wait_until`] may take to hold.
pub const POLL_LIMIT: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Poll `f` until it returns `Some` or `limit` passes (then panic, naming
/// `what`). The pause between polls only spaces them out; the outcome
/// never depends on it.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// --- HTTP -------------------------------------------------------------------

/// A response as received: status, headers (in order) and body, 4xx and
/// 5xx included.
pub use turnpike::http_client::Response as HttpResponse;

/// The body as JSON (panics, showing the body, if it is not JSON).
pub trait JsonBody {
    fn json(&self) -> serde_json::Value;
}

impl JsonBody for HttpResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// One request to `http://ADDR{target}` over a fresh connection, with the
/// project's HTTP client (`turnpike::http_client`); panics if no response
/// came.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    HttpClient::new(None, IO_TIMEOUT)
        .request(method, &format!("http://{addr}{target}"), headers, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{target}: {e}"))
}

pub fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    http(addr, "GET", target, &[], b"")
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// GET with `Authorization: Bearer KEY`.
pub fn get_auth(addr: SocketAddr, target: &str, key: &str) -> HttpResponse {
    http(addr, "GET", target, &[("Authorization", &bearer(key))], b"")
}

/// POST (empty body) with `Authorization: Bearer KEY`.
pub fn post_auth(addr: SocketAddr, target: &str, key: &str) -> HttpResponse {
    http(
        addr,
        "POST",
        target,
        &[("Authorization", &bearer(key))],
        b"",
    )
}

/// DELETE with `Authorization: Bearer KEY`.
pub fn delete_auth(addr: SocketAddr, target: &str, key: &str) -> HttpResponse {
    http(
        addr,
        "DELETE",
        target,
        &[("Authorization", &bearer(key))],
        b"",
    )
}

/// One HTTPS request, trusting what `cfg` trusts.
pub fn https_get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, target: &str) -> HttpResponse {
    let url = format!("https://{addr}{target}");
    HttpClient::new(Some(cfg), IO_TIMEOUT)
        .get(&url, &[])
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Minted credentials from the API (or `turnpike credentials`), checked
/// for the documented shape.
#[derive(Debug, Clone)]
pub struct Minted {
    pub username: String,
    pub password: String,
    pub ttl: u64,
    pub uris: Vec<String>,
    pub json: serde_json::Value,
}

impl Minted {
    /// Parse and check the JSON: `username` is `<expiry>:<user>`, the last
    /// iceServers entry carries the same username and password and lists
    /// `uris`, and a `stun:` entry (if any) comes first, without secrets.
    pub fn parse(j: &serde_json::Value) -> Minted {
        let s = |k: &str| {
            j[k].as_str()
                .unwrap_or_else(|| panic!("`{k}` missing or not a string in {j}"))
                .to_string()
        };
        let username = s("username");
        let password = s("password");
        let ttl = j["ttl"].as_u64().unwrap_or_else(|| panic!("ttl in {j}"));
        let uris: Vec<String> = j["uris"]
            .as_array()
            .unwrap_or_else(|| panic!("uris in {j}"))
            .iter()
            .map(|u| u.as_str().expect("uri string").to_string())
            .collect();
        let (expiry, _) = username
            .split_once(':')
            .unwrap_or_else(|| panic!("username {username:?} is not <expiry>:<user>"));
        assert!(
            expiry.parse::<u64>().is_ok(),
            "expiry part of {username:?} is numeric"
        );
        let ice = j["iceServers"]
            .as_array()
            .unwrap_or_else(|| panic!("iceServers in {j}"));
        let last = ice.last().expect("at least one iceServers entry");
        assert_eq!(last["username"], username.as_str(), "{j}");
        assert_eq!(last["credential"], password.as_str(), "{j}");
        assert_eq!(last["urls"], j["uris"], "{j}");
        for e in &ice[..ice.len() - 1] {
            assert!(e.get("username").is_none() && e.get("credential").is_none());
            for u in e["urls"].as_array().expect("urls") {
                assert!(u.as_str().unwrap().starts_with("stun:"), "{j}");
            }
        }
        Minted {
            username,
            password,
            ttl,
            uris,
            json: j.clone(),
        }
    }

    /// The expiry (Unix seconds) in the username.
    pub fn expiry(&self) -> u64 {
        self.username.split_once(':').unwrap().0.parse().unwrap()
    }

    /// The user part of the username.
    pub fn user(&self) -> &str {
        self.username.split_once(':').unwrap().1
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.username.clone(), self.password.clone())
    }
}

// --- Prometheus text format -------------------------------------------------

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE name kind` lines.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parse exposition text strictly: every non-comment line must be
    /// `name{label="value",...} value [timestamp]` (labels optional), and
    /// no series may appear twice.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut w = rest.split_whitespace();
                if w.next() == Some("TYPE") {
                    let (Some(n), Some(k)) = (w.next(), w.next()) else {
                        panic!("line {}: bad TYPE line {line:?}", no + 1);
                    };
                    s.types.insert(n.to_string(), k.to_string());
                }
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("line {}: {e}", no + 1));
            assert!(
                !s.samples
                    .iter()
                    .any(|x| x.name == sample.name && x.labels == sample.labels),
                "line {}: series repeated: {line:?}",
                no + 1
            );
            s.samples.push(sample);
        }
        s
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The value, which must be present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in the scrape"))
    }

    /// The value, or 0 for a series not (yet) exported.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every series of a metric name.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line:?}"))?;
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
    if !valid_name {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // label name
            let mut key = String::new();
            let mut closed = false;
            for (_, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if key.is_empty() => {
                        closed = true;
                        break;
                    }
                    c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    c => return Err(format!("bad char {c:?} in a label name: {line:?}")),
                }
            }
            if closed {
                let (i, _) = chars.peek().copied().unwrap_or((r.len(), ' '));
                rest = &r[i..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} value not quoted: {line:?}"));
            }
            let mut val = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c)) => val.push(c),
                        None => return Err(format!("unterminated escape: {line:?}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => val.push(c),
                    None => return Err(format!("unterminated label value: {line:?}")),
                }
            }
            if labels.insert(key.clone(), val).is_some() {
                return Err(format!("label {key} repeated: {line:?}"));
            }
            match chars.next() {
                Some((_, ',')) => {
                    if chars.peek().map(|(_, c)| *c) == Some('}') {
                        let (i, _) = chars.next().unwrap();
                        rest = &r[i + 1..];
                        break;
                    }
                }
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                _ => return Err(format!("expected , or }} after a label: {line:?}")),
            }
        }
    }
    let mut w = rest.split_whitespace();
    let v = w.next().ok_or_else(|| format!("no value: {line:?}"))?;
    let value: f64 = v
        .parse()
        .map_err(|_| format!("value {v:?} is not a number: {line:?}"))?;
    if let Some(ts) = w.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("timestamp {ts:?} is not an integer: {line:?}"))?;
    }
    if w.next().is_some() {
        return Err(format!("trailing text: {line:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Scrape `/metrics` (which must answer 200 with the Prometheus content
/// type) and parse it.
pub fn scrape(http: SocketAddr) -> Scrape {
    let r = get(http, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "/metrics content type {ct:?}"
    );
    Scrape::parse(&r.text())
}

// --- a synchronous TURN client ------------------------------------------------

/// STUN and ChannelData frames off a byte stream.
struct StreamConn<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> StreamConn<S> {
    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to server");
        self.s.flush().expect("flush");
    }

    /// The next frame without padding; `None` at a clean end of stream.
    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match frame_len(&self.buf) {
                Ok(Some(f)) => {
                    let frame = self.buf[..f.message_len].to_vec();
                    self.buf.drain(..f.len);
                    return Some(frame);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent bytes that are not STUN framing: {e}"),
            }
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "server closed the stream inside a frame"
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                    return None;
                }
                Err(e) => panic!("nothing from the server within {IO_TIMEOUT:?}: {e}"),
            }
        }
    }
}

enum Conn {
    Udp { sock: UdpSocket, server: SocketAddr },
    Tcp(StreamConn<TcpStream>),
    Tls(Box<StreamConn<TlsStream>>),
}

/// A TURN client on one five-tuple: the long-term credential dance,
/// requests matched to responses by transaction ID, and ChannelData.
/// Anything that arrives while waiting for a response is kept for
/// [`TurnClient::recv_channel_data`].
pub struct TurnClient {
    conn: Conn,
    inbox: VecDeque<Vec<u8>>,
    /// The session of the last successful Allocate.
    pub session: Option<Session>,
    /// The relayed address of the last successful Allocate.
    pub relayed: Option<SocketAddr>,
}

/// A session for `creds` from a 401 carrying REALM and NONCE.
pub fn session_for(challenge: &[u8], creds: Credentials) -> Session {
    let m = Message::parse(challenge).expect("challenge parses");
    Session::from_challenge(&m, creds, SignOptions::default()).expect("REALM and NONCE")
}

/// The outcome of a request: 200 for success, else the error code.
pub fn code_of(resp: &[u8]) -> u16 {
    let m = Message::parse(resp).expect("response parses");
    match m.class() {
        Class::Success => 200,
        Class::Error => {
            m.error_code()
                .expect("ERROR-CODE")
                .expect("ERROR-CODE")
                .code
        }
        c => panic!("not a response: {c:?}"),
    }
}

impl TurnClient {
    pub fn udp(server: SocketAddr) -> TurnClient {
        Self::with(Conn::Udp {
            sock: udp_client(server.is_ipv6()),
            server,
        })
    }

    /// A UDP client on a socket the caller made (e.g. one bound inside a
    /// network namespace by `Ns::udp_bind`).
    pub fn udp_on(sock: UdpSocket, server: SocketAddr) -> TurnClient {
        Self::with(Conn::Udp { sock, server })
    }

    pub fn tcp(server: SocketAddr) -> TurnClient {
        Self::with(Conn::Tcp(StreamConn {
            s: tcp_connect(server),
            buf: Vec::new(),
        }))
    }

    pub fn tls(server: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TurnClient {
        Self::with(Conn::Tls(Box::new(StreamConn {
            s: tls_connect(server, cfg),
            buf: Vec::new(),
        })))
    }

    fn with(conn: Conn) -> TurnClient {
        TurnClient {
            conn,
            inbox: VecDeque::new(),
            session: None,
            relayed: None,
        }
    }

    /// The client's own transport address.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Udp { sock, .. } => sock.local_addr().unwrap(),
            Conn::Tcp(c) => c.s.local_addr().unwrap(),
            Conn::Tls(c) => c.s.sock.local_addr().unwrap(),
        }
    }

    /// The leaf certificate the TLS server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        match &self.conn {
            Conn::Tls(c) => c.s.conn.peer_certificates().expect("server certificates")[0].to_vec(),
            _ => panic!("not a TLS client"),
        }
    }

    fn is_stream(&self) -> bool {
        !matches!(self.conn, Conn::Udp { .. })
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        match &mut self.conn {
            Conn::Udp { sock, server } => {
                assert_eq!(sock.send_to(b, *server).expect("send_to"), b.len());
            }
            Conn::Tcp(c) => c.send(b),
            Conn::Tls(c) => c.send(b),
        }
    }

    /// The next datagram or frame from the server; panics on timeout or
    /// end of stream.
    fn recv_raw(&mut self) -> Vec<u8> {
        match &mut self.conn {
            Conn::Udp { sock, server } => super::udp_recv(sock, *server),
            Conn::Tcp(c) => c.next().expect("server closed the connection"),
            Conn::Tls(c) => c.next().expect("server closed the connection"),
        }
    }

    /// Whether the server closes the stream (TCP/TLS) before sending more.
    pub fn expect_closed(&mut self) {
        let next = match &mut self.conn {
            Conn::Tcp(c) => c.next(),
            Conn::Tls(c) => c.next(),
            Conn::Udp { .. } => panic!("UDP has no connection"),
        };
        assert!(next.is_none(), "expected a close, got {next:02x?}");
    }

    /// Send a request and return the response with its transaction ID.
    pub fn request(&mut self, req: &[u8]) -> Vec<u8> {
        let tid = Message::parse(req)
            .expect("own request parses")
            .transaction_id();
        self.send_raw(req);
        loop {
            let b = self.recv_raw();
            if b[0] >> 6 == 0 {
                let m = Message::parse(&b).expect("STUN from the server parses");
                if matches!(m.class(), Class::Success | Class::Error) && m.transaction_id() == tid {
                    return b;
                }
            }
            self.inbox.push_back(b);
        }
    }

    /// A Binding request; returns XOR-MAPPED-ADDRESS.
    pub fn binding(&mut self) -> SocketAddr {
        let mut req = Vec::new();
        client::binding(&mut req, new_tid(), true);
        let resp = self.request(&req);
        assert_eq!(code_of(&resp), 200);
        Message::parse(&resp)
            .unwrap()
            .xor_mapped_address()
            .unwrap()
            .expect("XOR-MAPPED-ADDRESS")
    }

    /// An unsigned Allocate, which must get 401 with REALM and NONCE; the
    /// session for `creds` built from it.
    pub fn challenge(&mut self, creds: Credentials) -> Session {
        session_for(&self.challenge_response(), creds)
    }

    /// The 401 an unsigned Allocate gets (checked to be one).
    pub fn challenge_response(&mut self) -> Vec<u8> {
        let mut req = Vec::new();
        client::allocate(&mut req, new_tid(), &AllocateOptions::default(), None);
        let resp = self.request(&req);
        assert_eq!(code_of(&resp), 401, "an unsigned Allocate is challenged");
        resp
    }

    /// A signed Allocate with `session`; the raw response. On success the
    /// session and relayed address are kept.
    pub fn allocate_signed(&mut self, session: &Session, o: &AllocateOptions) -> Vec<u8> {
        let mut req = Vec::new();
        client::allocate(&mut req, new_tid(), o, Some(session));
        let resp = self.request(&req);
        let m = Message::parse(&resp).unwrap();
        if m.class() == Class::Success {
            assert!(session.verify(&m), "success is signed with the session key");
            self.relayed = Some(
                m.xor_relayed_address()
                    .unwrap()
                    .expect("XOR-RELAYED-ADDRESS"),
            );
            self.session = Some(session.clone());
        }
        resp
    }

    /// Challenge and Allocate with `creds`: the relayed address, or the
    /// error code.
    pub fn allocate(&mut self, creds: Credentials) -> Result<SocketAddr, u16> {
        let s = self.challenge(creds);
        let resp = self.allocate_signed(&s, &AllocateOptions::default());
        match code_of(&resp) {
            200 => Ok(self.relayed.unwrap()),
            c => Err(c),
        }
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("no allocation yet")
    }

    /// Refresh; the response code.
    pub fn refresh(&mut self, lifetime: Option<u32>) -> u16 {
        let mut req = Vec::new();
        client::refresh(&mut req, new_tid(), lifetime, self.session());
        code_of(&self.request(&req))
    }

    /// CreatePermission for `peers`; the response code.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> u16 {
        let mut req = Vec::new();
        client::create_permission(&mut req, new_tid(), peers, self.session());
        code_of(&self.request(&req))
    }

    /// ChannelBind; the response code.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> u16 {
        let mut req = Vec::new();
        client::channel_bind(&mut req, new_tid(), channel, peer, self.session());
        code_of(&self.request(&req))
    }

    /// Send `data` on a channel (padded on streams).
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut b = Vec::new();
        ChannelData::encode(channel, data, self.is_stream(), &mut b);
        self.send_raw(&b);
    }

    /// The next ChannelData from the server (channel, data).
    pub fn recv_channel_data(&mut self) -> (u16, Vec<u8>) {
        let b = match self.inbox.pop_front() {
            Some(b) => b,
            None => self.recv_raw(),
        };
        assert_eq!(
            frame_kind(&b),
            FrameKind::ChannelData,
            "expected ChannelData, got {:02x?}",
            &b[..b.len().min(32)]
        );
        let cd = ChannelData::parse(&b).expect("ChannelData parses");
        (cd.channel, cd.data.to_vec())
    }
}

fn frame_kind(b: &[u8]) -> FrameKind {
    if b[0] >> 6 == 1 {
        FrameKind::ChannelData
    } else {
        FrameKind::Stun
    }
}

/// A UDP peer on 127.0.0.1.
pub fn udp_peer() -> UdpSocket {
    udp_client(false)
}

/// Receive one datagram on a peer socket: (data, source).
pub fn peer_recv(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = peer
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("peer got nothing within {IO_TIMEOUT:?}: {e}"));
    buf.truncate(n);
    (buf, from)
}

/// Relay one payload each way on a channel between `c` and `peer`, and
/// check it arrives intact from the right addresses.
pub fn relay_both_ways(c: &mut TurnClient, channel: u16, peer: &UdpSocket, tag: &str) {
    let relayed = c.relayed.expect("allocated");
    let out = format!("to-peer {tag}");
    c.send_channel_data(channel, out.as_bytes());
    let (got, from) = peer_recv(peer);
    assert_eq!(got, out.as_bytes(), "peer receives what the client sent");
    assert_eq!(from, relayed, "from the relayed address");
    let back = format!("to-client {tag}");
    peer.send_to(back.as_bytes(), relayed).expect("peer send");
    let (ch, data) = c.recv_channel_data();
    assert_eq!(ch, channel);
    assert_eq!(data, back.as_bytes(), "client receives what the peer sent");
}

// --- the server process ---------------------------------------------------------

/// Send `sig` to the server without waiting.
pub fn send_signal(server: &TestServer, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(server.pid()).expect("pid fits pid_t");
    // Our own child, which has not been reaped (the TestServer still owns
    // it).
    turnpike_sys::process::kill(pid, sig).unwrap_or_else(|e| panic!("kill: {e}"));
}

/// How many times `needle` occurs in the server's stderr.
pub fn stderr_count(server: &TestServer, needle: &str) -> usize {
    server.stderr_text().matches(needle).count()
}

/// Wait (bounded) until `needle` occurs at least `n` times on stderr.
pub fn wait_stderr(server: &TestServer, needle: &str, n: usize) {
    let deadline = Instant::now() + POLL_LIMIT;
    while stderr_count(server, needle) < n {
        assert!(
            Instant::now() < deadline,
            "stderr did not show {needle:?} {n} time(s) within {POLL_LIMIT:?}:\n{}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl TestServer {
    /// Wait (at most `limit`) for the server to exit by itself; its
    /// status, with stderr complete. Panics (after SIGKILL) if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.take().expect("server already stopped");
        match wait_bounded(child, limit) {
            Ok(s) => {
                self.join_stderr();
                s
            }
            Err(_) => {
                self.join_stderr();
                panic!(
                    "turnpike did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        }
    }
}
