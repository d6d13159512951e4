"""Packet fixtures through BPF_PROG_TEST_RUN: input packet -> expected packet + verdict.

Each fixture is built with scapy; the expected packet's checksums are computed by
scapy from scratch, so a wrong incremental update in the program fails the compare.
Fixtures that hold for both families run for IPv4 and IPv6.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

pytest.importorskip("scapy")
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether

from lbcore_tcnodeport import loader
from lbcore_tcnodeport.conntrack import ConntrackTable
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
M = 251
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
# The client is on the node network; "other" is another node (a DSR entry node).
A = {
    4: {"node": "172.18.0.2", "client": "172.18.0.200", "local": "10.0.0.10",
        "remote": "10.0.1.10", "other": "172.18.0.9"},
    6: {"node": "fc00:f853:ccd:e793::2", "client": "fc00:f853:ccd:e793::c8",
        "local": "fd00:10::a", "remote": "fd00:10:0:1::a", "other": "fc00:f853:ccd:e793::9"},
}
FAMILIES = pytest.mark.parametrize("fam", [4, 6])


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
        self.maps.write_config(A[4]["node"], A[6]["node"], snat, mode)


@pytest.fixture(scope="module")
def dp(bpflab):
    _lab, ns, bpffs = bpflab
    bpf = loader.compile_program(str(bpffs), {"LBN_MAGLEV_M": M, "LBN_MAGLEV_MAP_MAX": M * 4})
    try:
        maps = KernelMaps(bpf)
        n0 = LabNode("node0", 0, ns, A[4]["node"], bpffs, ip6=A[6]["node"])
        n1 = LabNode("node1", 1, ns, "172.18.0.3", bpffs, ip6="fc00:f853:ccd:e793::3")
        local = LabPod("p0", n0, ns, A[4]["local"], A[6]["local"])
        remote = LabPod("p1", n1, ns, A[4]["remote"], A[6]["remote"])
        fes = []
        for fam in (4, 6):
            node = A[fam]["node"]
            fes += [
                frontend(node, 30080, [(local, 8080)]),
                frontend(node, 30053, [(local, 53)], protocol="UDP", name="dns"),
                frontend(node, 30081, [(remote, 8080)], name="remote"),
                frontend(node, 30090, [(local, 8080)], name="dsr"),
            ]
        node = A[4]["node"]
        fes += [
            frontend(node, 30082, [(remote, 8080)], name="etp", etp_local_node="node0"),
            frontend(node, 30083, [(local, 8080)], name="ranges",
                     source_ranges=("198.51.100.0/24",)),
            frontend(node, 30084, [(local, 8080), (remote, 8080)], name="mg",
                     algorithm="maglev"),
            frontend(node, 30085, [(remote, 9090)], name="reuse"),
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


def ip(src, dst, ttl=64, **kw):
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=ttl, **kw)
    return IP(src=src, dst=dst, ttl=ttl, id=7, **kw)


def tcp(src, sport, dst, dport, flags="S", ttl=64, mss=None, ts=None, seq=1):
    options = [("MSS", mss), ("NOP", None), ("NOP", None)] if mss else []
    if ts is not None:
        options += [("NOP", None), ("NOP", None), ("Timestamp", (ts, 0))]
    return ETH / ip(src, dst, ttl) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, options=options) / (b"x" * 3)


def udp(src, sport, dst, dport, payload=b"query"):
    return ETH / ip(src, dst) / UDP(sport=sport, dport=dport) / payload


def rebuilt(pkt) -> bytes:
    """``pkt`` with every checksum (and length) recomputed by scapy."""
    p = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p:
            del p[layer].chksum
            if layer is IP:
                del p[IP].len
    if IPv6 in p:
        del p[IPv6].plen
    if ICMPv6DestUnreach in p:
        del p[ICMPv6DestUnreach].cksum
    return bytes(p.__class__(bytes(p)))


def l3(raw: bytes):
    return IP(raw[14:]) if raw[14] >> 4 == 4 else IPv6(raw[14:])


def hop_limit(pkt) -> int:
    return pkt.ttl if isinstance(pkt, IP) else pkt.hlim


@FAMILIES
def test_nodeport_syn_to_local_backend_is_dnated(dp, fam):
    a = A[fam]
    verdict, out = dp.run("ingress", tcp(a["client"], 40001, a["node"], 30080))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(tcp(a["client"], 40001, a["local"], 8080))


def test_established_ack_keeps_its_backend(dp):
    a = A[4]
    verdict, out = dp.run("ingress", tcp(a["client"], 40002, a["node"], 30084))
    first = (verdict, l3(out).dst)
    assert first in ((TC_ACT_OK, a["local"]), (TC_ACT_REDIRECT, a["remote"]))
    for _ in range(8):
        verdict, out = dp.run("ingress", tcp(a["client"], 40002, a["node"], 30084, flags="A"))
        assert (verdict, l3(out).dst) == first


@FAMILIES
def test_reply_from_local_backend_is_reverse_nated(dp, fam):
    a = A[fam]
    dp.run("ingress", tcp(a["client"], 40003, a["node"], 30080))
    verdict, out = dp.run("egress", tcp(a["local"], 8080, a["client"], 40003, flags="SA"))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(tcp(a["node"], 30080, a["client"], 40003, flags="SA"))


@FAMILIES
def test_unrelated_egress_and_unknown_port_are_untouched(dp, fam):
    a = A[fam]
    pkt = tcp(a["client"], 40004, a["node"], 22)
    assert dp.run("ingress", pkt) == (TC_ACT_OK, bytes(pkt))
    pkt = tcp(a["local"], 8080, a["client"], 1)
    assert dp.run("egress", pkt) == (TC_ACT_OK, bytes(pkt))


@pytest.mark.parametrize("fam, zero_csum", [(4, False), (4, True), (6, False)])
def test_udp_dnat_checksum_and_zero_checksum(dp, fam, zero_csum):
    a = A[fam]
    sport = 41000 + zero_csum
    pkt = udp(a["client"], sport, a["node"], 30053)
    want = udp(a["client"], sport, a["local"], 53)
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
    reply = dp.run("egress", udp(a["local"], 53, a["client"], sport, b"answer"))[1]
    assert reply == rebuilt(udp(a["node"], 30053, a["client"], sport, b"answer"))


def test_snat_to_remote_backend_allocates_ports_and_handles_collisions(dp):
    a = A[4]
    dp.mode("snat", snat=(61000, 61001))
    try:
        ports = []
        for cport in (42001, 42002):
            verdict, out = dp.run("ingress", tcp(a["client"], cport, a["node"], 30081))
            assert verdict == TC_ACT_REDIRECT
            got = l3(out)
            assert (got.src, got.dst, got[TCP].dport, got.ttl) == (a["node"], a["remote"], 8080,
                                                                   63)
            assert bytes(got) == rebuilt(IP(bytes(got)))  # checksums valid
            ports.append(got[TCP].sport)
        assert sorted(ports) == [61000, 61001]  # second flow skipped the taken port
        assert dp.run("ingress", tcp(a["client"], 42003, a["node"], 30081))[0] == TC_ACT_SHOT
        # The reply to the SNAT port comes back to the client from the frontend.
        verdict, out = dp.run("ingress", tcp(a["remote"], 8080, a["node"], ports[0],
                                             flags="SA"))
        got = l3(out)
        assert verdict == TC_ACT_REDIRECT
        assert (got.src, got[TCP].sport, got.dst, got[TCP].dport) == (a["node"], 30081,
                                                                      a["client"], 42001)
        assert bytes(got) == rebuilt(IP(bytes(got)))
    finally:
        dp.mode("snat")


def test_snat_ipv6_both_directions(dp):
    a = A[6]
    verdict, out = dp.run("ingress", tcp(a["client"], 42101, a["node"], 30081))
    got = l3(out)
    assert verdict == TC_ACT_REDIRECT
    assert (got.src, got.dst, got[TCP].dport, got.hlim) == (a["node"], a["remote"], 8080, 63)
    assert bytes(got) == rebuilt(IPv6(bytes(got)))
    port = got[TCP].sport
    assert 61000 <= port <= 65535
    verdict, out = dp.run("ingress", tcp(a["remote"], 8080, a["node"], port, flags="SA"))
    back = l3(out)
    assert verdict == TC_ACT_REDIRECT
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (a["node"], 30081,
                                                                      a["client"], 42101)
    assert bytes(back) == rebuilt(IPv6(bytes(back)))


def test_snat_port_of_a_closed_flow_serves_a_syn_the_backend_will_accept(dp):
    """One SNAT port: a closed flow's port is reused only by a SYN whose timestamp is
    newer than the old flow's last one (else the backend's TIME_WAIT would reject it
    by PAWS and the client would wait a retransmission)."""
    a = A[4]
    node, client, remote = a["node"], a["client"], a["remote"]
    dp.mode("snat", snat=(61010, 61010))
    try:
        verdict, out = dp.run("ingress", tcp(client, 42201, node, 30085, ts=1000))
        assert verdict == TC_ACT_REDIRECT and l3(out)[TCP].sport == 61010
        busy = tcp(client, 42202, node, 30085, ts=5000)
        assert dp.run("ingress", busy)[0] == TC_ACT_SHOT  # the only port is in use
        # The backend closes first (it will hold TIME_WAIT), then the client.
        dp.run("ingress", tcp(remote, 9090, node, 61010, flags="FA", ts=1))
        dp.run("ingress", tcp(client, 42201, node, 30085, flags="FA", ts=2000, seq=100))
        older = tcp(client, 42203, node, 30085, ts=1500)
        assert dp.run("ingress", older)[0] == TC_ACT_SHOT
        verdict, out = dp.run("ingress", tcp(client, 42204, node, 30085, ts=2500))
        assert verdict == TC_ACT_REDIRECT and l3(out)[TCP].sport == 61010
        verdict, out = dp.run("ingress", tcp(remote, 9090, node, 61010, flags="SA"))
        assert verdict == TC_ACT_REDIRECT and l3(out)[TCP].dport == 42204  # the new owner
    finally:
        dp.mode("snat")


@FAMILIES
def test_dsr_encapsulates_the_untouched_packet_to_the_backend_pod(dp, fam):
    a = A[fam]
    dp.mode("dsr")
    try:
        pkt = tcp(a["client"], 43001, a["node"], 30081)
        verdict, out = dp.run("ingress", pkt)
        outer = l3(out)
        assert verdict == TC_ACT_REDIRECT
        carrier = outer.proto if fam == 4 else outer.nh
        assert (outer.src, outer.dst, carrier) == (a["node"], a["remote"], 4 if fam == 4 else 41)
        if fam == 4:
            assert outer.flags == "DF" and bytes(outer) == rebuilt(IP(bytes(outer)))
        assert bytes(outer.payload) == rebuilt(tcp(a["client"], 43001, a["node"], 30081,
                                                   ttl=63))[14:]
    finally:
        dp.mode("snat")


@FAMILIES
def test_dsr_delivery_decapsulates_dnats_and_replies_as_the_frontend(dp, fam):
    a = A[fam]
    inner = ip(a["client"], a["other"], ttl=63) / TCP(sport=43002, dport=30090, flags="S")
    if fam == 4:
        outer = IP(src=a["other"], dst=a["local"], proto=4, flags="DF")
    else:
        outer = IPv6(src=a["other"], dst=a["local"], nh=41)
    verdict, out = dp.run("ingress", Ether(bytes(ETH / outer / inner)))
    assert verdict == TC_ACT_OK
    assert out == rebuilt(ETH / ip(a["client"], a["local"], ttl=63) /
                          TCP(sport=43002, dport=8080, flags="S"))
    # The SYN-ACK's MSS leaves room for the carrier the client's segments travel in.
    room = 20 if fam == 4 else 40
    verdict, out = dp.run("egress", tcp(a["local"], 8080, a["client"], 43002, flags="SA",
                                        mss=1460))
    assert out == rebuilt(tcp(a["other"], 30090, a["client"], 43002, flags="SA",
                              mss=1460 - room))
    verdict, out = dp.run("egress", tcp(a["local"], 8080, a["client"], 43002, flags="A"))
    assert out == rebuilt(tcp(a["other"], 30090, a["client"], 43002, flags="A"))


def test_dsr_carrier_for_an_unknown_frontend_is_left_alone(dp):
    a = A[4]
    pkt = Ether(bytes(ETH / IP(src=a["other"], dst=a["local"], proto=4) /
                      IP(src=a["client"], dst=a["other"]) / TCP(sport=1, dport=30999)))
    assert dp.run("ingress", pkt) == (TC_ACT_OK, bytes(pkt))


def test_etp_local_without_local_backend_drops(dp):
    a = A[4]
    assert dp.run("ingress", tcp(a["client"], 44001, a["node"], 30082))[0] == TC_ACT_SHOT


def test_source_ranges(dp):
    a = A[4]
    assert dp.run("ingress", tcp(a["client"], 45001, a["node"], 30083))[0] == TC_ACT_SHOT
    verdict, out = dp.run("ingress", tcp("198.51.100.7", 45002, a["node"], 30083))
    assert verdict == TC_ACT_OK and l3(out).dst == a["local"]


def test_maglev_is_a_function_of_the_tuple(dp):
    """No conntrack involved: a fresh flow with the same tuple picks the same backend."""
    a = A[4]
    picks = set()
    for _ in range(3):
        verdict, out = dp.run("ingress", tcp(a["client"], 46001, a["node"], 30084, flags="R"))
        picks.add((verdict, l3(out).dst if verdict == TC_ACT_OK else "remote"))
        dp.maps.ct.clear()
    assert len(picks) == 1
    spread = set()
    for cport in range(46100, 46140):
        spread.add(dp.run("ingress", tcp(a["client"], cport, a["node"], 30084))[0])
    assert spread == {TC_ACT_OK, TC_ACT_REDIRECT}  # both backends get flows


def test_icmp_frag_needed_from_the_backend_path_reaches_the_client(dp):
    """SNAT flow: a router between this node and the backend's says the translated
    packet is too big; the client gets the error about the packet it sent."""
    a = A[4]
    router = "172.18.0.3"
    verdict, out = dp.run("ingress", tcp(a["client"], 47001, a["node"], 30081))
    sent = l3(out)
    assert verdict == TC_ACT_REDIRECT
    error = ETH / IP(src=router, dst=a["node"]) / ICMP(type=3, code=4, nexthopmtu=1400) / \
        bytes(sent)[:48]
    verdict, out = dp.run("ingress", Ether(bytes(error)))
    assert verdict == TC_ACT_REDIRECT
    original = IP(bytes(tcp(a["client"], 47001, a["node"], 30081, ttl=63))[14:])
    want = ETH / IP(src=router, dst=a["client"], ttl=63) / \
        ICMP(type=3, code=4, nexthopmtu=1400) / bytes(original)[:48]
    assert out == rebuilt(want)
    assert ICMP in Ether(out) and Ether(out)[ICMP].chksum == Ether(rebuilt(want))[ICMP].chksum


def test_icmp_error_about_a_reply_reaches_the_local_backend(dp):
    """PMTU of the server's direction: a router near the client tells the frontend
    (the reply's source); the pod that sent the reply gets the error."""
    a = A[4]
    router = "192.0.2.1"
    dp.run("ingress", tcp(a["client"], 47002, a["node"], 30080))
    reply = IP(bytes(tcp(a["node"], 30080, a["client"], 47002, flags="SA"))[14:])
    error = ETH / IP(src=router, dst=a["node"]) / ICMP(type=3, code=4, nexthopmtu=1280) / \
        bytes(reply)
    verdict, out = dp.run("ingress", Ether(bytes(error)))
    assert verdict == TC_ACT_OK  # the stack delivers it to the pod
    sent = IP(bytes(tcp(a["local"], 8080, a["client"], 47002, flags="SA"))[14:])
    want = ETH / IP(src=router, dst=a["local"]) / ICMP(type=3, code=4, nexthopmtu=1280) / \
        bytes(sent)
    assert out == rebuilt(want)


def test_icmpv6_port_unreachable_from_the_backend_comes_from_the_frontend(dp):
    a = A[6]
    dp.run("ingress", udp(a["client"], 47003, a["node"], 30053))
    got = IPv6(bytes(udp(a["client"], 47003, a["local"], 53))[14:])
    error = ETH / IPv6(src=a["local"], dst=a["client"]) / ICMPv6DestUnreach(code=4) / bytes(got)
    verdict, out = dp.run("egress", Ether(bytes(error)))
    assert verdict == TC_ACT_OK
    sent = IPv6(bytes(udp(a["client"], 47003, a["node"], 30053))[14:])
    want = ETH / IPv6(src=a["node"], dst=a["client"]) / ICMPv6DestUnreach(code=4) / bytes(sent)
    assert out == rebuilt(want)
    assert Ether(out)[ICMPv6DestUnreach].cksum == Ether(rebuilt(want))[ICMPv6DestUnreach].cksum


def test_icmp_errors_of_no_flow_are_left_alone(dp):
    a = A[4]
    quote = IP(src=a["node"], dst=a["remote"]) / UDP(sport=1, dport=2)
    error = Ether(bytes(ETH / IP(src="172.18.0.3", dst=a["node"]) / ICMP(type=3, code=3) /
                        bytes(quote)))
    assert dp.run("ingress", error) == (TC_ACT_OK, bytes(error))


def test_flush_of_removed_backends_drops_both_directions_udp_always_tcp_by_option(dp):
    a = A[4]
    dp.maps.ct.clear()
    dp.run("ingress", udp(a["client"], 48001, a["node"], 30053))       # local UDP
    dp.run("ingress", tcp(a["client"], 48002, a["node"], 30081))       # SNAT TCP
    inner = IP(src=a["client"], dst=a["other"], ttl=63) / TCP(sport=48003, dport=30090)
    dp.run("ingress", Ether(bytes(ETH / IP(src=a["other"], dst=a["local"], proto=4) / inner)))
    image = dp.maps.read_image(M)
    table = ConntrackTable(dp.maps.ct)

    def pair(port, backend_ip, proto="TCP"):
        fe = next(f for f in image.services if f.port == port and f.protocol == proto
                  and ":" not in f.ip)
        bid = next(b for b in image.services[fe].slots if image.backends[b].ip == backend_ip)
        return fe, bid, image.backends[bid]

    pairs = [pair(30053, a["local"], "UDP"), pair(30081, a["remote"]), pair(30090, a["local"])]
    assert len(table.flows()) == 5  # 2 + 2 + 1 (the DSR delivery entry)
    assert table.flush_backends(pairs, tcp=False) == 2  # UDP: both directions
    left = table.flows()
    assert {f.proto for f in left} == {"TCP"} and len(left) == 3
    assert table.flush_backends(pairs, tcp=True) == 3  # SNAT flow + its port, DSR entry
    assert table.flows() == []
