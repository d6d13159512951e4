"""Destroy client sockets still connected to a backend that left (sock_diag SOCK_DESTROY).

socklb translates once, at connect(): a connected UDP socket keeps sending to the
backend it was given, even after that backend is gone — kube-proxy's
conntrack-flush problem (kubernetes#48370) in socket form. When a backend leaves the
maps, the driver finds the sockets connected to it in the network namespaces of the
processes in its cgroup and destroys them (CONFIG_INET_DIAG_DESTROY): the client's
next call fails with ECONNABORTED and a fresh socket gets a live backend.

Raw NETLINK_SOCK_DIAG; layouts from linux/inet_diag.h and linux/netlink.h.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CLONE_NEWNET = 0x40000000
ALL_STATES = 0xFFFFFFFF
TCP_LISTEN = 10

_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_sockid: sport, dport (be16), src[4], dst[4] (be32), if, cookie[2]
_SOCKID = struct.Struct("!HH16s16sI8s")
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then the sockid
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans; then the sockid

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Target:
    """A backend whose connected client sockets must go."""

    ip: str
    port: int
    protocol: str  # TCP | UDP


def cgroup_netns_pids(cgroup_path: str) -> dict[int, int]:
    """One pid per distinct network namespace among the cgroup tree's processes."""
    found: dict[int, int] = {}
    for procs in Path(cgroup_path).rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for line in procs.read_text().split():
                pid = int(line)
                with contextlib.suppress(OSError):
                    found.setdefault(os.stat(f"/proc/{pid}/ns/net").st_ino, pid)
    return found


def destroy_connected(cgroup_path: str, targets: Iterable[Target]) -> int:
    """Destroy sockets connected to ``targets`` in the cgroup's namespaces; how many."""
    targets = list(targets)
    if not targets:
        return 0
    destroyed = 0
    for pid in cgroup_netns_pids(cgroup_path).values():
        destroyed += _in_netns(pid, lambda: _destroy_here(targets))
    return destroyed


def _in_netns(pid: int, work) -> int:
    """Run ``work`` in a thread that joined ``pid``'s network namespace."""
    result: list[int] = [0]

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError:
            return  # the process left
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                LOG.warning("setns into pid %d: %s", pid, os.strerror(ctypes.get_errno()))
                return
        finally:
            os.close(fd)
        result[0] = work()

    # The namespace is per thread: this one joins and dies, the agent's threads stay put.
    thread = threading.Thread(target=run, name=f"sockdiag-{pid}")
    thread.start()
    thread.join()
    return result[0]


def _destroy_here(targets: list[Target]) -> int:
    destroyed = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto_name, proto in (("TCP", socket.IPPROTO_TCP), ("UDP", socket.IPPROTO_UDP)):
                wanted = {_key(t, family) for t in targets if t.protocol == proto_name}
                wanted.discard(None)
                if not wanted:
                    continue
                for state, sockid in _dump(nl, family, proto):
                    dst = (sockid[3], sockid[1])
                    if dst in wanted and state != TCP_LISTEN:
                        destroyed += _destroy(nl, family, proto, sockid)
    return destroyed


def _key(target: Target, family: int) -> tuple[bytes, int] | None:
    """(16-byte dst as sock_diag reports it, port) for ``family``, or None."""
    is_v6 = ":" in target.ip
    if family == socket.AF_INET and not is_v6:
        return socket.inet_pton(socket.AF_INET, target.ip) + b"\0" * 12, target.port
    if family == socket.AF_INET6:
        if is_v6:
            return socket.inet_pton(socket.AF_INET6, target.ip), target.port
        # A dual-stack socket connected to an IPv4 backend reports it IPv4-mapped.
        mapped = b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, target.ip)
        return mapped, target.port
    return None


def _request(nl: socket.socket, msg_type: int, flags: int, family: int, proto: int,
             sockid: bytes, seq: int) -> None:
    body = _REQ_V2.pack(family, proto, 0, ALL_STATES) + sockid
    nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body)


def _messages(nl: socket.socket) -> Iterator[tuple[int, bytes]]:
    while True:
        data = nl.recv(65536)
        offset = 0
        while offset < len(data):
            length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            payload = data[offset + _NLMSGHDR.size: offset + length]
            offset += (length + 3) & ~3
            if msg_type == NLMSG_DONE:
                return
            yield msg_type, payload
            if msg_type == NLMSG_ERROR:
                return


def _dump(nl: socket.socket, family: int, proto: int) -> list[tuple[int, tuple]]:
    empty = _SOCKID.pack(0, 0, b"\0" * 16, b"\0" * 16, 0, b"\xff" * 8)
    _request(nl, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, proto, empty, 1)
    found = []
    for msg_type, payload in _messages(nl):
        if msg_type == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", payload)
            if err:
                LOG.warning("sock_diag dump failed: %s", os.strerror(-err))
            break
        _family, state, _timer, _retrans = _MSG_HEAD.unpack_from(payload)
        found.append((state, _SOCKID.unpack_from(payload, _MSG_HEAD.size)))
    return found


def _destroy(nl: socket.socket, family: int, proto: int, sockid: tuple) -> int:
    _request(nl, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, proto,
             _SOCKID.pack(*sockid), 2)
    for msg_type, payload in _messages(nl):
        if msg_type == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", payload)
            if err == 0:
                return 1
            if -err != errno.ENOENT:  # ENOENT: the socket closed meanwhile
                LOG.warning("SOCK_DESTROY failed: %s", os.strerror(-err))
            return 0
    return 0
