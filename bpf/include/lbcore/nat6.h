/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv6 specifics of the tc NodePort programs: parsing (with the common extension
 * headers), the L3 part of a rewrite, and the IPv6-in-IPv6 carrier header.
 *
 * IPv6 has no header checksum: an address change shows only in the L4 sum (pseudo
 * header), and for a CHECKSUM_COMPLETE skb in skb->csum, which the store recomputes
 * (BPF_F_RECOMPUTE_CSUM; the pseudo-header L4 update takes the diff out of skb->csum as
 * if an IPv4 header sum had absorbed it, so the address bytes must put it back;
 * Linux 6.16's BPF_F_IPV6 says the same, this works on older kernels too).
 */
#ifndef LBCORE_NAT6_H
#define LBCORE_NAT6_H

#include <uapi/linux/ipv6.h>

#include "lbcore/pkt.h"

#define LBN_NEXTHDR_HOP 0
#define LBN_NEXTHDR_ROUTING 43
#define LBN_NEXTHDR_FRAGMENT 44
#define LBN_NEXTHDR_DEST 60
#ifndef LBN_V6_EXT_MAX
#define LBN_V6_EXT_MAX 4 /* extension headers skipped before giving up */
#endif

/* Skip hop-by-hop, routing and destination options headers; 0 with the upper layer. */
static __always_inline int lbn_skip_ext6(struct __sk_buff *skb, __u32 *off, __u8 *nexthdr)
{
#pragma unroll
	for (int i = 0; i < LBN_V6_EXT_MAX; i++) {
		__u8 ext[2];

		if (*nexthdr == LBN_NEXTHDR_FRAGMENT)
			return -1; /* fragments: no ports to match; left to the stack */
		if (*nexthdr != LBN_NEXTHDR_HOP && *nexthdr != LBN_NEXTHDR_ROUTING &&
		    *nexthdr != LBN_NEXTHDR_DEST)
			return 0;
		if (bpf_skb_load_bytes(skb, *off, ext, sizeof(ext)) < 0)
			return -1;
		*nexthdr = ext[0];
		*off += ((__u32)ext[1] + 1) * 8;
	}
	return -1;
}

static __always_inline int lbn_parse6(struct __sk_buff *skb, __u32 l3, struct lbn_pkt *p)
{
	struct ipv6hdr ip;
	__u8 nexthdr;
	__u32 off;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 6)
		return -1;
	nexthdr = ip.nexthdr;
	off = l3 + sizeof(ip);
	if (lbn_skip_ext6(skb, &off, &nexthdr) < 0)
		return -1;
	p->family = LBN_V6;
	p->l3 = l3;
	p->l4 = off;
	p->len = bpf_ntohs(ip.payload_len) + sizeof(ip);
	p->ttl = ip.hop_limit;
	p->tos = (ip.priority << 4) | (ip.flow_lbl[0] >> 4);
	p->key.proto = nexthdr;
	__builtin_memcpy(&p->key.src, &ip.saddr, sizeof(p->key.src));
	__builtin_memcpy(&p->key.dst, &ip.daddr, sizeof(p->key.dst));
	if (nexthdr == LBN_PROTO_IPV6)
		return 0;
	if (nexthdr == LBN_PROTO_ICMPV6)
		return bpf_skb_load_bytes(skb, off, &p->icmp_type, 1) < 0 ? -1 : 0;
	if (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, off, &p->key.sport, 4) < 0)
		return -1;
	if (nexthdr == IPPROTO_TCP) /* cut short (an ICMP error's quote): no flags */
		bpf_skb_load_bytes(skb, off + 13, &p->tcp_flags, 1);
	return 0;
}

/* Bytes 8..40 of the IPv6 header. */
struct lbn_ip6_addrs {
	struct lb_addr saddr;
	struct lb_addr daddr;
};

/*
 * New addresses (and hop limit) into the IPv6 header; the caller updates the L4 sum.
 * ``addr_flags``: BPF_F_RECOMPUTE_CSUM when the L4 update is a pseudo-header one (see
 * above), 0 when the caller's own checksum arithmetic keeps skb->csum (ICMPv6).
 */
static __always_inline int lbn_rewrite_l3_6(struct __sk_buff *skb, const struct lbn_pkt *p,
					    const struct lb_addr *src, const struct lb_addr *dst,
					    __u8 hop_limit, __u64 addr_flags)
{
	struct lbn_ip6_addrs a;

	if (hop_limit != p->ttl &&
	    bpf_skb_store_bytes(skb, p->l3 + offsetof(struct ipv6hdr, hop_limit), &hop_limit, 1,
				BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (lb_addr_equal(src, &p->key.src) && lb_addr_equal(dst, &p->key.dst))
		return 0;
	a.saddr = *src;
	a.daddr = *dst;
	return bpf_skb_store_bytes(skb, p->l3 + offsetof(struct ipv6hdr, saddr), &a, sizeof(a),
				   addr_flags);
}

/* The outer header of an IPv6-in-IPv6 packet from ``src`` to ``dst`` carrying ``p``. */
static __always_inline void lbn_carrier6(struct ipv6hdr *outer, const struct lbn_pkt *p,
					 const struct lb_addr *src, const struct lb_addr *dst)
{
	__builtin_memset(outer, 0, sizeof(*outer));
	outer->version = 6;
	outer->priority = p->tos >> 4;
	outer->flow_lbl[0] = (p->tos & 0xf) << 4;
	outer->payload_len = bpf_htons(p->len);
	outer->nexthdr = LBN_PROTO_IPV6;
	outer->hop_limit = 64;
	__builtin_memcpy(&outer->saddr, src, sizeof(*src));
	__builtin_memcpy(&outer->daddr, dst, sizeof(*dst));
}

#endif /* LBCORE_NAT6_H */
