"""The iptables driver end to end in a namespace lab: real curl, dig (dnsmasq), UDP and
SCTP clients through the rules the driver writes into the *node* namespace, with the
legacy backend and (a core subset) the nft one. IPv6: test_iptables_dualstack.py.

    client pod (10.244.1.10) ── node (forwarding, the driver's rules) ── br ── backend-i
    outside (192.168.50.2, .3) ┘ 192.168.50.1 = node address (NodePort)    10.244.0.10i

Every address also has an IPv6 twin (fd00:10:0:1::10, 2001:db8:50::2/::3, fd00:10::10i).
Backends route back through the node, as pods on other nodes do, so replies are
un-NATed by the node's conntrack. Nothing is written outside the lab's namespaces.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from lbcore.errors import DriverError
from lbcore.expand import IncrementalExpander
from lbcore.lab import NetLab, Netns, Proc
from lbcore.lab.capture import Capture
from lbcore.model import (
    Endpoint,
    EndpointSlice,
    NodeInfo,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from lbcore.testing import cluster, endpoint_slice
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.naming import SVC, service_chain

pytestmark = pytest.mark.netns

NODE_IP, NODE_IP6 = "192.168.50.1", "2001:db8:50::1"
OUTSIDE_IP, OUTSIDE_IP6 = "192.168.50.2", "2001:db8:50::2"
DENIED_IP, DENIED_IP6 = "192.168.50.3", "2001:db8:50::3"  # a second outside source
CLIENT_IP, CLIENT_IP6 = "10.244.1.10", "fd00:10:0:1::10"
NODE_BRIDGE_IP, NODE_BRIDGE_IP6 = "10.244.0.1", "fd00:10::1"  # SNAT source towards pods
VIP, VIP6 = "10.96.0.10", "fd00:96::10"
DNS_VIP = "10.96.0.53"
LB_IP, LB_IP6 = "198.51.100.7", "2001:db8:51::7"
EXT_IP, EXT_IP6 = "203.0.113.10", "2001:db8:e::10"
BACKENDS = 3
BACKENDS_IN_NFT = ("legacy", "nft")

UDP_FIXED_PORT = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[3])))
    s.settimeout(2)
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(4096)[0].decode().strip())
    except socket.timeout:
        print("TIMEOUT")
""")


@dataclass
class Lab:
    lab: NetLab
    node: Netns
    client: Netns
    outside: Netns
    backends: list[tuple[str, str, Netns]]  # (ipv4, ipv6, ns)
    servers: list[Proc] = field(default_factory=list)

    def http(self, port: int = 80) -> None:
        for i, (_ip, _ip6, ns) in enumerate(self.backends):
            self.servers.append(self.lab.http_server(ns, f"b{i}", port))

    def get(self, ns: Netns, url: str, source: str | None = None, timeout: float = 2):
        args = ["--interface", source] if source else []
        return self.lab.curl(ns, url + "/whoami", timeout=timeout, args=args)

    def whoami(self, ns: Netns, url: str, source: str | None = None) -> dict:
        r = self.get(ns, url, source)
        assert r.returncode == 0, (url, r.stderr)
        return json.loads(r.stdout)


@pytest.fixture
def ilab(netlab: NetLab) -> Lab:
    node, client, outside, sw = (netlab.netns(n) for n in ("node", "client", "outside", "sw"))
    netlab.veth(client, "eth0", node, "vclient")
    for ns, ifname, addrs in ((client, "eth0", (f"{CLIENT_IP}/24", f"{CLIENT_IP6}/64")),
                              (node, "vclient", ("10.244.1.1/24", "fd00:10:0:1::1/64"))):
        for a in addrs:
            ns.add_addr(ifname, a)
    client.add_route("default", via="10.244.1.1")
    client.add_route("default", via="fd00:10:0:1::1")
    netlab.veth(outside, "eth0", node, "ext0")
    for a in (f"{OUTSIDE_IP}/24", f"{DENIED_IP}/24", f"{OUTSIDE_IP6}/64", f"{DENIED_IP6}/64"):
        outside.add_addr("eth0", a)
    node.add_addr("ext0", f"{NODE_IP}/24")
    node.add_addr("ext0", f"{NODE_IP6}/64")
    outside.add_route("default", via=NODE_IP)
    outside.add_route("default", via=NODE_IP6)
    br = netlab.bridge(sw)
    netlab.plug(node, "eth1", sw, br)
    node.add_addr("eth1", f"{NODE_BRIDGE_IP}/24")
    node.add_addr("eth1", f"{NODE_BRIDGE_IP6}/64")
    node.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.send_redirects": 0,
                   "net.ipv6.conf.all.forwarding": 1})
    # service IPs lead nowhere by themselves: to a neighbour that never answers
    for dst in ("10.96.0.0/16", "198.51.100.0/24", "203.0.113.0/24"):
        node.add_route(dst, via="10.244.0.250")
    for dst in ("fd00:96::/64", "2001:db8:51::/64", "2001:db8:e::/64"):
        node.add_route(dst, via="fd00:10::fa")
    backends = []
    for i in range(BACKENDS):
        ns = netlab.netns(f"backend-{i}")
        netlab.plug(ns, "eth0", sw, br)
        ip, ip6 = f"10.244.0.{100 + i}", f"fd00:10::{100 + i}"
        ns.add_addr("eth0", f"{ip}/24")
        ns.add_addr("eth0", f"{ip6}/64")
        ns.add_route("default", via=NODE_BRIDGE_IP)
        ns.add_route("default", via=NODE_BRIDGE_IP6)
        backends.append((ip, ip6, ns))
    return Lab(netlab, node, client, outside, backends)


def svc(name: str, ips: str | tuple[str, ...], port: int = 80, protocol: str = "TCP", *,
        node_port: int | None = None, affinity: int | None = None, etp_local: bool = False,
        lb_ips: tuple[str, ...] = (), external_ips: tuple[str, ...] = (),
        ranges: tuple[str, ...] = ()) -> Service:
    ips = (ips,) if isinstance(ips, str) else ips
    kind = (ServiceType.LOAD_BALANCER if lb_ips else
            ServiceType.NODE_PORT if node_port else ServiceType.CLUSTER_IP)
    return Service(ServiceKey("default", name), kind, ips,
                   tuple(6 if ":" in ip else 4 for ip in ips),
                   (ServicePort("p", protocol, port, port, node_port),),
                   external_ips=external_ips, load_balancer_ips=lb_ips,
                   load_balancer_source_ranges=ranges, session_affinity_timeout=affinity,
                   external_traffic_local=etp_local)


def eps(service: Service, ips: list[str], port: int = 80, nodes: dict[str, str] | None = None,
        suffix: str = "abc") -> EndpointSlice:
    sp = service.ports[0]
    base = endpoint_slice(service, ips, port=port, suffix=suffix)
    return EndpointSlice(base.namespace, base.name, base.service, base.address_type,
                         (type(base.ports[0])("p", sp.protocol, port),),
                         tuple(Endpoint((ip,), True, True, False,
                                        (nodes or {}).get(ip, "node-a")) for ip in ips))


def dual_eps(service: Service, lab: Lab, n: int | None = None, port: int = 80,
             nodes: dict[str, str] | None = None) -> list[EndpointSlice]:
    """An IPv4 and an IPv6 slice with the first ``n`` backends."""
    return [eps(service, backend_ips(lab, n), port, nodes, "v4"),
            eps(service, backend_ips(lab, n, 6), port, nodes, "v6")]


class Agent:
    """The driver programming the lab's node namespace, fed by an incremental expander."""

    def __init__(self, lab: Lab, **options) -> None:
        node = NodeInfo("node-a", (NODE_IP, NODE_IP6))
        self.driver = IptablesDriver({"netns": lab.node.name,
                                      "cluster_cidr": "10.244.0.0/16,fd00:10::/48",
                                      **options}, node)
        self.expander = IncrementalExpander(node, admit=IptablesDriver.capabilities().unsupported,
                                            local_node_ports=True)
        self.driver.setup()

    def sync(self, services, slices, changed=None):
        state = self.expander.expand(cluster(services, slices), changed)
        assert not state.skipped, state.skipped
        return self.driver.sync(state, changed)


@pytest.fixture(params=["legacy"])
def agent(ilab: Lab, request):
    """The driver with the backend given by ``request.param`` (legacy unless a test
    parametrizes ``agent`` indirectly)."""
    a = Agent(ilab, backend=request.param)
    try:
        yield a
    finally:
        a.driver.cleanup()


both_backends = pytest.mark.parametrize("agent", BACKENDS_IN_NFT, indirect=True)


def backend_ips(lab: Lab, n: int | None = None, family: int = 4) -> list[str]:
    return [ip if family == 4 else ip6 for ip, ip6, _ in lab.backends[:n]]


@both_backends
def test_clusterip_spreads_and_uses_kube_proxy_chains(ilab, agent):
    ilab.http()
    web = svc("web", VIP)
    agent.sync([web], [eps(web, backend_ips(ilab))])
    seen = Counter(ilab.whoami(ilab.client, f"http://{VIP}")["backend"] for _ in range(30))
    assert set(seen) == {"b0", "b1", "b2"}, seen
    who = ilab.whoami(ilab.client, f"http://{VIP}")
    assert who["client_ip"] == CLIENT_IP  # pod traffic inside the cluster CIDR: no SNAT
    saved = agent.driver.ruleset_text()
    assert '-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment ' \
           '"default/web:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-' in saved
    assert "--probability 0.33333333349" in saved and "MASQUERADE --random-fully" in saved
    rows = agent.driver.dump()  # iptc (legacy) or iptables-nft-save (nft) read back
    (row,) = [r for r in rows if r.address.ip == VIP]
    assert sorted(b.ip for b in row.backends) == backend_ips(ilab)
    assert row.type == "ClusterIP" and row.service == "default/web:p"


def test_nodeport_from_outside_is_masqueraded_unless_etp_local(ilab, agent):
    ilab.http()
    web = svc("web", VIP, node_port=30080)
    agent.sync([web], [eps(web, backend_ips(ilab))])
    who = ilab.whoami(ilab.outside, f"http://{NODE_IP}:30080")
    assert who["client_ip"] == NODE_BRIDGE_IP, who  # SNAT to the node (eTP Cluster)
    local = svc("web", VIP, node_port=30080, etp_local=True)
    nodes = {backend_ips(ilab)[0]: "node-a", backend_ips(ilab)[1]: "node-b",
             backend_ips(ilab)[2]: "node-b"}
    agent.sync([local], [eps(local, backend_ips(ilab), nodes=nodes)],
               frozenset({local.key}))
    for _ in range(8):
        who = ilab.whoami(ilab.outside, f"http://{NODE_IP}:30080")
        assert who["client_ip"] == OUTSIDE_IP, who  # source IP preserved
        assert who["backend"] == "b0", who  # only the local endpoint
    rows = {r.address: r for r in agent.driver.dump()}
    np_row = next(r for a, r in rows.items() if a.port == 30080)
    assert [b.ip for b in np_row.backends] == [backend_ips(ilab)[0]]


def test_external_ip_and_load_balancer_ip_from_outside(ilab, agent):
    ilab.http()
    web = svc("web", VIP, node_port=30082, lb_ips=(LB_IP,), external_ips=(EXT_IP,))
    agent.sync([web], [eps(web, backend_ips(ilab))])
    for ip in (EXT_IP, LB_IP):
        seen = {ilab.whoami(ilab.outside, f"http://{ip}")["backend"] for _ in range(12)}
        assert len(seen) > 1, (ip, seen)
        who = ilab.whoami(ilab.outside, f"http://{ip}")
        assert who["client_ip"] == NODE_BRIDGE_IP, who  # external traffic: masqueraded
    types = {r.address.ip: r.type for r in agent.driver.dump()}
    assert types[EXT_IP] == "ExternalIP" and types[LB_IP] == "LoadBalancer"


@both_backends
def test_no_endpoints_is_refused_at_once(ilab, agent):
    web = svc("web", VIP)
    agent.sync([web], [eps(web, [])])
    started = time.monotonic()
    r = ilab.lab.curl(ilab.client, f"http://{VIP}/", timeout=3)
    # refused (curl 7) at once; without the REJECT, ARP for the dead next hop takes seconds
    assert r.returncode == 7, r
    assert time.monotonic() - started < 1.5
    (row,) = [r for r in agent.driver.dump() if r.address.ip == VIP]
    assert row.backends == () and "no endpoints: REJECT" in row.flags


def test_session_affinity_sticks(ilab, agent):
    ilab.http()
    web = svc("web", VIP, affinity=60)
    agent.sync([web], [eps(web, backend_ips(ilab))])
    seen = {ilab.whoami(ilab.client, f"http://{VIP}")["backend"] for _ in range(12)}
    assert len(seen) == 1, seen
    assert any("affinity=60s" in r.flags for r in agent.driver.dump())


def test_load_balancer_source_ranges_admit_one_source_and_drop_another(ilab, agent):
    ilab.http()
    web = svc("web", VIP, lb_ips=(LB_IP,), node_port=30081, ranges=(f"{OUTSIDE_IP}/32",))
    agent.sync([web], [eps(web, backend_ips(ilab))])
    who = ilab.whoami(ilab.outside, f"http://{LB_IP}", source=OUTSIDE_IP)
    assert who["backend"].startswith("b")
    r = ilab.get(ilab.outside, f"http://{LB_IP}", source=DENIED_IP, timeout=1)
    assert r.returncode == 28, r  # dropped by KUBE-PROXY-FIREWALL: a timeout, no refusal
    # the NodePort of the same service is not subject to the ranges (as in kube-proxy)
    assert ilab.get(ilab.outside, f"http://{NODE_IP}:30081", source=DENIED_IP).returncode == 0
    (row,) = [r for r in agent.driver.dump() if r.address.ip == LB_IP]
    assert f"sourceRanges={OUTSIDE_IP}/32" in row.flags


def test_dig_through_udp_clusterip(ilab, agent):
    for i, (ip, _ip6, ns) in enumerate(ilab.backends):
        ilab.servers.append(ilab.lab.dnsmasq(ns, f"b{i}", [ip]))
    dns = svc("dns", DNS_VIP, 53, "UDP")
    agent.sync([dns], [eps(dns, backend_ips(ilab), port=53)])
    answers = Counter()
    for _ in range(12):
        r = ilab.lab.dig(ilab.client, DNS_VIP, "who.test", "TXT")
        assert r.returncode == 0 and r.stdout.strip(), r
        answers[r.stdout.strip()] += 1
    assert len(answers) > 1, answers


def udp_ask(lab: Lab, vip: str, port: int = 5353, source_port: int = 40000) -> str:
    r = lab.lab.run(lab.client, [sys.executable, "-I", "-S", "-c", UDP_FIXED_PORT,
                                 vip, str(port), str(source_port)], timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@both_backends
def test_udp_client_with_fixed_port_follows_an_endpoint_swap(ilab, agent):
    for i, (_ip, _ip6, ns) in enumerate(ilab.backends[:2]):
        ilab.servers.append(ilab.lab.udp_server(ns, f"b{i}", 5353))
    echo = svc("echo", DNS_VIP, 5353, "UDP")
    agent.sync([echo], [eps(echo, backend_ips(ilab, 1), port=5353)])
    assert udp_ask(ilab, DNS_VIP).startswith("backend=b0")
    result = agent.sync([echo], [eps(echo, [backend_ips(ilab)[1]], port=5353)],
                        frozenset({echo.key}))
    assert result.details["conntrack_deleted"] >= 1
    assert udp_ask(ilab, DNS_VIP).startswith("backend=b1")  # same 5-tuple, new endpoint


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


SCTP_INIT = textwrap.dedent("""
    import socket, sys
    packet = bytes.fromhex(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    s.sendto(packet, (sys.argv[1], 0))
""")


def sctp_init(sport: int, dport: int) -> bytes:
    """An SCTP INIT (RFC 9260 3.3.2) with its CRC32c: conntrack drops bad checksums."""
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234ABCD, 65535, 10, 10, 1)
    header = struct.pack("!HHII", sport, dport, 0, 0)
    crc = _crc32c(header + chunk)
    return struct.pack("!HHI", sport, dport, 0) + struct.pack("<I", crc) + chunk


def test_sctp_clusterip_is_dnated_to_an_endpoint(ilab, agent):
    # This kernel is built without SCTP sockets (CONFIG_IP_SCTP is not set; socket(...,
    # IPPROTO_SCTP) fails with EPROTONOSUPPORT), but netfilter's SCTP conntrack, match
    # and NAT are built in. So the client sends a real SCTP INIT from a raw socket and
    # the capture on the endpoint shows it arrive DNATed (no association can follow).
    sctp = svc("sctp", VIP, 9999, "SCTP")
    agent.sync([sctp], [eps(sctp, backend_ips(ilab, 1), port=9999)])
    assert "-p sctp -m comment --comment" in agent.driver.ruleset_text()
    backend_ns = ilab.backends[0][2]
    with Capture(ilab.lab, backend_ns, "eth0", ["sctp"]) as cap:
        r = ilab.lab.run(ilab.client, [sys.executable, "-I", "-S", "-c", SCTP_INIT, VIP,
                                       sctp_init(40001, 9999).hex()])
        assert r.returncode == 0, r.stderr
    arrived = [p.line for p in cap.packets if "INIT" in p.line]
    assert arrived, cap.lines
    assert f"{CLIENT_IP}.40001 > {backend_ips(ilab)[0]}.9999" in arrived[0], arrived


def _rules_only(saved: str) -> str:
    """iptables-save output without its comment lines (they carry timestamps)."""
    return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))


@both_backends
def test_failed_restore_keeps_previous_rules_logs_the_line_and_a_full_sync_recovers(
        ilab, agent, caplog):
    # kube-proxy's own failure case (KEP-3453): the kernel lost a chain the driver
    # believes in; the next partial restore references it and is rejected whole.
    ilab.http()
    web, api = svc("web", VIP), svc("api", "10.96.0.11")
    agent.sync([web, api], [eps(web, backend_ips(ilab)), eps(api, backend_ips(ilab))])
    web_svc = service_chain(SVC, "default/web:p", "TCP")
    tool = f"iptables-{agent.driver.opts.backend}-restore"
    broken = ilab.lab.run(ilab.node, [tool, "--noflush"], input=(
        "*nat\n"
        f"-D KUBE-SERVICES -d {VIP}/32 -p tcp -m comment --comment \"default/web:p cluster IP\""
        f" -m tcp --dport 80 -j {web_svc}\n-F {web_svc}\n-X {web_svc}\nCOMMIT\n"))
    assert broken.returncode == 0, broken.stderr
    before = _rules_only(agent.driver.ruleset_text())
    new = svc("new", "10.96.0.12")
    everything = [web, api, new], [eps(s, backend_ips(ilab)) for s in (web, api, new)]
    with caplog.at_level(logging.ERROR), \
            pytest.raises(DriverError, match="previous rules are still in place"):
        agent.sync(*everything, frozenset({new.key}))
    rejected = [m for m in caplog.messages if "restore rejected line" in m]
    assert any(web_svc in m for m in rejected), caplog.messages  # the offending line
    assert _rules_only(agent.driver.ruleset_text()) == before  # nothing of it applied
    assert ilab.whoami(ilab.client, "http://10.96.0.11")["backend"].startswith("b")
    result = agent.sync(*everything, frozenset({new.key}))  # what the runner retries
    assert result.full  # after a failure the driver forces a full sync
    for ip in (VIP, "10.96.0.11", "10.96.0.12"):
        assert ilab.whoami(ilab.client, f"http://{ip}")["backend"].startswith("b")


def test_partial_sync_rewrites_only_changed_chains_and_removes_stale(ilab, agent):
    a, b = svc("a", "10.96.0.1"), svc("b", "10.96.0.2")
    agent.sync([a, b], [eps(a, backend_ips(ilab)), eps(b, backend_ips(ilab))])
    sent = []
    real = agent.driver.ipt.restore
    agent.driver.ipt.restore = lambda text: (sent.append(text), real(text))[1]
    agent.sync([a, b], [eps(a, backend_ips(ilab, 1)), eps(b, backend_ips(ilab))],
               frozenset({a.key}))
    (text,) = sent
    assert "default/b:p" not in text  # b's chains untouched
    assert "KUBE-SERVICES" not in text  # an endpoint change leaves the shared chains alone
    assert text.count("-X KUBE-SEP-") == 2  # a's two removed endpoints
    saved = agent.driver.ruleset_text()
    assert saved.count(":KUBE-SEP-") == 4 and saved.count(":KUBE-SVC-") == 2
    agent.driver.cleanup()
    assert "KUBE-" not in agent.driver.ruleset_text()
    assert "KUBE-" not in agent.driver.ruleset_text(6)
