//! Reloading the configuration of the built binary (SIGHUP and
//! `POST /api/v1/reload`) while clients are connected: secret rotation,
//! broken files, TLS certificates, peer policy, HTTP keys and CORS.
//!
//! Relay ports 46000-46499.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::sync::Arc;

use common::ops::*;
use common::*;
use turnpike_proto::client::Credentials;

const OLD: &str = "old-secret-1";
const NEW: &str = "new-secret-2";
const KEY: &str = "reload-admin-key-1";
/// The admin key (reload); `KEY` is the API key.
const ADMIN: &str = "reload-operator-key-1";

/// UDP and TCP (plus `more`) on 127.0.0.1, the given secrets and
/// allow_peers, the HTTP API with `http` added.
fn config(secrets: &[&str], allow: &[&str], http: &str, more: &str) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[server]
realm = "reload.test"

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"

{more}

[relay]
bind_ip = "127.0.0.1"
ports = "46000-46499"

[auth]
secrets = [{secrets}]

[policy]
allow_peers = [{allow}]

[http]
addr = "127.0.0.1:0"
api_keys = ["{KEY}"]
admin_keys = ["{ADMIN}"]
{http}
"#,
        secrets = list(secrets),
        allow = list(allow),
    )
}

fn rest(secret: &str, user: &str) -> Credentials {
    Credentials::rest(secret, user, unix_now() + 3600)
}

/// Rewrite the server's config file.
fn rewrite(server: &TestServer, text: &str) {
    std::fs::write(server.config_path(), text).expect("rewrite config");
}

/// SIGHUP, then wait until the log says the `n`th reload (of this
/// server's life) succeeded.
fn sighup_reload(server: &TestServer, n: usize) {
    send_signal(server, libc::SIGHUP);
    wait_stderr(server, "reloaded on SIGHUP", n);
    assert_eq!(
        stderr_count(server, "reload on SIGHUP failed"),
        0,
        "{}",
        server.stderr_text()
    );
}

/// POST /api/v1/reload, which must succeed; its notes.
fn api_reload(server: &TestServer) -> serde_json::Value {
    let r = post_auth(server.http_addr(), "/api/v1/reload", ADMIN);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["reloaded"], true, "{j}");
    j["notes"].clone()
}

/// A client with an allocation, a channel to `peer` and traffic both ways.
fn relaying_client(server: &TestServer, secret: &str, peer: &std::net::UdpSocket) -> TurnClient {
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    c.allocate(rest(secret, "live")).expect("allocate");
    assert_eq!(c.channel_bind(0x4000, peer.local_addr().unwrap()), 200);
    relay_both_ways(&mut c, 0x4000, peer, "before reload");
    c
}

/// Rotation in two reloads, checked with fresh clients each time: first
/// both secrets (the new one signs, the old one still verifies: live
/// allocations of the old one keep relaying), then the new one alone: the
/// allocations made with the old secret end at once (issue 12), those made
/// with the new one keep relaying.
fn check_rotation(server: &TestServer, reload: &dyn Fn(usize)) {
    let udp = server.addr(Transport::Udp, false);
    let peer = udp_peer();
    let mut live_old = relaying_client(server, OLD, &peer);

    // Both: the new one first (it signs), the old one still verifies.
    rewrite(server, &config(&[NEW, OLD], &["127.0.0.1/32"], "", ""));
    reload(1);
    relay_both_ways(&mut live_old, 0x4000, &peer, "after the first reload");
    assert_eq!(
        live_old.refresh(Some(600)),
        200,
        "the live allocation refreshes"
    );
    let peer_new = udp_peer();
    let mut live_new = relaying_client(server, NEW, &peer_new);
    assert!(
        TurnClient::udp(udp)
            .allocate(rest(OLD, "old-again"))
            .is_ok()
    );
    // The API mints with the new secret.
    let r = get_auth(
        server.http_addr(),
        "/api/v1/credentials?username=minted",
        KEY,
    );
    let m = Minted::parse(&r.json());
    assert_eq!(
        m.password,
        turnpike_proto::core::auth::rest_password(NEW, &m.username)
    );
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());

    // Only the new secret: the old one's allocations end.
    rewrite(server, &config(&[NEW], &["127.0.0.1/32"], "", ""));
    reload(2);
    server.wait_for_line(
        &["allocation ended", "credential_revoked"],
        std::time::Duration::from_secs(5),
    );
    assert_eq!(
        live_old.refresh(Some(600)),
        401,
        "the old secret's allocation is gone and its key verifies nothing"
    );
    relay_both_ways(&mut live_new, 0x4000, &peer_new, "after rotation");
    assert_eq!(live_new.refresh(Some(600)), 200);
    assert_eq!(
        TurnClient::udp(udp).allocate(rest(OLD, "late")),
        Err(401),
        "the old secret no longer verifies"
    );
    assert!(TurnClient::udp(udp).allocate(rest(NEW, "new")).is_ok());

    let m = scrape(server.http_addr());
    assert_eq!(
        m.value(
            "turnpike_auth_failures_total",
            &[("reason", "bad_integrity")]
        ),
        2.0,
        "the refused Refresh and the refused Allocate"
    );
    assert_eq!(
        m.value(
            "turnpike_allocations_deleted_total",
            &[("reason", "credential_revoked")]
        ),
        2.0,
        "the live client's and the old-again client's allocations"
    );
}

#[test]
fn sighup_rotates_the_secret_while_a_live_allocation_keeps_relaying() {
    let server = TestServer::start(&config(&[OLD], &["127.0.0.1/32"], "", ""));
    check_rotation(&server, &|n| sighup_reload(&server, n));
}

#[test]
fn api_reload_rotates_the_secret_too() {
    let server = TestServer::start(&config(&[OLD], &["127.0.0.1/32"], "", ""));
    check_rotation(&server, &|_| {
        let notes = api_reload(&server);
        assert_eq!(notes, serde_json::json!([]), "nothing needs a restart");
    });
    // stderr is collected by another thread: wait for the line (bounded).
    server.wait_for_line(&["reloaded by API"], std::time::Duration::from_secs(5));
}

#[test]
fn broken_files_keep_the_running_configuration() {
    let server = TestServer::start(&config(&[OLD], &["127.0.0.1/32"], "", ""));
    let udp = server.addr(Transport::Udp, false);
    let path = server.config_path().display().to_string();
    let mut live = TurnClient::udp(udp);
    live.allocate(rest(OLD, "live")).unwrap();

    let cases = [
        // A TOML syntax error (with the new secret, which must not apply).
        (
            config(&[NEW], &["127.0.0.1/32"], "", "").replace("[relay]", "[relay"),
            "line",
        ),
        // A policy CIDR typo (host bits set).
        (
            config(&[NEW], &["127.0.0.1/32", "10.1.2.3/8"], "", ""),
            "policy.allow_peers[1]",
        ),
        // A TLS listener whose certificate file does not exist.
        (
            config(
                &[NEW],
                &["127.0.0.1/32"],
                "",
                "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\n\
                 cert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            ),
            "listen[2].cert",
        ),
    ];
    for (i, (text, why)) in cases.iter().enumerate() {
        rewrite(&server, text);
        // The API answers 422 with the reason.
        let r = post_auth(server.http_addr(), "/api/v1/reload", ADMIN);
        assert_eq!(r.status, 422, "case {i}: {}", r.text());
        let j = r.json();
        assert_eq!(j["reloaded"], false);
        assert_eq!(j["error"], "bad_config");
        let msg = j["message"].as_str().unwrap();
        assert!(msg.contains(&path), "case {i}: names the file: {msg}");
        assert!(msg.contains(why), "case {i}: says why ({why}): {msg}");
        // stderr says why too.
        wait_stderr(&server, "reload by API failed", i + 1);
        assert!(server.stderr_text().contains(why));
        // SIGHUP with the same file: refused and logged.
        send_signal(&server, libc::SIGHUP);
        wait_stderr(&server, "reload on SIGHUP failed", i + 1);
        // The old secret and policy are still in force.
        assert!(
            TurnClient::udp(udp).allocate(rest(OLD, "still")).is_ok(),
            "case {i}"
        );
        assert_eq!(
            TurnClient::udp(udp).allocate(rest(NEW, "not-yet")),
            Err(401),
            "case {i}"
        );
        let peer = udp_peer();
        assert_eq!(
            live.create_permission(&[peer.local_addr().unwrap()]),
            200,
            "case {i}"
        );
    }
    assert_eq!(stderr_count(&server, "reloaded on SIGHUP"), 0);
    assert_eq!(live.refresh(Some(600)), 200);
}

/// A rustls client config that trusts both certificates. Each call makes
/// a new one, so a connection never resumes an earlier TLS session (a
/// resumed session shows the certificate it was first made with).
fn trust_both(a: &TestCert, b: &TestCert) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.cert_der.clone()).unwrap();
    roots.add(b.cert_der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn tls_certificate_is_replaced_on_reload_and_old_connections_keep_working() {
    let first = self_signed_cert();
    let second = self_signed_cert();
    assert_ne!(first.cert_der, second.cert_der);
    let tls_listener = format!(
        "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n",
        first.cert_toml(),
        first.key_toml()
    );
    let text = config(&[OLD], &["127.0.0.1/32"], "", &tls_listener);
    let server = TestServer::start(&text);
    let tls = server.addr(Transport::Tls, false);
    let trust = || trust_both(&first, &second);

    let mut old_conn = TurnClient::tls(tls, trust());
    assert_eq!(old_conn.peer_leaf(), first.cert_der.to_vec());
    old_conn.allocate(rest(OLD, "tls")).expect("TLS allocate");
    let peer = udp_peer();
    assert_eq!(
        old_conn.channel_bind(0x4000, peer.local_addr().unwrap()),
        200
    );
    relay_both_ways(&mut old_conn, 0x4000, &peer, "before");

    // Replace the files the config points at, then reload.
    std::fs::copy(&second.cert_path, &first.cert_path).unwrap();
    std::fs::copy(&second.key_path, &first.key_path).unwrap();
    assert_eq!(api_reload(&server), serde_json::json!([]));

    let mut new_conn = TurnClient::tls(tls, trust());
    assert_eq!(
        new_conn.peer_leaf(),
        second.cert_der.to_vec(),
        "a new connection sees the new certificate"
    );
    assert_eq!(new_conn.binding(), new_conn.local_addr());
    assert!(new_conn.allocate(rest(OLD, "tls-new")).is_ok());
    // The old connection keeps its session and its allocation.
    assert_eq!(old_conn.peer_leaf(), first.cert_der.to_vec());
    assert_eq!(old_conn.refresh(Some(600)), 200);
    relay_both_ways(&mut old_conn, 0x4000, &peer, "after");

    // A certificate and key that do not belong together: refused, and
    // the current certificate stays.
    let third = self_signed_cert();
    std::fs::copy(&third.key_path, &first.key_path).unwrap();
    let r = post_auth(server.http_addr(), "/api/v1/reload", ADMIN);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("listen[2]"));
    let after = TurnClient::tls(tls, trust());
    assert_eq!(after.peer_leaf(), second.cert_der.to_vec());
}

#[test]
fn peer_policy_changes_apply_on_reload() {
    let server = TestServer::start(&config(&[OLD], &[], "", ""));
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    c.allocate(rest(OLD, "policy")).unwrap();
    let peer = udp_peer();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        c.create_permission(&[peer_addr]),
        403,
        "loopback is refused by default"
    );
    assert_eq!(c.channel_bind(0x4000, peer_addr), 403);

    rewrite(&server, &config(&[OLD], &["127.0.0.1/32"], "", ""));
    sighup_reload(&server, 1);
    assert_eq!(
        c.create_permission(&[peer_addr]),
        200,
        "allowed after reload"
    );
    assert_eq!(c.channel_bind(0x4000, peer_addr), 200);
    relay_both_ways(&mut c, 0x4000, &peer, "allowed");

    // And closed again.
    rewrite(&server, &config(&[OLD], &[], "", ""));
    api_reload(&server);
    let other = udp_peer();
    assert_eq!(c.create_permission(&[other.local_addr().unwrap()]), 403);
}

#[test]
fn http_keys_ttl_and_cors_apply_on_reload() {
    const NEW_KEY: &str = "reload-admin-key-2";
    const APP: &str = "https://app.example.test";
    let server = TestServer::start(&config(&[OLD], &[], "", ""));
    let h = server.http_addr();
    let cred = |key: &str| {
        http(
            h,
            "GET",
            "/api/v1/credentials?username=u&ttl=999999",
            &[("Authorization", &format!("Bearer {key}")), ("Origin", APP)],
            b"",
        )
    };
    let r = cred(KEY);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    let text = config(&[OLD], &[], "", "")
        .replace(
            &format!("api_keys = [\"{KEY}\"]"),
            &format!("api_keys = [\"{NEW_KEY}\"]"),
        )
        .replace(
            "[http]\n",
            &format!("[http]\ncredential_ttl = \"2h\"\ncors_origins = [\"{APP}\"]\n"),
        );
    rewrite(&server, &text);
    let notes = api_reload(&server);
    assert!(
        notes.to_string().contains("http"),
        "the HTTP note says what applies now: {notes}"
    );
    assert_eq!(cred(KEY).status, 401, "the old key is gone");
    let r = cred(NEW_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Minted::parse(&r.json()).ttl, 7200, "the new TTL cap");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(APP),
        "the new CORS origin"
    );
    let preflight = http(
        h,
        "OPTIONS",
        "/api/v1/credentials",
        &[
            ("Origin", APP),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    );
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
}

#[test]
fn reload_notes_name_what_needs_a_restart() {
    let server = TestServer::start(&config(&[OLD], &[], "", ""));
    let text = config(&[OLD], &[], "", "")
        .replace("46000-46499", "46000-46099")
        .replace(
            "realm = \"reload.test\"",
            "realm = \"reload.test\"\nthreads = 1",
        );
    rewrite(&server, &text);
    let notes = api_reload(&server).to_string();
    assert!(notes.contains("relay.ports"), "{notes}");
    assert!(notes.contains("server.threads"), "{notes}");
    assert!(!notes.contains("listen"), "{notes}");
    // The running server is unchanged where a restart is needed, and
    // still serves.
    assert!(
        TurnClient::udp(server.addr(Transport::Udp, false))
            .allocate(rest(OLD, "after-notes"))
            .is_ok()
    );
}

#[test]
fn api_mints_with_the_secret_the_server_verifies_until_a_reload() {
    // The secret comes from a file. Rewriting the file changes nothing
    // until a reload, for the TURN side and the API alike: a credential
    // the API mints in between must still be accepted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{OLD}\n")).unwrap();
    let text = config(&[], &[], "", "").replace(
        "secrets = []",
        &format!("secret_files = [{}]", toml_str(&file)),
    );
    let server = TestServer::start(&text);
    let udp = server.addr(Transport::Udp, false);
    let mint = || {
        let r = get_auth(server.http_addr(), "/api/v1/credentials?username=f", KEY);
        assert_eq!(r.status, 200, "{}", r.text());
        Minted::parse(&r.json())
    };
    assert!(TurnClient::udp(udp).allocate(mint().credentials()).is_ok());

    std::fs::write(&file, format!("{NEW}\n")).unwrap();
    let m = mint();
    assert_eq!(
        m.password,
        turnpike_proto::core::auth::rest_password(OLD, &m.username),
        "not reloaded yet: minted with the secret in force"
    );
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());

    sighup_reload(&server, 1);
    let m = mint();
    assert_eq!(
        m.password,
        turnpike_proto::core::auth::rest_password(NEW, &m.username)
    );
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());
    assert_eq!(TurnClient::udp(udp).allocate(rest(OLD, "old")), Err(401));

    // A file that disappears does not stop the API either.
    std::fs::remove_file(&file).unwrap();
    assert!(TurnClient::udp(udp).allocate(mint().credentials()).is_ok());
}

#[test]
fn reload_refuses_a_relay_address_this_host_does_not_have() {
    // At start such an address is refused (every Allocate would fail
    // with 508); a reload must refuse it too and keep relaying.
    let server = TestServer::start(&config(&[OLD], &[], "", ""));
    let text =
        config(&[OLD], &[], "", "").replace("bind_ip = \"127.0.0.1\"", "bind_ip = \"192.0.2.77\"");
    rewrite(&server, &text);
    let r = post_auth(server.http_addr(), "/api/v1/reload", ADMIN);
    assert_eq!(r.status, 422, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("relay.bind_ip"), "{msg}");
    let mut c = TurnClient::udp(server.addr(Transport::Udp, false));
    let relayed = c
        .allocate(rest(OLD, "still-relaying"))
        .expect("the old relay address is still in use");
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
}

#[test]
fn reload_notes_say_log_format_needs_a_restart() {
    let server = TestServer::start(&config(&[OLD], &[], "", ""));
    rewrite(
        &server,
        &format!(
            "{}\n[log]\nformat = \"json\"\n",
            config(&[OLD], &[], "", "")
        ),
    );
    let notes = api_reload(&server).to_string();
    assert!(notes.contains("log.format"), "{notes}");
}
