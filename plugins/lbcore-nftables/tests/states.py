"""Desired states the render and namespace tests share (built from model objects)."""

from __future__ import annotations

from lbcore.model import (
    Backend,
    Condition,
    DesiredState,
    Frontend,
    FrontendAddress,
    FrontendType,
    NodeInfo,
    ServiceKey,
)

NODE = NodeInfo("worker", ("172.18.0.3",))
WEB, DNS, EMPTY = ServiceKey("default", "web"), ServiceKey("kube-system", "dns"), \
    ServiceKey("default", "empty")
A, B = Backend("10.0.1.10", 8080, Condition.READY, "worker"), \
    Backend("10.0.2.10", 8080, Condition.READY, "worker2")
D1 = Backend("10.0.2.20", 53)


def fe(key: ServiceKey, port_name: str, kind: FrontendType, ip: str, port: int, proto: str,
       backends: tuple[Backend, ...], external: tuple[Backend, ...] = (), **kw) -> Frontend:
    return Frontend(key, port_name, kind, FrontendAddress(ip, port, proto), backends,
                    external, **kw)


def basic_state() -> DesiredState:
    """ClusterIP + NodePort (ETP Local), UDP with affinity, a service without endpoints."""
    return DesiredState(NODE, (
        fe(WEB, "http", FrontendType.CLUSTER_IP, "10.96.0.10", 80, "TCP", (A, B)),
        fe(WEB, "http", FrontendType.NODE_PORT, "172.18.0.3", 30080, "TCP", (A, B), (A,),
           external_traffic_local=True),
        fe(DNS, "dns", FrontendType.CLUSTER_IP, "10.96.0.53", 53, "UDP", (D1,),
           session_affinity_timeout=10800),
        fe(EMPTY, "", FrontendType.CLUSTER_IP, "10.96.0.99", 80, "TCP", ()),
    ))


EXPECTED = {  # (ip, port, proto) -> (type, backends)
    ("10.96.0.10", 80, "TCP"): ("ClusterIP", {("10.0.1.10", 8080), ("10.0.2.10", 8080)}),
    ("172.18.0.3", 30080, "TCP"): ("NodePort", {("10.0.1.10", 8080), ("10.0.2.10", 8080)}),
    ("10.96.0.53", 53, "UDP"): ("ClusterIP", {("10.0.2.20", 53)}),
    ("10.96.0.99", 80, "TCP"): ("ClusterIP", set()),
}
