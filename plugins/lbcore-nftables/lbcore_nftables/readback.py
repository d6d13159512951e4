"""Read back: the kernel's JSON listing of ``ip lbcore`` -> ``FrontendState``.

Walks what the kernel holds — the service map's elements, then the verdict chains
(external -> pick -> endpoint -> dnat) — never the driver's memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lbcore.model import BackendState, FrontendAddress, FrontendState

from . import naming as n


def _targets(exprs: Iterable[Any]) -> list[str]:
    """Chains a rule's expressions go to (goto/jump, also inside a numgen vmap)."""
    out: list[str] = []
    for e in exprs:
        if not isinstance(e, dict):
            continue
        for verb in ("goto", "jump"):
            if verb in e:
                out.append(e[verb]["target"])
        if "vmap" in e and isinstance(e["vmap"].get("data"), dict):
            for _key, verdict in e["vmap"]["data"].get("set", []):
                out += _targets([verdict])
    return out


class Table:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.rules: dict[str, list[list[Any]]] = {}
        self.chains: list[str] = []
        self.sets: dict[str, int] = {}
        self.elements: list[tuple[tuple[str, str, int], str, str]] = []
        for obj in objects:
            if "chain" in obj:
                self.chains.append(obj["chain"]["name"])
            elif "rule" in obj:
                self.rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])
            elif "set" in obj:
                self.sets[obj["set"]["name"]] = obj["set"].get("timeout", 0)
            elif "map" in obj and obj["map"]["name"] == n.SERVICES_MAP:
                for key, verdict in obj["map"].get("elem", []):
                    comment = ""
                    if "elem" in key:
                        comment, key = key["elem"].get("comment", ""), key["elem"]["val"]
                    ip, proto, port = key["concat"]
                    self.elements.append(((ip, proto, int(port)), _targets([verdict])[0],
                                          comment))

    def backends(self, chain: str, seen: frozenset[str] = frozenset()) -> list[BackendState]:
        """Endpoints reachable from ``chain`` (dnat targets), in rule order."""
        if chain in seen or chain == n.CHAIN_MARK_MASQ:
            return []
        out: list[BackendState] = []
        for exprs in self.rules.get(chain, []):
            for e in exprs:
                if isinstance(e, dict) and "dnat" in e:
                    out.append(BackendState(e["dnat"]["addr"], int(e["dnat"]["port"])))
            for target in _targets(exprs):
                for b in self.backends(target, seen | {chain}):
                    if b not in out:
                        out.append(b)
        return out

    def frontends(self) -> list[FrontendState]:
        out = []
        for i, ((ip, proto, port), verdict, comment) in enumerate(sorted(self.elements), 1):
            kind, _, service = comment.partition(" ")
            out.append(FrontendState(
                i, FrontendAddress(ip, port, proto.upper()), kind or "unknown",
                tuple(self.backends(verdict)), service,
                ("no-endpoints",) if verdict == n.CHAIN_REJECT else ()))
        return out
