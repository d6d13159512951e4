"""Scenarios on session affinity, NodePort, traffic policies and UDP conntrack
(Kubernetes e2e service.go "should have session affinity ...", "should be able to create
a functioning NodePort service", "should respect internalTrafficPolicy=Local", and
conntrack.go "should be able to preserve UDP traffic when server pod cycles")."""

from __future__ import annotations

from .env import UDP_PORT, ConformanceEnv
from .model import Failed, Needs
from .scenarios import CLUSTER_IP, NODE_PORT, scenario

AFFINITY_HITS = 15  # Kubernetes e2e: AffinityConfirmCount


def _affine(env: ConformanceEnv, ip: str, want_one: bool, timeout: float = 15) -> str:
    def check() -> str:
        got = env.hits("pod", ip, 80, count=AFFINITY_HITS if want_one else 24)
        if want_one and len(got) != 1:
            raise Failed(f"{AFFINITY_HITS} hits spread over {dict(got)}, want one backend")
        if not want_one and len(got) < 2:
            raise Failed(f"24 hits all on {dict(got)}, want them spread")
        return f"{dict(sorted(got.items()))}"

    return env.until("affinity " + ("holds" if want_one else "off"), check, timeout)


@scenario("session-affinity", "ClientIP affinity: 15 hits on one backend, spread after the "
          "timeout, None<->ClientIP switch converges", Needs(session_affinity=True))
def session_affinity(env: ConformanceEnv) -> str:
    aff = {"sessionAffinity": "ClientIP",
           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}}}
    svc = env.service("aff", [(80, "TCP")], backends=["a", "b", "c"], **aff)
    ip = svc.cluster_ip
    out = ["ClientIP: " + _affine(env, ip, True)]
    env.service("aff", [(80, "TCP")], backends=["a", "b", "c"], sessionAffinity="None")
    out.append("None: " + _affine(env, ip, False))
    env.service("aff", [(80, "TCP")], backends=["a", "b", "c"], **aff)
    out.append("ClientIP again: " + _affine(env, ip, True))
    short = {"sessionAffinity": "ClientIP",
             "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}}
    env.service("aff", [(80, "TCP")], backends=["a", "b", "c"], **short)

    def expired() -> str:  # one request every 1.6 s: each finds its affinity expired
        got = env.hits("pod", ip, 80, count=8, gap=1.6)
        if len(got) < 2:
            raise Failed(f"8 hits 1.6 s apart (timeout 1 s) all on {dict(got)}")
        return f"{dict(sorted(got.items()))}"

    out.append("timeout 1s, 1.6s apart: " + env.until("spread after timeout", expired, 40))
    return "; ".join(out)


@scenario("nodeport", "NodePort answers on every node address (from every client kind the "
          "driver claims) and is gone after delete",
          Needs(frontend_types=NODE_PORT, clients=frozenset()))  # any claimed client kind
def nodeport(env: ConformanceEnv) -> str:
    env.service("np", [(80, "TCP", 30080)], type="NodePort", backends=["a", "b"])
    kinds = sorted(env.caps.served_clients() & {"pod", "host", "external"})
    for kind in kinds:
        for ip in env.node_ips():
            env.expect_backends(kind, ip, 30080, {"a", "b"}, count=12)
    env.remove_service("np")
    for kind in kinds:
        for ip in env.node_ips():
            env.expect_refused(kind, ip, 30080)
    unclaimed = sorted({"pod", "host", "external"} - env.caps.served_clients())
    note = f" (clients not claimed, not tried: {', '.join(unclaimed)})" if unclaimed else ""
    return (f"served on {', '.join(env.node_ips())}:30080 from {', '.join(kinds)} clients, "
            f"then gone{note}")


@scenario("external-traffic-local", "externalTrafficPolicy Local: served (with the client's "
          "IP) on the node with the endpoint, not on another node",
          Needs(frontend_types=NODE_PORT, clients=frozenset({"external"}),
                external_traffic_local=True))
def etp_local(env: ConformanceEnv) -> str:
    env.service("etp", [(80, "TCP", 30081)], type="NodePort", backends=["b"],
                externalTrafficPolicy="Local")
    nodes = {n.name: n.ipv4 for n in env.cluster.nodes.values()}
    served = env.expect_backends("external", nodes["worker2"], 30081, {"b"}, count=4)
    res = env.requests("external", nodes["worker2"], 30081, count=4)
    if {r.get("client_ip") for r in res} != {env.clients["external"].ip}:
        raise Failed(f"backend saw {res}, want the external client's own IP")
    other = env.expect_refused("external", nodes["worker"], 30081)
    return f"same node: {served}, source IP kept; other node: {other}"


@scenario("internal-traffic-local", "internalTrafficPolicy Local: a pod uses only endpoints on "
          "its own node", Needs(frontend_types=CLUSTER_IP, internal_traffic_local=True))
def itp_local(env: ConformanceEnv) -> str:
    svc = env.service("itp", [(80, "TCP")], backends=["b"], internalTrafficPolicy="Local")
    ip = svc.cluster_ip
    out = ["only another node's endpoint: " + env.expect_refused("pod", ip, 80)]
    env.select("itp", ["a", "b"])
    out.append("with a same-node endpoint: " + env.expect_backends("pod", ip, 80, {"a"}))
    return "; ".join(out)


@scenario("udp-fixed-source-port-swap", "a UDP client with a fixed source port reaches the new "
          "backend after the old one is replaced", Needs(protocols=frozenset({"UDP"})))
def udp_swap(env: ConformanceEnv) -> str:
    svc = env.service("udpswap", [(UDP_PORT, "UDP")], backends=["a"])
    ip, sport = svc.cluster_ip, 41000
    first = env.expect_backends("pod", ip, UDP_PORT, {"a"}, proto="udp", count=3, sport=sport)
    env.select("udpswap", ["b"])
    after = env.expect_backends("pod", ip, UDP_PORT, {"b"}, proto="udp", count=3, sport=sport,
                                timeout=30)
    return f"source port {sport}: {first}; after the swap: {after}"

