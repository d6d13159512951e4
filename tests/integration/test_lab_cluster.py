"""The namespace cluster (lbcore.lab.cluster): native routing between nodes, per-node
cgroups, one agent per node, and nothing left behind by close(), `lab down`, or a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbcore.lab import CGROUP2_ROOT, NETNS_DIR, RUN_ROOT, NetLab, lab_ids
from lbcore.lab.agents import services_json, start_agents
from lbcore.lab.cluster import Cluster
from lbcore.lab.workload import NODE_PORT, deploy_walkthrough

pytestmark = pytest.mark.netns
LBCORE = [sys.executable, "-c", "import sys; from lbcore.cli import main; main(sys.argv[1:])"]


def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, cgroups, eBPF)")


def _leftovers(lab_id: str, pids: list[int]) -> list[str]:
    prefix = f"lbt-{lab_id}"
    found = [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(prefix + "-")]
    found += [f"{d}" for d in (CGROUP2_ROOT / prefix, RUN_ROOT / prefix) if d.exists()]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {ln.split()[4]}" for ln in f if f"/{prefix}/" in ln.split()[4]]
    found += [f"pid {p}" for p in pids if Path(f"/proc/{p}").exists()
              and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
    return found


def test_cluster_routes_agents_and_teardown():
    _root()
    lab = NetLab()
    try:
        cluster = Cluster.create(lab, 3)
        w = deploy_walkthrough(cluster)
        assert [n.name for n in cluster.nodes.values()] == ["control-plane", "worker", "worker2"]
        # pods on different nodes reach each other, IPv4 and IPv6, by pod IP (native routing)
        far = next(p for p in w.servers if p.node is not w.client.node)
        assert far.node.name == "worker2" and w.client.node.name == "worker"
        for ip in (far.ipv4, f"[{far.ipv6}]"):
            r = cluster.curl(w.client, f"http://{ip}/")
            assert r.returncode == 0 and f"PodName: {far.name}" in r.stdout, r.stderr
        # the server saw net's own address: no NAT between nodes
        r = cluster.curl(w.client, f"http://{far.ipv4}/whoami")
        assert json.loads(r.stdout)["client_ip"] == w.client.ipv4
        # each pod's processes are in its node's cgroup
        proc = w.servers[0].procs[0]
        cg = Path(f"/proc/{proc.pid}/cgroup").read_text()
        assert f"lbt-{lab.id}/{w.servers[0].node.name}/pods/{w.servers[0].name}" in cg

        agents = start_agents(cluster, ["socklb"])
        assert len(agents) == 3 and all(a.proc.alive() for a in agents)
        held = {(s["frontend"]["ip"], s["frontend"]["port"])
                for s in services_json(cluster, agents[1])}
        assert (w.service.cluster_ip, 80) in held and ("172.18.0.3", NODE_PORT) in held
        pins = list((cluster.bpffs / "worker").iterdir())
        assert pins, "socklb pinned no maps"
        r = cluster.curl(w.client, f"http://{w.service.cluster_ip}/")
        assert r.returncode == 0 and "PodName: cni-" in r.stdout
        pids = [a.proc.pid for a in agents] + [p.procs[0].pid for p in w.servers]
    finally:
        lab.close()
    assert _leftovers(lab.id, pids) == []
    assert lab.id not in lab_ids()


def _lbcore(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LBCORE, *args], capture_output=True, text=True, timeout=timeout)


def test_lab_cli_up_exec_status_down():
    _root()
    if any((RUN_ROOT / f"lbt-{i}" / "cluster.json").exists() for i in lab_ids()):
        pytest.skip("a lab is up on this machine already")
    up = _lbcore("lab", "up", "--nodes", "2", "--no-agents")
    lab_id = None
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        lab_id = up.stdout.split()[1]
        state = json.loads((RUN_ROOT / f"lbt-{lab_id}" / "cluster.json").read_text())
        server = next(p for p in state["pods"] if p["name"].startswith("cni-"))
        # from another process: exec in net (its netns and cgroup), status
        r = _lbcore("lab", "exec", "net", "--", "curl", "-s", "--max-time", "3",
                    f"http://{server['ipv4']}/")
        assert r.returncode == 0 and f"PodName: {server['name']}" in r.stdout, r.stderr
        r = _lbcore("lab", "exec", "net", "--", "cat", "/proc/self/cgroup")
        assert f"lbt-{lab_id}/worker/pods/net" in r.stdout
        r = _lbcore("lab", "exec", "net", "--", "false")
        assert r.returncode == 1
        st = _lbcore("lab", "status")
        assert st.returncode == 0 and "serversvc" in st.stdout and "worker" in st.stdout
        # a kept lab survives the sweep that test sessions do
        from lbcore.lab import sweep_leftovers
        assert lab_id not in sweep_leftovers()
    finally:
        down = _lbcore("lab", "down", *(["--id", lab_id] if lab_id else []))
    assert down.returncode == 0, down.stderr
    assert lab_id is None or _leftovers(lab_id, []) == []


_KILLED = """
import os, sys, time
from lbcore.lab import NetLab
from lbcore.lab.cluster import Cluster
from lbcore.lab.workload import deploy_walkthrough
lab = NetLab()
deploy_walkthrough(Cluster.create(lab, 2))
print(lab.id, flush=True)
time.sleep(60)
"""


def test_lab_down_removes_leftovers_of_a_killed_run():
    _root()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED], stdout=subprocess.PIPE, text=True)
    try:
        lab_id = proc.stdout.readline().strip()
        assert lab_id in lab_ids()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.1)
    assert lab_id in lab_ids()  # killed: nothing cleaned up yet (servers still running)
    down = _lbcore("lab", "down")
    assert down.returncode == 0 and lab_id in down.stdout, down.stderr + down.stdout
    assert _leftovers(lab_id, []) == []
