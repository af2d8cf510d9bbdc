//! A network-namespace NAT lab for tests: namespaces, veth pairs, a
//! bridged "Internet" on documentation addresses, nftables NAT routers of
//! a named behaviour, and children and sockets living inside namespaces.
//!
//! Everything a [`Lab`] creates is named `PREFIX-PID-N-RAND-ROLE`, so
//! tests in one process (counter), in several processes (pid) and on a
//! machine whose `/var/run/netns` other containers share (random tag)
//! never collide. Interface names are short and only need to be unique
//! inside their own namespace: veth pairs are created directly in their
//! two namespaces (`ip -n A link add X type veth peer name Y netns B`),
//! never in the host's.
//!
//! Dropping the lab (also while a test panics) kills the children it
//! spawned and deletes its namespaces, which removes their veths and
//! nftables tables with them.
//!
//! ```text
//! let Some(lab) = Lab::new("mytest") else { return }; // loud SKIPPED if not root
//! let net = lab.two_nats(Nat::Symmetric, Nat::PortRestricted.tcp_only());
//! let server = net.internet.ns.start_turnpike(&config); // may bind 203.0.113.1
//! let sock = net.a.client.udp_bind("0.0.0.0:0".parse().unwrap()); // behind NAT a
//! let peer = lab.spawn("peer", net.b.client.cmd("some-program").arg("--flag"));
//! peer.wait_line(START_TIMEOUT, |l| l.starts_with("ready"));
//! // drop order does not matter: the lab kills `peer` and deletes namespaces
//! ```
//!
//! Addresses of [`Lab::two_nats`] / [`Lab::nat_site`] (site N = 1, 2, ...):
//! the Internet is 203.0.113.0/24 on bridge `br0` in namespace `pub`, which
//! itself holds 203.0.113.1 (add more with [`Internet::add_ip`], or a
//! public host with its own stack with [`Internet::add_host`]); router `rN`
//! has 203.0.113.(10+N) outside and 10.N.0.1 inside; client `cN` has
//! 10.N.0.2 with a default route via its router. Nothing on the Internet
//! routes to 10.0.0.0/8.
//!
//! Needs root, iproute2 and nftables. Without them [`Lab::new`] prints a
//! loud SKIPPED message and returns `None`; set `TURNPIKE_NETNS_REQUIRED=1`
//! to make that a failure instead. CI runs as root, so the tests run there.
//!
//! Sockets: a socket belongs to the namespace it was created in for its
//! whole life, whichever thread uses it later. [`in_ns`] runs a closure on
//! a fresh thread that has joined a namespace (setns), so
//! `ns.in_ns(|| UdpSocket::bind(..))` hands back a socket in that namespace
//! that the test thread then uses freely. Processes spawned from such a
//! thread start in the namespace too ([`Ns::start_turnpike`] uses that).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::{IO_TIMEOUT, TestServer, run_bounded};

/// How long one setup command (`ip`, `nft`, `sysctl`) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `ip netns add` puts its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The "Internet" of [`Lab::internet`]: 203.0.113.0/24 (TEST-NET-3).
pub const PUBLIC_PREFIX_LEN: u8 = 24;
/// The public namespace's own address on the bridge: the TURN server's
/// host and the NAT routers' default gateway.
pub const PUBLIC_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

// --- availability ---------------------------------------------------------

/// Whether this process can build labs: root, a working `ip netns` and
/// `nft`. Probed once per process by creating and deleting a namespace.
pub fn availability() -> &'static Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(probe)
}

fn probe() -> Result<(), String> {
    let euid = turnpike_sys::process::euid();
    if euid != 0 {
        return Err(format!("not root (euid {euid})"));
    }
    let name = format!("tpprobe-{}-{:04x}", std::process::id(), random_u16());
    let out = |cmd: &mut Command| -> Result<(), String> {
        match cmd.stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "{cmd:?} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run {cmd:?}: {e}")),
        }
    };
    out(Command::new("ip").args(["netns", "add", &name]))?;
    let nft = out(Command::new("ip").args(["netns", "exec", &name, "nft", "list", "ruleset"]));
    let _ = Command::new("ip")
        .args(["netns", "del", &name])
        .stdin(Stdio::null())
        .output();
    nft
}

/// Print the loud "SKIPPED" banner for `test` and the reason. Written to
/// the stderr stream itself, not with `eprintln!`, so the test harness's
/// output capture does not swallow it: a skip is seen even when the test
/// "passes".
fn print_skip(test: &str, reason: &str) {
    use std::io::Write;
    let banner = format!(
        "\n\
         ########################################################################\n\
         ## SKIPPED: {test}\n\
         ## This test builds a network-namespace NAT lab (ip netns, veth pairs,\n\
         ## nftables NAT); it needs root and iproute2/nftables; CI runs it as root.\n\
         ## Why not here: {reason}\n\
         ## NOTHING WAS TESTED. Run as root, or set TURNPIKE_NETNS_REQUIRED=1\n\
         ## to turn this skip into a failure.\n\
         ########################################################################\n\n"
    );
    let _ = std::io::stderr().lock().write_all(banner.as_bytes());
}

fn random_u16() -> u16 {
    rand::rngs::StdRng::from_os_rng().next_u32() as u16
}

// --- running commands -----------------------------------------------------

/// Run a setup command to completion (at most [`CMD_TIMEOUT`]); panic with
/// its output unless it succeeds. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let (status, out, err) = run_bounded(cmd, CMD_TIMEOUT);
    assert!(
        status.success(),
        "{cmd:?} failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// `ip ARGS...`, checked.
pub fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args))
}

/// Run `f` on a new thread that has joined the network namespace `name`
/// (a handle in [`NETNS_DIR`]), and return its result; a panic in `f`
/// is re-raised here. Sockets created in `f` stay in that namespace for
/// good and may be used from any thread afterwards; a child process
/// spawned in `f` starts inside it (with the host's /sys and /etc, unlike
/// `ip netns exec`, which is what [`Ns::cmd`] uses).
pub fn in_ns<T, F>(name: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = netns_path(name);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // For this thread only; the thread ends when `f` returns, so no
            // pooled thread is left in the namespace.
            turnpike_sys::netns::enter(&file)
                .unwrap_or_else(|e| panic!("setns({}): {e}", path.display()));
            drop(file);
            f()
        });
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

// --- namespaces -----------------------------------------------------------

/// A network namespace of a lab (a handle; the [`Lab`] owns its life).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// The full namespace name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command that runs inside the
    /// namespace. Spawn long-lived ones with [`Lab::spawn`].
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `program args...` inside the namespace to completion, checked;
    /// returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        run_ok(self.cmd(program).args(args))
    }

    /// `ip -n NAME ARGS...`, checked.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run("sysctl", &["-w", &format!("{key}={value}")]);
    }

    /// Turn on IPv4 forwarding (for routers).
    pub fn enable_forwarding(&self) {
        self.sysctl("net.ipv4.ip_forward", "1");
    }

    /// Add `cidr` (e.g. "10.1.0.1/24") to interface `ifname`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    /// A default route via `gw`.
    pub fn default_route(&self, gw: Ipv4Addr) {
        self.ip(&["route", "add", "default", "via", &gw.to_string()]);
    }

    /// Load an nftables ruleset (nft -f syntax) into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rules.nft");
        std::fs::write(&path, ruleset).expect("write ruleset");
        let mut c = self.cmd("nft");
        c.arg("-f").arg(&path);
        let (status, out, err) = run_bounded(&mut c, CMD_TIMEOUT);
        assert!(
            status.success(),
            "nft -f in {} failed ({status}): {out}{err}\nruleset:\n{ruleset}",
            self.name
        );
    }

    /// `nft list ruleset` (with counters), for diagnostics.
    pub fn nft_list(&self) -> String {
        self.run("nft", &["list", "ruleset"])
    }

    /// The packet counter of the rule carrying `comment "COMMENT"` (one
    /// of the `RULE_*` constants for [`nat_ruleset`]); panics if there is
    /// no such rule.
    pub fn nft_packets(&self, comment: &str) -> u64 {
        let rules = self.nft_list();
        let tag = format!("comment \"{comment}\"");
        let line = rules
            .lines()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no rule {tag} in {}:\n{rules}", self.name));
        let mut words = line.split_whitespace();
        words
            .by_ref()
            .find(|w| *w == "packets")
            .unwrap_or_else(|| panic!("rule without counter: {line}"));
        words
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad counter in: {line}"))
    }

    /// Wait (bounded retry, at most [`IO_TIMEOUT`]) until the rule with
    /// `comment` has counted `want` packets; panics if it never does or
    /// counts more. For checking that packets were dropped where expected.
    pub fn wait_nft_packets(&self, comment: &str, want: u64) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let n = self.nft_packets(comment);
            assert!(
                n <= want,
                "rule {comment:?} in {} counted {n} packets, expected {want}:\n{}",
                self.name,
                self.nft_list()
            );
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rule {comment:?} in {} counted {n} of {want} packets within {IO_TIMEOUT:?}:\n{}",
                self.name,
                self.nft_list()
            );
        }
    }

    /// Make this namespace a NAT router: `outside` (interface, address) is
    /// the public side, `inside_if` the private side, `inside_host` the
    /// host a [`Nat::FullCone`] forwards to. See [`nat_ruleset`].
    pub fn install_nat(
        &self,
        spec: NatSpec,
        outside: (&str, Ipv4Addr),
        inside_if: &str,
        inside_host: Ipv4Addr,
    ) {
        self.enable_forwarding();
        self.nft(&nat_ruleset(spec, outside, inside_if, inside_host));
    }

    /// Run `f` inside the namespace; see [`in_ns`].
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_ns(&self.name, f)
    }

    /// A UDP socket bound to `addr` inside the namespace, with read and
    /// write timeouts of [`IO_TIMEOUT`].
    pub fn udp_bind(&self, addr: SocketAddr) -> UdpSocket {
        self.in_ns(|| {
            let s = UdpSocket::bind(addr)
                .unwrap_or_else(|e| panic!("bind UDP {addr} in {}: {e}", self.name));
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            s
        })
    }

    /// A TCP connection from inside the namespace, with timeouts of
    /// [`IO_TIMEOUT`] and Nagle off.
    pub fn tcp_connect(&self, addr: SocketAddr) -> TcpStream {
        self.in_ns(|| super::tcp_connect(addr))
    }

    /// Start `turnpike serve` on `config_toml` inside the namespace with
    /// the shared harness ([`TestServer`]: waits for the listening lines,
    /// kills the server on drop, prints its stderr if the test panics).
    pub fn start_turnpike(&self, config_toml: &str) -> TestServer {
        self.in_ns(|| TestServer::start(config_toml))
    }
}

fn check_ifname(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= IFNAME_MAX && !name.contains(['/', ' ']),
        "interface name {name:?} must be 1-{IFNAME_MAX} bytes without '/' or spaces"
    );
}

// --- NAT ------------------------------------------------------------------

/// How a NAT router maps and filters (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Address-and-port-dependent mapping: a new random outside port for
    /// every destination (`masquerade random,fully-random`), and
    /// address-and-port-dependent filtering.
    Symmetric,
    /// Endpoint-independent mapping that keeps the source port (plain
    /// `masquerade`), address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-independent mapping (plain `masquerade`) and
    /// endpoint-independent filtering: inbound UDP to ports 1024-65535 of
    /// the outside address is DNATed to the inside host, same port.
    FullCone,
}

impl Nat {
    /// This NAT with a firewall that lets only TCP leave the inside host.
    pub fn tcp_only(self) -> NatSpec {
        NatSpec {
            nat: self,
            tcp_only: true,
        }
    }
}

/// A NAT behaviour plus firewall options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatSpec {
    pub nat: Nat,
    /// Drop everything but TCP from inside to outside (UDP and ICMP
    /// silently dropped, as a strict corporate firewall does): forces
    /// TURN over TCP.
    pub tcp_only: bool,
}

impl From<Nat> for NatSpec {
    fn from(nat: Nat) -> Self {
        NatSpec {
            nat,
            tcp_only: false,
        }
    }
}

/// Comments of the counted rules of [`nat_ruleset`], for
/// [`Ns::nft_packets`].
pub const RULE_MASQUERADE: &str = "masquerade";
/// New inbound UDP to the router itself, dropped.
pub const RULE_UNSOLICITED: &str = "unsolicited-udp";
/// Inbound UDP DNATed to the inside host ([`Nat::FullCone`]).
pub const RULE_FULL_CONE: &str = "full-cone-dnat";
/// Inbound to the inside network that is neither reply nor DNAT, dropped.
pub const RULE_INBOUND: &str = "inbound-drop";
/// Outbound non-TCP dropped ([`NatSpec::tcp_only`]).
pub const RULE_TCP_ONLY: &str = "tcp-only";

/// The nftables ruleset of a NAT router (table `ip tplab`).
///
/// Besides the mapping of `spec`, new inbound UDP addressed to the router
/// itself is always dropped: otherwise an early inbound datagram (the
/// peer's half of a hole punch) is tracked as a local connection, claims
/// the tuple, and the router picks a different port for the inside host's
/// own outbound datagram to that peer, which breaks endpoint-independent
/// mapping. Inbound packets to the inside network pass only as replies
/// (conntrack) or, for [`Nat::FullCone`], after the DNAT. Rules carry
/// counters, so [`Ns::nft_list`] shows what matched.
pub fn nat_ruleset(
    spec: NatSpec,
    (out_if, out_ip): (&str, Ipv4Addr),
    in_if: &str,
    inside_host: Ipv4Addr,
) -> String {
    check_ifname(out_if);
    check_ifname(in_if);
    let masquerade = match spec.nat {
        Nat::Symmetric => "masquerade random,fully-random",
        Nat::PortRestricted | Nat::FullCone => "masquerade",
    };
    let dnat = match spec.nat {
        Nat::FullCone => format!(
            "iifname \"{out_if}\" ip daddr {out_ip} udp dport 1024-65535 counter dnat to {inside_host} comment \"{RULE_FULL_CONE}\""
        ),
        _ => String::new(),
    };
    let tcp_only = if spec.tcp_only {
        format!(
            "iifname \"{in_if}\" oifname \"{out_if}\" meta l4proto != tcp counter drop comment \"{RULE_TCP_ONLY}\""
        )
    } else {
        String::new()
    };
    format!(
        "table ip tplab {{
  chain nat_pre {{
    type nat hook prerouting priority dstnat; policy accept;
    {dnat}
  }}
  chain nat_post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{out_if}\" counter {masquerade} comment \"{RULE_MASQUERADE}\"
  }}
  chain filter_in {{
    type filter hook input priority filter; policy accept;
    iifname \"{out_if}\" meta l4proto udp ct state new counter drop comment \"{RULE_UNSOLICITED}\"
  }}
  chain filter_fwd {{
    type filter hook forward priority filter; policy accept;
    {tcp_only}
    iifname \"{out_if}\" ct state established,related accept
    iifname \"{out_if}\" ct status dnat accept
    iifname \"{out_if}\" counter drop comment \"{RULE_INBOUND}\"
  }}
}}
"
    )
}

// --- children -------------------------------------------------------------

type SharedChild = Arc<Mutex<Option<Child>>>;

fn kill_shared(child: &SharedChild) {
    if let Some(mut c) = child.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A long-lived process in a namespace (see [`Lab::spawn`]). Killed when
/// dropped, and in any case when its lab is dropped.
pub struct NsChild {
    what: String,
    pid: u32,
    child: SharedChild,
    lines: Mutex<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl NsChild {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Wait (at most `timeout`) for a stdout line for which `pred` holds;
    /// lines before it are skipped. Panics with the child's stderr if it
    /// closes stdout or the time is up: a failure guard, not a delay.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let rx = self.lines.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => continue,
                Err(e) => panic!(
                    "{} (pid {}): no expected stdout line ({e:?}) within {timeout:?}; stderr:\n{}",
                    self.what,
                    self.pid,
                    self.stderr_text()
                ),
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Kill and reap the child now.
    pub fn kill(&self) {
        kill_shared(&self.child);
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) stderr ----\n{}---- end ----",
                self.what,
                self.pid,
                self.stderr_text()
            );
        }
    }
}

// --- the lab --------------------------------------------------------------

/// A set of namespaces and children that lives as long as the value.
pub struct Lab {
    tag: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<SharedChild>>,
}

impl Lab {
    /// A new empty lab for a test, or `None` (after printing a loud
    /// SKIPPED message naming `prefix`) when this machine cannot build
    /// labs. `prefix` is a short test label, e.g. "tsym"; names become
    /// `PREFIX-PID-N-RAND-ROLE`.
    pub fn new(prefix: &str) -> Option<Lab> {
        assert!(
            !prefix.is_empty() && prefix.len() <= 12 && !prefix.contains(['/', ' ']),
            "lab prefix {prefix:?}: 1-12 bytes, no '/' or spaces"
        );
        if let Err(reason) = availability() {
            if std::env::var_os("TURNPIKE_NETNS_REQUIRED").is_some_and(|v| v == "1") {
                panic!("{prefix}: network-namespace lab required but unavailable: {reason}");
            }
            // libtest names each test's thread after the test.
            let thread = std::thread::current();
            print_skip(thread.name().unwrap_or(prefix), reason);
            return None;
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Some(Lab {
            tag: format!("{prefix}-{}-{n}-{:04x}", std::process::id(), random_u16()),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        })
    }

    /// The unique part of every name in this lab.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespaces created so far, full names.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.lock().unwrap().clone()
    }

    /// Create a namespace named `TAG-ROLE` with loopback up.
    pub fn add_ns(&self, role: &str) -> Ns {
        let name = format!("{}-{role}", self.tag);
        // Recorded before creation, so a half-built lab is cleaned up too.
        self.namespaces.lock().unwrap().push(name.clone());
        ip(&["netns", "add", &name]);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between two namespaces: `a_if` in `a`, `b_if` in `b`,
    /// each with an address ("10.1.0.1/24"; `None` for none), both up.
    pub fn link(
        &self,
        a: &Ns,
        a_if: &str,
        a_addr: Option<&str>,
        b: &Ns,
        b_if: &str,
        b_addr: Option<&str>,
    ) {
        check_ifname(a_if);
        check_ifname(b_if);
        a.ip(&[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ]);
        for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            if let Some(addr) = addr {
                ns.add_addr(ifname, addr);
            }
            ns.ip(&["link", "set", ifname, "up"]);
        }
    }

    /// A bridge `br` in `ns`, up, with address `addr` if given.
    pub fn add_bridge(&self, ns: &Ns, br: &str, addr: Option<&str>) {
        check_ifname(br);
        ns.ip(&["link", "add", br, "type", "bridge"]);
        if let Some(addr) = addr {
            ns.add_addr(br, addr);
        }
        ns.ip(&["link", "set", br, "up"]);
    }

    /// A veth from `ns` (interface `ifname`, address `addr`) to a port
    /// `port` of bridge `br` in `bridge_ns`.
    pub fn attach_to_bridge(
        &self,
        ns: &Ns,
        ifname: &str,
        addr: Option<&str>,
        bridge_ns: &Ns,
        br: &str,
        port: &str,
    ) {
        self.link(ns, ifname, addr, bridge_ns, port, None);
        bridge_ns.ip(&["link", "set", port, "master", br]);
    }

    /// Spawn `cmd` (typically from [`Ns::cmd`]) with stdout and stderr
    /// captured and stdin closed. The lab kills it when dropped, as does
    /// dropping the returned handle.
    pub fn spawn(&self, what: &str, cmd: &mut Command) -> NsChild {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LIB_BACKTRACE", "0")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr piped");
        let shared: SharedChild = Arc::new(Mutex::new(Some(child)));
        self.children.lock().unwrap().push(shared.clone());

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    // Keep draining when nobody listens, so the child
                    // never blocks on a full pipe.
                    Ok(l) => drop(tx.send(l)),
                    Err(_) => break,
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
        }
        NsChild {
            what: what.to_string(),
            pid,
            child: shared,
            lines: Mutex::new(rx),
            stderr,
        }
    }

    // --- topology --------------------------------------------------------

    /// The "Internet": namespace `pub` with bridge `br0` holding
    /// 203.0.113.1/24. No routes to private ranges exist anywhere on it.
    pub fn internet(&self) -> Internet {
        let ns = self.add_ns("pub");
        let cidr = format!("{PUBLIC_GATEWAY}/{PUBLIC_PREFIX_LEN}");
        self.add_bridge(&ns, Internet::BRIDGE, Some(&cidr));
        Internet { ns }
    }

    /// A NAT site `n` (1..=200) on `net`: router namespace `rN` with
    /// outside `out` = 203.0.113.(10+n)/24 (bridge port `rN` in `pub`),
    /// default route via 203.0.113.1, inside `in` = 10.N.0.1/24; client
    /// namespace `cN` with `eth0` = 10.N.0.2/24, default route via the
    /// router. The router runs `nat`.
    pub fn nat_site(&self, net: &Internet, n: u8, nat: impl Into<NatSpec>) -> Site {
        assert!((1..=200).contains(&n), "site number 1-200");
        let spec = nat.into();
        let outside_ip = Ipv4Addr::new(203, 0, 113, 10 + n);
        let router_inside_ip = Ipv4Addr::new(10, n, 0, 1);
        let client_ip = Ipv4Addr::new(10, n, 0, 2);
        let router = self.add_ns(&format!("r{n}"));
        let client = self.add_ns(&format!("c{n}"));
        self.attach_to_bridge(
            &router,
            Site::OUTSIDE_IF,
            Some(&format!("{outside_ip}/{PUBLIC_PREFIX_LEN}")),
            &net.ns,
            Internet::BRIDGE,
            &format!("r{n}"),
        );
        router.default_route(PUBLIC_GATEWAY);
        self.link(
            &router,
            Site::INSIDE_IF,
            Some(&format!("{router_inside_ip}/24")),
            &client,
            Site::CLIENT_IF,
            Some(&format!("{client_ip}/24")),
        );
        client.default_route(router_inside_ip);
        router.install_nat(
            spec,
            (Site::OUTSIDE_IF, outside_ip),
            Site::INSIDE_IF,
            client_ip,
        );
        Site {
            router,
            client,
            nat: spec,
            outside_ip,
            router_inside_ip,
            client_ip,
        }
    }

    /// The usual TURN lab: the Internet plus site 1 (`a`, 10.1.0.0/24
    /// behind 203.0.113.11) and site 2 (`b`, 10.2.0.0/24 behind
    /// 203.0.113.12).
    pub fn two_nats(&self, a: impl Into<NatSpec>, b: impl Into<NatSpec>) -> TwoNats {
        let internet = self.internet();
        let a = self.nat_site(&internet, 1, a);
        let b = self.nat_site(&internet, 2, b);
        TwoNats { internet, a, b }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            kill_shared(&c);
        }
        let names = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names.iter().rev() {
            // Never panic here (we may be unwinding already). Deleting
            // the handle frees the namespace, its veths (both ends) and
            // its nftables tables once no process or socket holds it.
            match Command::new("ip")
                .args(["netns", "del", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) if !Path::new(NETNS_DIR).join(name).exists() => drop(o),
                Ok(o) => eprintln!(
                    "netns lab: ip netns del {name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("netns lab: ip netns del {name}: {e}"),
            }
        }
    }
}

/// The public namespace of [`Lab::internet`].
pub struct Internet {
    pub ns: Ns,
}

impl Internet {
    /// The bridge every public interface hangs off.
    pub const BRIDGE: &'static str = "br0";

    /// Another address of the public namespace (e.g. 203.0.113.2), so
    /// one namespace can play several Internet hosts.
    pub fn add_ip(&self, ip: Ipv4Addr) {
        self.ns
            .add_addr(Self::BRIDGE, &format!("{ip}/{PUBLIC_PREFIX_LEN}"));
    }

    /// A new namespace `role` on the Internet with address `ip`/24 on
    /// `eth0` (bridge port `port`, at most 15 bytes) and a default route
    /// via 203.0.113.1: a public host with its own stack.
    pub fn add_host(&self, lab: &Lab, role: &str, port: &str, ip: Ipv4Addr) -> Ns {
        let ns = lab.add_ns(role);
        lab.attach_to_bridge(
            &ns,
            "eth0",
            Some(&format!("{ip}/{PUBLIC_PREFIX_LEN}")),
            &self.ns,
            Self::BRIDGE,
            port,
        );
        ns.default_route(PUBLIC_GATEWAY);
        ns
    }
}

/// A private network behind a NAT router (see [`Lab::nat_site`]).
pub struct Site {
    pub router: Ns,
    pub client: Ns,
    pub nat: NatSpec,
    /// The router's public address (what peers see).
    pub outside_ip: Ipv4Addr,
    pub router_inside_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
}

impl Site {
    pub const OUTSIDE_IF: &'static str = "out";
    pub const INSIDE_IF: &'static str = "in";
    pub const CLIENT_IF: &'static str = "eth0";
}

/// Two NAT sites on one Internet ([`Lab::two_nats`]).
pub struct TwoNats {
    pub internet: Internet,
    pub a: Site,
    pub b: Site,
}

/// Where a namespace handle lives.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}
