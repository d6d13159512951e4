/* SPDX-License-Identifier: Apache-2.0 */
/*
 * North-south service load balancing on tc (clsact) of the node devices, IPv4 and IPv6.
 *
 * lbn_ingress: packets to a frontend (node address:nodePort, ExternalIP, LoadBalancer
 *   IP) get a backend once; every later packet of the flow follows its entry in the
 *   LRU connection-tracking map lbn_ct.
 *     local backend      DNAT, the stack delivers to the pod; the reply is reverse-NATed
 *                        by lbn_egress on its way out (client source preserved).
 *     remote, snat mode  SNAT to the node address with a port from the configured
 *                        range + DNAT, redirected to the backend's node; the reply
 *                        comes back here and is translated back to the client.
 *     remote, dsr mode   the untouched packet goes in a carrier (IP-in-IP, IPv6-in-IPv6)
 *                        to the backend *pod* address (routed to its node); lbn_ingress
 *                        on that node finds the backend port in lbn_dsr, decapsulates,
 *                        DNATs and records the reverse entry, and its lbn_egress gives
 *                        the reply the frontend as source, straight to the client.
 *   Packets that match no frontend and no flow are left to the stack.
 * lbn_egress: reverse NAT of replies of local backends (and of DSR-delivered flows).
 * ICMP errors quoting a tracked flow are translated like it (PMTU discovery).
 * Conntrack state: lbcore/conntrack.h; the map operations are here, as bcc rewrites
 * map calls in the main source file only.
 *
 * Loaded by drivers/lbcore_tcnodeport/loader.py with bcc:
 *   -DLBCORE_PIN_DIR="<bpffs dir>"  where the maps are pinned (adopted on restart)
 *   -DLBN_*=<n>                     map sizes, Maglev table size, ct timeouts
 */
#include <uapi/linux/bpf.h>

#include "lbcore/nodeport.h"
#include "lbcore/nat.h"
#include "lbcore/icmp.h"
#include "lbcore/conntrack.h"

#ifndef LBCORE_PIN_DIR
#error "LBCORE_PIN_DIR must name the bpffs directory for the pinned maps"
#endif

BPF_TABLE_PINNED("hash", struct lb_svc_key, struct lbn_svc_val, lbn_svc,
		 LBN_SERVICE_MAP_MAX, LBCORE_PIN_DIR "/lbn_svc", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lbn_backend, lbn_backends,
		 LBN_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbn_backends", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lbn_maglev_key, __u32, lbn_maglev,
		 LBN_MAGLEV_MAP_MAX, LBCORE_PIN_DIR "/lbn_maglev", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lbn_src_range_key, __u8, lbn_src_range,
		 LBN_SRC_RANGE_MAP_MAX, LBCORE_PIN_DIR "/lbn_src_range", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lbn_dsr_key, __be16, lbn_dsr,
		 LBN_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbn_dsr", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct lbn_config, lbn_cfg, 1, LBCORE_PIN_DIR "/lbn_cfg");
BPF_TABLE_PINNED("lru_hash", struct lbn_ct_key, struct lbn_ct_val, lbn_ct,
		 LBN_CT_MAP_MAX, LBCORE_PIN_DIR "/lbn_ct");

/*
 * Per-CPU scratch space for the rare paths (a new flow, a DSR delivery): the entry
 * points inline everything, and their structs on the stack would pass the 512-byte
 * limit. A tc program runs to completion on its CPU, so one slot per CPU suffices.
 */
struct lbn_scratch {
	struct lbn_ct_key rkey;
	struct lbn_ct_val fwd;
	struct lbn_ct_val rev;
	struct lbn_pkt inner;
};
BPF_PERCPU_ARRAY(lbn_scratch, struct lbn_scratch, 1);

/* ------------------------------------------------------------- connection tracking */

/*
 * A FIN or RST closes the flow for both directions' entries: the entry of the replies
 * (keyed by the translated tuple, reversed) learns it too, and where the client's
 * sequence ends, so the SNAT port it holds can serve a new flow that the backend will
 * accept (lbn_snat_reusable).
 */
static __always_inline void lbn_ct_tell_peer(struct __sk_buff *skb, const struct lbn_pkt *p,
					     const struct lbn_ct_val *ct,
					     const struct lbn_tuple *t, __u64 now)
{
	struct lbn_ct_key peer = {};
	struct lbn_ct_val *pv;
	__u8 fins, side;

	if (!(p->tcp_flags & (LBN_TCP_FIN | LBN_TCP_RST)) || ct->peer_dir == LBN_PEER_NONE ||
	    p->key.proto != IPPROTO_TCP)
		return;
	peer.src = t->dst;
	peer.sport = t->dport;
	peer.dst = t->src;
	peer.dport = t->sport;
	peer.proto = p->key.proto;
	peer.dir = ct->peer_dir == LBN_PEER_EGRESS ? LBN_DIR_EGRESS : LBN_DIR_INGRESS;
	pv = lbn_ct.lookup(&peer);
	if (!pv || pv->expires <= now)
		return;
	side = lbn_ct_side(ct);
	fins = pv->fins;
	pv->tcp_state = lbn_tcp_next(pv->tcp_state, &fins, p->tcp_flags, side);
	pv->fins = fins;
	if (side == LBN_FIN_CLIENT && (p->tcp_flags & LBN_TCP_FIN)) {
		struct lbn_tcp_end end;

		lbn_tcp_end(skb, p, &end);
		pv->seq_end = end.seq;
		pv->ts_end = end.ts;
	}
	pv->expires = now + lbn_ct_life(pv, p->key.proto, pv->tcp_state);
}

/* ---------------------------------------------------------------------- forwarding */

static __always_inline const struct lb_addr *lbn_node_addr(const struct lbn_config *cfg,
							   __u8 family)
{
	const struct lb_addr *a = family == LBN_V4 ? &cfg->node_addr : &cfg->node_addr6;

	if (!(a->words[0] | a->words[1] | a->words[2] | a->words[3]))
		return NULL; /* the node has no address of this family */
	return a;
}

/* Send the packet, unchanged but for its TTL, in a carrier to the backend pod. */
static __always_inline int lbn_dsr_send(struct __sk_buff *skb, const struct lbn_pkt *p,
					const struct lbn_ct_val *ct)
{
	const struct lb_addr *node;
	struct lbn_config *cfg;
	__u32 zero = 0;

	cfg = lbn_cfg.lookup(&zero);
	node = cfg ? lbn_node_addr(cfg, p->family) : NULL;
	if (!node)
		return TC_ACT_SHOT;
	if (lbn_rewrite(skb, p, &p->key.src, p->key.sport, &p->key.dst, p->key.dport, 1) < 0 ||
	    lbn_carrier_push(skb, p, node, &ct->to_dst) < 0)
		return TC_ACT_SHOT;
	return lbn_fib_redirect(skb, p->family, node, &ct->to_dst);
}

/* A packet of a known flow: translate it and send it where its entry says. */
static __always_inline int lbn_forward(struct __sk_buff *skb, const struct lbn_pkt *p,
				       const struct lbn_ct_val *ct, __u64 now)
{
	struct lbn_tuple t;
	int redirect = ct->action == LBN_ACT_REDIRECT;

	if (ct->action == LBN_ACT_DSR)
		return lbn_dsr_send(skb, p, ct);
	lbn_translated(&t, p, ct);
	if (lbn_rewrite(skb, p, &t.src, t.sport, &t.dst, t.dport, redirect) < 0)
		return TC_ACT_SHOT;
	lbn_ct_tell_peer(skb, p, ct, &t, now);
	if (!redirect)
		return TC_ACT_OK;
	return lbn_fib_redirect(skb, p->family, &t.src, &t.dst);
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

/* Take ``rkey``'s port for a new flow: insert-if-absent, so two CPUs never share it. */
static __always_inline int lbn_snat_take(struct lbn_ct_key *rkey, const struct lbn_ct_val *rval,
					 int occupied)
{
	if (occupied)
		lbn_ct.delete(rkey);
	return lbn_ct.insert(rkey, (struct lbn_ct_val *)rval);
}

/*
 * Reserve a SNAT port (the space is per backend tuple: the reply's entry is the
 * reservation). Probes from a random start take the first port that is free or
 * expired; failing that, the first whose closed flow the new SYN may follow.
 */
static __always_inline int lbn_snat_reserve(const struct lbn_config *cfg,
					    struct lbn_ct_key *rkey,
					    const struct lbn_ct_val *rval, __u64 now,
					    const struct lbn_tcp_end *syn)
{
	__u32 span, start;
	__be16 closed = 0;
	struct lbn_ct_val *old;

	if (cfg->snat_max < cfg->snat_min)
		return -1;
	span = (__u32)cfg->snat_max - cfg->snat_min + 1;
	start = bpf_get_prandom_u32();
	for (int i = 0; i < LBN_SNAT_TRIES; i++) {
		rkey->dport = bpf_htons(cfg->snat_min + (start + i) % span);
		old = lbn_ct.lookup(rkey);
		if (!old || old->expires <= now) {
			if (lbn_snat_take(rkey, rval, old != NULL) == 0)
				return 0;
			continue; /* another CPU took it just now */
		}
		if (!closed && lbn_snat_reusable(old, syn))
			closed = rkey->dport;
	}
	if (!closed)
		return -1;
	rkey->dport = closed;
	return lbn_snat_take(rkey, rval, 1);
}

static __always_inline int lbn_new_flow(struct __sk_buff *skb, struct lbn_pkt *p, __u64 now)
{
	struct lb_svc_key hkey = {};
	const struct lb_addr *node;
	struct lbn_ct_val *fwd, *rev;
	struct lbn_ct_key *rkey;
	struct lbn_scratch *s;
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
	s = lbn_scratch.lookup(&zero);
	if (!be || !cfg || !s || lb_addr_is_v4(&be->address) != (p->family == LBN_V4))
		return TC_ACT_SHOT;
	rkey = &s->rkey;
	fwd = &s->fwd;
	rev = &s->rev;
	__builtin_memset(rkey, 0, sizeof(*rkey));
	__builtin_memset(fwd, 0, sizeof(*fwd));
	__builtin_memset(rev, 0, sizeof(*rev));

	fwd->backend_id = rev->backend_id = backend_id;
	fwd->to_dst = be->address;
	fwd->to_dport = be->port;
	lbn_ct_refresh(fwd, p, now, LBN_FIN_CLIENT);
	rev->tcp_state = fwd->tcp_state;
	rev->expires = fwd->expires;
	rkey->src = be->address;
	rkey->sport = be->port;
	rkey->proto = p->key.proto;
	if (be->flags & LBN_BE_LOCAL) {
		fwd->action = LBN_ACT_STACK;
		fwd->flags = LBN_CT_F_DNAT;
		fwd->peer_dir = LBN_PEER_EGRESS;
		rkey->dst = p->key.src;
		rkey->dport = p->key.sport;
		rkey->dir = LBN_DIR_EGRESS;
		rev->action = LBN_ACT_STACK;
		rev->flags = LBN_CT_F_SNAT | LBN_CT_F_REPLY;
		rev->peer_dir = LBN_PEER_INGRESS;
		rev->to_src = p->key.dst;
		rev->to_sport = p->key.dport;
		if (lbn_ct.update(rkey, rev) != 0)
			return TC_ACT_SHOT;
	} else if (cfg->mode == LBN_MODE_SNAT) {
		node = lbn_node_addr(cfg, p->family);
		if (!node)
			return TC_ACT_SHOT;
		rkey->dst = *node;
		rkey->dir = LBN_DIR_INGRESS;
		rev->action = LBN_ACT_REDIRECT;
		rev->flags = LBN_CT_F_SNAT | LBN_CT_F_DNAT | LBN_CT_F_REPLY;
		rev->peer_dir = LBN_PEER_INGRESS;
		rev->to_src = p->key.dst;
		rev->to_sport = p->key.dport;
		rev->to_dst = p->key.src;
		rev->to_dport = p->key.sport;
		struct lbn_tcp_end syn = {};

		if (p->key.proto == IPPROTO_TCP && (p->tcp_flags & LBN_TCP_SYN))
			lbn_tcp_end(skb, p, &syn);
		if (lbn_snat_reserve(cfg, rkey, rev, now, &syn) < 0)
			return TC_ACT_SHOT; /* port range exhausted for this backend */
		fwd->action = LBN_ACT_REDIRECT;
		fwd->flags = LBN_CT_F_SNAT | LBN_CT_F_DNAT;
		fwd->peer_dir = LBN_PEER_INGRESS;
		fwd->to_src = *node;
		fwd->to_sport = rkey->dport;
	} else {
		fwd->action = LBN_ACT_DSR;
	}
	if (lbn_ct.update(&p->key, fwd) != 0)
		return TC_ACT_SHOT;
	return lbn_forward(skb, p, fwd, now);
}

/* ------------------------------------------------- DSR delivery on the backend node */

static __always_inline __be16 *lbn_dsr_port(const struct lb_addr *pod, const struct lbn_pkt *in)
{
	struct lbn_dsr_key k = {};
	__be16 *port;

	k.backend = *pod;
	k.frontend = in->key.dst;
	k.port = in->key.dport;
	k.proto = in->key.proto;
	port = lbn_dsr.lookup(&k);
	if (port)
		return port;
	__builtin_memset(&k.frontend, 0, sizeof(k.frontend)); /* a NodePort, via any node */
	return lbn_dsr.lookup(&k);
}

static __always_inline int lbn_dsr_deliver(struct __sk_buff *skb, struct lbn_pkt *outer,
					   __u64 now)
{
	struct lbn_ct_val *rev, *old;
	struct lbn_ct_key *rkey;
	struct lbn_scratch *s;
	struct lbn_pkt *inner;
	__be16 *port, backend_port;
	__u32 zero = 0;

	s = lbn_scratch.lookup(&zero);
	if (!s)
		return TC_ACT_OK;
	inner = &s->inner;
	rkey = &s->rkey;
	rev = &s->rev;
	__builtin_memset(inner, 0, sizeof(*inner));
	if (lbn_parse_inner(skb, outer, inner) < 0 || inner->family != outer->family ||
	    (inner->key.proto != IPPROTO_TCP && inner->key.proto != IPPROTO_UDP))
		return TC_ACT_OK;
	port = lbn_dsr_port(&outer->key.dst, inner);
	if (!port)
		return TC_ACT_OK; /* not a flow for one of our pods: not ours to decapsulate */
	backend_port = *port;
	if (lbn_carrier_pop(skb, outer, inner) < 0)
		return TC_ACT_SHOT;

	__builtin_memset(rkey, 0, sizeof(*rkey));
	rkey->src = outer->key.dst;
	rkey->dst = inner->key.src;
	rkey->sport = backend_port;
	rkey->dport = inner->key.sport;
	rkey->proto = inner->key.proto;
	rkey->dir = LBN_DIR_EGRESS;
	old = lbn_ct.lookup(rkey);
	if (old && lbn_ct_live(old, inner, now) && lb_addr_equal(&old->to_src, &inner->key.dst)) {
		lbn_ct_refresh(old, inner, now, LBN_FIN_CLIENT);
	} else {
		__builtin_memset(rev, 0, sizeof(*rev));
		rev->action = LBN_ACT_STACK;
		rev->flags = LBN_CT_F_SNAT | LBN_CT_F_CLAMP_MSS | LBN_CT_F_REPLY | LBN_CT_F_DSR_IN;
		rev->to_src = inner->key.dst;
		rev->to_sport = inner->key.dport;
		lbn_ct_refresh(rev, inner, now, LBN_FIN_CLIENT);
		lbn_ct.update(rkey, rev);
	}
	if (lbn_rewrite(skb, inner, &inner->key.src, inner->key.sport, &outer->key.dst,
			backend_port, 0) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/*
 * An ICMP error about a translated flow (fragmentation needed / packet too big,
 * unreachable, time exceeded) is translated like the flow, so PMTU discovery and
 * errors work through the NodePort. The quoted packet S->D was sent by the flow's
 * other direction; the entry of D->S says what that direction's packets become, so
 * the quote is turned back into what its sender sent, and the error goes to it. An
 * error from the quoted destination itself gets its translated address as source.
 * Errors about DSR flows (the quote is not ours to map back) pass untouched.
 */
static __always_inline int lbn_icmp_error(struct __sk_buff *skb, struct lbn_pkt *p, __u8 dir,
					  __u64 now)
{
	struct lbn_ct_key *key;
	struct lbn_tuple t, quoted;
	struct lbn_ct_val *ct;
	struct lb_addr osrc;
	struct lbn_scratch *s;
	struct lbn_pkt *q;
	__u32 zero = 0;
	int forward;

	if (!lbn_icmp_is_error(p))
		return TC_ACT_OK;
	s = lbn_scratch.lookup(&zero);
	if (!s)
		return TC_ACT_OK;
	q = &s->inner;
	__builtin_memset(q, 0, sizeof(*q));
	if (lbn_icmp_quoted(skb, p, q) < 0)
		return TC_ACT_OK;
	key = &s->rkey;
	__builtin_memset(key, 0, sizeof(*key));
	key->src = q->key.dst;
	key->sport = q->key.dport;
	key->dst = q->key.src;
	key->dport = q->key.sport;
	key->proto = q->key.proto;
	key->dir = dir;
	ct = lbn_ct.lookup(key);
	if (!ct || ct->expires <= now || ct->action == LBN_ACT_DSR)
		return TC_ACT_OK;
	t.src = (ct->flags & LBN_CT_F_SNAT) ? ct->to_src : key->src;
	t.sport = (ct->flags & LBN_CT_F_SNAT) ? ct->to_sport : key->sport;
	t.dst = (ct->flags & LBN_CT_F_DNAT) ? ct->to_dst : key->dst;
	t.dport = (ct->flags & LBN_CT_F_DNAT) ? ct->to_dport : key->dport;
	quoted.src = t.dst;
	quoted.sport = t.dport;
	quoted.dst = t.src;
	quoted.dport = t.sport;
	osrc = lb_addr_equal(&p->key.src, &q->key.dst) ? t.src : p->key.src;
	forward = dir == LBN_DIR_INGRESS && ct->action == LBN_ACT_REDIRECT;
	if (lbn_icmp_rewrite(skb, p, q, &quoted, &osrc, &t.dst, forward) < 0)
		return TC_ACT_SHOT;
	if (!forward)
		return TC_ACT_OK;
	return lbn_fib_redirect(skb, p->family, &osrc, &t.dst);
}

/* ----------------------------------------------------------------- entry points */

int lbn_ingress(struct __sk_buff *skb)
{
	struct lbn_pkt p = {};
	struct lbn_ct_val *ct;
	__u64 now;

	if (lbn_parse(skb, &p) < 0)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	if (p.key.proto == LBN_PROTO_IPIP || p.key.proto == LBN_PROTO_IPV6)
		return lbn_dsr_deliver(skb, &p, now);
	if (p.key.proto == LBN_PROTO_ICMP || p.key.proto == LBN_PROTO_ICMPV6)
		return lbn_icmp_error(skb, &p, LBN_DIR_INGRESS, now);
	p.key.dir = LBN_DIR_INGRESS;
	ct = lbn_ct.lookup(&p.key);
	if (ct && lbn_ct_live(ct, &p, now)) {
		lbn_ct_refresh(ct, &p, now, lbn_ct_side(ct));
		return lbn_forward(skb, &p, ct, now);
	}
	return lbn_new_flow(skb, &p, now);
}

int lbn_egress(struct __sk_buff *skb)
{
	struct lbn_pkt p = {};
	struct lbn_ct_val *ct;
	struct lbn_tuple t;
	__u64 now;

	/* Redirected here by lbn_ingress of this device: already translated. */
	if (skb->ingress_ifindex == skb->ifindex)
		return TC_ACT_OK;
	if (lbn_parse(skb, &p) < 0 || p.key.proto == LBN_PROTO_IPIP ||
	    p.key.proto == LBN_PROTO_IPV6)
		return TC_ACT_OK;
	if (p.key.proto == LBN_PROTO_ICMP || p.key.proto == LBN_PROTO_ICMPV6)
		return lbn_icmp_error(skb, &p, LBN_DIR_EGRESS, bpf_ktime_get_ns());
	p.key.dir = LBN_DIR_EGRESS;
	ct = lbn_ct.lookup(&p.key);
	if (!ct)
		return TC_ACT_OK; /* most packets: not a translated flow; no clock read */
	now = bpf_ktime_get_ns();
	if (ct->expires <= now)
		return TC_ACT_OK;
	lbn_ct_refresh(ct, &p, now, lbn_ct_side(ct));
	lbn_translated(&t, &p, ct);
	if (lbn_rewrite(skb, &p, &t.src, t.sport, &t.dst, t.dport, 0) < 0)
		return TC_ACT_SHOT;
	lbn_ct_tell_peer(skb, &p, ct, &t, now);
	if ((ct->flags & LBN_CT_F_CLAMP_MSS) && lbn_clamp_mss(skb, &p, lbn_carrier_len(&p)) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
