//! One client five-tuple towards the server: a connected UDP socket, a TCP
//! connection or a TLS connection. Set up blocking (with timeouts), then
//! used non-blocking from an epoll loop: `send` queues whole STUN or
//! ChannelData messages, `recv` hands whole messages to a callback.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::config::Transport;
use crate::tls::ClientTrust;
use turnpike_proto::wire::frame_len;
use turnpike_sys::batch::{BATCH, RecvBatch, SendBatch, UdpSocketState};

/// Where and how to reach the server.
#[derive(Clone)]
pub struct Target {
    pub server: SocketAddr,
    pub transport: Transport,
    /// For TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    pub fn udp(server: SocketAddr) -> Self {
        Target {
            server,
            transport: Transport::Udp,
            tls: None,
        }
    }

    /// Whether messages are framed on a stream (TCP/TLS: ChannelData is
    /// padded to four bytes).
    pub fn is_stream(&self) -> bool {
        self.transport != Transport::Udp
    }
}

/// Socket buffer size asked for on every client socket (the kernel caps it
/// at net.core.{r,w}mem_max).
const SOCK_BUF: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message a stream connection buffers before giving up on it.
const STREAM_BUF: usize = 1 << 20;

enum Sock {
    Udp(UdpSocket, UdpSocketState),
    Tcp(TcpStream),
    Tls(TcpStream, Box<rustls::ClientConnection>),
}

pub(super) struct Conn {
    sock: Sock,
    pub local: SocketAddr,
    server: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    closed: bool,
}

/// A TLS client config: trust the PEM certificates in `ca`, or anything at
/// all when `insecure` (self-signed benchmark servers).
pub fn tls_config(
    ca: Option<&std::path::Path>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let trust = match (insecure, ca) {
        (true, _) => ClientTrust::AnyCertificate,
        (false, Some(ca)) => ClientTrust::CaFile(ca),
        (false, None) => return Err("TLS needs --ca FILE (PEM) or --insecure".into()),
    };
    crate::tls::client_config(trust)
}

fn set_bufs(s: SockRef<'_>) {
    let _ = s.set_recv_buffer_size(SOCK_BUF);
    let _ = s.set_send_buffer_size(SOCK_BUF);
}

impl Conn {
    /// Open a new five-tuple to the server (TLS: handshake included), left
    /// non-blocking.
    pub(super) fn connect(t: &Target) -> io::Result<Conn> {
        let sock = match t.transport {
            Transport::Udp => {
                let domain = Domain::for_address(t.server);
                let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
                set_bufs(SockRef::from(&s));
                s.connect(&t.server.into())?;
                s.set_nonblocking(true)?;
                Sock::Udp(s.into(), UdpSocketState::new(true))
            }
            Transport::Tcp | Transport::Tls => {
                let tcp = TcpStream::connect_timeout(&t.server, CONNECT_TIMEOUT)?;
                tcp.set_nodelay(true)?;
                set_bufs(SockRef::from(&tcp));
                if t.transport == Transport::Tcp {
                    tcp.set_nonblocking(true)?;
                    Sock::Tcp(tcp)
                } else {
                    let cfg = t.tls.clone().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "TLS without a client config")
                    })?;
                    let mut tcp = tcp;
                    let tls = handshake(&mut tcp, cfg, t.server)?;
                    tcp.set_nonblocking(true)?;
                    Sock::Tls(tcp, Box::new(tls))
                }
            }
        };
        let local = match &sock {
            Sock::Udp(s, _) => s.local_addr()?,
            Sock::Tcp(s) | Sock::Tls(s, _) => s.local_addr()?,
        };
        Ok(Conn {
            sock,
            local,
            server: t.server,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            closed: false,
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        match &self.sock {
            Sock::Udp(s, _) => s.as_raw_fd(),
            Sock::Tcp(s) | Sock::Tls(s, _) => s.as_raw_fd(),
        }
    }

    pub(super) fn is_stream(&self) -> bool {
        !matches!(self.sock, Sock::Udp(..))
    }

    /// Whether the server closed a stream (or it failed).
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Send one message. UDP: one datagram (an error if the kernel would
    /// not take it). Streams: queued and written as far as the socket
    /// takes it now.
    pub(super) fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match &mut self.sock {
            Sock::Udp(s, _) => s.send(msg).map(|_| ()),
            _ => {
                self.queue(msg);
                self.flush().map(|_| ())
            }
        }
    }

    /// Send several messages: one `sendmmsg` per 32 over UDP, one write over
    /// a stream. Returns how many were dropped (UDP: socket buffer full).
    pub(super) fn send_many<'a>(&mut self, msgs: impl IntoIterator<Item = &'a [u8]>) -> usize {
        match &mut self.sock {
            Sock::Udp(s, gso) => {
                let fd = s.as_raw_fd();
                let mut dropped = 0;
                let mut b = SendBatch::new();
                for m in msgs {
                    b.push(m, self.server);
                    if b.is_full() {
                        dropped += b.flush(fd, gso);
                    }
                }
                if !b.is_empty() {
                    dropped += b.flush(fd, gso);
                }
                dropped
            }
            _ => {
                let mut n = 0;
                for m in msgs {
                    self.queue(m);
                    n += 1;
                }
                match self.flush() {
                    Ok(_) => 0,
                    Err(_) => n,
                }
            }
        }
    }

    fn queue(&mut self, msg: &[u8]) {
        match &mut self.sock {
            Sock::Udp(..) => unreachable!("UDP sends directly"),
            Sock::Tcp(_) => self.wbuf.extend_from_slice(msg),
            Sock::Tls(_, tls) => {
                // rustls buffers plaintext without limit by default.
                let _ = tls.writer().write_all(msg);
            }
        }
    }

    /// Write what a stream has queued, as far as the socket takes it.
    /// `Ok(true)` when bytes are still waiting (watch for writability).
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        let r = match &mut self.sock {
            Sock::Udp(..) => Ok(false),
            Sock::Tcp(s) => {
                let mut done = 0;
                let mut res = Ok(());
                while done < self.wbuf.len() {
                    match s.write(&self.wbuf[done..]) {
                        Ok(0) => {
                            res = Err(io::ErrorKind::WriteZero.into());
                            break;
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                self.wbuf.drain(..done);
                res.map(|_| !self.wbuf.is_empty())
            }
            Sock::Tls(s, tls) => {
                let mut res = Ok(false);
                while tls.wants_write() {
                    match tls.write_tls(s) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            res = Ok(true);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res
            }
        };
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    /// Read what is waiting (without blocking) and call `f` with each whole
    /// message. UDP reads at most `max_batches` × 32 datagrams through
    /// `rb`; a stream reads until it would block. Returns the number of
    /// messages. A stream that closed or sent garbage is marked closed.
    pub(super) fn recv(
        &mut self,
        rb: &mut RecvBatch,
        max_batches: usize,
        mut f: impl FnMut(&[u8]),
    ) -> usize {
        let mut n = 0;
        match &mut self.sock {
            Sock::Udp(s, _) => {
                let fd = s.as_raw_fd();
                for _ in 0..max_batches.max(1) {
                    let got = match rb.recv(fd) {
                        Ok(k) => k,
                        Err(_) => break,
                    };
                    for (slot, len, _) in rb.slots_mut().flatten() {
                        f(&slot[..len]);
                        n += 1;
                    }
                    if got < BATCH {
                        break;
                    }
                }
                n
            }
            Sock::Tcp(s) => {
                self.closed |= read_available(&mut self.rbuf, |rbuf| {
                    let mut chunk = [0u8; 16384];
                    let k = s.read(&mut chunk)?;
                    rbuf.extend_from_slice(&chunk[..k]);
                    Ok(k)
                });
                self.split_frames(&mut f)
            }
            Sock::Tls(s, tls) => {
                self.closed |= read_available(&mut self.rbuf, |rbuf| {
                    let k = tls.read_tls(s)?;
                    if k > 0 {
                        tls.process_new_packets().map_err(io::Error::other)?;
                        let mut chunk = [0u8; 16384];
                        while let Ok(n @ 1..) = tls.reader().read(&mut chunk) {
                            rbuf.extend_from_slice(&chunk[..n]);
                        }
                    }
                    Ok(k)
                });
                // Key updates or alerts may want to be written.
                let _ = self.flush();
                self.split_frames(&mut f)
            }
        }
    }

    fn split_frames(&mut self, f: &mut impl FnMut(&[u8])) -> usize {
        let mut off = 0;
        let mut n = 0;
        loop {
            match frame_len(&self.rbuf[off..]) {
                Ok(Some(fr)) if off + fr.len <= self.rbuf.len() => {
                    f(&self.rbuf[off..off + fr.len]);
                    off += fr.len;
                    n += 1;
                }
                Ok(_) => break,
                Err(_) => {
                    self.closed = true;
                    off = self.rbuf.len();
                    break;
                }
            }
        }
        self.rbuf.drain(..off);
        n
    }
}

fn handshake(
    tcp: &mut TcpStream,
    cfg: Arc<rustls::ClientConfig>,
    server: SocketAddr,
) -> io::Result<rustls::ClientConnection> {
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    let mut tls = rustls::ClientConnection::new(cfg, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    let deadline = crate::clock::instant() + CONNECT_TIMEOUT;
    while tls.is_handshaking() {
        if crate::clock::instant() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        tls.complete_io(tcp)?;
    }
    while tls.wants_write() {
        tls.write_tls(tcp)?;
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    Ok(tls)
}

/// Reads what a non-blocking stream has now into `rbuf`, one `read_once`
/// at a time, until it would block or `rbuf` passes `STREAM_BUF`. True when
/// the stream ended (EOF or an error other than "would block").
fn read_available(
    rbuf: &mut Vec<u8>,
    mut read_once: impl FnMut(&mut Vec<u8>) -> io::Result<usize>,
) -> bool {
    while rbuf.len() <= STREAM_BUF {
        match read_once(rbuf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}
