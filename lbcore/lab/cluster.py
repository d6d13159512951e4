"""A multi-node "cluster" in network namespaces, shaped like the walkthrough's kind
cluster: nodes on a shared bridge, pods behind their node with native routing.

::

    switch ns (sw): br0 ── eth0 of each node (172.18.0.N+2/16, fc00:f853:ccd:e793::N+2/64)
    node ns:  eth0, cilium_host (10.0.N.1/32), routes 10.0.M.0/24 via node M (no tunnel),
              lxc<hash> per pod with a /32 (and /128) route to it, forwarding on
    pod ns:   eth0 10.0.N.x/32 + fd00:10:0:N::x/128, default via 10.0.N.1 / fe80::1

Cgroups (v2) under the lab's ``lbt-<id>/``: ``<node>/pods/<pod>`` for each pod's
processes, so a socket-LB agent attached to ``<node>/pods`` sees exactly its node's
pods; ``<node>/agent`` for the node's agents (not load-balanced themselves).

Services and their endpoints are kept by :mod:`.controller`; agents by :mod:`.agents`.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import addressing as addr
from .netns import NetLab, Netns
from .procs import Proc

POD_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generated-name alphabet


def generated_name(base: str) -> str:
    """``cni-x7k2p``: a pod name as a DaemonSet controller would generate it."""
    return f"{base}-" + "".join(secrets.choice(POD_NAME_CHARS) for _ in range(5))


@dataclass(eq=False)
class ClusterNode:
    name: str
    index: int
    ns: Netns
    ipv4: str
    ipv6: str
    pod_cidr4: str
    pod_cidr6: str
    router4: str
    pods_cgroup: Path  # socklb attaches here
    agent_cgroup: Path
    pod_count: int = 0

    @property
    def addresses(self) -> tuple[str, str]:
        return (self.ipv4, self.ipv6)

    @property
    def roles(self) -> str:
        return "control-plane" if self.name == "control-plane" else "<none>"


@dataclass(eq=False)
class ClusterPod:
    name: str
    node: ClusterNode
    ns: Netns
    ipv4: str
    ipv6: str
    host_if: str  # the node side of the pod's veth
    cgroup: Path
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "default"
    ifname: str = "eth0"
    procs: list[Proc] = field(default_factory=list)

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ipv4, self.ipv6)


class Cluster:
    """Nodes and pods of one :class:`NetLab`. Build with :meth:`create`."""

    def __init__(self, lab: NetLab, switch: Netns, bridge: str) -> None:
        self.lab = lab
        self.switch = switch
        self.bridge = bridge
        self.nodes: dict[str, ClusterNode] = {}
        self.pods: dict[str, ClusterPod] = {}
        self.dir = lab.run_dir / "cluster"
        self.dir.mkdir(exist_ok=True)
        self.bpffs = lab.bpffs()
        from .controller import EndpointController  # a cycle at import time otherwise

        self.controller = EndpointController(self)
        self.agents: list[Any] = []  # agents.Agent, started by agents.start_agents

    # ----------------------------------------------------------------- building

    @classmethod
    def create(cls, lab: NetLab, nodes: int | Sequence[str] = 3) -> Cluster:
        """``nodes`` nodes (or these names) on one bridge, pod CIDRs routed natively."""
        names = addr.node_names(nodes) if isinstance(nodes, int) else list(nodes)
        switch = lab.netns("sw")
        cluster = cls(lab, switch, lab.bridge(switch))
        for i, name in enumerate(names):
            cluster._add_node(name, i)
        for node in cluster.nodes.values():
            for other in cluster.nodes.values():
                if other is not node:
                    node.ns.add_route(other.pod_cidr4, via=other.ipv4)
                    node.ns.add_route(other.pod_cidr6, via=other.ipv6)
            # Service CIDRs are routable out of a node, as through a kind node's default
            # route: a packet to a ClusterIP with no endpoints reaches FORWARD, where a
            # per-packet datapath rejects it (without the route, routing fails first).
            node.ns.add_route(addr.SERVICE_NET4, dev="eth0")
            node.ns.add_route(addr.SERVICE_NET6, dev="eth0")
        return cluster

    def _add_node(self, name: str, index: int) -> ClusterNode:
        if name in ("default", "sw") or name in self.nodes:
            raise ValueError(f"bad or duplicate node name {name!r}")
        ns = self.lab.netns(name)
        cidr4, cidr6 = addr.pod_cidrs(index)
        node = ClusterNode(
            name, index, ns, addr.node_ipv4(index), addr.node_ipv6(index), cidr4, cidr6,
            addr.router_ipv4(index), self.lab.cgroup(f"{name}/pods"),
            self.lab.cgroup(f"{name}/agent"),
        )
        self.lab.plug(ns, "eth0", self.switch, self.bridge)
        ns.add_addr("eth0", f"{node.ipv4}/16")
        ns.add_addr("eth0", f"{node.ipv6}/64")
        # Cilium's router address lives on cilium_host (a veth pair with cilium_net).
        ns.ip("link", "add", "cilium_host", "type", "veth", "peer", "name", "cilium_net")
        ns.link_up("cilium_host")
        ns.link_up("cilium_net")
        ns.add_addr("cilium_host", f"{node.router4}/32")
        ns.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        self.nodes[name] = node
        return node

    def add_pod(
        self, name: str, node: str | ClusterNode, labels: Mapping[str, str] | None = None
    ) -> ClusterPod:
        """A pod on ``node``: its own namespace, a veth to the node, /32 and /128 routes."""
        node = self.nodes[node] if isinstance(node, str) else node
        if name in self.pods or name in self.nodes or name in ("default", "sw"):
            raise ValueError(f"pod name {name!r} is taken")
        ipv4, ipv6 = addr.pod_ips(node.index, node.pod_count)
        node.pod_count += 1
        ns = self.lab.netns(name)
        host_if = "lxc" + hashlib.sha1(f"{self.lab.id}/{name}".encode()).hexdigest()[:8]
        pod = ClusterPod(
            name, node, ns, ipv4, ipv6, host_if,
            self.lab.cgroup(f"{node.name}/pods/{name}"), dict(labels or {}),
        )
        self.lab.veth(ns, pod.ifname, node.ns, host_if)
        ns.add_addr(pod.ifname, f"{ipv4}/32")
        ns.add_addr(pod.ifname, f"{ipv6}/128")
        ns.add_route(node.router4, dev=pod.ifname)
        ns.add_route("default", via=node.router4, dev=pod.ifname)
        ns.ip("-6", "route", "add", "default", "via", addr.ROUTER6, "dev", pod.ifname)
        node.ns.add_addr(host_if, f"{addr.ROUTER6}/64")
        node.ns.add_route(f"{ipv4}/32", dev=host_if)
        node.ns.add_route(f"{ipv6}/128", dev=host_if)
        self.pods[name] = pod
        return pod

    # ------------------------------------------------------------ running things

    def pod(self, name: str) -> ClusterPod:
        return self.pods[name]

    def node(self, name: str) -> ClusterNode:
        return self.nodes[name]

    def run(self, pod: str | ClusterPod, cmd: Sequence[str],
            **kw) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in a pod (its namespace and cgroup) to completion."""
        pod = self.pods[pod] if isinstance(pod, str) else pod
        kw.setdefault("cgroup", pod.cgroup)
        return self.lab.run(pod.ns, cmd, **kw)

    def spawn(self, pod: str | ClusterPod, cmd: Sequence[str], **kw) -> Proc:
        pod = self.pods[pod] if isinstance(pod, str) else pod
        kw.setdefault("cgroup", pod.cgroup)
        proc = self.lab.spawn(pod.ns, cmd, **kw)
        pod.procs.append(proc)
        return proc

    def curl(self, pod: str | ClusterPod, url: str, **kw) -> subprocess.CompletedProcess[str]:
        pod = self.pods[pod] if isinstance(pod, str) else pod
        kw.setdefault("cgroup", pod.cgroup)
        return self.lab.curl(pod.ns, url, **kw)

    def http_server(self, pod: str | ClusterPod, body: str, port: int = 80, *,
                    wait: bool = True) -> Proc:
        """The lab's dual-stack HTTP server in ``pod``, answering ``body`` to ``GET /``."""
        pod = self.pods[pod] if isinstance(pod, str) else pod
        proc = self.lab.http_server(pod.ns, pod.name, port, cgroup=pod.cgroup, wait=wait,
                                    body=body)
        pod.procs.append(proc)
        return proc

    # ---------------------------------------------------------------- persisting

    def to_dict(self) -> dict[str, Any]:
        """What ``lbcore lab status|exec|down`` need from another process."""
        return {
            "lab_id": self.lab.id,
            "run_dir": str(self.lab.run_dir),
            "cgroup_root": str(self.lab.cgroup_root),
            "bpffs": str(self.bpffs),
            "switch": self.switch.name,
            "nodes": [
                {
                    "name": n.name, "netns": n.ns.name, "ipv4": n.ipv4, "ipv6": n.ipv6,
                    "pod_cidrs": [n.pod_cidr4, n.pod_cidr6], "roles": n.roles,
                    "pods_cgroup": str(n.pods_cgroup), "agent_cgroup": str(n.agent_cgroup),
                }
                for n in self.nodes.values()
            ],
            "pods": [
                {
                    "name": p.name, "namespace": p.namespace, "node": p.node.name,
                    "netns": p.ns.name, "ipv4": p.ipv4, "ipv6": p.ipv6,
                    "labels": p.labels, "cgroup": str(p.cgroup),
                    "pids": [pr.pid for pr in p.procs if pr.alive()],
                }
                for p in self.pods.values()
            ],
            "services": [s.to_dict() for s in self.controller.services.values()],
            "objects": str(self.controller.path),
            "agents": [a.to_dict() for a in self.agents],
        }
