"""iptables driver: what one family's sync writes (partial, full, large cluster mode),
against a recording stand-in for the iptables tools (no kernel)."""

from __future__ import annotations

import re
from types import MappingProxyType

import pytest

from lbcore.expand import IncrementalExpander
from lbcore.model import ClusterObjects, NodeInfo
from lbcore.testing import cluster, endpoint_slice, service
from lbcore_iptables.render import LARGE_CLUSTER_ENDPOINTS, RenderOptions
from lbcore_iptables.tables import NFT_BATCH_CHAINS, FamilyTables

NODE = NodeInfo("n", ("172.18.0.2",))


class RecordingIptables:
    """TEST DOUBLE for ``apply.Iptables``: keeps what each restore was given; ``save``
    answers from the last full input (enough for chain names and hooks)."""

    def __init__(self, backend: str = "legacy") -> None:
        self.backend = backend
        self.restores: list[str] = []
        self.saves = 0
        self.kernel = ""

    def restore(self, text: str) -> None:
        if text:
            self.restores.append(text)
            self.kernel = text

    def save(self, table: str) -> str:
        self.saves += 1
        return self.kernel


def objects(n: int, eps: int = 2, extra: str | None = None) -> ClusterObjects:
    svcs = [service(f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(n)]
    slices = [endpoint_slice(s, [f"10.1.{i // 250}.{j + 1}" for j in range(eps)])
              for i, s in enumerate(svcs)]
    if extra:
        slices[0] = endpoint_slice(svcs[0], [extra, *slices[0].endpoints[0].addresses])
    return cluster(svcs, slices)


def setup(n: int, eps: int = 2, backend: str = "legacy"):
    ipt = RecordingIptables(backend)
    tables = FamilyTables(ipt, RenderOptions(cluster_cidr="10.0.0.0/8",
                                             node_addresses=NODE.addresses))
    exp = IncrementalExpander(NODE)
    objs = objects(n, eps)
    tables.sync(exp.expand(objs, None), None)
    return ipt, tables, exp, objs


def test_endpoint_change_rewrites_only_that_service() -> None:
    ipt, tables, exp, objs = setup(3)
    key = next(k for k in objs.services if k.name == "s0")
    changed = objects(3, extra="10.9.9.9")
    result = tables.sync(exp.expand(changed, frozenset({key})), frozenset({key}))
    text = ipt.restores[-1]
    assert not result.full and result.services_written == 1
    assert "KUBE-SERVICES" not in text and "*filter" not in text  # shared chains untouched
    assert "--to-destination 10.9.9.9:8080" in text and "default/s1" not in text
    assert text.count("-X KUBE-SEP-") == 1  # the endpoint it replaced


def test_new_service_rewrites_kube_services_and_unchanged_sync_writes_nothing() -> None:
    ipt, tables, exp, _ = setup(2)
    bigger = objects(3)
    key = next(k for k in bigger.services if k.name == "s2")
    tables.sync(exp.expand(bigger, frozenset({key})), frozenset({key}))
    assert ":KUBE-SERVICES - [0:0]" in ipt.restores[-1]
    assert ipt.restores[-1].count("-A KUBE-SERVICES -d 10.96.") == 3  # the whole chain
    before = len(ipt.restores)
    result = tables.sync(exp.expand(bigger, frozenset({key})), frozenset({key}))
    assert len(ipt.restores) == before and result.restore_lines == 0


def test_full_sync_in_a_large_cluster_reuses_renders_and_skips_save() -> None:
    n = LARGE_CLUSTER_ENDPOINTS // 2 + 1  # x 2 endpoints: just over the threshold
    ipt, tables, exp, objs = setup(n)
    assert ipt.saves == 2  # first sync: the kernel's chains and hooks, once
    assert " -j KUBE-SEP-" in ipt.restores[-1] and '"default/s0 -> ' not in ipt.restores[-1]
    cached = dict(tables._cache)
    result = tables.sync(exp.expand(objs, None), None)
    assert result.full and result.large_cluster and ipt.saves == 2
    assert all(tables._cache[k][2] is cached[k][2] for k in cached)  # not rendered again
    first = [ln for ln in ipt.restores[-2].splitlines() if not ln.startswith("-I ")]
    assert ipt.restores[-1].splitlines() == first  # the same, less the hooks made once


def test_crossing_the_large_cluster_threshold_rewrites_every_service() -> None:
    n = LARGE_CLUSTER_ENDPOINTS // 2
    ipt, tables, exp, objs = setup(n)  # exactly 1000 endpoints: comments kept
    assert '"default/s1 -> 10.1.0.1:8080"' in ipt.restores[-1]
    key = next(k for k in objs.services if k.name == "s0")
    slices = dict(objs.slices)
    slices[key] = (endpoint_slice(objs.services[key], ["10.1.0.1", "10.1.0.2", "10.1.0.3"]),)
    grown = ClusterObjects(objs.services, MappingProxyType(slices), objs.nodes)
    result = tables.sync(exp.expand(grown, frozenset({key})), frozenset({key}))
    assert result.full and result.large_cluster
    assert '"default/s1 -> ' not in ipt.restores[-1] and "default/s1" in ipt.restores[-1]


def test_a_failed_restore_forgets_the_kernel_and_the_next_sync_is_full() -> None:
    ipt, tables, exp, objs = setup(2)

    def fail(text: str) -> None:
        raise RuntimeError("restore rejected")

    ipt.restore = fail  # type: ignore[method-assign]
    key = next(iter(objs.services))
    with pytest.raises(RuntimeError):
        tables.sync(exp.expand(objects(2, extra="10.9.9.9"), frozenset({key})), frozenset({key}))
    del ipt.restore
    saves = ipt.saves
    result = tables.sync(exp.expand(objects(2, extra="10.9.9.9"), frozenset({key})),
                         frozenset({key}))
    assert result.full and ipt.saves == saves + 2  # re-read the kernel
    assert "default/s1" in ipt.restores[-1]


def test_nft_full_sync_in_batches_of_whole_services_links_them_last() -> None:
    n = NFT_BATCH_CHAINS  # x 3 chains each (SVC + 2 SEP): about three batches
    legacy, *_ = setup(n)
    nft, *_ = setup(n, backend="nft")
    (single,) = legacy.restores
    first, *batches, last = nft.restores
    assert first.startswith("*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n")
    assert len(batches) == 3 and all("KUBE-SERVICES" not in b for b in batches)
    for b in batches:  # whole services: every SEP a batch's SVC chains jump to is in it
        declared = set(re.findall(r"^:(\S+)", b, re.M))
        assert set(re.findall(r"-j (KUBE-SEP-\S+)", b)) <= declared
    assert "-A KUBE-SERVICES" in last and ":KUBE-SVC-" not in last
    rules = sorted(ln for t in nft.restores for ln in t.splitlines() if ln.startswith("-"))
    assert rules == sorted(ln for ln in single.splitlines() if ln.startswith("-"))
