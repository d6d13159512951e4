"""The connection-tracking map (lbn_ct) read back as flows, flushed, and pruned.

The datapath owns this LRU map: it inserts one entry per direction of a translated
flow and refreshes its expiry per packet (TCP: SYN until the client's first ACK,
established, closing after one FIN, closed after both or an RST; UDP: since the last
packet). The control plane reads it (``lbcore`` status, tests, restart checks), drops
the entries of a backend that left a frontend (so the client's next packet is balanced
to a live backend), and drops entries that have expired.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from lbcore.model import FrontendAddress
from lbcore_socklb.codec import Packer
from lbcore_socklb.maps import PROTO_NAMES, address_words, dump_table, words_address

from .image import BackendAddr

DIRS = {0: "ingress", 1: "egress"}
ACTIONS = {0: "stack", 1: "redirect", 2: "dsr"}
TCP_STATES = {0: "", 1: "syn", 2: "established", 3: "closing", 4: "closed"}
# Mirrors of LBN_CT_F_* in bpf/include/lbcore/nodeport.h.
F_SNAT, F_DNAT, F_CLAMP_MSS, F_REPLY, F_DSR_IN = 0x1, 0x2, 0x4, 0x8, 0x10
PROTO_UDP = 17


class Flow(NamedTuple):
    """One lbn_ct entry: a packet (src -> dst, proto) seen in ``dir`` becomes
    (to_src -> to_dst) for the rewrites in ``rewrites``."""

    proto: str
    dir: str
    src: str  # "ip:port" (IPv6: "[ip]:port")
    dst: str
    rewrites: tuple[str, ...]  # "src=ip:port", "dst=ip:port", "dsr=ip"
    action: str
    tcp_state: str
    backend_id: int
    expires_in: float  # seconds; negative: expired


def _ep(words, port: int) -> str:
    ip = words_address(words)
    return f"[{ip}]:{socket.ntohs(port)}" if ":" in ip else f"{ip}:{socket.ntohs(port)}"


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns' clock


class Entry(NamedTuple):
    """A raw entry, fields by name (from the compiled program's layout)."""

    key: dict[str, Any]
    val: dict[str, Any]

    def words(self, side: dict[str, Any], name: str) -> tuple[int, ...]:
        return tuple(side[f"{name}.words[{i}]"] for i in range(4))


class ConntrackTable:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.key = Packer(table.Key)
        self.val = Packer(table.Leaf)

    def entries(self) -> list[tuple[tuple, Entry]]:
        kn, vn = self.key.names, self.val.names
        return [(k, Entry(dict(zip(kn, k, strict=True)), dict(zip(vn, v, strict=True))))
                for k, v in dump_table(self.table, self.key, self.val)]

    def flows(self) -> list[Flow]:
        now = _monotonic_ns()
        return [decode(e, now) for _, e in self.entries()]

    def delete(self, keys: Iterable[tuple]) -> int:
        count = 0
        for fields in keys:
            with contextlib.suppress(KeyError):
                del self.table[self.key.one(fields)]
                count += 1
        return count

    def delete_where(self, stale: Callable[[Entry], bool]) -> int:
        return self.delete([k for k, e in self.entries() if stale(e)])

    def prune_expired(self) -> int:
        now = _monotonic_ns()
        return self.delete_where(lambda e: e.val["expires"] <= now)

    def flush_backends(self, pairs: Iterable[tuple[FrontendAddress, int, BackendAddr]],
                       tcp: bool) -> int:
        """Drop the entries of flows from these frontends to these backends (both
        directions, so the SNAT port is free), and the DSR delivery entries of these
        backends (a live flow recreates its own with its next packet). UDP always;
        TCP only with ``tcp`` (established TCP may drain from a terminating pod)."""
        by_frontend: set[tuple[tuple[int, ...], int, int, int]] = set()
        delivered: set[tuple[tuple[int, ...], int, int]] = set()
        for fe, bid, b in pairs:
            proto = PROTO_UDP if fe.protocol == "UDP" else 6
            if proto != PROTO_UDP and not tcp:
                continue
            by_frontend.add((address_words(fe.ip), socket.htons(fe.port), proto, bid))
            delivered.add((address_words(b.ip), socket.htons(b.port), proto))
        if not by_frontend:
            return 0

        def stale(e: Entry) -> bool:
            k, v = e.key, e.val
            if v["flags"] & F_DSR_IN:
                return (e.words(k, "src"), k["sport"], k["proto"]) in delivered
            if v["flags"] & F_REPLY:  # replies: the frontend is what they become
                fe = (e.words(v, "to_src"), v["to_sport"])
            else:
                fe = (e.words(k, "dst"), k["dport"])
            return (*fe, k["proto"], v["backend_id"]) in by_frontend

        return self.delete_where(stale)


def decode(e: Entry, now_ns: int) -> Flow:
    k, v = e.key, e.val
    rewrites = []
    if v["flags"] & F_SNAT:
        rewrites.append(f"src={_ep(e.words(v, 'to_src'), v['to_sport'])}")
    if v["flags"] & F_DNAT:
        rewrites.append(f"dst={_ep(e.words(v, 'to_dst'), v['to_dport'])}")
    if ACTIONS.get(v["action"]) == "dsr":
        rewrites.append(f"dsr={_ep(e.words(v, 'to_dst'), v['to_dport'])}")
    return Flow(PROTO_NAMES.get(k["proto"], str(k["proto"])), DIRS.get(k["dir"], "?"),
                _ep(e.words(k, "src"), k["sport"]), _ep(e.words(k, "dst"), k["dport"]),
                tuple(rewrites), ACTIONS.get(v["action"], "?"),
                TCP_STATES.get(v["tcp_state"], "?"), v["backend_id"],
                (v["expires"] - now_ns) / 1e9)
