"""The socket-LB maps as plain Python values (no kernel, no ctypes).

``MapImage`` is what the maps hold (or must hold): services with their slots,
backends by id, reverse-NAT entries by id. ``render`` turns desired frontends into
``ServiceEntry`` values, reusing the ids the current image already gave, and
``format_image`` prints the readable dump the golden tests compare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from lbcore.model import Condition, Frontend, FrontendAddress, FrontendType

from .ids import IdAllocator

# Mirrors of the enums in bpf/include/lbcore/maps.h.
TYPE_CODES = {
    FrontendType.CLUSTER_IP: 1,
    FrontendType.NODE_PORT: 2,
    FrontendType.EXTERNAL_IP: 3,
    FrontendType.LOAD_BALANCER: 4,
}
TYPES_BY_CODE = {code: t for t, code in TYPE_CODES.items()}
STATE_CODES = {Condition.READY: 0, Condition.TERMINATING: 1}
STATES_BY_CODE = {code: s for s, code in STATE_CODES.items()}
FLAG_AFFINITY = 0x1
MAX_REVNAT_ID = 0xFFFF  # rev_nat_id is a __u16 in the maps
MAX_BACKEND_ID = 0xFFFFFFFF


class BackendAddr(NamedTuple):
    ip: str
    port: int
    protocol: str

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}/{self.protocol}"


class Slot(NamedTuple):
    backend_id: int
    condition: Condition = Condition.READY


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """Header (slot 0) and backend slots (1..n) of one frontend."""

    frontend: FrontendAddress
    type: FrontendType
    rev_nat_id: int
    affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    slots: tuple[Slot, ...] = ()

    @property
    def flags(self) -> int:
        return FLAG_AFFINITY if self.affinity_timeout else 0

    def header(self) -> tuple[int, int, int, int, int]:
        return (len(self.slots), self.rev_nat_id, TYPE_CODES[self.type], self.flags,
                self.affinity_timeout)


@dataclass
class MapImage:
    """Contents of lbc_svc, lbc_backends and lbc_revnat, plus derived indexes."""

    services: dict[FrontendAddress, ServiceEntry] = field(default_factory=dict)
    backends: dict[int, BackendAddr] = field(default_factory=dict)
    revnat: dict[int, FrontendAddress] = field(default_factory=dict)
    backend_refs: Counter[int] = field(default_factory=Counter)

    backend_ids: dict[BackendAddr, int] = field(default_factory=dict)
    slot_count: int = -1  # entries in lbc_svc (headers + slots), kept up to date by plan_sync

    def __post_init__(self) -> None:
        if self.slot_count < 0:
            self.slot_count = self.slot_entries()
        if not self.backend_ids:
            self.backend_ids = {addr: bid for bid, addr in self.backends.items()}
        if not self.backend_refs:
            for entry in self.services.values():
                self.backend_refs.update(slot.backend_id for slot in entry.slots)

    def copy(self) -> MapImage:
        return MapImage(dict(self.services), dict(self.backends), dict(self.revnat),
                        Counter(self.backend_refs), dict(self.backend_ids), self.slot_count)

    def slot_entries(self) -> int:
        """Entries in lbc_svc: one header plus one per slot, per frontend."""
        return sum(1 + len(e.slots) for e in self.services.values())


@dataclass
class Allocators:
    """Id pools owned by the control plane, seeded from what the kernel holds."""

    backend: IdAllocator
    revnat: IdAllocator

    @classmethod
    def seeded(cls, image: MapImage, max_backends: int) -> Allocators:
        return cls(
            IdAllocator(1, min(MAX_BACKEND_ID, max_backends), image.backends),
            IdAllocator(1, MAX_REVNAT_ID, image.revnat),
        )


def backend_key(frontend: Frontend, ip: str, port: int) -> BackendAddr:
    return BackendAddr(ip, port, frontend.protocol)


def render_entry(
    fe: Frontend, current: MapImage, ids: Allocators, pending: dict[BackendAddr, int]
) -> ServiceEntry:
    """The entry ``fe`` needs: ids reused from ``current``, new ones allocated.

    ``pending`` collects backend ids allocated in this sync, so that two frontends
    sharing a new backend share its id. Slots keep the positions they already had,
    so an endpoint change rewrites as few slots as possible.
    """
    old = current.services.get(fe.address)
    rev_nat_id = old.rev_nat_id if old else ids.revnat.allocate()
    wanted: dict[int, Condition] = {}
    for b in fe.backends:
        addr = backend_key(fe, b.ip, b.port)
        bid = current.backend_ids.get(addr) or pending.get(addr)
        if bid is None:
            bid = pending[addr] = ids.backend.allocate()
        wanted[bid] = b.condition
    order = stable_slots([s.backend_id for s in old.slots] if old else [], sorted(wanted))
    return ServiceEntry(
        frontend=fe.address,
        type=fe.type,
        rev_nat_id=rev_nat_id,
        affinity_timeout=fe.session_affinity_timeout or 0,
        slots=tuple(Slot(bid, wanted[bid]) for bid in order),
    )


def stable_slots(current: list[int], wanted: Iterable[int]) -> list[int]:
    """Order ``wanted`` ids so that as many as possible keep their current slot.

    Holes left by removed backends take new ones first; remaining holes are filled
    from the tail, and the list is truncated. Pure; the writer turns the differences
    into slot updates.
    """
    wanted_set = set(wanted)
    keep: list[int | None] = [bid if bid in wanted_set else None for bid in current]
    present = {bid for bid in keep if bid is not None}
    additions = [bid for bid in sorted(wanted_set) if bid not in present]
    for i, bid in enumerate(keep):
        if bid is None and additions:
            keep[i] = additions.pop(0)
    keep.extend(additions)
    # Fill holes from the tail so the result is dense.
    while None in keep:
        hole = keep.index(None)
        tail = keep.pop()
        if tail is not None and hole < len(keep):
            keep[hole] = tail
    return [bid for bid in keep if bid is not None]


def format_image(image: MapImage) -> str:
    """A readable dump of the maps, stable across runs (for golden tests and --dry-run)."""
    lines = []
    for addr in sorted(image.services):
        e = image.services[addr]
        affinity = f" affinity={e.affinity_timeout}s" if e.affinity_timeout else ""
        lines.append(
            f"svc {addr} type={e.type.value} rev_nat={e.rev_nat_id} count={len(e.slots)}{affinity}"
        )
        for i, slot in enumerate(e.slots, start=1):
            state = "" if slot.condition is Condition.READY else f" ({slot.condition.value})"
            lines.append(
                f"  slot {i}: backend {slot.backend_id} {image.backends[slot.backend_id]}{state}"
            )
    for bid in sorted(image.backends):
        lines.append(f"backend {bid}: {image.backends[bid]}")
    for rid in sorted(image.revnat):
        lines.append(f"revnat {rid}: {image.revnat[rid]}")
    return "\n".join(lines) + "\n"
