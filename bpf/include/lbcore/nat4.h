/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 packet parsing and rewriting for tc programs, with incremental L3/L4 checksum
 * updates. Reads go through bpf_skb_load_bytes into stack copies and writes through
 * bpf_skb_store_bytes, so no packet pointer outlives a helper that may move the data.
 *
 * Checksums: the L4 sum covers the pseudo header, so an address change updates both
 * the IPv4 header sum and the L4 sum (BPF_F_PSEUDO_HDR); a port change updates only
 * the L4 sum. A UDP checksum of 0 means "none" and stays 0 (BPF_F_MARK_MANGLED_0,
 * which also turns a computed 0 into 0xffff). CHECKSUM_PARTIAL packets (local senders,
 * GSO) are handled by the helpers: only the stored pseudo-header sum changes.
 */
#ifndef LBCORE_NAT4_H
#define LBCORE_NAT4_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#include "lbcore/nodeport.h"
#include "lbcore/addr.h"

#define LBN_IP_MF 0x2000
#define LBN_IP_OFFSET 0x1fff
#define LBN_IP_DF 0x4000
#define LBN_TCP_FIN 0x01
#define LBN_TCP_SYN 0x02
#define LBN_TCP_RST 0x04
#define LBN_TCP_ACK 0x10
#define LBN_AF_INET 2

/* A parsed IPv4 packet: the tuple as seen (a ct key) and where its headers are. */
struct lbn_pkt {
	struct lbn_ct_key key;
	__u32 l3;        /* offset of the IPv4 header */
	__u32 l4;        /* offset of the TCP/UDP header */
	__be16 ip_id;
	__u16 tot_len;   /* host order */
	__u8 tcp_flags;
	__u8 ttl;
	__u8 tos;
	__u8 pad;
};

/* 0: TCP/UDP (ports read) or IP-in-IP (no ports); -1: anything we leave alone. */
static __always_inline int lbn_parse4(struct __sk_buff *skb, __u32 l3, struct lbn_pkt *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (ip.frag_off & bpf_htons(LBN_IP_MF | LBN_IP_OFFSET))
		return -1; /* fragments: no ports to match; left to the stack */
	p->l3 = l3;
	p->l4 = l3 + ip.ihl * 4;
	p->ip_id = ip.id;
	p->tot_len = bpf_ntohs(ip.tot_len);
	p->ttl = ip.ttl;
	p->tos = ip.tos;
	p->key.proto = ip.protocol;
	lb_addr_from_v4(&p->key.src, ip.saddr);
	lb_addr_from_v4(&p->key.dst, ip.daddr);
	if (ip.protocol == IPPROTO_IPIP)
		return 0;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4, &p->key.sport, 4) < 0)
		return -1;
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4 + 13, &p->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

static __always_inline int lbn_is_ipv4(struct __sk_buff *skb)
{
	__be16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2) < 0)
		return 0;
	return proto == bpf_htons(ETH_P_IP);
}

static __always_inline __u32 lbn_l4_csum_off(const struct lbn_pkt *p)
{
	return p->l4 + (p->key.proto == IPPROTO_TCP ? 16 : 6);
}

static __always_inline __u64 lbn_l4_csum_flags(const struct lbn_pkt *p)
{
	return p->key.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the source (field 12) or destination (field 16) address. */
static __always_inline int lbn_set_addr4(struct __sk_buff *skb, const struct lbn_pkt *p,
					 __u32 field, __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, lbn_l4_csum_off(p), from, to,
				lbn_l4_csum_flags(p) | BPF_F_PSEUDO_HDR | sizeof(to)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3 + offsetof(struct iphdr, check), from, to,
				sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l3 + field, &to, sizeof(to), 0);
}

/* Rewrite the source (field 0) or destination (field 2) port. */
static __always_inline int lbn_set_port(struct __sk_buff *skb, const struct lbn_pkt *p,
					__u32 field, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, lbn_l4_csum_off(p), from, to,
				lbn_l4_csum_flags(p) | sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, p->l4 + field, &to, sizeof(to), 0);
}

/* Forwarding done here instead of by the stack: count the hop. */
static __always_inline int lbn_ttl_dec(struct __sk_buff *skb, struct lbn_pkt *p)
{
	__u8 ttl = p->ttl - 1;
	__be16 old = bpf_htons(((__u16)p->ttl << 8) | p->key.proto);
	__be16 new = bpf_htons(((__u16)ttl << 8) | p->key.proto);

	if (p->ttl <= 1)
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3 + offsetof(struct iphdr, check), old, new, 2) < 0)
		return -1;
	p->ttl = ttl;
	return bpf_skb_store_bytes(skb, p->l3 + offsetof(struct iphdr, ttl), &ttl, 1, 0);
}

static __always_inline __u16 lbn_csum_fold(__s64 sum)
{
	__u32 c = (__u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

/* bcc 0.26 declares this helper with three arguments; the kernel takes four. */
static long (*lbn_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/*
 * Route ``dst`` from this device and send the packet there, resolving the next hop's
 * MAC through the neighbour table. The stack would refuse to forward some of these
 * packets itself (their source is a local address after SNAT).
 */
static __always_inline int lbn_fib_redirect(struct __sk_buff *skb, __be32 src, __be32 dst)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	long rc;

	fib.family = LBN_AF_INET;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = src;
	fib.ipv4_dst = dst;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	nh.nh_family = LBN_AF_INET;
	nh.ipv4_nh = fib.ipv4_dst; /* the gateway, or dst itself when on link */
	return lbn_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

#endif /* LBCORE_NAT4_H */
