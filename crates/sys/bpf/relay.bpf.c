// SPDX-License-Identifier: Apache-2.0
//
// turnpike's XDP fast path (issue 15): relays ChannelData between a UDP
// client and an external peer at the driver, for the channels the server
// core has mirrored into the maps below. Everything the program is not
// sure of goes to the normal path unchanged (XDP_PASS), so the fast path
// can only ever do what the user-space path would have done:
//
//  * client -> peer: a ChannelData datagram to a listener, from a client
//    five-tuple with that channel bound (map `c2p`), unpadded and with a
//    length that matches the datagram exactly: the 4-byte header is
//    stripped (bpf_xdp_adjust_head), IP/UDP rewritten to relay -> peer.
//  * peer -> client: a datagram to a relay port from a peer with a bound
//    channel (map `p2c`): a 4-byte ChannelData header is prepended and
//    IP/UDP rewritten to listener -> client.
//
// IPv4 and IPv6, and 4<->6 (a client of one family on an allocation of
// the other: the IP header is replaced whole, the UDP checksum updated for
// the new pseudo-header). And relay -> relay: ChannelData from a client to
// another relay of this server goes straight to that relay's client when
// its channel allows it (both routes mirrored).
//
// Not handled here (XDP_PASS): VLAN tags, IPv4 options or fragments, IPv6
// extension headers, a zero IPv6 UDP checksum (and a zero IPv4 one bound
// for IPv6), padded ChannelData (legal over UDP, left to user space),
// relay -> relay where relays are advertised at another address than
// they are bound to (1:1 NAT: the core mirrors no such route), a frame with bytes after the
// datagram (Ethernet padding), a datagram that would grow past the MTU in
// the `config` map, and any entry whose expiry (CLOCK_MONOTONIC ns, the
// clock Rust's Instant reads on Linux) has passed.
//
// Next hops: bpf_fib_lookup refuses while forwarding is off (a TURN host's
// default), so the program learns, per IP address, the source MAC, the
// interface and its own MAC from the traffic of matched entries (map
// `neigh`); while the other side's MAC is unknown, the datagram goes to
// user space, whose reply (or the other side's first datagram) teaches it.
// Egress = ingress interface: XDP_TX; otherwise bpf_redirect.
//
// Checksums: IPv4 header recomputed (20 bytes); UDP updated incrementally
// (RFC 1624) for the addresses, ports, length and the 4 header bytes, so
// the payload is never read.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define FAMILY_V4 4
#define FAMILY_V6 6
#define CD_HDR 4
// The peer is another relay of this server (relay -> relay).
#define FLAG_PEER_IS_RELAY 1

// Keys and values: layouts shared with crates/sys/src/xdp.rs (repr(C)).
// Addresses: 16 bytes, an IPv4 address in the first 4 (rest zero). Ports
// and channel numbers in network byte order.
struct c2p_key {
	__u8 client[16];
	__u8 listener[16];
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;
	__u8 family;
	__u8 pad;
};

struct c2p_val {
	__u8 relay[16];
	__u8 peer[16];
	__u16 relay_port;
	__u16 peer_port;
	__u8 family; // of relay and peer (the client's may differ: 4<->6)
	__u8 flags; // FLAG_PEER_IS_RELAY
	__u8 pad[2];
	__u64 expires_ns;
	__u64 alloc_id;
};

struct p2c_key {
	__u8 peer[16];
	__u8 relay[16];
	__u16 peer_port;
	__u16 relay_port;
	__u8 family;
	__u8 pad[3];
};

struct p2c_val {
	__u8 client[16];
	__u8 listener[16];
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;
	__u8 family; // of client and listener
	__u8 flags; // FLAG_PEER_IS_RELAY: matched by relay_to_relay only
	__u64 expires_ns;
	__u64 alloc_id;
};

struct neigh_val {
	__u8 mac[6];
	__u8 own_mac[6];
	__u32 ifindex;
};

// Packets and payload bytes relayed (index 0: client -> peer, 1: peer ->
// client), and the same per allocation (by its admin id).
struct stats {
	__u64 packets;
	__u64 bytes;
};

struct alloc_stats {
	__u64 c2p_packets;
	__u64 c2p_bytes;
	__u64 p2c_packets;
	__u64 p2c_bytes;
};

struct config {
	// The largest IP datagram the program may emit (the smallest MTU of
	// the interfaces it is attached to); 0 = 1500.
	__u32 mtu;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct c2p_key);
	__type(value, struct c2p_val);
} c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct p2c_key);
	__type(value, struct p2c_val);
} p2c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u8[16]);
	__type(value, struct neigh_val);
} neigh SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct stats);
} totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct alloc_stats);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} cfg SEC(".maps");

// One's-complement sum helpers (RFC 1071 / 1624).
static __always_inline __u32 add16(__u32 sum, __u16 w)
{
	return sum + w;
}

static __always_inline __u32 sub16(__u32 sum, __u16 w)
{
	return sum + (__u16)~w;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u32 add_addr(__u32 sum, const __u8 *a, int words)
{
	const __u16 *w = (const __u16 *)a;
#pragma unroll
	for (int i = 0; i < 8; i++)
		if (i < words)
			sum = add16(sum, w[i]);
	return sum;
}

static __always_inline __u32 sub_addr(__u32 sum, const __u8 *a, int words)
{
	const __u16 *w = (const __u16 *)a;
#pragma unroll
	for (int i = 0; i < 8; i++)
		if (i < words)
			sum = sub16(sum, w[i]);
	return sum;
}

static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	__u32 sum = 0;
	const __u16 *w = (const __u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return ~fold(sum);
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

// The packet's parsed outer headers.
struct pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u16 udp_check;
	__u16 udp_len; // host order, header included
	__u32 l4_off; // offset of the UDP header
	__u8 family;
};

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

// Learn who sent a matched packet: its MAC, our MAC, the interface.
static __always_inline void learn(struct xdp_md *ctx, struct ethhdr *eth, const __u8 *ip)
{
	struct neigh_val *n = bpf_map_lookup_elem(&neigh, ip);
	if (n && n->ifindex == ctx->ingress_ifindex &&
	    same_mac(n->mac, eth->h_source) && same_mac(n->own_mac, eth->h_dest))
		return;
	struct neigh_val v = {};
	__builtin_memcpy(v.mac, eth->h_source, 6);
	__builtin_memcpy(v.own_mac, eth->h_dest, 6);
	v.ifindex = ctx->ingress_ifindex;
	bpf_map_update_elem(&neigh, ip, &v, BPF_ANY);
}

static __always_inline __u32 mtu_limit(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&cfg, &zero);
	if (c && c->mtu)
		return c->mtu;
	return 1500;
}

static __always_inline void count(__u32 dir, __u64 alloc_id, __u64 bytes)
{
	struct stats *s = bpf_map_lookup_elem(&totals, &dir);
	if (s) {
		s->packets++;
		s->bytes += bytes;
	}
	struct alloc_stats *a = bpf_map_lookup_elem(&allocs, &alloc_id);
	if (a) {
		if (dir == 0) {
			a->c2p_packets++;
			a->c2p_bytes += bytes;
		} else {
			a->p2c_packets++;
			a->p2c_bytes += bytes;
		}
	}
}

// Write fresh Ethernet + IP + UDP headers at the packet's start for a
// datagram of `payload` bytes after the UDP header; `check` is the UDP
// checksum already updated. Returns the XDP action.
static __always_inline int emit(struct xdp_md *ctx, __u8 family, const struct neigh_val *n,
				const __u8 *src, const __u8 *dst, __u16 sport, __u16 dport,
				__u32 payload, __u16 check)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, n->mac, 6);
	__builtin_memcpy(eth->h_source, n->own_mac, 6);
	struct udphdr *udp;
	if (family == FAMILY_V4) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_ABORTED;
		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + payload);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); // DF, as Linux sends with PMTU discovery
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		__builtin_memcpy(&ip->saddr, src, 4);
		__builtin_memcpy(&ip->daddr, dst, 4);
		ip->check = ipv4_csum(ip);
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_ABORTED;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		ip6->version = 6;
		ip6->priority = 0;
		ip6->flow_lbl[0] = 0;
		ip6->flow_lbl[1] = 0;
		ip6->flow_lbl[2] = 0;
		ip6->payload_len = bpf_htons(sizeof(*udp) + payload);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > end)
		return XDP_ABORTED;
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(sizeof(*udp) + payload);
	udp->check = check;
	if (n->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(n->ifindex, 0);
}

static __always_inline __u32 ip_hdr_len(__u8 family)
{
	return family == FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

// The UDP checksum after replacing addresses, ports and length (and
// removing or adding the 4 ChannelData header bytes `cd`).
static __always_inline __u16 update_check(const struct pkt *p, __u8 out_family, const __u8 *src,
					  const __u8 *dst, __u16 sport, __u16 dport,
					  __u16 new_len, const __u16 *cd_removed,
					  const __u16 *cd_added)
{
	if (p->udp_check == 0)
		return 0; // IPv4 without a checksum stays without one (the callers
			  // pass such a datagram bound for IPv6 to user space)
	int words = p->family == FAMILY_V4 ? 2 : 8;
	int out_words = out_family == FAMILY_V4 ? 2 : 8;
	__u32 sum = (__u16)~p->udp_check;
	sum = sub_addr(sum, p->src, words);
	sum = sub_addr(sum, p->dst, words);
	sum = sub16(sum, p->sport);
	sum = sub16(sum, p->dport);
	// The length appears twice: the pseudo-header and the UDP header.
	sum = sub16(sum, bpf_htons(p->udp_len));
	sum = sub16(sum, bpf_htons(p->udp_len));
	sum = add_addr(sum, src, out_words);
	sum = add_addr(sum, dst, out_words);
	sum = add16(sum, sport);
	sum = add16(sum, dport);
	sum = add16(sum, bpf_htons(new_len));
	sum = add16(sum, bpf_htons(new_len));
	if (cd_removed) {
		sum = sub16(sum, cd_removed[0]);
		sum = sub16(sum, cd_removed[1]);
	}
	if (cd_added) {
		sum = add16(sum, cd_added[0]);
		sum = add16(sum, cd_added[1]);
	}
	__u16 c = ~fold(sum);
	return c ? c : 0xffff;
}

// Relay -> relay: ChannelData from a client whose channel's peer is
// another relay of this server goes straight to that relay's client, as
// ChannelData on its channel bound to the first relay (map `p2c`, keyed
// by the first relay's address as the peer: the core mirrors such routes
// only where relays are advertised at their bound addresses). The
// message keeps its length (one 4-byte header for another); only the
// IP header may change size (4<->6 on the receiving client's side).
static __always_inline int relay_to_relay(struct xdp_md *ctx, struct pkt *p,
					  const struct c2p_val *v, __u32 len,
					  const __u16 *cd_in)
{
	struct p2c_key k = {};
	copy16(k.peer, v->relay);
	copy16(k.relay, v->peer);
	k.peer_port = v->relay_port;
	k.relay_port = v->peer_port;
	k.family = v->family;
	struct p2c_val *w = bpf_map_lookup_elem(&p2c, &k);
	if (!w)
		return XDP_PASS;
	if (bpf_ktime_get_ns() >= w->expires_ns)
		return XDP_PASS;
	struct neigh_val *n = bpf_map_lookup_elem(&neigh, w->client);
	if (!n)
		return XDP_PASS;
	struct neigh_val hop = *n;
	__u8 out_family = w->family;
	if (out_family != p->family && p->udp_check == 0)
		return XDP_PASS;
	if (ip_hdr_len(out_family) + sizeof(struct udphdr) + CD_HDR + len > mtu_limit())
		return XDP_PASS;
	__u8 src[16] __attribute__((aligned(8)));
	__u8 dst[16] __attribute__((aligned(8)));
	copy16(src, w->listener);
	copy16(dst, w->client);
	__u16 sport = w->listener_port, dport = w->client_port;
	__u64 from_id = v->alloc_id, to_id = w->alloc_id;
	__u16 cd_words[2];
	cd_words[0] = w->channel;
	cd_words[1] = cd_in[1]; // the same length
	__u16 new_len = p->udp_len;
	__u16 check = update_check(p, out_family, src, dst, sport, dport, new_len, cd_in, cd_words);

	int delta = (int)ip_hdr_len(p->family) - (int)ip_hdr_len(out_family);
	if (delta && bpf_xdp_adjust_head(ctx, delta))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *cd;
	if (out_family == FAMILY_V4) {
		cd = data + sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr);
	} else {
		cd = data + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	}
	if ((void *)(cd + CD_HDR) > end)
		return XDP_ABORTED;
	__builtin_memcpy(cd, cd_words, 4);
	count(0, from_id, len);
	count(1, to_id, len);
	return emit(ctx, out_family, &hop, src, dst, sport, dport, CD_HDR + len, check);
}

static __always_inline int client_to_peer(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *cd = data + p->l4_off + sizeof(struct udphdr);
	if ((void *)(cd + CD_HDR) > end)
		return XDP_PASS;
	// RFC 8656 §12: channel numbers 0x4000-0x4FFF (the map holds only
	// bound ones; this keeps STUN away from the lookup).
	if ((cd[0] & 0xf0) != 0x40)
		return XDP_PASS;
	__u16 cd_words[2];
	__builtin_memcpy(cd_words, cd, 4);
	__u32 len = ((__u32)cd[2] << 8) | cd[3];
	__u32 actual = (__u32)p->udp_len - sizeof(struct udphdr) - CD_HDR;
	if (p->udp_len < sizeof(struct udphdr) + CD_HDR || len != actual)
		return XDP_PASS; // short, padded or inconsistent: user space decides

	struct c2p_key k = {};
	copy16(k.client, p->src);
	copy16(k.listener, p->dst);
	k.client_port = p->sport;
	k.listener_port = p->dport;
	k.channel = cd_words[0];
	k.family = p->family;
	struct c2p_val *v = bpf_map_lookup_elem(&c2p, &k);
	if (!v)
		return XDP_PASS;
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return XDP_PASS; // expired: user space decides (and removes it)
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	learn(ctx, eth, p->src);
	if (v->flags & FLAG_PEER_IS_RELAY)
		return relay_to_relay(ctx, p, v, len, cd_words);
	struct neigh_val *n = bpf_map_lookup_elem(&neigh, v->peer);
	if (!n)
		return XDP_PASS; // next hop not learned yet

	struct neigh_val hop = *n;
	__u8 out_family = v->family;
	// 4->6: the datagram grows by 20 bytes of header.
	if (out_family != p->family) {
		if (p->udp_check == 0)
			return XDP_PASS; // IPv6 needs a checksum: user space
		if (ip_hdr_len(out_family) + sizeof(struct udphdr) + len > mtu_limit())
			return XDP_PASS;
	}
	__u8 src[16] __attribute__((aligned(8)));
	__u8 dst[16] __attribute__((aligned(8)));
	copy16(src, v->relay);
	copy16(dst, v->peer);
	__u16 sport = v->relay_port, dport = v->peer_port;
	__u64 id = v->alloc_id;
	__u16 new_len = sizeof(struct udphdr) + len;
	__u16 check = update_check(p, out_family, src, dst, sport, dport, new_len, cd_words, 0);

	// Strip the 4 header bytes (and move the start by the change of IP
	// header size): the headers are rewritten whole below.
	int delta = CD_HDR + (int)ip_hdr_len(p->family) - (int)ip_hdr_len(out_family);
	if (bpf_xdp_adjust_head(ctx, delta))
		return XDP_PASS;
	count(0, id, len);
	return emit(ctx, out_family, &hop, src, dst, sport, dport, len, check);
}

static __always_inline int peer_to_client(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct p2c_key k = {};
	copy16(k.peer, p->src);
	copy16(k.relay, p->dst);
	k.peer_port = p->sport;
	k.relay_port = p->dport;
	k.family = p->family;
	struct p2c_val *v = bpf_map_lookup_elem(&p2c, &k);
	if (!v)
		return XDP_PASS;
	// A datagram on the wire "from" one of our relays is forged: the
	// kernel drops a local source arriving from outside (a martian), and
	// so must we leave it to the kernel.
	if (v->flags & FLAG_PEER_IS_RELAY)
		return XDP_PASS;
	if (bpf_ktime_get_ns() >= v->expires_ns)
		return XDP_PASS;
	if (p->udp_len < sizeof(struct udphdr))
		return XDP_PASS;
	__u32 len = (__u32)p->udp_len - sizeof(struct udphdr);
	__u8 out_family = v->family;
	if (out_family != p->family && p->udp_check == 0)
		return XDP_PASS;
	if (ip_hdr_len(out_family) + sizeof(struct udphdr) + CD_HDR + len > mtu_limit())
		return XDP_PASS; // would not fit the link: user space decides
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	learn(ctx, eth, p->src);
	struct neigh_val *n = bpf_map_lookup_elem(&neigh, v->client);
	if (!n)
		return XDP_PASS;

	struct neigh_val hop = *n;
	__u8 src[16] __attribute__((aligned(8)));
	__u8 dst[16] __attribute__((aligned(8)));
	copy16(src, v->listener);
	copy16(dst, v->client);
	__u16 sport = v->listener_port, dport = v->client_port;
	__u64 id = v->alloc_id;
	__u16 cd_words[2];
	cd_words[0] = v->channel;
	cd_words[1] = bpf_htons((__u16)len);
	__u16 new_len = sizeof(struct udphdr) + CD_HDR + len;
	__u16 check = update_check(p, out_family, src, dst, sport, dport, new_len, 0, cd_words);

	int delta = (int)ip_hdr_len(p->family) - (int)ip_hdr_len(out_family) - CD_HDR;
	if (bpf_xdp_adjust_head(ctx, delta))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	__u8 *cd;
	if (out_family == FAMILY_V4) {
		cd = data + sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr);
	} else {
		cd = data + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	}
	if ((void *)(cd + CD_HDR) > end)
		return XDP_ABORTED;
	__builtin_memcpy(cd, cd_words, 4);
	count(1, id, len);
	return emit(ctx, out_family, &hop, src, dst, sport, dport, CD_HDR + len, check);
}

SEC("xdp")
int turnpike_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	struct pkt p = {};
	struct udphdr *udp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		if (ip->frag_off & bpf_htons(0x3fff))
			return XDP_PASS; // a fragment
		p.family = FAMILY_V4;
		__builtin_memcpy(p.src, &ip->saddr, 4);
		__builtin_memcpy(p.dst, &ip->daddr, 4);
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		if (bpf_ntohs(ip->tot_len) != sizeof(*ip) + bpf_ntohs(udp->len))
			return XDP_PASS;
		p.l4_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		if (ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		p.family = FAMILY_V6;
		__builtin_memcpy(p.src, &ip6->saddr, 16);
		__builtin_memcpy(p.dst, &ip6->daddr, 16);
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		if (bpf_ntohs(ip6->payload_len) != bpf_ntohs(udp->len))
			return XDP_PASS;
		if (udp->check == 0)
			return XDP_PASS; // not a valid IPv6 UDP datagram
		p.l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	p.sport = udp->source;
	p.dport = udp->dest;
	p.udp_check = udp->check;
	p.udp_len = bpf_ntohs(udp->len);
	// The frame must hold the whole datagram (no trailer trimming here).
	if (data + p.l4_off + p.udp_len != end)
		return XDP_PASS;

	int r = client_to_peer(ctx, &p);
	if (r != XDP_PASS)
		return r;
	// A datagram whose ChannelData did not match may still be a peer's
	// datagram to a relay port: peer -> client is tried next (the packet
	// is unchanged: client_to_peer only changes it when it relays).
	return peer_to_client(ctx, &p);
}

char LICENSE[] SEC("license") = "GPL";
