// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0
//
// benches/xdp_bounce.bpf.c: the two tiny XDP programs of benches/xdp_lab.sh
// (not part of turnpike; the script compiles them with clang).
//
// Built without -DBOUNCE: `xdp_pass`, which passes every packet. Attached
// to the veth ends that RECEIVE frames an XDP program on the other end
// sends with XDP_TX or redirects: a veth delivers such frames only when
// its peer has an XDP program of its own (GRO alone is not enough).
//
// Built with -DBOUNCE (and -DLISTEN_PORT=N, default 3478): `xdp_bounce`,
// the load generator's ceiling. Attached to the server's client-side veth
// in place of a relay: a ChannelData datagram (first byte 0x40-0x7F) to
// UDP port LISTEN_PORT, IPv4 without options or IPv6 without extension
// headers, goes straight back where it came from (MACs, addresses and
// ports swapped: the checksums stay valid, since the sums do not depend
// on the order) with XDP_TX; everything else (the STUN requests that set
// the allocations up) passes to the server as usual. The generator then
// gets each ChannelData message back at once, as if the relay and the
// peer had answered in no time: its rate is the generator's own limit.
// `bounced` counts what went back, per CPU.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef LISTEN_PORT
#define LISTEN_PORT 3478
#endif

#ifndef BOUNCE

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

#else

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bounced SEC(".maps");

/* The UDP header at `udp`, if it is whole, to LISTEN_PORT, and carries a
 * ChannelData message (at least its 4-byte header). */
static __always_inline int is_channel_data(struct udphdr *udp, void *end)
{
	unsigned char *first = (unsigned char *)(udp + 1);

	if ((void *)(first + 4) > end)
		return 0;
	if (udp->dest != bpf_htons(LISTEN_PORT))
		return 0;
	return (*first & 0xc0) == 0x40;
}

SEC("xdp")
int xdp_bounce(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	unsigned char mac[ETH_ALEN];
	__u32 zero = 0;
	__u64 *n;
	__be16 port;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__be32 a;

		if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		if (ip->frag_off & bpf_htons(0x3fff))
			return XDP_PASS;
		udp = (void *)(ip + 1);
		if (!is_channel_data(udp, end))
			return XDP_PASS;
		a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct in6_addr a;

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		udp = (void *)(ip6 + 1);
		if (!is_channel_data(udp, end))
			return XDP_PASS;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
	} else {
		return XDP_PASS;
	}
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	n = bpf_map_lookup_elem(&bounced, &zero);
	if (n)
		*n += 1;
	return XDP_TX;
}

#endif

char _license[] SEC("license") = "GPL";
