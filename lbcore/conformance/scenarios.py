"""Scenarios from the Kubernetes e2e Service tests (test/e2e/network/service.go and
conntrack.go): endpoints, ports, protocols, rejection, labels, source IP, hairpin, and
deleting services. Traffic-policy, affinity, NodePort and UDP-conntrack scenarios are in
:mod:`.scenarios_policy`. Every scenario returns its evidence or raises ``Failed``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import FrontendType
from .env import TERMINATING, UDP_PORT, ConformanceEnv
from .model import Failed, Needs, Scenario, ScenarioFn

SCENARIOS: list[Scenario] = []
CLUSTER_IP = frozenset({FrontendType.CLUSTER_IP})
NODE_PORT = frozenset({FrontendType.NODE_PORT})
REFUSED = {"ECONNREFUSED"}
CLUSTER_IP_TCP = Needs()


def scenario(
    name: str, title: str, needs: Needs = CLUSTER_IP_TCP
) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS.append(Scenario(name, title, needs, fn))
        return fn
    return register


@scenario("endpoints-0-1-2-1-0", "endpoints 0->1->2->1->0 followed exactly")
def endpoints_sequence(env: ConformanceEnv) -> str:
    svc = env.service("seq", [(80, "TCP")])
    steps = [env.expect_refused("pod", svc.cluster_ip, 80, errors=REFUSED)]
    for backends in (["a"], ["a", "b"], ["b"]):
        env.select("seq", backends)
        steps.append(env.expect_backends("pod", svc.cluster_ip, 80, set(backends)))
    env.select("seq", [])
    steps.append(env.expect_refused("pod", svc.cluster_ip, 80, errors=REFUSED))
    return "; ".join(steps)


@scenario("multiport", "multi-port service; adding and removing a port on a live service")
def multiport(env: ConformanceEnv) -> str:
    svc = env.service("mp", [(80, "TCP"), (8080, "TCP")], backends=["a", "b"])
    ip, want = svc.cluster_ip, {"a", "b"}
    out = [env.expect_backends("pod", ip, p, want) for p in (80, 8080)]
    env.expect_refused("pod", ip, 8081)
    env.service("mp", [(80, "TCP"), (8080, "TCP"), (8081, "TCP")], backends=["a", "b"])
    out.append("added " + env.expect_backends("pod", ip, 8081, want))
    env.service("mp", [(80, "TCP"), (8081, "TCP")], backends=["a", "b"])
    out.append("removed " + env.expect_refused("pod", ip, 8080))
    out += [env.expect_backends("pod", ip, p, want) for p in (80, 8081)]
    return "; ".join(out)


@scenario("tcp-udp-same-port", "TCP and UDP on the same port; removing one protocol stops it",
          Needs(protocols=frozenset({"TCP", "UDP"})))
def tcp_udp_same_port(env: ConformanceEnv) -> str:
    svc = env.service("dual", [(UDP_PORT, "TCP"), (UDP_PORT, "UDP")], backends=["b"])
    ip = svc.cluster_ip
    out = [env.expect_backends("pod", ip, UDP_PORT, {"b"}),
           env.expect_backends("pod", ip, UDP_PORT, {"b"}, proto="udp", count=4)]
    env.service("dual", [(UDP_PORT, "TCP")], backends=["b"])
    out.append("UDP removed: " + env.expect_refused("pod", ip, UDP_PORT, proto="udp",
                                                     timeout=30))
    out.append("TCP kept: " + env.expect_backends("pod", ip, UDP_PORT, {"b"}))
    return "; ".join(out)


@scenario("no-endpoints-rejected", "a service without endpoints refuses connections at once")
def no_endpoints(env: ConformanceEnv) -> str:
    svc = env.service("empty", [(80, "TCP")])
    return env.expect_refused("pod", svc.cluster_ip, 80, errors=REFUSED, fast=0.5)


@scenario("proxy-name-headless-labels",
          "service-proxy-name / headless labels make the proxy ignore a service; toggling works")
def ignore_labels(env: ConformanceEnv) -> str:
    out = []
    for label in ("service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"):
        svc = env.service("lbl", [(80, "TCP")], backends=["a"], labels={label: "foo"})
        ip = svc.cluster_ip
        env.expect_refused("pod", ip, 80)
        env.service("lbl", [(80, "TCP")], backends=["a"])
        env.expect_backends("pod", ip, 80, {"a"})
        env.service("lbl", [(80, "TCP")], backends=["a"], labels={label: ""})
        env.expect_refused("pod", ip, 80)
        out.append(f"{label}: ignored, served without it, ignored again")
        env.remove_service("lbl")
    return "; ".join(out)


@scenario("source-ip-preserved", "the backend sees the client pod's own IP")
def source_ip(env: ConformanceEnv) -> str:
    svc = env.service("src", [(80, "TCP")], backends=["a", "b"])
    env.expect_backends("pod", svc.cluster_ip, 80, {"a", "b"})
    res = env.requests("pod", svc.cluster_ip, 80, count=8)
    seen = {r.get("client_ip", r.get("error")) for r in res}
    if seen != {env.clients["pod"].ip}:
        raise Failed(f"backends saw clients {sorted(seen)}, want {env.clients['pod'].ip}")
    return f"8 requests, backends saw client {env.clients['pod'].ip}"


@scenario("hairpin", "a pod reaches itself through its own service")
def hairpin(env: ConformanceEnv) -> str:
    svc = env.service("hairpin", [(80, "TCP")], backends=["client"])
    return env.expect_backends("pod", svc.cluster_ip, 80, {"client"}, count=4)


@scenario("terminating-endpoints", "serving-terminating endpoints used only when no ready ones")
def terminating(env: ConformanceEnv) -> str:
    svc = env.service("term", [(80, "TCP")], backends=["a", "b"])
    ip = svc.cluster_ip
    out = [env.expect_backends("pod", ip, 80, {"a", "b"})]
    env.set_conditions("a", TERMINATING)
    out.append("a terminating: " + env.expect_backends("pod", ip, 80, {"b"}))
    env.set_conditions("b", TERMINATING)
    out.append("both terminating: " + env.expect_backends("pod", ip, 80, {"a", "b"}))
    env.set_conditions("b", None)
    out.append("b ready: " + env.expect_backends("pod", ip, 80, {"b"}))
    return "; ".join(out)


@scenario("delete-one-service", "deleting one service leaves the others intact")
def delete_one(env: ConformanceEnv) -> str:
    x = env.service("del-x", [(80, "TCP")], backends=["a"])
    y = env.service("del-y", [(80, "TCP")], backends=["b"])
    env.expect_backends("pod", x.cluster_ip, 80, {"a"})
    env.expect_backends("pod", y.cluster_ip, 80, {"b"})
    env.remove_service("del-x")
    gone = env.expect_refused("pod", x.cluster_ip, 80)
    kept = env.expect_backends("pod", y.cluster_ip, 80, {"b"}, timeout=0)
    return f"deleted: {gone}; other: {kept}"


from . import scenarios_policy  # noqa: E402, F401  (registers the rest, in order)
