"""Agent restart without disruption, for every driver: under wrk load (a new
connection per request) and with a kept-alive connection per direction, every node's
agent is killed with SIGKILL and started again.

Proven for each driver: zero failed requests; the kept-alive connections are answered
by the backend they started with, throughout; what the kernel holds was sampled
continuously during the restart and never lacked a program/filter/rule (and never had
two); afterwards the datapath holds exactly what it held before (same ids, same rules,
same table) and what the plan says (``wait_healthy`` reads it back).

East-west traffic is a pod's connect() to the web ClusterIP, north-south an outside
client to control-plane's NodePort, as each driver serves them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lbcore.bench.drivers import AGENT_OPTIONS, capabilities, support
from lbcore.bench.env import BenchCluster
from lbcore.lab.agents import services_json, start_agents
from lbcore_iptables.render import HOOKS

from .reliability import (
    Sampler,
    assert_load_clean,
    bench_cluster,
    kill_and_restart,
    start_load,
    stop_and_clean,
)

pytestmark = pytest.mark.netns
# socklb last: its direct pod-to-backend connections leave TIME_WAIT 4-tuples that a
# per-packet datapath's DNATed connections from the same ports then collide with
# (SYN retransmits; see docs/reliability.md), which would slow the next test's load.
DRIVERS = ["iptables", "nftables", "tcnodeport", "socklb"]


@pytest.fixture(scope="module")
def bench():
    yield from bench_cluster()


def node_run(bench: BenchCluster, node, *cmd: str) -> str:
    r = bench.lab.run(node.ns, list(cmd), timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ----------------------------------------------------------- what the kernel holds


def socklb_probe(bench: BenchCluster):
    from lbcore_socklb import loader

    def probe():
        return {node.name: {hook: [(p.id, p.name) for p in progs] for hook, progs in
                            loader.attachments(str(node.pods_cgroup)).items()}
                for node in bench.cluster.nodes.values()}

    def check(sample) -> None:
        for node, hooks in sample.items():
            assert len(hooks) == 8, (node, hooks)
            for hook, progs in hooks.items():
                assert len(progs) == 1 and progs[0][1].startswith("lbc_"), (node, hook, progs)

    return probe, check


def tcnodeport_probe(bench: BenchCluster):
    from lbcore_tcnodeport import loader

    def probe():
        return {node.name: loader.attachments(["eth0"], node.ns.name)
                for node in bench.cluster.nodes.values()}

    def check(sample) -> None:
        for node, hooks in sample.items():
            assert set(hooks) == {"eth0/ingress", "eth0/egress"}, (node, hooks)
            for hook, names in hooks.items():
                assert len(names) == 1 and names[0].startswith("lbn_"), (node, hook, names)

    return probe, check


def readback_probe(bench: BenchCluster, driver: str):
    """iptables / nftables: the driver's own read back in each node's namespace."""
    from lbcore.model import NodeInfo

    if driver == "iptables":
        from lbcore_iptables.driver import IptablesDriver as cls
    else:
        from lbcore_nftables.driver import NftablesDriver as cls
    readers = {node.name: cls({"netns": node.ns.name}, NodeInfo(node.name, node.addresses))
               for node in bench.cluster.nodes.values()}

    def probe():
        return {name: sorted((str(fe.address), sorted((b.ip, b.port) for b in fe.backends))
                             for fe in reader.dump()) for name, reader in readers.items()}

    expected = {}

    def check(sample) -> None:
        for node, frontends in sample.items():
            expected.setdefault(node, frontends)
            assert frontends == expected[node], (node, frontends, expected[node])
            assert frontends, node

    return probe, check


def kernel_state(bench: BenchCluster, driver: str) -> dict[str, object]:
    """What must be identical before and after a restart (no duplicates, nothing lost)."""
    out: dict[str, object] = {}
    for node in bench.cluster.nodes.values():
        if driver == "iptables":
            saved = [ln for table in ("nat", "filter") for ln in node_run(
                bench, node, "iptables-legacy-save", "-t", table).splitlines()
                if not ln.startswith("#")]
            rules = [ln for ln in saved if ln.startswith("-A ")]
            assert len(rules) == len(set(rules)), f"duplicate rules on {node.name}"
            for _table, chain, spec in HOOKS:  # each jump into our chains exactly once
                assert rules.count(f"-A {chain} {spec}") == 1, (node.name, chain, spec)
            out[node.name] = [ln.split(" [")[0] if ln.startswith(":") else ln for ln in saved]
        elif driver == "nftables":
            from lbcore_nftables import nft

            objects = nft.list_table(f"/run/netns/{node.ns.name}")
            for obj in objects:
                for body in obj.values():
                    if isinstance(body, dict):
                        body.pop("handle", None)
            out[node.name] = sorted(json.dumps(o, sort_keys=True) for o in objects)
        elif driver == "tcnodeport":
            text = node_run(bench, node, "tc", "-j", "filter", "show", "dev", "eth0", "ingress")
            out[node.name] = sorted(json.dumps(f.get("options", {}).get("bpf_name"))
                                    for f in json.loads(text or "[]") if "options" in f)
        else:
            out[node.name] = sorted(os.listdir(bench.cluster.bpffs / node.name))
    return out


def prog_ids(bench: BenchCluster, driver: str) -> set[int]:
    """Ids of the programs attached now (socklb: cgroup hooks; tcnodeport: tc)."""
    ids: set[int] = set()
    for node in bench.cluster.nodes.values():
        if driver == "socklb":
            from lbcore_socklb import loader

            ids |= {p.id for progs in loader.attachments(str(node.pods_cgroup)).values()
                    for p in progs}
        elif driver == "tcnodeport":
            for hook in ("ingress", "egress"):
                text = node_run(bench, node, "tc", "-j", "filter", "show", "dev", "eth0", hook)
                ids |= {f["options"]["prog"]["id"] for f in json.loads(text or "[]")
                        if "prog" in f.get("options", {})}
    return ids


# ------------------------------------------------------------------------ the test


@pytest.mark.parametrize("driver", DRIVERS)
def test_kill_9_and_restart_under_load(bench, driver):
    agents = bench.cluster.agents = []
    try:
        agents = start_agents(bench.cluster, [driver], options=AGENT_OPTIONS, timeout=60)
        if driver == "socklb":
            probe, check = socklb_probe(bench)
        elif driver == "tcnodeport":
            probe, check = tcnodeport_probe(bench)
        else:
            probe, check = readback_probe(bench, driver)
        services_before = {a.node.name: services_json(bench.cluster, a) for a in agents}
        kernel_before = kernel_state(bench, driver)
        ids_before = prog_ids(bench, driver)
        carries = support(driver, capabilities(driver))
        load = start_load(bench, ew=carries["ew"] is None, ns=carries["ns"] is None,
                          close=True, connections=2)
        try:
            with Sampler(probe) as sampler:
                started = time.monotonic()
                kill_and_restart(bench, agents)
                took = time.monotonic() - started  # SIGKILL to both agents holding the plan
        finally:
            results = load.finish()
        assert sampler.errors == [], sampler.errors[:5]
        assert sampler.samples >= 5, sampler.samples  # the restart took a while: many more
        for key in sampler.seen:
            check(json.loads(key))
        assert_load_clean(results)
        for agent in agents:
            assert "Traceback" not in agent.proc.output(), agent.proc.output()
            if driver == "socklb":
                assert "frontends adopted" in agent.proc.output(), agent.proc.output()
        assert {a.node.name: services_json(bench.cluster, a) for a in agents} == services_before
        assert kernel_state(bench, driver) == kernel_before
        if driver in ("socklb", "tcnodeport"):
            ids_after = prog_ids(bench, driver)
            assert ids_after and not ids_after & ids_before  # replaced in place, every one
            if driver == "socklb":  # the samples saw the old programs, then the new ones
                for node in bench.cluster.nodes:
                    seen = {json.dumps(sorted(json.loads(k)[node].values())) for k in sampler.seen}
                    assert len(seen) >= 2, (node, seen)
        print(f"{driver}: restart {took:.1f} s, {sampler.samples} samples, load {results}, "
              f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        problems = stop_and_clean(bench, agents) if agents else []
        assert problems == []


def test_restart_needs_no_cleanup_of_leftovers(bench):
    """The agents above were stopped with `lbcore cleanup`; nothing of any driver is
    left in the nodes (a restart never leaks a second copy that cleanup would miss)."""
    from lbcore_socklb import loader

    for node in bench.cluster.nodes.values():
        assert all(not p for p in loader.attachments(str(node.pods_cgroup)).values())
        nat = node_run(bench, node, "iptables-legacy-save", "-t", "nat")
        assert "KUBE-" not in nat, nat
        tc = node_run(bench, node, "tc", "filter", "show", "dev", "eth0", "ingress")
        assert "lbn_" not in tc, tc
