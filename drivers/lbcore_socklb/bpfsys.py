"""The few bpf(2) commands bcc does not wrap: query, inspect and detach by id.

Read back must ask the kernel, not our memory: which programs are attached to a
cgroup hook (BPF_PROG_QUERY), what they are called (BPF_OBJ_GET_INFO_BY_FD), what a
pinned map looks like (BPF_OBJ_GET + info), so a restart can adopt them, and how many
entries a pinned map holds (BPF_MAP_LOOKUP_BATCH), for map pressure.
Layouts follow ``union bpf_attr`` / ``struct bpf_prog_info`` in linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}
BPF_OBJ_GET = 7
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BPF_F_RDONLY = 1 << 3
BATCH_ENTRIES = 4096  # entries per lookup-batch call when counting

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BPFSysError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYSCALL_NR.get(os.uname().machine)
    if nr is None:
        raise BPFSysError(f"bpf(2) syscall number unknown on {os.uname().machine}")
    res = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if res < 0:
        err = ctypes.get_errno()
        raise BPFSysError(err, os.strerror(err))
    return res


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _ObjGetAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _DetachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class AttachedProg:
    id: int
    name: str
    tag: str


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def query_cgroup(cgroup_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to one hook of one cgroup (not inherited ones)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _QueryAttr(target_fd=cgroup_fd, attach_type=attach_type,
                      prog_ids=ctypes.addressof(ids), prog_cnt=len(ids))
    _bpf(BPF_PROG_QUERY, attr)
    return list(ids[: attr.prog_cnt])


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id))


def prog_info(prog_id: int) -> AttachedProg:
    fd = prog_fd_by_id(prog_id)
    try:
        info = _ProgInfo()
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                               info=ctypes.addressof(info)))
        return AttachedProg(info.id, info.name.decode(errors="replace"), bytes(info.tag).hex())
    finally:
        os.close(fd)


def _open_pinned(path: str, flags: int = 0) -> int:
    buf = ctypes.create_string_buffer(path.encode() + b"\0")
    return _bpf(BPF_OBJ_GET, _ObjGetAttr(pathname=ctypes.addressof(buf), file_flags=flags))


def _map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                           info=ctypes.addressof(info)))
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries,
                   info.map_flags, info.name.decode(errors="replace"))


def pinned_map_info(path: str) -> MapInfo:
    fd = _open_pinned(path)
    try:
        return _map_info(fd)
    finally:
        os.close(fd)


def pinned_map_usage(path: str) -> tuple[int, int]:
    """(entries in the map now, max entries) of the hash map pinned at ``path``,
    counted by the kernel in batches (read-only: never changes the map)."""
    fd = _open_pinned(path, BPF_F_RDONLY)
    try:
        info = _map_info(fd)
        keys = ctypes.create_string_buffer(info.key_size * BATCH_ENTRIES)
        values = ctypes.create_string_buffer(max(info.value_size, 1) * BATCH_ENTRIES)
        token_in, token_out = ctypes.c_uint64(), ctypes.c_uint64()  # htab: bucket index
        used, first = 0, True
        while True:
            attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(token_in),
                              out_batch=ctypes.addressof(token_out),
                              keys=ctypes.addressof(keys), values=ctypes.addressof(values),
                              count=BATCH_ENTRIES, map_fd=fd)
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr)
            except BPFSysError as exc:
                if exc.errno == errno.ENOENT:  # the end: this last batch counts too
                    return used + attr.count, info.max_entries
                raise
            used += attr.count
            token_in.value, first = token_out.value, False
    finally:
        os.close(fd)


def detach_prog(cgroup_fd: int, attach_type: int, prog_id: int) -> None:
    """Detach exactly the program ``prog_id`` from one hook of one cgroup."""
    fd = prog_fd_by_id(prog_id)
    try:
        _bpf(BPF_PROG_DETACH, _DetachAttr(target_fd=cgroup_fd, attach_bpf_fd=fd,
                                          attach_type=attach_type))
    finally:
        os.close(fd)
