//! Helpers for the fleet tests (issue 14): a real `redis-server` started
//! by the test (no persistence: `--save "" --appendonly no`), killed and
//! reaped when dropped, that can be stopped and started again on its port;
//! and the TOML of a turnpike node of a fleet.
//!
//! `redis-server` missing is a failure, never a skip (scripts/test.sh
//! installs Debian's `redis-server`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use turnpike_proto::client::Credentials;

use super::KillOnDrop;
use super::ops::unix_now;

/// The REST secret, API key and admin key of every node of a test fleet.
pub const FLEET_SECRET: &str = "fleet-test-secret";
pub const FLEET_API_KEY: &str = "fleet-api-key-0123456789";
pub const FLEET_ADMIN_KEY: &str = "fleet-admin-key-9876543210";

/// How long Redis may take to answer PING after it was started.
const REDIS_START: Duration = Duration::from_secs(10);

/// A `redis-server` child process.
pub struct RedisServer {
    /// Command words in front of `redis-server` (e.g. `ip netns exec NS`).
    prefix: Vec<String>,
    /// Extra `redis-server` arguments (e.g. `--requirepass PW`).
    extra: Vec<String>,
    bind: IpAddr,
    port: u16,
    child: Option<KillOnDrop>,
    dir: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind TCP port 0")
        .port()
}

impl RedisServer {
    /// Redis on 127.0.0.1, on a free port.
    pub fn start() -> RedisServer {
        Self::start_in(&[], IpAddr::V4(Ipv4Addr::LOCALHOST), free_tcp_port())
    }

    /// Redis on 127.0.0.1 with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut r = Self::new(&[], IpAddr::V4(Ipv4Addr::LOCALHOST), free_tcp_port());
        r.extra = extra.iter().map(|s| s.to_string()).collect();
        r.restart();
        r
    }

    /// Redis on `bind:port`, run through `prefix` (e.g. `["ip", "netns",
    /// "exec", "ns-redis"]`); returns once it answers PING (a test failure
    /// if it does not within 10 s).
    pub fn start_in(prefix: &[&str], bind: IpAddr, port: u16) -> RedisServer {
        let mut r = Self::new(prefix, bind, port);
        r.restart();
        r
    }

    fn new(prefix: &[&str], bind: IpAddr, port: u16) -> RedisServer {
        RedisServer {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            extra: Vec::new(),
            bind,
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Freeze it (SIGSTOP): connections stay open, nothing is answered (a
    /// Redis that is slow without end).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaw it (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let c = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(c.child.id()).expect("pid fits pid_t");
        turnpike_sys::process::kill(pid, sig).unwrap_or_else(|e| panic!("kill: {e}"));
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// `redis://IP:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr())
    }

    /// SIGKILL it (as a crash or a network loss looks to the nodes).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Start it (again) on the same port: an empty Redis.
    pub fn restart(&mut self) {
        self.stop();
        let mut words: Vec<String> = self.prefix.clone();
        words.push("redis-server".into());
        for w in [
            "--bind",
            &self.bind.to_string(),
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &self.dir.path().display().to_string(),
        ] {
            words.push(w.to_string());
        }
        words.extend(self.extra.iter().cloned());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {words:?}: {e} (install Debian's redis-server: scripts/test.sh does)")
            });
        let mut child = KillOnDrop::new(child, format!("redis-server on {}", self.addr()));
        let deadline = Instant::now() + REDIS_START;
        loop {
            child.assert_running();
            // Answered (NOAUTH too, with --requirepass): it is up.
            if self
                .command(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING within {REDIS_START:?}",
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// One command over a fresh connection (RESP); the raw reply, `None`
    /// when Redis cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        // Replies of the commands tests use are small: read until the
        // reply is complete (ends with CRLF and has every line of an
        // array), or the read times out.
        loop {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if resp_complete(&got) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    /// `ZCARD key` (stale members included: the count Redis holds).
    pub fn zcard(&self, key: &str) -> i64 {
        let r = self.command(&["ZCARD", key]).expect("Redis answers");
        r.trim_start_matches(':')
            .trim()
            .parse()
            .expect("an integer reply")
    }
}

/// Whether `b` holds one whole RESP reply (simple forms and flat arrays).
fn resp_complete(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    if !text.ends_with("\r\n") {
        return false;
    }
    let mut lines = text.split("\r\n");
    let Some(first) = lines.next() else {
        return false;
    };
    let need = |count: i64| -> bool {
        // Each element: a $len line and its data, or one line.
        let rest: Vec<&str> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .collect();
        let mut n = 0;
        let mut i = 0;
        while i < rest.len() {
            if rest[i].starts_with('$') && rest[i] != "$-1" {
                i += 2;
            } else {
                i += 1;
            }
            n += 1;
        }
        n >= count
    };
    match first.as_bytes().first() {
        Some(b'*') => first[1..]
            .parse::<i64>()
            .map_or(true, |c| c <= 0 || need(c)),
        Some(b'$') => first[1..].parse::<i64>().map_or(true, |c| c < 0 || need(1)),
        _ => true,
    }
}

/// The TOML of a fleet node `node_id`: UDP on `listen_ip` port 0, relaying
/// on `listen_ip` in `relay_ports` ("LOW-HIGH"), the fleet's REST secret,
/// the HTTP API on `listen_ip` port 0 with the fleet's keys, peers on
/// `listen_ip`'s /8 (IPv4) allowed, `[policy]` lines `policy` and
/// `[cluster]` lines `cluster` added to the fleet's (Redis at `redis_url`,
/// refreshed every 200 ms, leases of 2 s, a 2 s admission budget so that a
/// loaded test machine does not fall back to local quotas, unless
/// `cluster` sets `allocate_budget` itself).
pub fn node_config(
    node_id: &str,
    redis_url: &str,
    listen_ip: IpAddr,
    relay_ports: &str,
    policy: &str,
    cluster: &str,
) -> String {
    let allow = match listen_ip {
        IpAddr::V4(v4) => format!("{}.0.0.0/8", v4.octets()[0]),
        IpAddr::V6(_) => format!("{listen_ip}/128"),
    };
    let budget = if cluster.contains("allocate_budget") {
        ""
    } else {
        "allocate_budget = \"2s\""
    };
    format!(
        r#"
[server]
realm = "fleet.test"

[[listen]]
transport = "udp"
addr = "{listen}"

[relay]
bind_ip = "{listen_ip}"
ports = "{relay_ports}"

[auth]
secrets = ["{FLEET_SECRET}"]

[policy]
allow_peers = ["{allow}"]
{policy}

[http]
addr = "{http}"
api_keys = ["{FLEET_API_KEY}"]
admin_keys = ["{FLEET_ADMIN_KEY}"]

[cluster]
redis_url = "{redis_url}"
node_id = "{node_id}"
refresh_interval = "200ms"
lease_ttl = "2s"
{budget}
{cluster}
"#,
        listen = SocketAddr::new(listen_ip, 0),
        http = SocketAddr::new(listen_ip, 0),
    )
}

/// A REST credential of the fleet for `user`, valid for an hour.
pub fn rest(user: &str) -> Credentials {
    Credentials::rest(FLEET_SECRET, user, unix_now() + 3600)
}

/// The (user part, node) of `/api/v1/sessions` entries, sorted.
pub fn owners(list: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|s| {
            let user = s["user"].as_str().unwrap_or_default();
            let user = user.split_once(':').map_or(user, |(_, u)| u);
            (
                user.to_string(),
                s["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Owned, sorted (user, node) pairs, to compare with [`owners`].
pub fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = p
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}
