//! `turnpike ice-check` across real NATs, in a network-namespace lab
//! (tests/common/netns.rs):
//!
//! ```text
//!   c1 10.1.0.2 ── r1 [NAT] 203.0.113.11 ─┐
//!                                         br0 ── pub 203.0.113.1: TURN server
//!   c2 10.2.0.2 ── r2 [NAT] 203.0.113.12 ─┘       udp+tcp :3478, tls :5349
//! ```
//!
//! One `ice-check` process runs both agents, agent A's sockets in `c1` and
//! B's in `c2` (`--a-netns`, `--b-netns`), against three TURN servers on
//! the same host (UDP, TCP and TLS to it), and the JSON verdict must match
//! what the NATs allow:
//!
//! | NATs                         | host | srflx | relay                         |
//! |------------------------------|------|-------|-------------------------------|
//! | full cone (endpoint-indep.)  | no   | yes   | yes                           |
//! | symmetric (random ports)     | no   | no    | yes, over UDP, TCP and TLS    |
//! | outbound UDP blocked         | no   | no    | yes, only over TCP and TLS    |
//!
//! The symmetric case runs a second time against coturn's `turnserver`
//! instead of turnpike, so the checker's TURN client is not only known to
//! work with our own server.
//!
//! Root only: without root (or iproute2/nftables) each test prints a loud
//! SKIPPED banner and asserts nothing. CI runs as root.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::netns::{Lab, Nat, NatSpec, PUBLIC_GATEWAY, TwoNats};
use common::{run_bounded, turnpike_bin};
use serde_json::Value;

const SECRET: &str = "ice-lab-secret";
/// ice-check ends by itself (`--timeout 40`); this catches one that does not.
const RUN_LIMIT: Duration = Duration::from_secs(90);
const START_LIMIT: Duration = Duration::from_secs(10);

/// A certificate for the public server address, and its files.
struct LabCert {
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn lab_cert() -> LabCert {
    let ck = rcgen::generate_simple_self_signed(vec![PUBLIC_GATEWAY.to_string()])
        .expect("generate certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    LabCert {
        cert,
        key,
        _dir: dir,
    }
}

fn turnpike_config(cert: &LabCert) -> String {
    format!(
        r#"
[server]
realm = "ice-lab"
threads = 1

[[listen]]
transport = "udp"
addr = "{gw}:3478"

[[listen]]
transport = "tcp"
addr = "{gw}:3478"

[[listen]]
transport = "tls"
addr = "{gw}:5349"
cert = {cert:?}
key = {key:?}

[relay]
bind_ip = "{gw}"
ports = "50000-50999"

[auth]
secrets = ["{SECRET}"]
"#,
        gw = PUBLIC_GATEWAY,
        cert = cert.cert.to_str().unwrap(),
        key = cert.key.to_str().unwrap(),
    )
}

/// `turnpike ice-check` with A in c1 and B in c2, through the three
/// servers on 203.0.113.1; returns the JSON document (and prints its
/// verdict, for the record).
fn ice_check(net: &TwoNats, cert: &LabCert, scenario: &str) -> Value {
    let gw = PUBLIC_GATEWAY;
    let (status, out, err) = run_bounded(
        Command::new(turnpike_bin()).args([
            "ice-check",
            "--a-netns",
            net.a.client.name(),
            "--b-netns",
            net.b.client.name(),
            "--server",
            &format!("turn:{gw}:3478?transport=udp"),
            "--server",
            &format!("turn:{gw}:3478?transport=tcp"),
            "--server",
            &format!("turns:{gw}:5349"),
            "--secret",
            SECRET,
            "--ca",
            cert.cert.to_str().unwrap(),
            "--pings",
            "5",
            "--expect",
            "relay",
            "--timeout",
            "40",
            "--json",
        ]),
        RUN_LIMIT,
    );
    let doc: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}\nstderr:\n{err}"));
    eprintln!("{scenario}: verdict {}", doc["verdict"]);
    assert_eq!(
        status.code(),
        Some(0),
        "{scenario}: relay was expected to work\n{}\nstderr:\n{err}",
        dump(&doc)
    );
    assert_eq!(doc["timed_out"], false, "{}", dump(&doc));
    doc
}

/// One line per pair of both agents, for assertion messages.
fn dump(doc: &Value) -> String {
    let mut s = String::new();
    for agent in ["a", "b"] {
        let a = &doc["agents"][agent];
        for g in a["gathering_failures"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{agent} gathering failed: {} {}\n",
                g["what"], g["failure"]
            ));
        }
        for p in a["pairs"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{agent} {} {}/{} {} -> {}/{} {}: {} {}\n",
                p["path"],
                p["local"]["type"],
                p["local"]["via"],
                p["local"]["addr"],
                p["remote"]["type"],
                p["remote"]["via"],
                p["remote"]["addr"],
                p["state"],
                p["failure"]
            ));
        }
    }
    s
}

fn pairs<'a>(doc: &'a Value, agent: &str) -> &'a [Value] {
    doc["agents"][agent]["pairs"].as_array().expect("pairs")
}

fn candidates<'a>(doc: &'a Value, agent: &str) -> &'a [Value] {
    doc["agents"][agent]["candidates"]
        .as_array()
        .expect("candidates")
}

fn verdict(doc: &Value) -> (bool, bool, bool) {
    let v = &doc["verdict"];
    (
        v["host"].as_bool().unwrap(),
        v["srflx"].as_bool().unwrap(),
        v["relay"].as_bool().unwrap(),
    )
}

/// A relayed pair through a relay reached over `via` succeeded, with
/// round trips measured.
fn relay_works_via(doc: &Value, agent: &str, via: &str) -> bool {
    pairs(doc, agent).iter().any(|p| {
        p["state"] == "succeeded"
            && p["path"] == "relay"
            && p["local"]["via"] == via
            && p["rtt"]["received"].as_u64() > Some(0)
    })
}

fn tried(doc: &Value, agent: &str, path: &str) -> usize {
    pairs(doc, agent)
        .iter()
        .filter(|p| p["path"] == path)
        .count()
}

fn lab(prefix: &str, a: impl Into<NatSpec>, b: impl Into<NatSpec>) -> Option<(Lab, TwoNats)> {
    let lab = Lab::new(prefix)?;
    let net = lab.two_nats(a, b);
    Some((lab, net))
}

#[test]
fn full_cone_nats_srflx_and_relay_work_host_does_not() {
    let Some((_lab, net)) = lab("icefc", Nat::FullCone, Nat::FullCone) else {
        return;
    };
    let cert = lab_cert();
    let _server = net.internet.ns.start_turnpike(&turnpike_config(&cert));
    let doc = ice_check(&net, &cert, "full cone");
    assert_eq!(verdict(&doc), (false, true, true), "{}", dump(&doc));
    for (agent, site) in [("a", &net.a), ("b", &net.b)] {
        // Host candidates are the private addresses, which do not route
        // across the Internet: tried, failed.
        assert!(tried(&doc, agent, "host") > 0, "{}", dump(&doc));
        assert!(
            candidates(&doc, agent).iter().any(|c| c["type"] == "host"
                && c["addr"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{}:", site.client_ip))),
            "{agent}: host candidate on {}",
            site.client_ip
        );
        // The srflx candidate is the router's public address.
        assert!(
            candidates(&doc, agent).iter().any(|c| c["type"] == "srflx"
                && c["addr"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{}:", site.outside_ip))),
            "{agent}: {:?}",
            candidates(&doc, agent)
        );
        assert!(relay_works_via(&doc, agent, "udp"), "{}", dump(&doc));
    }
}

#[test]
fn symmetric_nats_only_relay_works_over_udp_tcp_and_tls() {
    let Some((_lab, net)) = lab("icesym", Nat::Symmetric, Nat::Symmetric) else {
        return;
    };
    let cert = lab_cert();
    let _server = net.internet.ns.start_turnpike(&turnpike_config(&cert));
    let doc = ice_check(&net, &cert, "symmetric");
    assert_symmetric(&doc);
}

fn assert_symmetric(doc: &Value) {
    assert_eq!(verdict(doc), (false, false, true), "{}", dump(doc));
    for agent in ["a", "b"] {
        // STUN still gives a srflx candidate, but its mapping only lets
        // the STUN server in: the srflx pairs were tried and failed.
        assert!(
            candidates(doc, agent).iter().any(|c| c["type"] == "srflx"),
            "{agent}"
        );
        assert!(tried(doc, agent, "srflx") > 0, "{}", dump(doc));
        assert!(tried(doc, agent, "host") > 0, "{}", dump(doc));
        for via in ["udp", "tcp", "tls"] {
            assert!(
                relay_works_via(doc, agent, via),
                "{agent}: a relayed pair via {via}\n{}",
                dump(doc)
            );
        }
    }
}

#[test]
fn blocked_outbound_udp_leaves_relays_over_tcp_and_tls() {
    let Some((_lab, net)) = lab(
        "iceudp",
        Nat::PortRestricted.tcp_only(),
        Nat::PortRestricted.tcp_only(),
    ) else {
        return;
    };
    let cert = lab_cert();
    let _server = net.internet.ns.start_turnpike(&turnpike_config(&cert));
    let doc = ice_check(&net, &cert, "outbound UDP blocked");
    assert_eq!(verdict(&doc), (false, false, true), "{}", dump(&doc));
    for agent in ["a", "b"] {
        let cands = candidates(&doc, agent);
        assert!(!cands.iter().any(|c| c["type"] == "srflx"), "{cands:?}");
        assert!(
            !cands
                .iter()
                .any(|c| c["type"] == "relay" && c["via"] == "udp"),
            "{cands:?}"
        );
        // Gathering says why they are missing.
        let failures: Vec<&str> = doc["agents"][agent]["gathering_failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["what"].as_str().unwrap())
            .collect();
        assert!(
            failures.iter().any(|w| w.starts_with("srflx via")),
            "{failures:?}"
        );
        assert!(
            failures.iter().any(|w| w.starts_with("relay via udp")),
            "{failures:?}"
        );
        for p in pairs(&doc, agent)
            .iter()
            .filter(|p| p["state"] == "succeeded")
        {
            assert_eq!(p["path"], "relay", "{p}");
            for end in ["local", "remote"] {
                assert!(
                    p[end]["via"] == "tcp" || p[end]["via"] == "tls",
                    "{agent}: succeeded pair with a {end} end not relayed over TCP/TLS: {p}"
                );
            }
        }
        for via in ["tcp", "tls"] {
            assert!(relay_works_via(&doc, agent, via), "{}", dump(&doc));
        }
    }
}

/// The symmetric case against coturn 4.6 (`turnserver`) in the public
/// namespace: relayed pairs over UDP, TCP and TLS to coturn succeed.
#[test]
fn symmetric_nats_relay_through_coturn() {
    let Some((lab, net)) = lab("icecot", Nat::Symmetric, Nat::Symmetric) else {
        return;
    };
    let cert = lab_cert();
    let state = tempfile::tempdir().expect("temp dir");
    let gw = PUBLIC_GATEWAY;
    let which = Command::new("sh")
        .args(["-c", "command -v turnserver"])
        .output()
        .expect("sh");
    assert!(
        which.status.success(),
        "turnserver not found on PATH: install coturn (apt-get install coturn); .ci/run does this"
    );
    let mut cmd = net.internet.ns.cmd("turnserver");
    cmd.arg("-n")
        .arg("-v")
        .arg(format!("--listening-ip={gw}"))
        .arg(format!("--relay-ip={gw}"))
        .arg("--listening-port=3478")
        .arg("--tls-listening-port=5349")
        .arg("--use-auth-secret")
        .arg(format!("--static-auth-secret={SECRET}"))
        .arg("--realm=ice-lab")
        .arg("--min-port=50000")
        .arg("--max-port=50999")
        .arg(format!("--cert={}", cert.cert.display()))
        .arg(format!("--pkey={}", cert.key.display()))
        // As coturn's docs advise for production: no relaying into private
        // ranges. (Here it matters: the lab's Internet has no route to
        // 10/8, and coturn stops relaying on an allocation whose relay
        // socket got ENETUNREACH, which no real Internet host returns.)
        .arg("--denied-peer-ip=10.0.0.0-10.255.255.255")
        .arg("--no-dtls")
        .arg("--no-cli")
        .arg("--log-file=stdout")
        .arg("--simple-log")
        .arg(format!("--pidfile={}", state.path().join("pid").display()))
        .arg(format!(
            "--userdb={}",
            state.path().join("turndb").display()
        ));
    let coturn = lab.spawn("turnserver", &mut cmd);
    // Ready once it says its UDP and TLS listeners are open.
    let seen = RefCell::new((false, false));
    coturn.wait_line(START_LIMIT, |l| {
        let mut s = seen.borrow_mut();
        if l.contains("UDP listener opened on") && l.contains(&format!("{gw}:3478")) {
            s.0 = true;
        }
        if l.contains("TCP listener opened on") && l.contains(&format!("{gw}:5349")) {
            s.1 = true;
        }
        s.0 && s.1
    });
    let doc = ice_check(&net, &cert, "symmetric, coturn");
    assert_symmetric(&doc);
    // The relayed addresses are coturn's.
    let relay: Vec<&Value> = candidates(&doc, "a")
        .iter()
        .filter(|c| c["type"] == "relay")
        .collect();
    assert_eq!(relay.len(), 3, "{relay:?}");
    for c in relay {
        let addr: std::net::SocketAddr = c["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(addr.ip(), std::net::IpAddr::V4(gw));
        assert!((50000..=50999).contains(&addr.port()), "{addr}");
    }
}
