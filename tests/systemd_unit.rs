//! systemd/turnpike.service: `systemd-analyze verify` accepts it, and it
//! carries the settings operations rely on.

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
