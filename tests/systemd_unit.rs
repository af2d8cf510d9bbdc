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
    // The static user of systemd/turnpike.sysusers (see the test below).
    assert_eq!(directive("User"), ["turnpike"]);
    assert_eq!(directive("Group"), ["turnpike"]);
    // Where a generated secret goes when stdout is not a terminal.
    assert_eq!(directive("RuntimeDirectory"), ["turnpike"]);
    assert_eq!(directive("RuntimeDirectoryMode"), ["0700"]);
    // The code and the unit agree: an API drain or a drain cut by its
    // deadline exits 75, a failure, which Restart=on-failure restarts.
    assert_eq!(directive("Restart"), ["on-failure"]);
    // A panic aborts the release build (SIGABRT, an unclean exit), which
    // Restart=on-failure restarts too.
    let manifest = include_str!("../Cargo.toml");
    let release = manifest
        .split("[profile.release]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap();
    assert!(
        release.lines().any(|l| l.trim() == "panic = \"abort\""),
        "[profile.release] panic = \"abort\": {release}"
    );
    assert!(
        directive("SuccessExitStatus")
            .iter()
            .all(|v| !v.split_whitespace().any(|c| c == "75")),
        "75 must stay a failure"
    );
    let tasks: u64 = directive("TasksMax")[0].parse().unwrap();
    assert!((64..=4096).contains(&tasks), "TasksMax {tasks}");
    // MemoryMax is guidance (it depends on policy.max_allocations).
    assert!(UNIT.lines().any(|l| l.starts_with("#MemoryMax=")));
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

/// Start `turnpike serve --config CONFIG` the way the unit does: as an
/// unprivileged user whose only capability is CAP_NET_BIND_SERVICE,
/// ambient (setpriv, as root); when the tests do not run as root, as the
/// root of a new user namespace (unshare), which holds every capability
/// there. Returns the child once it printed its first listener.
fn spawn_like_the_unit(config: &std::path::Path) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let bin = env!("CARGO_BIN_EXE_turnpike");
    let mut cmd = if turnpike_sys::process::euid() == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "--",
            bin,
        ]);
        c
    } else {
        let mut c = Command::new("unshare");
        c.args(["--user", "--map-root-user", "--", bin]);
        c
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The first line, then drain the rest (a closed pipe would fail
        // the server's next line).
        let mut lines = BufReader::new(out).lines();
        let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
        lines.for_each(drop);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_default();
    if !line.starts_with("listening") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "turnpike did not start: {line:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// Bit CAP_NET_BIND_SERVICE of `field` (CapEff, CapPrm, CapAmb) in every
/// thread of `pid`: one bool per thread.
fn bind_cap_in_threads(pid: u32, field: &str) -> Vec<bool> {
    let bit = 1u64 << turnpike_sys::caps::CAP_NET_BIND_SERVICE;
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .unwrap()
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).unwrap() & bit != 0
        })
        .collect()
}

/// The unit grants CAP_NET_BIND_SERVICE; the server gives it up for good,
/// in every thread, when no port it will ever bind is below 1024, and
/// keeps it when one is (a relay range below 1024, bound as allocations
/// come, keeps it so that the process can still bind those ports).
#[test]
fn the_bind_capability_is_dropped_unless_a_port_below_1024_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    for (relay, kept) in [("49152-65535", false), ("1000-1023", true)] {
        let cfg = dir.path().join(format!("caps-{kept}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
                 [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
                 [relay]\nbind_ip = \"127.0.0.1\"\nports = \"{relay}\"\n\
                 [auth]\nsecrets = [\"caps-test-secret\"]\n[http]\naddr = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let child = spawn_like_the_unit(&cfg);
        let pid = child.id();
        let eff = bind_cap_in_threads(pid, "CapEff");
        let prm = bind_cap_in_threads(pid, "CapPrm");
        let amb = bind_cap_in_threads(pid, "CapAmb");
        turnpike_sys::process::kill(pid as i32, libc::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(eff.len() > 1, "the server runs threads: {eff:?}");
        if kept {
            assert!(
                eff.iter().all(|b| *b),
                "kept in every thread: {eff:?}\n{stderr}"
            );
            assert!(!stderr.contains("CAP_NET_BIND_SERVICE dropped"), "{stderr}");
        } else {
            for (set, bits) in [("CapEff", &eff), ("CapPrm", &prm), ("CapAmb", &amb)] {
                assert!(
                    bits.iter().all(|b| !*b),
                    "{set} still has it: {bits:?}\n{stderr}"
                );
            }
            assert!(stderr.contains("CAP_NET_BIND_SERVICE dropped"), "{stderr}");
        }
        assert!(out.status.success(), "{}\n{stderr}", out.status);
    }
}

/// Root only (scripts/test.sh runs as root): skip elsewhere, unless the
/// run requires every test (TURNPIKE_NETNS_REQUIRED, as the namespace
/// tests do).
fn needs_root(what: &str) -> bool {
    if turnpike_sys::process::euid() == 0 {
        return true;
    }
    assert!(
        std::env::var_os("TURNPIKE_NETNS_REQUIRED").is_none(),
        "{what} needs root"
    );
    println!("SKIPPED: {what} needs root");
    false
}

/// The unit's user and group are what systemd/turnpike.sysusers creates,
/// and that user can read the config installed as the unit's header (and
/// the README) says, 0640 root:turnpike, where DynamicUser alone could not
/// (a transient user is in no group of the file); with the group left at
/// root it cannot, and the error names the file and the fix.
#[test]
fn the_unit_user_exists_by_sysusers_and_reads_the_installed_config() {
    use std::os::unix::fs::PermissionsExt;
    if !needs_root("chown to the turnpike user") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let sysusers =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/turnpike.sysusers");
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(&sysusers)
        .output()
        .expect("systemd-sysusers (apt-get install systemd; scripts/test.sh does this)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == directive("User")[0])
        .expect("sysusers creates the unit's User=");
    assert!(
        group
            .lines()
            .any(|l| l.split(':').next() == Some(directive("Group")[0])),
        "sysusers creates the unit's Group=:\n{group}"
    );
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), user[3].parse().unwrap());

    // /etc/turnpike/turnpike.toml as installed.
    let etc = tempfile::tempdir().unwrap();
    std::fs::set_permissions(etc.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = etc.path().join("turnpike.toml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/turnpike.toml"),
        &cfg,
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    let check_as_turnpike = || {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_turnpike"),
                "config",
                "check",
            ])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    std::os::unix::fs::chown(&cfg, Some(0), Some(gid)).unwrap();
    let out = check_as_turnpike();
    assert!(
        out.status.success(),
        "the turnpike user cannot read 0640 root:turnpike: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::os::unix::fs::chown(&cfg, Some(0), Some(0)).unwrap();
    let out = check_as_turnpike();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "read a 0640 root:root file as turnpike"
    );
    assert!(
        err.contains("cannot read") && err.contains("Permission denied") && err.contains("Fix:"),
        "{err}"
    );
}

/// The install steps in the unit's header are the README's.
#[test]
fn the_readme_installs_as_the_unit_says() {
    let readme = include_str!("../README.md");
    let steps: Vec<&str> = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| l.split("  #").next().unwrap_or(l).trim())
        .filter(|l| l.starts_with("install ") || l.starts_with("systemd-sysusers"))
        .collect();
    assert!(steps.len() >= 5, "{steps:?}");
    for s in steps {
        assert!(readme.contains(s), "README lacks the install step `{s}`");
    }
}
