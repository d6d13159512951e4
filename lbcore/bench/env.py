"""The benchmark's cluster: two nodes, two nginx backends, a client pod, an outside
client, the measured Services, idle Services, and driver agents switched on and off.

::

    outside (172.18.0.250, on the node bridge) ──▶ control-plane:NodePort ─┐
    client pod (on control-plane) ──▶ ClusterIP ─────────────────────────┼──▶ web-0, web-1
                                                                          │   (nginx + iperf3,
    direct baseline: both clients ──▶ web-0/web-1 pod IPs (routed) ───────┘    on worker)

Services: ``web`` (NodePort 80:30080 -> both backends), ``perf`` (iperf3, 5201:30201 ->
web-0 only: iperf3's control and data connections must reach the same server),
``probe`` (80:30090 -> web-0 *or* web-1: the control-plane measurement flips it) and
``N - 3`` idle ClusterIP services (namespace ``idle``, 2 endpoints each): real objects in
the objects file that every agent follows, never sent traffic.

The objects file for each service count is rendered once (two variants: probe -> web-0
and probe -> web-1) and swapped in atomically, so a change costs the agents exactly what
a real change of the file source costs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..lab import NetLab
from ..lab.agents import Agent, services_json, start_agents, stop_agents, wait_healthy
from ..lab.cluster import Cluster, ClusterPod
from ..lab.controller import ServicePortSpec, ServiceSpec, endpoint_slice_docs, service_doc
from ..lab.netns import Netns
from . import tools

OUTSIDE_IP = "172.18.0.250"
WEB_NODE_PORT, PERF_NODE_PORT, PROBE_NODE_PORT = 30080, 30201, 30090
IPERF_PORT = 5201
HARNESS_SERVICES = 3  # web, perf, probe

# Which traffic a driver can carry. East-west: a pod's connect() to a ClusterIP.
# North-south: a client outside the cluster to nodeIP:NodePort.
SUPPORT: dict[str, dict[str, str | None]] = {
    "socklb": {"ew": None, "ns": "socket LB translates connect() of processes in the "
                                 "attached cgroups; an outside client has no such socket"},
    "iptables": {"ew": None, "ns": None},
    "tcnodeport": {"ew": "north-south only (ClusterIP is not in its capabilities)",
                   "ns": None},
}


def not_supported(driver: str, direction: str) -> str | None:
    """None if ``driver`` carries ``direction`` traffic (ew|ns), else why not."""
    return SUPPORT.get(driver, {}).get(direction)


def tcnodeport_options(cluster: Cluster, node: Any) -> dict[str, Any]:
    return {"devices": ["eth0"], "bpffs_path": str(cluster.bpffs / f"{node.name}-tc"),
            "mode": "snat"}


AGENT_OPTIONS = {"tcnodeport": tcnodeport_options}


def idle_ip(i: int) -> str:
    """Idle service ``i``'s ClusterIP: 10.96.128.0 upwards (the harness's three are
    allocated first and skipped)."""
    n = 32768 + i
    return f"10.96.{n // 256}.{n % 256}"


@dataclass
class BenchCluster:
    lab: NetLab
    cluster: Cluster
    client: ClusterPod
    outside: Netns
    backends: list[ClusterPod]
    services: dict[str, ServiceSpec]
    files: dict[tuple[int, str], Path] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)

    @property
    def entry_ip(self) -> str:
        """The node the north-south client enters by (control-plane)."""
        return self.client.node.ipv4

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, lab: NetLab, nginx_workers: int = 1) -> BenchCluster:
        cluster = Cluster.create(lab, 2)  # control-plane, worker
        for node in cluster.nodes.values():
            # Netfilter as on any real node, for every path alike: the legacy nat table
            # (and so conntrack) exists from the start, not only once iptables has run.
            node.ns.run(["iptables-legacy", "-t", "nat", "-L", "-n"], check=True)
        backends = []
        for i in range(2):
            pod = cluster.add_pod(f"web-{i}", "worker", {"app": "web", "bk": f"web-{i}"})
            lab.nginx(pod.ns, pod.name, 80, cgroup=pod.cgroup, workers=nginx_workers)
            cluster.spawn(pod, ["iperf3", "-s", "-p", str(IPERF_PORT)],
                          name=f"iperf3-{pod.name}")
            backends.append(pod)
        client = cluster.add_pod("client", "control-plane", {"run": "client"})
        outside = lab.netns("outside")
        lab.plug(outside, "eth0", cluster.switch, cluster.bridge)
        outside.add_addr("eth0", f"{OUTSIDE_IP}/16")
        for node in cluster.nodes.values():  # direct baseline: pod CIDRs routed via nodes
            outside.add_route(node.pod_cidr4, via=node.ipv4)
        ctl = cluster.controller
        services = {
            "web": ctl.add_service(ServiceSpec("web", {"app": "web"}, (
                ServicePortSpec(80, 80, node_port=WEB_NODE_PORT),), type="NodePort"),
                dual_stack=False),
            "perf": ctl.add_service(ServiceSpec("perf", {"bk": "web-0"}, (
                ServicePortSpec(IPERF_PORT, IPERF_PORT, node_port=PERF_NODE_PORT),),
                type="NodePort"), dual_stack=False),
        }
        bench = cls(lab, cluster, client, outside, backends, services)
        bench.set_probe("web-0")
        for b in backends:
            lab.wait_listening(b.procs[-1], IPERF_PORT, "tcp")
        return bench

    def set_probe(self, backend: str) -> ServiceSpec:
        """The probe Service selects ``backend`` (its ClusterIP is kept)."""
        old = self.services.get("probe")
        svc = self.cluster.controller.add_service(ServiceSpec("probe", {"bk": backend}, (
            ServicePortSpec(80, 80, node_port=PROBE_NODE_PORT),), type="NodePort",
            cluster_ips=old.cluster_ips if old else ()), dual_stack=False)
        self.services["probe"] = svc
        return svc

    # ------------------------------------------------------------ objects files

    def render(self, count: int) -> None:
        """Pre-render the objects file for ``count`` services, both probe variants."""
        pods = list(self.cluster.pods.values())
        idle = []
        for i in range(max(0, count - HARNESS_SERVICES)):
            svc = ServiceSpec(f"idle-{i}", {"app": "web"}, (ServicePortSpec(80, 80),),
                              namespace="idle", cluster_ips=(idle_ip(i),))
            idle += [service_doc(svc), *endpoint_slice_docs(svc, pods)]
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        for variant in ("web-0", "web-1"):
            self.set_probe(variant)
            docs = self.cluster.controller.documents()
            text = yaml.dump_all(docs[:-len(self.cluster.nodes)] + idle
                                 + docs[-len(self.cluster.nodes):], Dumper=dumper,
                                 sort_keys=False)
            path = self.cluster.dir / f"objects-{count}-{variant}.yaml"
            path.write_text(text)
            self.files[(count, variant)] = path
        self.set_probe("web-0")

    def install(self, count: int, variant: str) -> float:
        """Swap in a pre-rendered objects file; returns ``time.monotonic()`` just before."""
        target = self.cluster.controller.path
        tmp = target.with_name(f".{target.name}.bench")
        tmp.write_bytes(self.files[(count, variant)].read_bytes())
        t0 = time.monotonic()
        os.replace(tmp, target)
        return t0

    # ------------------------------------------------------------ driver agents

    def start(self, driver: str, timeout: float) -> list[Agent]:
        self.agents = start_agents(self.cluster, [driver], options=AGENT_OPTIONS,
                                   timeout=timeout)
        return self.agents

    def stop(self) -> list[str]:
        problems = stop_agents(self.cluster, self.agents, cleanup=True) if self.agents else []
        self.agents = []
        return problems

    def wait_programmed(self, timeout: float) -> int:
        """Until every agent holds its plan (read back from the kernel); frontends held
        on the client's node."""
        wait_healthy(self.cluster, self.agents, timeout)
        mine = [a for a in self.agents if a.node is self.client.node]
        return len(services_json(self.cluster, mine[0])) if mine else 0

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for agent in self.agents:
            pid = agent.proc.pid if agent.proc else None
            try:
                with open(f"/proc/{pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                out[agent.node.name] = kb / 1024
            except (OSError, StopIteration, TypeError):
                continue
        return out

    def time_change(self, driver: str, count: int, variant: str, timeout: float) -> float:
        """Swap in ``(count, variant)``; seconds until the probe Service answers from
        ``variant``, seen by a client of this driver's traffic (kernel behaviour)."""
        if not_supported(driver, "ew") is None:
            host, port, where = self.services["probe"].cluster_ip, 80, self.client
        else:
            host, port, where = self.entry_ip, PROBE_NODE_PORT, None
        cmd = [sys.executable, "-I", "-S", "-c", tools.PROBER, host, str(port), variant,
               str(timeout)]
        proc = (self.cluster.spawn(where, cmd, name="prober") if where is not None
                else self.lab.spawn(self.outside, cmd, name="prober"))
        try:
            deadline = time.monotonic() + 10
            while "first" not in proc.output() and proc.alive():
                if time.monotonic() > deadline:
                    raise RuntimeError("prober got no answer from the probe service")
                time.sleep(0.01)
            t0 = self.install(count, variant)
            proc.popen.wait(timeout + 5)
            seen = tools.prober_seen(proc.output())
            if seen is None:
                raise RuntimeError(f"probe never answered from {variant} within {timeout}s")
            return seen - t0
        finally:
            proc.stop()
