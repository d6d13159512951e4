/* SPDX-License-Identifier: Apache-2.0 */
/* Address helpers: every address in the maps is 16 bytes, IPv4 mapped. */
#ifndef LBCORE_ADDR_H
#define LBCORE_ADDR_H

#include "lbcore/maps.h"

static __always_inline void lb_addr_from_v4(struct lb_addr *a, __be32 v4)
{
	a->words[0] = 0;
	a->words[1] = 0;
	a->words[2] = bpf_htonl(0x0000ffff);
	a->words[3] = v4;
}

static __always_inline int lb_addr_is_v4(const struct lb_addr *a)
{
	return a->words[0] == 0 && a->words[1] == 0 && a->words[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int lb_addr_equal(const struct lb_addr *a, const struct lb_addr *b)
{
	return a->words[0] == b->words[0] && a->words[1] == b->words[1] &&
	       a->words[2] == b->words[2] && a->words[3] == b->words[3];
}

/* ctx->user_ip6 allows 4-byte accesses only; copy word by word. */
static __always_inline void lb_addr_from_ctx6(struct lb_addr *a, const struct bpf_sock_addr *ctx)
{
	a->words[0] = ctx->user_ip6[0];
	a->words[1] = ctx->user_ip6[1];
	a->words[2] = ctx->user_ip6[2];
	a->words[3] = ctx->user_ip6[3];
}

static __always_inline void lb_addr_to_ctx6(struct bpf_sock_addr *ctx, const struct lb_addr *a)
{
	ctx->user_ip6[0] = a->words[0];
	ctx->user_ip6[1] = a->words[1];
	ctx->user_ip6[2] = a->words[2];
	ctx->user_ip6[3] = a->words[3];
}

#endif /* LBCORE_ADDR_H */
