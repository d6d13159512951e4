"""Pure rendering: ``DesiredState`` -> the objects of lbcore's nftables table, per
service. No kernel access here (the transactions are built by :mod:`.plan`).

The table (``ip lbcore``), after kube-proxy's nftables mode (KEP-3866)::

    map service-ips  { ip . proto . port : verdict }      # one lookup, O(1) in services
    chain nat-prerouting / nat-output  -> jump services   # nat hooks, priority dstnat
    chain services     ip daddr . meta l4proto . th dport vmap @service-ips
    chain service-H-ns/svc/tcp/p80     numgen random mod N vmap { 0 : goto endpoint-..., ... }
    chain external-H-ns/svc/tcp/p80    local clients -> cluster endpoints; others masqueraded
                                       (externalTrafficPolicy Cluster) or local endpoints
    chain endpoint-H-ns/svc/tcp/p80__10.0.1.5/80
                                       ip saddr 10.0.1.5 jump mark-for-masquerade (hairpin)
                                       [update @affinity-H { ip saddr }]  dnat to 10.0.1.5:80
    chain reject-chain   reject       # frontends without endpoints: refused at once
    chain nat-postrouting -> masquerading: mark 0x4000 -> masquerade fully-random

Every service chain is **content-addressed**: ``H`` hashes the chain's rules, so a chain
of a given name always holds the same rules. A changed service is a few new chains, a
changed map element and a few deleted chains — never a chain rewritten in place — and
the names the kernel lists say what it holds (:mod:`.plan` relies on both). The tail
names the service, so each object belongs to one service. Affinity sets are named after
their endpoint and timeout, so they (and the clients they remember) survive syncs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lbcore.model import Backend, DesiredState, Frontend, FrontendType, ServiceKey

from . import naming as n

Expr = dict[str, Any]
Rule = tuple[tuple[Expr, ...], str]  # (expressions, comment)

SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
L4PROTO = {"meta": {"key": "l4proto"}}
DPORT = {"payload": {"protocol": "th", "field": "dport"}}
MARK = {"meta": {"key": "mark"}}


def match(left: Expr, right: Any) -> Expr:
    return {"match": {"op": "==", "left": left, "right": right}}


def goto(chain: str) -> Expr:
    return {"goto": {"target": chain}}


def jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


@dataclass(frozen=True)
class RenderOptions:
    cluster_cidr: str | None = None  # sources in it are in-cluster (kube-proxy detect-local)
    pod_interface_prefix: str | None = None  # or: packets from interfaces named PREFIX*
    masquerade_all: bool = False


@dataclass
class Ruleset:
    """Objects of the table: one service's, or all of them."""

    chains: dict[str, list[Rule]] = field(default_factory=dict)  # name -> rules, in order
    sets: dict[str, int] = field(default_factory=dict)  # affinity set -> timeout (s)
    elements: dict[tuple[str, str, int], tuple[str, str]] = field(default_factory=dict)
    # (ip, proto, port) -> (verdict chain, comment "<type> ns/svc:port")

    def merge(self, other: Ruleset) -> None:
        self.chains.update(other.chains)
        self.sets.update(other.sets)
        self.elements.update(other.elements)


def fixed_chains(opts: RenderOptions) -> dict[str, list[Rule]]:
    svc_lookup = {"vmap": {"key": {"concat": [DADDR, L4PROTO, DPORT]},
                           "data": f"@{n.SERVICES_MAP}"}}
    return {
        "nat-prerouting": [((jump(n.CHAIN_SERVICES),), "")],
        "nat-output": [((jump(n.CHAIN_SERVICES),), "")],
        "nat-postrouting": [((jump(n.CHAIN_MASQUERADING),), "")],
        n.CHAIN_SERVICES: [((svc_lookup,), "service dispatch")],
        n.CHAIN_MARK_MASQ: [(({"mangle": {"key": MARK, "value": {"|": [MARK, n.MASQ_MARK]}}},),
                             "")],
        n.CHAIN_MASQUERADING: [
            ((match({"&": [MARK, n.MASQ_MARK]}, 0), {"return": None}), ""),
            (({"mangle": {"key": MARK, "value": {"^": [MARK, n.MASQ_MARK]}}},), ""),
            (({"masquerade": {"flags": ["fully-random"]}},), ""),
        ],
        n.CHAIN_REJECT: [(({"reject": None},), "no endpoints")],
    }


def _tail(fe: Frontend) -> str:
    return n.tail(fe.service.namespace, fe.service.name, fe.protocol, fe.port)


def _chain(rs: Ruleset, kind: str, tail: str, rules: list[Rule]) -> str:
    """Add ``rules`` as the chain named after them (once); its name."""
    name = n.name(kind, tail, repr(rules))
    rs.chains.setdefault(name, rules)
    return name


def affinity_set(fe: Frontend, be: Backend) -> str:
    t = f"{_tail(fe)}__{be.ip}/{be.port}"
    return n.name(n.AFFINITY, t, f"{t}|{fe.protocol}|{fe.session_affinity_timeout}")


def endpoint_chain(rs: Ruleset, fe: Frontend, be: Backend) -> str:
    """``endpoint-H-...__ip/port``: hairpin masquerade, affinity update, dnat."""
    rules: list[Rule] = [((match(SADDR, be.ip), jump(n.CHAIN_MARK_MASQ)), "hairpin")]
    aff = fe.session_affinity_timeout
    if aff is not None:
        aset = affinity_set(fe, be)
        rs.sets[aset] = aff
        rules.append((({"set": {"op": "update", "elem": SADDR, "set": f"@{aset}"}},), ""))
    rules.append(((match(L4PROTO, fe.protocol.lower()), {"dnat": {"addr": be.ip,
                                                                  "port": be.port}}),
                  fe.service_port))
    return _chain(rs, n.ENDPOINT, f"{_tail(fe)}__{be.ip}/{be.port}", rules)


def pick_chain(rs: Ruleset, fe: Frontend, backends: Iterable[Backend]) -> str:
    """``service-H-...``: affinity matches, then ``numgen random mod N vmap``; or the
    reject chain when there is no endpoint."""
    backends = list(backends)
    eps = [endpoint_chain(rs, fe, be) for be in backends]
    if not eps:
        return n.CHAIN_REJECT
    rules: list[Rule] = []
    if fe.session_affinity_timeout is not None:
        for be, ep in zip(backends, eps, strict=True):
            rules.append(((match(SADDR, f"@{affinity_set(fe, be)}"), goto(ep)), "affinity"))
    choose = {"vmap": {"key": {"numgen": {"mode": "random", "mod": len(eps), "offset": 0}},
                       "data": {"set": [[i, goto(ep)] for i, ep in enumerate(eps)]}}}
    rules.append(((choose,), fe.service_port))
    return _chain(rs, n.PICK, _tail(fe), rules)


def external_chain(rs: Ruleset, fe: Frontend, opts: RenderOptions) -> str:
    """NodePort / ExternalIP / LoadBalancer: in-cluster clients use every endpoint,
    outside clients follow externalTrafficPolicy (Cluster: masqueraded)."""
    internal = pick_chain(rs, fe, fe.backends)
    external = pick_chain(rs, fe, fe.external_backends)
    rules: list[Rule] = [((match({"fib": {"result": "type", "flags": ["saddr"]}}, "local"),
                           goto(internal)), "from this node")]
    if opts.cluster_cidr:
        prefix, length = opts.cluster_cidr.split("/")
        cidr = {"prefix": {"addr": prefix, "len": int(length)}}
        rules.append(((match(SADDR, cidr), goto(internal)), "from a pod"))
    if opts.pod_interface_prefix:
        rules.append(((match({"meta": {"key": "iifname"}}, f"{opts.pod_interface_prefix}*"),
                       goto(internal)), "from a pod"))
    if not fe.external_traffic_local or opts.masquerade_all:
        rules.append(((jump(n.CHAIN_MARK_MASQ),), "externalTrafficPolicy Cluster"))
    rules.append(((goto(external),), f"{fe.type.value} {fe.service_port}"))
    return _chain(rs, n.EXTERNAL, _tail(fe), rules)


def render_service(frontends: Iterable[Frontend], opts: RenderOptions = RenderOptions()
                   ) -> Ruleset:
    """One service's chains, sets and map elements (IPv4 frontends; the driver claims
    IPv4 only)."""
    rs = Ruleset()
    for fe in frontends:
        if fe.family != 4:
            continue
        if fe.type is FrontendType.CLUSTER_IP:
            verdict = pick_chain(rs, fe, fe.backends)
            if opts.masquerade_all and verdict != n.CHAIN_REJECT:
                verdict = _chain(rs, n.EXTERNAL, _tail(fe), [
                    ((jump(n.CHAIN_MARK_MASQ),), "masquerade-all"), ((goto(verdict),), "")])
        else:
            verdict = external_chain(rs, fe, opts)
        key = (fe.ip, fe.protocol.lower(), fe.port)
        rs.elements[key] = (verdict, f"{fe.type.value} {fe.service_port}")
    return rs


def render_services(state: DesiredState, opts: RenderOptions = RenderOptions(),
                    keys: Iterable[ServiceKey] | None = None) -> dict[ServiceKey, Ruleset]:
    """Per service (all, or ``keys``): its objects; a key without frontends gets none."""
    wanted = state.services.keys() if keys is None else keys
    return {key: render_service(state.frontends_of(key), opts) for key in wanted}


def render(state: DesiredState, opts: RenderOptions = RenderOptions()) -> Ruleset:
    """The whole table for ``state``: the fixed chains and every service's objects."""
    rs = Ruleset(chains=fixed_chains(opts))
    for part in render_services(state, opts).values():
        rs.merge(part)
    return rs


# ------------------------------------------------------------------ objects


def obj(**kw: Any) -> dict[str, Any]:
    """An object of lbcore's table, for a libnftables JSON command."""
    return {"family": n.FAMILY, "table": n.TABLE, **kw}


def delete_table() -> dict[str, Any]:
    return {"nftables": [{"add": {"table": {"family": n.FAMILY, "name": n.TABLE}}},
                         {"delete": {"table": {"family": n.FAMILY, "name": n.TABLE}}}]}
