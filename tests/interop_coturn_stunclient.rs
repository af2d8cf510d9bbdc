//! Interop: coturn's `turnutils_stunclient` (coturn 4.6) gets its
//! reflexive address from the built `turnpike` binary.
//!
//! The tool speaks UDP only (its options are -p, -L and -f; there is no
//! TCP switch), so TCP is covered by tests/e2e_binding.rs instead. `-f`
//! (RFC 5780 CHANGE-REQUEST / RESPONSE-PORT) is not used: turnpike answers
//! those comprehension-required attributes with 420, and the tool then
//! waits forever for an answer on its second socket.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

const TOOL: &str = "turnutils_stunclient";
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Run the tool against `ip:port`; fail loudly if it is not installed.
fn stunclient(port: u16, ip: &str) -> (String, String) {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(TOOL).is_file()))
        .unwrap_or(false);
    assert!(
        on_path,
        "{TOOL} not found on PATH: install coturn (apt-get install coturn), .ci/run does this"
    );
    let (status, out, err) = run_bounded(
        Command::new(TOOL).arg("-p").arg(port.to_string()).arg(ip),
        TOOL_LIMIT,
    );
    assert!(
        status.success(),
        "{TOOL} -p {port} {ip}: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

/// Every `UDP reflexive addr: IP:PORT` the tool printed (stdout or stderr).
fn reflexive_addrs(text: &str) -> Vec<(IpAddr, u16)> {
    text.lines()
        .filter_map(|l| l.split_once("UDP reflexive addr: ").map(|(_, a)| a.trim()))
        .map(|a| {
            let (ip, port) = a
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("no port in {a:?}"));
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            (
                ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}")),
                port.parse()
                    .unwrap_or_else(|e| panic!("bad port {port:?}: {e}")),
            )
        })
        .collect()
}

fn interop(ipv6: bool) {
    let server = TestServer::start(
        "[[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"[::1]:0\"\n",
    );
    let addr = server.addr(Transport::Udp, ipv6);
    let ip = if ipv6 { "::1" } else { "127.0.0.1" };
    let (out, err) = stunclient(addr.port(), ip);
    println!("{TOOL} -p {} {ip}:\n{out}{err}", addr.port());
    let found = reflexive_addrs(&format!("{out}\n{err}"));
    assert!(
        !found.is_empty(),
        "{TOOL} printed no reflexive address\nstdout:\n{out}\nstderr:\n{err}"
    );
    for (got_ip, got_port) in found {
        assert_eq!(got_ip, loopback(ipv6), "reflexive IP");
        assert_ne!(got_port, 0, "reflexive port");
    }
}

#[test]
fn stunclient_udp_ipv4() {
    interop(false);
}

#[test]
fn stunclient_udp_ipv6() {
    interop(true);
}
