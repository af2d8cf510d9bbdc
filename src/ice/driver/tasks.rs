//! The tasks that read the sockets: one per UDP socket (datagrams, and
//! ICMP errors on connected ones), one per TURN stream (connect, TLS
//! handshake, then whole frames both ways). They feed the driver's input
//! queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;

use turnpike_proto::ice::SocketId;
use turnpike_proto::wire::frame_len;

use super::{Input, why};

pub(super) async fn read_udp(
    sock: UdpSocket,
    side: usize,
    socket: SocketId,
    connected: Option<SocketAddr>,
    tx: mpsc::Sender<Input>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let input = match sock.recv_from(&mut buf).await {
            Ok((n, from)) => Input::Packet {
                side,
                socket,
                from,
                data: buf[..n].to_vec(),
            },
            // A connected socket reports ICMP errors (port unreachable
            // from the TURN server's host); an unconnected one does not.
            Err(e) => match connected {
                Some(to) => Input::Unreachable {
                    side,
                    socket,
                    to,
                    why: why(&e),
                },
                None => continue,
            },
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}

pub(super) struct StreamCtx {
    pub(super) side: usize,
    pub(super) id: SocketId,
    pub(super) server: SocketAddr,
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) connect_timeout: Duration,
}

impl StreamCtx {
    async fn fail(&self, why: String) {
        let _ = self
            .inputs
            .send(Input::Unreachable {
                side: self.side,
                socket: self.id,
                to: self.server,
                why,
            })
            .await;
    }
}

/// Connect (and handshake), then carry whole frames both ways until the
/// driver drops its sender or the connection ends.
pub(super) async fn run_stream(
    ctx: StreamCtx,
    sock: TcpSocket,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    out: mpsc::Receiver<Vec<u8>>,
) {
    let tcp = match tokio::time::timeout(ctx.connect_timeout, sock.connect(ctx.server)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return ctx.fail(format!("TCP connect: {}", why(&e))).await,
        Err(_) => return ctx.fail("TCP connect timed out".into()).await,
    };
    let _ = tcp.set_nodelay(true);
    match tls {
        None => pump_stream(&ctx, tcp, out).await,
        Some((cfg, name)) => {
            let connector = tokio_rustls::TlsConnector::from(cfg);
            match tokio::time::timeout(ctx.connect_timeout, connector.connect(name, tcp)).await {
                Ok(Ok(s)) => pump_stream(&ctx, s, out).await,
                Ok(Err(e)) => {
                    let cert = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                    let hint = if cert {
                        " (a private CA or self-signed certificate: --ca FILE)"
                    } else {
                        ""
                    };
                    ctx.fail(format!("TLS handshake: {e}{hint}")).await
                }
                Err(_) => ctx.fail("TLS handshake timed out".into()).await,
            }
        }
    }
}

async fn pump_stream<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &StreamCtx,
    stream: S,
    mut out: mpsc::Receiver<Vec<u8>>,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(65536);
    let mut chunk = vec![0u8; 16384];
    loop {
        tokio::select! {
            frame = out.recv() => match frame {
                Some(f) => {
                    if let Err(e) = w.write_all(&f).await {
                        return ctx.fail(format!("stream write: {}", why(&e))).await;
                    }
                }
                None => {
                    // The run is over: flush what was queued and close.
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    return;
                }
            },
            n = r.read(&mut chunk) => {
                let n = match n {
                    Ok(0) => return ctx.fail("the server closed the connection".into()).await,
                    Ok(n) => n,
                    Err(e) => return ctx.fail(format!("stream read: {}", why(&e))).await,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match frame_len(&buf) {
                        Ok(Some(f)) => {
                            let data = buf[..f.message_len].to_vec();
                            buf.drain(..f.len);
                            let p = Input::Packet {
                                side: ctx.side,
                                socket: ctx.id,
                                from: ctx.server,
                                data,
                            };
                            if ctx.inputs.send(p).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return ctx.fail(format!("the server sent bytes that are not STUN: {e}")).await;
                        }
                    }
                }
            }
        }
    }
}
