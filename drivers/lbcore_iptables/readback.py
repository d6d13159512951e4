"""Read back: the live nat and filter tables -> the rows of ``lbcore services``.

The legacy tables are read with python-iptables (``iptc``, libiptc in-process) in a
forked child that ``setns()``-es into the driver's namespace first (libiptc opens its
socket in the caller's namespace), so the agent's own threads never change namespace;
one child per IP family (libxtables holds one family per process). Each rule's raw
entry, as libiptc hands it out, is decoded by :mod:`.xtdecode`; only what that does not
know goes through python-iptables' ``Rule`` objects and the extensions' ``save()``
(``_from_iptc``, the slow path: ~15x the time per rule). The nft flavour (which ``iptc``
cannot read) is read through ``iptables-nft-save``. Either way the result is a
:class:`Ruleset`, turned into ``FrontendState`` rows by the pure :func:`frontends`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import ipaddress
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lbcore.model import BackendState, FrontendAddress, FrontendState
from lbcore.netns import in_netns

from .ruleset import Rule, Ruleset, parse, parse_rule
from .xtdecode import decode_entry

NAME = "iptables"
TYPE_OF = {"cluster IP": "ClusterIP", "external IP": "ExternalIP",
           "loadbalancer IP": "LoadBalancer", "nodePort": "NodePort"}


def _cidr(text: str) -> tuple[bool, str | None]:
    neg = text.startswith("!")
    net = ipaddress.ip_network(text.lstrip("!"), strict=False)
    return neg, None if net.prefixlen == 0 and not neg else str(net)


def _from_iptc(chain: str, r: Any) -> Rule:
    """The slow, general path: an ``iptc.Rule``, its parameters printed by save()."""
    words: list[str] = []
    for flag, value in (("-i", r.in_interface), ("-o", r.out_interface)):
        if value:  # as iptables-save prints them, so parse() keeps them in Rule.other
            words += ["!", flag, value[1:]] if value.startswith("!") else [flag, value]
    for m in r.matches:
        words += ["-m", m.name]
        for key, values in m.get_all_parameters().items():
            neg = bool(values) and values[0] == "!"
            words += (["!"] if neg else []) + [f"--{key}", *values[1 if neg else 0:]]
    target = r.target
    words += ["-j", target.name]
    for key, values in target.get_all_parameters().items():
        words += [f"--{key}", *values]
    rule = parse_rule(chain, words)
    rule.src_neg, rule.src = _cidr(r.src)
    _, rule.dst = _cidr(r.dst)
    rule.proto = None if r.protocol in ("ip", "all") else r.protocol
    return rule


def _read_chain(table: Any, chain: Any, family: int, protocols: dict[int, str],
                rs: Ruleset) -> list[Rule]:
    """The rules of ``chain``: each raw entry decoded, else read through ``iptc.Rule``."""
    rules: list[Rule] = []
    entry = table.first_rule(chain.name)
    while entry:
        raw = ctypes.string_at(ctypes.addressof(entry), entry.next_offset)
        target = (table.get_target(entry) or b"").decode()
        rule = decode_entry(chain.name, raw, target, family, protocols)
        if rule is None:
            rule = _from_iptc(chain.name, table.create_rule(entry, chain))
            rs.slow_rules += 1
        rules.append(rule)
        entry = table.next_rule(entry)
    return rules


def read_iptc(tables: Iterable[str] = ("nat", "filter"), family: int = 4,
              decode: bool = True) -> Ruleset:
    """The given legacy tables of ``family`` through libiptc (libip6tc for 6), in the
    current namespace. ``decode=False``: every rule through ``iptc.Rule`` and save()
    (the slow path, kept to check the decoder against)."""
    import iptc

    rs = Ruleset()
    protocols = (iptc.Rule6 if family == 6 else iptc.Rule).protocols
    with _no_gc():
        _read_tables(iptc, tables, family, decode, protocols, rs)
    return rs


def _read_tables(iptc: Any, tables: Iterable[str], family: int, decode: bool,
                 protocols: dict[int, str], rs: Ruleset) -> None:
    for name in tables:
        table = iptc.Table6(name) if family == 6 else iptc.Table(name)
        table.refresh()  # a fresh handle: this process may have just changed namespace
        chains = rs.chains(name)
        for chain in table.chains:
            if decode:
                chains[chain.name] = _read_chain(table, chain, family, protocols, rs)
            else:
                chains[chain.name] = [_from_iptc(chain.name, r) for r in chain.rules]
                rs.slow_rules += len(chains[chain.name])


def read_ruleset(netns_path: str | None, backend: str, save: Callable[[str], str],
                 family: int = 4, decode: bool = True) -> Ruleset:
    """The live nat and filter tables of ``family``; ``save(table)`` is the family's
    ``iptables-save`` (used for the nft flavour)."""
    if backend == "nft":
        return parse(save("nat") + save("filter"))
    import iptc  # noqa: F401 - loaded before fork, so the child need not

    # Always in a forked child, also for the current namespace: libxtables keeps one
    # family per process, and python-iptables reading ip6tables after iptables in one
    # process fails ("can't find target MASQUERADE").
    here = f"/proc/{os.getpid()}/ns/net"
    packed = in_netns("iptables", netns_path or here, _read_packed, family, decode)
    return _unpack(*packed)


# A Ruleset crosses the pipe from the reading child as plain tuples: pickling 320,000
# Rule objects and rebuilding them costs more than reading them (~7 s of 13 s at
# 10,000 services x 10 endpoints); tuples of str/int go through pickle several times faster.
_FIELDS = [f.name for f in dataclasses.fields(Rule)]
_VALUES = operator.attrgetter(*_FIELDS)


def _read_packed(family: int, decode: bool) -> tuple[dict, int]:
    rs = read_iptc(("nat", "filter"), family, decode)
    return ({table: {chain: [_VALUES(r) for r in rules] for chain, rules in chains.items()}
             for table, chains in rs.tables.items()}, rs.slow_rules)


def _unpack(tables: dict, slow_rules: int) -> Ruleset:
    with _no_gc():
        return Ruleset({table: {chain: [Rule(*values) for values in rules]
                                for chain, rules in chains.items()}
                        for table, chains in tables.items()}, slow_rules=slow_rules)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No collections while a read back builds ~10 objects per rule, none of them in a
    cycle (at 10,000 services x 10 the passes over them cost seconds)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------- pure: rows


def _endpoints(rs: Ruleset, chain: str, depth: int = 0) -> tuple[list[str], list[str]]:
    """(ip:port of the endpoints ``chain`` can DNAT to, flags) following its jumps."""
    rules = rs.chain("nat", chain)
    if chain.startswith("KUBE-SEP-"):
        return [r.to_destination for r in rules if r.to_destination], []
    flags: list[str] = []
    if chain.startswith("KUBE-EXT-") and any(r.target.startswith("KUBE-SVL-") for r in rules):
        rules = [r for r in rules if r.target.startswith("KUBE-SVL-")]  # external view
        flags.append("externalTrafficPolicy=Local")
    if chain.startswith("KUBE-FW-"):
        flags.append("sourceRanges=" + ",".join(r.src for r in rules if r.src))
    seconds = {r.recent_seconds for r in rules if r.recent == "rcheck" and r.recent_seconds}
    if seconds:
        flags.append(f"affinity={min(seconds)}s")
    out: list[str] = []
    for r in rules:
        if r.recent == "rcheck" or depth > 8 or not r.target.startswith("KUBE-"):
            continue
        if r.target in ("KUBE-MARK-MASQ", "KUBE-MARK-DROP"):
            continue
        eps, more = _endpoints(rs, r.target, depth + 1)
        out += [e for e in eps if e not in out]
        flags += [f for f in more if f not in flags]
    return out, flags


def _row(address: FrontendAddress, kind: str, service: str, eps: list[str],
         flags: list[str]) -> FrontendState:
    backends = tuple(sorted(BackendState(ip.strip("[]"), int(port)) for ip, _, port in
                            (e.rpartition(":") for e in eps)))
    return FrontendState(0, address, kind, backends, service, tuple(flags))


def frontends(rs: Ruleset) -> list[FrontendState]:
    """Pure: the frontends a ruleset serves (or rejects), with their endpoints."""
    rows: list[FrontendState] = []
    node_ips = [r.dst.split("/")[0] for r in rs.chain("nat", "KUBE-SERVICES")
                if r.target == "KUBE-NODEPORTS" and r.dst]
    for r in rs.chain("nat", "KUBE-SERVICES"):
        for suffix, kind in TYPE_OF.items():
            if r.comment.endswith(" " + suffix) and r.dst and r.dport and r.proto:
                eps, flags = _endpoints(rs, r.target)
                if r.target.startswith("KUBE-SVL-"):
                    flags.insert(0, "internalTrafficPolicy=Local")
                addr = FrontendAddress(r.dst.split("/")[0], r.dport, r.proto.upper())
                rows.append(_row(addr, kind, r.comment[: -len(suffix) - 1], eps, flags))
    for r in rs.chain("nat", "KUBE-NODEPORTS"):
        if r.dport and r.proto:
            eps, flags = _endpoints(rs, r.target)
            rows += [_row(FrontendAddress(ip, r.dport, r.proto.upper()), "NodePort",
                          r.comment, eps, flags) for ip in node_ips]
    for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
        for r in rs.chain("filter", chain):
            sp, _, what = r.comment.partition(" ")
            kind = TYPE_OF.get(what.removesuffix(" has no endpoints"))
            if r.target != "REJECT" or kind is None or not (r.dport and r.proto):
                continue
            ips = node_ips if r.dst is None else [r.dst.split("/")[0]]
            rows += [_row(FrontendAddress(ip, r.dport, r.proto.upper()), kind, sp, [],
                          ["no endpoints: REJECT"]) for ip in ips]
    rows.sort(key=lambda s: (s.address.ip, s.address.port, s.address.protocol, s.type))
    return [FrontendState(i, s.address, s.type, s.backends, s.service, s.flags)
            for i, s in enumerate(rows, start=1)]
