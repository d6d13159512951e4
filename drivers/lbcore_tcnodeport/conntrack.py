"""The connection-tracking map (lbn_ct) read back as flows, and pruned.

The datapath owns this LRU map: it inserts one entry per direction of a translated
flow and refreshes its expiry per packet (TCP: SYN until the client's first ACK,
established, closing after FIN/RST; UDP: since the last packet). The control plane
only reads it (``lbcore`` status, tests, restart checks) and drops entries that
have expired, so a full table does not wait for LRU eviction.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, NamedTuple

from lbcore_socklb.codec import Packer
from lbcore_socklb.maps import PROTO_NAMES, dump_table, words_address

DIRS = {0: "ingress", 1: "egress"}
ACTIONS = {0: "stack", 1: "redirect", 2: "dsr"}
TCP_STATES = {0: "", 1: "syn", 2: "established", 3: "closing"}
F_SNAT, F_DNAT = 0x1, 0x2


class Flow(NamedTuple):
    """One lbn_ct entry: a packet (src -> dst, proto) seen in ``dir`` becomes
    (to_src -> to_dst) for the rewrites in ``rewrites``."""

    proto: str
    dir: str
    src: str  # "ip:port"
    dst: str
    rewrites: tuple[str, ...]  # "src=ip:port", "dst=ip:port", "dsr=ip:port"
    action: str
    tcp_state: str
    backend_id: int
    expires_in: float  # seconds; negative: expired


def _ep(words, port: int) -> str:
    return f"{words_address(words)}:{socket.ntohs(port)}"


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns' clock


def decode(key: tuple, val: tuple, now_ns: int) -> Flow:
    src, dst, sport, dport, proto, direction = key[:4], key[4:8], *key[8:12]
    to_src, to_dst = val[:4], val[4:8]
    expires, to_sport, to_dport, backend_id, action, flags, state = val[8:15]
    rewrites = []
    if flags & F_SNAT:
        rewrites.append(f"src={_ep(to_src, to_sport)}")
    if flags & F_DNAT:
        rewrites.append(f"dst={_ep(to_dst, to_dport)}")
    if ACTIONS.get(action) == "dsr":
        rewrites.append(f"dsr={_ep(to_dst, to_dport)}")
    return Flow(PROTO_NAMES.get(proto, str(proto)), DIRS.get(direction, "?"),
                _ep(src, sport), _ep(dst, dport), tuple(rewrites), ACTIONS.get(action, "?"),
                TCP_STATES.get(state, "?"), backend_id, (expires - now_ns) / 1e9)


class ConntrackTable:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.key = Packer(table.Key)
        self.val = Packer(table.Leaf)

    def flows(self) -> list[Flow]:
        now = _monotonic_ns()
        return [decode(k, v, now) for k, v in dump_table(self.table, self.key, self.val)]

    def prune_expired(self) -> int:
        now = _monotonic_ns()
        dead = [k for k, v in dump_table(self.table, self.key, self.val) if v[8] <= now]
        for fields in dead:
            with contextlib.suppress(KeyError):
                del self.table[self.key.one(fields)]
        return len(dead)
