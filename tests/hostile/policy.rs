//! Rows of issue 12 items 2 (peer policy) and 4 (credential lifecycle):
//! filter bypasses through IPv6 forms that embed a refused IPv4 address,
//! relaying into the server itself, and credentials that outlive their
//! expiry or their removal. The operator reconfigures the running server
//! over the admin API where a row needs more than BASE (an IPv6 relay, a
//! wider `allow_peers`, a static user); the bystander is served throughout.

use super::*;
use turnpike_proto::client::{self, AllocateOptions};
use turnpike_proto::wire::attr;

/// BASE's `[relay]` and `[policy]` as `config_text` writes them.
const BASE_RELAY: &str = "[relay]\nbind_ip = \"127.0.0.1\"\nports = \"43000-43099\"\n";
const BASE_POLICY: &str = "[policy]\nallow_peers = [\"127.0.0.1/32\"]\n";

/// Reload the running server with BASE's configuration, `relay` added to
/// `[relay]`, `[policy]` replaced by `policy` and `[auth]` by `auth`.
fn reconfigure(f: &Fixture, relay: &str, policy: &str, auth: &str) {
    let text = f.config_with(f.case.http, auth);
    assert!(text.contains(BASE_RELAY) && text.contains(BASE_POLICY));
    let text = text
        .replace(BASE_RELAY, &format!("{BASE_RELAY}{relay}\n"))
        .replace(BASE_POLICY, &format!("{policy}\n"));
    let r = f.reload_into(&text);
    assert_eq!(r.status, 200, "reload: {}", r.text());
}

fn rest(user: &str, expiry: u64) -> Credentials {
    Credentials::rest(SECRET, user, expiry)
}

/// A UDP client of the server with an allocation of `family` (IPv4 or
/// IPv6 relay) for `creds`; the raw Allocate response.
fn allocated(f: &Fixture, creds: Credentials, family: Option<u8>) -> (TurnClient, Vec<u8>) {
    let mut c = TurnClient::udp(f.udp_addr());
    let s = c.challenge(creds);
    let resp = c.allocate_signed(
        &s,
        &AllocateOptions {
            family,
            ..Default::default()
        },
    );
    assert_eq!(code_of(&resp), 200, "allocate");
    (c, resp)
}

/// A Send indication from `c` to `peer` (no answer either way).
fn send_indication(c: &mut TurnClient, peer: SocketAddr, data: &[u8]) {
    let mut b = Vec::new();
    client::send_indication(&mut b, new_tid(), peer, data);
    c.send_raw(&b);
}

/// A UDP socket at `ip` standing for what a refused peer would reach.
fn victim(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Nothing arrived at `s`. Called once something the client sent after the
/// refused attempts on the same five-tuple has been handled (a marker
/// relayed to a permitted peer, or a request answered): the server handled
/// the attempts before it, and a datagram they caused would be queued at
/// `s` already (loopback delivers at send time).
fn assert_nothing_reached(s: &UdpSocket, what: &str) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!(
            "{what}: {n} bytes from {from} reached {}",
            s.local_addr().unwrap()
        ),
        Err(e) => panic!("{what}: {e}"),
    }
    s.set_nonblocking(false).unwrap();
}

/// Relay a marker from `c` to `good` (a permitted peer) and wait for it.
fn marker_arrives(c: &mut TurnClient, good: &UdpSocket) {
    send_indication(c, good.local_addr().unwrap(), b"marker");
    let (got, from) = peer_recv(good);
    assert_eq!(got, b"marker");
    assert_eq!(Some(from), c.relayed);
}

/// Each peer gets `code` for CreatePermission and ChannelBind, and its
/// Send indication is dropped; counted in the metrics.
fn refused_everywhere(f: &Fixture, c: &mut TurnClient, peers: &[(SocketAddr, u16, &str)]) {
    let before = f.metrics();
    let mut policy = 0.0;
    for (i, &(peer, code, what)) in peers.iter().enumerate() {
        assert_eq!(
            c.create_permission(&[peer]),
            code,
            "CreatePermission {peer} ({what})"
        );
        assert_eq!(
            c.channel_bind(0x4000 + i as u16, peer),
            code,
            "ChannelBind {peer} ({what})"
        );
        send_indication(c, peer, what.as_bytes());
        if code == 403 {
            policy += 2.0;
        }
    }
    let after = f.metrics();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value_or_zero(name, labels) - before.value_or_zero(name, labels)
    };
    assert_eq!(delta("turnpike_peer_policy_refusals_total", &[]), policy);
}

/// IPv4 relay: refused IPv4 ranges in every IPv6 spelling, and the
/// server's own UDP listener even though `allow_peers` covers 127.0.0.1.
pub(super) fn ipv4_relay_refuses_bypass_forms(f: &mut Fixture) {
    let (mut c, _) = allocated(f, rest("attacker", unix_now() + 3600), None);
    let v = victim(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
    let port = v.local_addr().unwrap().port();
    let listener = f.udp_addr();
    let at = |s: &str| SocketAddr::new(s.parse().unwrap(), port);
    let peers = [
        (at("127.0.0.5"), 403, "loopback"),
        (at("::ffff:127.0.0.5"), 403, "IPv4-mapped loopback"),
        (at("::127.0.0.5"), 403, "IPv4-compatible loopback"),
        (at("169.254.169.254"), 403, "cloud metadata"),
        (at("10.0.0.1"), 403, "RFC 1918"),
        (at("2002:7f00:5::1"), 443, "6to4 on an IPv4 relay"),
        (
            listener,
            403,
            "the server's own listener (TURN inside TURN)",
        ),
        (
            SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), listener.port()),
            403,
            "the own listener, mapped",
        ),
    ];
    refused_everywhere(f, &mut c, &peers);
    f.bystander_served(1, "during the attack");
    // A permitted peer on 127.0.0.1 (allow_peers): the permission covers
    // the address, yet a Send indication to the listener's port is
    // dropped, counted.
    let good = udp_peer();
    assert_eq!(c.create_permission(&[good.local_addr().unwrap()]), 200);
    let dropped = |f: &Fixture| {
        f.metrics().value_or_zero(
            "turnpike_dropped_packets_total",
            &[("reason", "peer_policy")],
        )
    };
    let before = dropped(f);
    let mut bind = Vec::new();
    client::binding(&mut bind, new_tid(), true);
    send_indication(&mut c, listener, &bind);
    marker_arrives(&mut c, &good);
    assert_eq!(dropped(f) - before, 1.0, "the Send to the own listener");
    assert_nothing_reached(&v, "IPv4 relay");
}

/// IPv6 relay (`bind_ip6 = "::1"`), the operator allowing 6to4, Teredo and
/// SIIT and configuring a NAT64 prefix: every form that embeds a refused
/// IPv4 address is still refused; the new default ranges are too.
pub(super) fn ipv6_relay_refuses_bypass_forms(f: &mut Fixture) {
    reconfigure(
        f,
        "bind_ip6 = \"::1\"",
        "[policy]\nallow_peers = [\"127.0.0.1/32\", \"::1/128\", \"2002::/16\", \"2001::/32\", \"::ffff:0:0:0/96\"]\n\
         nat64_prefixes = [\"64:ff9b:1::/96\"]",
        &default_auth(&f.case),
    );
    let (mut c, _) = allocated(
        f,
        rest("attacker6", unix_now() + 3600),
        Some(attr::FAMILY_IPV6),
    );
    assert!(c.relayed.unwrap().is_ipv6());
    let v = victim(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
    let port = v.local_addr().unwrap().port();
    let at = |s: &str| SocketAddr::new(s.parse().unwrap(), port);
    let peers = [
        (at("2002:7f00:5::1"), 403, "6to4 of 127.0.0.5"),
        (at("2002:a9fe:a9fe::1"), 403, "6to4 of 169.254.169.254"),
        (
            at("2001:0:7f00:5::f7f7:f7f7"),
            403,
            "Teredo server 127.0.0.5",
        ),
        (
            at("2001:0:808:808::80ff:fffa"),
            403,
            "Teredo client 127.0.0.5",
        ),
        (at("64:ff9b::7f00:5"), 403, "NAT64 127.0.0.5"),
        (at("64:ff9b:1::7f00:5"), 403, "configured NAT64 127.0.0.5"),
        (at("::ffff:0:7f00:5"), 403, "SIIT 127.0.0.5"),
        (at("100::1"), 403, "discard-only"),
        (at("fec0::1"), 403, "site-local"),
        (at("5f00::1"), 403, "SRv6"),
        (at("::ffff:127.0.0.5"), 443, "IPv4-mapped: an IPv4 peer"),
        (
            SocketAddr::new("::1".parse().unwrap(), f.udp_addr().port()),
            403,
            "the listener's port on the own ::1",
        ),
    ];
    refused_everywhere(f, &mut c, &peers);
    f.bystander_served(1, "during the attack");
    // The same embeddings of a public address are allowed.
    for ok in ["2002:808:808::1", "64:ff9b:1::808:808", "::ffff:0:808:808"] {
        assert_eq!(c.create_permission(&[at(ok)]), 200, "{ok}");
    }
    let good = UdpSocket::bind("[::1]:0").unwrap();
    good.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(c.create_permission(&[good.local_addr().unwrap()]), 200);
    marker_arrives(&mut c, &good);
    assert_nothing_reached(&v, "IPv6 relay");
}

/// `allow_peers = ["0.0.0.0/0"]` (warned about): the server's own
/// addresses (all of loopback here) are still peers only on relay ports:
/// a host-local service on another port and the listener are refused,
/// another client's relay address is not.
pub(super) fn own_addresses_only_on_relay_ports(f: &mut Fixture) {
    reconfigure(
        f,
        "",
        "[policy]\nallow_peers = [\"0.0.0.0/0\"]",
        &default_auth(&f.case),
    );
    f.server
        .wait_for_line(&["dangerous peer policy", "policy.allow_peers[0]"], GUARD);
    let (mut c, _) = allocated(f, rest("attacker", unix_now() + 3600), None);
    let (other, _) = allocated(f, rest("other", unix_now() + 3600), None);
    let service = victim(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let peers = [
        (service.local_addr().unwrap(), 403, "a local service"),
        (f.udp_addr(), 403, "the listener"),
    ];
    refused_everywhere(f, &mut c, &peers);
    // Another client's relay address is a relay port: allowed. This round
    // trip also comes after the refused Send indications on the same
    // five-tuple, so anything they caused has arrived by now.
    let relay = other.relayed.unwrap();
    assert_eq!(c.create_permission(&[relay]), 200, "a relay port");
    assert_eq!(c.channel_bind(0x4100, relay), 200, "a relay port");
    f.bystander_served(1, "during the attack");
    assert_nothing_reached(&service, "own address on a non-relay port");
}

/// A REST credential a few seconds from its expiry: the lifetime granted
/// stops at the expiry, and once past it Refresh, CreatePermission and
/// ChannelBind get 401 and nothing is extended.
pub(super) fn expired_rest_credential_is_refused(f: &mut Fixture) {
    let exp = unix_now() + 4;
    let (mut c, resp) = allocated(f, rest("short", exp), None);
    let life = Message::parse(&resp).unwrap().lifetime().unwrap().unwrap();
    assert!(
        life <= 4,
        "LIFETIME {life} runs past the credential's expiry"
    );
    let peer = udp_peer();
    wait_until("the credential to expire", GUARD, || {
        (unix_now() > exp).then_some(())
    });
    let failures = |f: &Fixture| {
        f.metrics().value_or_zero(
            "turnpike_auth_failures_total",
            &[("reason", "expired_username")],
        )
    };
    let before = failures(f);
    assert_eq!(c.refresh(Some(3600)), 401, "Refresh past the expiry");
    assert_eq!(c.create_permission(&[peer.local_addr().unwrap()]), 401);
    assert_eq!(c.channel_bind(0x4000, peer.local_addr().unwrap()), 401);
    assert_eq!(failures(f) - before, 3.0);
    f.bystander_served(1, "after the expiry");
    // The allocation ends by its clamped lifetime, not an hour later.
    wait_until("the allocation to end", GUARD, || {
        let r = f.admin("GET", "/api/v1/sessions");
        let none = r.json()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["user"].as_str().unwrap().ends_with(":short"));
        none.then_some(())
    });
}

/// A static user relaying; a reload without the user ends the allocation
/// at once (logged, counted); another user's allocation keeps relaying.
pub(super) fn reload_removing_a_user_ends_its_allocation(f: &mut Fixture) {
    let users = |list: &str| format!("[auth]\nsecrets = [\"{SECRET}\"]\nusers = {{ {list} }}\n");
    reconfigure(
        f,
        "",
        BASE_POLICY,
        &users("mallory = \"mallory-pass-1\", trent = \"trent-pass-22\""),
    );
    let peer = udp_peer();
    let (mut m, _) = allocated(f, Credentials::new("mallory", "mallory-pass-1"), None);
    let (mut t, _) = allocated(f, Credentials::new("trent", "trent-pass-22"), None);
    for c in [&mut m, &mut t] {
        assert_eq!(c.channel_bind(0x4000, peer.local_addr().unwrap()), 200);
        relay_both_ways(c, 0x4000, &peer, "before the reload");
    }
    reconfigure(f, "", BASE_POLICY, &users("trent = \"trent-pass-22\""));
    f.server.wait_for_line(
        &["allocation ended", "user=mallory", "credential_revoked"],
        GUARD,
    );
    assert_eq!(m.refresh(Some(600)), 401, "the removed user");
    assert_eq!(m.create_permission(&[peer.local_addr().unwrap()]), 401);
    assert_eq!(m.channel_bind(0x4001, peer.local_addr().unwrap()), 401);
    relay_both_ways(&mut t, 0x4000, &peer, "after the reload");
    assert_eq!(t.refresh(Some(600)), 200);
    let deleted = f.metrics().value_or_zero(
        "turnpike_allocations_deleted_total",
        &[("reason", "credential_revoked")],
    );
    assert_eq!(deleted, 1.0);
    f.bystander_served(1, "after the reload");
}

/// A REST allocation; a reload that retires its secret ends it.
pub(super) fn reload_retiring_a_secret_ends_its_allocations(f: &mut Fixture) {
    let peer = udp_peer();
    let (mut c, _) = allocated(f, rest("rotated", unix_now() + 3600), None);
    assert_eq!(c.channel_bind(0x4000, peer.local_addr().unwrap()), 200);
    relay_both_ways(&mut c, 0x4000, &peer, "before the rotation");
    reconfigure(
        f,
        "",
        BASE_POLICY,
        "[auth]\nsecrets = [\"hostile-next-secret\"]\n",
    );
    f.server.wait_for_line(
        &["allocation ended", "rotated", "credential_revoked"],
        GUARD,
    );
    assert_eq!(c.refresh(Some(600)), 401);
    assert_eq!(c.create_permission(&[peer.local_addr().unwrap()]), 401);
    assert_eq!(c.channel_bind(0x4001, peer.local_addr().unwrap()), 401);
    f.bystander_served(1, "after the rotation");
}
