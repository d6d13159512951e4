"""Deterministic chain names, spelled as kube-proxy spells them.

A per-service chain is ``PREFIX`` + the first 16 characters of the base32 encoding of
sha256(``servicePortName`` + lower-case protocol), and an endpoint chain hashes
``servicePortName`` + protocol + ``ip:port`` the same way. ``servicePortName`` is
``ns/name:port`` (``ns/name`` for an unnamed port). The same service therefore gets the
same chain names on every node and after every restart, which is what lets a sync
adopt the rules an earlier run left behind.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

SVC = "KUBE-SVC-"  # all usable endpoints of a service port
SVL = "KUBE-SVL-"  # the node-local endpoints (internal/external traffic policy Local)
EXT = "KUBE-EXT-"  # traffic to NodePort / ExternalIP / LoadBalancer frontends
FW = "KUBE-FW-"  # loadBalancerSourceRanges check
SEP = "KUBE-SEP-"  # one endpoint: hairpin masquerade + DNAT

SERVICE_PREFIXES = (SVC, SVL, EXT, FW)
OWNED_PREFIXES = (SVC, SVL, EXT, FW, SEP)


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@lru_cache(maxsize=1 << 16)
def service_chain(prefix: str, service_port: str, protocol: str) -> str:
    """``KUBE-SVC-…`` (or SVL/EXT/FW) of ``ns/name:port`` and ``TCP|UDP|SCTP``."""
    return prefix + _hash16(service_port + protocol.lower())


def endpoint_chain(service_port: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-…`` of one endpoint ``ip:port`` of a service port."""
    return SEP + _hash16(service_port + protocol.lower() + endpoint)


def is_owned(chain: str) -> bool:
    """A per-service or per-endpoint chain this driver writes (and may delete)."""
    return chain.startswith(OWNED_PREFIXES)
