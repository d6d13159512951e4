/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket-based service load balancing on cgroup v2 hooks.
 *
 * connect4/6 and sendmsg4/6 translate a service frontend to a backend once, inside
 * the client's own socket call; no packet is ever NATed. recvmsg4/6 and
 * getpeername4/6 translate back, so the application still sees the frontend.
 *
 * Loaded by drivers/lbcore_socklb/loader.py with bcc. The loader passes:
 *   -DLBCORE_PIN_DIR="<bpffs dir>"   where the maps are pinned (adopted on restart)
 *   -DLB_*_MAP_MAX=<n>               map sizes from the driver options
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>

#include "lbcore/maps.h"
#include "lbcore/addr.h"

#ifndef LBCORE_PIN_DIR
#error "LBCORE_PIN_DIR must name the bpffs directory for the pinned maps"
#endif

BPF_TABLE_PINNED("hash", struct lb_svc_key, struct lb_svc_val, lbc_svc,
		 LB_SERVICE_MAP_MAX, LBCORE_PIN_DIR "/lbc_svc", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lb_backend, lbc_backends,
		 LB_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbc_backends", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u16, struct lb_revnat, lbc_revnat,
		 LB_REVNAT_MAP_MAX, LBCORE_PIN_DIR "/lbc_revnat", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct lb_sk_key, struct lb_sk_val, lbc_sk_revnat,
		 LB_SOCK_REVNAT_MAP_MAX, LBCORE_PIN_DIR "/lbc_sk_revnat");
BPF_TABLE_PINNED("lru_hash", struct lb_affinity_key, struct lb_affinity_val, lbc_affinity,
		 LB_AFFINITY_MAP_MAX, LBCORE_PIN_DIR "/lbc_affinity");
BPF_TABLE_PINNED("hash", struct lb_affinity_match, __u8, lbc_aff_match,
		 LB_BACKEND_MAP_MAX, LBCORE_PIN_DIR "/lbc_aff_match", BPF_F_NO_PREALLOC);

/* cgroup sock_addr verdicts */
#define SYS_PROCEED 1
#define SYS_REJECT 0

enum lb_verdict {
	LB_PASS,       /* not a frontend: leave the call untouched */
	LB_TRANSLATED, /* address and port now name a backend */
	LB_NO_BACKEND, /* a frontend without a usable backend: fail the call */
};

#define LB_NSEC_PER_SEC 1000000000ULL

static __always_inline __u64 lb_now_seconds(void)
{
	return bpf_ktime_get_ns() / LB_NSEC_PER_SEC;
}

/* The backend this client (its network namespace: a pod) used last, if still valid. */
static __always_inline __u32 lb_affinity_get(struct bpf_sock_addr *ctx,
					     const struct lb_svc_val *hdr)
{
	struct lb_affinity_key key = {};
	struct lb_affinity_match match = {};
	struct lb_affinity_val *val;

	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.rev_nat_id = hdr->rev_nat_id;
	val = lbc_affinity.lookup(&key);
	if (!val)
		return 0;
	if (lb_now_seconds() - val->last_used > hdr->affinity_timeout) {
		lbc_affinity.delete(&key);
		return 0;
	}
	match.backend_id = val->backend_id;
	match.rev_nat_id = hdr->rev_nat_id;
	if (!lbc_aff_match.lookup(&match))
		return 0;
	return val->backend_id;
}

static __always_inline void lb_affinity_put(struct bpf_sock_addr *ctx,
					    const struct lb_svc_val *hdr, __u32 backend_id)
{
	struct lb_affinity_key key = {};
	struct lb_affinity_val val = {};

	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.rev_nat_id = hdr->rev_nat_id;
	val.last_used = lb_now_seconds();
	val.backend_id = backend_id;
	lbc_affinity.update(&key, &val);
}

/* Remember what this socket asked for, so replies and getpeername show it. */
static __always_inline void lb_sk_revnat_put(struct bpf_sock_addr *ctx,
					     const struct lb_backend *backend,
					     const struct lb_addr *frontend, __be16 port,
					     __u16 rev_nat_id)
{
	struct lb_sk_key key = {};
	struct lb_sk_val val = {};

	key.cookie = bpf_get_socket_cookie(ctx);
	key.address = backend->address;
	key.port = backend->port;
	val.address = *frontend;
	val.port = port;
	val.rev_nat_id = rev_nat_id;
	lbc_sk_revnat.update(&key, &val);
}

/* Frontend -> backend: the work of connect() and sendmsg(). */
static __always_inline enum lb_verdict lb_xlate_fwd(struct bpf_sock_addr *ctx,
						    struct lb_addr *addr, __be16 *port)
{
	struct lb_svc_key key = {};
	struct lb_svc_val *hdr, *slot;
	struct lb_backend *backend;
	__u32 backend_id = 0;
	__u32 affinity_timeout;
	__u16 rev_nat_id;
	__u8 flags;

	key.address = *addr;
	key.port = *port;
	key.proto = ctx->protocol;
	hdr = lbc_svc.lookup(&key);
	if (!hdr)
		return LB_PASS;
	if (hdr->count == 0)
		return LB_NO_BACKEND;
	flags = hdr->flags;
	rev_nat_id = hdr->rev_nat_id;
	affinity_timeout = hdr->affinity_timeout;

	if (flags & LB_SVC_F_AFFINITY)
		backend_id = lb_affinity_get(ctx, hdr);
	if (!backend_id) {
		key.slot = (bpf_get_prandom_u32() % hdr->count) + 1;
		slot = lbc_svc.lookup(&key);
		if (!slot)
			return LB_NO_BACKEND;
		backend_id = slot->backend_id;
	}
	backend = lbc_backends.lookup(&backend_id);
	if (!backend)
		return LB_NO_BACKEND;
	if (flags & LB_SVC_F_AFFINITY) {
		struct lb_svc_val snapshot = {};

		snapshot.rev_nat_id = rev_nat_id;
		snapshot.affinity_timeout = affinity_timeout;
		lb_affinity_put(ctx, &snapshot, backend_id);
	}
	lb_sk_revnat_put(ctx, backend, addr, *port, rev_nat_id);
	*addr = backend->address;
	*port = backend->port;
	return LB_TRANSLATED;
}

/* Backend -> frontend: the work of recvmsg() and getpeername(). */
static __always_inline int lb_xlate_rev(struct bpf_sock_addr *ctx, struct lb_addr *addr,
					__be16 *port)
{
	struct lb_sk_key key = {};
	struct lb_sk_val *val;
	struct lb_revnat *frontend;
	__u16 rev_nat_id;

	key.cookie = bpf_get_socket_cookie(ctx);
	key.address = *addr;
	key.port = *port;
	val = lbc_sk_revnat.lookup(&key);
	if (!val)
		return 0;
	rev_nat_id = val->rev_nat_id;
	frontend = lbc_revnat.lookup(&rev_nat_id);
	/* The service is gone, or its id now belongs to another one: stale entry. */
	if (!frontend || frontend->port != val->port ||
	    !lb_addr_equal(&frontend->address, &val->address)) {
		lbc_sk_revnat.delete(&key);
		return 0;
	}
	*addr = val->address;
	*port = val->port;
	return 1;
}

static __always_inline int lb_reject(void)
{
	/* Fail at once with "connection refused", as kube-proxy's REJECT does. */
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* Load the call's destination (or, for rev, its peer) as a 16-byte address. The
 * family is a constant at every call site, so each program keeps only its half. */
static __always_inline void lb_load(struct bpf_sock_addr *ctx, struct lb_addr *addr,
				    const int ipv6)
{
	if (ipv6)
		lb_addr_from_ctx6(addr, ctx);
	else
		lb_addr_from_v4(addr, ctx->user_ip4);
}

static __always_inline int lb_store(struct bpf_sock_addr *ctx, const struct lb_addr *addr,
				    __be16 port, const int ipv6)
{
	if (ipv6) {
		lb_addr_to_ctx6(ctx, addr);
	} else {
		if (!lb_addr_is_v4(addr))
			return 0; /* never happens: the control plane pairs families */
		ctx->user_ip4 = addr->words[3];
	}
	ctx->user_port = port;
	return 1;
}

static __always_inline int lb_fwd(struct bpf_sock_addr *ctx, const int ipv6)
{
	struct lb_addr addr;
	__be16 port = (__be16)ctx->user_port;

	lb_load(ctx, &addr, ipv6);
	switch (lb_xlate_fwd(ctx, &addr, &port)) {
	case LB_TRANSLATED:
		return lb_store(ctx, &addr, port, ipv6) ? SYS_PROCEED : lb_reject();
	case LB_NO_BACKEND:
		return lb_reject();
	default:
		return SYS_PROCEED;
	}
}

static __always_inline int lb_rev(struct bpf_sock_addr *ctx, const int ipv6)
{
	struct lb_addr addr;
	__be16 port = (__be16)ctx->user_port;

	lb_load(ctx, &addr, ipv6);
	if (lb_xlate_rev(ctx, &addr, &port))
		lb_store(ctx, &addr, port, ipv6);
	return SYS_PROCEED;
}

/* One entry point per hook; the loader maps each to its attach type. */
int lbc_connect4(struct bpf_sock_addr *ctx) { return lb_fwd(ctx, 0); }
int lbc_connect6(struct bpf_sock_addr *ctx) { return lb_fwd(ctx, 1); }
int lbc_sendmsg4(struct bpf_sock_addr *ctx) { return lb_fwd(ctx, 0); }
int lbc_sendmsg6(struct bpf_sock_addr *ctx) { return lb_fwd(ctx, 1); }
int lbc_recvmsg4(struct bpf_sock_addr *ctx) { return lb_rev(ctx, 0); }
int lbc_recvmsg6(struct bpf_sock_addr *ctx) { return lb_rev(ctx, 1); }
int lbc_getpeer4(struct bpf_sock_addr *ctx) { return lb_rev(ctx, 0); }
int lbc_getpeer6(struct bpf_sock_addr *ctx) { return lb_rev(ctx, 1); }
