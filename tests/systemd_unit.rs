//! systemd/turnpike.service: `systemd-analyze verify` accepts it, and it
//! carries the settings operations rely on.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

use std::process::Command;

const UNIT: &str = include_str!("../systemd/turnpike.service");

fn directive(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .collect()
}

#[test]
fn unit_has_the_operational_settings() {
    assert_eq!(directive("Type"), ["notify"]);
    assert_eq!(directive("DynamicUser"), ["yes"]);
    assert_eq!(directive("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(directive("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(directive("ProtectSystem"), ["strict"]);
    assert_eq!(directive("ProtectHome"), ["yes"]);
    assert_eq!(directive("PrivateTmp"), ["yes"]);
    assert_eq!(directive("NoNewPrivileges"), ["yes"]);
    assert_eq!(
        directive("RestrictAddressFamilies"),
        ["AF_INET AF_INET6 AF_UNIX"]
    );
    // Enough descriptors for a full relay range of both families.
    let nofile: u64 = directive("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 2 * 16384 + 1024, "LimitNOFILE {nofile}");
    // TimeoutStopSec above the default drain deadline (5 min).
    let stop: u64 = directive("TimeoutStopSec")[0].parse().unwrap();
    let drain = turnpike::config::Config::embedded()
        .http
        .drain_deadline
        .0
        .as_secs();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} <= drain deadline {drain}"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!(
            "systemd-analyze is missing: install systemd (apt-get install systemd); scripts/test.sh does this"
        );
    };
    assert!(out.status.success());
    // verify checks that ExecStart exists; point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("turnpike.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/turnpike", env!("CARGO_BIN_EXE_turnpike")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("turnpike.service:"),
        "verify printed warnings about the unit:\n{stderr}"
    );
}

/// The server tells systemd it is ready once its listeners are bound
/// (Type=notify), and that it is stopping on SIGTERM.
#[test]
fn sd_notify_ready_and_stopping() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n[auth]\nsecrets = [\"s\"]\n[http]\naddr = \"\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready comes after the listeners are bound: the listening line is
    // already on stdout.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening udp 127.0.0.1:"), "{line}");
    turnpike_sys::process::kill(child.id() as i32, libc::SIGTERM).unwrap();
    let mut seen = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        let stop = m == "STOPPING=1";
        seen.push(m);
        if stop {
            break;
        }
    }
    assert!(seen.contains(&"STOPPING=1".to_string()), "{seen:?}");
    assert!(child.wait().unwrap().success());
}
