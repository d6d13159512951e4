/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The family-neutral view of a packet that the tc NodePort programs work on, and the
 * ones' complement arithmetic their incremental checksum updates share.
 *
 * Sums are taken over raw (network order) words: the Internet checksum does not depend
 * on byte order as long as the folded result is stored the way it was read (RFC 1071),
 * so no byte swapping is needed anywhere.
 */
#ifndef LBCORE_PKT_H
#define LBCORE_PKT_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#include "lbcore/nodeport.h"
#include "lbcore/addr.h"

#define LBN_V4 4
#define LBN_V6 6
#define LBN_AF_INET 2
#define LBN_AF_INET6 10

#define LBN_PROTO_IPIP 4    /* IPv4 in IPv4: the DSR carrier of IPv4 flows */
#define LBN_PROTO_IPV6 41   /* IPv6 in IPv6: the DSR carrier of IPv6 flows */
#define LBN_PROTO_ICMP 1
#define LBN_PROTO_ICMPV6 58

#define LBN_TCP_FIN 0x01
#define LBN_TCP_SYN 0x02
#define LBN_TCP_RST 0x04
#define LBN_TCP_ACK 0x10

#define LBN_IP4_HLEN 20
#define LBN_IP6_HLEN 40

/* A parsed packet: the tuple as seen (a ct key, dir set by the caller) and its layout. */
struct lbn_pkt {
	struct lbn_ct_key key;
	__u32 l3;      /* offset of the IP header */
	__u32 l4;      /* offset of the TCP/UDP/ICMP header, or of the carried IP header */
	__u32 len;     /* IP packet length with its header, host order */
	__u8 family;   /* LBN_V4 | LBN_V6 */
	__u8 tcp_flags;
	__u8 ttl;      /* TTL / hop limit */
	__u8 tos;      /* TOS / traffic class */
	__u8 icmp_type; /* ICMP / ICMPv6 only */
	__u8 pad[3];
};

/* A packet's tuple after translation. */
struct lbn_tuple {
	struct lb_addr src;
	struct lb_addr dst;
	__be16 sport;
	__be16 dport;
};

static __always_inline __u32 lbn_csum_add(__u32 sum, __be32 word)
{
	return sum + (word & 0xffff) + (word >> 16);
}

static __always_inline __u32 lbn_csum_sub(__u32 sum, __be32 word)
{
	return lbn_csum_add(sum, ~word);
}

/* The checksum difference of replacing ``n`` words ``from`` by ``to`` (n is a constant). */
static __always_inline __u32 lbn_csum_diff(const __be32 *from, const __be32 *to, int n)
{
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < n; i++)
		sum = lbn_csum_add(lbn_csum_sub(sum, from[i]), to[i]);
	return sum;
}

/* Fold a 32-bit sum to 16 bits and complement it: the value a checksum field holds. */
static __always_inline __u16 lbn_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline __u32 lbn_l4_csum_off(const struct lbn_pkt *p)
{
	return p->l4 + (p->key.proto == IPPROTO_TCP ? 16 : 6);
}

/* UDP over IPv4 may carry no checksum (0): it stays 0, and a computed 0 becomes 0xffff. */
static __always_inline __u64 lbn_l4_csum_flags(const struct lbn_pkt *p)
{
	return p->key.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

#endif /* LBCORE_PKT_H */
