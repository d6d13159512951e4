"""Topology-aware routing (zone hints) and the node's zone from its Node object."""

from __future__ import annotations

import pytest

from lbcore.expand import IncrementalExpander, expand
from lbcore.k8s import Document, parse_objects
from lbcore.model import NodeInfo, ServiceKey
from lbcore.sources.kube_objects import node_object, service_object, slice_object

WEB = ServiceKey("default", "web")
ZONES = {"10.0.1.1": "zone-a", "10.0.1.2": "zone-a", "10.0.2.1": "zone-b"}


def objects(*, distribution=None, annotations=None, hints=ZONES, node_zone="zone-a",
            unhinted=()):
    svc = service_object("web", "10.96.0.10", [{"name": "http", "port": 80}])
    if distribution:
        svc["spec"]["trafficDistribution"] = distribution
    if annotations:
        svc["metadata"]["annotations"] = annotations
    eps = slice_object(svc, list(ZONES))
    for ep in eps["endpoints"]:
        ip = ep["addresses"][0]
        ep["zone"] = ZONES[ip]
        if hints and ip not in unhinted:
            ep["hints"] = {"forZones": [{"name": hints[ip]}]}
    docs = [svc, eps, node_object("node-a", "172.18.0.2", zone=node_zone)]
    return parse_objects([Document("t", i, d) for i, d in enumerate(docs, 1)])


NODE_A = NodeInfo("node-a")


def cluster_ip_backends(objs, node=NODE_A):
    (fe,) = [fe for fe in expand(objs, node).frontends if fe.ip == "10.96.0.10"]
    return sorted(b.ip for b in fe.backends)


def test_hints_and_distribution_are_read():
    objs = objects(distribution="PreferClose")
    assert objs.services[WEB].traffic_distribution == "PreferClose"
    hinted = {e.addresses[0]: e.zone_hints for e in objs.slices[WEB][0].endpoints}
    assert hinted == {"10.0.1.1": ("zone-a",), "10.0.1.2": ("zone-a",), "10.0.2.1": ("zone-b",)}


def test_invalid_zone_hint_is_an_error():
    with pytest.raises(Exception, match=r"hints\.forZones\[0\]\.name"):
        objects(hints={ip: "not a zone!" for ip in ZONES})


@pytest.mark.parametrize("how", [{"distribution": "PreferClose"},
                                 {"annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
                                 {"annotations": {
                                     "service.kubernetes.io/topology-aware-hints": "auto"}}])
def test_zone_hints_keep_traffic_in_the_nodes_zone(how):
    assert cluster_ip_backends(objects(**how)) == ["10.0.1.1", "10.0.1.2"]
    assert cluster_ip_backends(objects(**how, node_zone="zone-b")) == ["10.0.2.1"]
    # a configured zone wins over the Node object's label
    assert cluster_ip_backends(objects(**how), NodeInfo("node-a", zone="zone-b")) == \
        ["10.0.2.1"]


@pytest.mark.parametrize("case", [
    {},  # the service does not ask for it
    {"annotations": {"service.kubernetes.io/topology-mode": "Disabled"}},
    {"distribution": "PreferClose", "unhinted": ("10.0.2.1",)},  # one ready endpoint unhinted
    {"distribution": "PreferClose", "node_zone": "zone-c"},  # no endpoint for this zone
    {"distribution": "PreferClose", "node_zone": None},  # zone unknown
])
def test_hints_are_ignored_unless_all_conditions_hold(case):
    assert cluster_ip_backends(objects(**case)) == sorted(ZONES)


def test_incremental_expander_recomputes_when_the_nodes_zone_changes():
    expander = IncrementalExpander(NodeInfo("node-a"))
    first = expander.expand(objects(distribution="PreferClose"), None)
    later = expander.expand(objects(distribution="PreferClose", node_zone="zone-b"),
                            frozenset())
    ips = [sorted(b.ip for b in s.frontends[0].backends) for s in (first, later)]
    assert ips == [["10.0.1.1", "10.0.1.2"], ["10.0.2.1"]]
