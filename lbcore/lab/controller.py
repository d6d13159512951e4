"""The lab's endpoint controller: Services select pods by label; the controller writes
the objects a real cluster would give (``kubectl get svc,endpointslices,nodes -o yaml``)
into one multi-document YAML file that every node's agent follows (``source: file``).

The file is replaced atomically (write, then rename), so an agent never reads half of it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import addressing as addr

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterNode, ClusterPod


@dataclass(frozen=True)
class ServicePortSpec:
    port: int
    target_port: int
    protocol: str = "TCP"
    node_port: int | None = None
    name: str = ""


@dataclass(frozen=True)
class ServiceSpec:
    """A Service as the lab knows it; ClusterIPs are allocated if not given."""

    name: str
    selector: Mapping[str, str]
    ports: tuple[ServicePortSpec, ...]
    type: str = "ClusterIP"
    namespace: str = "default"
    cluster_ips: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def cluster_ip(self) -> str:
        return self.cluster_ips[0]

    @property
    def cluster_ip6(self) -> str | None:
        return next((ip for ip in self.cluster_ips if ":" in ip), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selector"], d["labels"] = dict(self.selector), dict(self.labels)
        return d


def service_doc(svc: ServiceSpec) -> dict[str, Any]:
    families = ["IPv6" if ":" in ip else "IPv4" for ip in svc.cluster_ips]
    ports = []
    for p in svc.ports:
        port: dict[str, Any] = {"name": p.name, "port": p.port, "targetPort": p.target_port,
                                "protocol": p.protocol}
        if p.node_port is not None:
            port["nodePort"] = p.node_port
        ports.append(port)
    spec: dict[str, Any] = {
        "type": svc.type,
        "clusterIP": svc.cluster_ips[0],
        "clusterIPs": list(svc.cluster_ips),
        "ipFamilies": families,
        "ipFamilyPolicy": "PreferDualStack" if len(families) > 1 else "SingleStack",
        "selector": dict(svc.selector),
        "ports": ports,
        "sessionAffinity": "None",
    }
    if svc.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": dict(svc.labels)},
        "spec": spec,
    }


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def endpoint_slice_docs(svc: ServiceSpec, pods: Sequence[ClusterPod]) -> list[dict[str, Any]]:
    """One EndpointSlice per address family, as the endpointslice controller writes."""
    chosen = sorted((p for p in pods if p.namespace == svc.namespace
                     and selects(svc.selector, p.labels)), key=lambda p: p.name)
    docs = []
    for family in ("IPv4", "IPv6"):
        if not any((":" in ip) == (family == "IPv6") for ip in svc.cluster_ips):
            continue
        suffix = hashlib.sha256(f"{svc.namespace}/{svc.name}/{family}".encode()).hexdigest()[:5]
        docs.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{svc.name}-{suffix}",
                "namespace": svc.namespace,
                "labels": {
                    "kubernetes.io/service-name": svc.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": family,
            "ports": [{"name": p.name, "port": p.target_port, "protocol": p.protocol}
                      for p in svc.ports],
            "endpoints": [
                {
                    "addresses": [p.ipv6 if family == "IPv6" else p.ipv4],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": p.node.name,
                    "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
                }
                for p in chosen
            ],
        })
    return docs


def node_doc(node: ClusterNode) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {"podCIDRs": [node.pod_cidr4, node.pod_cidr6]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4},
            {"type": "InternalIP", "address": node.ipv6},
            {"type": "Hostname", "address": node.name},
        ]},
    }


class EndpointController:
    """Holds the cluster's Services; :meth:`write` renders every object to the file."""

    def __init__(self, cluster: Cluster, path: Path | None = None) -> None:
        self.cluster = cluster
        self.path = path or cluster.dir / "objects.yaml"
        self.services: dict[tuple[str, str], ServiceSpec] = {}

    def add_service(self, svc: ServiceSpec, *, dual_stack: bool = True) -> ServiceSpec:
        """Add (or replace) ``svc``, allocating ClusterIPs when it has none; writes."""
        if not svc.cluster_ips:
            taken = {ip for s in self.services.values() for ip in s.cluster_ips}
            v4, v6 = addr.cluster_ips(svc.namespace, svc.name, taken)
            svc = ServiceSpec(**{**svc.__dict__, "cluster_ips": (v4, v6) if dual_stack else (v4,)})
        self.services[(svc.namespace, svc.name)] = svc
        self.write()
        return svc

    def remove_service(self, namespace: str, name: str) -> None:
        self.services.pop((namespace, name), None)
        self.write()

    def documents(self) -> list[dict[str, Any]]:
        pods = list(self.cluster.pods.values())
        docs: list[dict[str, Any]] = []
        for svc in sorted(self.services.values(), key=lambda s: (s.namespace, s.name)):
            docs.append(service_doc(svc))
            docs += endpoint_slice_docs(svc, pods)
        docs += [node_doc(n) for n in self.cluster.nodes.values()]
        return docs

    def write(self) -> Path:
        """Render and atomically replace the objects file (agents pick it up)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(yaml.safe_dump_all(self.documents(), sort_keys=False))
        os.replace(tmp, self.path)
        return self.path
