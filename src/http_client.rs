//! One HTTP/1.1 client for the tools and the tests: `ice-check
//! --credentials-url` fetches credentials with it, and the integration
//! tests call the HTTP API with it.
//!
//! [ureq] does the HTTP (chunked bodies, headers, timeouts); TLS is the
//! caller's `rustls::ClientConfig`, so `--ca FILE` and `--insecure` mean for
//! an `https://` URL exactly what they mean for a `turns:` server (one
//! config, the `ring` provider, the project's own verifiers). Every
//! response comes back as it is, 4xx and 5xx included: status, headers and
//! body. No redirects are followed, no proxy from the environment is used,
//! no connection is kept for a next request, and every request is bounded
//! in time and in the size of what it reads.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};

/// The largest response body read; a longer one is an error.
pub const MAX_BODY: u64 = 1 << 20;

/// A response as received, whatever its status.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// In the order received; names as sent (compare them
    /// case-insensitively, or use [`Response::header`]).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no response: a bad URL, no connection, a TLS
/// failure, a timeout, a malformed or oversized answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl From<ureq::Error> for Error {
    fn from(e: ureq::Error) -> Self {
        Error(match e {
            // The socket's or the TLS handshake's own words.
            ureq::Error::Io(io) => io.to_string(),
            e => e.to_string(),
        })
    }
}

/// An HTTP client: one per set of TLS settings.
#[derive(Debug)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl HttpClient {
    /// A client whose requests each take at most `timeout` (connecting,
    /// TLS, sending, reading), and whose `https://` URLs use `tls` (no
    /// `tls`: `https://` URLs fail).
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> HttpClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_global(Some(timeout))
            .user_agent(concat!("turnpike/", env!("CARGO_PKG_VERSION")))
            .build();
        let connector = ().chain(TcpConnector::default()).chain(RustlsConnector(tls));
        HttpClient {
            agent: ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
        }
    }

    /// `method url`, with `headers` and `body` (none when empty, except
    /// for POST, PUT and PATCH, which say `Content-Length: 0`).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, Error> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let bad = |e: ureq::http::Error| Error(format!("{method} {url}: {e}"));
        let sends_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        let mut response = if sends_body {
            self.agent.run(builder.body(body).map_err(bad)?)?
        } else {
            self.agent.run(builder.body(()).map_err(bad)?)?
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, Error> {
        self.request("GET", url, headers, b"")
    }
}

/// Wraps the TCP connection of an `https://` URL in TLS with the client's
/// rustls config, verifying the certificate against the URL's host.
#[derive(Debug)]
struct RustlsConnector(Option<Arc<rustls::ClientConfig>>);

impl<In: Transport> Connector<In> for RustlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let Some(config) = &self.0 else {
            return Err(ureq::Error::Tls("https:// without TLS settings"));
        };
        let host = details.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ureq::Error::Tls("not a TLS server name"))?;
        let conn = rustls::ClientConnection::new(config.clone(), name)
            .map_err(|e| ureq::Error::Other(Box::new(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        let mut stream = rustls::StreamOwned::new(conn, sock);
        stream.conn.complete_io(&mut stream.sock)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport { buffers, stream })))
    }
}

struct TlsTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write;
        self.stream.sock.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        use std::io::Read;
        self.stream.sock.set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = match self.stream.read(input) {
            // A server that closes without close_notify has still sent
            // what it sent (a truncated body fails on its length or
            // framing).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            r => r?,
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.sock.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::thread::JoinHandle;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Reads one request (head, and a body by Content-Length) off `s`.
    fn read_request(s: &mut impl Read) -> String {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "request head ends");
            raw.push(byte[0]);
        }
        let head = String::from_utf8(raw.clone()).unwrap().to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        raw.extend_from_slice(&body);
        String::from_utf8(raw).unwrap()
    }

    /// A loopback server answering each of `answers` on a connection of
    /// its own (over TLS with `tls`); it returns the requests it read.
    fn serve(
        answers: Vec<&'static str>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SocketAddr, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in answers {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(LIMIT)).unwrap();
                match &tls {
                    None => {
                        let mut s = tcp;
                        seen.push(read_request(&mut s));
                        // A client that gave up early has closed.
                        let _ = s.write_all(answer.as_bytes());
                    }
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        // A client that refuses the certificate ends here.
                        let mut first = [0u8; 1];
                        if s.read(&mut first).is_err() {
                            seen.push(String::new());
                            continue;
                        }
                        let rest = read_request(&mut (&first[..]).chain(&mut s));
                        seen.push(rest);
                        s.write_all(answer.as_bytes()).unwrap();
                        s.conn.send_close_notify();
                        s.flush().unwrap();
                    }
                }
            }
            seen
        });
        (addr, server)
    }

    fn plain() -> HttpClient {
        HttpClient::new(None, LIMIT)
    }

    #[test]
    fn sends_headers_and_reads_a_chunked_body() {
        let (addr, server) = serve(
            vec![
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
            ],
            None,
        );
        let r = plain()
            .get(
                &format!("http://{addr}/api/v1/credentials?username=u"),
                &[
                    ("Authorization", "Bearer K"),
                    ("Accept", "application/json"),
                ],
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"Wikipedia");
        assert_eq!(r.header("content-TYPE"), Some("application/json"));
        let req = server.join().unwrap().remove(0);
        assert!(
            req.starts_with("GET /api/v1/credentials?username=u HTTP/1.1\r\n"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("\r\nauthorization: bearer k\r\n"), "{req}");
        assert!(lower.contains("\r\naccept: application/json\r\n"), "{req}");
        assert!(
            !lower.contains("content-length"),
            "a GET without a body: {req}"
        );
    }

    #[test]
    fn error_statuses_come_back_with_their_headers_and_body() {
        let (addr, server) = serve(
            vec![
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 23\r\n\r\n{\"message\":\"wrong key\"}",
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
            ],
            None,
        );
        let c = plain();
        let url = format!("http://{addr}/x");
        let r = c.get(&url, &[]).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.text(), "{\"message\":\"wrong key\"}");
        assert_eq!(c.get(&url, &[]).unwrap().status, 503);
        let r = c.get(&url, &[]).unwrap();
        assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
        assert_eq!(server.join().unwrap().len(), 3, "not followed");
    }

    #[test]
    fn post_and_delete_carry_their_bodies() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (addr, server) = serve(vec![ok, ok, ok], None);
        let c = plain();
        let url = format!("http://{addr}/api/v1/sessions/7");
        c.request("DELETE", &url, &[], b"{\"why\":1}").unwrap();
        c.request("POST", &url, &[("Content-Type", "text/plain")], b"hi")
            .unwrap();
        c.request("POST", &url, &[], b"").unwrap();
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("DELETE /api/v1/sessions/7 "),
            "{}",
            seen[0]
        );
        assert!(seen[0].ends_with("\r\n\r\n{\"why\":1}"), "{}", seen[0]);
        assert!(seen[1].starts_with("POST ") && seen[1].ends_with("\r\n\r\nhi"));
        assert!(
            seen[2]
                .to_ascii_lowercase()
                .contains("content-length: 0\r\n"),
            "an empty POST says so: {}",
            seen[2]
        );
    }

    #[test]
    fn a_body_over_the_limit_is_an_error() {
        let big: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                MAX_BODY + 1,
                "x".repeat(MAX_BODY as usize + 1)
            )
            .into_boxed_str(),
        );
        let (addr, server) = serve(vec![big], None);
        assert!(plain().get(&format!("http://{addr}/"), &[]).is_err());
        server.join().unwrap();
    }

    #[test]
    fn https_trusts_what_the_rustls_config_trusts() {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (addr, server) = serve(vec![ok, ok, ok, ok], Some(Arc::new(server_cfg)));
        let url = format!("https://{addr}/healthz");
        let client = |roots: rustls::RootCertStore| {
            let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            HttpClient::new(Some(Arc::new(cfg)), LIMIT)
        };
        // The certificate as the CA (--ca FILE).
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        assert_eq!(client(roots).get(&url, &[]).unwrap().text(), "ok");
        // Trusting nothing: refused, and the error says why.
        let e = client(rustls::RootCertStore::empty())
            .get(&url, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate"), "{e}");
        // --insecure: the project's accept-any verifier.
        let insecure = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(crate::tls::accept_any_certificate())
            .with_no_client_auth();
        let r = HttpClient::new(Some(Arc::new(insecure)), LIMIT)
            .get(&url, &[])
            .unwrap();
        assert_eq!(r.status, 200);
        // Without TLS settings an https URL cannot be fetched.
        let e = plain().get(&url, &[]).unwrap_err().to_string();
        assert!(e.contains("without TLS settings"), "{e}");
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("GET /healthz HTTP/1.1\r\n"));
        assert_eq!(seen[1], "", "the refusing client sent no request");
        assert!(seen[2].starts_with("GET /healthz HTTP/1.1\r\n"));
        assert_eq!(seen[3], "", "no TLS, no request");
    }
}
