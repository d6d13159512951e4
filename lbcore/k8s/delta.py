"""A good snapshot, some objects taken out and some put in: the next snapshot, in
O(objects changed) — for :mod:`lbcore.k8s.incremental`.

* :func:`patched` rebuilds only the entries the changed objects touch; everything else
  is the very object of the previous snapshot (also each untouched service's slices
  tuple: the change tracker compares by identity). Mappings stay sorted as
  ``convert._index`` sorts them.
* :class:`Owners` is what the API server's allocators hold — which object has each
  kind/name, node port and cluster IP — so that a change can be checked against the
  rest of the file without visiting it. It only *detects* a conflict; the caller then
  words the errors with ``convert``'s own checks over the whole file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ..model import ClusterObjects, EndpointSlice, Node, Service, ServiceKey
from .convert import _Parsed

Delta = list[tuple[_Parsed, int]]  # (object, +1 added / -1 removed)


def patched(previous: ClusterObjects, delta: Delta) -> ClusterObjects:
    """``previous`` with ``delta`` applied (removals are applied before additions)."""
    services: dict[ServiceKey, Service | None] = {}
    nodes: dict[str, Node | None] = {}
    slices_out: dict[ServiceKey, set[int]] = {}  # id() of slices that left
    slices_in: dict[ServiceKey, list[EndpointSlice]] = {}
    for p, sign in sorted(delta, key=lambda d: d[1]):  # -1 first
        v = p.value
        if isinstance(v, Service):
            services[v.key] = v if sign > 0 else None
        elif isinstance(v, Node):
            nodes[v.name] = v if sign > 0 else None
        elif isinstance(v, EndpointSlice):
            if sign > 0:
                slices_in.setdefault(v.service, []).append(v)
            else:
                slices_out.setdefault(v.service, set()).add(id(v))
    slices: dict[ServiceKey, tuple[EndpointSlice, ...] | None] = {}
    for key in slices_out.keys() | slices_in.keys():
        gone = slices_out.get(key, set())
        kept = [s for s in previous.slices.get(key, ()) if id(s) not in gone]
        now = sorted(kept + slices_in.get(key, []), key=lambda s: s.name)
        slices[key] = tuple(now) or None
    return ClusterObjects(_patched(previous.services, services),
                          _patched(previous.slices, slices), _patched(previous.nodes, nodes))


def _patched(mapping: Mapping[Any, Any], changes: dict[Any, Any]) -> Mapping[Any, Any]:
    if not changes:
        return mapping
    out = dict(mapping)
    resort = False
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)  # a sorted dict stays sorted
        else:
            resort |= key not in out
            out[key] = value
    return MappingProxyType(dict(sorted(out.items())) if resort else out)


class Owners:
    """Who holds each name, node port and cluster IP in the last good snapshot (where
    nothing is held twice): ``(kind, ns/name)`` names; port/IP -> (service, count)."""

    def __init__(self) -> None:
        self.names: set[tuple[str, str]] = set()
        self.node_ports: dict[int, tuple[str, int]] = {}
        self.cluster_ips: dict[str, tuple[str, int]] = {}

    def conflict(self, delta: Delta) -> bool:
        """Would the snapshot with ``delta`` applied hold anything twice?"""
        names, ports, ips = self._after(delta)
        return (any(n > 1 for n in names.values())
                or any(_holders(c) > 1 for c in ports.values())
                or any(_holders(c) > 1 for c in ips.values()))

    def apply(self, delta: Delta) -> None:
        """Take ``delta`` in (after ``conflict`` said no)."""
        names, ports, ips = self._after(delta)
        for key, n in names.items():
            if n > 0:
                self.names.add(key)
            else:
                self.names.discard(key)
        for counts, held in ((ports, self.node_ports), (ips, self.cluster_ips)):
            for thing, c in counts.items():
                owner = next(((name, n) for name, n in c.items() if n > 0), None)
                if owner is None:
                    held.pop(thing, None)  # type: ignore[call-overload]
                else:
                    held[thing] = owner  # type: ignore[index]

    def _after(self, delta: Delta) -> tuple[Counter[tuple[str, str]], dict[int, Counter[str]],
                                            dict[str, Counter[str]]]:
        """The counts ``delta`` touches, as they would be after it."""
        names: Counter[tuple[str, str]] = Counter()
        ports: dict[int, Counter[str]] = {}
        ips: dict[str, Counter[str]] = {}
        for p, sign in delta:
            if p.name:
                key = (p.kind, p.name)
                if key not in names:
                    names[key] = 1 if key in self.names else 0
                names[key] += sign
            if isinstance(p.value, Service):
                for counts, held, things in ((ports, self.node_ports, _node_ports(p.value)),
                                             (ips, self.cluster_ips, _cluster_ips(p.value))):
                    for thing in things:
                        c = counts.get(thing)
                        if c is None:
                            c = counts[thing] = Counter()
                            if thing in held:
                                name, n = held[thing]  # type: ignore[index]
                                c[name] = n
                        c[p.name] += sign
        return names, ports, ips


def _holders(counts: Counter[str]) -> int:
    return sum(1 for n in counts.values() if n > 0)


def _node_ports(svc: Service) -> Iterator[int]:
    return (p.node_port for p in svc.ports if p.node_port is not None)


def _cluster_ips(svc: Service) -> Iterable[str]:
    return () if svc.headless else svc.cluster_ips
