"""A parsed ruleset: ``iptables-save`` / ``iptables-restore`` text -> chains of rules.

Understands the matches and targets this driver writes (and kube-proxy writes); the
tracer walks the result and the nft flavour of read back uses it. Unknown options are
kept in ``Rule.other`` so nothing is silently dropped.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Rule:
    chain: str
    src: str | None = None
    src_neg: bool = False
    dst: str | None = None
    proto: str | None = None
    dport: int | None = None
    comment: str = ""
    probability: float | None = None  # -m statistic --mode random
    recent: str | None = None  # "rcheck" | "set"
    recent_name: str = ""
    recent_seconds: int | None = None
    src_type: str | None = None  # -m addrtype --src-type
    dst_type: str | None = None
    mark: tuple[bool, int, int] | None = None  # (negated, value, mask)
    ctstate: str | None = None
    target: str = ""
    to_destination: str | None = None
    set_xmark: tuple[int, int] | None = None
    other: list[str] = field(default_factory=list)


@dataclass
class Ruleset:
    """``tables[table][chain]`` -> rules in order; ``deleted`` chains (``-X``) per table."""

    tables: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)
    # read back: rules python-iptables had to print with save() (not part of equality)
    slow_rules: int = field(default=0, compare=False)

    def chain(self, table: str, name: str) -> list[Rule]:
        return self.tables.get(table, {}).get(name, [])

    def chains(self, table: str) -> dict[str, list[Rule]]:
        return self.tables.setdefault(table, {})


def _mark(value: str) -> tuple[int, int]:
    v, _, m = value.partition("/")
    return int(v, 16), int(m or "0xffffffff", 16)


def parse_rule(chain: str, words: list[str]) -> Rule:
    rule = Rule(chain)
    i, neg = 0, False
    while i < len(words):
        w = words[i]
        arg = words[i + 1] if i + 1 < len(words) else ""
        if w == "!":
            neg, i = True, i + 1
            continue
        step = 2
        if w in ("-s", "--source"):
            rule.src, rule.src_neg = arg, neg
        elif w in ("-d", "--destination"):
            rule.dst = arg
        elif w in ("-p", "--protocol"):
            rule.proto = arg.lower()
        elif w == "--dport":
            rule.dport = int(arg)
        elif w == "--comment":
            rule.comment = arg
        elif w == "--probability":
            rule.probability = float(arg)
        elif w in ("--rcheck", "--set"):
            rule.recent, step = w[2:], 1
        elif w == "--name":
            rule.recent_name = arg
        elif w == "--seconds":
            rule.recent_seconds = int(arg)
        elif w == "--src-type":
            rule.src_type = arg
        elif w == "--dst-type":
            rule.dst_type = arg
        elif w == "--mark":
            rule.mark = (neg, *_mark(arg))
        elif w == "--ctstate":
            rule.ctstate = arg
        elif w in ("-j", "--jump", "-g"):
            rule.target = arg
        elif w == "--to-destination":
            rule.to_destination = arg
        elif w == "--set-xmark":
            rule.set_xmark = _mark(arg)
        elif w in ("-m", "--match", "--mode", "--mask", "--reject-with"):
            pass  # module names and options whose value we do not need
        elif w in ("--rsource", "--reap", "--random-fully"):
            step = 1
        else:
            rule.other.append(w)
            step = 1
        neg = False
        i += step
    return rule


def parse(text: str | Iterable[str]) -> Ruleset:
    """Parse restore/save text (several tables; ``-A``, ``:CHAIN``, ``-X``)."""
    rs = Ruleset()
    table = ""
    lines = text.splitlines() if isinstance(text, str) else text
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            rs.chains(table)
        elif line.startswith(":"):
            rs.chains(table).setdefault(line[1:].split()[0], [])
        elif line.startswith("-X "):
            rs.deleted.setdefault(table, set()).add(line.split()[1])
        elif line.startswith(("-A ", "-I ")):
            words = shlex.split(line)
            chain = words[1]
            rest = words[2:]
            if words[0] == "-I" and rest and rest[0].isdigit():
                rest = rest[1:]
            rule = parse_rule(chain, rest)
            rules = rs.chains(table).setdefault(chain, [])
            if words[0] == "-I":
                rules.insert(0, rule)
            else:
                rules.append(rule)
    return rs
