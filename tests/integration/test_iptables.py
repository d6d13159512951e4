"""The iptables driver end to end in a namespace lab: real curl, dig (dnsmasq) and UDP
clients through the rules the driver writes into the *node* namespace.

    client pod (10.244.1.10) ── node (ip_forward, the driver's rules) ── br ── backend-i
    outside (192.168.50.2)  ──┘ 192.168.50.1 = node address (NodePort)     10.244.0.10i

Backends route back through the node, as pods on other nodes do, so replies are
un-NATed by the node's conntrack. Nothing is written outside the lab's namespaces.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from lbcore.errors import DriverError
from lbcore.expand import IncrementalExpander
from lbcore.lab import NetLab, Netns, Proc
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

pytestmark = pytest.mark.netns

NODE_IP = "192.168.50.1"
OUTSIDE_IP = "192.168.50.2"
CLIENT_IP = "10.244.1.10"
VIP = "10.96.0.10"
DNS_VIP = "10.96.0.53"
LB_IP = "198.51.100.7"

UDP_FIXED_PORT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[3])))
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
    backends: list[tuple[str, Netns]]  # (ip, ns)
    servers: list[Proc] = field(default_factory=list)

    def http(self, port: int = 80) -> None:
        for i, (_ip, ns) in enumerate(self.backends):
            self.servers.append(self.lab.http_server(ns, f"b{i}", port))

    def whoami(self, ns: Netns, url: str) -> dict:
        r = self.lab.curl(ns, url + "/whoami", timeout=2)
        assert r.returncode == 0, (url, r.stderr)
        return json.loads(r.stdout)


@pytest.fixture
def ilab(netlab: NetLab) -> Lab:
    node, client, outside, sw = (netlab.netns(n) for n in ("node", "client", "outside", "sw"))
    netlab.veth(client, "eth0", node, "vclient")
    client.add_addr("eth0", f"{CLIENT_IP}/24")
    node.add_addr("vclient", "10.244.1.1/24")
    client.add_route("default", via="10.244.1.1")
    netlab.veth(outside, "eth0", node, "ext0")
    outside.add_addr("eth0", f"{OUTSIDE_IP}/24")
    node.add_addr("ext0", f"{NODE_IP}/24")
    outside.add_route("default", via=NODE_IP)
    br = netlab.bridge(sw)
    netlab.plug(node, "eth1", sw, br)
    node.add_addr("eth1", "10.244.0.1/24")
    node.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.send_redirects": 0})
    # service IPs lead nowhere by themselves: to a neighbour that never answers ARP
    node.ip("route", "add", "10.96.0.0/16", "via", "10.244.0.250")
    node.ip("route", "add", "198.51.100.0/24", "via", "10.244.0.250")  # LoadBalancer IPs
    backends = []
    for i in range(3):
        ns = netlab.netns(f"backend-{i}")
        netlab.plug(ns, "eth0", sw, br)
        ip = f"10.244.0.{100 + i}"
        ns.add_addr("eth0", f"{ip}/24")
        ns.add_route("default", via="10.244.0.1")
        backends.append((ip, ns))
    return Lab(netlab, node, client, outside, backends)


def svc(name: str, ip: str, port: int = 80, protocol: str = "TCP", *, node_port: int | None = None,
        affinity: int | None = None, etp_local: bool = False, lb_ip: str | None = None,
        ranges: tuple[str, ...] = ()) -> Service:
    kind = (ServiceType.LOAD_BALANCER if lb_ip else
            ServiceType.NODE_PORT if node_port else ServiceType.CLUSTER_IP)
    return Service(ServiceKey("default", name), kind, (ip,), (4,),
                   (ServicePort("p", protocol, port, port, node_port),),
                   load_balancer_ips=(lb_ip,) if lb_ip else (),
                   load_balancer_source_ranges=ranges,
                   session_affinity_timeout=affinity, external_traffic_local=etp_local)


def eps(service: Service, ips: list[str], port: int = 80, nodes: dict[str, str] | None = None,
        ) -> EndpointSlice:
    sp = service.ports[0]
    base = endpoint_slice(service, ips, port=port)
    return EndpointSlice(base.namespace, base.name, base.service, "IPv4",
                         (type(base.ports[0])("p", sp.protocol, port),),
                         tuple(Endpoint((ip,), True, True, False,
                                        (nodes or {}).get(ip, "node-a")) for ip in ips))


class Agent:
    """The driver programming the lab's node namespace, fed by an incremental expander."""

    def __init__(self, lab: Lab, **options) -> None:
        node = NodeInfo("node-a", (NODE_IP,))
        self.driver = IptablesDriver({"netns": lab.node.name, "cluster_cidr": "10.244.0.0/16",
                                      **options}, node)
        self.expander = IncrementalExpander(node, admit=IptablesDriver.capabilities().unsupported)
        self.driver.setup()

    def sync(self, services, slices, changed=None):
        state = self.expander.expand(cluster(services, slices), changed)
        return self.driver.sync(state, changed)


@pytest.fixture
def agent(ilab: Lab):
    a = Agent(ilab)
    try:
        yield a
    finally:
        a.driver.cleanup()


def backend_ips(lab: Lab, n: int | None = None) -> list[str]:
    return [ip for ip, _ in lab.backends[:n]]


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
    rows = agent.driver.dump()  # iptc read back
    (row,) = [r for r in rows if r.address.ip == VIP]
    assert sorted(b.ip for b in row.backends) == backend_ips(ilab)
    assert row.type == "ClusterIP" and row.service == "default/web:p"


def test_nodeport_from_outside_is_masqueraded_unless_etp_local(ilab, agent):
    ilab.http()
    web = svc("web", VIP, node_port=30080)
    agent.sync([web], [eps(web, backend_ips(ilab))])
    who = ilab.whoami(ilab.outside, f"http://{NODE_IP}:30080")
    assert who["client_ip"] == "10.244.0.1", who  # SNAT to the node (eTP Cluster)
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


def test_no_endpoints_is_refused_at_once(ilab, agent):
    web = svc("web", VIP)
    agent.sync([web], [eps(web, [])])
    started = time.monotonic()
    r = ilab.lab.curl(ilab.client, f"http://{VIP}/", timeout=3)
    # refused (curl 7) at once; without the REJECT, ARP for the dead next hop takes seconds
    assert r.returncode == 7, r
    assert time.monotonic() - started < 1.5
    (row,) = agent.driver.dump()
    assert row.backends == () and "no endpoints: REJECT" in row.flags


def test_session_affinity_sticks(ilab, agent):
    ilab.http()
    web = svc("web", VIP, affinity=60)
    agent.sync([web], [eps(web, backend_ips(ilab))])
    seen = {ilab.whoami(ilab.client, f"http://{VIP}")["backend"] for _ in range(12)}
    assert len(seen) == 1, seen
    assert any("affinity=60s" in r.flags for r in agent.driver.dump())


def test_load_balancer_source_ranges(ilab, agent):
    ilab.http()
    allowed = svc("web", VIP, lb_ip=LB_IP, node_port=30081, ranges=(f"{OUTSIDE_IP}/32",))
    agent.sync([allowed], [eps(allowed, backend_ips(ilab))])
    assert ilab.whoami(ilab.outside, f"http://{LB_IP}")["backend"].startswith("b")
    closed = svc("web", VIP, lb_ip=LB_IP, node_port=30081, ranges=("203.0.113.0/24",))
    agent.sync([closed], [eps(closed, backend_ips(ilab))], frozenset({closed.key}))
    r = ilab.lab.curl(ilab.outside, f"http://{LB_IP}/", timeout=1)
    assert r.returncode == 28, r  # dropped: a timeout, not a refusal


def test_dig_through_udp_clusterip(ilab, agent):
    for i, (ip, ns) in enumerate(ilab.backends):
        ilab.servers.append(ilab.lab.dnsmasq(ns, f"b{i}", [ip]))
    dns = svc("dns", DNS_VIP, 53, "UDP")
    agent.sync([dns], [eps(dns, backend_ips(ilab), port=53)])
    answers = Counter()
    for _ in range(12):
        r = ilab.lab.dig(ilab.client, DNS_VIP, "who.test", "TXT")
        assert r.returncode == 0 and r.stdout.strip(), r
        answers[r.stdout.strip()] += 1
    assert len(answers) > 1, answers


def test_udp_client_with_fixed_port_follows_an_endpoint_swap(ilab, agent):
    for i, (_ip, ns) in enumerate(ilab.backends[:2]):
        ilab.servers.append(ilab.lab.udp_server(ns, f"b{i}", 5353))
    echo = svc("echo", DNS_VIP, 5353, "UDP")

    def ask() -> str:
        r = ilab.lab.run(ilab.client, [sys.executable, "-I", "-S", "-c", UDP_FIXED_PORT,
                                       DNS_VIP, "5353", "40000"], timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    agent.sync([echo], [eps(echo, backend_ips(ilab, 1), port=5353)])
    assert ask().startswith("backend=b0")
    result = agent.sync([echo], [eps(echo, [backend_ips(ilab)[1]], port=5353)],
                        frozenset({echo.key}))
    assert result.details["conntrack_deleted"] >= 1
    assert ask().startswith("backend=b1")  # same 5-tuple, new endpoint


def _rules_only(saved: str) -> str:
    """iptables-save output without its comment lines (they carry timestamps)."""
    return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))


def test_failed_restore_keeps_previous_rules_and_next_sync_is_full(ilab, agent, caplog):
    ilab.http()
    web = svc("web", VIP)
    agent.sync([web], [eps(web, backend_ips(ilab, 1))])
    before = _rules_only(agent.driver.ruleset_text())
    real = agent.driver.ipt.restore
    agent.driver.ipt.restore = lambda text: real(text.replace(
        "COMMIT\n*nat", "COMMIT\n*nat\n-A KUBE-SERVICES -j KUBE-NO-SUCH-CHAIN", 1))
    try:
        with pytest.raises(DriverError, match="previous rules are still in place"):
            agent.sync([web], [eps(web, backend_ips(ilab))], frozenset({web.key}))
    finally:
        agent.driver.ipt.restore = real
    assert "KUBE-NO-SUCH-CHAIN" in caplog.text  # the offending line is logged
    assert _rules_only(agent.driver.ruleset_text()) == before
    assert ilab.whoami(ilab.client, f"http://{VIP}")["backend"] == "b0"
    result = agent.sync([web], [eps(web, backend_ips(ilab))], frozenset({web.key}))
    assert result.full  # after a failure the driver forces a full sync


def test_partial_sync_rewrites_only_changed_chains_and_removes_stale(ilab, agent):
    a, b = svc("a", "10.96.0.1"), svc("b", "10.96.0.2")
    agent.sync([a, b], [eps(a, backend_ips(ilab)), eps(b, backend_ips(ilab))])
    sent = []
    real = agent.driver.ipt.restore
    agent.driver.ipt.restore = lambda text: (sent.append(text), real(text))[1]
    agent.sync([a, b], [eps(a, backend_ips(ilab, 1)), eps(b, backend_ips(ilab))],
               frozenset({a.key}))
    (text,) = sent
    assert "default/b:p -> " not in text  # b's chains untouched
    assert text.count("-X KUBE-SEP-") == 2  # a's two removed endpoints
    saved = agent.driver.ruleset_text()
    assert saved.count(":KUBE-SEP-") == 4 and saved.count(":KUBE-SVC-") == 2
    agent.driver.cleanup()
    assert "KUBE-" not in agent.driver.ruleset_text()
