"""The walkthrough's resources: a DaemonSet-like ``cni`` pod on each worker answering
``PodName: cni-xxxxx | PodIP: eth0 10.0.1.145/32``, the NodePort Service ``serversvc``
(port 80 -> targetPort 80, nodePort 32000) selecting them, and a client pod ``net``."""

from __future__ import annotations

from dataclasses import dataclass

from .cluster import Cluster, ClusterPod, generated_name
from .controller import ServicePortSpec, ServiceSpec

SERVICE = "serversvc"
PORT = 80
NODE_PORT = 32000
SERVER_LABELS = {"app": "cni"}
CLIENT = "net"


def pod_body(pod: ClusterPod) -> str:
    return f"PodName: {pod.name} | PodIP: eth0 {pod.ipv4}/32\n"


@dataclass(eq=False)
class Walkthrough:
    cluster: Cluster
    servers: list[ClusterPod]
    client: ClusterPod
    service: ServiceSpec

    @property
    def client_node(self):
        return self.client.node


def deploy_walkthrough(cluster: Cluster, *, client_node: str | None = None) -> Walkthrough:
    """``cni`` on every worker (every node if there is only one), ``serversvc``, and
    ``net`` on ``client_node`` (default: the first worker). Servers are listening on
    return; the objects file is written."""
    workers = [n for n in cluster.nodes.values() if n.name != "control-plane"]
    workers = workers or list(cluster.nodes.values())
    servers = [cluster.add_pod(generated_name("cni"), n, SERVER_LABELS) for n in workers]
    client = cluster.add_pod(CLIENT, client_node or workers[0].name, {"run": CLIENT})
    procs = [cluster.http_server(p, pod_body(p), PORT, wait=False) for p in servers]
    for proc in procs:
        cluster.lab.wait_listening(proc, PORT, "tcp")
    service = cluster.controller.add_service(ServiceSpec(
        SERVICE, SERVER_LABELS, (ServicePortSpec(PORT, PORT, "TCP", NODE_PORT),),
        type="NodePort", labels={"app": "cni"}))
    return Walkthrough(cluster, servers, client, service)
