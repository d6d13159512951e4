/* SPDX-License-Identifier: Apache-2.0 */
/*
 * North-south service load balancing on tc (clsact) of the node devices.
 *
 * lbn_ingress: packets to a frontend (node address:nodePort, ExternalIP, LoadBalancer
 *   IP) get a backend once; every later packet of the flow follows its entry in the
 *   LRU connection-tracking map lbn_ct.
 *     local backend      DNAT, the stack delivers to the pod; the reply is reverse-NATed
 *                        by lbn_egress on its way out (client source preserved).
 *     remote, snat mode  SNAT to the node address with a port from the configured
 *                        range + DNAT, redirected to the backend's node; the reply
 *                        comes back here and is translated back to the client.
 *     remote, dsr mode   the untouched packet goes IP-in-IP to the backend *pod*
 *                        address (routed to its node), the outer IP id carrying the
 *                        backend port; lbn_ingress on that node decapsulates, DNATs and
 *                        records the reverse entry, and its lbn_egress gives the reply
 *                        the frontend as source, straight to the client.
 *   Packets that match no frontend and no flow are left to the stack.
 * lbn_egress: reverse NAT of replies of local backends (and of DSR-delivered flows).
 *
 * IPv4 only for now. Loaded by drivers/lbcore_tcnodeport/loader.py with bcc:
 *   -DLBCORE_PIN_DIR="<bpffs dir>"  where the maps are pinned (adopted on restart)
 *   -DLBN_*=<n>                     map sizes, Maglev table size, ct timeouts
 */
#include <uapi/linux/bpf.h>

#include "lbcore/nodeport.h"
#include "lbcore/nat4.h"

#ifndef LBCORE_PIN_DIR
#error "LBCORE_PIN_DIR must name the bpffs directory for the pinned maps"
#endif

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7) /* Linux 6.3; headers may be older */
#endif

BPF_TABLE_PINNED("hash", struct lb_svc_key, struct lbn_svc_val, lbn_svc,
		 LBN_SERVICE_MAP_MAX, LBCORE_PIN_DIR "/lbn_svc", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lbn_backend, lbn_backends,
		 LBN_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbn_backends", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lbn_maglev_key, __u32, lbn_maglev,
		 LBN_MAGLEV_MAP_MAX, LBCORE_PIN_DIR "/lbn_maglev", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lbn_src_range_key, __u8, lbn_src_range,
		 LBN_SRC_RANGE_MAP_MAX, LBCORE_PIN_DIR "/lbn_src_range", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb_addr, __u8, lbn_local_ep,
		 LBN_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbn_local_ep", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct lbn_config, lbn_cfg, 1, LBCORE_PIN_DIR "/lbn_cfg");
BPF_TABLE_PINNED("lru_hash", struct lbn_ct_key, struct lbn_ct_val, lbn_ct,
		 LBN_CT_MAP_MAX, LBCORE_PIN_DIR "/lbn_ct");

#define LBN_NSEC 1000000000ULL

/* ------------------------------------------------------------- connection tracking */

static __always_inline void lbn_ct_refresh(struct lbn_ct_val *ct, const struct lbn_pkt *p,
					   __u64 now)
{
	__u64 life = LBN_CT_UDP_TIMEOUT;

	if (p->key.proto == IPPROTO_TCP) {
		if (p->tcp_flags & (LBN_TCP_FIN | LBN_TCP_RST))
			ct->tcp_state = LBN_TCP_CLOSING;
		else if (!(p->tcp_flags & LBN_TCP_SYN) && ct->tcp_state == LBN_TCP_SYN)
			ct->tcp_state = LBN_TCP_ESTABLISHED;
		else if (!ct->tcp_state)
			ct->tcp_state = LBN_TCP_SYN;
		if (ct->tcp_state == LBN_TCP_CLOSING)
			life = LBN_CT_CLOSE_TIMEOUT;
		else if (ct->tcp_state == LBN_TCP_ESTABLISHED)
			life = LBN_CT_TCP_TIMEOUT;
		else
			life = LBN_CT_SYN_TIMEOUT;
	}
	ct->expires = now + life * LBN_NSEC;
}

/* An entry still describes this packet's flow (a new SYN after a close starts anew). */
static __always_inline int lbn_ct_live(const struct lbn_ct_val *ct, const struct lbn_pkt *p,
				       __u64 now)
{
	if (ct->expires <= now)
		return 0;
	if (ct->tcp_state == LBN_TCP_CLOSING && (p->tcp_flags & LBN_TCP_SYN) &&
	    !(p->tcp_flags & LBN_TCP_ACK))
		return 0;
	return 1;
}

/* ---------------------------------------------------------------------- rewriting */

static __always_inline int lbn_nat(struct __sk_buff *skb, const struct lbn_pkt *p,
				   const struct lbn_ct_val *ct)
{
	if (ct->flags & LBN_CT_F_SNAT) {
		if (lbn_set_addr4(skb, p, 12, p->key.src.words[3], ct->to_src.words[3]) < 0 ||
		    lbn_set_port(skb, p, 0, p->key.sport, ct->to_sport) < 0)
			return -1;
	}
	if (ct->flags & LBN_CT_F_DNAT) {
		if (lbn_set_addr4(skb, p, 16, p->key.dst.words[3], ct->to_dst.words[3]) < 0 ||
		    lbn_set_port(skb, p, 2, p->key.dport, ct->to_dport) < 0)
			return -1;
	}
	return 0;
}

/*
 * DSR: the client's segments reach the backend inside a carrier header, so the MSS the
 * *backend* announces in its SYN-ACK must leave room for it; otherwise a full-sized
 * non-GSO segment from the client (a retransmission, the tail of a burst) grows beyond
 * the MTU when encapsulated and is dropped by the device. Lowered by ``room`` bytes
 * (Linux puts MSS first, kind 2 length 4).
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

/* IP-in-IP to the backend pod address; the outer id carries the backend port. */
static __always_inline int lbn_dsr_encap(struct __sk_buff *skb, const struct lbn_pkt *p,
					 const struct lbn_ct_val *ct, __be32 node)
{
	struct iphdr outer = {};

	outer.version = 4;
	outer.ihl = 5;
	outer.tos = p->tos;
	outer.tot_len = bpf_htons(p->tot_len + sizeof(outer));
	outer.id = ct->to_dport; /* atomic datagram (DF): the id is free (RFC 6864) */
	outer.frag_off = bpf_htons(LBN_IP_DF);
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = node;
	outer.daddr = ct->to_dst.words[3];
	outer.check = lbn_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, p->l3, &outer, sizeof(outer), 0) < 0)
		return TC_ACT_SHOT;
	return lbn_fib_redirect(skb, outer.saddr, outer.daddr);
}

static __always_inline int lbn_forward(struct __sk_buff *skb, struct lbn_pkt *p,
				       const struct lbn_ct_val *ct)
{
	__u32 zero = 0;
	struct lbn_config *cfg;

	if (lbn_nat(skb, p, ct) < 0)
		return TC_ACT_SHOT;
	if (ct->action == LBN_ACT_STACK)
		return TC_ACT_OK;
	if (lbn_ttl_dec(skb, p) < 0)
		return TC_ACT_SHOT;
	if (ct->action == LBN_ACT_REDIRECT)
		return lbn_fib_redirect(skb, (ct->flags & LBN_CT_F_SNAT) ? ct->to_src.words[3]
									: p->key.src.words[3],
					(ct->flags & LBN_CT_F_DNAT) ? ct->to_dst.words[3]
								    : p->key.dst.words[3]);
	cfg = lbn_cfg.lookup(&zero);
	if (!cfg)
		return TC_ACT_SHOT;
	return lbn_dsr_encap(skb, p, ct, cfg->node_addr.words[3]);
}

/* ------------------------------------------------------------------ new flows */

static __always_inline __u32 lbn_mix(__u32 x)
{
	x ^= x >> 16;
	x *= 0x7feb352d;
	x ^= x >> 15;
	x *= 0x846ca68b;
	x ^= x >> 16;
	return x;
}

/* The same 5-tuple hashes the same on every node: Maglev's consistency across LBs. */
static __always_inline __u32 lbn_flow_hash(const struct lbn_ct_key *k)
{
	__u32 h = 0x2545f491;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = lbn_mix(h ^ k->src.words[i]);
		h = lbn_mix(h ^ k->dst.words[i]);
	}
	h = lbn_mix(h ^ (((__u32)k->sport << 16) | k->dport));
	return lbn_mix(h ^ k->proto);
}

static __always_inline __u32 lbn_select(const struct lbn_pkt *p, const struct lb_svc_key *hkey,
					const struct lbn_svc_val *hdr)
{
	struct lb_svc_key skey = *hkey;
	struct lbn_svc_val *slot;

	if (hdr->flags & LBN_SVC_F_MAGLEV) {
		struct lbn_maglev_key mkey = {};
		__u32 *id;

		mkey.svc_id = hdr->svc_id;
		mkey.index = lbn_flow_hash(&p->key) % LBN_MAGLEV_M;
		id = lbn_maglev.lookup(&mkey);
		return id ? *id : 0;
	}
	skey.slot = bpf_get_prandom_u32() % hdr->count + 1;
	slot = lbn_svc.lookup(&skey);
	return slot ? slot->backend_id : 0;
}

static __always_inline int lbn_src_allowed(__u16 svc_id, const struct lb_addr *src)
{
	struct lbn_src_range_key key = {};

	key.prefixlen = 32 + 128;
	key.svc_id = bpf_htonl(svc_id);
	key.address = *src;
	return lbn_src_range.lookup(&key) != NULL;
}

/* Reserve a free SNAT port by inserting the reply's entry; collisions try the next. */
static __always_inline int lbn_snat_reserve(const struct lbn_config *cfg,
					    struct lbn_ct_key *rkey,
					    const struct lbn_ct_val *rval, __u64 now)
{
	__u32 span, start;
	struct lbn_ct_val *old;

	if (cfg->snat_max < cfg->snat_min)
		return -1;
	span = (__u32)cfg->snat_max - cfg->snat_min + 1;
	start = bpf_get_prandom_u32();
	for (int i = 0; i < LBN_SNAT_TRIES; i++) {
		rkey->dport = bpf_htons(cfg->snat_min + (start + i) % span);
		old = lbn_ct.lookup(rkey);
		if (old && old->expires > now)
			continue; /* taken by a live flow */
		if (lbn_ct.update(rkey, (struct lbn_ct_val *)rval) == 0)
			return 0;
	}
	return -1;
}

static __always_inline int lbn_new_flow(struct __sk_buff *skb, struct lbn_pkt *p, __u64 now)
{
	struct lb_svc_key hkey = {};
	struct lbn_ct_key rkey = {};
	struct lbn_ct_val fwd = {}, rev = {};
	struct lbn_svc_val *hdr;
	struct lbn_backend *be;
	struct lbn_config *cfg;
	__u32 zero = 0, backend_id;

	hkey.address = p->key.dst;
	hkey.port = p->key.dport;
	hkey.proto = p->key.proto;
	hdr = lbn_svc.lookup(&hkey);
	if (!hdr)
		return TC_ACT_OK; /* not a frontend: the stack's business */
	if ((hdr->flags & LBN_SVC_F_SRC_RANGES) && !lbn_src_allowed(hdr->svc_id, &p->key.src))
		return TC_ACT_SHOT;
	if (hdr->count == 0)
		return TC_ACT_SHOT; /* no usable backend (eTP Local: none on this node) */
	backend_id = lbn_select(p, &hkey, hdr);
	be = lbn_backends.lookup(&backend_id);
	cfg = lbn_cfg.lookup(&zero);
	if (!be || !cfg)
		return TC_ACT_SHOT;

	fwd.backend_id = rev.backend_id = backend_id;
	fwd.to_dst = be->address;
	fwd.to_dport = be->port;
	lbn_ct_refresh(&fwd, p, now);
	rev.tcp_state = fwd.tcp_state;
	rev.expires = fwd.expires;
	rkey.src = be->address;
	rkey.sport = be->port;
	rkey.proto = p->key.proto;
	if (be->flags & LBN_BE_LOCAL) {
		fwd.action = LBN_ACT_STACK;
		fwd.flags = LBN_CT_F_DNAT;
		rkey.dst = p->key.src;
		rkey.dport = p->key.sport;
		rkey.dir = LBN_DIR_EGRESS;
		rev.action = LBN_ACT_STACK;
		rev.flags = LBN_CT_F_SNAT;
		rev.to_src = p->key.dst;
		rev.to_sport = p->key.dport;
		if (lbn_ct.update(&rkey, &rev) != 0)
			return TC_ACT_SHOT;
	} else if (cfg->mode == LBN_MODE_SNAT) {
		rkey.dst = cfg->node_addr;
		rkey.dir = LBN_DIR_INGRESS;
		rev.action = LBN_ACT_REDIRECT;
		rev.flags = LBN_CT_F_SNAT | LBN_CT_F_DNAT;
		rev.to_src = p->key.dst;
		rev.to_sport = p->key.dport;
		rev.to_dst = p->key.src;
		rev.to_dport = p->key.sport;
		if (lbn_snat_reserve(cfg, &rkey, &rev, now) < 0)
			return TC_ACT_SHOT; /* port range exhausted for this backend */
		fwd.action = LBN_ACT_REDIRECT;
		fwd.flags = LBN_CT_F_SNAT | LBN_CT_F_DNAT;
		fwd.to_src = cfg->node_addr;
		fwd.to_sport = rkey.dport;
	} else {
		fwd.action = LBN_ACT_DSR;
	}
	if (lbn_ct.update(&p->key, &fwd) != 0)
		return TC_ACT_SHOT;
	return lbn_forward(skb, p, &fwd);
}

/* ------------------------------------------------- DSR delivery on the backend node */

static __always_inline int lbn_dsr_deliver(struct __sk_buff *skb, struct lbn_pkt *outer,
					   __u64 now)
{
	struct lbn_pkt inner = {};
	struct lbn_ct_key rkey = {};
	struct lbn_ct_val rev = {}, *old;
	__be16 backend_port = outer->ip_id;

	if (!lbn_local_ep.lookup(&outer->key.dst))
		return TC_ACT_OK; /* not for one of our pods: not ours to decapsulate */
	if (outer->l4 != outer->l3 + sizeof(struct iphdr))
		return TC_ACT_OK;
	if (lbn_parse4(skb, outer->l4, &inner) < 0 || inner.key.proto == IPPROTO_IPIP)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_DECAP_L3_IPV4) < 0)
		return TC_ACT_SHOT;
	inner.l3 = outer->l3;
	inner.l4 -= sizeof(struct iphdr);

	rkey.src = outer->key.dst;
	rkey.dst = inner.key.src;
	rkey.sport = backend_port;
	rkey.dport = inner.key.sport;
	rkey.proto = inner.key.proto;
	rkey.dir = LBN_DIR_EGRESS;
	old = lbn_ct.lookup(&rkey);
	if (old) {
		rev = *old;
		if (!lbn_ct_live(&rev, &inner, now))
			rev.tcp_state = 0;
	}
	rev.action = LBN_ACT_STACK;
	rev.flags = LBN_CT_F_SNAT | LBN_CT_F_CLAMP_MSS;
	rev.to_src = inner.key.dst;
	rev.to_sport = inner.key.dport;
	lbn_ct_refresh(&rev, &inner, now);
	lbn_ct.update(&rkey, &rev);

	if (lbn_set_addr4(skb, &inner, 16, inner.key.dst.words[3], outer->key.dst.words[3]) < 0 ||
	    lbn_set_port(skb, &inner, 2, inner.key.dport, backend_port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* ----------------------------------------------------------------- entry points */

int lbn_ingress(struct __sk_buff *skb)
{
	struct lbn_pkt p = {};
	struct lbn_ct_val *ct;
	__u64 now;

	if (!lbn_is_ipv4(skb) || lbn_parse4(skb, ETH_HLEN, &p) < 0)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	if (p.key.proto == IPPROTO_IPIP)
		return lbn_dsr_deliver(skb, &p, now);
	p.key.dir = LBN_DIR_INGRESS;
	ct = lbn_ct.lookup(&p.key);
	if (ct && lbn_ct_live(ct, &p, now)) {
		lbn_ct_refresh(ct, &p, now);
		return lbn_forward(skb, &p, ct);
	}
	return lbn_new_flow(skb, &p, now);
}

int lbn_egress(struct __sk_buff *skb)
{
	struct lbn_pkt p = {};
	struct lbn_ct_val *ct;
	__u64 now;

	if (!lbn_is_ipv4(skb) || lbn_parse4(skb, ETH_HLEN, &p) < 0 ||
	    p.key.proto == IPPROTO_IPIP)
		return TC_ACT_OK;
	p.key.dir = LBN_DIR_EGRESS;
	ct = lbn_ct.lookup(&p.key);
	if (!ct)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	if (ct->expires <= now)
		return TC_ACT_OK;
	lbn_ct_refresh(ct, &p, now);
	if (lbn_nat(skb, &p, ct) < 0)
		return TC_ACT_SHOT;
	if ((ct->flags & LBN_CT_F_CLAMP_MSS) && lbn_clamp_mss(skb, &p, sizeof(struct iphdr)) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
