"""Compile bpf/sock.c with bcc, attach it to a cgroup, read attachments back.

Attachments use the exclusive (non-multi) mode: attaching again replaces our own
program atomically, so a restarted agent never leaves a hook empty and never
stacks a duplicate. A foreign program on a hook is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lbcore import ebpf
from lbcore.errors import DriverError

from . import bpfsys

DRIVER = "socklb"
PROG_PREFIX = "lbc_"
MAP_NAMES = ("lbc_svc", "lbc_backends", "lbc_revnat", "lbc_sk_revnat", "lbc_affinity",
             "lbc_aff_match")


@dataclass(frozen=True)
class Hook:
    function: str  # entry point in sock.c
    attach: str  # bcc BPFAttachType member name
    label: str  # short name, as bpftool prints it


HOOKS = (
    Hook("lbc_connect4", "CGROUP_INET4_CONNECT", "connect4"),
    Hook("lbc_connect6", "CGROUP_INET6_CONNECT", "connect6"),
    Hook("lbc_sendmsg4", "CGROUP_UDP4_SENDMSG", "sendmsg4"),
    Hook("lbc_sendmsg6", "CGROUP_UDP6_SENDMSG", "sendmsg6"),
    Hook("lbc_recvmsg4", "CGROUP_UDP4_RECVMSG", "recvmsg4"),
    Hook("lbc_recvmsg6", "CGROUP_UDP6_RECVMSG", "recvmsg6"),
    Hook("lbc_getpeer4", "CGROUP_INET4_GETPEERNAME", "getpeername4"),
    Hook("lbc_getpeer6", "CGROUP_INET6_GETPEERNAME", "getpeername6"),
)


def compile_program(pin_dir: str, sizes: Mapping[str, int]) -> Any:
    """Compile and load sock.c; its maps open (or are created and pinned) in ``pin_dir``."""
    return ebpf.compile_program(DRIVER, "sock.c", pin_dir, sizes)


def _attach_type(hook: Hook) -> int:
    from bcc import BPFAttachType

    return int(getattr(BPFAttachType, hook.attach))


@contextlib.contextmanager
def open_cgroup(path: str) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DriverError(DRIVER, f"cannot open cgroup {path}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def attachments(cgroup_path: str) -> dict[str, list[bpfsys.AttachedProg]]:
    """Programs attached to each of our hooks on ``cgroup_path``, read from the kernel."""
    result: dict[str, list[bpfsys.AttachedProg]] = {}
    with open_cgroup(cgroup_path) as fd:
        for hook in HOOKS:
            result[hook.label] = _attached(fd, _attach_type(hook))
    return result


def _attached(cgroup_fd: int, attach_type: int, retries: int = 4) -> list[bpfsys.AttachedProg]:
    """The programs on one hook. A program replaced (and freed) between the query and
    the lookup of its id is gone (ENOENT): ask again, the hook holds its successor."""
    for _ in range(retries):
        try:
            return [bpfsys.prog_info(i) for i in bpfsys.query_cgroup(cgroup_fd, attach_type)]
        except bpfsys.BPFSysError as e:
            if e.errno != errno.ENOENT:
                raise
    return [bpfsys.prog_info(i) for i in bpfsys.query_cgroup(cgroup_fd, attach_type)]


def attach_all(bpf: Any, cgroup_path: str) -> None:
    """Attach (or atomically replace our earlier) programs on every hook."""
    from bcc import BPF

    current = attachments(cgroup_path)
    foreign = {
        label: [p.name for p in progs if not p.name.startswith(PROG_PREFIX)]
        for label, progs in current.items()
    }
    foreign = {label: names for label, names in foreign.items() if names}
    if foreign:
        raise DriverError(
            DRIVER,
            f"cgroup {cgroup_path} already has other programs on {foreign}; "
            "lbcore will not replace them (use another cgroup_path)",
        )
    with open_cgroup(cgroup_path) as fd:
        for hook in HOOKS:
            fn = bpf.load_func(hook.function.encode(), BPF.CGROUP_SOCK_ADDR,
                               attach_type=_attach_type(hook))
            try:
                BPF.attach_func(fn, fd, _attach_type(hook))
            except Exception as exc:
                raise DriverError(
                    DRIVER, f"attaching {hook.function} to {cgroup_path}: {exc}"
                ) from exc


def detach_all(cgroup_path: str) -> int:
    """Detach every lbcore program from ``cgroup_path``; returns how many."""
    detached = 0
    with open_cgroup(cgroup_path) as fd:
        for hook in HOOKS:
            for prog_id in bpfsys.query_cgroup(fd, _attach_type(hook)):
                if bpfsys.prog_info(prog_id).name.startswith(PROG_PREFIX):
                    bpfsys.detach_prog(fd, _attach_type(hook), prog_id)
                    detached += 1
    return detached


def mount_of(path: str, fstype: str) -> str | None:
    """The mount point holding ``path`` if it is a ``fstype`` filesystem, else None."""
    target = os.path.realpath(path)
    best = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_point = fields[4].encode().decode("unicode_escape")
            kind = fields[fields.index("-") + 1]
            if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and (
                best is None or len(mount_point) >= len(best[0])
            ):
                best = (mount_point, kind)
    return best[0] if best and best[1] == fstype else None


def bpffs_mount_of(path: str) -> str | None:
    """The bpffs mount point holding ``path``, or None if it is not on a bpffs."""
    return mount_of(path, "bpf")


def unpin_maps(pin_dir: str) -> list[str]:
    removed = []
    for name in MAP_NAMES:
        path = os.path.join(pin_dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)
    return removed
