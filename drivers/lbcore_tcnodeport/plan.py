"""From (what the maps hold, what they must hold) to an ordered list of writes. Pure.

Order (a packet racing the writer always meets a valid service): backends and DSR
delivery entries first, then Maglev slots and source ranges, then backend slots, then the
header that publishes count and flags; removals of headers next, then of the slots,
tables and ranges they referred to, and backends last, once nothing refers to them.
A Maglev table is written as the slots that changed (``maglev.changed_slots``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lbcore.model import FrontendAddress

from . import maglev
from .image import BackendAddr, DsrKey, NodePortImage, ServiceEntry, maglev_backends

RangeItem = tuple[int, str]  # (svc_id, cidr)


@dataclass
class Plan:
    backend_puts: list[tuple[int, BackendAddr]] = field(default_factory=list)
    dsr_puts: list[tuple[DsrKey, int]] = field(default_factory=list)
    maglev_puts: list[tuple[int, int, int]] = field(default_factory=list)  # svc, index, bid
    range_puts: list[RangeItem] = field(default_factory=list)
    slot_puts: list[tuple[FrontendAddress, int, int]] = field(default_factory=list)
    header_puts: list[ServiceEntry] = field(default_factory=list)
    header_deletes: list[FrontendAddress] = field(default_factory=list)
    slot_deletes: list[tuple[FrontendAddress, int]] = field(default_factory=list)
    maglev_deletes: list[tuple[int, int]] = field(default_factory=list)  # svc, index
    range_deletes: list[RangeItem] = field(default_factory=list)
    dsr_deletes: list[DsrKey] = field(default_factory=list)
    backend_deletes: list[int] = field(default_factory=list)
    # (frontend, backend id, backend) pairs that ended: their flows are stale
    removed_pairs: list[tuple[FrontendAddress, int, BackendAddr]] = field(default_factory=list)
    services_written: int = 0
    services_removed: int = 0

    def phases(self) -> list[tuple[str, str, list]]:
        """(map, "put" | "delete", items) in the order they must reach the kernel."""
        return [
            ("backends", "put", self.backend_puts),
            ("dsr", "put", self.dsr_puts),
            ("maglev", "put", self.maglev_puts),
            ("ranges", "put", self.range_puts),
            ("slots", "put", self.slot_puts),
            ("headers", "put", self.header_puts),
            ("headers", "delete", self.header_deletes),
            ("slots", "delete", self.slot_deletes),
            ("maglev", "delete", self.maglev_deletes),
            ("ranges", "delete", self.range_deletes),
            ("dsr", "delete", self.dsr_deletes),
            ("backends", "delete", self.backend_deletes),
        ]

    def writes(self) -> int:
        return sum(len(items) for _, _, items in self.phases())


def plan_sync(
    current: NodePortImage,
    desired: Mapping[FrontendAddress, ServiceEntry | None],
    backends: Mapping[int, BackendAddr],
    dsr: Mapping[DsrKey, int] | None,
    m: int,
    *,
    prune: bool = False,
) -> tuple[Plan, NodePortImage]:
    """Writes taking ``current`` to ``desired`` for the frontends it names.

    ``backends`` holds every backend id the desired entries use (old and new);
    ``dsr`` every DSR delivery entry this node needs, or None to leave them. With
    ``prune`` (full sync) backends no service refers to are removed.
    """
    plan, after = Plan(), current.copy()
    for bid in sorted({b for e in desired.values() if e for b in e.slots}):
        if after.backends.get(bid) != backends[bid]:
            plan.backend_puts.append((bid, backends[bid]))
            after.backends[bid] = backends[bid]
    if dsr is not None:
        plan.dsr_puts = sorted((k, v) for k, v in dsr.items() if after.dsr.get(k) != v)
        plan.dsr_deletes = sorted(set(after.dsr) - set(dsr))
        after.dsr = dict(dsr)

    for addr in sorted(desired):
        entry, old = desired[addr], after.services.get(addr)
        if old is not None:
            gone = set(old.slots) - set(entry.slots if entry else ())
            plan.removed_pairs += [(addr, bid, current.backends[bid]) for bid in sorted(gone)
                                   if bid in current.backends]
        if entry is None:
            if old is not None:
                _remove(plan, after, old)
            continue
        _update(plan, after, old, entry, m)

    used = {bid for e in after.services.values() for bid in e.slots}
    dropped = set(after.backends) - used if prune else {
        bid for e in current.services.values() if e.frontend in desired for bid in e.slots
    } - used
    for bid in sorted(dropped):
        if bid in after.backends:
            plan.backend_deletes.append(bid)
            del after.backends[bid]
    return plan, after


def _remove(plan: Plan, after: NodePortImage, old: ServiceEntry) -> None:
    plan.services_removed += 1
    plan.header_deletes.append(old.frontend)
    plan.slot_deletes += [(old.frontend, i) for i in range(1, len(old.slots) + 1)]
    plan.range_deletes += [(old.svc_id, cidr) for cidr in old.source_ranges]
    table = after.maglev.pop(old.svc_id, ())
    plan.maglev_deletes += [(old.svc_id, i) for i in range(len(table))]
    del after.services[old.frontend]


def _update(plan: Plan, after: NodePortImage, old: ServiceEntry | None, entry: ServiceEntry,
            m: int) -> None:
    addr = entry.frontend
    old_slots = old.slots if old else ()
    old_table = after.maglev.get(entry.svc_id, ())
    changes: dict[int, int] = {}
    if entry.maglev and entry.slots:
        changes = maglev.changed_slots(old_table, maglev_backends(entry, after.backends), m)
        if changes:
            plan.maglev_puts += [(entry.svc_id, i, bid) for i, bid in sorted(changes.items())]
            table = list(old_table) if len(old_table) == m else [0] * m
            for i, bid in changes.items():
                table[i] = bid
            after.maglev[entry.svc_id] = tuple(table)
    elif old_table:
        plan.maglev_deletes += [(entry.svc_id, i) for i in range(len(old_table))]
        del after.maglev[entry.svc_id]
    old_ranges = set(old.source_ranges) if old else set()
    plan.range_puts += [(entry.svc_id, c) for c in entry.source_ranges if c not in old_ranges]
    plan.range_deletes += [(entry.svc_id, c) for c in sorted(old_ranges)
                           if c not in entry.source_ranges]
    plan.slot_puts += [(addr, i, bid) for i, bid in enumerate(entry.slots, start=1)
                       if i > len(old_slots) or old_slots[i - 1] != bid]
    if old is None or old.header() != entry.header():
        plan.header_puts.append(entry)
    plan.slot_deletes += [(addr, i) for i in range(len(entry.slots) + 1, len(old_slots) + 1)]
    if old != entry or changes:
        plan.services_written += 1
    after.services[addr] = entry
