"""socklb render + plan, without a kernel.

The key property: walking a plan's phases op by op (as the kernel writer does), a
concurrent connect() never sees a header whose slots or backends are missing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.model import (
    Backend,
    Condition,
    Frontend,
    FrontendAddress,
    FrontendType,
    ServiceKey,
)
from lbcore_socklb.ids import IdAllocator, IdExhausted
from lbcore_socklb.image import Allocators, MapImage, format_image, render_entry, stable_slots
from lbcore_socklb.plan import plan_sync

KEY = ServiceKey("default", "web")


def frontend(ip: str, backends: list[str], *, port: int = 80, affinity: int | None = None,
             terminating: frozenset[str] = frozenset()) -> Frontend:
    bs = tuple(
        Backend(b, 8080, Condition.TERMINATING if b in terminating else Condition.READY)
        for b in backends
    )
    return Frontend(KEY, "http", FrontendType.CLUSTER_IP, FrontendAddress(ip, port, "TCP"),
                    bs, bs, session_affinity_timeout=affinity)


class SimulatedMaps:
    """Applies plan phases to dicts and checks what a reader could see after each op."""

    def __init__(self) -> None:
        self.svc: dict[tuple[FrontendAddress, int], object] = {}
        self.backends: dict[int, object] = {}
        self.revnat: dict[int, object] = {}
        self.aff_match: set[tuple[int, int]] = set()

    def apply(self, plan) -> None:
        for map_name, op, items in plan.phases():
            for item in items:
                self._one(map_name, op, item)
                self.check_reader_view()

    def _one(self, map_name: str, op: str, item) -> None:
        if map_name == "backends":
            if op == "put":
                self.backends[item[0]] = item[1]
            else:
                del self.backends[item]
        elif map_name == "revnat":
            if op == "put":
                self.revnat[item[0]] = item[1]
            else:
                del self.revnat[item]
        elif map_name == "aff_match":
            (self.aff_match.add if op == "put" else self.aff_match.remove)(item)
        elif map_name == "slots":
            if op == "put":
                self.svc[(item[0], item[1])] = item[2]
            else:
                del self.svc[(item[0], item[1])]
        elif op == "put":
            self.svc[(item.frontend, 0)] = item
        else:
            del self.svc[(item, 0)]

    def check_reader_view(self) -> None:
        for (fe, slot), value in self.svc.items():
            if slot:
                continue
            for i in range(1, len(value.slots) + 1):
                assert (fe, i) in self.svc, f"{fe} count={len(value.slots)} but slot {i} missing"
                assert self.svc[(fe, i)].backend_id in self.backends, f"{fe} slot {i} dangling"
            assert value.rev_nat_id in self.revnat


def sync(image: MapImage, ids: Allocators, frontends: list[Frontend],
         remove: tuple[FrontendAddress, ...] = ()):
    pending: dict = {}
    desired = {fe.address: render_entry(fe, image, ids, pending) for fe in frontends}
    desired.update({addr: None for addr in remove})
    return plan_sync(image, desired, pending)


def test_stable_slots_keep_positions_and_stay_dense() -> None:
    assert stable_slots([1, 2, 3, 4], [1, 3, 4, 5]) == [1, 5, 3, 4]
    assert stable_slots([1, 2, 3, 4], [1, 3]) == [1, 3]
    assert stable_slots([1, 2, 3, 4], [4]) == [4]
    assert stable_slots([], [3, 1, 2]) == [1, 2, 3]
    assert stable_slots([1, 2], []) == []


@given(st.lists(st.integers(1, 30), unique=True), st.sets(st.integers(1, 30)))
def test_stable_slots_is_a_permutation_of_wanted(current: list[int], wanted: set[int]) -> None:
    result = stable_slots(current, wanted)
    assert sorted(result) == sorted(wanted)
    kept = [i for i, bid in enumerate(current) if bid in wanted and i < len(result)]
    moved = [i for i in kept if result[i] != current[i]]
    # Only backends that had to fill a hole from the tail may move.
    assert len(moved) <= len(current) - len(set(current) & wanted)


def test_ids_reuse_lowest_freed_first() -> None:
    ids = IdAllocator(1, 5, in_use=[1, 3])
    assert [ids.allocate(), ids.allocate(), ids.allocate()] == [2, 4, 5]
    ids.release(3)
    assert ids.allocate() == 3
    try:
        ids.allocate()
    except IdExhausted:
        pass
    else:
        raise AssertionError("allocator handed out an id past its range")


def test_new_service_is_written_slots_before_header() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    plan, after = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.5", "10.0.1.6"])])
    phases = [(m, op) for m, op, items in plan.phases() if items]
    assert phases.index(("slots", "put")) < phases.index(("headers", "put"))
    assert phases.index(("backends", "put")) < phases.index(("slots", "put"))
    assert format_image(after) == (
        "svc 10.96.0.10:80/TCP type=ClusterIP rev_nat=1 count=2\n"
        "  slot 1: backend 1 10.0.1.5:8080/TCP\n"
        "  slot 2: backend 2 10.0.1.6:8080/TCP\n"
        "backend 1: 10.0.1.5:8080/TCP\n"
        "backend 2: 10.0.1.6:8080/TCP\n"
        "revnat 1: 10.96.0.10:80/TCP\n"
    )


def test_unchanged_service_writes_nothing() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    fe = frontend("10.96.0.10", ["10.0.1.5"])
    _, image = sync(image, ids, [fe])
    plan, _ = sync(image, ids, [fe])
    assert plan.writes() == 0


def test_endpoint_change_rewrites_only_the_changed_slot() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    _, image = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.1", "10.0.1.2", "10.0.1.3"])])
    plan, after = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.1", "10.0.1.4", "10.0.1.3"])])
    assert [(i, s.backend_id) for _, i, s in plan.slot_puts] == [(2, 4)]
    assert plan.header_puts == []  # count unchanged: the header stays as it is
    assert plan.backend_deletes == [2]
    assert after.backends[4].ip == "10.0.1.4"


def test_shared_backend_survives_until_last_service_drops_it() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    a, b = frontend("10.96.0.10", ["10.0.1.1"]), frontend("10.96.0.11", ["10.0.1.1"])
    _, image = sync(image, ids, [a, b])
    assert len(image.backends) == 1
    plan, image = sync(image, ids, [], remove=(a.address,))
    assert plan.backend_deletes == []
    plan, image = sync(image, ids, [], remove=(b.address,))
    assert plan.backend_deletes == [1]
    assert image.services == {} and image.revnat == {}


def test_affinity_match_entries_follow_slots() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    plan, image = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.1", "10.0.1.2"],
                                             affinity=30)])
    assert sorted(plan.match_puts) == [(1, 1), (2, 1)]
    plan, image = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.2"], affinity=30)])
    assert plan.match_deletes == [(1, 1)]


def test_terminating_state_is_recorded_per_slot() -> None:
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    _, image = sync(image, ids, [frontend("10.96.0.10", ["10.0.1.1"],
                                          terminating=frozenset({"10.0.1.1"}))])
    assert "(terminating)" in format_image(image)


ips = st.lists(st.sampled_from([f"10.0.1.{i}" for i in range(1, 9)]), unique=True, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ips, ips, ips), min_size=1, max_size=6))
def test_a_concurrent_reader_never_sees_a_half_written_service(steps) -> None:
    """Random endpoint churn on three services; check the reader's view after every op."""
    image = MapImage()
    ids = Allocators.seeded(image, 100)
    kernel = SimulatedMaps()
    vips = ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
    for step in steps:
        fes = [frontend(vip, list(backends)) for vip, backends in zip(vips, step, strict=True)]
        plan, image = sync(image, ids, fes)
        kernel.apply(plan)
        for rid in plan.revnat_deletes:
            ids.revnat.release(rid)
        for bid in plan.backend_deletes:
            ids.backend.release(bid)
        # The simulated kernel now holds exactly the image.
        assert set(kernel.backends) == set(image.backends)
        assert {fe for fe, slot in kernel.svc if slot == 0} == set(image.services)
        assert len(kernel.svc) == image.slot_entries() == image.slot_count
