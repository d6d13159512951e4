"""From (what the maps hold, what they must hold) to an ordered list of writes. Pure.

The order is what keeps a concurrent ``connect()`` safe (Cilium's rule):
backends and reverse-NAT entries first, then backend slots, then the header that
publishes the new count, then deletions of slots past the count, and backends last,
once no slot refers to them. Every intermediate state is a valid service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lbcore.model import Frontend, FrontendAddress

from .image import Allocators, BackendAddr, MapImage, ServiceEntry, Slot, render_entry

AffinityPair = tuple[int, int]  # (backend_id, rev_nat_id)


@dataclass
class Plan:
    backend_puts: list[tuple[int, BackendAddr]] = field(default_factory=list)
    revnat_puts: list[tuple[int, FrontendAddress]] = field(default_factory=list)
    match_puts: list[AffinityPair] = field(default_factory=list)
    slot_puts: list[tuple[FrontendAddress, int, Slot]] = field(default_factory=list)
    header_puts: list[ServiceEntry] = field(default_factory=list)
    header_deletes: list[FrontendAddress] = field(default_factory=list)
    slot_deletes: list[tuple[FrontendAddress, int]] = field(default_factory=list)
    revnat_deletes: list[int] = field(default_factory=list)
    match_deletes: list[AffinityPair] = field(default_factory=list)
    backend_deletes: list[int] = field(default_factory=list)
    removed_backends: list[BackendAddr] = field(default_factory=list)  # of backend_deletes
    # Transient growth of lbc_svc while a shrinking service still has its old slots.
    slot_overshoot: int = 0
    services_written: int = 0
    services_removed: int = 0

    def phases(self) -> list[tuple[str, str, list]]:
        """(map, "put" | "delete", items) in the order they must reach the kernel.

        The single statement of the ordering rule; the kernel writer and the
        tests' concurrent-reader simulation both walk it.
        """
        return [
            ("backends", "put", self.backend_puts),
            ("revnat", "put", self.revnat_puts),
            ("aff_match", "put", self.match_puts),
            ("slots", "put", self.slot_puts),
            ("headers", "put", self.header_puts),
            ("headers", "delete", self.header_deletes),
            ("slots", "delete", self.slot_deletes),
            ("revnat", "delete", self.revnat_deletes),
            ("aff_match", "delete", self.match_deletes),
            ("backends", "delete", self.backend_deletes),
        ]

    def writes(self) -> int:
        return sum(
            len(ops)
            for ops in (
                self.backend_puts, self.revnat_puts, self.match_puts, self.slot_puts,
                self.header_puts, self.header_deletes, self.slot_deletes,
                self.revnat_deletes, self.match_deletes, self.backend_deletes,
            )
        )


def affinity_pairs(entry: ServiceEntry | None) -> set[AffinityPair]:
    if entry is None or not entry.affinity_timeout:
        return set()
    return {(slot.backend_id, entry.rev_nat_id) for slot in entry.slots}


def plan_sync(
    current: MapImage,
    desired: Mapping[FrontendAddress, ServiceEntry | None],
    new_backends: Mapping[BackendAddr, int],
    *,
    prune_orphans: bool = False,
    in_place: bool = False,
) -> tuple[Plan, MapImage]:
    """Writes that take ``current`` to hold ``desired`` for the frontends it names.

    ``desired`` maps each frontend to reconcile onto its entry, or None to remove it;
    frontends not named are left alone (partial sync). ``new_backends`` are the ids
    allocated for backends the maps do not hold yet. With ``prune_orphans`` (full
    sync), backends and reverse-NAT entries no service refers to are removed too.
    Returns the plan and the image the maps will hold once it is applied; with
    ``in_place`` that image is ``current`` itself, updated (each frontend is read
    before it is written, so the result is the same).
    """
    plan = Plan()
    after = current if in_place else current.copy()
    touched_backends: set[int] = set()

    for addr, bid in sorted(new_backends.items(), key=lambda item: item[1]):
        plan.backend_puts.append((bid, addr))
        after.backends[bid] = addr
        after.backend_ids[addr] = bid

    for addr in sorted(desired):
        entry, old = desired[addr], after.services.get(addr)
        if entry == old:
            continue
        if old is not None:
            after.backend_refs.subtract(slot.backend_id for slot in old.slots)
            touched_backends.update(slot.backend_id for slot in old.slots)
        if entry is None:
            if old is None:
                continue
            _plan_removal(plan, after, old)
            continue
        _plan_update(plan, after, old, entry)

    orphans = {bid for bid in touched_backends if after.backend_refs[bid] <= 0}
    if prune_orphans:
        orphans |= {bid for bid in after.backends if after.backend_refs[bid] <= 0}
        used_revnat = {e.rev_nat_id for e in after.services.values()}
        for rid in sorted(set(after.revnat) - used_revnat):
            plan.revnat_deletes.append(rid)
            del after.revnat[rid]
    for bid in sorted(orphans):
        if bid in after.backends:
            plan.backend_deletes.append(bid)
            plan.removed_backends.append(after.backends[bid])
            del after.backend_ids[after.backends.pop(bid)]
        after.backend_refs.pop(bid, None)
    return plan, after


def _plan_removal(plan: Plan, after: MapImage, old: ServiceEntry) -> None:
    plan.services_removed += 1
    plan.header_deletes.append(old.frontend)
    plan.slot_deletes.extend((old.frontend, i) for i in range(1, len(old.slots) + 1))
    plan.match_deletes.extend(sorted(affinity_pairs(old)))
    if after.revnat.get(old.rev_nat_id) == old.frontend:
        plan.revnat_deletes.append(old.rev_nat_id)
        del after.revnat[old.rev_nat_id]
    del after.services[old.frontend]
    after.slot_count -= 1 + len(old.slots)


def _plan_update(
    plan: Plan, after: MapImage, old: ServiceEntry | None, entry: ServiceEntry
) -> None:
    plan.services_written += 1
    addr = entry.frontend
    if after.revnat.get(entry.rev_nat_id) != addr:
        plan.revnat_puts.append((entry.rev_nat_id, addr))
        after.revnat[entry.rev_nat_id] = addr
    old_slots = old.slots if old else ()
    for i, slot in enumerate(entry.slots, start=1):
        if i > len(old_slots) or old_slots[i - 1] != slot:
            plan.slot_puts.append((addr, i, slot))
    if old is None or old.header() != entry.header():
        plan.header_puts.append(entry)
    plan.slot_deletes.extend((addr, i) for i in range(len(entry.slots) + 1, len(old_slots) + 1))
    plan.slot_overshoot = max(plan.slot_overshoot, len(old_slots) - len(entry.slots))
    old_pairs, new_pairs = affinity_pairs(old), affinity_pairs(entry)
    plan.match_puts.extend(sorted(new_pairs - old_pairs))
    plan.match_deletes.extend(sorted(old_pairs - new_pairs))
    after.backend_refs.update(slot.backend_id for slot in entry.slots)
    after.services[addr] = entry
    after.slot_count += len(entry.slots) - len(old_slots) + (0 if old else 1)


def image_for(frontends: Iterable[Frontend], max_backends: int = 1 << 20) -> MapImage:
    """What empty maps would hold after syncing ``frontends`` (golden tests, dry runs)."""
    current = MapImage()
    ids = Allocators.seeded(current, max_backends)
    pending: dict[BackendAddr, int] = {}
    desired: dict[FrontendAddress, ServiceEntry | None] = {}
    for fe in frontends:
        desired.setdefault(fe.address, render_entry(fe, current, ids, pending))
    return plan_sync(current, desired, pending)[1]
