/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ICMP and ICMPv6 errors of translated flows: recognising them, parsing the packet
 * they quote, and rewriting quote and outer header with every checksum kept right.
 *
 * Checksums: an ICMPv4 sum covers the ICMP message only; an ICMPv6 sum also a pseudo
 * header (the outer addresses). The quoted IPv4 header carries its own checksum,
 * updated with its addresses, so the header sums to the same value and the ICMP sum
 * does not change for it; quoted IPv6 addresses, quoted ports and the quoted L4 sum
 * (when it is quoted: UDP always, TCP if 18 bytes are) do change it. The message sums
 * to the same total before and after, so a CHECKSUM_COMPLETE skb->csum stays right:
 * no store recomputes it (only an IPv6 hop limit change, which nothing offsets).
 */
#ifndef LBCORE_ICMP_H
#define LBCORE_ICMP_H

#include "lbcore/nat.h"

#define LBN_ICMP_DEST_UNREACH 3
#define LBN_ICMP_TIME_EXCEEDED 11
#define LBN_ICMP_PARAMETERPROB 12
#define LBN_ICMP6_DEST_UNREACH 1
#define LBN_ICMP6_PKT_TOOBIG 2
#define LBN_ICMP6_TIME_EXCEED 3
#define LBN_ICMP6_PARAMPROB 4
#define LBN_ICMP_HLEN 8 /* type, code, checksum, 4 bytes (unused / MTU / pointer) */

static __always_inline int lbn_icmp_is_error(const struct lbn_pkt *p)
{
	if (p->family == LBN_V4)
		return p->key.proto == LBN_PROTO_ICMP &&
		       (p->icmp_type == LBN_ICMP_DEST_UNREACH ||
			p->icmp_type == LBN_ICMP_TIME_EXCEEDED ||
			p->icmp_type == LBN_ICMP_PARAMETERPROB);
	return p->key.proto == LBN_PROTO_ICMPV6 && p->icmp_type >= LBN_ICMP6_DEST_UNREACH &&
	       p->icmp_type <= LBN_ICMP6_PARAMPROB;
}

/* The TCP/UDP packet an ICMP error quotes (its first 8 L4 bytes at least). */
static __always_inline int lbn_icmp_quoted(struct __sk_buff *skb, const struct lbn_pkt *p,
					   struct lbn_pkt *q)
{
	int rc = p->family == LBN_V4 ? lbn_parse4(skb, p->l4 + LBN_ICMP_HLEN, q)
				     : lbn_parse6(skb, p->l4 + LBN_ICMP_HLEN, q);

	if (rc < 0 || q->family != p->family ||
	    (q->key.proto != IPPROTO_TCP && q->key.proto != IPPROTO_UDP))
		return -1;
	return 0;
}

static __always_inline __u32 lbn_csum_add16(__u32 sum, __be16 from, __be16 to)
{
	return sum + (__u16)~from + (__u16)to;
}

/*
 * The quote becomes qt (addresses and ports), the outer header osrc -> odst (TTL or hop
 * limit decremented when ``forward``).
 */
static __always_inline int lbn_icmp_rewrite(struct __sk_buff *skb, const struct lbn_pkt *p,
					    const struct lbn_pkt *q, const struct lbn_tuple *qt,
					    const struct lb_addr *osrc, const struct lb_addr *odst,
					    int forward)
{
	__be32 old_ports = (__be32)q->key.sport | ((__be32)q->key.dport << 16);
	__be32 new_ports = (__be32)qt->sport | ((__be32)qt->dport << 16);
	__u8 ttl = forward ? p->ttl - 1 : p->ttl;
	__u32 icmp = 0, l4, ports;
	__be16 old_sum, new_sum;

	if (forward && p->ttl <= 1)
		return -1;
	/* The quoted addresses. */
	if (p->family == LBN_V4) {
		__be32 from[2] = {q->key.src.words[3], q->key.dst.words[3]};
		__be32 to[2] = {qt->src.words[3], qt->dst.words[3]};

		l4 = lbn_csum_diff(from, to, 2);
		if (lbn_rewrite_l3_4(skb, q, to[0], to[1], q->ttl) < 0)
			return -1;
	} else {
		l4 = lbn_csum_diff(q->key.src.words, qt->src.words, 4) +
		     lbn_csum_diff(q->key.dst.words, qt->dst.words, 4);
		if (lbn_rewrite_l3_6(skb, q, &qt->src, &qt->dst, q->ttl, 0) < 0)
			return -1;
		icmp += l4;
	}
	/* The quoted ports and, if it is there, the quoted L4 checksum. */
	ports = lbn_csum_diff(&old_ports, &new_ports, 1);
	l4 += ports;
	icmp += ports;
	if (bpf_skb_store_bytes(skb, q->l4, &new_ports, sizeof(new_ports), 0) < 0)
		return -1;
	if (bpf_skb_load_bytes(skb, lbn_l4_csum_off(q), &old_sum, 2) == 0 &&
	    !(q->key.proto == IPPROTO_UDP && old_sum == 0)) {
		new_sum = lbn_csum_fold((__u16)~old_sum + l4);
		if (q->key.proto == IPPROTO_UDP && new_sum == 0)
			new_sum = 0xffff;
		icmp = lbn_csum_add16(icmp, old_sum, new_sum);
		if (bpf_skb_store_bytes(skb, lbn_l4_csum_off(q), &new_sum, 2, 0) < 0)
			return -1;
	}
	/* The outer header (its addresses are ICMPv6's pseudo header). */
	if (p->family == LBN_V4) {
		if (lbn_rewrite_l3_4(skb, p, osrc->words[3], odst->words[3], ttl) < 0)
			return -1;
	} else {
		icmp += lbn_csum_diff(p->key.src.words, osrc->words, 4) +
			lbn_csum_diff(p->key.dst.words, odst->words, 4);
		if (lbn_rewrite_l3_6(skb, p, osrc, odst, ttl, 0) < 0)
			return -1;
	}
	return bpf_l4_csum_replace(skb, p->l4 + 2, 0, icmp, 0);
}

#endif /* LBCORE_ICMP_H */
