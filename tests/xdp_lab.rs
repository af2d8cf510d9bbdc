//! Issue 15: the XDP fast path, on the built binary, in a network-namespace
//! lab the test builds itself: a client namespace and a peer namespace,
//! each joined to the server's namespace by a veth pair; the server runs
//! with `[fastpath] mode = "xdp"` on its two veths (native XDP; client and
//! peer behind different interfaces, so the program redirects). The
//! receiving ends carry an XDP_PASS program (veth delivers XDP_TX and
//! redirected frames only to a peer with XDP), and every end has TX
//! checksum offload off (else the program would see partial UDP
//! checksums).
//!
//! - The fast path relays exactly what the user-space path relays (the
//!   same exchange against the same server with `mode = "off"`), byte for
//!   byte, both directions, IPv4 and IPv6; its counters show the datagrams
//!   went through the program, and the relayed totals and the admin
//!   sessions count both paths.
//! - Expired, deleted, never-permitted and policy-denied traffic is never
//!   relayed, and the program's counters do not move for it.
//! - Without the capabilities (or the program) `auto` runs on the
//!   user-space path and `xdp` refuses to start, naming what is missing.
//!
//! Root only, like the other namespace labs (tests/netns_lab.rs): without
//! root each lab test prints a loud SKIPPED banner, and fails instead when
//! TURNPIKE_NETNS_REQUIRED=1 (as scripts/test.sh sets as root). No timed
//! assertions: every wait is for an event, bounded by a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::netns::{Lab, Ns};
use common::ops::{JsonBody, Scrape, get_auth, scrape};
use common::turn::{Incoming, TurnClient};
use common::{IO_TIMEOUT, START_TIMEOUT, TestServer, run_bounded, turnpike_bin};
use turnpike_proto::client::{AllocateOptions, Credentials};
use turnpike_proto::wire::attr;

const ADMIN_KEY: &str = "xdp-lab-admin-key-0123456789";
const SECRET: &str = "xdp-lab-secret";
const CH: u16 = 0x4000;

/// The addresses of the lab (server side: .1 / ::1).
struct Net {
    listener: SocketAddr,
    client_ip: &'static str,
    /// Permitted peer, with a channel.
    peer: SocketAddr,
    /// Never permitted.
    stranger: SocketAddr,
    /// Refused by `deny_peers`.
    denied: SocketAddr,
}

fn v4() -> Net {
    Net {
        listener: "10.10.1.1:3478".parse().unwrap(),
        client_ip: "10.10.1.2",
        peer: "10.10.2.2:7000".parse().unwrap(),
        stranger: "10.10.2.3:7000".parse().unwrap(),
        denied: "10.10.2.4:7000".parse().unwrap(),
    }
}

fn v6() -> Net {
    Net {
        listener: "[fd00:1::1]:3478".parse().unwrap(),
        client_ip: "fd00:1::2",
        peer: "[fd00:2::2]:7000".parse().unwrap(),
        stranger: "[fd00:2::3]:7000".parse().unwrap(),
        denied: "[fd00:2::4]:7000".parse().unwrap(),
    }
}

/// An XDP_PASS program for the receiving ends, compiled once per run.
fn pass_program() -> &'static PathBuf {
    static OBJ: OnceLock<PathBuf> = OnceLock::new();
    OBJ.get_or_init(|| {
        // Cargo's scratch directory for integration tests (under target/).
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xdp-lab");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("pass.bpf.c");
        std::fs::write(
            &src,
            "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
             SEC(\"xdp\") int pass(struct xdp_md *ctx) { return XDP_PASS; }\n\
             char LICENSE[] SEC(\"license\") = \"GPL\";\n",
        )
        .unwrap();
        let obj = dir.join("pass.bpf.o");
        let arch = String::from_utf8(
            Command::new("gcc")
                .arg("-print-multiarch")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .unwrap();
        let (status, out, err) = run_bounded(
            Command::new("clang")
                .args(["-O2", "-g", "-target", "bpf"])
                .arg(format!("-I/usr/include/{}", arch.trim()))
                .arg("-c")
                .arg(&src)
                .arg("-o")
                .arg(&obj),
            Duration::from_secs(60),
        );
        assert!(
            status.success(),
            "clang (apt-get install clang libbpf-dev) failed: {out}{err}"
        );
        obj
    })
}

/// The lab: server, client and peer namespaces.
struct XdpLab {
    // Dropped last: tears the namespaces (and their veths) down.
    _lab: Lab,
    srv: Ns,
    cli: Ns,
    peer: Ns,
}

fn build_lab(prefix: &str) -> Option<XdpLab> {
    let lab = Lab::new(prefix)?;
    // Fails, not skips: the test command installs clang and libbpf-dev.
    if !turnpike_sys::xdp::BUILT {
        panic!("this build has no XDP program: install clang and libbpf-dev and rebuild");
    }
    let srv = lab.add_ns("srv");
    let cli = lab.add_ns("cli");
    let peer = lab.add_ns("peer");
    lab.link(
        &srv,
        "s-c",
        Some("10.10.1.1/24"),
        &cli,
        "c-s",
        Some("10.10.1.2/24"),
    );
    lab.link(
        &srv,
        "s-p",
        Some("10.10.2.1/24"),
        &peer,
        "p-s",
        Some("10.10.2.2/24"),
    );
    peer.add_addr("p-s", "10.10.2.3/24");
    peer.add_addr("p-s", "10.10.2.4/24");
    for (ns, dev, addrs) in [
        (&srv, "s-c", &["fd00:1::1/64"][..]),
        (&cli, "c-s", &["fd00:1::2/64"][..]),
        (&srv, "s-p", &["fd00:2::1/64"][..]),
        (
            &peer,
            "p-s",
            &["fd00:2::2/64", "fd00:2::3/64", "fd00:2::4/64"][..],
        ),
    ] {
        for a in addrs {
            ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"]);
        }
        ns.run("ethtool", &["-K", dev, "tx", "off"]);
    }
    let obj = pass_program().to_str().unwrap().to_string();
    for (ns, dev) in [(&cli, "c-s"), (&peer, "p-s")] {
        ns.ip(&[
            "link", "set", "dev", dev, "xdpdrv", "obj", &obj, "sec", "xdp",
        ]);
    }
    Some(XdpLab {
        _lab: lab,
        srv,
        cli,
        peer,
    })
}

fn config(mode: &str, extra_policy: &str) -> String {
    format!(
        r#"
[server]
realm = "xdp.test"
threads = 1
[[listen]]
transport = "udp"
addr = "10.10.1.1:3478"
[[listen]]
transport = "udp"
addr = "[fd00:1::1]:3478"
[relay]
bind_ip = "10.10.2.1"
bind_ip6 = "fd00:2::1"
ports = "40000-40999"
[auth]
secrets = ["{SECRET}"]
users = {{ alice = "wonderland" }}
[policy]
allow_peers = ["10.10.2.0/24", "fd00:2::/64"]
deny_peers = ["10.10.2.4/32", "fd00:2::4/128"]
max_allocations_per_user = 100
{extra_policy}
[http]
addr = "127.0.0.1:0"
admin_keys = ["{ADMIN_KEY}"]
[fastpath]
mode = "{mode}"
interfaces = ["s-c", "s-p"]
"#
    )
}

fn alice() -> Credentials {
    Credentials::new("alice", "wonderland")
}

fn client(lab: &XdpLab, net: &Net) -> TurnClient {
    let sock = lab
        .cli
        .udp_bind(SocketAddr::new(net.client_ip.parse().unwrap(), 0));
    TurnClient::udp_on(sock, net.listener)
}

/// Allocate a relay of `net`'s peers' family.
fn allocate(c: &mut TurnClient, creds: &Credentials, net: &Net) -> SocketAddr {
    let opts = AllocateOptions {
        family: Some(if net.peer.is_ipv6() {
            attr::FAMILY_IPV6
        } else {
            attr::FAMILY_IPV4
        }),
        ..Default::default()
    };
    c.allocate(creds, &opts).relayed
}

fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "{:?}: no datagram within {IO_TIMEOUT:?}: {e}",
            sock.local_addr()
        )
    });
    buf.truncate(n);
    (buf, from)
}

/// A payload of `len` bytes that differs per message and direction.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What one side observed: (what arrived, from where, on which channel).
type Transcript = Vec<(Vec<u8>, SocketAddr, Option<u16>)>;

const SIZES: [usize; 12] = [0, 1, 2, 3, 4, 5, 7, 8, 100, 333, 1000, 1400];

/// The exchange: a warm-up round trip, then one round trip per size.
/// Returns what the peer and the client received, and the payload bytes
/// each way.
fn exchange(c: &mut TurnClient, peer: &UdpSocket, relayed: SocketAddr) -> (Transcript, u64, u64) {
    let mut seen = Transcript::new();
    let (mut up, mut down) = (0u64, 0u64);
    let sizes = std::iter::once(9).chain(SIZES);
    for (i, len) in sizes.enumerate() {
        let out = payload(len, i as u8);
        c.send_channel_data(CH, &out);
        let (got, from) = recv(peer);
        assert_eq!(got, out, "client → peer, {len} bytes");
        assert_eq!(from, relayed, "the peer sees the relayed address");
        seen.push((got, from, None));
        up += len as u64;
        let back = payload(len, 100 + i as u8);
        peer.send_to(&back, relayed).unwrap();
        match c.recv() {
            Incoming::Channel {
                number,
                data,
                wire_len,
            } => {
                assert_eq!(data, back, "peer → client, {len} bytes");
                assert_eq!(wire_len, 4 + len, "unpadded over UDP");
                seen.push((data, c.server_addr(), Some(number)));
            }
            other => panic!("expected ChannelData, got {other:?}"),
        }
        down += len as u64;
    }
    (seen, up, down)
}

fn counter(s: &Scrape, name: &str, dir: &str) -> u64 {
    s.value_or_zero(name, &[("direction", dir)]) as u64
}

/// The exchange of [`exchange`] for one family with `mode`; returns the
/// transcript, the scrape after it, and the session's JSON.
/// The exchange between a client of `client_net`'s family and a peer of
/// `peer_net`'s (on an allocation of that family: 4↔6 when they differ).
fn run(
    lab: &XdpLab,
    server: &TestServer,
    client_net: &Net,
    peer_net: &Net,
) -> (Transcript, Scrape, serde_json::Value, u64, u64) {
    let peer = lab.peer.udp_bind(peer_net.peer);
    let mut c = client(lab, client_net);
    let relayed = allocate(&mut c, &alice(), peer_net);
    assert_eq!(relayed.is_ipv6(), peer_net.peer.is_ipv6());
    c.channel_bind(CH, peer_net.peer).unwrap();
    let (t, up, down) = exchange(&mut c, &peer, relayed);
    let http = server.http_addr();
    let s = lab.srv.in_ns(|| scrape(http));
    let sessions = lab
        .srv
        .in_ns(|| get_auth(http, "/api/v1/sessions", ADMIN_KEY))
        .json();
    let me = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["client"] == c.local_addr().to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no session for {} in {sessions}", c.local_addr()));
    let _ = c.refresh(Some(0));
    (t, s, me, up, down)
}

#[test]
fn the_fast_path_relays_what_user_space_relays_byte_for_byte_ipv4_ipv6_and_4to6() {
    let Some(lab) = build_lab("xdpeq") else {
        return;
    };
    // (client, peer and allocation) families; whether the peer's MAC is
    // still to be learned (the program learns it from the peer's first
    // datagram, so the first one to it goes through user space).
    let cases = [
        (v4(), v4(), true),
        (v6(), v6(), true),
        (v4(), v6(), false),
        (v6(), v4(), false),
    ];
    // User space alone, then the same against the fast path.
    let user = lab.srv.start_turnpike(&config("off", ""));
    let mut reference = Vec::new();
    for (cn, pn, _) in &cases {
        let (t, s, _, up, down) = run(&lab, &user, cn, pn);
        assert_eq!(counter(&s, "turnpike_fastpath_packets_total", "to_peer"), 0);
        reference.push((t, up, down));
    }
    drop(user);

    let fast = lab.srv.start_turnpike(&config("xdp", ""));
    fast.wait_for_line(&["XDP fast path attached", "s-c", "driver"], START_TIMEOUT);
    fast.wait_for_line(&["XDP fast path attached", "s-p", "driver"], START_TIMEOUT);
    let n = SIZES.len() as u64;
    let mut expect_fast = (0u64, 0u64);
    for (k, ((cn, pn, learn_peer), (ref_t, ref_up, ref_down))) in
        cases.iter().zip(&reference).enumerate()
    {
        let case = format!("client {} peer {}", cn.listener, pn.peer);
        let (t, s, session, up, down) = run(&lab, &fast, cn, pn);
        // Byte for byte, from the same addresses, on the same channel
        // (the relayed port may differ between the two servers).
        assert_eq!(t.len(), ref_t.len());
        for (a, b) in t.iter().zip(ref_t) {
            assert_eq!((&a.0, a.2), (&b.0, b.2), "{case}");
            assert_eq!(a.1.ip(), b.1.ip());
        }
        assert_eq!((up, down), (*ref_up, *ref_down));
        // The warm-up's first datagram teaches the program the client's
        // MAC, and goes through user space while the peer's is unknown;
        // the peer's answer teaches it the peer's and is already relayed
        // by the program; every later datagram, both ways, too.
        expect_fast.0 += if *learn_peer { n } else { n + 1 };
        expect_fast.1 += n + 1;
        let fast_peer = counter(&s, "turnpike_fastpath_packets_total", "to_peer");
        let fast_client = counter(&s, "turnpike_fastpath_packets_total", "to_client");
        assert_eq!((fast_peer, fast_client), expect_fast, "{case}");
        // Relayed totals count both paths: every datagram sent, once.
        let sent = n + 1;
        let done = k as u64 + 1;
        assert_eq!(
            counter(&s, "turnpike_relayed_packets_total", "to_peer"),
            sent * done
        );
        assert_eq!(
            counter(&s, "turnpike_relayed_packets_total", "to_client"),
            sent * done
        );
        // The admin session shows both paths' bytes.
        assert_eq!(session["bytes_to_peer"], up, "{session}");
        assert_eq!(session["bytes_from_peer"], down, "{session}");
        assert_eq!(session["packets_to_peer"], sent, "{session}");
        assert_eq!(session["packets_from_peer"], sent, "{session}");
    }
    let all_bytes: u64 = reference.iter().map(|r| r.1).sum();
    let all_back: u64 = reference.iter().map(|r| r.2).sum();
    let s = lab.srv.in_ns(|| scrape(fast.http_addr()));
    assert_eq!(
        counter(&s, "turnpike_relayed_bytes_total", "to_peer"),
        all_bytes
    );
    assert_eq!(
        counter(&s, "turnpike_relayed_bytes_total", "to_client"),
        all_back
    );
    // The "allocation ended" lines (Refresh 0 ended both) count both paths.
    assert_eq!(
        common::logged_traffic(&fast.stderr_text()),
        (all_bytes, all_back)
    );
}

/// Expect the next datagram on `sock` to be `marker` (anything else that
/// arrived first is a datagram that must not have been relayed).
fn expect_marker(sock: &UdpSocket, marker: &[u8]) {
    let (got, from) = recv(sock);
    assert_eq!(
        got,
        marker,
        "something other than the marker arrived first (from {from}): {:?}",
        String::from_utf8_lossy(&got)
    );
}

fn expect_marker_at_client(c: &mut TurnClient, marker: &[u8]) {
    match c.recv() {
        Incoming::Channel { data, .. } => assert_eq!(
            data,
            marker,
            "something other than the marker reached the client: {:?}",
            String::from_utf8_lossy(&data)
        ),
        other => panic!("expected the marker as ChannelData, got {other:?}"),
    }
}

fn fast_counts(lab: &XdpLab, server: &TestServer) -> (u64, u64) {
    let s = lab.srv.in_ns(|| scrape(server.http_addr()));
    (
        counter(&s, "turnpike_fastpath_packets_total", "to_peer"),
        counter(&s, "turnpike_fastpath_packets_total", "to_client"),
    )
}

/// A REST credential that expires `secs` from now (so does an allocation
/// made with it).
fn short_credential(secs: u64) -> Credentials {
    use base64::Engine;
    use hmac::Mac;
    let expiry = common::ops::unix_now() + secs;
    let user = format!("{expiry}:shortlived");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(user.as_bytes());
    let pass = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Credentials::new(&user, &pass)
}

#[test]
fn expired_deleted_never_permitted_and_denied_traffic_is_never_relayed() {
    let Some(lab) = build_lab("xdpneg") else {
        return;
    };
    let server = lab.srv.start_turnpike(&config("xdp", ""));
    server.wait_for_line(&["XDP fast path attached", "s-p"], START_TIMEOUT);
    let net = &v4();
    let peer = lab.peer.udp_bind(net.peer);
    let stranger = lab.peer.udp_bind(net.stranger);
    let denied = lab.peer.udp_bind(net.denied);

    // The reference allocation: fast path warmed up both ways.
    let mut c = client(&lab, net);
    let relayed = allocate(&mut c, &alice(), net);
    c.channel_bind(CH, net.peer).unwrap();
    c.send_channel_data(CH, b"warm-up");
    expect_marker(&peer, b"warm-up");
    peer.send_to(b"warm-up-back", relayed).unwrap();
    expect_marker_at_client(&mut c, b"warm-up-back");
    c.send_channel_data(CH, b"fast");
    expect_marker(&peer, b"fast");
    let base = fast_counts(&lab, &server);
    assert_eq!(
        base,
        (1, 1),
        "the reference channel runs through the program"
    );

    // Never permitted: a stranger's datagrams to the relay.
    for _ in 0..3 {
        stranger.send_to(b"stranger", relayed).unwrap();
    }
    peer.send_to(b"marker-1", relayed).unwrap();
    expect_marker_at_client(&mut c, b"marker-1");

    // Policy-denied: neither a channel nor a permission is granted, and
    // nothing the denied peer sends gets through.
    assert_eq!(c.channel_bind(CH + 1, net.denied), Err(403));
    assert_eq!(c.create_permission(&[net.denied]), Err(403));
    denied.send_to(b"denied", relayed).unwrap();
    c.send_channel_data(CH + 1, b"to-denied");
    peer.send_to(b"marker-2", relayed).unwrap();
    expect_marker_at_client(&mut c, b"marker-2");
    // A Send indication takes the user-space path: once it arrived, user
    // space has handled the ChannelData sent before it.
    c.send_indication(net.peer, b"marker-3");
    expect_marker(&peer, b"marker-3");
    denied.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        denied.recv_from(&mut buf).is_err(),
        "the denied peer received something"
    );
    assert_eq!(
        fast_counts(&lab, &server),
        (base.0, base.1 + 2),
        "only the two markers went through the program"
    );

    // Deleted: an allocation relaying through the program, then Refresh 0.
    let mut d = client(&lab, net);
    let d_relayed = allocate(&mut d, &alice(), net);
    d.channel_bind(CH, net.peer).unwrap();
    d.send_channel_data(CH, b"d-warm");
    expect_marker(&peer, b"d-warm");
    peer.send_to(b"d-back", d_relayed).unwrap();
    expect_marker_at_client(&mut d, b"d-back");
    d.send_channel_data(CH, b"d-fast");
    expect_marker(&peer, b"d-fast");
    let before = fast_counts(&lab, &server);
    d.refresh(Some(0)).unwrap();
    server.wait_for_line(&["allocation ended", "reason=\"deleted\""], IO_TIMEOUT);
    d.send_channel_data(CH, b"after-delete");
    // Had the program still held the route, it would have relayed the
    // datagram at once, ahead of this user-space marker.
    c.send_indication(net.peer, b"marker-4");
    expect_marker(&peer, b"marker-4");
    assert_eq!(fast_counts(&lab, &server), before);

    // Expired: an allocation whose credential (so whose lifetime) ends in
    // three seconds, relaying through the program until then.
    let mut e = client(&lab, net);
    let e_relayed = allocate(&mut e, &short_credential(3), net);
    e.channel_bind(CH, net.peer).unwrap();
    e.send_channel_data(CH, b"e-warm");
    expect_marker(&peer, b"e-warm");
    peer.send_to(b"e-back", e_relayed).unwrap();
    expect_marker_at_client(&mut e, b"e-back");
    e.send_channel_data(CH, b"e-fast");
    expect_marker(&peer, b"e-fast");
    let before = fast_counts(&lab, &server);
    server.wait_for_line(
        &["allocation ended", "reason=\"expired\""],
        Duration::from_secs(15),
    );
    e.send_channel_data(CH, b"after-expiry");
    peer.send_to(b"after-expiry-back", e_relayed).unwrap();
    c.send_indication(net.peer, b"marker-5");
    expect_marker(&peer, b"marker-5");
    assert_eq!(fast_counts(&lab, &server), before);

    // Counters add up: every datagram the peer and the clients received
    // was counted once, on one path.
    let s = lab.srv.in_ns(|| scrape(server.http_addr()));
    let to_peer = counter(&s, "turnpike_relayed_packets_total", "to_peer");
    let to_client = counter(&s, "turnpike_relayed_packets_total", "to_client");
    // to the peer: warm-up, fast, marker-3, d-warm, d-fast, marker-4,
    // e-warm, e-fast, marker-5; to the clients: warm-up-back, marker-1,
    // marker-2, d-back, e-back.
    assert_eq!((to_peer, to_client), (9, 5));
}

/// `auto` without what it needs runs on the user-space path with one
/// warning; `xdp` refuses to start and says what is missing. Run without
/// CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (dropped from the bounding set
/// with setpriv when the test runs as root; a non-root run has none), or,
/// in a build without the program, without it. Needs neither root nor a
/// lab: it runs everywhere.
#[test]
fn without_capabilities_auto_runs_and_xdp_refuses() {
    let cfg = |mode: &str| {
        format!(
            "[server]\nrealm = \"xdp.test\"\nthreads = 1\n\
             [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
             [auth]\nsecrets = [\"s\"]\n\
             [http]\naddr = \"127.0.0.1:0\"\n\
             [fastpath]\nmode = \"{mode}\"\ninterfaces = [\"lo\"]\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let command = |mode: &str| {
        let path = dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, cfg(mode)).unwrap();
        let mut c = if turnpike_sys::process::euid() == 0 {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon",
                "--inh-caps=-all",
                "--",
            ])
            .arg(turnpike_bin());
            c
        } else {
            Command::new(turnpike_bin())
        };
        c.arg("serve").arg("--config").arg(&path);
        c
    };

    let (status, _out, err) = run_bounded(&mut command("xdp"), START_TIMEOUT);
    assert!(!status.success(), "mode = \"xdp\" started without CAP_BPF");
    // What is missing: the program (a build without clang), else the
    // capabilities.
    let missing = if turnpike_sys::xdp::BUILT {
        "CAP_BPF"
    } else {
        "clang libbpf-dev"
    };
    assert!(
        err.contains("fastpath.mode = \"xdp\"") && err.contains(missing),
        "the refusal names the key and {missing}: {err}"
    );

    let mut child = command("auto")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It listens: the "listening http" line comes after the fast path
    // was tried.
    let mut stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    while !String::from_utf8_lossy(&out).contains("listening http") {
        assert!(Instant::now() < deadline, "auto did not start: {out:?}");
        match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "mode = \"auto\" exited without CAP_BPF"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        err.matches("running without the XDP fast path").count(),
        1,
        "one warning: {err}"
    );
}

/// Whether an XDP program is attached to `dev` in `ns`.
fn xdp_attached(ns: &Ns, dev: &str) -> bool {
    ns.ip(&["link", "show", "dev", dev]).contains("prog/xdp")
}

fn reload(server: &TestServer, toml: &str, n: usize) {
    std::fs::write(server.config_path(), toml).unwrap();
    turnpike_sys::process::kill(server.pid() as i32, libc::SIGHUP).unwrap();
    server.wait_for_stderr("the reload", IO_TIMEOUT, |t| {
        t.matches("reloaded on SIGHUP").count() >= n
    });
}

/// A reload that turns the fast path off detaches the program and tells
/// the shard, which relays on in user space; one that turns it on again
/// attaches it and mirrors the live channels. A SIGKILLed server leaves
/// nothing attached (nothing is pinned: the links die with the process).
#[test]
fn reload_detaches_and_reattaches_and_sigkill_leaves_nothing_attached() {
    let Some(lab) = build_lab("xdprel") else {
        return;
    };
    let on = config("xdp", "");
    let server = lab.srv.start_turnpike(&on);
    server.wait_for_line(&["XDP fast path attached", "s-p"], START_TIMEOUT);
    assert!(xdp_attached(&lab.srv, "s-c") && xdp_attached(&lab.srv, "s-p"));
    let net = &v4();
    let peer = lab.peer.udp_bind(net.peer);
    let mut c = client(&lab, net);
    let relayed = allocate(&mut c, &alice(), net);
    c.channel_bind(CH, net.peer).unwrap();
    let round = |c: &mut TurnClient, tag: &str| {
        c.send_channel_data(CH, tag.as_bytes());
        expect_marker(&peer, tag.as_bytes());
        let back = format!("{tag}-back");
        peer.send_to(back.as_bytes(), relayed).unwrap();
        expect_marker_at_client(c, back.as_bytes());
    };
    round(&mut c, "warm");
    round(&mut c, "fast");
    let fast = fast_counts(&lab, &server);
    assert_eq!(fast, (1, 2));

    reload(&server, &config("off", ""), 1);
    server.wait_for_line(&["XDP fast path detached"], IO_TIMEOUT);
    assert!(!xdp_attached(&lab.srv, "s-c") && !xdp_attached(&lab.srv, "s-p"));
    round(&mut c, "user");
    // The totals keep what the detached program relayed.
    assert_eq!(fast_counts(&lab, &server), fast);
    let s = lab.srv.in_ns(|| scrape(server.http_addr()));
    assert_eq!(counter(&s, "turnpike_relayed_packets_total", "to_peer"), 3);

    reload(&server, &on, 2);
    common::ops::wait_until("the program attached again", IO_TIMEOUT, || {
        (xdp_attached(&lab.srv, "s-c") && xdp_attached(&lab.srv, "s-p")).then_some(())
    });
    // The live channel was mirrored again; the new program learns the
    // MACs from the first datagram each way.
    round(&mut c, "relearn");
    round(&mut c, "fast-again");
    let after = fast_counts(&lab, &server);
    assert_eq!(after, (fast.0 + 1, fast.1 + 2));

    // Nothing is pinned: once the process is gone (SIGKILL: no clean-up
    // of its own), the links and the program itself are gone.
    let prog_id = xdp_prog_id(&lab.srv, "s-c");
    assert!(bpftool_knows(&prog_id), "program {prog_id} loaded");
    turnpike_sys::process::kill(server.pid() as i32, libc::SIGKILL).unwrap();
    common::ops::wait_until("the links to go with the process", IO_TIMEOUT, || {
        (!xdp_attached(&lab.srv, "s-c") && !xdp_attached(&lab.srv, "s-p")).then_some(())
    });
    common::ops::wait_until("the program to be unloaded", IO_TIMEOUT, || {
        (!bpftool_knows(&prog_id)).then_some(())
    });
}

/// The id of the XDP program attached to `dev` (`ip link` shows it).
fn xdp_prog_id(ns: &Ns, dev: &str) -> String {
    let out = ns.ip(&["-d", "link", "show", "dev", dev]);
    let mut words = out.split_whitespace().skip_while(|w| *w != "prog/xdp");
    words
        .find(|w| *w == "id")
        .and_then(|_| words.next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no XDP program id in:\n{out}"))
}

/// Whether the kernel still holds BPF program `id` (it is unloaded when
/// nothing holds it: no pin, no link, no descriptor).
fn bpftool_knows(id: &str) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An interface without native XDP (loopback) gets the program in
/// generic mode, and the log names it.
#[test]
fn an_interface_without_native_xdp_falls_back_to_generic_mode_by_name() {
    let Some(lab) = build_lab("xdpgen") else {
        return;
    };
    let toml = config("xdp", "").replace(
        "interfaces = [\"s-c\", \"s-p\"]",
        "interfaces = [\"s-c\", \"s-p\", \"lo\"]",
    );
    let server = lab.srv.start_turnpike(&toml);
    let line = server.wait_for_line(&["generic mode", "lo"], START_TIMEOUT);
    assert!(line.contains("WARN"), "{line}");
    server.wait_for_line(&["XDP fast path attached", "s-c", "driver"], START_TIMEOUT);
    assert!(xdp_attached(&lab.srv, "lo"));
}

/// ChannelData the user-space path would refuse, or that the program is
/// not sure of, is left to user space (XDP_PASS), which decides as it
/// always does: a padded message (legal over UDP) is relayed there, the
/// rest is dropped; the bystander channel keeps running through the
/// program.
#[test]
fn malformed_and_padded_channel_data_is_left_to_user_space() {
    let Some(lab) = build_lab("xdpbad") else {
        return;
    };
    let server = lab.srv.start_turnpike(&config("xdp", ""));
    server.wait_for_line(&["XDP fast path attached", "s-p"], START_TIMEOUT);
    let net = &v4();
    let peer = lab.peer.udp_bind(net.peer);
    let mut c = client(&lab, net);
    let relayed = allocate(&mut c, &alice(), net);
    c.channel_bind(CH, net.peer).unwrap();
    c.send_channel_data(CH, b"warm");
    expect_marker(&peer, b"warm");
    peer.send_to(b"warm-back", relayed).unwrap();
    expect_marker_at_client(&mut c, b"warm-back");
    let base = fast_counts(&lab, &server);

    let ch = CH.to_be_bytes();
    let hostile: [Vec<u8>; 6] = [
        // Declares 10 bytes, carries 5.
        [&ch[..], &[0, 10], b"abcde"].concat(),
        // More than padding after 3 bytes.
        [&ch[..], &[0, 3], b"abcdefghi"].concat(),
        // A header cut short.
        ch.to_vec(),
        // An unbound channel.
        [&[0x40, 0x07][..], &[0, 3], b"xyz"].concat(),
        // Above RFC 8656's range (0x5000).
        [&[0x50, 0x00][..], &[0, 3], b"xyz"].concat(),
        // Padded to four (legal over UDP): user space relays its 3 bytes.
        [&ch[..], &[0, 3], b"pad\0"].concat(),
    ];
    for h in &hostile {
        c.send_raw(h);
    }
    let (got, _) = recv(&peer);
    assert_eq!(got, b"pad", "only the padded message is relayed, unpadded");
    c.send_indication(net.peer, b"marker");
    expect_marker(&peer, b"marker");
    assert_eq!(
        fast_counts(&lab, &server),
        base,
        "the program relayed none of them"
    );
    // The bystander channel still runs through the program.
    c.send_channel_data(CH, b"still-fast");
    expect_marker(&peer, b"still-fast");
    assert_eq!(fast_counts(&lab, &server), (base.0 + 1, base.1));
    // Peer → client grows by the 4-byte header: a datagram that would
    // then exceed the interfaces' MTU (1500) is left to user space.
    let fits = vec![7u8; 1500 - 20 - 8 - 4];
    peer.send_to(&fits, relayed).unwrap();
    expect_marker_at_client(&mut c, &fits);
    assert_eq!(fast_counts(&lab, &server), (base.0 + 1, base.1 + 1));
    let too_big = vec![8u8; fits.len() + 1];
    peer.send_to(&too_big, relayed).unwrap();
    c.send_indication(net.peer, b"marker-2");
    expect_marker(&peer, b"marker-2");
    assert_eq!(
        fast_counts(&lab, &server),
        (base.0 + 1, base.1 + 1),
        "the program relayed a datagram past the MTU"
    );
    let s = lab.srv.in_ns(|| scrape(server.http_addr()));
    assert!(
        s.value_or_zero("turnpike_dropped_packets_total", &[("reason", "malformed")]) >= 3.0,
        "user space dropped the malformed ones"
    );
}

/// Client and peer behind the same server interface: the program sends
/// each datagram back out of the interface it came in on (XDP_TX), both
/// ways, with the listener and the relay on one address.
#[test]
fn client_and_peer_on_one_interface_are_served_with_xdp_tx() {
    let Some(lab) = build_lab("xdptx") else {
        return;
    };
    lab.cli.add_addr("c-s", "10.10.1.3/24");
    let toml = config("xdp", "")
        .replace("bind_ip = \"10.10.2.1\"", "bind_ip = \"10.10.1.1\"")
        .replace(
            "allow_peers = [\"10.10.2.0/24\", \"fd00:2::/64\"]",
            "allow_peers = [\"10.10.1.3/32\"]",
        )
        .replace("interfaces = [\"s-c\", \"s-p\"]", "interfaces = [\"s-c\"]");
    let server = lab.srv.start_turnpike(&toml);
    server.wait_for_line(&["XDP fast path attached", "s-c", "driver"], START_TIMEOUT);
    let net = &v4();
    let peer_addr: SocketAddr = "10.10.1.3:7000".parse().unwrap();
    let peer = lab.cli.udp_bind(peer_addr);
    let mut c = client(&lab, net);
    let relayed = allocate(&mut c, &alice(), net);
    assert_eq!(relayed.ip().to_string(), "10.10.1.1");
    c.channel_bind(CH, peer_addr).unwrap();
    for i in 0..5u8 {
        let out = payload(50 + usize::from(i), i);
        c.send_channel_data(CH, &out);
        let (got, from) = recv(&peer);
        assert_eq!((got, from), (out, relayed));
        let back = payload(70 + usize::from(i), 200 + i);
        peer.send_to(&back, relayed).unwrap();
        expect_marker_at_client(&mut c, &back);
    }
    // All but the very first datagram (it taught the program the
    // client's MAC) went through the program.
    assert_eq!(fast_counts(&lab, &server), (4, 5));
}

/// Relay → relay: two clients of this server, each with a channel to the
/// other's relay. The program hands each ChannelData straight to the
/// other client (its own header for the other's), what user space would
/// send, byte for byte; here with an IPv4 and an IPv6 client on IPv4
/// relays.
#[test]
fn relay_to_relay_goes_straight_to_the_other_client() {
    let Some(lab) = build_lab("xdprr") else {
        return;
    };
    let pair = |server: &TestServer| {
        let mut a = client(&lab, &v4());
        let mut b = client(&lab, &v6());
        let a_relay = allocate(&mut a, &alice(), &v4());
        let b_relay = allocate(&mut b, &alice(), &v4());
        a.channel_bind(CH, b_relay).unwrap();
        b.channel_bind(CH + 1, a_relay).unwrap();
        let mut seen = Vec::new();
        for i in 0..6u8 {
            let ab = payload(20 + usize::from(i) * 7, i);
            a.send_channel_data(CH, &ab);
            match b.recv() {
                Incoming::Channel { number, data, .. } => {
                    assert_eq!((number, &data), (CH + 1, &ab));
                    seen.push(data);
                }
                other => panic!("B expected ChannelData, got {other:?}"),
            }
            let ba = payload(30 + usize::from(i) * 11, 100 + i);
            b.send_channel_data(CH + 1, &ba);
            match a.recv() {
                Incoming::Channel { number, data, .. } => {
                    assert_eq!((number, &data), (CH, &ba));
                    seen.push(data);
                }
                other => panic!("A expected ChannelData, got {other:?}"),
            }
        }
        let s = lab.srv.in_ns(|| scrape(server.http_addr()));
        let _ = a.refresh(Some(0));
        let _ = b.refresh(Some(0));
        (seen, s)
    };
    let user = lab.srv.start_turnpike(&config("off", ""));
    let (reference, s) = pair(&user);
    assert_eq!(
        s.value_or_zero("turnpike_relayed_local_total", &[]) as u64,
        12,
        "user space relays it relay to relay"
    );
    drop(user);

    let fast = lab.srv.start_turnpike(&config("xdp", ""));
    fast.wait_for_line(&["XDP fast path attached", "s-c"], START_TIMEOUT);
    let (seen, s) = pair(&fast);
    assert_eq!(seen, reference);
    // A's first datagram goes through user space (the program does not
    // know B's MAC yet); every datagram after, both ways, is the
    // program's: counted out of one relay and in to the other's client.
    assert_eq!(
        (
            counter(&s, "turnpike_fastpath_packets_total", "to_peer"),
            counter(&s, "turnpike_fastpath_packets_total", "to_client")
        ),
        (11, 11)
    );
    assert_eq!(counter(&s, "turnpike_relayed_packets_total", "to_peer"), 12);
    assert_eq!(
        counter(&s, "turnpike_relayed_packets_total", "to_client"),
        12
    );
    assert_eq!(
        s.value_or_zero("turnpike_relayed_local_total", &[]) as u64,
        1,
        "only the first went through the core"
    );
}

/// A datagram on the wire that claims to come from one of our relays is
/// forged (the kernel drops a local source arriving from outside): the
/// program leaves it to the kernel even where a relay → relay route from
/// that relay exists.
#[test]
fn a_datagram_forging_a_relay_source_is_never_relayed() {
    let Some(lab) = build_lab("xdpforge") else {
        return;
    };
    let fast = lab.srv.start_turnpike(&config("xdp", ""));
    fast.wait_for_line(&["XDP fast path attached", "s-p"], START_TIMEOUT);
    let mut a = client(&lab, &v4());
    let mut b = client(&lab, &v4());
    let a_relay = allocate(&mut a, &alice(), &v4());
    let b_relay = allocate(&mut b, &alice(), &v4());
    a.channel_bind(CH, b_relay).unwrap();
    b.channel_bind(CH, a_relay).unwrap();
    // Warm up both ways, so the program knows both clients.
    a.send_channel_data(CH, b"a1");
    expect_marker_at_client(&mut b, b"a1");
    b.send_channel_data(CH, b"b1");
    expect_marker_at_client(&mut a, b"b1");
    let before = fast_counts(&lab, &fast);

    // The forger: A's relay address in the peer namespace, with its local
    // route removed so that datagrams from it to B's relay leave on the
    // wire towards the server.
    lab.peer.ip(&["addr", "add", "10.10.2.1/32", "dev", "lo"]);
    let forger = lab.peer.udp_bind(a_relay);
    lab.peer.ip(&[
        "route",
        "del",
        "local",
        "10.10.2.1",
        "dev",
        "lo",
        "table",
        "local",
    ]);
    forger.send_to(b"forged", b_relay).unwrap();
    // Then a real datagram from A: B gets it and nothing before it.
    a.send_channel_data(CH, b"a2");
    expect_marker_at_client(&mut b, b"a2");
    assert_eq!(fast_counts(&lab, &fast), (before.0 + 1, before.1 + 1));
}

/// A ChannelData datagram: the channel, the length, the data (no padding).
fn channel_data(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + data.len());
    m.extend_from_slice(&ch.to_be_bytes());
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// The program's own expiry check (issue 15, item 2: "an entry that user
/// space has not yet removed can never outlive its permission or
/// channel"), without a server: the test loads the program on the lab's
/// server veths itself and writes the routes, with plain sockets in the
/// server namespace standing in for user space (whatever the program
/// passes up lands on them). Route A never expires within the test;
/// route B is written already expired and left in the map. B's traffic,
/// both ways, goes to user space unchanged and reaches neither side,
/// while A's is relayed; the same B refreshed with a future expiry is
/// relayed, so the expiry alone refused it. IPv4 and IPv6.
#[test]
fn the_program_refuses_an_expired_route_that_user_space_has_not_removed() {
    use turnpike_sys::xdp::{Fastpath, Route, monotonic_ns};
    let Some(lab) = build_lab("xdpexp") else {
        return;
    };
    const A: u16 = 0x4000;
    const B: u16 = 0x4001;
    let families: [(&str, &str, &str, &str); 2] = [
        (
            "10.10.1.2:0",
            "10.10.1.1:3478",
            "10.10.2.1:0",
            "10.10.2.2:7000",
        ),
        (
            "[fd00:1::2]:0",
            "[fd00:1::1]:3478",
            "[fd00:2::1]:0",
            "[fd00:2::2]:7000",
        ),
    ];
    let mut fp = lab
        .srv
        .in_ns(|| Fastpath::attach(&["s-c".to_string(), "s-p".to_string()]))
        .unwrap();
    let mut alloc_id = 0u64;
    for (client_at, listener_at, relay_at, peer_at) in families {
        let client = lab.cli.udp_bind(client_at.parse().unwrap());
        let peer = lab.peer.udp_bind(peer_at.parse().unwrap());
        // User space: the listener and the two relays, as the server
        // would have them.
        let listener = lab.srv.udp_bind(listener_at.parse().unwrap());
        let relay_a = lab.srv.udp_bind(relay_at.parse().unwrap());
        let relay_b = lab.srv.udp_bind(relay_at.parse().unwrap());
        let route = |relay: &UdpSocket, channel: u16, expires_ns: u64, id: u64| Route {
            client: client.local_addr().unwrap(),
            listener: listener.local_addr().unwrap(),
            relay: relay.local_addr().unwrap(),
            peer: peer.local_addr().unwrap(),
            channel,
            peer_is_relay: false,
            expires_ns,
            alloc_id: id,
        };
        let far = monotonic_ns() + 3_600_000_000_000;
        alloc_id += 2;
        let (id_a, id_b) = (alloc_id - 1, alloc_id);
        fp.install(&route(&relay_a, A, far, id_a)).unwrap();
        // Expired the moment it is written; user space never removes it.
        fp.install(&route(&relay_b, B, monotonic_ns() - 1, id_b))
            .unwrap();
        let routes = fp.route_count();

        // The client sends ChannelData to the listener; the peer sends to
        // a relay; the peer must get `data` next, from `relay`.
        let out = |ch: u16, data: &[u8]| {
            client
                .send_to(&channel_data(ch, data), listener.local_addr().unwrap())
                .unwrap();
        };
        let back = |relay: &UdpSocket, data: &[u8]| {
            peer.send_to(data, relay.local_addr().unwrap()).unwrap();
        };
        let at_peer = |data: &[u8], relay: &UdpSocket| {
            let (got, from) = recv(&peer);
            assert_eq!((got.as_slice(), from), (data, relay.local_addr().unwrap()));
        };

        // Warm up on A: the program learns the client's MAC from its first
        // datagram (which goes to user space: the peer's MAC is not known
        // yet), then the peer's from its answer, which it relays.
        out(A, b"warm");
        expect_marker(&listener, &channel_data(A, b"warm"));
        back(&relay_a, b"a-back");
        expect_marker(&client, &channel_data(A, b"a-back"));
        out(A, b"a-out");
        at_peer(b"a-out", &relay_a);
        let before = fp.totals();

        // B, both ways: passed up unchanged, relayed to neither side.
        out(B, b"b-out-expired");
        expect_marker(&listener, &channel_data(B, b"b-out-expired"));
        back(&relay_b, b"b-back-expired");
        expect_marker(&relay_b, b"b-back-expired");
        // A's next datagrams are the first the peer and the client see.
        out(A, b"a-marker");
        at_peer(b"a-marker", &relay_a);
        back(&relay_a, b"a-marker-back");
        expect_marker(&client, &channel_data(A, b"a-marker-back"));
        // B is still in the map, and the program counted only A.
        assert_eq!(fp.route_count(), routes, "user space removed nothing");
        let after = fp.totals();
        assert_eq!(
            (after.0.packets, after.1.packets),
            (before.0.packets + 1, before.1.packets + 1)
        );
        let b_stats = fp.allocation_stats(id_b);
        assert_eq!((b_stats.out.packets, b_stats.in_.packets), (0, 0));

        // The same B with a future expiry is relayed: only the expiry
        // refused it.
        fp.install(&route(&relay_b, B, far, id_b)).unwrap();
        out(B, b"b-out");
        at_peer(b"b-out", &relay_b);
        back(&relay_b, b"b-back");
        expect_marker(&client, &channel_data(B, b"b-back"));
        let b_stats = fp.allocation_stats(id_b);
        assert_eq!((b_stats.out.packets, b_stats.in_.packets), (1, 1));
    }
    drop(fp);
}
