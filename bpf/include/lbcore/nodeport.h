/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map layouts of the tc NodePort programs (bpf/nodeport.c) and their control plane
 * (drivers/lbcore_tcnodeport/maps.py, which takes bcc's Table.Key / Table.Leaf types
 * generated from this file and never redeclares them).
 *
 * Frontend keys reuse struct lb_svc_key from maps.h (slot 0 = header, 1..count =
 * backend slots), addresses are struct lb_addr (16 bytes, IPv4 mapped). The socket-LB
 * structs are not changed; every struct here has explicit padding.
 */
#ifndef LBCORE_NODEPORT_H
#define LBCORE_NODEPORT_H

#include "lbcore/maps.h"

/* Limits and timeouts; the loader overrides them with -D from the driver options. */
#ifndef LBN_SERVICE_MAP_MAX
#define LBN_SERVICE_MAP_MAX 65536
#endif
#ifndef LBN_BACKEND_MAP_MAX
#define LBN_BACKEND_MAP_MAX 65536
#endif
#ifndef LBN_CT_MAP_MAX
#define LBN_CT_MAP_MAX 262144
#endif
#ifndef LBN_MAGLEV_M
#define LBN_MAGLEV_M 16381 /* prime: Maglev lookup table size per service */
#endif
#ifndef LBN_MAGLEV_MAP_MAX
#define LBN_MAGLEV_MAP_MAX (LBN_MAGLEV_M * 16)
#endif
#ifndef LBN_SRC_RANGE_MAP_MAX
#define LBN_SRC_RANGE_MAP_MAX 4096
#endif
#ifndef LBN_CT_SYN_TIMEOUT
#define LBN_CT_SYN_TIMEOUT 60 /* seconds: TCP until the client's first ACK */
#endif
#ifndef LBN_CT_TCP_TIMEOUT
#define LBN_CT_TCP_TIMEOUT 21600 /* seconds: established TCP */
#endif
#ifndef LBN_CT_CLOSE_TIMEOUT
#define LBN_CT_CLOSE_TIMEOUT 10 /* seconds: after FIN or RST */
#endif
#ifndef LBN_CT_TIME_WAIT_TIMEOUT
#define LBN_CT_TIME_WAIT_TIMEOUT 120 /* seconds: a closed flow's SNAT port reservation */
#endif
#ifndef LBN_CT_UDP_TIMEOUT
#define LBN_CT_UDP_TIMEOUT 60 /* seconds: UDP since the last packet */
#endif
#ifndef LBN_SNAT_TRIES
#define LBN_SNAT_TRIES 32 /* ports probed before a new SNAT flow is dropped */
#endif

/* lbn_svc header flags (mirrored in drivers/lbcore_tcnodeport/image.py). */
#define LBN_SVC_F_MAGLEV 0x1     /* select through the service's Maglev table */
#define LBN_SVC_F_ETP_LOCAL 0x2  /* externalTrafficPolicy: Local */
#define LBN_SVC_F_SRC_RANGES 0x4 /* loadBalancerSourceRanges: lbn_src_range decides */

/* lbn_svc: struct lb_svc_key -> header (slot 0) or backend slot (1..count). */
struct lbn_svc_val {
	__u32 backend_id; /* slots only */
	__u16 count;      /* header only: backend slots */
	__u16 svc_id;     /* header only: id of the Maglev table and source ranges */
	__u8 type;        /* header only: LB_SVC_* (maps.h) */
	__u8 flags;       /* header only: LBN_SVC_F_* */
	__u8 pad[2];
};

/* Backend flags. */
#define LBN_BE_LOCAL 0x1 /* the backend runs on this node: DNAT, let the stack deliver */

/* lbn_backends: backend id -> address. */
struct lbn_backend {
	struct lb_addr address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* LBN_BE_* */
};

/* lbn_maglev: (svc_id, index < LBN_MAGLEV_M) -> backend id. */
struct lbn_maglev_key {
	__u32 svc_id;
	__u32 index;
};

/* lbn_src_range (LPM trie): prefixlen covers svc_id (32 bits) + address bits. */
struct lbn_src_range_key {
	__u32 prefixlen;
	__be32 svc_id; /* network order, so the trie matches it byte by byte */
	struct lb_addr address;
};

/* lbn_dsr: which port a DSR packet for a local pod is for (filled on every node).
 * A NodePort arrives addressed to whichever node the client used: frontend is zero. */
struct lbn_dsr_key {
	struct lb_addr backend;  /* the local pod the carrier is addressed to */
	struct lb_addr frontend; /* ExternalIP / LoadBalancer IP; zero for NodePorts */
	__be16 port;             /* the frontend port */
	__u8 proto;
	__u8 pad;
};

/* lbn_cfg (array, one entry): this node, written by the driver at setup. */
#define LBN_MODE_SNAT 0
#define LBN_MODE_DSR 1

struct lbn_config {
	struct lb_addr node_addr;  /* IPv4 (mapped): SNAT source, DSR carrier source */
	struct lb_addr node_addr6; /* the same for IPv6 flows; zero if the node has none */
	__u16 snat_min;            /* host order: SNAT port range */
	__u16 snat_max;
	__u8 mode;                 /* LBN_MODE_*: how remote backends are reached */
	__u8 pad[3];
};

/* lbn_ct (LRU): one entry per direction a translated flow is seen in. */
#define LBN_DIR_INGRESS 0 /* packets arriving on the node device */
#define LBN_DIR_EGRESS 1  /* packets leaving through the node device */

struct lbn_ct_key {
	struct lb_addr src;
	struct lb_addr dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* LBN_DIR_* */
	__u8 pad[2];
};

/* What to do with a packet of the flow. */
#define LBN_ACT_STACK 0    /* rewrite, then hand to the stack (local pod, reply out) */
#define LBN_ACT_REDIRECT 1 /* rewrite, then FIB lookup and redirect (SNAT both ways) */
#define LBN_ACT_DSR 2      /* no rewrite: carrier to the backend named in to_dst */

#define LBN_CT_F_SNAT 0x1      /* rewrite source to to_src:to_sport */
#define LBN_CT_F_DNAT 0x2      /* rewrite destination to to_dst:to_dport */
#define LBN_CT_F_CLAMP_MSS 0x4 /* DSR reply: lower the SYN-ACK's MSS by the carrier */
#define LBN_CT_F_REPLY 0x8     /* the entry translates the backend's packets */
#define LBN_CT_F_DSR_IN 0x10   /* DSR delivery node: also refreshed by the client's */

enum {
	LBN_TCP_SYN = 1,
	LBN_TCP_ESTABLISHED = 2,
	LBN_TCP_CLOSING = 3, /* one side sent FIN */
	LBN_TCP_CLOSED = 4,  /* both sent FIN, or an RST: the SNAT port may serve a new flow */
};

/* How an entry's flow has been closed (fins). */
#define LBN_FIN_CLIENT 0x1        /* the client sent FIN */
#define LBN_FIN_BACKEND 0x2       /* the backend sent FIN */
#define LBN_FIN_RST 0x4           /* either side sent RST */

/* peer_dir: where the other direction's entry is (0: not on this node). */
#define LBN_PEER_NONE 0
#define LBN_PEER_INGRESS 1
#define LBN_PEER_EGRESS 2

struct lbn_ct_val {
	struct lb_addr to_src;
	struct lb_addr to_dst;
	__u64 expires; /* bpf_ktime_get_ns() */
	__be16 to_sport;
	__be16 to_dport;
	__u32 backend_id; /* for read back and the flush of a removed backend */
	__u8 action;      /* LBN_ACT_* */
	__u8 flags;       /* LBN_CT_F_* */
	__u8 tcp_state;   /* LBN_TCP_*; 0 for UDP */
	__u8 fins;        /* LBN_FIN_* */
	__u8 peer_dir;    /* LBN_PEER_* */
	__u8 pad[3];
	__u32 seq_end;    /* host order: the client's next sequence number after its FIN */
	__u32 ts_end;     /* host order: the TSval of the client's FIN (0: no timestamps) */
};

#endif /* LBCORE_NODEPORT_H */
