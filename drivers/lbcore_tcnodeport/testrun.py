"""BPF_PROG_TEST_RUN through bpf(2): run a loaded program on one packet.

Used by the packet-fixture tests (tests/bpf/) and the micro-benchmark: the kernel
runs the program on a copy of ``packet`` in the caller's network namespace and
returns the verdict, the packet as the program left it, and the mean run time.
Layouts follow ``union bpf_attr.test`` and ``struct __sk_buff`` in linux/bpf.h.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from lbcore_socklb.bpfsys import _bpf

BPF_PROG_TEST_RUN = 10
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
VERDICTS = {TC_ACT_OK: "ok", TC_ACT_SHOT: "shot", TC_ACT_REDIRECT: "redirect"}


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
    ]


class SkBuffCtx(ctypes.Structure):
    """The leading fields of ``struct __sk_buff`` up to ``ifindex`` (the rest zero)."""

    _fields_ = [
        ("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32), ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32), ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RunResult:
    verdict: int
    packet: bytes
    duration_ns: int

    @property
    def verdict_name(self) -> str:
        return VERDICTS.get(self.verdict, str(self.verdict))


def prog_test_run(prog_fd: int, packet: bytes, *, ifindex: int = 0, repeat: int = 1) -> RunResult:
    data_in = ctypes.create_string_buffer(packet, len(packet))
    out = ctypes.create_string_buffer(len(packet) + 256)
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(packet), data_size_out=len(out),
                     data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(out),
                     repeat=repeat)
    ctx = SkBuffCtx(ifindex=ifindex)
    if ifindex:
        attr.ctx_size_in = ctypes.sizeof(ctx)
        attr.ctx_in = ctypes.addressof(ctx)
    _bpf(BPF_PROG_TEST_RUN, attr)
    return RunResult(attr.retval, out.raw[: attr.data_size_out], attr.duration)
