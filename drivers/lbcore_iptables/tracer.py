"""Pure: walk a rendered ruleset for one packet and say what can happen to it.

``trace(ruleset, Packet(src, proto, dst, port), hook)`` follows the packet through nat
``PREROUTING`` (it arrived from a pod or from outside) or ``OUTPUT`` (a process on the
node sent it), then the filter table, then nat ``POSTROUTING``, branching at every
``statistic`` rule, and returns the possible outcomes with their probabilities:
``DNAT ip:port`` (with masquerade or not), ``REJECT``, ``DROP`` or ``ACCEPT`` (untouched).
A ``recent --rcheck`` rule is taken as missed (a first packet, no affinity yet); a
``recent --set`` is reported as ``affinity``. Packet-flow tables built from these are
what the golden and unit tests compare, rather than strings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from .render import HOOKS
from .ruleset import Rule, Ruleset, parse_rule

BUILTIN = {"nat": ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT"),
           "filter": ("INPUT", "FORWARD", "OUTPUT")}
TERMINAL = ("ACCEPT", "DROP", "REJECT", "DNAT", "MASQUERADE", "SNAT")


@dataclass(frozen=True)
class Packet:
    src: str
    proto: str  # tcp | udp | sctp
    dst: str
    dport: int


@dataclass(frozen=True)
class Outcome:
    verdict: str  # DNAT | REJECT | DROP | ACCEPT
    endpoint: str | None = None  # ip:port after DNAT
    masquerade: bool = False
    affinity: bool = False

    def __str__(self) -> str:
        text = self.verdict if self.endpoint is None else f"{self.verdict} {self.endpoint}"
        return text + (" masq" if self.masquerade else "") + (" affinity" if self.affinity else "")


@dataclass(frozen=True)
class _State:
    mark: int = 0
    dnat: str | None = None
    verdict: str | None = None
    affinity: bool = False


@lru_cache(maxsize=4096)
def _net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def with_hooks(rs: Ruleset) -> Ruleset:
    """``rs`` plus the built-in chains' jumps, for built-in chains it does not hold
    (rendered text never does; ``iptables-save`` text holds them with their jumps)."""
    present = {(table, chain) for table, chains in rs.tables.items() for chain in chains}
    for table, chain, spec in HOOKS:
        if (table, chain) not in present:
            rs.chains(table).setdefault(chain, []).append(parse_rule(chain, shlex.split(spec)))
    return rs


class _Walker:
    def __init__(self, rs: Ruleset, table: str, pkt: Packet, local: frozenset[str]) -> None:
        self.chains, self.pkt, self.local = rs.chains(table), pkt, local

    def matches(self, r: Rule, st: _State) -> bool:
        p = self.pkt
        ip = ipaddress.ip_address
        if r.src is not None and (ip(p.src) in _net(r.src)) == r.src_neg:
            return False
        if r.dst is not None and ip(p.dst) not in _net(r.dst):
            return False
        if r.proto is not None and r.proto != p.proto:
            return False
        if r.dport is not None and r.dport != p.dport:
            return False
        if r.src_type == "LOCAL" and p.src not in self.local:
            return False
        if r.dst_type == "LOCAL" and p.dst not in self.local:
            return False
        if r.mark is not None:
            neg, value, mask = r.mark
            if ((st.mark & mask) == value) == neg:
                return False
        return not (r.ctstate is not None and "NEW" not in r.ctstate.split(","))

    def run(self, chain: str, st: _State, weight: float, depth: int = 0
            ) -> list[tuple[float, _State]]:
        """Paths out of ``chain``: terminal (``verdict`` set) or returned to the caller."""
        if depth > 32:
            raise ValueError(f"chain loop through {chain}")
        done: list[tuple[float, _State]] = []
        active = [(weight, st)]
        for r in self.chains.get(chain, []):
            nxt: list[tuple[float, _State]] = []
            for w, s in active:
                if not self.matches(r, s) or r.recent == "rcheck":
                    nxt.append((w, s))
                    continue
                if r.probability is not None:
                    if r.probability < 1:
                        nxt.append((w * (1 - r.probability), s))
                    w *= r.probability
                if r.recent == "set":
                    s = dataclasses.replace(s, affinity=True)
                self._target(r, w, s, depth, done, nxt)
            active = nxt
        return done + active

    def _target(self, r: Rule, w: float, s: _State, depth: int,
                done: list[tuple[float, _State]], nxt: list[tuple[float, _State]]) -> None:
        t = r.target
        if not t:
            nxt.append((w, s))
        elif t == "RETURN":
            done.append((w, dataclasses.replace(s, verdict="RETURN")))
        elif t == "MARK" and r.set_xmark is not None:
            value, mask = r.set_xmark
            nxt.append((w, dataclasses.replace(s, mark=(s.mark & ~mask) ^ value)))
        elif t == "DNAT":
            done.append((w, dataclasses.replace(s, dnat=r.to_destination, verdict="DNAT")))
        elif t in TERMINAL:
            done.append((w, dataclasses.replace(s, verdict=t)))
        elif t in self.chains:
            for w2, s2 in self.run(t, s, w, depth + 1):
                if s2.verdict == "RETURN":
                    nxt.append((w2, dataclasses.replace(s2, verdict=None)))
                elif s2.verdict:
                    done.append((w2, s2))
                else:
                    nxt.append((w2, s2))
        else:
            raise ValueError(f"rule in {r.chain} jumps to undefined chain {t}")


def trace(rs: Ruleset, pkt: Packet, hook: str = "PREROUTING",
          local: Iterable[str] = ()) -> dict[Outcome, float]:
    """Possible outcomes of ``pkt`` entering at ``hook`` (PREROUTING | OUTPUT), with
    probabilities. ``local`` are the node's own addresses (``addrtype LOCAL``)."""
    local_set = frozenset(local) | {pkt.src} if hook == "OUTPUT" else frozenset(local)
    out: dict[Outcome, float] = {}
    for w, st in _Walker(rs, "nat", pkt, local_set).run(hook, _State(), 1.0):
        dst, port = pkt.dst, pkt.dport
        if st.dnat:
            host, _, p = st.dnat.rpartition(":")
            dst, port = host.strip("[]"), int(p)
        after = Packet(pkt.src, pkt.proto, dst, port)
        fchain = "OUTPUT" if hook == "OUTPUT" else "INPUT" if dst in local_set else "FORWARD"
        verdict = "ACCEPT"
        fstate = dataclasses.replace(st, verdict=None)
        for _w, fst in _Walker(rs, "filter", after, local_set).run(fchain, fstate, 1.0):
            verdict = fst.verdict if fst.verdict in ("DROP", "REJECT") else "ACCEPT"
            break  # the filter rules this driver writes never branch
        masq = False
        if verdict == "ACCEPT" and fchain != "INPUT":
            post = _Walker(rs, "nat", after, local_set).run("POSTROUTING", fstate, 1.0)
            masq = any(s.verdict == "MASQUERADE" for _, s in post)
        if verdict != "ACCEPT":
            outcome = Outcome(verdict)
        elif st.dnat:
            outcome = Outcome("DNAT", st.dnat, masq, st.affinity)
        else:
            outcome = Outcome("ACCEPT", None, masq)
        out[outcome] = out.get(outcome, 0.0) + w
    return out


def format_trace(result: dict[Outcome, float]) -> str:
    """``DNAT 10.0.1.1:80 0.500 | DNAT 10.0.1.2:80 0.500`` (sorted, 3 decimals)."""
    return " | ".join(f"{o} {p:.3f}" for o, p in sorted(result.items(), key=lambda i: str(i[0])))
