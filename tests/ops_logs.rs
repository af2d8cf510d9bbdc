//! Logs of the built binary: `--log-format json` (and `[log] format`)
//! makes every stderr line a JSON object, allocation events carry user,
//! client and relay, and `log.redact_client_ips` keeps client addresses
//! out of the logs (also when switched on by a reload).
//!
//! Relay ports 45400-45499 (the top of tests/http_api.rs's range).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use common::ops::*;
use common::*;
use serde_json::Value;
use turnpike_proto::client::Credentials;

const SECRET: &str = "logs-secret";
const KEY: &str = "logs-admin-key";

fn config(log: &str) -> String {
    format!(
        r#"
[server]
realm = "logs.test"

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[relay]
bind_ip = "127.0.0.1"
ports = "45400-45499"

[auth]
secrets = ["{SECRET}"]

[http]
addr = "127.0.0.1:0"
admin_keys = ["{KEY}"]

[log]
{log}
"#
    )
}

/// Every stderr line, parsed: each must be a JSON object.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "not an object: {l}");
            for k in ["timestamp", "level", "fields"] {
                assert!(v.get(k).is_some(), "no {k}: {l}");
            }
            v
        })
        .collect()
}

/// The one event with this message.
fn event<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == message)
        .collect();
    assert_eq!(found.len(), 1, "one {message:?} event in {lines:#?}");
    &found[0]["fields"]
}

/// Allocate (user `user`) and delete with Refresh 0; wait until the end
/// is logged (allocation events are written by the shard a moment
/// later). Returns (client address, username, relayed address).
fn allocation_cycle(
    server: &TestServer,
    user: &str,
    ended_before: usize,
) -> (String, String, String) {
    let creds = Credentials::rest(SECRET, user, unix_now() + 3600);
    let username = creds.username.clone();
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    let relayed = c.allocate(creds).expect("allocate");
    assert_eq!(c.refresh(Some(0)), 200);
    wait_stderr(server, "allocation ended", ended_before + 1);
    (c.local_addr().to_string(), username, relayed.to_string())
}

#[test]
fn log_format_json_flag_makes_every_line_json_with_allocation_fields() {
    let mut server = TestServer::start_with_args(&config(""), &["--log-format", "json"]);
    let (client, username, relay) = allocation_cycle(&server, "json-user", 0);
    let status = server.stop(Signal::Int);
    assert!(status.success(), "{status}");
    let lines = json_lines(&server.stderr_text());
    assert!(lines.len() >= 4, "start, listen, allocation and stop lines");

    let created = event(&lines, "allocation created");
    assert_eq!(created["user"], username.as_str());
    assert_eq!(created["client"], client.as_str());
    assert_eq!(created["relay"], relay.as_str());
    assert_eq!(created["transport"], "udp");
    let ended = event(&lines, "allocation ended");
    assert_eq!(ended["user"], username.as_str());
    assert_eq!(ended["client"], client.as_str());
    assert_eq!(ended["relay"], relay.as_str());
    assert_eq!(ended["reason"], "deleted");
    assert_eq!(ended["id"], created["id"]);
    let starting = event(&lines, "starting turnpike");
    assert!(starting["config"].as_str().is_some());
    assert!(lines.iter().any(|v| v["fields"]["message"] == "stopped"));
}

#[test]
fn log_format_from_the_config_and_the_flag_overrides_it() {
    let mut server = TestServer::start(&config("format = \"json\""));
    allocation_cycle(&server, "cfg-json", 0);
    server.stop(Signal::Int);
    let lines = json_lines(&server.stderr_text());
    event(&lines, "allocation created");

    let mut server =
        TestServer::start_with_args(&config("format = \"json\""), &["--log-format", "text"]);
    server.stop(Signal::Int);
    let text = server.stderr_text();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "--log-format text wins over the config: {text}"
    );
    assert!(text.contains("starting turnpike"), "{text}");
}

#[test]
fn redact_client_ips_hides_the_client_address() {
    let mut server = TestServer::start(&config("format = \"json\"\nredact_client_ips = true"));
    let (client, username, _) = allocation_cycle(&server, "private", 0);
    server.stop(Signal::Int);
    let text = server.stderr_text();
    let lines = json_lines(&text);
    for message in ["allocation created", "allocation ended"] {
        let e = event(&lines, message);
        assert_eq!(e["client"], "127.0.0.0/24", "{message}");
        assert_eq!(e["user"], username.as_str(), "{message}");
    }
    assert!(
        !text.contains(&client),
        "{client} appears in the logs:\n{text}"
    );
}

#[test]
fn redaction_can_be_switched_on_by_reload() {
    let mut server = TestServer::start(&config("format = \"json\""));
    let (before, _, _) = allocation_cycle(&server, "before", 0);
    std::fs::write(
        server.config_path(),
        config("format = \"json\"\nredact_client_ips = true"),
    )
    .unwrap();
    let r = post_auth(server.http_addr(), "/api/v1/reload", KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let (after, _, _) = allocation_cycle(&server, "after", 1);
    server.stop(Signal::Int);
    let text = server.stderr_text();
    assert!(text.contains(&before), "not redacted before the reload");
    assert!(
        !text.contains(&after),
        "{after} appears after the reload:\n{text}"
    );
    let lines = json_lines(&text);
    let redacted = lines
        .iter()
        .filter(|v| v["fields"]["client"] == "127.0.0.0/24")
        .count();
    assert_eq!(redacted, 2, "created and ended of the second allocation");
}

/// Regression: allocation events were written by the shard's timer, up
/// to a second after the fact, so log order and timestamps did not
/// follow what happened. The created (and ended) lines must be on stderr
/// before the response that created (or ended) the allocation is sent:
/// a line the main thread logs right after must come later.
#[test]
fn allocation_events_are_logged_before_the_response() {
    let server = TestServer::start(&config("format = \"json\""));
    let good = std::fs::read_to_string(server.config_path()).unwrap();
    // Reloading a broken file logs from the main thread only (nothing
    // reaches the shards).
    let marker = |n: usize| {
        std::fs::write(server.config_path(), "not toml [").unwrap();
        let r = post_auth(server.http_addr(), "/api/v1/reload", KEY);
        assert_eq!(r.status, 422);
        wait_stderr(&server, "reload by API failed", n);
    };
    let creds = Credentials::rest(SECRET, "ordered", unix_now() + 3600);
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    c.allocate(creds).unwrap();
    marker(1);
    assert_eq!(c.refresh(Some(0)), 200);
    marker(2);
    std::fs::write(server.config_path(), good).unwrap();
    let lines = json_lines(&server.stderr_text());
    let pos = |message: &str, n: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .nth(n)
            .unwrap_or_else(|| panic!("no {message:?} #{n} in {lines:#?}"))
            .0
    };
    assert!(
        pos("allocation created", 0) < pos("reload by API failed", 0),
        "{lines:#?}"
    );
    assert!(
        pos("allocation ended", 0) < pos("reload by API failed", 1),
        "{lines:#?}"
    );
}

/// `--log-format json` holds for the error that ends the process too:
/// a start-up failure (a port in use, a broken config file) is one more
/// JSON line, not a plain-text one.
#[test]
fn start_up_errors_are_json_with_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    // A UDP port another socket holds.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port_in_use = dir.path().join("in-use.toml");
    std::fs::write(
        &port_in_use,
        format!(
            "[[listen]]\ntransport = \"udp\"\naddr = \"{}\"\n[auth]\nsecrets = [\"{SECRET}\"]\n[http]\naddr = \"\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[listen]]\ntransport = \"udp\"\naddr = \n").unwrap();
    for (file, why) in [(&port_in_use, "cannot bind"), (&broken, "line 3")] {
        let (status, _, err) = run_turnpike(&[
            "--log-format",
            "json",
            "serve",
            "--config",
            file.to_str().unwrap(),
        ]);
        assert!(!status.success(), "{err}");
        let lines = json_lines(&err);
        let errors: Vec<_> = lines.iter().filter(|v| v["level"] == "ERROR").collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].to_string().contains(why), "{err}");
        assert!(
            errors[0].to_string().contains(file.to_str().unwrap()),
            "names the file: {err}"
        );
    }
}

/// Issue 12: a username with a newline and ESC cannot forge a log line or
/// drive a terminal in the text format: it is logged escaped.
#[test]
fn a_username_cannot_forge_a_log_line() {
    let mut server = TestServer::start(&config(""));
    let forged = "2026-12-04T00:00:00.000000Z  INFO turnpike: forged by eve";
    let user = format!("eve\n{forged}\x1b[2J\x1b]0;pwned\x07");
    let (_, username, _) = allocation_cycle(&server, &user, 0);
    let status = server.stop(Signal::Int);
    assert!(status.success(), "{status}");
    let text = server.stderr_text();
    assert!(
        !text.lines().any(|l| l.starts_with(forged)),
        "a forged line:\n{text}"
    );
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    let escaped = username
        .replace('\n', "\\n")
        .replace('\x1b', "\\u{1b}")
        .replace('\x07', "\\u{7}");
    for what in ["allocation created", "allocation ended"] {
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line:\n{text}"));
        assert!(line.contains(&escaped), "{line}\nwants {escaped}");
    }
}

/// Issue 12: `policy.allow_peers` entries that open loopback, the cloud
/// metadata address or everything (a /0) are warned about at start, each
/// line naming its key; a private range that is none of these is not.
#[test]
fn dangerous_allow_peers_entries_are_warned_about_at_start() {
    let text = config("format = \"json\"").replace(
        "[auth]",
        "[policy]\nallow_peers = [\"10.0.0.0/8\", \"127.0.0.1/32\", \"169.254.169.254/32\", \"::/0\"]\n\n[auth]",
    );
    let server = TestServer::start(&text);
    server.wait_for_line(
        &["dangerous peer policy", "policy.allow_peers[3]"],
        std::time::Duration::from_secs(5),
    );
    let lines = json_lines(&server.stderr_text());
    let keys: Vec<&str> = lines
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("dangerous peer policy"))
        })
        .map(|v| {
            assert_eq!(v["level"], "WARN", "{v}");
            v["fields"]["key"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        keys,
        [
            "policy.allow_peers[1]",
            "policy.allow_peers[2]",
            "policy.allow_peers[3]"
        ]
    );
}
