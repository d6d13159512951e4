"""The kernel side: libnftables (Debian's ``python3-nftables``) in this network namespace
or in another one. Another namespace is entered by a forked child that ``setns()``-es,
runs the call and pickles the result back, so the agent's own threads never move."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

from lbcore.errors import DriverError
from lbcore.netns import in_netns

from . import naming as n

NAME = "nftables"


def _nft() -> Any:
    try:
        import nftables
    except ImportError as exc:
        raise DriverError(NAME, "the Python module `nftables` is missing: apt-get install "
                                "python3-nftables and link /usr/lib/python3/dist-packages/"
                                "nftables into the venv (scripts/setup.sh does)") from exc
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(False)
    return nft


def _run(doc: dict[str, Any]) -> None:
    rc, _out, err = _nft().json_cmd(doc)
    if rc != 0:
        raise RuntimeError(f"libnftables rejected the transaction: {err.strip()}")


def _list() -> list[dict[str, Any]]:
    rc, out, err = _nft().cmd(f"list table {n.FAMILY} {n.TABLE}")
    if rc != 0:
        if "No such file or directory" in err:
            return []
        raise RuntimeError(f"nft list table {n.FAMILY} {n.TABLE}: {err.strip()}")
    return json.loads(out)["nftables"]


def _list_names() -> tuple[list[str], list[str], dict[tuple[str, str, int], tuple[str, str]]]:
    """Chain names, set names and service-map elements of lbcore's table — lists the
    kernel answers quickly (rules are not read: 13 s at 10,000 services, vs 1 s)."""
    nft = _nft()
    rc, out, err = nft.cmd(f"list chains {n.FAMILY}")
    if rc != 0:
        raise RuntimeError(f"nft list chains {n.FAMILY}: {err.strip()}")
    chains = [o["chain"]["name"] for o in json.loads(out)["nftables"]
              if "chain" in o and o["chain"]["table"] == n.TABLE]
    if not chains:  # no table (or an empty one): nothing else to list
        return [], [], {}
    nft.set_terse_output(True)  # set names only: no element of any set is fetched
    rc, out, err = nft.cmd(f"list sets {n.FAMILY}")
    if rc != 0:
        raise RuntimeError(f"nft list sets {n.FAMILY}: {err.strip()}")
    sets = [o["set"]["name"] for o in json.loads(out)["nftables"]
            if "set" in o and o["set"]["table"] == n.TABLE]
    nft.set_terse_output(False)
    rc, out, err = nft.cmd(f"list map {n.FAMILY} {n.TABLE} {n.SERVICES_MAP}")
    elements: dict[tuple[str, str, int], tuple[str, str]] = {}
    if rc == 0:
        for o in json.loads(out)["nftables"]:
            for key, verdict in o.get("map", {}).get("elem", []):
                comment = ""
                if "elem" in key:
                    comment, key = key["elem"].get("comment", ""), key["elem"]["val"]
                ip, proto, port = key["concat"]
                target = verdict.get("goto", verdict.get("jump", {})).get("target", "")
                elements[(ip, proto, int(port))] = (target, comment)
    elif "No such file or directory" not in err:
        raise RuntimeError(f"nft list map {n.SERVICES_MAP}: {err.strip()}")
    return chains, sets, elements


def list_names(netns_path: str | None
               ) -> tuple[list[str], list[str], dict[tuple[str, str, int], tuple[str, str]]]:
    """(chain names, set names, map elements) of lbcore's table; empty if it is absent."""
    try:
        return in_netns(NAME, netns_path, _list_names)
    except RuntimeError as exc:
        raise DriverError(NAME, str(exc)) from exc


def apply(netns_path: str | None, doc: dict[str, Any]) -> None:
    """Run one JSON transaction (all or nothing)."""
    try:
        in_netns(NAME, netns_path, _run, doc)
    except RuntimeError as exc:
        raise DriverError(NAME, str(exc)) from exc


def list_table(netns_path: str | None) -> list[dict[str, Any]]:
    """``nft -j list table ip lbcore`` as objects; [] when the table does not exist."""
    try:
        return in_netns(NAME, netns_path, _list)
    except RuntimeError as exc:
        raise DriverError(NAME, str(exc)) from exc


def _flush_udp(stale: list[tuple[str, int, tuple[str, int] | None]]) -> int:
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    deleted, ct = 0, Conntrack()
    try:
        for ip, port, gone in stale:
            wanted = NFCTAttrTuple(proto=socket.IPPROTO_UDP, daddr=ip, dport=port)
            for entry in list(ct.dump_entries(tuple_orig=wanted)):
                if gone is not None and (entry.tuple_reply.saddr, entry.tuple_reply.sport) != gone:
                    continue
                try:
                    ct.entry("del", tuple_orig=entry.tuple_orig)
                    deleted += 1
                except Exception:  # gone meanwhile
                    pass
    finally:
        ct.close()
    return deleted


def flush_udp_conntrack(netns_path: str | None,
                        stale: Iterable[tuple[str, int, tuple[str, int] | None]]) -> int:
    """Delete UDP conntrack entries to (frontend ip, port) whose reply comes from a removed
    endpoint (or all of them when the endpoint is None); returns how many."""
    stale = list(stale)
    return in_netns(NAME, netns_path, _flush_udp, stale) if stale else 0
