//! A small synchronous TURN client for the end-to-end tests: one
//! five-tuple (a UDP socket, a TCP connection or a TLS connection) to the
//! server under test, the long-term credential dance, and the relay
//! operations of RFC 8656 (Allocate, Refresh, CreatePermission,
//! ChannelBind, Send indications, ChannelData).
//!
//! Every read is bounded by [`IO_TIMEOUT`]; a timeout is a test failure
//! (a panic naming what was awaited), never a pass. Responses are matched
//! to their requests by transaction ID; Data indications and ChannelData
//! that arrive while a response is awaited are kept, in order, for
//! [`TurnClient::recv`].

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike::config::Transport;
use turnpike_proto::client::{self, AllocateOptions, Credentials, Session, SignOptions};
use turnpike_proto::wire::{
    ChannelData, Class, FrameKind, Message, Method, TransactionId, frame_len, pad4,
};

use super::{IO_TIMEOUT, TlsStream, new_tid, tcp_connect, tls_connect, udp_client};

/// What the server sent, one datagram or one stream frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A STUN message other than a Data indication (normally a response).
    Stun(Vec<u8>),
    /// A Data indication (RFC 8656 §11.4): XOR-PEER-ADDRESS and DATA.
    Data { peer: SocketAddr, data: Vec<u8> },
    /// A ChannelData message (RFC 8656 §12.4). `wire_len` is how many
    /// bytes it took on the wire, padding included (streams: checked to be
    /// zero bytes up to a multiple of four).
    Channel {
        number: u16,
        data: Vec<u8>,
        wire_len: usize,
    },
}

/// A failed request: the error code and the whole response.
#[derive(Clone, Debug)]
pub struct ErrorReply {
    pub code: u16,
    pub bytes: Vec<u8>,
}

/// A successful Allocate.
#[derive(Clone, Debug)]
pub struct Allocated {
    /// XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// XOR-MAPPED-ADDRESS: the client as the server saw it.
    pub mapped: SocketAddr,
    /// LIFETIME granted, seconds.
    pub lifetime: u32,
    /// The exact bytes of the signed Allocate request that succeeded.
    pub request: Vec<u8>,
    /// The exact bytes of its success response.
    pub response: Vec<u8>,
}

/// Reads whole frames (STUN or ChannelData) off a byte stream.
pub struct StreamLink<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> StreamLink<S> {
    fn new(stream: S) -> Self {
        StreamLink {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("write to server: {e}"))
    }

    /// The next frame: (bytes without padding, bytes with padding).
    fn next(&mut self) -> Result<(Vec<u8>, usize), String> {
        loop {
            match frame_len(&self.buf) {
                Ok(Some(f)) => {
                    let msg = self.buf[..f.message_len].to_vec();
                    if f.kind == FrameKind::ChannelData {
                        let pad = &self.buf[f.message_len..f.len];
                        if pad.iter().any(|&b| b != 0) {
                            return Err(format!("ChannelData padding is not zero: {pad:02x?}"));
                        }
                    }
                    self.buf.drain(..f.len);
                    return Ok((msg, f.len));
                }
                Ok(None) => {
                    let mut chunk = [0u8; 16384];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => {
                            return Err(format!(
                                "server closed the stream ({} bytes buffered)",
                                self.buf.len()
                            ));
                        }
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            return Err(format!(
                                "timeout: nothing from the server within {IO_TIMEOUT:?} ({} bytes buffered)",
                                self.buf.len()
                            ));
                        }
                        Err(e) => return Err(format!("read error: {e}")),
                    }
                }
                Err(e) => return Err(format!("server sent bytes that are not framing: {e}")),
            }
        }
    }
}

/// The client's five-tuple.
pub enum Link {
    Udp { sock: UdpSocket, server: SocketAddr },
    Tcp(StreamLink<TcpStream>),
    Tls(Box<StreamLink<TlsStream>>),
}

/// One TURN client on one five-tuple.
pub struct TurnClient {
    link: Link,
    server: SocketAddr,
    local: SocketAddr,
    /// Learnt from the 401 of the first Allocate.
    pub session: Option<Session>,
    pending: VecDeque<Incoming>,
}

impl TurnClient {
    /// A fresh UDP socket on the loopback address of `server`'s family.
    pub fn udp(server: SocketAddr) -> Self {
        let sock = udp_client(server.is_ipv6());
        let local = sock.local_addr().expect("local addr");
        Self::with_link(Link::Udp { sock, server }, server, local)
    }

    /// A client on `sock`, an already bound UDP socket (one made inside a
    /// network namespace, say).
    pub fn udp_on(sock: UdpSocket, server: SocketAddr) -> Self {
        let local = sock.local_addr().expect("local addr");
        Self::with_link(Link::Udp { sock, server }, server, local)
    }

    pub fn tcp(server: SocketAddr) -> Self {
        let s = tcp_connect(server);
        let local = s.local_addr().expect("local addr");
        Self::with_link(Link::Tcp(StreamLink::new(s)), server, local)
    }

    pub fn tls(server: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Self {
        let s = tls_connect(server, cfg);
        let local = s.sock.local_addr().expect("local addr");
        Self::with_link(Link::Tls(Box::new(StreamLink::new(s))), server, local)
    }

    /// A client of `transport` to `server` (`tls` is needed for TLS).
    pub fn connect(
        transport: Transport,
        server: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        match transport {
            Transport::Udp => Self::udp(server),
            Transport::Tcp => Self::tcp(server),
            Transport::Tls => Self::tls(server, tls.expect("a TLS client config")),
        }
    }

    fn with_link(link: Link, server: SocketAddr, local: SocketAddr) -> Self {
        TurnClient {
            link,
            server,
            local,
            session: None,
            pending: VecDeque::new(),
        }
    }

    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Udp { .. } => Transport::Udp,
            Link::Tcp(_) => Transport::Tcp,
            Link::Tls(_) => Transport::Tls,
        }
    }

    /// The client's own transport address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// Close the connection (TCP/TLS) or the socket (UDP).
    pub fn close(self) {
        match self.link {
            Link::Udp { .. } => {}
            Link::Tcp(s) => {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
            Link::Tls(mut s) => {
                s.stream.conn.send_close_notify();
                let _ = s.stream.conn.complete_io(&mut s.stream.sock);
                let _ = s.stream.sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    // --- raw I/O ---------------------------------------------------------

    /// Send bytes as one datagram or write them to the stream.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let r = match &mut self.link {
            Link::Udp { sock, server } => match sock.send_to(bytes, *server) {
                Ok(n) if n == bytes.len() => Ok(()),
                Ok(n) => Err(format!("short UDP send: {n} of {}", bytes.len())),
                Err(e) => Err(format!("send_to {server}: {e}")),
            },
            Link::Tcp(s) => s.send(bytes),
            Link::Tls(s) => s.send(bytes),
        };
        if let Err(e) = r {
            panic!("{} client {}: {e}", self.transport(), self.local);
        }
    }

    /// The next datagram or frame from the server: (bytes, wire length).
    pub fn try_read_raw(&mut self) -> Result<(Vec<u8>, usize), String> {
        match &mut self.link {
            Link::Udp { sock, server } => {
                let mut buf = vec![0u8; 65536];
                let (n, from) = sock.recv_from(&mut buf).map_err(|e| {
                    format!("no datagram from the server within {IO_TIMEOUT:?}: {e}")
                })?;
                if from != *server {
                    return Err(format!("datagram from {from}, not the server {server}"));
                }
                buf.truncate(n);
                Ok((buf, n))
            }
            Link::Tcp(s) => s.next(),
            Link::Tls(s) => s.next(),
        }
    }

    /// The next thing from the server, decoded. Panics on timeout and on
    /// anything that is neither STUN nor ChannelData.
    fn read_one(&mut self) -> Incoming {
        let (bytes, wire_len) = self
            .try_read_raw()
            .unwrap_or_else(|e| panic!("{} client {}: {e}", self.transport(), self.local));
        decode(bytes, wire_len)
    }

    /// The next Data indication, ChannelData or unsolicited STUN message
    /// (those that arrived while a response was awaited come first).
    pub fn recv(&mut self) -> Incoming {
        match self.pending.pop_front() {
            Some(x) => x,
            None => self.read_one(),
        }
    }

    /// The next message, which must be a Data indication: (peer, data).
    pub fn recv_data(&mut self) -> (SocketAddr, Vec<u8>) {
        match self.recv() {
            Incoming::Data { peer, data } => (peer, data),
            other => panic!("expected a Data indication, got {other:?}"),
        }
    }

    /// The next message, which must be ChannelData: (channel, data, wire
    /// length).
    pub fn recv_channel(&mut self) -> (u16, Vec<u8>, usize) {
        match self.recv() {
            Incoming::Channel {
                number,
                data,
                wire_len,
            } => (number, data, wire_len),
            other => panic!("expected ChannelData, got {other:?}"),
        }
    }

    /// Send `req` and return the response with its transaction ID. Data
    /// and ChannelData read meanwhile are kept for [`TurnClient::recv`];
    /// so is a STUN message with another transaction ID.
    pub fn transact(&mut self, req: &[u8]) -> Vec<u8> {
        let tid = Message::parse(req)
            .expect("the request parses")
            .transaction_id();
        self.send_raw(req);
        self.await_response(tid)
    }

    /// Wait for the response with transaction ID `tid`.
    pub fn await_response(&mut self, tid: TransactionId) -> Vec<u8> {
        if let Some(i) = self.pending.iter().position(|x| is_response_to(x, tid)) {
            let Some(Incoming::Stun(b)) = self.pending.remove(i) else {
                unreachable!()
            };
            return b;
        }
        loop {
            let x = self.read_one();
            if is_response_to(&x, tid) {
                let Incoming::Stun(b) = x else { unreachable!() };
                return b;
            }
            self.pending.push_back(x);
        }
    }

    // --- TURN ------------------------------------------------------------

    /// Allocate with the long-term credential dance (RFC 8489 §9.2): an
    /// unsigned request, the 401 with REALM and NONCE, the signed request
    /// (once more on 438 Stale Nonce). Panics unless it succeeds.
    pub fn allocate(&mut self, creds: &Credentials, opts: &AllocateOptions) -> Allocated {
        self.try_allocate(creds, opts).unwrap_or_else(|e| {
            panic!(
                "Allocate by {} over {} failed with {}: {:?}",
                creds.username,
                self.transport(),
                e.code,
                Message::parse(&e.bytes).ok().and_then(|m| m
                    .error_code()
                    .ok()
                    .flatten()
                    .map(|c| c.reason.to_string()))
            )
        })
    }

    /// [`TurnClient::allocate`], returning the error response of the
    /// signed request instead of panicking. The first (unsigned) request
    /// must get a well-formed 401.
    pub fn try_allocate(
        &mut self,
        creds: &Credentials,
        opts: &AllocateOptions,
    ) -> Result<Allocated, ErrorReply> {
        self.challenge(creds);
        self.allocate_signed(opts)
    }

    /// The first half of the dance: an unsigned Allocate, which must get a
    /// 401 with REALM and NONCE; the session is kept for signing.
    pub fn challenge(&mut self, creds: &Credentials) {
        let mut buf = Vec::new();
        client::allocate(&mut buf, new_tid(), &AllocateOptions::default(), None);
        let resp = self.transact(&buf);
        let msg = Message::parse(&resp).expect("401 parses");
        assert_eq!(msg.method(), Method::ALLOCATE, "challenge method");
        assert_eq!(
            (msg.class(), error_code(&msg)),
            (Class::Error, Some(401)),
            "an unsigned Allocate is challenged with 401"
        );
        self.session = Some(
            Session::from_challenge(&msg, creds.clone(), SignOptions::default())
                .expect("the 401 carries REALM and NONCE"),
        );
    }

    /// A signed Allocate request with the session (not sent).
    pub fn allocate_request(&self, opts: &AllocateOptions) -> Vec<u8> {
        let mut req = Vec::new();
        client::allocate(&mut req, new_tid(), opts, Some(self.session()));
        req
    }

    /// The second half: the signed Allocate (once more on 438).
    pub fn allocate_signed(&mut self, opts: &AllocateOptions) -> Result<Allocated, ErrorReply> {
        let mut retried = false;
        loop {
            let req = self.allocate_request(opts);
            let resp = self.transact(&req);
            match self.allocate_response(&req, resp) {
                Err(e) if e.code == 438 && !retried => {
                    retried = true;
                    let mut s = self.session().clone();
                    let msg = Message::parse(&e.bytes).expect("parses");
                    assert!(s.update_nonce(&msg), "438 carries a NONCE");
                    self.session = Some(s);
                }
                r => return r,
            }
        }
    }

    /// Check the response to the signed Allocate `req`.
    pub fn allocate_response(&self, req: &[u8], resp: Vec<u8>) -> Result<Allocated, ErrorReply> {
        let msg = Message::parse(&resp).expect("Allocate response parses");
        assert_eq!(msg.method(), Method::ALLOCATE, "response method");
        assert_eq!(
            msg.transaction_id(),
            Message::parse(req).expect("parses").transaction_id(),
            "response transaction id"
        );
        match msg.class() {
            Class::Success => {
                assert!(
                    self.session().verify(&msg),
                    "Allocate success response must carry a valid MESSAGE-INTEGRITY"
                );
                let relayed = msg
                    .xor_relayed_address()
                    .expect("XOR-RELAYED-ADDRESS decodes")
                    .expect("XOR-RELAYED-ADDRESS present");
                let mapped = msg
                    .xor_mapped_address()
                    .expect("XOR-MAPPED-ADDRESS decodes")
                    .expect("XOR-MAPPED-ADDRESS present");
                let lifetime = msg
                    .lifetime()
                    .expect("LIFETIME decodes")
                    .expect("LIFETIME present");
                Ok(Allocated {
                    relayed,
                    mapped,
                    lifetime,
                    request: req.to_vec(),
                    response: resp,
                })
            }
            Class::Error => {
                let code = error_code(&msg).expect("ERROR-CODE present");
                Err(ErrorReply { code, bytes: resp })
            }
            c => panic!("Allocate answered with class {c:?}"),
        }
    }

    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("no session: allocate first (or set one)")
    }

    /// Send a request built by `build` with the session, retry once on
    /// 438, check the method and the integrity of the answer, and return
    /// it: `Ok(success bytes)` or `Err(error)`.
    fn signed(
        &mut self,
        method: Method,
        build: impl Fn(&mut Vec<u8>, TransactionId, &Session),
    ) -> Result<Vec<u8>, ErrorReply> {
        let mut retried = false;
        loop {
            let mut req = Vec::new();
            build(&mut req, new_tid(), self.session());
            let resp = self.transact(&req);
            let msg = Message::parse(&resp).expect("response parses");
            assert_eq!(msg.method(), method, "response method");
            if msg.has_integrity() || msg.has_integrity_sha256() {
                assert!(
                    self.session().verify(&msg),
                    "{method:?} response carries MESSAGE-INTEGRITY that does not verify"
                );
            }
            match msg.class() {
                Class::Success => {
                    assert!(
                        msg.has_integrity(),
                        "{method:?} success response must be signed"
                    );
                    return Ok(resp);
                }
                Class::Error => {
                    let code = error_code(&msg).expect("ERROR-CODE present");
                    if code == 438 && !retried {
                        retried = true;
                        let mut s = self.session().clone();
                        assert!(s.update_nonce(&msg), "438 carries a NONCE");
                        self.session = Some(s);
                        continue;
                    }
                    return Err(ErrorReply { code, bytes: resp });
                }
                c => panic!("{method:?} answered with class {c:?}"),
            }
        }
    }

    /// Refresh (RFC 8656 §7.3); `Some(0)` deletes. Returns the LIFETIME
    /// granted or the error code.
    pub fn refresh(&mut self, lifetime: Option<u32>) -> Result<u32, u16> {
        let resp = self
            .signed(Method::REFRESH, |b, tid, s| {
                client::refresh(b, tid, lifetime, s)
            })
            .map_err(|e| e.code)?;
        let msg = Message::parse(&resp).expect("parses");
        Ok(msg
            .lifetime()
            .expect("LIFETIME decodes")
            .expect("LIFETIME present"))
    }

    /// A signed Refresh request with the session (not sent).
    pub fn refresh_request(&self, lifetime: Option<u32>) -> Vec<u8> {
        let mut req = Vec::new();
        client::refresh(&mut req, new_tid(), lifetime, self.session());
        req
    }

    /// CreatePermission for `peers` (RFC 8656 §9.1); the error code if
    /// refused.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), u16> {
        self.signed(Method::CREATE_PERMISSION, |b, tid, s| {
            client::create_permission(b, tid, peers, s)
        })
        .map(|_| ())
        .map_err(|e| e.code)
    }

    /// A signed CreatePermission request with the session (not sent).
    pub fn create_permission_request(&self, peers: &[SocketAddr]) -> Vec<u8> {
        let mut req = Vec::new();
        client::create_permission(&mut req, new_tid(), peers, self.session());
        req
    }

    /// ChannelBind `channel` to `peer` (RFC 8656 §11.1); the error code if
    /// refused.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        self.signed(Method::CHANNEL_BIND, |b, tid, s| {
            client::channel_bind(b, tid, channel, peer, s)
        })
        .map(|_| ())
        .map_err(|e| e.code)
    }

    /// A Send indication of `data` to `peer` (no answer expected).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        self.send_raw(&send_indication_bytes(peer, data));
    }

    /// ChannelData on `channel`, padded to four bytes on TCP/TLS (RFC
    /// 8656 §12.5), unpadded on UDP.
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut buf = Vec::new();
        ChannelData::encode(channel, data, self.transport().is_stream(), &mut buf);
        self.send_raw(&buf);
    }

    /// A Binding request round trip (no authentication): a cheap way to
    /// know the server has handled everything sent before it on this
    /// five-tuple. Returns XOR-MAPPED-ADDRESS.
    pub fn binding(&mut self) -> SocketAddr {
        let mut buf = Vec::new();
        client::binding(&mut buf, new_tid(), true);
        let resp = self.transact(&buf);
        let msg = Message::parse(&resp).expect("Binding response parses");
        assert_eq!(
            (msg.method(), msg.class()),
            (Method::BINDING, Class::Success)
        );
        msg.xor_mapped_address()
            .expect("XOR-MAPPED-ADDRESS decodes")
            .expect("XOR-MAPPED-ADDRESS present")
    }
}

/// A Send indication of `data` to `peer`.
pub fn send_indication_bytes(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    client::send_indication(&mut buf, new_tid(), peer, data);
    buf
}

/// The error code of a message, if it has one.
pub fn error_code(msg: &Message<'_>) -> Option<u16> {
    msg.error_code().ok().flatten().map(|c| c.code)
}

fn is_response_to(x: &Incoming, tid: TransactionId) -> bool {
    match x {
        Incoming::Stun(b) => Message::parse(b).is_ok_and(|m| {
            m.transaction_id() == tid && matches!(m.class(), Class::Success | Class::Error)
        }),
        _ => false,
    }
}

fn decode(bytes: Vec<u8>, wire_len: usize) -> Incoming {
    match bytes.first().map(|b| b >> 6) {
        Some(0) => {
            let msg = Message::parse(&bytes)
                .unwrap_or_else(|e| panic!("server sent a bad STUN message ({e}): {bytes:02x?}"));
            if (msg.method(), msg.class()) == (Method::DATA, Class::Indication) {
                let peer = msg
                    .xor_peer_address()
                    .expect("XOR-PEER-ADDRESS decodes")
                    .expect("Data indication has XOR-PEER-ADDRESS");
                let data = msg.data().expect("Data indication has DATA").to_vec();
                return Incoming::Data { peer, data };
            }
            Incoming::Stun(bytes)
        }
        Some(1) => {
            let cd = ChannelData::parse(&bytes)
                .unwrap_or_else(|e| panic!("server sent bad ChannelData ({e}): {bytes:02x?}"));
            Incoming::Channel {
                number: cd.channel,
                data: cd.data.to_vec(),
                wire_len,
            }
        }
        _ => panic!("server sent neither STUN nor ChannelData: {bytes:02x?}"),
    }
}

/// Whether `wire_len` is a ChannelData of `len` data bytes padded to four
/// bytes, as TCP/TLS require (RFC 8656 §12.5).
pub fn is_padded(len: usize, wire_len: usize) -> bool {
    wire_len == 4 + pad4(len)
}

/// The attribute types of a message, in order (for exact checks).
pub fn attribute_types(bytes: &[u8]) -> Vec<u16> {
    Message::parse(bytes)
        .expect("parses")
        .attributes()
        .map(|a| a.typ)
        .collect()
}

/// A plain UDP socket playing the peer, with bounded reads.
pub struct Peer {
    pub sock: UdpSocket,
}

impl Peer {
    /// A peer on the loopback address of a family.
    pub fn new(ipv6: bool) -> Self {
        Peer {
            sock: udp_client(ipv6),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// The next datagram: (payload, source). Panics on timeout.
    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "peer {}: no datagram within {IO_TIMEOUT:?}: {e}",
                self.addr()
            )
        });
        buf.truncate(n);
        (buf, from)
    }

    pub fn send_to(&self, data: &[u8], to: SocketAddr) {
        let n = self
            .sock
            .send_to(data, to)
            .unwrap_or_else(|e| panic!("peer send_to {to}: {e}"));
        assert_eq!(n, data.len(), "short UDP send");
    }
}

/// Wait until nothing listens on the UDP address `relayed` any more: a
/// datagram to it from a connected socket draws ICMP port unreachable,
/// which `recv` reports as ConnectionRefused. A relay socket closes a
/// moment after its allocation ends (the shard cancels its task), so this
/// probes again until `limit`; anything that answers, or no refusal by
/// then, fails.
pub fn wait_port_closed(relayed: SocketAddr, limit: Duration) {
    let sock = UdpSocket::bind(SocketAddr::new(relayed.ip(), 0)).expect("bind probe");
    sock.connect(relayed).expect("connect probe");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    loop {
        // A failed send is the refusal of the previous probe, reported late.
        let r = match sock.send(b"anyone there?") {
            Err(e) => Err(e),
            Ok(_) => sock.recv(&mut buf).map(|n| buf[..n].to_vec()),
        };
        match r {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("probe of {relayed}: unexpected error {e}"),
            Ok(d) => panic!("something at {relayed} answered the probe: {d:02x?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the relay port {relayed} was still open {limit:?} after its allocation ended"
        );
    }
}
