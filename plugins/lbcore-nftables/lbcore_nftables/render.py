"""Pure rendering: ``DesiredState`` -> the objects of lbcore's nftables table, and the one
libnftables JSON transaction that makes the kernel hold them. No kernel access here.

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

Pick and endpoint chains are content-addressed (their names hash what they hold), so the
transaction flushes and rewrites every chain, adds the new ones and deletes the ones no
longer wanted — all in one atomic libnftables transaction. Affinity sets survive syncs
(their names hash the endpoint chain and the timeout).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbcore.model import Backend, DesiredState, Frontend, FrontendType

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
    """Everything the table should hold."""

    chains: dict[str, list[Rule]] = field(default_factory=dict)  # name -> rules, in order
    sets: dict[str, int] = field(default_factory=dict)  # affinity set -> timeout (s)
    elements: dict[tuple[str, str, int], tuple[str, str]] = field(default_factory=dict)
    # (ip, proto, port) -> (verdict chain, comment "<type> ns/svc:port")


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


def endpoint_chain(rs: Ruleset, fe: Frontend, be: Backend) -> str:
    """``endpoint-H-...__ip/port``: hairpin masquerade, affinity update, dnat."""
    t = f"{_tail(fe)}__{be.ip}/{be.port}"
    aff = fe.session_affinity_timeout
    name = n.name(n.ENDPOINT, t, f"{t}|{fe.protocol}|{aff}")
    if name in rs.chains:
        return name
    rules: list[Rule] = [((match(SADDR, be.ip), jump(n.CHAIN_MARK_MASQ)), "hairpin")]
    if aff is not None:
        aset = n.name(n.AFFINITY, t, f"{name}|{aff}")
        rs.sets[aset] = aff
        rules.append((({"set": {"op": "update", "elem": SADDR, "set": f"@{aset}"}},), ""))
    rules.append(((match(L4PROTO, fe.protocol.lower()), {"dnat": {"addr": be.ip,
                                                                  "port": be.port}}),
                  fe.service_port))
    rs.chains[name] = rules
    return name


def pick_chain(rs: Ruleset, fe: Frontend, backends: Iterable[Backend]) -> str:
    """``service-H-...``: affinity matches, then ``numgen random mod N vmap``; or the
    reject chain when there is no endpoint."""
    eps = [endpoint_chain(rs, fe, be) for be in backends]
    if not eps:
        return n.CHAIN_REJECT
    name = n.name(n.PICK, _tail(fe), "|".join(eps))
    if name in rs.chains:
        return name
    rules: list[Rule] = []
    if fe.session_affinity_timeout is not None:
        for ep in eps:
            aset = n.name(n.AFFINITY, ep.split("-", 2)[2],
                          f"{ep}|{fe.session_affinity_timeout}")
            rules.append(((match(SADDR, f"@{aset}"), goto(ep)), "affinity"))
    choose = {"vmap": {"key": {"numgen": {"mode": "random", "mod": len(eps), "offset": 0}},
                       "data": {"set": [[i, goto(ep)] for i, ep in enumerate(eps)]}}}
    rules.append(((choose,), fe.service_port))
    rs.chains[name] = rules
    return name


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
    name = n.name(n.EXTERNAL, _tail(fe), repr(rules))
    rs.chains.setdefault(name, rules)
    return name


def render(state: DesiredState, opts: RenderOptions = RenderOptions()) -> Ruleset:
    """The table for ``state`` (IPv4 frontends; the driver claims IPv4 only)."""
    rs = Ruleset(chains=fixed_chains(opts))
    for fe in state.frontends:
        if fe.family != 4:
            continue
        if fe.type is FrontendType.CLUSTER_IP:
            verdict = pick_chain(rs, fe, fe.backends)
            if opts.masquerade_all and verdict != n.CHAIN_REJECT:
                verdict = _masq_first(rs, fe, verdict)
        else:
            verdict = external_chain(rs, fe, opts)
        key = (fe.ip, fe.protocol.lower(), fe.port)
        rs.elements[key] = (verdict, f"{fe.type.value} {fe.service_port}")
    return rs


def _masq_first(rs: Ruleset, fe: Frontend, then: str) -> str:
    rules: list[Rule] = [((jump(n.CHAIN_MARK_MASQ),), "masquerade-all"), ((goto(then),), "")]
    name = n.name(n.EXTERNAL, _tail(fe), f"masq|{then}")
    rs.chains.setdefault(name, rules)
    return name


# ------------------------------------------------------------------ transaction


def _obj(**kw: Any) -> dict[str, Any]:
    return {"family": n.FAMILY, "table": n.TABLE, **kw}


def transaction(rs: Ruleset, existing_chains: Iterable[str] = (),
                existing_sets: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One libnftables JSON document: add what is missing, flush and rewrite every chain
    and the service map, delete chains and sets no longer wanted. Atomic in the kernel."""
    existing = set(existing_chains)
    old_sets = dict(existing_sets or {})
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": n.FAMILY, "name": n.TABLE}}}]
    for name in rs.chains:
        spec: dict[str, Any] = {"name": name}
        if name in n.BASE_CHAINS:
            kind, hook, prio = n.BASE_CHAINS[name]
            spec.update(type=kind, hook=hook, prio=prio, policy="accept")
        cmds.append({"add": {"chain": _obj(**spec)}})
    cmds.append({"add": {"map": _obj(name=n.SERVICES_MAP, map="verdict",
                                     type=["ipv4_addr", "inet_proto", "inet_service"])}})
    for name, timeout in sorted(rs.sets.items()):
        if name in old_sets:  # kept with its entries (the kernel flagged it dynamic)
            continue
        cmds.append({"add": {"set": _obj(name=name, type="ipv4_addr", flags=["timeout"],
                                         timeout=timeout)}})
    cmds.append({"flush": {"map": _obj(name=n.SERVICES_MAP)}})
    for name in sorted(set(rs.chains) | existing):
        cmds.append({"flush": {"chain": _obj(name=name)}})
    for name, rules in rs.chains.items():
        for exprs, comment in rules:
            rule = _obj(chain=name, expr=list(exprs))
            if comment:
                rule["comment"] = comment
            cmds.append({"add": {"rule": rule}})
    if rs.elements:
        elems = [[{"elem": {"val": {"concat": list(key)}, "comment": comment}}, goto(verdict)]
                 for key, (verdict, comment) in sorted(rs.elements.items())]
        cmds.append({"add": {"element": _obj(name=n.SERVICES_MAP, elem=elems)}})
    for name in sorted(existing - set(rs.chains)):
        cmds.append({"delete": {"chain": _obj(name=name)}})
    for name in sorted(set(old_sets) - set(rs.sets)):
        cmds.append({"delete": {"set": _obj(name=name)}})
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def delete_table() -> dict[str, Any]:
    return {"nftables": [{"add": {"table": {"family": n.FAMILY, "name": n.TABLE}}},
                         {"delete": {"table": {"family": n.FAMILY, "name": n.TABLE}}}]}
