/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection-tracking state of the tc NodePort programs, as pure functions of an entry
 * and a packet: TCP state per direction's entry, expiry, what a translated tuple is,
 * where a segment's sequence ends, whether a closed flow's SNAT port may be reused.
 * The map operations stay in nodeport.c (bcc rewrites map calls in the main file only).
 */
#ifndef LBCORE_CONNTRACK_H
#define LBCORE_CONNTRACK_H

#include "lbcore/pkt.h"

#define LBN_NSEC 1000000000ULL

/*
 * How long an entry lives after a packet of its flow. A closed flow's SNAT reservation
 * outlives the backend's TIME_WAIT (60 s on Linux): while it is there, a new flow gets
 * the port only if its SYN passes that TIME_WAIT (lbn_snat_reusable); once it is gone
 * the port counts as free.
 */
static __always_inline __u64 lbn_ct_life(const struct lbn_ct_val *ct, __u8 proto, __u8 state)
{
	if (proto != IPPROTO_TCP)
		return LBN_CT_UDP_TIMEOUT * LBN_NSEC;
	if (state == LBN_TCP_CLOSED && (ct->flags & LBN_CT_F_REPLY) &&
	    ct->action == LBN_ACT_REDIRECT)
		return LBN_CT_TIME_WAIT_TIMEOUT * LBN_NSEC;
	if (state >= LBN_TCP_CLOSING)
		return LBN_CT_CLOSE_TIMEOUT * LBN_NSEC;
	if (state == LBN_TCP_ESTABLISHED)
		return LBN_CT_TCP_TIMEOUT * LBN_NSEC;
	return LBN_CT_SYN_TIMEOUT * LBN_NSEC;
}

/* The TCP state after ``flags`` from the side whose FIN bit is ``side``. */
static __always_inline __u8 lbn_tcp_next(__u8 state, __u8 *fins, __u8 flags, __u8 side)
{
	if (flags & LBN_TCP_RST) {
		*fins |= LBN_FIN_RST;
		return LBN_TCP_CLOSED;
	}
	if (state == LBN_TCP_CLOSED)
		return state;
	if (flags & LBN_TCP_FIN) {
		*fins |= side;
		return (*fins & LBN_FIN_CLIENT) && (*fins & LBN_FIN_BACKEND) ? LBN_TCP_CLOSED
									 : LBN_TCP_CLOSING;
	}
	if (state == LBN_TCP_SYN && !(flags & LBN_TCP_SYN))
		return LBN_TCP_ESTABLISHED;
	return state ? state : LBN_TCP_SYN;
}

/*
 * An entry's state and expiry after one packet of the flow. The expiry is written at
 * most once a second (or on a state change): fewer stores to a line other CPUs read.
 */
static __always_inline void lbn_ct_refresh(struct lbn_ct_val *ct, const struct lbn_pkt *p,
					   __u64 now, __u8 fin)
{
	__u8 fins = ct->fins;
	__u8 state = 0;
	__u64 expires;

	if (p->key.proto == IPPROTO_TCP)
		state = lbn_tcp_next(ct->tcp_state, &fins, p->tcp_flags, fin);
	expires = now + lbn_ct_life(ct, p->key.proto, state);
	if (state != ct->tcp_state || fins != ct->fins || expires > ct->expires + LBN_NSEC) {
		ct->tcp_state = state;
		ct->fins = fins;
		ct->expires = expires;
	}
}

static __always_inline __u8 lbn_ct_side(const struct lbn_ct_val *ct)
{
	return (ct->flags & LBN_CT_F_REPLY) ? LBN_FIN_BACKEND : LBN_FIN_CLIENT;
}

/* An entry still describes this packet's flow (a new SYN after a close starts anew). */
static __always_inline int lbn_ct_live(const struct lbn_ct_val *ct, const struct lbn_pkt *p,
				       __u64 now)
{
	if (ct->expires <= now)
		return 0;
	if (ct->tcp_state >= LBN_TCP_CLOSING && (p->tcp_flags & LBN_TCP_SYN) &&
	    !(p->tcp_flags & LBN_TCP_ACK))
		return 0;
	return 1;
}

static __always_inline void lbn_translated(struct lbn_tuple *t, const struct lbn_pkt *p,
					   const struct lbn_ct_val *ct)
{
	int snat = ct->flags & LBN_CT_F_SNAT, dnat = ct->flags & LBN_CT_F_DNAT;

	t->src = snat ? ct->to_src : p->key.src;
	t->sport = snat ? ct->to_sport : p->key.sport;
	t->dst = dnat ? ct->to_dst : p->key.dst;
	t->dport = dnat ? ct->to_dport : p->key.dport;
}

/* Where a TCP segment's sequence ends (payload and FIN counted) and its TSval. */
struct lbn_tcp_end {
	__u32 seq; /* host order */
	__u32 ts;  /* host order; 0: no timestamp option */
};

#define LBN_TCPOPT_TS 8

static __always_inline void lbn_tcp_end(struct __sk_buff *skb, const struct lbn_pkt *p,
					struct lbn_tcp_end *end)
{
	struct {
		__be32 seq;
		__be32 ack;
		__u8 doff;
	} h;
	__u8 opt[40];
	__u32 hlen, olen, i = 0;

	end->seq = end->ts = 0;
	if (bpf_skb_load_bytes(skb, p->l4 + 4, &h, 9) < 0)
		return;
	hlen = (p->l4 - p->l3) + (h.doff >> 4) * 4;
	end->seq = bpf_ntohl(h.seq) + (p->len > hlen ? p->len - hlen : 0) +
		   ((p->tcp_flags & LBN_TCP_FIN) ? 1 : 0);
	olen = ((h.doff >> 4) * 4) & 0x3f;
	if (olen <= 20)
		return;
	olen -= 20;
	if (olen > sizeof(opt) || bpf_skb_load_bytes(skb, p->l4 + 20, opt, olen) < 0)
		return;
#pragma unroll
	for (int n = 0; n < 10; n++) { /* options before the timestamp: few, short */
		if (i + 10 > olen || i > sizeof(opt) - 10)
			return;
		if (opt[i] == 0)
			return;
		if (opt[i] == 1) {
			i++;
			continue;
		}
		if (opt[i] == LBN_TCPOPT_TS && opt[i + 1] == 10) {
			end->ts = ((__u32)opt[i + 2] << 24) | ((__u32)opt[i + 3] << 16) |
				  ((__u32)opt[i + 4] << 8) | opt[i + 5];
			return;
		}
		if (opt[i + 1] < 2)
			return;
		i += opt[i + 1];
	}
}

/*
 * A closed flow's port may serve a new flow if the backend will take the new SYN even
 * if it holds the old flow in TIME_WAIT (whoever closed first: FINs cross): after an
 * RST it holds nothing; with timestamps (PAWS) the SYN's TSval must be newer than the
 * old flow's last, and as clients randomise TS offsets per connection that holds for
 * about half the closed ports, so the probes look at several; without timestamps the
 * SYN's sequence number must be after the old flow's (what the kernel's NAT checks
 * before it evicts a TIME_WAIT conntrack).
 */
static __always_inline int lbn_snat_reusable(const struct lbn_ct_val *old,
					     const struct lbn_tcp_end *syn)
{
	if (old->tcp_state != LBN_TCP_CLOSED || !syn->seq)
		return 0;
	if (old->fins & LBN_FIN_RST)
		return 1;
	if (old->ts_end && syn->ts)
		return (__s32)(syn->ts - old->ts_end) > 0;
	return old->seq_end && (__s32)(syn->seq - old->seq_end) > 0;
}

#endif /* LBCORE_CONNTRACK_H */
