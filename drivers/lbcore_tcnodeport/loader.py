"""Compile bpf/nodeport.c with bcc and attach it to tc (clsact) of the node devices.

Filters are added with a fixed priority and handle, so a restarted agent *replaces*
its own filter atomically (``tc filter replace``): no moment without a program, never
two. Filters of other owners on the same hooks are left alone. Every call works on
one network namespace, named by ``netns`` (pyroute2.NetNS, without entering it) or
the current one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Mapping
from typing import Any

from lbcore import ebpf
from lbcore.errors import DriverError

DRIVER = "tcnodeport"
PROG_PREFIX = "lbn_"
MAP_NAMES = ("lbn_svc", "lbn_backends", "lbn_maglev", "lbn_src_range", "lbn_dsr",
             "lbn_cfg", "lbn_ct")
RETIRED_MAPS = ("lbn_local_ep",)  # pinned by earlier versions; removed by setup and cleanup
HOOKS = {"ingress": ("lbn_ingress", "ffff:fff2"), "egress": ("lbn_egress", "ffff:fff3")}
FILTER_PRIO = 0xC0DE & 0x7FFF  # our filters' priority on every hook
FILTER_HANDLE = 0x1B


def compile_program(pin_dir: str, macros: Mapping[str, int]) -> Any:
    """Compile and load nodeport.c; its maps open (or are created and pinned) in pin_dir."""
    return ebpf.compile_program(DRIVER, "nodeport.c", pin_dir, macros)


def stale_layouts(bpf: Any, pin_dir: str) -> list[str]:
    """Pinned maps whose key or value size differs from the compiled program's (bcc
    opens a pin whatever its layout)."""
    from lbcore_socklb import bpfsys

    stale = []
    for name in MAP_NAMES:
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        info, table = bpfsys.pinned_map_info(path), bpf[name.encode()]
        if (info.key_size, info.value_size) != (ctypes.sizeof(table.Key),
                                                ctypes.sizeof(table.Leaf)):
            stale.append(name)
    return stale


def load_functions(bpf: Any) -> dict[str, Any]:
    from bcc import BPF

    try:
        return {hook: bpf.load_func(fn.encode(), BPF.SCHED_CLS) for hook, (fn, _) in
                HOOKS.items()}
    except Exception as exc:
        raise DriverError(DRIVER, f"loading the tc programs failed: {exc}") from exc


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the block with this *thread* in network namespace ``netns``, then return.

    Not pyroute2.NetNS: that forks a helper process, and a forked copy of a caller
    that registered exit handlers (a test lab's teardown, for one) would run them.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise DriverError(DRIVER, f"network namespace {netns!r}: {exc.strerror} "
                          "(driver_options.netns)") from None
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise DriverError(DRIVER, f"setns({netns}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # cannot continue in the wrong netns
                os.abort()
    finally:
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def route_socket(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute

    with in_netns(netns) if netns else contextlib.nullcontext():
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


def ifindex(ipr: Any, device: str) -> int | None:
    """The device's index, by a direct RTM_GETLINK (not a dump, which pyroute2 0.9 can
    return incomplete when it races other netlink traffic)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return ipr.link("get", ifname=device)[0]["index"]
    except NetlinkError:
        return None


def require_ifindex(ipr: Any, device: str) -> int:
    idx = ifindex(ipr, device)
    if idx is None:
        raise DriverError(DRIVER, f"device {device!r} does not exist in this network namespace "
                          "(driver_options.devices)")
    return idx


def _filters(ipr: Any, idx: int, parent: str) -> list[dict[str, Any]]:
    """Our filter on one hook, as (prio, name) dicts; [] if there is no clsact."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = ipr.get_filters(idx, parent=int(parent.replace(":", ""), 16))
    except NetlinkError:
        return []
    out = []
    for msg in msgs:
        opts = msg.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        if name:
            out.append({"prio": msg["info"] >> 16, "name": name})
    return out


def attach(fns: Mapping[str, Any], devices: list[str], netns: str | None) -> None:
    """clsact on each device, then our ingress and egress filters (replacing our own)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with route_socket(netns) as ipr:
        for device in devices:
            idx = require_ifindex(ipr, device)
            with contextlib.suppress(NetlinkError):  # EEXIST: it is already there
                ipr.tc("add", "clsact", idx)
            for hook, (_, parent) in HOOKS.items():
                fn = fns[hook]
                try:
                    ipr.tc("replace-filter", "bpf", idx, FILTER_HANDLE, fd=fn.fd, name=fn.name,
                           parent=parent, prio=FILTER_PRIO, classid=1, direct_action=True)
                except NetlinkError as exc:
                    raise DriverError(DRIVER, f"attaching {fn.name.decode()} to {device} "
                                      f"{hook}: {exc}") from exc


def attachments(devices: list[str], netns: str | None) -> dict[str, list[str]]:
    """``{"eth0/ingress": ["lbn_ingress:[12]"], ...}`` read from the kernel."""
    result: dict[str, list[str]] = {}
    with route_socket(netns) as ipr:
        for device in devices:
            idx = ifindex(ipr, device)
            for hook, (_, parent) in HOOKS.items():
                names = [f["name"] for f in _filters(ipr, idx, parent)] if idx else []
                result[f"{device}/{hook}"] = names
    return result


def detach(devices: list[str], netns: str | None) -> int:
    """Remove our filters (and clsact if nothing else is left on it); returns how many."""
    from pyroute2.netlink.exceptions import NetlinkError

    removed = 0
    with route_socket(netns) as ipr:
        for device in devices:
            idx = ifindex(ipr, device)
            if idx is None:
                continue
            others = 0
            for _hook, (_, parent) in HOOKS.items():
                for f in _filters(ipr, idx, parent):
                    if f["prio"] == FILTER_PRIO and f["name"].startswith(PROG_PREFIX):
                        with contextlib.suppress(NetlinkError):
                            ipr.tc("del-filter", "bpf", idx, FILTER_HANDLE, parent=parent,
                                   prio=FILTER_PRIO)
                            removed += 1
                    else:
                        others += 1
            if not others:
                with contextlib.suppress(NetlinkError):
                    ipr.tc("del", "clsact", idx)
    return removed


def in_initial_netns(netns: str | None) -> bool:
    """True when the devices named would be those of the machine's own network."""
    if netns:
        return False
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return False


def unpin_maps(pin_dir: str, names: tuple[str, ...] = MAP_NAMES + RETIRED_MAPS) -> list[str]:
    """Remove these pins (all of ours by default, then the directory if empty)."""
    removed = []
    for name in names:
        path = os.path.join(pin_dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    if names == MAP_NAMES + RETIRED_MAPS:
        with contextlib.suppress(OSError):
            os.rmdir(pin_dir)
    return removed
