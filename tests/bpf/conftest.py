"""BPF_PROG_TEST_RUN fixtures for bpf/nodeport.c (root only).

The program is compiled once per module with its maps pinned in a lab bpffs, and
every run happens inside a lab network namespace (``setns`` on this thread, then
back), because the program's FIB lookups read the routes of the namespace it runs
in: node0 172.18.0.2/16 and fc00:f853:ccd:e793::2/64 on eth0, pod CIDRs 10.0.1.0/24 and
fd00:10:0:1::/64 via node1 (172.18.0.3, fc00:f853:ccd:e793::3).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import pytest

from lbcore.lab import NetLab
from lbcore.model import NodeInfo

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside(netns_path: str):
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


@pytest.fixture(scope="module")
def bpflab():
    if os.geteuid() != 0:
        pytest.skip("BPF test-run needs root")
    lab = NetLab()
    try:
        node, peer = lab.netns("node0"), lab.netns("node1")
        lab.veth(node, "eth0", peer, "eth0")
        node.add_addr("eth0", "172.18.0.2/16")
        peer.add_addr("eth0", "172.18.0.3/16")
        node.add_addr("eth0", "fc00:f853:ccd:e793::2/64")
        peer.add_addr("eth0", "fc00:f853:ccd:e793::3/64")
        node.add_route("10.0.1.0/24", via="172.18.0.3")
        node.add_route("fd00:10:0:1::/64", via="fc00:f853:ccd:e793::3")
        node.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        yield lab, node, lab.bpffs()
    finally:
        lab.close()


@pytest.fixture(scope="module")
def node_info() -> NodeInfo:
    return NodeInfo("node0", ("172.18.0.2", "fc00:f853:ccd:e793::2"))
