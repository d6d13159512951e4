/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 specifics of the tc NodePort programs: parsing, the L3 part of a rewrite, and
 * the IP-in-IP carrier header. Family-neutral callers go through lbcore/nat.h.
 *
 * Reads go through bpf_skb_load_bytes into stack copies and writes through
 * bpf_skb_store_bytes, so no packet pointer outlives a helper that may move the data.
 */
#ifndef LBCORE_NAT4_H
#define LBCORE_NAT4_H

#include <uapi/linux/ip.h>

#include "lbcore/pkt.h"

#define LBN_IP_MF 0x2000
#define LBN_IP_OFFSET 0x1fff
#define LBN_IP_DF 0x4000

/* 0: TCP/UDP (ports read), ICMP (type read) or IP-in-IP; -1: anything we leave alone. */
static __always_inline int lbn_parse4(struct __sk_buff *skb, __u32 l3, struct lbn_pkt *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (ip.frag_off & bpf_htons(LBN_IP_MF | LBN_IP_OFFSET))
		return -1; /* fragments: no ports to match; left to the stack */
	p->family = LBN_V4;
	p->l3 = l3;
	p->l4 = l3 + ip.ihl * 4;
	p->len = bpf_ntohs(ip.tot_len);
	p->ttl = ip.ttl;
	p->tos = ip.tos;
	p->key.proto = ip.protocol;
	lb_addr_from_v4(&p->key.src, ip.saddr);
	lb_addr_from_v4(&p->key.dst, ip.daddr);
	if (ip.protocol == LBN_PROTO_IPIP)
		return 0;
	if (ip.protocol == LBN_PROTO_ICMP)
		return bpf_skb_load_bytes(skb, p->l4, &p->icmp_type, 1) < 0 ? -1 : 0;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4, &p->key.sport, 4) < 0)
		return -1;
	/* A TCP header cut short (the quote in an ICMP error) has no flags: 0. */
	if (ip.protocol == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, p->l4 + 13, &p->tcp_flags, 1);
	return 0;
}

/* Bytes 8..20 of the IPv4 header: what a translation changes, stored in one write. */
struct lbn_ip4_tail {
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

/*
 * New addresses (and TTL) into the IPv4 header, its checksum updated incrementally
 * (RFC 1624) in the same write. The header sums to the same value before and after,
 * so a CHECKSUM_COMPLETE skb->csum stays right without a recompute.
 */
static __always_inline int lbn_rewrite_l3_4(struct __sk_buff *skb, const struct lbn_pkt *p,
					    __be32 src, __be32 dst, __u8 ttl)
{
	struct lbn_ip4_tail h;
	__be32 old_w, new_w;
	__u32 sum;

	if (bpf_skb_load_bytes(skb, p->l3 + 8, &h, sizeof(h)) < 0)
		return -1;
	old_w = (__be32)h.ttl | ((__be32)h.protocol << 8);
	new_w = (__be32)ttl | ((__be32)h.protocol << 8);
	sum = (__u16)~h.check;
	sum = lbn_csum_add(lbn_csum_sub(sum, old_w), new_w);
	sum = lbn_csum_add(lbn_csum_sub(sum, h.saddr), src);
	sum = lbn_csum_add(lbn_csum_sub(sum, h.daddr), dst);
	h.ttl = ttl;
	h.check = lbn_csum_fold(sum);
	h.saddr = src;
	h.daddr = dst;
	return bpf_skb_store_bytes(skb, p->l3 + 8, &h, sizeof(h), 0);
}

/* The outer header of an IP-in-IP packet from ``src`` to ``dst`` carrying ``p``. */
static __always_inline void lbn_carrier4(struct iphdr *outer, const struct lbn_pkt *p,
					 __be32 src, __be32 dst)
{
	__u32 sum = 0;

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = p->tos;
	outer->tot_len = bpf_htons(p->len + sizeof(*outer));
	outer->id = 0;
	outer->frag_off = bpf_htons(LBN_IP_DF); /* atomic datagram (RFC 6864) */
	outer->ttl = 64;
	outer->protocol = LBN_PROTO_IPIP;
	outer->check = 0;
	outer->saddr = src;
	outer->daddr = dst;
#pragma unroll
	for (int i = 0; i < 5; i++)
		sum = lbn_csum_add(sum, ((__be32 *)outer)[i]);
	outer->check = lbn_csum_fold(sum);
}

#endif /* LBCORE_NAT4_H */
