"""Run a function in another network namespace: a forked child ``setns()``-es, runs it
and pickles the result back; drivers with a ``netns`` option (iptables, the nftables
plugin) share it. The parent (the agent, with its threads) never changes namespace.
The child leaves with ``os._exit``: no atexit hooks (a test lab's teardown among them)
run in it. Libraries that fork helpers of their own to reach a namespace
(pyroute2's ``netns=``) end those with a normal exit, which runs the parent's atexit
hooks in the child; that is why this module exists.
"""

from __future__ import annotations

import ctypes
import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import DriverError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(driver: str, netns_path: str | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in network namespace ``netns_path`` (a forked child); its result
    comes back pickled. ``None``: here, in-process. Failures raise ``DriverError``
    naming ``driver``."""
    if netns_path is None:
        return fn(*args)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: enter the namespace, compute, report, exit without cleanup
        status = 0
        try:
            os.close(rfd)
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:
            payload, status = pickle.dumps(("error", f"{type(exc).__name__}: {exc}")), 1
        with os.fdopen(wfd, "wb") as out:
            out.write(payload)
        os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data) if data else ("error", "reader died")
    if kind != "ok":
        raise DriverError(driver, f"in network namespace {netns_path}: {value}")
    return value
