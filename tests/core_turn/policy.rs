//! Issue 12 item 2, in the core: IPv6 forms that lead back into refused
//! IPv4 ranges, and the server's own addresses on ports other than relay
//! ports. The harness config: relay 192.0.2.10 advertised as 203.0.113.10,
//! relay ports 50000-50099, a listener on port 3478.

use super::*;

fn v6_allocation(h: &mut H, ft: &FiveTuple) -> Session {
    let (s, relayed, _) = h.allocate(
        ft,
        alice(),
        AllocateOptions {
            family: Some(attr::FAMILY_IPV6),
            ..Default::default()
        },
    );
    assert!(relayed.is_ipv6());
    s
}

#[test]
fn ipv6_forms_embedding_refused_ipv4_get_403_even_when_their_range_is_allowed() {
    let mut h = harness(
        "[policy]\nallow_peers = [\"2002::/16\", \"2001::/32\", \"::ffff:0:0:0/96\"]\n\
         nat64_prefixes = [\"2001:db8:64::/96\", \"2001:db8:100::/40\"]\n",
    );
    let ft = udp("198.51.100.7:40000");
    let s = v6_allocation(&mut h, &ft);
    for bad in [
        "[2002:7f00:1::1]:9",            // 6to4 of 127.0.0.1
        "[2002:a9fe:a9fe::1]:9",         // 6to4 of 169.254.169.254
        "[2001:0:7f00:1::f7f7:f7f7]:9",  // Teredo server 127.0.0.1
        "[2001:0:808:808::f5ff:fffe]:9", // Teredo client 10.0.0.1
        "[64:ff9b::7f00:1]:9",           // NAT64 127.0.0.1
        "[64:ff9b:1::a00:1]:9",          // local-use NAT64 (refused range)
        "[::ffff:0:a00:1]:9",            // SIIT 10.0.0.1
        "[2001:db8:64::c0a8:101]:9",     // configured /96: 192.168.1.1
        "[2001:db8:17f:0:1::]:9",        // configured /40: 127.0.0.1
        "[100::1]:9",
        "[fec0::1]:9",
        "[5f00::1]:9",
    ] {
        assert_eq!(h.create_permission(&ft, &s, &[bad]), 403, "{bad}");
        assert_eq!(h.channel_bind(&ft, &s, 0x4000, bad), 403, "{bad}");
    }
    for good in [
        "[2002:808:808::1]:9",
        "[2001:0:808:808::f7f7:f7f7]:9",
        "[64:ff9b::808:808]:9",
        "[2001:db8:64::808:808]:9",
        "[2001:db8:108:0:8:800::]:9",
        "[::ffff:0:808:808]:9",
    ] {
        assert_eq!(h.create_permission(&ft, &s, &[good]), 200, "{good}");
    }
    assert_eq!(h.counters.policy_refusals.get(), 24);
}

#[test]
fn new_default_ranges_are_refused_without_configuration() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let s = v6_allocation(&mut h, &ft);
    for bad in [
        "[2002:808:808::1]:9",
        "[2001:0:808:808::f7f7:f7f7]:9",
        "[64:ff9b:1::808:808]:9",
        "[::ffff:0:808:808]:9",
        "[100::1]:9",
        "[fec0::1]:9",
        "[5f00::1]:9",
    ] {
        assert_eq!(h.create_permission(&ft, &s, &[bad]), 403, "{bad}");
    }
    assert_eq!(h.create_permission(&ft, &s, &["[2001:db8::1]:9"]), 200);
}

#[test]
fn own_addresses_are_peers_only_on_relay_ports() {
    let mut h = harness("");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    // The listener port, a service port, just outside the relay range.
    for bad in [
        "203.0.113.10:3478",
        "192.0.2.10:3478",
        "203.0.113.10:53",
        "203.0.113.10:49999",
        "203.0.113.10:50100",
    ] {
        assert_eq!(h.create_permission(&ft, &s, &[bad]), 403, "{bad}");
        assert_eq!(h.channel_bind(&ft, &s, 0x4000, bad), 403, "{bad}");
    }
    // A relay port of the own address: clients relaying to each other.
    assert_eq!(h.create_permission(&ft, &s, &["203.0.113.10:50050"]), 200);
    // A permission's port is ignored (RFC 8656 §9.1) and ICE agents send
    // port 0: the address alone is judged then; the port of every
    // datagram is judged below.
    assert_eq!(h.create_permission(&ft, &s, &["203.0.113.10:0"]), 200);
    assert_eq!(h.create_permission(&ft, &s, &["127.0.0.1:0"]), 403);
    assert_eq!(h.channel_bind(&ft, &s, 0x4001, "203.0.113.10:50051"), 200);
    // The permission is per address; a Send indication to the listener
    // port is still dropped (counted), one to a relay port leaves.
    let dropped = h.counters.dropped_count(DropReason::PeerPolicy);
    assert!(h.send_indication(&ft, "203.0.113.10:3478", b"x").is_none());
    assert!(h.send_indication(&ft, "203.0.113.10:22", b"x").is_none());
    assert_eq!(
        h.counters.dropped_count(DropReason::PeerPolicy),
        dropped + 2
    );
    let (_, peer, _) = h
        .send_indication(&ft, "203.0.113.10:50077", b"x")
        .expect("relayed to a relay port");
    assert_eq!(peer, addr("203.0.113.10:50077"));
}

#[test]
fn listener_port_is_refused_even_when_allow_peers_covers_it() {
    let mut h = harness("[policy]\nallow_peers = [\"127.0.0.0/8\", \"203.0.113.10/32\"]\n");
    let ft = udp("198.51.100.7:40000");
    let (s, _, _) = h.allocate(&ft, alice(), Default::default());
    for bad in ["127.0.0.1:3478", "127.0.0.5:3478", "203.0.113.10:3478"] {
        assert_eq!(h.create_permission(&ft, &s, &[bad]), 403, "{bad}");
        assert_eq!(h.channel_bind(&ft, &s, 0x4000, bad), 403, "{bad}");
    }
    // Explicitly allowed own addresses: other ports are the operator's
    // choice.
    assert_eq!(h.create_permission(&ft, &s, &["127.0.0.1:5000"]), 200);
    assert_eq!(h.create_permission(&ft, &s, &["203.0.113.10:53"]), 200);
    assert!(h.send_indication(&ft, "127.0.0.1:3478", b"x").is_none());
    assert!(h.send_indication(&ft, "127.0.0.1:5000", b"x").is_some());
}
