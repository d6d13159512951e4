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
``N - 3`` idle ClusterIP services (namespace ``idle``, the two backends each): real
objects in the objects file that every agent follows, never sent traffic.

The objects file for each service count is rendered once (two variants: probe -> web-0
and probe -> web-1) and swapped in atomically, so a change costs the agents exactly what
a real change of the file source costs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..lab import NetLab
from ..lab.agents import Agent, lbcore_argv, lbcore_in_node, stop_agents, write_config
from ..lab.cluster import Cluster, ClusterPod
from ..lab.controller import ServicePortSpec, ServiceSpec, endpoint_slice_docs, service_doc
from ..lab.netns import Netns
from .drivers import AGENT_OPTIONS

OUTSIDE_IP = "172.18.0.250"
WEB_NODE_PORT, PERF_NODE_PORT, PROBE_NODE_PORT = 30080, 30201, 30090
IPERF_PORT = 5201
HARNESS_SERVICES = 3  # web, perf, probe
# kube-proxy's full resync period (its partial syncs follow changes in between): no
# periodic full sync of 30,000 services lands in the middle of a measurement.
RUNNER = {"min_sync_period": 0, "sync_period": 3600}


def idle_ips(count: int, taken: Collection[str] = ()) -> list[str]:
    """ClusterIPs of ``count`` idle services: 10.96.128.0 upwards (10.97.x.y beyond
    32,768), skipping ``taken`` (the harness services' addresses, which the lab
    allocates anywhere in 10.96.0.0/16)."""
    out: list[str] = []
    n = 32768
    while len(out) < count:
        ip = f"10.{96 + n // 65536}.{(n // 256) % 256}.{n % 256}"
        if ip not in taken:
            out.append(ip)
        n += 1
    return out


@dataclass
class BenchCluster:
    lab: NetLab
    cluster: Cluster
    client: ClusterPod
    outside: Netns
    backends: list[ClusterPod]
    services: dict[str, ServiceSpec]
    files: dict[tuple[int, str], Path] = field(default_factory=dict)
    documents: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # probe -> web-0
    idle: dict[int, list[str]] = field(default_factory=dict)  # count -> idle ClusterIPs
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
            # The xtables lock and the kernel's table mutex are machine-wide: another
            # namespace's big restore can hold them for seconds.
            node.ns.run(["iptables-legacy", "-w", "60", "-t", "nat", "-L", "-n"],
                        check=True, timeout=90)
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
        """Pre-render the objects file for ``count`` services, both probe variants.

        The idle services are dumped once (libyaml); the variants differ only in the
        harness's documents at the top of the file."""
        # The idle services select the two backends; their slices name them as pods
        # of namespace idle, as the endpointslice controller would for pods there.
        pods = [dataclasses.replace(p, namespace="idle") for p in self.backends]
        taken = {ip for svc in self.services.values() for ip in svc.cluster_ips}
        self.idle[count] = idle_ips(max(0, count - HARNESS_SERVICES), taken)
        idle = []
        for i, ip in enumerate(self.idle[count]):
            svc = ServiceSpec(f"idle-{i}", {"app": "web"}, (ServicePortSpec(80, 80),),
                              namespace="idle", cluster_ips=(ip,))
            idle += [service_doc(svc), *endpoint_slice_docs(svc, pods)]
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        idle_text = yaml.dump_all(idle, Dumper=dumper, sort_keys=False) if idle else ""
        nodes = len(self.cluster.nodes)
        for variant in ("web-0", "web-1"):
            self.set_probe(variant)
            docs = self.cluster.controller.documents()
            head = yaml.dump_all(docs[:-nodes], Dumper=dumper, sort_keys=False)
            tail = yaml.dump_all(docs[-nodes:], Dumper=dumper, sort_keys=False)
            path = self.cluster.dir / f"objects-{count}-{variant}.yaml"
            with open(path, "w") as f:
                f.write(head + "---\n")
                if idle_text:
                    f.write(idle_text + "---\n")
                f.write(tail)
            self.files[(count, variant)] = path
            if variant == "web-0":
                self.documents[count] = docs[:-nodes] + idle + docs[-nodes:]
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

    def configure(self, driver: str) -> list[Agent]:
        """One agent of ``driver`` per node, its ``lbcore.yaml`` written, not started."""
        fn = AGENT_OPTIONS.get(driver)
        agents = []
        for node in self.cluster.nodes.values():
            config = write_config(self.cluster, node, driver,
                                  fn(self.cluster, node) if fn else None)
            data = yaml.safe_load(config.read_text())
            config.write_text(yaml.safe_dump({**data, "runner": RUNNER}, sort_keys=False))
            agents.append(Agent(node, driver, config))
        return agents

    def launch(self, agents: list[Agent]) -> None:
        """``lbcore -v run`` of each agent in its node, on the objects file as it is
        (not waiting: :mod:`.control` observes when they have programmed it)."""
        for agent in agents:
            agent.proc = self.cluster.lab.spawn(
                agent.node.ns, [*lbcore_argv(), "-v", "run", "-c", str(agent.config)],
                cgroup=agent.node.agent_cgroup, name=agent.name)
            self.cluster.agents.append(agent)
            self.agents.append(agent)

    def stop(self) -> list[str]:
        """SIGTERM the agents, then ``lbcore cleanup`` each node's datapath; problems
        that remain after retries are returned."""
        agents, self.agents = self.agents, []
        if not agents:
            return []
        stop_agents(self.cluster, agents, cleanup=False)
        with ThreadPoolExecutor(len(agents)) as pool:
            return [p for p in pool.map(self._cleanup, agents) if p]

    def _cleanup(self, agent: Agent, attempts: int = 4) -> str | None:
        """Retried: iptables-legacy takes /run/xtables.lock, which every iptables user
        on the machine shares (other namespaces' too), for 5 s at most per try."""
        for attempt in range(attempts):
            r = lbcore_in_node(self.cluster, agent.node, "cleanup", "-c", str(agent.config),
                               timeout=300)
            if r.returncode == 0:
                return None
            time.sleep(2.0 * (attempt + 1))
        return f"cleanup {agent.name}: {r.stderr.strip()}"

    def reset_transport_state(self) -> None:
        """Forget the connections of the previous path before the next one is measured.

        Paths reach the same backends by different destination addresses (pod IP,
        ClusterIP, NodePort). Linux gives every (source, destination) pair its own TCP
        timestamp offset, so a backend still holding TIME_WAITs from one path refuses by
        PAWS a SYN of the next that reuses a 4-tuple (``TcpExtPAWSTimewait``), and the
        client waits a 1 s SYN retransmission: the path measured second pays for the
        first (the iptables driver's east-west connection rate fell to 0.02x direct
        this way, docs/iptables.md). So: TIME_WAITs destroyed in the backends and the
        client (``ss -K``), the conntrack tables of the lab's nodes flushed. Only lab
        namespaces are touched."""
        for pod in (*self.backends, self.client):
            pod.ns.run(["ss", "-K", "state", "time-wait"], check=True)
        for node in self.cluster.nodes.values():
            node.ns.run(["conntrack", "-F"], check=False)  # exit 1 when already empty

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
