"""Live driver switch: both nodes' running agents move from iptables to socklb and
back, each in one step (``driver:`` rewritten in lbcore.yaml), under wrk load from the
client pod to the web ClusterIP (a new connection per request), with zero failed
requests. A connection kept alive from before the first switch (DNATed by iptables)
and one opened under socklb (connected straight to a backend) keep their backend
through every switch. Between the switches, the old datapath is gone from the kernel
and the new one holds the plan (read back). The ordering argument is in
``lbcore/switch.py`` and docs/reliability.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lbcore import ctkeep
from lbcore.bench.env import BenchCluster
from lbcore.lab.agents import lbcore_in_node, stop_agents, wait_healthy
from lbcore_socklb import loader

from .reliability import (
    HELD_CONNECTION,
    assert_load_clean,
    bench_cluster,
    config_for,
    metric,
    rewrite,
    scrape,
    start_agent,
    start_load,
    wait_for,
)

pytestmark = pytest.mark.netns


@pytest.fixture
def bench():
    yield from bench_cluster()


def datapaths(bench: BenchCluster) -> dict[str, set[str]]:
    """Which datapaths each node's kernel holds now: iptables chains, socklb hooks."""
    out: dict[str, set[str]] = {}
    for node in bench.cluster.nodes.values():
        held = set()
        nat = bench.lab.run(node.ns, ["iptables-legacy-save", "-t", "nat"]).stdout
        nat6 = bench.lab.run(node.ns, ["ip6tables-legacy-save", "-t", "nat"]).stdout
        if "KUBE-SERVICES" in nat or "KUBE-SVC-" in nat:
            held.add("iptables")
        if "KUBE-SERVICES" in nat6:
            held.add("ip6tables")
        if any(loader.attachments(str(node.pods_cgroup)).values()):
            held.add("socklb")
        if (bench.cluster.bpffs / node.name / "lbc_svc").exists():
            held.add("socklb-maps")
        if ctkeep.installed(node.ns.path, 4) and ctkeep.installed(node.ns.path, 6):
            held.add("conntrack-keeper")
        out[node.name] = held
    return out


def switch_all(bench: BenchCluster, agents, driver: str, count: int) -> None:
    """Rewrite every agent's config to ``driver``; wait until each switched and holds
    the new plan (read back from the kernel)."""
    old = {a: a.proc.output().count("switched the datapath") for a in agents}
    for agent in agents:
        rewrite(agent.config, config_for(bench, agent.node, driver))
    for agent in agents:
        wait_for(f"{agent.name} switched to {driver}",
                 lambda a=agent: a.proc.output().count("switched the datapath") > old[a]
                 and f"to {driver}:" in a.proc.output().rsplit("switched the datapath", 1)[1],
                 timeout=60, proc=agent.proc)
        agent.driver = driver
    wait_healthy(bench.cluster, agents, timeout=30)
    for agent in agents:
        assert scrape(bench, agent)[0] == 200
        _, text = scrape(bench, agent)
        assert metric(text, "lbcore_driver_switches_total") == count
        assert metric(text, "lbcore_driver_info", f'driver="{driver}"') == 1
        # A switch abandoned on a transient fault (the machine-wide xtables lock held
        # by another process) is retried; the old datapath served meanwhile.
        assert metric(text, "lbcore_driver_switch_failures_total") is not None


def test_iptables_to_socklb_and_back_under_load(bench):
    cluster = bench.cluster
    agents = [start_agent(bench, node, "iptables", name="switch")
              for node in cluster.nodes.values()]
    held_socklb = None
    try:
        wait_healthy(cluster, agents, timeout=60)
        assert datapaths(bench) == {n: {"iptables", "ip6tables"} for n in cluster.nodes}
        load = start_load(bench, ew=True, ns=False, close=True, connections=2, connector=True)
        try:
            switch_all(bench, agents, "socklb", 1)
            # conntrack kept on: the connections iptables DNATed still need it
            assert datapaths(bench) == {n: {"socklb", "socklb-maps", "conntrack-keeper"}
                                        for n in cluster.nodes}
            held_socklb = cluster.spawn(bench.client, [
                sys.executable, "-I", "-S", "-c", HELD_CONNECTION,
                bench.services["web"].cluster_ip, "80", "0.02"], name="held-socklb")
            wait_for("a connection under socklb", lambda: '"connected"' in held_socklb.output())
            switch_all(bench, agents, "iptables", 2)
            assert datapaths(bench) == {n: {"iptables", "ip6tables"} for n in cluster.nodes}
        finally:
            results = load.finish()
            if held_socklb is not None:
                held_socklb.stop(timeout=10)
        assert_load_clean(results)
        lines = [ln for ln in held_socklb.output().splitlines() if ln.startswith('{"requests"')]
        assert lines, held_socklb.output()
        assert_load_clean({"held-socklb": json.loads(lines[-1])})
        for agent in agents:
            out = agent.proc.output()
            assert "Traceback" not in out, out
            assert out.index("switching the datapath from iptables to socklb") < out.index(
                "switched the datapath from iptables to socklb")
        took = [ln.rsplit("(", 1)[1].rstrip(")") for a in agents
                for ln in a.proc.output().splitlines() if "switched the datapath" in ln]
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        print(f"switch: {took} per agent and switch, {results}, loadavg {loadavg}")
    finally:
        for agent in agents:
            if agent.proc is not None:
                agent.proc.stop(timeout=5)
        for driver in ("socklb", "iptables"):  # whatever a failure left, of either one
            for agent in agents:
                rewrite(agent.config, config_for(bench, agent.node, driver))
                lbcore_in_node(cluster, agent.node, "cleanup", "-c", str(agent.config))
        stop_agents(cluster, [], cleanup=False)
