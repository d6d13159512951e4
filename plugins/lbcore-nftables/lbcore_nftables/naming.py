"""Names of the objects in lbcore's table, as kube-proxy's nftables mode names them:
a short hash for uniqueness, then a readable tail (``ns/name/proto/port``).

Chains are content-addressed: a pick chain's name hashes its endpoint list, so two
frontends with the same endpoints share one chain and a changed endpoint list is a new
chain (the old one is deleted in the same transaction).
"""

from __future__ import annotations

import base64
import hashlib

TABLE = "lbcore"
FAMILY = "ip"
MASQ_MARK = 0x4000

# fixed objects
SERVICES_MAP = "service-ips"
CHAIN_SERVICES = "services"
CHAIN_MARK_MASQ = "mark-for-masquerade"
CHAIN_MASQUERADING = "masquerading"
CHAIN_REJECT = "reject-chain"
BASE_CHAINS = {  # name: (type, hook, priority)
    "nat-prerouting": ("nat", "prerouting", -100),
    "nat-output": ("nat", "output", -100),
    "nat-postrouting": ("nat", "postrouting", 100),
}
FIXED_CHAINS = (*BASE_CHAINS, CHAIN_SERVICES, CHAIN_MARK_MASQ, CHAIN_MASQUERADING, CHAIN_REJECT)

PICK, EXTERNAL, ENDPOINT, AFFINITY = "service", "external", "endpoint", "affinity"


def short_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode()[:8]


def name(kind: str, tail: str, content: str) -> str:
    """``<kind>-<HASH8>-<tail>``: HASH8 over ``content`` (what makes the object unique)."""
    return f"{kind}-{short_hash(content)}-{tail}"


def tail(namespace: str, svc: str, protocol: str, port: int) -> str:
    return f"{namespace}/{svc}/{protocol.lower()}/p{port}"


def kind_of(object_name: str) -> str:
    return object_name.split("-", 1)[0]


def service_of(object_name: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of the service a chain or set belongs to, from its tail;
    None for the fixed objects and names this driver did not make."""
    parts = object_name.split("-", 2)
    if len(parts) != 3 or parts[0] not in (PICK, EXTERNAL, ENDPOINT, AFFINITY):
        return None
    ns_svc = parts[2].split("/")
    return (ns_svc[0], ns_svc[1]) if len(ns_svc) >= 4 else None


def service_of_comment(comment: str) -> tuple[str, str] | None:
    """The service a map element's comment (``"<type> ns/svc:port"``) names."""
    _, _, port_name = comment.partition(" ")
    namespace, slash, rest = port_name.partition("/")
    name = rest.split(":", 1)[0]
    return (namespace, name) if slash and namespace and name else None
