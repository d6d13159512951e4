"""IncrementalExpander must always equal a full expansion of the same snapshot."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.expand import IncrementalExpander, expand
from lbcore.model import ClusterObjects, Node, NodeInfo, ServiceKey
from lbcore.testing import cluster, endpoint_slice, service

NODE = NodeInfo("worker", ("172.18.0.3",))
NAMES = [f"svc-{i}" for i in range(6)]

# One step: (service name, present?, node port?, endpoint count, admit-maglev?)
steps = st.lists(
    st.tuples(st.sampled_from(NAMES), st.booleans(), st.booleans(), st.integers(0, 3)),
    min_size=1, max_size=12,
)


def snapshot(present: dict[str, tuple[bool, int]], node_ip: str) -> ClusterObjects:
    svcs, slices = [], []
    for i, name in enumerate(NAMES):
        if name not in present:
            continue
        node_port, endpoints = present[name]
        svc = service(name, f"10.96.0.{i + 1}", node_port=30000 + i if node_port else None)
        svcs.append(svc)
        slices.append(endpoint_slice(svc, [f"10.0.{i}.{j + 1}" for j in range(endpoints)]))
    objects = cluster(svcs, slices, [Node("worker2", (node_ip,))])
    return ClusterObjects(objects.services, objects.slices, MappingProxyType(objects.nodes))


@settings(max_examples=120, deadline=None)
@given(steps, st.lists(st.sampled_from(["172.18.0.4", "172.18.0.5"]), min_size=12, max_size=12))
def test_incremental_equals_full(steps, node_ips) -> None:
    expander = IncrementalExpander(NODE, admit=lambda fe: "no" if fe.port == 30003 else None)
    present: dict[str, tuple[bool, int]] = {}
    previous = snapshot(present, node_ips[0])
    expander.expand(previous, None)
    for (name, keep, node_port, endpoints), node_ip in zip(steps, node_ips, strict=False):
        if keep:
            present[name] = (node_port, endpoints)
        else:
            present.pop(name, None)
        objects = snapshot(present, node_ip)
        got = expander.expand(objects, frozenset({ServiceKey("default", name)}))
        want = expand(objects, NODE)
        admitted = tuple(fe for fe in want.frontends if fe.port != 30003)
        assert got.frontends == admitted
        assert {s.frontend for s in got.skipped if s.frontend} == {
            fe.address for fe in want.frontends if fe.port == 30003}
        assert dict(got.services) == by_service(admitted)


def by_service(frontends):
    index: dict = {}
    for fe in frontends:
        index.setdefault(fe.service, []).append(fe)
    return {k: tuple(v) for k, v in index.items()}
