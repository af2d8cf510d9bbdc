//! The built binary refuses bad configurations: it exits non-zero without
//! listening, and stderr names the file, the key and a fix. `config check`
//! prints an effective config that parses again, and `--version` works.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;

use common::*;
use turnpike::config::{Config, EMBEDDED_DEFAULT};

/// Write `toml` into a temp dir and return (dir, path as string).
fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

/// Run `serve` and `config check` on `toml`; both must fail, print no
/// listener, and say FILE, every `needles` string and "Fix:" on stderr.
/// Returns the `serve` stderr.
fn refused(toml: &str, needles: &[&str]) -> String {
    let (_dir, path) = config_file(toml);
    let (status, out, err) = run_turnpike(&["serve", "--config", &path]);
    check_refusal("serve", status, &out, &err, &path, needles);
    // Bind errors can only show up when binding; everything else is
    // caught by `config check` too.
    if !needles.iter().any(|n| n.contains("cannot bind")) {
        let (status, out, err) = run_turnpike(&["config", "check", &path]);
        check_refusal("config check", status, &out, &err, &path, needles);
    }
    err
}

fn check_refusal(
    what: &str,
    status: std::process::ExitStatus,
    out: &str,
    err: &str,
    path: &str,
    needles: &[&str],
) {
    println!("{what} {path}: {status}\n{err}");
    assert!(
        !status.success(),
        "{what} accepted a bad config; stderr:\n{err}"
    );
    assert!(
        status.code().is_some(),
        "{what} died by a signal ({status}); stderr:\n{err}"
    );
    assert!(
        !out.contains("listening"),
        "{what} printed a listener for a bad config:\n{out}"
    );
    for n in [path, "Fix:"].iter().chain(needles) {
        assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn unknown_key() {
    refused(
        "[server]\nrealm = \"example.org\"\nrealmm = \"typo\"\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n",
        &["line 3", "realmm", "unknown field"],
    );
}

#[test]
fn unknown_key_in_listen() {
    refused(
        "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\nport = 3478\n",
        &["line 4", "`port`"],
    );
}

#[test]
fn bad_address() {
    refused(
        "[[listen]]\ntransport = \"udp\"\naddr = \"1.2.3:99\"\n",
        &["line 3", "addr = \"1.2.3:99\"", "invalid socket address"],
    );
}

#[test]
fn bad_transport() {
    refused(
        "[[listen]]\ntransport = \"sctp\"\naddr = \"127.0.0.1:0\"\n",
        &["line 2", "transport", "sctp"],
    );
}

#[test]
fn missing_cert_file_for_tls() {
    let cert = self_signed_cert();
    refused(
        &format!(
            "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\n\
             cert = \"/nonexistent/turnpike-test/cert.pem\"\nkey = {}\n",
            cert.key_toml()
        ),
        &["listen[0].cert", "/nonexistent/turnpike-test/cert.pem"],
    );
}

#[test]
fn missing_key_setting_for_tls() {
    let cert = self_signed_cert();
    refused(
        &format!(
            "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
             [[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\n",
            cert.cert_toml()
        ),
        &["listen[1].key", "missing for a tls listener"],
    );
}

#[test]
fn cert_file_that_is_not_pem() {
    let cert = self_signed_cert();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let (_d, path) = config_file(&format!(
        "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n",
        toml_str(&junk),
        cert.key_toml()
    ));
    // Only loading the PEM finds this, so only `serve` refuses it.
    let (status, out, err) = run_turnpike(&["serve", "--config", &path]);
    check_refusal(
        "serve",
        status,
        &out,
        &err,
        &path,
        &["listen[0]", "no PEM certificate", junk.to_str().unwrap()],
    );
}

#[test]
fn udp_port_already_bound() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = refused(
        &format!(
            "[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
             [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:{port}\"\n"
        ),
        &[
            "listen[1].addr",
            &format!("udp 127.0.0.1:{port}"),
            "cannot bind",
            "another process holds this port",
        ],
    );
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
    drop(holder);
}

#[test]
fn tcp_port_already_bound() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    refused(
        &format!("[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:{port}\"\n"),
        &[
            "listen[0].addr",
            "cannot bind",
            "another process holds this port",
        ],
    );
}

#[test]
fn duplicate_listeners() {
    refused(
        "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:3478\"\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:3478\"\n",
        &["listen[1].addr", "conflicts with listen[0]"],
    );
}

#[test]
fn wildcard_and_specific_address_on_one_port() {
    refused(
        "[[listen]]\ntransport = \"tcp\"\naddr = \"0.0.0.0:5349\"\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:5349\"\n\
         [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:5349\"\n",
        &["listen[2].addr", "conflicts with listen[0]"],
    );
}

#[test]
fn no_listeners() {
    refused(
        "[server]\nrealm = \"example.org\"\n",
        &["listen", "no [[listen]] entries"],
    );
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let path = path.to_str().unwrap();
    for args in [
        vec!["serve", "--config", path],
        vec!["config", "check", path],
    ] {
        let (status, out, err) = run_turnpike(&args);
        check_refusal(&args.join(" "), status, &out, &err, path, &["cannot read"]);
    }
}

/// `config check` on a valid file: exit 0, the effective config on stdout
/// parses again to the same configuration, and "OK" on stderr.
fn check_ok(path: &Path) -> Config {
    let p = path.to_str().unwrap();
    let (status, out, err) = run_turnpike(&["config", "check", p]);
    assert!(status.success(), "config check {p}: {status}\n{err}");
    assert!(err.contains(&format!("{p}: OK")), "stderr:\n{err}");
    let original = Config::load(path).unwrap();
    let again = Config::parse(&out, "config check output")
        .unwrap_or_else(|e| panic!("config check output does not parse: {e}\n{out}"));
    assert_eq!(again, original, "effective config differs:\n{out}");
    again
}

#[test]
fn config_check_embedded_default_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.toml");
    std::fs::write(&path, EMBEDDED_DEFAULT).unwrap();
    let c = check_ok(&path);
    assert_eq!(c.listen.len(), 4);
    // Defaults are filled in.
    assert_eq!(c.server.software, default_software());
}

#[test]
fn config_check_full_example_round_trips() {
    let cert = self_signed_cert();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.toml");
    std::fs::write(
        &path,
        format!(
            "# every key\n[server]\nrealm = \"example.org\"\nsoftware = \"\"\nthreads = 3\n\
             [[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n\
             [[listen]]\ntransport = \"tcp\"\naddr = \"[::]:3478\"\n\
             [[listen]]\ntransport = \"tls\"\naddr = \"0.0.0.0:5349\"\ncert = {}\nkey = {}\n",
            cert.cert_toml(),
            cert.key_toml()
        ),
    )
    .unwrap();
    let c = check_ok(&path);
    assert_eq!(c.server.realm, "example.org");
    assert_eq!(c.server.software, "");
    assert_eq!(c.server.threads, 3);
    assert_eq!(c.listen[2].cert.as_deref(), Some(cert.cert_path.as_path()));
}

/// Every example config shipped in conf/ passes `config check` and round
/// trips. (None is shipped yet; this covers them as soon as one is.)
#[test]
fn config_check_shipped_examples() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    if let Ok(entries) = std::fs::read_dir(&conf) {
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                check_ok(&p);
                checked += 1;
            }
        }
    }
    println!("checked {checked} example config(s) in {}", conf.display());
}

#[test]
fn version() {
    let (status, out, err) = run_turnpike(&["--version"]);
    assert!(status.success(), "{status}\n{err}");
    assert_eq!(
        out.trim(),
        format!("turnpike {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A secret, key or password on a line the parser refuses never reaches
/// stderr (`serve` in both log formats, `config check`): the line is named
/// by its key path instead of quoted, and the value the parser quotes is
/// masked.
#[test]
fn a_secret_in_a_bad_line_is_never_echoed() {
    const S: &str = "Zq8-secret-value-3141";
    let listen = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n";
    let cases = [
        (format!("[auth]\nsecrets = \"{S}\"\n"), "auth.secrets"),
        (format!("[auth]\nsecrets = [\"{S}\"\n"), "auth.secrets"),
        (
            format!("[auth]\nsecrets = [\n  \"another\",\n  \"{S}\" \"x\",\n]\n"),
            "auth.secrets",
        ),
        (
            format!("[auth]\nusers = {{ alice = \"{S}\" x }}\n"),
            "auth.users",
        ),
        (format!("[auth.users]\nbob = \"{S}\"x\n"), "auth.users"),
        (
            format!("[http]\napi_keys = [\"{S}\", 7]\n"),
            "http.api_keys",
        ),
        (format!("[http]\nadmin_keys = \"{S}\"\n"), "http.admin_keys"),
        (format!("[auth]\n{S}\n"), "auth"),
    ];
    for (bad, key) in cases {
        let (_dir, path) = config_file(&format!("{listen}{bad}"));
        for args in [
            vec!["serve", "--config", &path],
            vec!["--log-format", "json", "serve", "--config", &path],
            vec!["config", "check", &path],
        ] {
            let (status, out, err) = run_turnpike(&args);
            check_refusal(
                &args.join(" "),
                status,
                &out,
                &err,
                &path,
                &["line ", &format!("`{key}`"), "not shown"],
            );
            assert!(
                !err.contains(S) && !out.contains(S),
                "{args:?} echoed the secret of {bad:?}:\n{err}"
            );
        }
    }
}

/// The credentials earlier samples shipped (`secrets = ["change-me"]`,
/// `alice = "change-me-too"`) and the README's placeholders are refused
/// at start, naming the key and the fix, and never echoed.
#[test]
fn shipped_placeholders_are_refused() {
    let listen = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n";
    for (auth, key) in [
        ("[auth]\nsecrets = [\"change-me\"]\n", "auth.secrets[0]"),
        (
            "[auth]\nsecrets = [\"a-real-secret-1\"]\nusers = { alice = \"change-me-too\" }\n",
            "auth.users.alice",
        ),
        ("[auth]\nsecrets = [\"SECRET\"]\n", "auth.secrets[0]"),
        (
            "[auth]\nsecrets = [\"a-real-secret-1\"]\n[http]\napi_keys = [\"change-me-key\"]\n",
            "http.api_keys[0]",
        ),
    ] {
        let err = refused(
            &format!("{listen}{auth}"),
            &[key, "placeholder", "openssl rand"],
        );
        assert!(!err.contains("change-me"), "never the value:\n{err}");
    }
}

/// conf/turnpike.toml ships no credential: `[auth] secrets` and `users`
/// (and the HTTP keys) are commented out.
#[test]
fn the_sample_ships_no_credentials() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/turnpike.toml");
    let c = Config::load(&path).unwrap();
    assert!(c.auth.is_empty(), "{:?}", c.auth);
    assert!(c.http.api_keys.is_empty() && c.http.admin_keys.is_empty());
    let text = std::fs::read_to_string(&path).unwrap();
    for key in ["secrets", "users", "api_keys", "admin_keys"] {
        assert!(
            text.lines()
                .all(|l| !l.trim_start().starts_with(&format!("{key} ="))),
            "{key} is set in the sample"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("# {key} ="))),
            "{key} is documented (commented out) in the sample"
        );
    }
}

/// `[limits]` of the unauthenticated rate limit: defaults, and the values
/// refused (issue 12 item 1).
#[test]
fn unauthenticated_rate_limit_keys() {
    let d = turnpike::config::Config::embedded().limits;
    assert_eq!(
        (d.unauth_rate, d.unauth_burst, d.rate_limit_slots),
        (1000, 2000, 4096)
    );
    let base = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n[limits]\n";
    refused(
        &format!("{base}unauth_burst = 0\n"),
        &["limits.unauth_burst", "unauth_rate = 0"],
    );
    refused(
        &format!("{base}rate_limit_slots = 0\n"),
        &["limits.rate_limit_slots", "out of range"],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off.toml");
    std::fs::write(
        &path,
        format!("{base}unauth_rate = 0\nunauth_burst = 0\nrate_limit_slots = 64\n"),
    )
    .unwrap();
    let c = check_ok(&path);
    assert_eq!(c.limits.unauth_rate, 0, "0 turns the limit off");
    assert_eq!(c.limits.rate_limit_slots, 64);
}

/// Issue 15: `[fastpath]`.
#[test]
fn fastpath_section() {
    let base = "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n[fastpath]\n";
    refused(
        &format!("{base}mode = \"xdp\"\n"),
        &["fastpath.interfaces", "needs the interfaces"],
    );
    refused(
        &format!("{base}mode = \"auto\"\ninterfaces = [\"eth0\", \"eth0\"]\n"),
        &["fastpath.interfaces[1]", "listed twice"],
    );
    refused(
        &format!("{base}mode = \"auto\"\ninterfaces = [\"a-name-longer-than-15\"]\n"),
        &["fastpath.interfaces[0]", "not an interface name"],
    );
    refused(
        &format!("{base}mode = \"fast\"\n"),
        &["line 5", "mode", "fast"],
    );
}
