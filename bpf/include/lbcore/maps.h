/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map layouts shared by the socket-LB programs and their control plane.
 *
 * The control plane (drivers/lbcore_socklb/maps.py) never redeclares these structs:
 * it takes bcc's Table.Key / Table.Leaf types generated from this file. Keep every
 * struct naturally aligned with explicit padding, so the layout is the same for
 * clang and ctypes.
 *
 * Addresses are 16 bytes in network byte order for both families; an IPv4 address
 * is stored IPv4-mapped (::ffff:a.b.c.d). One set of maps and one code path then
 * serve IPv4, IPv6 and IPv4-mapped connects from dual-stack IPv6 sockets.
 */
#ifndef LBCORE_MAPS_H
#define LBCORE_MAPS_H

#include <linux/types.h>

/* Limits; the loader overrides them with -D from the driver options. */
#ifndef LB_SERVICE_MAP_MAX
#define LB_SERVICE_MAP_MAX 262144
#endif
#ifndef LB_BACKEND_MAP_MAX
#define LB_BACKEND_MAP_MAX 131072
#endif
#ifndef LB_REVNAT_MAP_MAX
#define LB_REVNAT_MAP_MAX 65535
#endif
#ifndef LB_SOCK_REVNAT_MAP_MAX
#define LB_SOCK_REVNAT_MAP_MAX 262144
#endif
#ifndef LB_AFFINITY_MAP_MAX
#define LB_AFFINITY_MAP_MAX 65536
#endif

struct lb_addr {
	__be32 words[4];
};

/* Frontend types, recorded so `lbcore services` can read them back. */
enum {
	LB_SVC_CLUSTER_IP = 1,
	LB_SVC_NODE_PORT = 2,
	LB_SVC_EXTERNAL_IP = 3,
	LB_SVC_LOAD_BALANCER = 4,
};

/* Header flags. */
#define LB_SVC_F_AFFINITY 0x1 /* ClientIP session affinity, see affinity_timeout */

/* Slot states, recorded for read back. Only usable backends ever get a slot. */
enum {
	LB_BACKEND_ACTIVE = 0,
	LB_BACKEND_TERMINATING = 1,
};

/*
 * lbc_svc: (frontend, slot) -> header or backend slot.
 * Slot 0 is the header (count, rev_nat_id, type, flags, affinity_timeout);
 * slots 1..count hold backend ids. Writers add slots before raising count and
 * delete slots after lowering it, so a reader never follows a missing slot.
 */
struct lb_svc_key {
	struct lb_addr address;
	__be16 port;
	__u16 slot;
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 pad[3];
};

struct lb_svc_val {
	__u32 backend_id;       /* slots only */
	__u32 affinity_timeout; /* header only: seconds */
	__u16 count;            /* header only: number of backend slots */
	__u16 rev_nat_id;       /* header only */
	__u8 type;              /* header only: LB_SVC_* */
	__u8 flags;             /* header only: LB_SVC_F_* */
	__u8 state;             /* slots only: LB_BACKEND_* */
	__u8 pad;
};

/* lbc_backends: backend id -> address. Ids are owned by the control plane. */
struct lb_backend {
	struct lb_addr address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* lbc_revnat: rev_nat_id -> frontend, for getpeername/recvmsg. */
struct lb_revnat {
	struct lb_addr address;
	__be16 port;
	__u16 pad;
};

/* lbc_sk_revnat (LRU): (socket, backend) -> the frontend the socket asked for. */
struct lb_sk_key {
	__u64 cookie;
	struct lb_addr address;
	__be16 port;
	__u16 pad[3];
};

struct lb_sk_val {
	struct lb_addr address;
	__be16 port;
	__u16 rev_nat_id;
};

/* lbc_affinity (LRU): (client netns, service) -> backend last chosen. */
struct lb_affinity_key {
	__u64 netns_cookie;
	__u16 rev_nat_id;
	__u16 pad[3];
};

struct lb_affinity_val {
	__u64 last_used; /* seconds, bpf_ktime_get_ns() based */
	__u32 backend_id;
	__u32 pad;
};

/* lbc_aff_match: (backend, service) present while the backend is in the service,
 * so affinity never sticks to a backend that left the service. */
struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

#endif /* LBCORE_MAPS_H */
