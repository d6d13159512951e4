"""Packet fixtures through BPF_PROG_TEST_RUN: input packet -> expected packet + verdict.

Each fixture is built with scapy; the expected packet's checksums are computed by
scapy from scratch, so a wrong incremental update in the program fails the compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

pytest.importorskip("scapy")
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from lbcore_tcnodeport import loader
from lbcore_tcnodeport.image import Allocators, NodePortImage, dsr_ports, render_entry
from lbcore_tcnodeport.lab import LabNode, LabPod, frontend
from lbcore_tcnodeport.maps import KernelMaps
from lbcore_tcnodeport.plan import plan_sync
from lbcore_tcnodeport.testrun import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    prog_test_run,
)

from .conftest import inside

pytestmark = pytest.mark.netns
NODE, CLIENT = "172.18.0.2", "172.18.0.200"  # the client is on the node network
NODE6 = "fc00:f853:ccd:e793::2"
LOCAL_POD, REMOTE_POD = "10.0.0.10", "10.0.1.10"
M = 251
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@dataclass
class Datapath:
    fns: dict
    maps: KernelMaps
    netns: str
    ifindex: int

    def run(self, hook: str, pkt) -> tuple[int, bytes]:
        with inside(self.netns):
            res = prog_test_run(self.fns[hook].fd, bytes(pkt), ifindex=self.ifindex)
        return res.verdict, res.packet

    def mode(self, mode: str, snat=(61000, 65535)) -> None:
        self.maps.write_config(NODE, NODE6, snat, mode)


@pytest.fixture(scope="module")
def dp(bpflab):
    _lab, ns, bpffs = bpflab
    bpf = loader.compile_program(str(bpffs), {"LBN_MAGLEV_M": M, "LBN_MAGLEV_MAP_MAX": M * 4})
    try:
        maps = KernelMaps(bpf)
        n0 = LabNode("node0", 0, ns, NODE, bpffs)
        n1 = LabNode("node1", 1, ns, "172.18.0.3", bpffs)
        local, remote = LabPod("p0", n0, ns, LOCAL_POD), LabPod("p1", n1, ns, REMOTE_POD)
        fes = [
            frontend(NODE, 30080, [(local, 8080)]),
            frontend(NODE, 30053, [(local, 53)], protocol="UDP", name="dns"),
            frontend(NODE, 30081, [(remote, 8080)], name="remote"),
            frontend(NODE, 30082, [(remote, 8080)], name="etp", etp_local_node="node0"),
            frontend(NODE, 30083, [(local, 8080)], name="ranges",
                     source_ranges=("198.51.100.0/24",)),
            frontend(NODE, 30084, [(local, 8080), (remote, 8080)], name="mg",
                     algorithm="maglev"),
            frontend(NODE, 30090, [(local, 8080)], name="dsr"),
        ]
        image = NodePortImage()
        ids, bids = Allocators.seeded(image, 100), {}
        desired = {f.address: render_entry(f, "node0", image, ids, bids) for f in fes}
        plan, _ = plan_sync(image, desired, {b: a for a, b in bids.items()},
                            dsr_ports(fes, "node0"), M)
        maps.apply(plan)
        ifindex = json.loads(ns.ip("-j", "link", "show", "eth0"))[0]["ifindex"]
        d = Datapath(loader.load_functions(bpf), maps, ns.path, ifindex)
        d.mode("snat")
        yield d
    finally:
        bpf.cleanup()


def tcp(src, sport, dst, dport, flags="S", ttl=64, mss=None):
    options = [("MSS", mss), ("NOP", None), ("NOP", None)] if mss else []
    return ETH / IP(src=src, dst=dst, ttl=ttl, id=7) / TCP(
        sport=sport, dport=dport, flags=flags, seq=1, options=options) / (b"x" * 3)


def rebuilt(pkt) -> bytes:
    """``pkt`` with every checksum recomputed by scapy."""
    p = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in p:
            del p[layer].chksum
            if layer is IP:
                del p[IP].len
    return bytes(p.__class__(bytes(p)))


def l3(raw: bytes):
    return IP(raw[14:])


def test_nodeport_syn_to_local_backend_is_dnated(dp):
    verdict, out = dp.run("ingress", tcp(CLIENT, 40001, NODE, 30080))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(tcp(CLIENT, 40001, LOCAL_POD, 8080))


def test_established_ack_keeps_its_backend(dp):
    verdict, out = dp.run("ingress", tcp(CLIENT, 40002, NODE, 30084))
    first = (verdict, l3(out).dst)
    assert first in ((TC_ACT_OK, LOCAL_POD), (TC_ACT_REDIRECT, REMOTE_POD))
    for _ in range(8):
        verdict, out = dp.run("ingress", tcp(CLIENT, 40002, NODE, 30084, flags="A"))
        assert (verdict, l3(out).dst) == first


def test_reply_from_local_backend_is_reverse_nated(dp):
    dp.run("ingress", tcp(CLIENT, 40003, NODE, 30080))
    verdict, out = dp.run("egress", tcp(LOCAL_POD, 8080, CLIENT, 40003, flags="SA"))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(tcp(NODE, 30080, CLIENT, 40003, flags="SA"))


def test_unrelated_egress_and_unknown_port_are_untouched(dp):
    pkt = tcp(CLIENT, 40004, NODE, 22)
    assert dp.run("ingress", pkt) == (TC_ACT_OK, bytes(pkt))
    pkt = tcp(LOCAL_POD, 8080, CLIENT, 1)
    assert dp.run("egress", pkt) == (TC_ACT_OK, bytes(pkt))


@pytest.mark.parametrize("zero_csum", [False, True])
def test_udp_dnat_checksum_and_zero_checksum(dp, zero_csum):
    sport = 41000 + zero_csum
    pkt = ETH / IP(src=CLIENT, dst=NODE) / UDP(sport=sport, dport=30053) / b"query"
    want = ETH / IP(src=CLIENT, dst=LOCAL_POD) / UDP(sport=sport, dport=53) / b"query"
    if zero_csum:
        pkt[UDP].chksum = 0
        want[UDP].chksum = 0
    raw = bytes(Ether(bytes(pkt)))
    verdict, out = dp.run("ingress", Ether(raw))
    assert verdict == TC_ACT_OK
    expected = rebuilt(want)
    if zero_csum:  # scapy would fill in a checksum: 0 must stay 0
        e = Ether(expected)
        e[UDP].chksum = 0
        expected = bytes(e)
    assert out == expected
    reply = dp.run("egress", ETH / IP(src=LOCAL_POD, dst=CLIENT) /
                   UDP(sport=53, dport=sport) / b"answer")[1]
    assert reply == rebuilt(ETH / IP(src=NODE, dst=CLIENT) / UDP(sport=30053, dport=sport)
                            / b"answer")


def test_snat_to_remote_backend_allocates_ports_and_handles_collisions(dp):
    dp.mode("snat", snat=(61000, 61001))
    try:
        ports = []
        for cport in (42001, 42002):
            verdict, out = dp.run("ingress", tcp(CLIENT, cport, NODE, 30081))
            assert verdict == TC_ACT_REDIRECT
            got = l3(out)
            assert (got.src, got.dst, got[TCP].dport, got.ttl) == (NODE, REMOTE_POD, 8080, 63)
            assert bytes(got) == rebuilt(IP(bytes(got)))  # checksums valid
            ports.append(got[TCP].sport)
        assert sorted(ports) == [61000, 61001]  # second flow skipped the taken port
        assert dp.run("ingress", tcp(CLIENT, 42003, NODE, 30081))[0] == TC_ACT_SHOT  # full
        # The reply to the SNAT port comes back to the client from the frontend.
        verdict, out = dp.run("ingress", tcp(REMOTE_POD, 8080, NODE, ports[0], flags="SA"))
        got = l3(out)
        assert verdict == TC_ACT_REDIRECT
        assert (got.src, got[TCP].sport, got.dst, got[TCP].dport) == (NODE, 30081, CLIENT, 42001)
        assert bytes(got) == rebuilt(IP(bytes(got)))
    finally:
        dp.mode("snat")


def test_dsr_encapsulates_the_untouched_packet_to_the_backend_pod(dp):
    dp.mode("dsr")
    try:
        pkt = tcp(CLIENT, 43001, NODE, 30081)
        verdict, out = dp.run("ingress", pkt)
        outer = l3(out)
        assert verdict == TC_ACT_REDIRECT
        assert (outer.src, outer.dst, outer.proto) == (NODE, REMOTE_POD, 4)
        assert outer.flags == "DF" and bytes(outer) == rebuilt(IP(bytes(outer)))
        inner = bytes(outer.payload)
        assert inner == rebuilt(tcp(CLIENT, 43001, NODE, 30081, ttl=63))[14:]
    finally:
        dp.mode("snat")


def test_dsr_delivery_decapsulates_dnats_and_replies_as_the_frontend(dp):
    inner = IP(src=CLIENT, dst="172.18.0.9", ttl=63) / TCP(sport=43002, dport=30090, flags="S")
    pkt = ETH / IP(src="172.18.0.9", dst=LOCAL_POD, proto=4, flags="DF") / inner
    verdict, out = dp.run("ingress", Ether(bytes(pkt)))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(ETH / IP(src=CLIENT, dst=LOCAL_POD, ttl=63) /
                          TCP(sport=43002, dport=8080, flags="S"))
    # The SYN-ACK's MSS leaves room for the carrier the client's segments travel in.
    verdict, out = dp.run("egress", tcp(LOCAL_POD, 8080, CLIENT, 43002, flags="SA", mss=1460))
    assert out == rebuilt(tcp("172.18.0.9", 30090, CLIENT, 43002, flags="SA", mss=1440))
    verdict, out = dp.run("egress", tcp(LOCAL_POD, 8080, CLIENT, 43002, flags="A"))
    assert out == rebuilt(tcp("172.18.0.9", 30090, CLIENT, 43002, flags="A"))


def test_etp_local_without_local_backend_drops(dp):
    assert dp.run("ingress", tcp(CLIENT, 44001, NODE, 30082))[0] == TC_ACT_SHOT


def test_source_ranges(dp):
    assert dp.run("ingress", tcp(CLIENT, 45001, NODE, 30083))[0] == TC_ACT_SHOT
    verdict, out = dp.run("ingress", tcp("198.51.100.7", 45002, NODE, 30083))
    assert verdict == TC_ACT_OK and l3(out).dst == LOCAL_POD


def test_maglev_is_a_function_of_the_tuple(dp):
    """No conntrack involved: a fresh flow with the same tuple picks the same backend."""
    picks = set()
    for _ in range(3):
        verdict, out = dp.run("ingress", tcp(CLIENT, 46001, NODE, 30084, flags="R"))
        picks.add((verdict, l3(out).dst if verdict == TC_ACT_OK else "remote"))
        dp.maps.ct.clear()
    assert len(picks) == 1
    spread = set()
    for cport in range(46100, 46140):
        spread.add(dp.run("ingress", tcp(CLIENT, cport, NODE, 30084))[0])
    assert spread == {TC_ACT_OK, TC_ACT_REDIRECT}  # both backends get flows


