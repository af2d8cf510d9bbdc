//! Issue 12 item 7, the rows not covered by the amplification file: a
//! username that would forge log lines, and EVEN-PORT reservations that
//! escaped the per-user quota.

use super::*;
use turnpike_proto::client::AllocateOptions;

/// Row: a newline, ESC sequences and BEL in a (validly signed) username
/// are escaped in the text log, so no forged line appears and no raw
/// control character reaches the terminal.
pub(super) fn username_cannot_forge_log_lines(f: &mut Fixture) {
    let forged =
        "2026-12-04T00:00:00.000000Z  INFO turnpike::io::shard: allocation created user=admin";
    let user = format!("eve\n{forged}\x1b[2J\x1b]0;pwned\x07");
    let mut c = TurnClient::udp(f.udp_addr());
    c.allocate(Credentials::rest(SECRET, &user, unix_now() + 3600))
        .expect("a username with control characters is still a username");
    f.bystander_served(2, "after the forging allocation");
    let log = wait_until("the allocation's log line", GUARD, || {
        let text = f.server.stderr_text();
        text.lines()
            .any(|l| l.contains("allocation created") && l.contains("eve"))
            .then_some(text)
    });
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line starts a line of the log"
    );
    assert!(
        !log.contains('\x1b') && !log.contains('\x07'),
        "raw control characters logged"
    );
    assert!(
        log.contains("eve\\n2026-12-04"),
        "the newline is escaped in place"
    );
}

/// Row: a user at `max_allocations_per_user = 2` whose first Allocate
/// holds an EVEN-PORT reservation (R bit) has used both units: a second
/// allocation is a 486 (it used to succeed, and one user could pin half
/// the port range with reservations). Another user is unaffected.
pub(super) fn even_port_reservation_counts_against_the_user_quota(f: &mut Fixture) {
    let creds = || Credentials::rest(SECRET, "pinner", unix_now() + 3600);
    let mut first = TurnClient::udp(f.udp_addr());
    let s = first.challenge(creds());
    let even = AllocateOptions {
        even_port: Some(true),
        ..AllocateOptions::default()
    };
    let resp = first.allocate_signed(&s, &even);
    assert_eq!(code_of(&resp), 200, "the EVEN-PORT Allocate");
    let m = Message::parse(&resp).unwrap();
    assert!(
        m.reservation_token().unwrap().is_some(),
        "a reservation was made"
    );
    let mut second = TurnClient::udp(f.udp_addr());
    assert_eq!(
        second.allocate(creds()),
        Err(486),
        "the reservation counts against the user's quota"
    );
    let mut other = TurnClient::udp(f.udp_addr());
    other
        .allocate(Credentials::rest(SECRET, "someone-else", unix_now() + 3600))
        .expect("another user allocates");
    f.bystander_served(2, "after the quota refusal");
}
