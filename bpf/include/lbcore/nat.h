/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Family-neutral packet operations of the tc NodePort programs: parse, translate (L3 and
 * L4 with incremental checksums), MSS clamping, the DSR carrier, and forwarding by FIB
 * lookup. The family-specific parts live in lbcore/nat4.h and lbcore/nat6.h.
 *
 * L4 checksums: the pseudo header makes an address change an L4 change too; it goes
 * through bpf_l4_csum_replace with BPF_F_PSEUDO_HDR (one call for both addresses, as a
 * diff), ports through a second call without it. The helper knows the skb's checksum
 * state: for CHECKSUM_PARTIAL (local senders, GSO) only the stored pseudo-header sum
 * changes, so GSO packets stay GSO and nothing is linearised.
 */
#ifndef LBCORE_NAT_H
#define LBCORE_NAT_H

#include "lbcore/nat4.h"
#include "lbcore/nat6.h"

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7) /* Linux 6.3; headers may be older */
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

static __always_inline int lbn_parse(struct __sk_buff *skb, struct lbn_pkt *p)
{
	__be16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2) < 0)
		return -1;
	if (proto == bpf_htons(ETH_P_IP))
		return lbn_parse4(skb, ETH_HLEN, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return lbn_parse6(skb, ETH_HLEN, p);
	return -1;
}

/* The packet carried by a DSR carrier at ``outer->l4`` (same family as the carrier). */
static __always_inline int lbn_parse_inner(struct __sk_buff *skb, const struct lbn_pkt *outer,
					   struct lbn_pkt *inner)
{
	if (outer->family == LBN_V4)
		return lbn_parse4(skb, outer->l4, inner);
	return lbn_parse6(skb, outer->l4, inner);
}

static __always_inline __u32 lbn_carrier_len(const struct lbn_pkt *p)
{
	return p->family == LBN_V4 ? LBN_IP4_HLEN : LBN_IP6_HLEN;
}

/*
 * Translate the packet to src:sport -> dst:dport; ``forward`` when this program sends
 * it on (TTL / hop limit decremented, as the stack would). 0, or -1 if a helper failed.
 */
static __always_inline int lbn_rewrite(struct __sk_buff *skb, const struct lbn_pkt *p,
				       const struct lb_addr *src, __be16 sport,
				       const struct lb_addr *dst, __be16 dport, int forward)
{
	__u64 flags = lbn_l4_csum_flags(p);
	__u32 csum_off = lbn_l4_csum_off(p);
	__u8 ttl = forward ? p->ttl - 1 : p->ttl;
	int moved = !lb_addr_equal(src, &p->key.src) || !lb_addr_equal(dst, &p->key.dst);
	__be32 old_ports, new_ports;
	__u32 diff;

	if (forward && p->ttl <= 1)
		return -1; /* the stack would answer time exceeded; we drop */
	if (p->family == LBN_V4) {
		__be32 from[2] = {p->key.src.words[3], p->key.dst.words[3]};
		__be32 to[2] = {src->words[3], dst->words[3]};

		if ((moved || forward) && lbn_rewrite_l3_4(skb, p, to[0], to[1], ttl) < 0)
			return -1;
		diff = lbn_csum_diff(from, to, 2);
	} else {
		if (lbn_rewrite_l3_6(skb, p, src, dst, ttl, BPF_F_RECOMPUTE_CSUM) < 0)
			return -1;
		diff = lbn_csum_diff(p->key.src.words, src->words, 4) +
		       lbn_csum_diff(p->key.dst.words, dst->words, 4);
	}
	if (moved && bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	old_ports = (__be32)p->key.sport | ((__be32)p->key.dport << 16);
	new_ports = (__be32)sport | ((__be32)dport << 16);
	if (old_ports == new_ports)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old_ports, new_ports, flags | 4) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4, &new_ports, sizeof(new_ports), 0);
}

/*
 * Lower the MSS a TCP SYN (or SYN-ACK) announces by ``room`` bytes (Linux puts MSS
 * first, kind 2 length 4), so the peer's full-sized segments fit a carrier header.
 */
static __always_inline int lbn_clamp_mss(struct __sk_buff *skb, const struct lbn_pkt *p,
					 __u16 room)
{
	__u8 opt[4];
	__be16 old, new;
	__u16 mss;

	if (p->key.proto != IPPROTO_TCP || !(p->tcp_flags & LBN_TCP_SYN))
		return 0;
	if (bpf_skb_load_bytes(skb, p->l4 + 20, opt, sizeof(opt)) < 0)
		return 0; /* no options */
	if (opt[0] != 2 || opt[1] != 4)
		return 0;
	mss = ((__u16)opt[2] << 8) | opt[3];
	if (mss <= 536 + room)
		return 0;
	old = bpf_htons(mss);
	new = bpf_htons(mss - room);
	if (bpf_l4_csum_replace(skb, lbn_l4_csum_off(p), old, new, sizeof(new)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4 + 22, &new, sizeof(new), 0);
}

/* Put the packet in a carrier header to ``dst`` (IP-in-IP / IPv6-in-IPv6). */
static __always_inline int lbn_carrier_push(struct __sk_buff *skb, const struct lbn_pkt *p,
					    const struct lb_addr *src, const struct lb_addr *dst)
{
	if (p->family == LBN_V4) {
		struct iphdr outer;

		lbn_carrier4(&outer, p, src->words[3], dst->words[3]);
		if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, p->l3, &outer, sizeof(outer), 0);
	} else {
		struct ipv6hdr outer;

		lbn_carrier6(&outer, p, src, dst);
		if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV6) < 0)
			return -1;
		return bpf_skb_store_bytes(skb, p->l3, &outer, sizeof(outer), 0);
	}
}

/* Remove the carrier header in front of ``inner``; its offsets are fixed up. */
static __always_inline int lbn_carrier_pop(struct __sk_buff *skb, const struct lbn_pkt *outer,
					   struct lbn_pkt *inner)
{
	__u32 room = inner->l3 - outer->l3;
	__u64 flags = outer->family == LBN_V4 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4
					      : BPF_F_ADJ_ROOM_DECAP_L3_IPV6;

	if (room != lbn_carrier_len(outer))
		return -1; /* options / extension headers on the carrier: not ours */
	if (bpf_skb_adjust_room(skb, -(__s32)room, BPF_ADJ_ROOM_MAC, flags) < 0)
		return -1;
	inner->l3 -= room;
	inner->l4 -= room;
	return 0;
}

/* bcc 0.26 declares this helper with three arguments; the kernel takes four. */
static long (*lbn_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/*
 * Route ``dst`` (from ``src``) and send the packet there, the next hop's MAC resolved
 * through the neighbour table. The stack would refuse to forward some of these packets
 * itself (their source is a local address after SNAT). A packet too big for the route
 * (BPF_FIB_LKUP_RET_FRAG_NEEDED) is dropped; see lbn_icmp_* for the translated errors.
 */
static __always_inline int lbn_fib_redirect(struct __sk_buff *skb, __u8 family,
					    const struct lb_addr *src, const struct lb_addr *dst)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	long rc;

	fib.ifindex = skb->ifindex;
	if (family == LBN_V4) {
		fib.family = LBN_AF_INET;
		fib.ipv4_src = src->words[3];
		fib.ipv4_dst = dst->words[3];
	} else {
		fib.family = LBN_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src->words, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, dst->words, sizeof(fib.ipv6_dst));
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	nh.nh_family = fib.family;
	if (family == LBN_V4)
		nh.ipv4_nh = fib.ipv4_dst; /* the gateway, or dst itself when on link */
	else
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, sizeof(nh.ipv6_nh));
	return lbn_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

#endif /* LBCORE_NAT_H */
