"""A NodePort lab on :mod:`lbcore.lab` primitives: nodes on a node network, pods routed
natively behind them, and an *outside* client on the node network (not in the cluster).

::

    switch ns: br0 ── eth0 of node i (172.18.0.(i+2)/16, fc00:f853:ccd:e793::(i+2)/64)
                   ── eth0 of "outside" (172.18.0.200, fc00:f853:ccd:e793::c8)
    node i:   forwarding on (both families), 10.0.j.0/24 and fd00:10:0:j::/64 via node j,
              lxc<k> ── pod (10.0.i.(10+k)/32 and fd00:10:0:i::(10+k)/128, default via
              10.0.i.1, the node's router address on a veth end, and fe80::1 on lxc<k>)

For the integration tests, the demo and the benchmark. Every driver of a node runs
with ``netns`` set to that node's namespace and its own bpffs directory, so nothing
is ever attached outside the lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lbcore.lab import NetLab, Netns
from lbcore.lab import addressing as addr
from lbcore.model import (
    Backend,
    DesiredState,
    Frontend,
    FrontendAddress,
    FrontendType,
    NodeInfo,
    ServiceKey,
)

CLIENT_IP = "172.18.0.200"
CLIENT_IP6 = "fc00:f853:ccd:e793::c8"


@dataclass(eq=False)
class LabNode:
    name: str
    index: int
    ns: Netns
    ip: str
    bpffs: Path
    pods: list[LabPod] = field(default_factory=list)
    ip6: str | None = None

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(self.name, (self.ip, self.ip6) if self.ip6 else (self.ip,))

    def address(self, family: int) -> str:
        return self.ip6 if family == 6 and self.ip6 else self.ip


@dataclass(eq=False)
class LabPod:
    name: str
    node: LabNode
    ns: Netns
    ip: str
    ip6: str | None = None

    def address(self, family: int) -> str:
        return self.ip6 if family == 6 and self.ip6 else self.ip


@dataclass(eq=False)
class NodePortLab:
    lab: NetLab
    switch: Netns
    nodes: list[LabNode]
    client: Netns
    client_ip: str = CLIENT_IP
    client_ip6: str = CLIENT_IP6

    def pods(self) -> list[LabPod]:
        return [p for n in self.nodes for p in n.pods]

    def driver_options(self, node: LabNode, **extra) -> dict:
        return {"devices": ["eth0"], "bpffs_path": str(node.bpffs), "netns": node.ns.name,
                **extra}


def build_nodeport_lab(lab: NetLab, nodes: int = 2, pods_per_node: int = 1) -> NodePortLab:
    switch = lab.netns("sw")
    bridge = lab.bridge(switch)
    bpffs = lab.bpffs("lbn-bpffs")
    built = []
    for i in range(nodes):
        name = f"node{i}"
        ns = lab.netns(name)
        lab.plug(ns, "eth0", switch, bridge)
        node = LabNode(name, i, ns, addr.node_ipv4(i), bpffs / name, ip6=addr.node_ipv6(i))
        node.bpffs.mkdir()
        ns.add_addr("eth0", f"{node.ip}/16")
        ns.add_addr("eth0", f"{node.ip6}/64")
        ns.ip("link", "add", "lbrouter", "type", "veth", "peer", "name", "lbrouter-peer")
        ns.link_up("lbrouter")
        ns.link_up("lbrouter-peer")
        ns.add_addr("lbrouter", f"{addr.router_ipv4(i)}/32")
        ns.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                     "net.ipv4.conf.default.rp_filter": 0, "net.ipv6.conf.all.forwarding": 1})
        built.append(node)
    for node in built:
        for other in built:
            if other is not node:
                node.ns.add_route(addr.pod_cidrs(other.index)[0], via=other.ip)
                node.ns.add_route(addr.pod_cidrs(other.index)[1], via=other.ip6)
        for k in range(pods_per_node):
            _add_pod(lab, node, k)
    client = lab.netns("outside")
    lab.plug(client, "eth0", switch, bridge)
    client.add_addr("eth0", f"{CLIENT_IP}/16")
    client.add_addr("eth0", f"{CLIENT_IP6}/64")
    return NodePortLab(lab, switch, built, client)


def _add_pod(lab: NetLab, node: LabNode, k: int) -> LabPod:
    name = f"pod{node.index}-{k}"
    ip, ip6 = f"10.0.{node.index}.{10 + k}", f"fd00:10:0:{node.index:x}::{10 + k:x}"
    ns = lab.netns(name)
    host_if = f"lxc{node.index}x{k}"
    lab.veth(ns, "eth0", node.ns, host_if)
    ns.add_addr("eth0", f"{ip}/32")
    ns.add_addr("eth0", f"{ip6}/128")
    ns.add_route(addr.router_ipv4(node.index), dev="eth0")
    ns.add_route("default", via=addr.router_ipv4(node.index), dev="eth0")
    node.ns.add_addr(host_if, f"{addr.ROUTER6}/64")
    ns.add_route("default", via=addr.ROUTER6, dev="eth0")
    node.ns.add_route(f"{ip}/32", dev=host_if)
    node.ns.add_route(f"{ip6}/128", dev=host_if)
    pod = LabPod(name, node, ns, ip, ip6)
    node.pods.append(pod)
    return pod


def frontend(ip: str, port: int, backends: list[tuple[LabPod, int]], *, protocol: str = "TCP",
             name: str = "web", type: FrontendType = FrontendType.NODE_PORT,
             etp_local_node: str | None = None, source_ranges: tuple[str, ...] = (),
             algorithm: str | None = None) -> Frontend:
    """A frontend as the core would expand it (eTP Local: only ``etp_local_node``'s pods);
    the backends are the pods' addresses of the frontend's family."""
    family = 6 if ":" in ip else 4
    bes = tuple(Backend(p.address(family), bport, node_name=p.node.name)
                for p, bport in backends)
    external = bes if etp_local_node is None else tuple(
        b for b in bes if b.node_name == etp_local_node)
    return Frontend(ServiceKey("default", name), "http", type,
                    FrontendAddress(ip, port, protocol), bes, external,
                    source_ranges=source_ranges, external_traffic_local=etp_local_node is not None,
                    annotations={"lbcore.io/lb-algorithm": algorithm} if algorithm else {})


def state(node: LabNode, frontends: list[Frontend]) -> DesiredState:
    return DesiredState(node.info, tuple(frontends))
