"""Delete stale UDP conntrack entries (kubernetes#48370), through pyroute2's netlink.

A UDP "connection" to a frontend stays DNATed to the endpoint conntrack chose first for
as long as the client keeps sending; once that endpoint leaves the service the client
is black-holed. After a sync, entries whose original destination is a UDP frontend and
whose reply comes from a removed endpoint are deleted, as are all entries of a UDP
frontend that had no endpoints before, or did not exist (a client that sent before the
rules were in place holds an entry that was never DNATed and would keep it). Both IP
families: IPv6 entries are dumped and deleted through an ``AF_INET6`` conntrack socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from lbcore.netns import in_netns

log = logging.getLogger(__name__)

# (frontend ip, port) -> endpoints removed, or None: every entry of the frontend
Stale = dict[tuple[str, int], frozenset[tuple[str, int]] | None]


def flush_stale_udp(netns_path: str | None, stale: Stale) -> int:
    """Delete the stale entries in the namespace at ``netns_path`` (None: the current
    one); returns how many were deleted."""
    if not stale:
        return 0
    deleted = in_netns("iptables", netns_path, _flush, stale)
    if deleted:
        log.info("iptables: deleted %d stale UDP conntrack entries", deleted)
    return deleted


def _flush(stale: Stale) -> int:
    deleted = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        mine = {fe: removed for fe, removed in stale.items()
                if (":" in fe[0]) == (family == socket.AF_INET6)}
        if mine:
            deleted += _flush_family(family, mine)
    return deleted


def _flush_family(family: int, stale: Stale) -> int:
    """One dump of the family's table, matched here: pyroute2 0.9's ``tuple_orig``
    dump filter finds no IPv6 entry at all (checked against ``conntrack -L -f ipv6``)."""
    from pyroute2 import Conntrack

    deleted = 0
    ct = Conntrack(nfgen_family=family)
    try:
        for entry in list(ct.dump_entries()):
            orig, reply = entry.tuple_orig, entry.tuple_reply
            if orig.proto != socket.IPPROTO_UDP or (orig.daddr, orig.dport) not in stale:
                continue
            removed = stale[orig.daddr, orig.dport]
            if removed is not None and (reply.saddr, reply.sport) not in removed:
                continue
            try:
                ct.entry("del", tuple_orig=orig)
                deleted += 1
            except Exception as exc:  # gone meanwhile: fine
                log.debug("conntrack: delete %s: %s", orig, exc)
    finally:
        ct.close()
    return deleted


def stale_udp(before: dict[tuple[str, int], frozenset[tuple[str, int]]],
              after: dict[tuple[str, int], frozenset[tuple[str, int]]],
              frontends: Iterable[tuple[str, int]]) -> Stale:
    """Pure: which entries of the UDP ``frontends`` went stale between two syncs."""
    out: Stale = {}
    for fe in frontends:
        old, new = before.get(fe, frozenset()), after.get(fe, frozenset())
        # Newly active (no endpoints before, or no service at all: kube-proxy's
        # NewlyActiveUDPServices): entries made meanwhile were never DNATed.
        if not old and new:
            out[fe] = None
        elif old - new:
            out[fe] = old - new
    return out
