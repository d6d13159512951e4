"""The address plan of a lab cluster, shaped like a kind cluster running Cilium.

- node network 172.18.0.0/16 (kind's docker network) and fc00:f853:ccd:e793::/64;
  node ``i`` (0-based: control-plane, worker, worker2, ...) is ``.i+2``;
- pod CIDR of node ``i``: 10.0.i.0/24 and fd00:10:0:i::/64 (Cilium's cluster-pool);
  the node's router address (``cilium_host``) is 10.0.i.1; pods get /32 and /128;
- services: 10.96.0.0/16 and fd00:10:96::/112, a ClusterIP derived from the name.

Pure functions, no side effects.
"""

from __future__ import annotations

import hashlib
import ipaddress

NODE_NET4 = "172.18.0.0/16"
NODE_NET6 = "fc00:f853:ccd:e793::/64"
SERVICE_NET4 = "10.96.0.0/16"
SERVICE_NET6 = "fd00:10:96::/112"
ROUTER6 = "fe80::1"  # link-local gateway of every pod, on the node side of its veth
MAX_NODES = 50
MAX_PODS_PER_NODE = 240


def node_names(count: int) -> list[str]:
    """``control-plane``, ``worker``, ``worker2``, ... (kind's names, without ``kind-``)."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"node count must be 1..{MAX_NODES}, not {count}")
    workers = ["worker"] + [f"worker{i}" for i in range(2, count)]
    return ["control-plane", *workers][:count]


def node_ipv4(index: int) -> str:
    return str(ipaddress.ip_network(NODE_NET4)[index + 2])


def node_ipv6(index: int) -> str:
    return str(ipaddress.ip_network(NODE_NET6)[index + 2])


def pod_cidrs(index: int) -> tuple[str, str]:
    return f"10.0.{index}.0/24", f"fd00:10:0:{index:x}::/64"


def router_ipv4(index: int) -> str:
    return f"10.0.{index}.1"


def pod_ips(node_index: int, pod_index: int) -> tuple[str, str]:
    """The ``pod_index``-th pod of a node (0-based): 10.0.N.(10+k) spread a little."""
    if not 0 <= pod_index < MAX_PODS_PER_NODE:
        raise ValueError(f"at most {MAX_PODS_PER_NODE} pods per node")
    host = 10 + (pod_index * 67) % MAX_PODS_PER_NODE  # 10, 77, 144, 211, 38, ...
    return f"10.0.{node_index}.{host}", f"fd00:10:0:{node_index:x}::{host:x}"


def cluster_ips(namespace: str, name: str, taken: set[str] = frozenset()) -> tuple[str, str]:
    """A stable (IPv4, IPv6) ClusterIP pair for a service, avoiding ``taken``."""
    net4 = ipaddress.ip_network(SERVICE_NET4)
    net6 = ipaddress.ip_network(SERVICE_NET6)
    for salt in range(1000):
        digest = hashlib.sha256(f"{namespace}/{name}/{salt}".encode()).digest()
        n = 10 + int.from_bytes(digest[:2], "big") % (net4.num_addresses - 20)
        v4, v6 = str(net4[n]), str(net6[n])
        if v4 not in taken and v6 not in taken:
            return v4, v6
    raise ValueError("service address range exhausted")
