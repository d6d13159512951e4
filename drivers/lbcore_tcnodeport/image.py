"""The NodePort maps as plain Python values, and desired frontends rendered into them.

Pure (no kernel, no ctypes). ``NodePortImage`` is what the maps hold or must hold;
``render`` turns the frontends this driver programs into ``ServiceEntry`` values,
reusing ids the current image already gave. Outside clients are served from
``Frontend.external_backends`` (externalTrafficPolicy already applied by the core).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from lbcore.model import Frontend, FrontendAddress, FrontendType
from lbcore_socklb.ids import IdAllocator

from . import maglev

# Mirrors of bpf/include/lbcore/{maps,nodeport}.h.
TYPE_CODES = {FrontendType.CLUSTER_IP: 1, FrontendType.NODE_PORT: 2,
              FrontendType.EXTERNAL_IP: 3, FrontendType.LOAD_BALANCER: 4}
TYPES_BY_CODE = {code: t for t, code in TYPE_CODES.items()}
F_MAGLEV, F_ETP_LOCAL, F_SRC_RANGES = 0x1, 0x2, 0x4
BE_LOCAL = 0x1
MAX_SVC_ID = 0xFFFF
ALGORITHM_ANNOTATION = "lbcore.io/lb-algorithm"


class BackendAddr(NamedTuple):
    ip: str
    port: int
    protocol: str
    local: bool  # on this node: DNAT and let the stack deliver

    @property
    def name(self) -> str:
        """The Maglev identity: the same on every node."""
        return f"{self.ip}:{self.port}"

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}/{self.protocol}{' local' if self.local else ''}"


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    frontend: FrontendAddress
    type: FrontendType
    svc_id: int
    flags: int = 0
    slots: tuple[int, ...] = ()  # backend ids, slot 1..n
    source_ranges: tuple[str, ...] = ()  # normalised CIDRs

    @property
    def maglev(self) -> bool:
        return bool(self.flags & F_MAGLEV)

    def header(self) -> tuple[int, int, int, int]:
        return (len(self.slots), self.svc_id, TYPE_CODES[self.type], self.flags)


class DsrKey(NamedTuple):
    """A DSR packet for a local pod: which frontend it was sent to (lbn_dsr)."""

    backend_ip: str  # the local pod the carrier is addressed to
    frontend_ip: str  # ExternalIP / LoadBalancer IP; "" for a NodePort (any node's address)
    port: int  # the frontend port
    protocol: str


@dataclass
class NodePortImage:
    services: dict[FrontendAddress, ServiceEntry] = field(default_factory=dict)
    backends: dict[int, BackendAddr] = field(default_factory=dict)
    maglev: dict[int, tuple[int, ...]] = field(default_factory=dict)  # svc_id -> table
    dsr: dict[DsrKey, int] = field(default_factory=dict)  # -> backend port

    def copy(self) -> NodePortImage:
        return NodePortImage(dict(self.services), dict(self.backends), dict(self.maglev),
                             dict(self.dsr))

    def backend_ids(self) -> dict[BackendAddr, int]:
        return {addr: bid for bid, addr in self.backends.items()}


@dataclass
class Allocators:
    backend: IdAllocator
    svc: IdAllocator

    @classmethod
    def seeded(cls, image: NodePortImage, max_backends: int) -> Allocators:
        return cls(IdAllocator(1, max_backends, image.backends),
                   IdAllocator(1, MAX_SVC_ID, {e.svc_id for e in image.services.values()}))


def algorithm(fe: Frontend) -> str:
    return fe.annotations.get(ALGORITHM_ANNOTATION, "random")


def normalise_ranges(ranges: Iterable[str]) -> tuple[str, ...]:
    nets = {str(ipaddress.ip_network(r.strip(), strict=False)) for r in ranges}
    return tuple(sorted(nets))


def render_entry(fe: Frontend, node_name: str, current: NodePortImage, ids: Allocators,
                 backend_ids: dict[BackendAddr, int]) -> ServiceEntry:
    """The entry ``fe`` needs. ``backend_ids`` maps every known backend to its id and
    receives the ids allocated here (shared by frontends with a common backend)."""
    old = current.services.get(fe.address)
    svc_id = old.svc_id if old else ids.svc.allocate()
    wanted = []
    for b in fe.external_backends:
        addr = BackendAddr(b.ip, b.port, fe.protocol, b.node_name == node_name)
        bid = backend_ids.get(addr)
        if bid is None:
            bid = backend_ids[addr] = ids.backend.allocate()
        wanted.append(bid)
    flags = F_MAGLEV if algorithm(fe) == "maglev" else 0
    if fe.external_traffic_local:
        flags |= F_ETP_LOCAL
    ranges = normalise_ranges(fe.source_ranges)
    if ranges:
        flags |= F_SRC_RANGES
    return ServiceEntry(fe.address, fe.type, svc_id, flags,
                        stable_slots(old.slots if old else (), wanted), ranges)


def stable_slots(current: Iterable[int], wanted: Iterable[int]) -> tuple[int, ...]:
    """``wanted`` ordered so that ids keep their slot; new ids fill holes, then the tail."""
    wanted_set = set(wanted)
    keep = [bid if bid in wanted_set else None for bid in current]
    additions = sorted(wanted_set - set(keep))
    for i, bid in enumerate(keep):
        if bid is None and additions:
            keep[i] = additions.pop(0)
    return tuple([bid for bid in keep if bid is not None] + additions)


def maglev_backends(entry: ServiceEntry, backends: dict[int, BackendAddr]) -> dict[str, int]:
    return {backends[bid].name: bid for bid in entry.slots}


def dsr_ports(frontends: Iterable[Frontend], node_name: str) -> dict[DsrKey, int]:
    """Where DSR packets from other nodes for this node's pods go (the backend port).

    A NodePort reaches a pod through any node's address, so its key has no frontend
    address; two frontends that would share a key with different ports (two services
    on one pod with the same ExternalIP port) keep the lowest port, deterministically.
    """
    ports: dict[DsrKey, int] = {}
    for fe in frontends:
        fe_ip = "" if fe.type == FrontendType.NODE_PORT else fe.ip
        for b in fe.external_backends:
            if b.node_name == node_name:
                key = DsrKey(b.ip, fe_ip, fe.port, fe.protocol)
                ports[key] = min(b.port, ports.get(key, b.port))
    return ports


def format_image(image: NodePortImage) -> str:
    """A readable dump, stable across runs (dry runs, golden comparisons)."""
    lines = []
    for addr in sorted(image.services):
        e = image.services[addr]
        flags = [n for bit, n in ((F_MAGLEV, "maglev"), (F_ETP_LOCAL, "etp-local"),
                                  (F_SRC_RANGES, "source-ranges")) if e.flags & bit]
        lines.append(f"svc {addr} type={e.type.value} id={e.svc_id} count={len(e.slots)}"
                     + (f" {','.join(flags)}" if flags else ""))
        lines += [f"  slot {i}: backend {bid} {image.backends[bid]}"
                  for i, bid in enumerate(e.slots, start=1)]
        lines += [f"  allow {cidr}" for cidr in e.source_ranges]
        if e.svc_id in image.maglev:
            table = image.maglev[e.svc_id]
            shares = {bid: table.count(bid) for bid in sorted(set(table))}
            lines.append(f"  maglev M={len(table)} " +
                         " ".join(f"{bid}:{n}" for bid, n in shares.items()))
    lines += [f"backend {bid}: {image.backends[bid]}" for bid in sorted(image.backends)]
    lines += [f"dsr {k.backend_ip} via {k.frontend_ip or '*'}:{k.port}/{k.protocol} -> "
              f"port {port}" for k, port in sorted(image.dsr.items())]
    return "\n".join(lines) + "\n"


def maglev_table_for(entry: ServiceEntry, backends: dict[int, BackendAddr],
                     m: int) -> tuple[int, ...]:
    return tuple(maglev.table_for(maglev_backends(entry, backends), m))
