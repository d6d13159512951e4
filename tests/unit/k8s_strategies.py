"""Hypothesis strategies for Kubernetes objects: valid ones, and mutations that make
exactly one thing invalid and say where the loader must report it.

``cluster_docs()`` draws a list of documents (Services, one EndpointSlice per
family of each, Nodes) that together form a valid input: names, cluster IPs and
nodePorts are unique by construction (the index of the object is part of each).

A mutation is ``fn(data, docs) -> Expect``: it changes one document of ``docs`` in
place (drawing what it needs from ``data``) and returns where the error must be
reported: document number, kind, object name as messages show it, field path, and
the text that must name the value (None where there is no value, e.g. "required").
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from lbcore.k8s.fields import show

Doc = dict[str, Any]

# ------------------------------------------------------------------ valid values

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"


@st.composite
def dns_label(draw, *, first: str = _LOWER + _DIGITS, max_size: int = 12) -> str:
    """A DNS-1123 label (``first=_LOWER``: a DNS-1035 label)."""
    head = draw(st.sampled_from(first))
    middle = draw(st.text(_LOWER + _DIGITS + "-", max_size=max_size))
    tail = draw(st.sampled_from(_LOWER + _DIGITS)) if middle else ""
    return head + middle + tail


_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?"
label_values = st.one_of(st.just(""), st.from_regex(_LABEL, fullmatch=True))
label_keys = st.one_of(
    st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True),
    st.builds(lambda p, n: f"{p}/{n}", st.sampled_from(["example.com", "app.kubernetes.io"]),
              st.from_regex(r"[a-z0-9]([-a-z0-9_.]{0,8}[a-z0-9])?", fullmatch=True)),
)
labels = st.dictionaries(label_keys, label_values, max_size=3)
iana_names = st.builds(  # 1-15 of a-z, 0-9, single '-' between, a letter first
    lambda head, parts: "-".join([head + parts[0], *parts[1:]]),
    st.sampled_from(_LOWER), st.lists(st.text(_LOWER + _DIGITS, max_size=3), min_size=1,
                                      max_size=3).filter(lambda ps: all(ps[1:])))


def _v4(net: str, i: int) -> str:
    return str(ipaddress.ip_network(net)[i])


public4 = st.integers(1, 254).map(lambda i: f"192.0.2.{i}")
public6 = st.integers(1, 0xFFFF).map(lambda i: f"2001:db8::{i:x}")

# ----------------------------------------------------------------- bad values

bad_port_numbers = st.one_of(st.integers(max_value=0), st.integers(min_value=65536))
_PRINTABLE = _LOWER + _DIGITS + "ABC -_.:/"
wrong_types = st.one_of(
    st.text(_PRINTABLE, max_size=5), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(1, 9), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 9), min_size=1, max_size=1),
)
bad_subdomains = st.one_of(  # invalid DNS-1123 subdomains (and so labels)
    st.text(_LOWER, min_size=1, max_size=5).map(lambda s: s + "_x"),  # underscore
    st.text(_LOWER, min_size=1, max_size=5).map(lambda s: s.upper() + "x"),  # upper case
    st.text(_LOWER, min_size=1, max_size=5).map(lambda s: s + "-"),  # ends with '-'
    st.text(_LOWER, min_size=1, max_size=5).map(lambda s: "-" + s),  # starts with '-'
    st.text(_LOWER, min_size=1, max_size=5).map(lambda s: s + "..a"),  # empty label
    st.just("a" * 254),  # too long
)
bad_dns_names = st.one_of(bad_subdomains, st.just("a" * 64),  # labels: at most 63
                          st.text(_LOWER, min_size=1, max_size=5).map(lambda s: s + ".x"))
bad_ips = st.one_of(
    st.sampled_from(["10.0.0.256", "1.2.3", "10.0.0.1/32", "fe80::1%eth0", "::g", "abc",
                     "1.2.3.4.5", " 10.0.0.1", "0x0a000001", "010.000.000.001"]),
    st.integers(256, 999).map(lambda n: f"10.{n}.0.1"),
)
special_ips = st.one_of(
    st.integers(0, 2**24 - 1).map(lambda n: str(ipaddress.IPv4Address((127 << 24) + n))),
    st.sampled_from(["0.0.0.0", "::", "::1", "255.255.255.255", "::ffff:127.0.0.1",
                     "::ffff:169.254.169.254", "ff02::1", "ff05::2"]),
    st.integers(0, 2**16 - 1).map(lambda n: str(ipaddress.IPv4Address(0xA9FE0000 + n))),
    st.integers(0, 2**28 - 1).map(lambda n: str(ipaddress.IPv4Address((224 << 24) + n))),
    st.integers(1, 2**64 - 1).map(lambda n: str(ipaddress.IPv6Address((0xFE80 << 112) + n))),
)
invalid_ips = st.one_of(bad_ips, special_ips)
bad_protocols = st.sampled_from(["tcp", "udp", "HTTP", "ICMP", "TCP ", "sctp", "QUIC"])
bad_label_values = st.one_of(st.just("-x"), st.just("x" * 64), st.just("a b"), st.just("é"))

# ------------------------------------------------------------ valid objects


@st.composite
def service_doc(draw, i: int) -> Doc:
    """Valid Service number ``i`` (unique name, cluster IPs and nodePorts)."""
    name = draw(dns_label(first=_LOWER, max_size=8)) + f"-s{i}"
    namespace = draw(st.sampled_from(["default", "shop", "kube-system"]))
    stype = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    stack = draw(st.sampled_from(["4", "6", "46", "64"]))
    ip = {"4": f"10.96.{i}.{draw(st.integers(1, 254))}",
          "6": f"fd00:10:96::{i:x}:{draw(st.integers(1, 0xFFFF)):x}"}
    ips = [ip[f] for f in stack]
    spec: dict[str, Any] = {"type": stype, "clusterIP": ips[0]}
    if len(ips) == 2 or draw(st.booleans()):
        spec["clusterIPs"] = ips
        spec["ipFamilies"] = [f"IPv{f}" for f in stack]
        spec["ipFamilyPolicy"] = ("SingleStack" if len(ips) == 1 else
                                  draw(st.sampled_from(["PreferDualStack", "RequireDualStack"])))
    numbers = draw(st.lists(st.integers(1, 65535).filter(lambda p: p != 10250),
                            min_size=1, max_size=4, unique=True))
    ports = []
    for j, number in enumerate(numbers):
        port: dict[str, Any] = {"port": number,
                                "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"]))}
        if len(numbers) > 1 or draw(st.booleans()):
            port["name"] = f"p{j}-" + draw(dns_label(max_size=4))
        target = draw(st.one_of(st.none(), st.integers(1, 65535), iana_names))
        if target is not None:
            port["targetPort"] = target
        if stype != "ClusterIP":
            port["nodePort"] = 30000 + i * 8 + j
        ports.append(port)
    spec["ports"] = ports
    external = draw(st.lists(public4 if "4" in stack else public6, max_size=2, unique=True))
    if external:
        spec["externalIPs"] = external
    if stype != "ClusterIP" or external:
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    spec["internalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        timeout = draw(st.integers(1, 86400))
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    spec["selector"] = draw(labels)
    doc: Doc = {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": draw(labels)},
                "spec": spec}
    if stype == "LoadBalancer":
        ingress = draw(st.lists(st.integers(1, 254), max_size=2, unique=True))
        doc["status"] = {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{n}"} for n in ingress]}}
    return doc


@st.composite
def slice_doc(draw, service: Doc, i: int, family: str, nodes: list[str]) -> Doc:
    """A valid EndpointSlice of ``service`` (number ``i``) for ``family`` ("4"/"6")."""
    meta = service["metadata"]
    count = draw(st.integers(0, 3))
    endpoints = []
    for k in range(count):
        address = f"10.244.{i}.{k + 1}" if family == "4" else f"fd00:10:244::{i:x}:{k + 1:x}"
        ep: dict[str, Any] = {"addresses": [address]}
        conditions = {c: v for c in ("ready", "serving", "terminating")
                      if (v := draw(st.one_of(st.none(), st.booleans()))) is not None}
        if conditions:
            ep["conditions"] = conditions
        if nodes and draw(st.booleans()):
            ep["nodeName"] = draw(st.sampled_from(nodes))
        if draw(st.booleans()):
            ep["zone"] = draw(st.sampled_from(["zone-a", "zone-b"]))
        endpoints.append(ep)
    ports = [{"name": p.get("name", ""), "protocol": p["protocol"],
              "port": draw(st.integers(1, 65535))} for p in service["spec"]["ports"]]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-{family}x{i}", "namespace": meta["namespace"],
                         "labels": {"kubernetes.io/service-name": meta["name"]}},
            "addressType": f"IPv{family}", "endpoints": endpoints, "ports": ports}


def node_doc(i: int) -> Doc:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"node-{i}", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.0.{i + 2}"},
                                     {"type": "InternalIP", "address": f"fc00::{i + 2:x}"},
                                     {"type": "Hostname", "address": f"node-{i}"}]}}


@st.composite
def cluster_docs(draw, *, max_services: int = 3) -> list[Doc]:
    """A valid input: 1-``max_services`` Services, their slices, 1-2 Nodes."""
    nodes = [node_doc(i) for i in range(draw(st.integers(1, 2)))]
    names = [n["metadata"]["name"] for n in nodes]
    docs: list[Doc] = []
    for i in range(draw(st.integers(1, max_services))):
        svc = draw(service_doc(i))
        docs.append(svc)
        for family in sorted({ip_family(ip) for ip in cluster_ips(svc)}):
            docs.append(draw(slice_doc(svc, i, family, names)))
    return docs + nodes


def cluster_ips(svc: Doc) -> list[str]:
    spec = svc["spec"]
    return spec.get("clusterIPs") or [spec["clusterIP"]]


def ip_family(ip: str) -> str:
    return "6" if ":" in ip else "4"


# ------------------------------------------------------------------ mutations


@dataclass(frozen=True)
class Expect:
    document: int  # 1-based, as in messages
    kind: str
    name: str  # as messages show it: ns/name, or name for a Node
    field: str
    shown: str | None  # text that must appear in the problem (the value), if any


Mutation = Callable[[Any, list[Doc]], Expect]
MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    MUTATIONS[fn.__name__] = fn
    return fn


def display_name(doc: Doc) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name", "") if isinstance(meta.get("name"), str) else ""
    if doc.get("kind") == "Node" or not name:
        return name
    return f"{meta.get('namespace') or 'default'}/{name}"


def _pick(data, docs: list[Doc], kind: str, where: Callable[[Doc], bool] = lambda d: True
          ) -> tuple[int, Doc]:
    chosen = [(i, d) for i, d in enumerate(docs) if d["kind"] == kind and where(d)]
    return data.draw(st.sampled_from(chosen), label=f"target {kind}")


def _expect(index: int, doc: Doc, field: str, value: Any = None, *, shown: str | None = None,
            kind: str | None = None) -> Expect:
    text = shown if shown is not None else (None if value is None else show(value))
    return Expect(index + 1, kind if kind is not None else doc["kind"], display_name(doc),
                  field, text)


def _port(data, docs, where=lambda d: True) -> tuple[int, Doc, int, dict]:
    i, svc = _pick(data, docs, "Service", where)
    ports = svc["spec"]["ports"]
    j = data.draw(st.integers(0, len(ports) - 1), label="port index")
    return i, svc, j, ports[j]


def _make_node_port(svc: Doc) -> None:
    """Turn ``svc`` into a NodePort service (if it is not one, or a LoadBalancer)."""
    spec = svc["spec"]
    if spec["type"] == "ClusterIP":
        spec["type"] = "NodePort"
        spec.setdefault("externalTrafficPolicy", "Cluster")
        for j, p in enumerate(spec["ports"]):
            p["nodePort"] = 32000 + j


def _node_port(data, docs) -> tuple[int, Doc, int, dict]:
    i, svc, j, port = _port(data, docs)
    _make_node_port(svc)
    return i, svc, j, port


def _name_ports(svc: Doc) -> None:
    for j, p in enumerate(svc["spec"]["ports"]):
        p.setdefault("name", f"n{j}")


# --- Service ports


@mutation
def port_out_of_range(data, docs):
    i, svc, j, port = _port(data, docs)
    port["port"] = data.draw(bad_port_numbers)
    return _expect(i, svc, f"spec.ports[{j}].port", port["port"])


@mutation
def port_of_wrong_type(data, docs):
    i, svc, j, port = _port(data, docs)
    port["port"] = data.draw(wrong_types)
    return _expect(i, svc, f"spec.ports[{j}].port", port["port"])


@mutation
def port_missing(data, docs):
    i, svc, j, port = _port(data, docs)
    del port["port"]
    return _expect(i, svc, f"spec.ports[{j}].port")


@mutation
def port_protocol_unsupported(data, docs):
    i, svc, j, port = _port(data, docs)
    port["protocol"] = data.draw(bad_protocols)
    return _expect(i, svc, f"spec.ports[{j}].protocol", port["protocol"])


@mutation
def port_name_invalid(data, docs):
    i, svc, j, port = _port(data, docs)
    port["name"] = data.draw(bad_dns_names)
    return _expect(i, svc, f"spec.ports[{j}].name", port["name"])


@mutation
def port_name_duplicate(data, docs):
    i, svc, _, port = _port(data, docs)
    _name_ports(svc)
    ports = svc["spec"]["ports"]
    ports.append({"name": port["name"], "port": 1 + port["port"] % 65535 or 1,
                  "protocol": "UDP" if port.get("protocol", "TCP") != "UDP" else "TCP"})
    return _expect(i, svc, f"spec.ports[{len(ports) - 1}].name", port["name"])


@mutation
def port_duplicate(data, docs):
    i, svc, _, port = _port(data, docs)
    _name_ports(svc)
    ports = svc["spec"]["ports"]
    protocol = port.get("protocol", "TCP")
    ports.append({"name": "dup", "port": port["port"], "protocol": protocol})
    return _expect(i, svc, f"spec.ports[{len(ports) - 1}]",
                   shown=show(f"{port['port']}/{protocol}"))


@mutation
def target_port_invalid(data, docs):
    i, svc, j, port = _port(data, docs)
    port["targetPort"] = data.draw(st.one_of(
        st.integers(max_value=-1), st.integers(min_value=65536),
        st.sampled_from(["8080", "HTTP", "a--b", "-web", "web-", "abcdefghijklmnop", "a_b"]),
        st.floats(allow_nan=False, allow_infinity=False), st.booleans()))
    return _expect(i, svc, f"spec.ports[{j}].targetPort", port["targetPort"])


@mutation
def node_port_out_of_range(data, docs):
    i, svc, j, port = _node_port(data, docs)
    port["nodePort"] = data.draw(st.one_of(st.integers(1, 29999), st.integers(32768, 70000),
                                           st.integers(max_value=-1)))
    return _expect(i, svc, f"spec.ports[{j}].nodePort", port["nodePort"])


@mutation
def node_port_on_cluster_ip_service(data, docs):
    i, svc, j, port = _port(data, docs)
    svc["spec"]["type"] = "ClusterIP"
    svc["spec"].pop("externalTrafficPolicy", None)
    svc["spec"].pop("externalIPs", None)
    for p in svc["spec"]["ports"]:
        p.pop("nodePort", None)
    port["nodePort"] = 32000
    return _expect(i, svc, f"spec.ports[{j}].nodePort", 32000)


@mutation
def node_port_duplicate_in_service(data, docs):
    i, svc, _, port = _node_port(data, docs)
    _name_ports(svc)
    ports = svc["spec"]["ports"]
    used = {p["port"] for p in ports}
    ports.append({"name": "dup", "port": next(n for n in range(1, 99) if n not in used),
                  "protocol": port.get("protocol", "TCP"), "nodePort": port["nodePort"]})
    return _expect(i, svc, f"spec.ports[{len(ports) - 1}].nodePort", port["nodePort"])


@mutation
def node_port_taken_by_another_service(data, docs):
    services = [(i, d) for i, d in enumerate(docs) if d["kind"] == "Service"]
    if len(services) < 2:  # make a second one
        svc = copy.deepcopy(services[0][1])
        svc["metadata"]["name"] += "-b"
        svc["spec"]["clusterIP"] = "10.96.200.1"
        svc["spec"]["clusterIPs"] = ["10.96.200.1"]
        svc["spec"]["ipFamilies"], svc["spec"]["ipFamilyPolicy"] = ["IPv4"], "SingleStack"
        for p in svc["spec"]["ports"]:
            p.pop("nodePort", None)
        docs.insert(services[0][0] + 1, svc)
        services = [(i, d) for i, d in enumerate(docs) if d["kind"] == "Service"]
    (a, first), (b, second) = data.draw(st.permutations(services))[:2]
    a, b = sorted([(a, first), (b, second)], key=lambda t: t[0])
    (_, owner), (index, taker) = a, b
    for svc in (owner, taker):
        svc["spec"]["type"] = "NodePort"
        svc["spec"].setdefault("externalTrafficPolicy", "Cluster")
        svc.pop("status", None)
    owner["spec"]["ports"][0]["nodePort"] = 31999
    for p in taker["spec"]["ports"]:
        p.pop("nodePort", None)
    taker["spec"]["ports"][0]["nodePort"] = 31999
    return _expect(index, taker, "spec.ports[0].nodePort",
                   shown=f"31999: provided port is already allocated to Service "
                         f"{display_name(owner)}")


# --- Service addresses


@mutation
def external_ip_invalid(data, docs):
    i, svc = _pick(data, docs, "Service")
    ips = svc["spec"].setdefault("externalIPs", [])
    ips.append(data.draw(invalid_ips))
    return _expect(i, svc, f"spec.externalIPs[{len(ips) - 1}]", ips[-1])


@mutation
def cluster_ip_invalid(data, docs):
    i, svc = _pick(data, docs, "Service")
    spec = svc["spec"]
    bad = data.draw(invalid_ips)
    spec["clusterIP"] = bad
    if "clusterIPs" in spec:
        spec["clusterIPs"][0] = bad
    return _expect(i, svc, "spec.clusterIPs[0]", bad)


@mutation
def cluster_ip_family_mismatch(data, docs):
    i, svc = _pick(data, docs, "Service")
    spec = svc["spec"]
    first = cluster_ips(svc)[0]
    spec["clusterIPs"] = [first]
    spec["ipFamilies"] = ["IPv4" if ip_family(first) == "6" else "IPv6"]
    spec["ipFamilyPolicy"] = "SingleStack"
    return _expect(i, svc, "spec.clusterIPs[0]", first)


@mutation
def cluster_ip_taken_by_another_service(data, docs):
    _, svc = _pick(data, docs, "Service")
    clone = copy.deepcopy(svc)
    clone["metadata"]["name"] += "-twin"
    for p in clone["spec"]["ports"]:
        p.pop("nodePort", None)
    clone["spec"]["type"] = "ClusterIP"
    clone["spec"].pop("externalTrafficPolicy", None)
    clone["spec"].pop("externalIPs", None)
    clone.pop("status", None)
    docs.append(clone)
    first = str(ipaddress.ip_address(cluster_ips(svc)[0]))  # as converted: canonical
    return _expect(len(docs) - 1, clone, "spec.clusterIPs[0]",
                   shown=f"{show(first)}: provided IP is already allocated to "
                         f"Service {display_name(svc)}")


@mutation
def load_balancer_ingress_ip_invalid(data, docs):
    i, svc = _pick(data, docs, "Service")
    ingress = svc.setdefault("status", {}).setdefault("loadBalancer", {}).setdefault(
        "ingress", [])
    ingress.append({"ip": data.draw(invalid_ips)})
    return _expect(i, svc, f"status.loadBalancer.ingress[{len(ingress) - 1}].ip",
                   ingress[-1]["ip"])


@mutation
def source_range_invalid(data, docs):
    i, svc = _pick(data, docs, "Service")
    svc["spec"]["type"] = "LoadBalancer"
    svc["spec"].setdefault("externalTrafficPolicy", "Cluster")
    for j, p in enumerate(svc["spec"]["ports"]):
        p.setdefault("nodePort", 30000 + 8 * 300 + j)
    bad = data.draw(st.sampled_from(["10.0.0.0", "10.0.0.0/33", "fd00::/129", "x/8",
                                     "10.0.0.0/-1", "10.0.0.0/8/8"]))
    svc["spec"]["loadBalancerSourceRanges"] = ["192.0.2.0/24", bad]
    return _expect(i, svc, "spec.loadBalancerSourceRanges[1]", bad)


# --- Service fields


@mutation
def service_type_unsupported(data, docs):
    i, svc = _pick(data, docs, "Service")
    svc["spec"]["type"] = data.draw(st.sampled_from(["Internal", "clusterIP", "nodeport", "LB"]))
    return _expect(i, svc, "spec.type", svc["spec"]["type"])


@mutation
def session_affinity_unsupported(data, docs):
    i, svc = _pick(data, docs, "Service")
    svc["spec"]["sessionAffinity"] = data.draw(st.sampled_from(["Cookie", "clientip", "Sticky"]))
    return _expect(i, svc, "spec.sessionAffinity", svc["spec"]["sessionAffinity"])


@mutation
def affinity_timeout_out_of_range(data, docs):
    i, svc = _pick(data, docs, "Service")
    timeout = data.draw(st.one_of(st.integers(max_value=0), st.integers(min_value=86401)))
    svc["spec"]["sessionAffinity"] = "ClientIP"
    svc["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    return _expect(i, svc, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout)


@mutation
def traffic_policy_unsupported(data, docs):
    i, svc = _pick(data, docs, "Service")
    key = data.draw(st.sampled_from(["externalTrafficPolicy", "internalTrafficPolicy"]))
    svc["spec"]["type"] = "NodePort"
    for j, p in enumerate(svc["spec"]["ports"]):
        p.setdefault("nodePort", 30000 + 8 * 301 + j)
    svc.pop("status", None)
    svc["spec"][key] = data.draw(st.sampled_from(["Node", "local", "Remote"]))
    return _expect(i, svc, f"spec.{key}", svc["spec"][key])


@mutation
def selector_label_invalid(data, docs):
    i, svc = _pick(data, docs, "Service")
    value = data.draw(bad_label_values)
    svc["spec"]["selector"] = {"app": value}
    return _expect(i, svc, "spec.selector[app]", value)


@mutation
def spec_not_a_mapping(data, docs):
    i, svc = _pick(data, docs, "Service")
    svc["spec"] = data.draw(st.one_of(st.text(_PRINTABLE, min_size=1, max_size=4),
                                      st.lists(st.integers(), min_size=1, max_size=2)))
    return _expect(i, svc, "spec", svc["spec"])


# --- metadata (every kind)


def _any_doc(data, docs, kinds=("Service", "EndpointSlice", "Node")) -> tuple[int, Doc]:
    chosen = [(i, d) for i, d in enumerate(docs) if d["kind"] in kinds]
    return data.draw(st.sampled_from(chosen), label="target object")


@mutation
def name_invalid(data, docs):
    i, doc = _any_doc(data, docs)
    # Services: DNS-1035 labels; EndpointSlices and Nodes: DNS-1123 subdomains.
    bad = bad_dns_names if doc["kind"] == "Service" else bad_subdomains
    doc["metadata"]["name"] = data.draw(bad)
    return _expect(i, doc, "metadata.name", doc["metadata"]["name"])


@mutation
def name_missing(data, docs):
    i, doc = _any_doc(data, docs)
    del doc["metadata"]["name"]
    return _expect(i, doc, "metadata.name")


@mutation
def namespace_invalid(data, docs):
    i, doc = _any_doc(data, docs, ("Service", "EndpointSlice"))
    doc["metadata"]["namespace"] = data.draw(bad_dns_names)
    return _expect(i, doc, "metadata.namespace", doc["metadata"]["namespace"])


@mutation
def label_value_invalid(data, docs):
    i, doc = _any_doc(data, docs)
    value = data.draw(bad_label_values)
    doc["metadata"].setdefault("labels", {})["tier"] = value
    return _expect(i, doc, "metadata.labels[tier]", value)


@mutation
def label_not_a_string(data, docs):
    i, doc = _any_doc(data, docs)
    value = data.draw(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False)))
    doc["metadata"].setdefault("labels", {})["tier"] = value
    return _expect(i, doc, "metadata.labels[tier]", value)


@mutation
def kind_or_api_version_missing(data, docs):
    i, doc = _any_doc(data, docs)
    key = data.draw(st.sampled_from(["apiVersion", "kind"]))
    kind = doc["kind"]
    del doc[key]
    meta = doc["metadata"]
    name = meta["name"] if "namespace" not in meta else f"{meta['namespace']}/{meta['name']}"
    return Expect(i + 1, kind if key == "apiVersion" else "", name, key, None)


@mutation
def api_version_unsupported(data, docs):
    i, doc = _any_doc(data, docs)
    doc["apiVersion"] = {"EndpointSlice": "discovery.k8s.io/v1beta1"}.get(doc["kind"], "v2")
    return _expect(i, doc, "apiVersion", doc["apiVersion"])


# --- EndpointSlice


def _endpoint(data, docs) -> tuple[int, Doc, int, dict]:
    i, eps = _pick(data, docs, "EndpointSlice")
    if not eps["endpoints"]:
        eps["endpoints"].append({"addresses": ["10.244.250.1" if eps["addressType"] == "IPv4"
                                               else "fd00:10:244::fa:1"]})
    k = data.draw(st.integers(0, len(eps["endpoints"]) - 1), label="endpoint index")
    return i, eps, k, eps["endpoints"][k]


@mutation
def endpoint_address_invalid(data, docs):
    i, eps, k, ep = _endpoint(data, docs)
    other = "2001:db8::5" if eps["addressType"] == "IPv4" else "192.0.2.5"
    bad = data.draw(st.one_of(invalid_ips, st.just(other)))
    ep["addresses"].append(bad)
    return _expect(i, eps, f"endpoints[{k}].addresses[{len(ep['addresses']) - 1}]", bad)


@mutation
def endpoint_addresses_missing(data, docs):
    i, eps, k, ep = _endpoint(data, docs)
    if data.draw(st.booleans()):
        ep["addresses"] = []
    else:
        del ep["addresses"]
    return _expect(i, eps, f"endpoints[{k}].addresses")


@mutation
def endpoint_condition_not_a_boolean(data, docs):
    i, eps, k, ep = _endpoint(data, docs)
    cond = data.draw(st.sampled_from(["ready", "serving", "terminating"]))
    value = data.draw(st.one_of(st.sampled_from(["yes", "true", "True"]), st.integers(0, 1)))
    ep.setdefault("conditions", {})[cond] = value
    return _expect(i, eps, f"endpoints[{k}].conditions.{cond}", value)


@mutation
def endpoint_node_name_invalid(data, docs):
    i, eps, k, ep = _endpoint(data, docs)
    ep["nodeName"] = data.draw(bad_subdomains)
    return _expect(i, eps, f"endpoints[{k}].nodeName", ep["nodeName"])


@mutation
def endpoint_zone_hints_invalid(data, docs):
    i, eps, k, ep = _endpoint(data, docs)
    how = data.draw(st.sampled_from(["too many", "duplicate", "bad name"]))
    path = f"endpoints[{k}].hints.forZones"
    if how == "too many":
        ep["hints"] = {"forZones": [{"name": f"z{n}"} for n in range(9)]}
        return _expect(i, eps, path, shown="too many: 9")
    if how == "duplicate":
        ep["hints"] = {"forZones": [{"name": "zone-a"}, {"name": "zone-a"}]}
        return _expect(i, eps, f"{path}[1].name", "zone-a")
    ep["hints"] = {"forZones": [{"name": "-zone"}]}
    return _expect(i, eps, f"{path}[0].name", "-zone")


@mutation
def address_type_unsupported(data, docs):
    i, eps = _pick(data, docs, "EndpointSlice")
    eps["addressType"] = data.draw(st.sampled_from(["ipv4", "IP", "IPv5", "fqdn"]))
    return _expect(i, eps, "addressType", eps["addressType"])


@mutation
def slice_port_invalid(data, docs):
    i, eps = _pick(data, docs, "EndpointSlice")
    ports = eps["ports"]
    k = data.draw(st.integers(0, len(ports) - 1))
    how = data.draw(st.sampled_from(["range", "type", "name", "protocol"]))
    if how == "range":
        ports[k]["port"] = data.draw(bad_port_numbers)
        return _expect(i, eps, f"ports[{k}].port", ports[k]["port"])
    if how == "type":
        ports[k]["port"] = data.draw(wrong_types)
        return _expect(i, eps, f"ports[{k}].port", ports[k]["port"])
    if how == "name":
        ports[k]["name"] = data.draw(bad_dns_names)
        return _expect(i, eps, f"ports[{k}].name", ports[k]["name"])
    ports[k]["protocol"] = data.draw(bad_protocols)
    return _expect(i, eps, f"ports[{k}].protocol", ports[k]["protocol"])


@mutation
def slice_port_name_duplicate(data, docs):
    i, eps = _pick(data, docs, "EndpointSlice")
    ports = eps["ports"]
    ports.append({"name": ports[0]["name"], "port": 9, "protocol": "TCP"})
    return _expect(i, eps, f"ports[{len(ports) - 1}].name", ports[0]["name"])


# --- Node


@mutation
def node_address_invalid(data, docs):
    i, node = _pick(data, docs, "Node")
    addresses = node["status"]["addresses"]
    addresses.append({"type": data.draw(st.sampled_from(["InternalIP", "ExternalIP"])),
                      "address": data.draw(invalid_ips)})
    return _expect(i, node, f"status.addresses[{len(addresses) - 1}].address",
                   addresses[-1]["address"])


@mutation
def node_address_type_unsupported(data, docs):
    i, node = _pick(data, docs, "Node")
    node["status"]["addresses"][0]["type"] = "PodIP"
    return _expect(i, node, "status.addresses[0].type", "PodIP")
