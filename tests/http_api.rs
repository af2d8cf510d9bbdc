//! The HTTP API of the built binary over real connections: minting TURN
//! REST credentials (and that they work, and expire, against the TURN
//! listeners), API and admin keys, parameter errors, TTL cap, the draft
//! form, `uris`, CORS, HTTPS, the sessions admin endpoints, the offline
//! `turnpike credentials` command, and the connection cap.
//!
//! Relay ports 45000-45399 (tests/ops_logs.rs has 45400-45499).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use common::ops::*;
use common::*;
use std::time::Duration;
use turnpike_proto::client::Credentials;

const SECRET: &str = "api-test-secret";
const API_KEY: &str = "api-key-0123456789";
const ADMIN_KEY: &str = "admin-key-9876543210";

/// UDP and TCP on 127.0.0.1, relays on 127.0.0.1, loopback peers allowed;
/// `server` goes into [server], `http` into [http], `more` at the end.
fn config(server: &str, http: &str, more: &str) -> String {
    format!(
        r#"
[server]
realm = "api.test"
{server}

[[listen]]
transport = "udp"
addr = "127.0.0.1:0"

[[listen]]
transport = "tcp"
addr = "127.0.0.1:0"

[relay]
bind_ip = "127.0.0.1"
ports = "45000-45399"

[auth]
secrets = ["{SECRET}"]

[policy]
allow_peers = ["127.0.0.1/32"]

[http]
addr = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
{http}

{more}
"#
    )
}

fn mint(server: &TestServer, user: &str) -> Minted {
    let r = get_auth(
        server.http_addr(),
        &format!("/api/v1/credentials?username={user}"),
        API_KEY,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    Minted::parse(&r.json())
}

/// The 400 body must name `parameter`.
fn assert_bad_param(r: &HttpResponse, parameter: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "bad_request", "{j}");
    assert_eq!(j["parameter"], parameter, "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
}

fn assert_unauthorized(r: &HttpResponse) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(
        !r.text().contains(API_KEY) && !r.text().contains(ADMIN_KEY),
        "keys are never echoed"
    );
}

#[test]
fn api_credentials_allocate_over_udp_and_tcp() {
    let server = TestServer::start(&config("", "", ""));
    let before = unix_now();
    // The user name is percent-decoded from the query.
    let r = get_auth(
        server.http_addr(),
        "/api/v1/credentials?username=alice%40example.org",
        API_KEY,
    );
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let m = Minted::parse(&r.json());
    assert_eq!(m.user(), "alice@example.org");
    assert_eq!(m.ttl, 86400, "the default TTL is http.credential_ttl");
    assert!(
        (before + 86400..=after + 86400).contains(&m.expiry()),
        "expiry {} is now + ttl",
        m.expiry()
    );
    assert_eq!(
        m.password,
        turnpike_proto::core::auth::rest_password(SECRET, &m.username),
        "password is base64(HMAC-SHA1(secret, username))"
    );

    for transport in [Transport::Udp, Transport::Tcp] {
        let addr = server.addr(transport, false);
        let mut c = match transport {
            Transport::Udp => TurnClient::udp(addr),
            _ => TurnClient::tcp(addr),
        };
        let relayed = c
            .allocate(m.credentials())
            .unwrap_or_else(|code| panic!("{transport} Allocate with minted credentials: {code}"));
        assert_eq!(relayed.ip().to_string(), "127.0.0.1");
        assert!((45000..=45399).contains(&relayed.port()), "{relayed}");
        assert_eq!(c.refresh(Some(600)), 200, "{transport} Refresh");
    }
}

#[test]
fn expired_or_foreign_credentials_get_401_from_the_turn_server() {
    let server = TestServer::start(&config("", "", ""));
    let udp = server.addr(Transport::Udp, false);
    let now = unix_now();
    // Minted offline, expired a minute ago.
    let expired = Credentials::rest(SECRET, "late", now - 60);
    assert_eq!(TurnClient::udp(udp).allocate(expired), Err(401));
    // A different secret.
    let foreign = Credentials::rest("some-other-secret", "mallory", now + 3600);
    assert_eq!(TurnClient::udp(udp).allocate(foreign), Err(401));
    // The same user with a valid expiry works (so the 401s were about
    // expiry and secret, not the user).
    let fresh = Credentials::rest(SECRET, "late", now + 3600);
    assert!(TurnClient::udp(udp).allocate(fresh).is_ok());
    let m = scrape(server.http_addr());
    assert_eq!(
        m.value(
            "turnpike_auth_failures_total",
            &[("reason", "expired_username")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "turnpike_auth_failures_total",
            &[("reason", "bad_integrity")]
        ),
        1.0
    );
}

#[test]
fn api_keys_are_required_and_checked() {
    let server = TestServer::start(&config("", "", ""));
    let h = server.http_addr();
    let path = "/api/v1/credentials?username=u";
    assert_unauthorized(&get(h, path));
    assert_unauthorized(&get_auth(h, path, "wrong-key-0123456789"));
    assert_unauthorized(&get_auth(h, path, &format!("{API_KEY}x")));
    assert_unauthorized(&get_auth(h, path, &API_KEY[..API_KEY.len() - 1]));
    assert_unauthorized(&get(h, &format!("{path}&key=wrong-key-0123456789")));
    assert_unauthorized(&http(
        h,
        "GET",
        path,
        &[("Authorization", &format!("Basic {API_KEY}"))],
        b"",
    ));
    // The admin endpoints are off without http.admin_keys (issue 12: they
    // used to take the API keys): 404, with a key or without.
    for (method, path) in [
        ("GET", "/api/v1/sessions"),
        ("POST", "/api/v1/drain"),
        ("POST", "/api/v1/reload"),
        ("DELETE", "/api/v1/sessions/1"),
    ] {
        for auth in [vec![], vec![("Authorization", format!("Bearer {API_KEY}"))]] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = http(h, method, path, &headers, b"");
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            assert_eq!(r.json()["error"], "admin_disabled");
        }
    }
    // The right key, either way.
    assert_eq!(get_auth(h, path, API_KEY).status, 200);
    assert_eq!(get(h, &format!("{path}&key={API_KEY}")).status, 200);
    // Unauthenticated endpoints.
    assert_eq!(get(h, "/healthz").status, 200);
    assert_eq!(get(h, "/healthz").json()["status"], "ok");
    assert_eq!(get(h, "/readyz").status, 200);
    assert_eq!(get(h, "/readyz").json()["status"], "ready");
    assert_eq!(get(h, "/metrics").status, 200);
    assert!(
        !server.stderr_text().contains(API_KEY),
        "keys are never logged"
    );
}

#[test]
fn admin_keys_are_separate_from_api_keys() {
    let server = TestServer::start(&config("", &format!("admin_keys = [\"{ADMIN_KEY}\"]"), ""));
    let h = server.http_addr();
    // The API key mints credentials but is not an admin key.
    assert_eq!(
        get_auth(h, "/api/v1/credentials?username=u", API_KEY).status,
        200
    );
    assert_unauthorized(&get_auth(h, "/api/v1/sessions", API_KEY));
    assert_unauthorized(&get(h, &format!("/api/v1/sessions?key={API_KEY}")));
    assert_unauthorized(&delete_auth(h, "/api/v1/sessions/1", API_KEY));
    assert_unauthorized(&post_auth(h, "/api/v1/drain", API_KEY));
    assert_unauthorized(&post_auth(h, "/api/v1/reload", API_KEY));
    assert_eq!(
        get(h, "/readyz").status,
        200,
        "the refused drain did not drain"
    );
    // The admin key is.
    let r = get_auth(h, "/api/v1/sessions", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sessions"], serde_json::json!([]));
    // Only in the Authorization header (issue 12: `key=` is for the
    // credentials route alone).
    assert_unauthorized(&get(h, &format!("/api/v1/sessions?key={ADMIN_KEY}")));
    assert_eq!(
        delete_auth(h, "/api/v1/sessions/1", ADMIN_KEY).status,
        404,
        "authorised, but no such session"
    );

    // Without admin_keys, the API keys are not admin keys either (issue
    // 12: they used to be): the admin routes are off.
    let plain = TestServer::start(&config("", "", ""));
    assert_eq!(
        get_auth(plain.http_addr(), "/api/v1/sessions", API_KEY).status,
        404
    );
}

#[test]
fn bad_parameters_get_400_naming_them() {
    let server = TestServer::start(&config("", "", ""));
    let h = server.http_addr();
    let q = |query: &str| get_auth(h, &format!("/api/v1/credentials?{query}"), API_KEY);
    for ttl in ["abc", "0", "-5", "1.5", "", "99999999999999999999999"] {
        assert_bad_param(&q(&format!("username=u&ttl={ttl}")), "ttl");
    }
    assert_bad_param(&q(""), "username");
    assert_bad_param(&q("ttl=60"), "username");
    assert_bad_param(&q("username="), "username");
    assert_bad_param(&q(&format!("username={}", "x".repeat(129))), "username");
    assert_bad_param(&q("username=a%0Ab"), "username");
    assert_bad_param(&q("service=stun&username=u"), "service");
    assert_bad_param(&q("service=&username=u"), "service");
    // A bad key is reported before bad parameters.
    assert_unauthorized(&get(h, "/api/v1/credentials?service=other"));
}

#[test]
fn ttl_is_capped_by_credential_ttl() {
    let server = TestServer::start(&config("", "credential_ttl = \"1h\"", ""));
    let h = server.http_addr();
    let mint_ttl = |query: &str| {
        let before = unix_now();
        let r = get_auth(h, &format!("/api/v1/credentials?{query}"), API_KEY);
        let after = unix_now();
        assert_eq!(r.status, 200, "{}", r.text());
        let m = Minted::parse(&r.json());
        assert!(
            (before + m.ttl..=after + m.ttl).contains(&m.expiry()),
            "expiry {} matches ttl {}",
            m.expiry(),
            m.ttl
        );
        m.ttl
    };
    assert_eq!(mint_ttl("username=u&ttl=999999"), 3600, "capped");
    assert_eq!(mint_ttl("username=u&ttl=3601"), 3600, "capped");
    assert_eq!(mint_ttl("username=u&ttl=3600"), 3600);
    assert_eq!(mint_ttl("username=u&ttl=60"), 60, "below the cap: as asked");
    assert_eq!(mint_ttl("username=u"), 3600, "default: the cap");
}

#[test]
fn draft_form_mints_working_credentials() {
    let server = TestServer::start(&config("", "", ""));
    let r = get(
        server.http_addr(),
        &format!("/api/v1/credentials?service=turn&username=bob&key={API_KEY}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = Minted::parse(&r.json());
    assert_eq!(m.user(), "bob");
    assert!(
        TurnClient::udp(server.addr(Transport::Udp, false))
            .allocate(m.credentials())
            .is_ok()
    );
}

#[test]
fn uris_reflect_the_enabled_listeners_and_public_host() {
    let cert = self_signed_cert();
    let tls = format!(
        "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"[::1]:0\"\n",
        cert.cert_toml(),
        cert.key_toml()
    );
    // No public_host: the listeners' own addresses.
    let server = TestServer::start(&config("", "", &tls));
    let u = server.addr(Transport::Udp, false).port();
    let t = server.addr(Transport::Tcp, false).port();
    let s = server.addr(Transport::Tls, false).port();
    let u6 = server.addr(Transport::Udp, true).port();
    let m = mint(&server, "u");
    assert_eq!(
        m.uris,
        [
            format!("turn:127.0.0.1:{u}?transport=udp"),
            format!("turn:[::1]:{u6}?transport=udp"),
            format!("turn:127.0.0.1:{t}?transport=tcp"),
            format!("turns:127.0.0.1:{s}?transport=tcp"),
        ]
    );
    assert_eq!(
        m.json["iceServers"][0]["urls"],
        serde_json::json!([format!("stun:127.0.0.1:{u}")])
    );
    assert_eq!(m.json["iceServers"].as_array().unwrap().len(), 2);

    // public_host replaces the host everywhere.
    let server = TestServer::start(&config("public_host = \"turn.example.test\"", "", &tls));
    let u = server.addr(Transport::Udp, false).port();
    let t = server.addr(Transport::Tcp, false).port();
    let s = server.addr(Transport::Tls, false).port();
    let u6 = server.addr(Transport::Udp, true).port();
    let m = mint(&server, "u");
    assert_eq!(
        m.uris,
        [
            format!("turn:turn.example.test:{u}?transport=udp"),
            format!("turn:turn.example.test:{u6}?transport=udp"),
            format!("turn:turn.example.test:{t}?transport=tcp"),
            format!("turns:turn.example.test:{s}?transport=tcp"),
        ]
    );
    assert_eq!(
        m.json["iceServers"][0]["urls"],
        serde_json::json!([format!("stun:turn.example.test:{u}")])
    );

    // TCP only: no stun: entry, no UDP URI.
    let tcp_only = format!(
        "[server]\nrealm = \"r\"\n[[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
         [auth]\nsecrets = [\"{SECRET}\"]\n[http]\naddr = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\n"
    );
    let server = TestServer::start(&tcp_only);
    let t = server.addr(Transport::Tcp, false).port();
    let m = mint(&server, "u");
    assert_eq!(m.uris, [format!("turn:127.0.0.1:{t}?transport=tcp")]);
    assert_eq!(m.json["iceServers"].as_array().unwrap().len(), 1);
}

#[test]
fn cors_allows_only_the_configured_origins() {
    const APP: &str = "https://app.example.test";
    let server = TestServer::start(&config("", &format!("cors_origins = [\"{APP}\"]"), ""));
    let h = server.http_addr();
    let path = "/api/v1/credentials?username=u";
    let auth = format!("Bearer {API_KEY}");
    // A simple request from the allowed origin.
    let r = http(
        h,
        "GET",
        path,
        &[("Origin", APP), ("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    // From another origin: answered (CORS is enforced by the browser),
    // but without the header that would let the browser read it.
    let r = http(
        h,
        "GET",
        path,
        &[("Origin", "https://evil.example"), ("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    // Preflight from the allowed origin.
    let preflight = |origin: &str| {
        http(
            h,
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
            b"",
        )
    };
    let r = preflight(APP);
    assert!((200..300).contains(&r.status), "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    let methods = r
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("GET"), "{r:?}");
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{r:?}");
    let r = preflight("https://evil.example");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");

    // No cors_origins: no CORS headers for anyone.
    let plain = TestServer::start(&config("", "", ""));
    let r = http(
        plain.http_addr(),
        "GET",
        path,
        &[("Origin", APP), ("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // "*": any origin (echoed back, which browsers treat the same).
    let any = TestServer::start(&config("", "cors_origins = [\"*\"]", ""));
    let r = http(
        any.http_addr(),
        "GET",
        path,
        &[
            ("Origin", "https://whoever.example"),
            ("Authorization", &auth),
        ],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://whoever.example")
    );
}

#[test]
fn https_serves_the_api() {
    let cert = self_signed_cert();
    let server = TestServer::start(&config(
        "",
        &format!("cert = {}\nkey = {}", cert.cert_toml(), cert.key_toml()),
        "",
    ));
    let h = server.http_addr();
    let r = https_get(h, cert.client_config(), "/healthz");
    assert_eq!(r.status, 200);
    let r = https_get(
        h,
        cert.client_config(),
        &format!("/api/v1/credentials?username=tls&key={API_KEY}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = Minted::parse(&r.json());
    assert!(
        TurnClient::tcp(server.addr(Transport::Tcp, false))
            .allocate(m.credentials())
            .is_ok()
    );
}

#[test]
fn sessions_show_a_live_allocation_and_delete_ends_it() {
    let server = TestServer::start(&config("", &format!("admin_keys = [\"{ADMIN_KEY}\"]"), ""));
    let h = server.http_addr();
    let udp = server.addr(Transport::Udp, false);
    let m = mint(&server, "sessions-user");
    let mut c = TurnClient::udp(udp);
    let relayed = c.allocate(m.credentials()).expect("allocate");
    let peer = udp_peer();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(c.create_permission(&[peer_addr]), 200);
    assert_eq!(c.channel_bind(0x4000, peer_addr), 200);
    // 3 packets (10 + 20 + 30 bytes) out, 2 (7 + 9 bytes) back.
    for n in [10, 20, 30] {
        c.send_channel_data(0x4000, &vec![b'o'; n]);
        assert_eq!(peer_recv(&peer).0.len(), n);
    }
    for n in [7, 9] {
        peer.send_to(&vec![b'i'; n], relayed).unwrap();
        assert_eq!(c.recv_channel_data().1.len(), n);
    }
    // A TCP allocation as well, with nothing on it.
    let mut t = TurnClient::tcp(server.addr(Transport::Tcp, false));
    let t_relayed = t.allocate(m.credentials()).expect("TCP allocate");

    let r = get_auth(h, "/api/v1/sessions", ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json()["sessions"].as_array().cloned().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let s = list
        .iter()
        .find(|s| s["transport"] == "udp")
        .expect("the UDP session");
    assert_eq!(s["user"], m.username.as_str());
    assert_eq!(s["client"], c.local_addr().to_string());
    assert_eq!(s["server"], udp.to_string());
    assert_eq!(s["relay"], relayed.to_string());
    assert_eq!(s["relayed_address"], relayed.to_string());
    assert_eq!(s["permissions"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        s["channels"],
        serde_json::json!([{"number": 0x4000, "peer": peer_addr.to_string()}])
    );
    assert_eq!(s["bytes_to_peer"], 60);
    assert_eq!(s["packets_to_peer"], 3);
    assert_eq!(s["bytes_from_peer"], 16);
    assert_eq!(s["packets_from_peer"], 2);
    assert!(
        s["expires_in_s"]
            .as_u64()
            .is_some_and(|e| e <= 600 && e > 0)
    );
    let id = s["id"].as_str().expect("id is a string").to_string();
    let ts = list.iter().find(|s| s["transport"] == "tcp").unwrap();
    assert_eq!(ts["client"], t.local_addr().to_string());
    assert_eq!(ts["relay"], t_relayed.to_string());
    assert_eq!(ts["permissions"], serde_json::json!([]));
    assert_eq!(ts["bytes_to_peer"], 0);
    assert_ne!(ts["id"], s["id"]);

    // DELETE ends it: the client's next Refresh finds no allocation.
    let r = delete_auth(h, &format!("/api/v1/sessions/{id}"), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted"], id.as_str());
    assert_eq!(c.refresh(Some(600)), 437);
    let list = get_auth(h, "/api/v1/sessions", ADMIN_KEY).json()["sessions"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["transport"], "tcp");
    assert_eq!(
        delete_auth(h, &format!("/api/v1/sessions/{id}"), ADMIN_KEY).status,
        404
    );
    assert_bad_param(
        &delete_auth(h, "/api/v1/sessions/not-a-number", ADMIN_KEY),
        "id",
    );
    let mm = scrape(h);
    assert_eq!(
        mm.value("turnpike_allocations_deleted_total", &[("reason", "admin")]),
        1.0
    );
    assert_eq!(
        mm.value(
            "turnpike_allocations_active",
            &[("transport", "udp"), ("family", "ipv4")]
        ),
        0.0
    );
    // The client can allocate again on the same five-tuple.
    assert!(c.allocate(m.credentials()).is_ok());
}

#[test]
fn offline_credentials_command_output_works_against_the_server() {
    let server = TestServer::start(&config("", "", ""));
    let udp = server.addr(Transport::Udp, false);

    // --secret
    let before = unix_now();
    let (status, out, err) = run_turnpike(&[
        "credentials",
        "--secret",
        SECRET,
        "--user",
        "dave",
        "--ttl",
        "10m",
    ]);
    let after = unix_now();
    assert!(status.success(), "{err}");
    let m = Minted::parse(&serde_json::from_str(&out).expect("stdout is JSON"));
    assert_eq!(m.user(), "dave");
    assert_eq!(m.ttl, 600);
    assert!((before + 600..=after + 600).contains(&m.expiry()));
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());

    let dir = tempfile::tempdir().unwrap();
    // --secret-file (first line).
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\nignored\n")).unwrap();
    let (status, out, err) = run_turnpike(&[
        "credentials",
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--user",
        "erin",
    ]);
    assert!(status.success(), "{err}");
    let m = Minted::parse(&serde_json::from_str(&out).unwrap());
    assert_eq!(m.ttl, 86400, "default --ttl is 24h");
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());

    // --config: the first secret, the config's URIs and TTL cap.
    let prod = dir.path().join("prod.toml");
    std::fs::write(
        &prod,
        format!(
            "[server]\nrealm = \"api.test\"\npublic_host = \"turn.example.test\"\n\
             [[listen]]\ntransport = \"udp\"\naddr = \"0.0.0.0:3478\"\n\
             [[listen]]\ntransport = \"tcp\"\naddr = \"0.0.0.0:3478\"\n\
             [auth]\nsecrets = [\"{SECRET}\", \"older-secret\"]\n\
             [http]\ncredential_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let (status, out, err) = run_turnpike(&[
        "credentials",
        "--config",
        prod.to_str().unwrap(),
        "--user",
        "frank",
        "--ttl",
        "48h",
    ]);
    assert!(status.success(), "{err}");
    let m = Minted::parse(&serde_json::from_str(&out).unwrap());
    assert_eq!(m.ttl, 3600, "capped by http.credential_ttl");
    assert_eq!(
        m.uris,
        [
            "turn:turn.example.test:3478?transport=udp",
            "turn:turn.example.test:3478?transport=tcp"
        ]
    );
    assert_eq!(
        m.json["iceServers"][0]["urls"][0],
        "stun:turn.example.test:3478"
    );
    assert!(TurnClient::udp(udp).allocate(m.credentials()).is_ok());

    // A bad user name is refused with the option named.
    let (status, _, err) = run_turnpike(&["credentials", "--secret", SECRET, "--user", ""]);
    assert!(!status.success());
    assert!(err.contains("--user"), "{err}");
}

#[test]
fn without_api_keys_or_secrets_nothing_is_minted() {
    // [http] without api_keys: everyone gets 401, and the start-up log
    // says so.
    let no_keys = format!(
        "[server]\nrealm = \"r\"\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [auth]\nsecrets = [\"{SECRET}\"]\n[http]\naddr = \"127.0.0.1:0\"\n"
    );
    let server = TestServer::start(&no_keys);
    assert_unauthorized(&get_auth(
        server.http_addr(),
        "/api/v1/credentials?username=u",
        API_KEY,
    ));
    assert_unauthorized(&get(
        server.http_addr(),
        "/api/v1/credentials?username=u&key=",
    ));
    // stderr is collected by another thread: wait for the line (bounded).
    server.wait_for_line(&["http.api_keys is empty"], Duration::from_secs(5));
    // Static users only, no shared secret: nothing to sign with.
    let no_secret = format!(
        "[server]\nrealm = \"r\"\n[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [auth]\nusers = {{ alice = \"wonderland\" }}\n\
         [http]\naddr = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\n"
    );
    let server = TestServer::start(&no_secret);
    let r = get_auth(
        server.http_addr(),
        "/api/v1/credentials?username=u",
        API_KEY,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "no_secret");
    // The static user still works on the TURN side.
    assert!(
        TurnClient::udp(server.addr(Transport::Udp, false))
            .allocate(Credentials::new("alice", "wonderland"))
            .is_ok()
    );
}

/// A TCP connection from `src` (any port) to `dst`.
fn tcp_from(src: [u8; 4], dst: std::net::SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((src, 0)).into())
        .unwrap();
    s.connect_timeout(&dst.into(), IO_TIMEOUT).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// `GET /healthz` on a connection that stays open: whether it got 200.
fn healthz_kept_alive(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200")
}

/// `http.max_connections` counts every client together: with it reached
/// (from two addresses, each within its own cap), a connection from a
/// third address is closed at accept without a byte and counted under
/// reason="max_connections"; once one closes, connections are served
/// again.
#[test]
fn the_connection_cap_counts_every_client() {
    use std::io::Read;
    let server = TestServer::start(&config(
        "",
        "max_connections = 4\nmax_connections_per_ip = 2\nheader_timeout = \"1h\"",
        "",
    ));
    let h = server.http_addr();
    let mut held = Vec::new();
    for src in [
        [127, 0, 0, 5],
        [127, 0, 0, 5],
        [127, 0, 0, 6],
        [127, 0, 0, 6],
    ] {
        let mut s = tcp_from(src, h);
        assert!(healthz_kept_alive(&mut s), "within the caps: served");
        held.push(s);
    }
    let mut over = tcp_from([127, 0, 0, 7], h);
    let mut buf = [0u8; 64];
    assert!(
        matches!(over.read(&mut buf), Ok(0)),
        "the connection over the cap is closed at once, without a byte"
    );
    drop(held.pop());
    let m = wait_until("a freed slot to serve a scrape", POLL_LIMIT, || {
        let mut s = tcp_from([127, 0, 0, 7], h);
        use std::io::Write;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        text.starts_with("HTTP/1.1 200")
            .then(|| Scrape::parse(&body))
    });
    assert!(
        m.value(
            "turnpike_http_connections_refused_total",
            &[("reason", "max_connections")]
        ) >= 1.0
    );
    assert_eq!(
        m.value(
            "turnpike_http_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ),
        0.0
    );
}
