//! `turnpike ice-check` end to end on loopback: the built binary checks
//! paths between its two agents through the built server (UDP, TCP and
//! TLS to the server, credentials minted locally, static, or fetched from
//! the HTTP API), and in offer/answer mode between two processes that
//! swap their descriptions through pipes.
//!
//! Relay ports: 47000-47999, a hundred per test.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{TestServer, Transport, run_bounded, self_signed_cert, turnpike_bin, wait_bounded};
use serde_json::Value;

const SECRET: &str = "ice-e2e-secret";
const API_KEY: &str = "ice-e2e-api-key";
/// Every ice-check run gives up by itself after `--timeout 20`; this only
/// catches a run that does not.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A server on loopback with the given listeners, relaying on 127.0.0.1
/// in `ports`; `allow_loopback` opens the default peer policy for
/// 127.0.0.1 (it refuses loopback peers otherwise).
fn server(listeners: &str, ports: &str, allow_loopback: bool) -> TestServer {
    let policy = if allow_loopback {
        "[policy]\nallow_peers = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    TestServer::start(&format!(
        r#"{listeners}
[relay]
bind_ip = "127.0.0.1"
ports = "{ports}"
[auth]
secrets = ["{SECRET}"]
{policy}
[http]
addr = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
"#
    ))
}

const UDP: &str = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n";
const TCP: &str = "[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n";

/// Run `turnpike ice-check ARGS --json --timeout 20`; (exit code, the
/// JSON document, stderr).
fn ice_check(args: &[&str]) -> (i32, Value, String) {
    let (status, out, err) = run_bounded(
        Command::new(turnpike_bin())
            .arg("ice-check")
            .args(args)
            .args(["--json", "--timeout", "20"]),
        RUN_LIMIT,
    );
    let doc: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}\nstderr:\n{err}"));
    (code(status), doc, err)
}

fn code(s: ExitStatus) -> i32 {
    s.code()
        .unwrap_or_else(|| panic!("killed by a signal: {s:?}"))
}

fn udp_url(s: &TestServer) -> String {
    format!("turn:{}", s.addr(Transport::Udp, false))
}

fn pairs<'a>(doc: &'a Value, agent: &str) -> &'a [Value] {
    doc["agents"][agent]["pairs"]
        .as_array()
        .unwrap_or_else(|| panic!("no pairs for agent {agent}: {doc:#}"))
}

fn succeeded(p: &Value) -> bool {
    p["state"] == "succeeded"
}

#[test]
fn relay_and_host_pairs_work_on_loopback_with_rtt() {
    let s = server(UDP, "47000-47099", true);
    let url = udp_url(&s);
    let (code, doc, err) = ice_check(&[
        "--server",
        &url,
        "--secret",
        SECRET,
        "--host",
        "127.0.0.1",
        "--pings",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["mode"], "local");
    assert_eq!(doc["verdict"]["host"], true, "{doc:#}");
    assert_eq!(doc["verdict"]["relay"], true, "{doc:#}");
    // Loopback has no NAT: the STUN answer is the host address itself.
    assert_eq!(doc["verdict"]["srflx"], false);
    assert_eq!(doc["verdict"]["expectations_met"], true);
    for agent in ["a", "b"] {
        let a = &doc["agents"][agent];
        assert_eq!(a["finished"], true, "{agent}");
        assert_eq!(
            a["gathering_failures"].as_array().map(Vec::len),
            Some(0),
            "{a:#}"
        );
        let relays: Vec<&Value> = a["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "relay")
            .collect();
        assert_eq!(relays.len(), 1, "{agent}: one relay candidate");
        assert_eq!(relays[0]["via"], "udp");
        let ps = pairs(&doc, agent);
        // Every pair works: host-host, and each end relayed.
        assert_eq!(ps.len(), 4, "{agent}: {ps:#?}");
        for p in ps {
            assert!(succeeded(p), "{agent}: {p:#}");
            assert_eq!(p["rtt"]["sent"], 5, "{p:#}");
            assert!(p["rtt"]["received"].as_u64().unwrap() > 0, "{p:#}");
            assert!(p["rtt"]["p50_ms"].as_f64().unwrap() >= 0.0, "{p:#}");
            assert!(
                p["rtt"]["max_ms"].as_f64() >= p["rtt"]["p50_ms"].as_f64(),
                "{p:#}"
            );
        }
        assert!(
            ps.iter().any(|p| p["path"] == "host"),
            "{agent}: a host pair"
        );
        assert_eq!(
            ps.iter().filter(|p| p["path"] == "relay").count(),
            3,
            "{agent}: relay-host, host-relay, relay-relay"
        );
        assert_eq!(
            ps.iter().filter(|p| p["nominated"] == true).count(),
            1,
            "{agent}: one nominated pair"
        );
    }
    // Progress on stderr (not a terminal: timestamped lines).
    assert!(err.contains("A candidate relay"), "{err}");
    assert!(err.contains("B nominated pair"), "{err}");

    // --only relay --expect relay: only relay pairs, and they work.
    let (code, doc, err) = ice_check(&[
        "--server",
        &url,
        "--secret",
        SECRET,
        "--host",
        "127.0.0.1",
        "--pings",
        "2",
        "--only",
        "relay",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(doc["expect"], serde_json::json!(["relay"]));
    for agent in ["a", "b"] {
        let ps = pairs(&doc, agent);
        assert!(!ps.is_empty());
        assert!(ps.iter().all(|p| p["path"] == "relay"), "{ps:#?}");
        assert!(ps.iter().any(succeeded));
    }
    // Host paths were not even tried, so expecting them fails.
    let (code, doc, _) = ice_check(&[
        "--server",
        &url,
        "--secret",
        SECRET,
        "--host",
        "127.0.0.1",
        "--pings",
        "1",
        "--only",
        "relay",
        "--expect",
        "host",
    ]);
    assert_eq!(code, 1);
    assert_eq!(doc["verdict"]["host"], false);
    assert_eq!(doc["verdict"]["expectations_met"], false);
}

#[test]
fn default_peer_policy_refuses_loopback_peers_with_403() {
    // The server's safety feature: no relaying into loopback. ice-check
    // shows it as 403 on the relayed pairs; host pairs still work.
    let s = server(UDP, "47100-47199", false);
    let url = udp_url(&s);
    let args = [
        "--server",
        &url,
        "--secret",
        SECRET,
        "--host",
        "127.0.0.1",
        "--pings",
        "1",
    ];
    let (code, doc, err) = ice_check(&args);
    assert_eq!(code, 0, "host pairs work, so some pair succeeded: {err}");
    assert_eq!(doc["verdict"]["host"], true);
    assert_eq!(doc["verdict"]["relay"], false, "{doc:#}");
    for agent in ["a", "b"] {
        let ps = pairs(&doc, agent);
        let relayed: Vec<&Value> = ps
            .iter()
            .filter(|p| p["checked_from"]["type"] == "relay")
            .collect();
        assert!(
            !relayed.is_empty(),
            "{agent}: relay candidates were allocated"
        );
        for p in relayed {
            assert_eq!(p["state"], "failed", "{p:#}");
            assert_eq!(
                p["failure"],
                serde_json::json!({"reason": "error", "detail": 403}),
                "{p:#}"
            );
        }
        assert!(!ps.iter().any(|p| p["path"] == "relay" && succeeded(p)));
    }
    let mut with_expect = args.to_vec();
    with_expect.extend(["--expect", "relay"]);
    let (code, doc, _) = ice_check(&with_expect);
    assert_eq!(code, 1, "relay expected but refused");
    assert_eq!(doc["verdict"]["expectations_met"], false);
}

#[test]
fn wrong_password_is_a_401_gathering_failure() {
    let s = server(UDP, "47200-47299", true);
    let url = udp_url(&s);
    let (code, doc, err) = ice_check(&[
        "--server",
        &url,
        "--user",
        "alice",
        "--password",
        "wrong",
        "--host",
        "127.0.0.1",
        "--pings",
        "1",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(doc["verdict"]["relay"], false);
    assert_eq!(doc["verdict"]["expectations_met"], false);
    for agent in ["a", "b"] {
        let failures = doc["agents"][agent]["gathering_failures"]
            .as_array()
            .unwrap();
        assert!(
            failures
                .iter()
                .any(|f| f["what"].as_str().unwrap().starts_with("relay via udp")
                    && f["failure"] == serde_json::json!({"reason": "error", "detail": 401})),
            "{agent}: {failures:#?}"
        );
    }
    assert!(
        err.contains("gathering failed: relay via udp") && err.contains(": 401"),
        "{err}"
    );

    // The table says the same to a person.
    let (status, out, err) = run_bounded(
        Command::new(turnpike_bin()).args([
            "ice-check",
            "--server",
            &url,
            "--user",
            "alice",
            "--password",
            "wrong",
            "--host",
            "127.0.0.1",
            "--pings",
            "1",
            "--expect",
            "relay",
            "--timeout",
            "20",
        ]),
        RUN_LIMIT,
    );
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let starts = |p: &str| lines.iter().any(|l| l.starts_with(p));
    assert!(starts("A (controlling): "), "{out}");
    assert!(starts("B (controlled): "), "{out}");
    assert!(starts("  gathering failed: relay via udp"), "{out}");
    // The host pair works and is nominated (`*`), with round trips.
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("*  host/udp 127.0.0.1:")
                && l.contains("succeeded")
                && l.ends_with("0%")),
        "{out}"
    );
    assert!(starts("host   works "), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("relay  FAILS ") && l.contains("gathering failed: 401")),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"FAILED: expected relay"), "{out}");
}

#[test]
fn relays_over_tcp_and_tls_to_the_server() {
    let cert = self_signed_cert();
    let tls = format!(
        "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n",
        cert.cert_toml(),
        cert.key_toml()
    );
    let s = server(&format!("{TCP}{tls}"), "47300-47399", true);
    let tcp = format!("turn:{}?transport=tcp", s.addr(Transport::Tcp, false));
    let turns = format!("turns:{}", s.addr(Transport::Tls, false));
    let ca = cert.cert_path.to_str().unwrap();
    let (code, doc, err) = ice_check(&[
        "--server",
        &tcp,
        "--server",
        &turns,
        "--secret",
        SECRET,
        "--ca",
        ca,
        "--no-stun",
        "--host",
        "127.0.0.1",
        "--pings",
        "3",
        "--only",
        "relay",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    let servers = doc["servers"].as_array().unwrap();
    assert_eq!(servers[0]["transport"], "tcp");
    assert_eq!(servers[1]["transport"], "tls");
    for agent in ["a", "b"] {
        let ps = pairs(&doc, agent);
        for t in ["tcp", "tls"] {
            assert!(
                ps.iter().any(|p| succeeded(p)
                    && p["local"]["via"] == t
                    && p["rtt"]["received"].as_u64() > Some(0)),
                "{agent}: a relayed pair through a relay reached over {t}: {ps:#?}"
            );
        }
        // TCP relay to TLS relay, both ways.
        assert!(
            ps.iter()
                .any(|p| succeeded(p) && p["local"]["via"] == "tcp" && p["remote"]["via"] == "tls")
        );
    }

    // Without --ca the self-signed certificate is refused, and said so.
    let (code, doc, _) = ice_check(&[
        "--server",
        &turns,
        "--secret",
        SECRET,
        "--no-stun",
        "--host",
        "127.0.0.1",
        "--only",
        "relay",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 1);
    let failure = &doc["agents"]["a"]["gathering_failures"][0];
    assert_eq!(failure["failure"]["reason"], "unreachable", "{doc:#}");
    let detail = failure["failure"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("certificate") && detail.contains("--ca"),
        "{detail}"
    );
}

#[test]
fn credentials_and_servers_from_the_http_api() {
    let s = server(&format!("{UDP}{TCP}"), "47400-47499", true);
    let url = format!("http://{}/api/v1/credentials", s.http_addr());
    let (code, doc, err) = ice_check(&[
        "--credentials-url",
        &url,
        "--api-key",
        API_KEY,
        "--host",
        "127.0.0.1",
        "--pings",
        "2",
        "--only",
        "relay",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    // No --server: the API's turn URIs (UDP and TCP listeners) are used.
    let transports: Vec<&str> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports, ["udp", "tcp"]);
    assert_eq!(
        doc["servers"][0]["addr"],
        s.addr(Transport::Udp, false).to_string()
    );
    for agent in ["a", "b"] {
        for t in ["udp", "tcp"] {
            assert!(
                pairs(&doc, agent)
                    .iter()
                    .any(|p| succeeded(p) && p["local"]["via"] == t),
                "{agent} {t}"
            );
        }
    }

    // A wrong API key: the check cannot run (exit 2), and says why.
    let (status, out, err) = run_bounded(
        Command::new(turnpike_bin()).args([
            "ice-check",
            "--credentials-url",
            &url,
            "--api-key",
            "not-the-key",
            "--timeout",
            "20",
        ]),
        RUN_LIMIT,
    );
    assert_eq!(status.code(), Some(2), "{out}\n{err}");
    assert!(err.contains("HTTP 401"), "{err}");
}

/// A spawned `ice-check offer|answer`: its stdout's first line (the
/// description) goes out on a channel, the rest is kept.
struct Side {
    child: std::process::Child,
    blob: std::sync::mpsc::Receiver<String>,
    rest: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

fn spawn_side(mode: &str, url: &str) -> Side {
    let mut child = Command::new(turnpike_bin())
        .args([
            "ice-check",
            mode,
            "--server",
            url,
            "--secret",
            SECRET,
            "--host",
            "127.0.0.1",
            "--pings",
            "3",
            "--expect",
            "relay",
            "--json",
            "--timeout",
            "20",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ice-check");
    let (tx, blob) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let rest = std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        lines.map_while(Result::ok).collect::<Vec<_>>().join("\n")
    });
    let mut e = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
        s
    });
    Side {
        child,
        blob,
        rest,
        err,
    }
}

#[test]
fn offer_and_answer_in_two_processes() {
    let s = server(UDP, "47500-47599", true);
    let url = udp_url(&s);
    let mut offer = spawn_side("offer", &url);
    let mut answer = spawn_side("answer", &url);
    // Each description goes to the other side's stdin.
    let o = offer
        .blob
        .recv_timeout(RUN_LIMIT)
        .expect("the offer prints its description");
    let a = answer
        .blob
        .recv_timeout(RUN_LIMIT)
        .expect("the answer prints its description");
    assert!(
        o.starts_with("tpice1.") && a.starts_with("tpice1."),
        "{o}\n{a}"
    );
    assert_ne!(o, a);
    for (side, blob) in [(&mut answer, &o), (&mut offer, &a)] {
        let mut stdin = side.child.stdin.take().unwrap();
        writeln!(stdin, "{blob}").unwrap();
    }
    let mut docs = Vec::new();
    for side in [offer, answer] {
        let status = wait_bounded(side.child, RUN_LIMIT).expect("ice-check finishes");
        let rest = side.rest.join().unwrap();
        let err = side.err.join().unwrap();
        assert_eq!(status.code(), Some(0), "{rest}\n{err}");
        let doc: Value = serde_json::from_str(&rest)
            .unwrap_or_else(|e| panic!("not JSON after the description ({e}): {rest}"));
        docs.push(doc);
    }
    let (o, a) = (&docs[0], &docs[1]);
    assert_eq!(o["mode"], "offer");
    assert_eq!(a["mode"], "answer");
    // The offerer is agent a (controlling), the answerer agent b.
    assert_eq!(o["agents"]["a"]["role"], "controlling");
    assert!(o["agents"].get("b").is_none());
    assert_eq!(a["agents"]["b"]["role"], "controlled");
    for (doc, agent) in [(o, "a"), (a, "b")] {
        assert_eq!(doc["verdict"]["relay"], true, "{doc:#}");
        assert_eq!(doc["verdict"]["host"], true, "{doc:#}");
        assert_eq!(
            pairs(doc, agent)
                .iter()
                .filter(|p| p["nominated"] == true)
                .count(),
            1
        );
    }
    // Both sides agree on the nominated pair.
    let nominated = |doc: &Value, agent: &str| {
        let p = pairs(doc, agent)
            .iter()
            .find(|p| p["nominated"] == true)
            .unwrap()
            .clone();
        (p["local"]["addr"].clone(), p["remote"]["addr"].clone())
    };
    let (ol, or) = nominated(o, "a");
    let (al, ar) = nominated(a, "b");
    assert_eq!((ol, or), (ar, al));
}

#[test]
fn refused_servers_are_reported_unreachable_at_once() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp = format!("turn:127.0.0.1:{port}");
    let tcp = format!("turn:127.0.0.1:{port}?transport=tcp");
    let (code, doc, err) = ice_check(&[
        "--server",
        &udp,
        "--server",
        &tcp,
        "--secret",
        SECRET,
        "--no-stun",
        "--host",
        "127.0.0.1",
        "--pings",
        "1",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 1, "{err}");
    for agent in ["a", "b"] {
        let failures = doc["agents"][agent]["gathering_failures"]
            .as_array()
            .unwrap();
        assert_eq!(failures.len(), 2, "{failures:#?}");
        for what in ["relay via udp", "relay via tcp"] {
            let f = failures
                .iter()
                .find(|f| f["what"].as_str().unwrap().starts_with(what))
                .unwrap_or_else(|| panic!("{what}: {failures:#?}"));
            assert_eq!(f["failure"]["reason"], "unreachable", "{f}");
            assert!(
                f["failure"]["detail"]
                    .as_str()
                    .unwrap()
                    .contains("connection refused"),
                "{f}"
            );
        }
    }
    assert_eq!(doc["timed_out"], false);
}

#[test]
fn credentials_over_https_with_a_private_ca() {
    let cert = self_signed_cert();
    let s = TestServer::start(&format!(
        r#"{UDP}
[relay]
bind_ip = "127.0.0.1"
ports = "47600-47699"
[auth]
secrets = ["{SECRET}"]
[policy]
allow_peers = ["127.0.0.1/32"]
[http]
addr = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
cert = {}
key = {}
"#,
        cert.cert_toml(),
        cert.key_toml()
    ));
    let url = format!("https://{}/api/v1/credentials", s.http_addr());
    let ca = cert.cert_path.to_str().unwrap();
    let (code, doc, err) = ice_check(&[
        "--credentials-url",
        &url,
        "--api-key",
        API_KEY,
        "--ca",
        ca,
        "--host",
        "127.0.0.1",
        "--pings",
        "1",
        "--only",
        "relay",
        "--expect",
        "relay",
    ]);
    assert_eq!(code, 0, "{err}\n{doc:#}");
    assert_eq!(doc["servers"][0]["transport"], "udp");
    // Without --ca the certificate is not trusted: the check cannot run.
    let (status, _, err) = run_bounded(
        Command::new(turnpike_bin()).args([
            "ice-check",
            "--credentials-url",
            &url,
            "--api-key",
            API_KEY,
            "--timeout",
            "20",
        ]),
        RUN_LIMIT,
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn ctrl_c_ends_the_run_with_a_report() {
    let s = server(UDP, "47700-47799", true);
    let url = udp_url(&s);
    // An offer whose answer never comes: it waits, until SIGINT.
    let mut offer = spawn_side("offer", &url);
    // Held open until the end (Child::wait would close it, and stdin's
    // end is a reason to stop too).
    let _stdin = offer.child.stdin.take();
    offer
        .blob
        .recv_timeout(RUN_LIMIT)
        .expect("the offer prints its description once gathered");
    let pid = libc::pid_t::try_from(offer.child.id()).unwrap();
    // Our own child, not yet reaped.
    turnpike_sys::process::kill(pid, libc::SIGINT).unwrap();
    let status = wait_bounded(offer.child, RUN_LIMIT).expect("ice-check ends on SIGINT");
    let rest = offer.rest.join().unwrap();
    let err = offer.err.join().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a report, not death by signal\n{err}"
    );
    let doc: Value = serde_json::from_str(&rest).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(doc["interrupted"], true);
    assert_eq!(doc["timed_out"], false);
    assert_eq!(doc["agents"]["a"]["finished"], false);
    assert_eq!(doc["verdict"]["expectations_met"], false);
    // It had gathered its relay before it was stopped.
    assert!(
        doc["agents"]["a"]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "relay")
    );
}
