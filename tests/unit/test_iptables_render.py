"""iptables driver, pure parts: chain names, render, partial assemble, tracer."""

from __future__ import annotations

import base64
import hashlib

import pytest

from lbcore.model import NodeInfo, ServiceKey
from lbcore.testing import cluster, endpoint_slice, naive_expand, service
from lbcore_iptables.naming import endpoint_chain, service_chain
from lbcore_iptables.render import RenderOptions, assemble, render, render_all
from lbcore_iptables.ruleset import parse
from lbcore_iptables.tracer import Outcome, Packet, trace, with_hooks

NODE = NodeInfo("n", ("172.18.0.2",))
OPTS = RenderOptions(cluster_cidr="10.0.0.0/8", node_addresses=NODE.addresses)


def state(n_eps: int = 4, affinity: int | None = None, node_port: int | None = None):
    svc = service("web", "10.96.0.1", affinity=affinity, node_port=node_port)
    objs = cluster([svc], [endpoint_slice(svc, [f"10.1.0.{i + 1}" for i in range(n_eps)])])
    return naive_expand(objs, NODE)


def test_chain_names_are_kube_proxys_hash() -> None:
    digest = hashlib.sha256(b"ns/web:httptcp").digest()
    assert service_chain("KUBE-SVC-", "ns/web:http", "TCP") == \
        "KUBE-SVC-" + base64.b32encode(digest).decode()[:16]
    a = endpoint_chain("ns/web:http", "TCP", "10.0.0.1:80")
    assert a.startswith("KUBE-SEP-") and len(a) == 25
    assert a != endpoint_chain("ns/web:http", "UDP", "10.0.0.1:80")


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_statistic_rules_give_each_endpoint_1_over_n(n: int) -> None:
    rs = with_hooks(parse(render(state(n), OPTS)))
    result = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 80), "PREROUTING", NODE.addresses)
    assert len(result) == n
    assert all(abs(p - 1 / n) < 1e-6 for p in result.values()), result


def test_no_endpoints_rejects_and_outside_clients_are_masqueraded() -> None:
    rs = with_hooks(parse(render(state(0), OPTS)))
    pkt = Packet("10.2.0.9", "tcp", "10.96.0.1", 80)
    assert trace(rs, pkt, "PREROUTING", NODE.addresses) == {Outcome("REJECT"): 1.0}
    rs = with_hooks(parse(render(state(1), OPTS)))
    outside = trace(rs, Packet("192.0.2.1", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert outside == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True): 1.0}
    other_port = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 81), "PREROUTING")
    assert other_port == {Outcome("ACCEPT"): 1.0}


def test_hairpin_is_masqueraded_and_affinity_recorded() -> None:
    rs = with_hooks(parse(render(state(1, affinity=30), OPTS)))
    result = trace(rs, Packet("10.1.0.1", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert result == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True, affinity=True): 1.0}
    assert "--rcheck --seconds 30 --reap" in render(state(1, affinity=30), OPTS)


def test_masquerade_all() -> None:
    opts = RenderOptions(masquerade_all=True, node_addresses=NODE.addresses)
    rs = with_hooks(parse(render(state(1), opts)))
    result = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert result == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True): 1.0}


def test_nodeport_reaches_the_service_from_outside() -> None:
    rs = with_hooks(parse(render(state(2, node_port=30080), OPTS)))
    result = trace(rs, Packet("192.0.2.1", "tcp", "172.18.0.2", 30080), "PREROUTING",
                   NODE.addresses)
    assert set(result) == {Outcome("DNAT", f"10.1.0.{i}:8080", masquerade=True) for i in (1, 2)}


def test_partial_assemble_writes_only_named_services_and_deletes_stale() -> None:
    st = state(2)
    rules = render_all(st, OPTS)
    text = assemble(rules, OPTS, write=frozenset(), delete={"KUBE-SEP-GONE"})
    assert ":KUBE-SVC-" not in text and ":KUBE-SERVICES - [0:0]" in text
    assert ":KUBE-SEP-GONE - [0:0]" in text and text.index(":KUBE-SEP-GONE") < text.index(
        "-X KUBE-SEP-GONE")
    full = assemble(rules, OPTS, write=[ServiceKey("default", "web")])
    assert full == render(st, OPTS)
