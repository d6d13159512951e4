"""CVE-2020-8558: a neighbour on the node network must not reach the node's 127.0.0.1.

kube-proxy's iptables mode sets ``net.ipv4.conf.all.route_localnet=1`` (for NodePorts
on localhost), which lets any host on the node's L2 segment send packets to
127.0.0.1 of the node: to a NodePort, and to every service bound to 127.0.0.1 only.
lbcore never sets it. Here, for each built-in driver that handles NodePorts, a
neighbour namespace on the node bridge sends a raw TCP SYN (scapy, Ethernet to the
node's MAC) to 127.0.0.1:NodePort and to 127.0.0.1:8099, where a server bound to
127.0.0.1 only listens in the node's namespace; the same for ::1. tcpdump on the node
proves each SYN arrived; nothing may come back, and nothing may be forwarded to the
backend. A control with ``route_localnet=1`` set by the test (in the lab's node
namespace only) shows that the probe does see an answer when there is one.

The sysctl is not the only way in: nat PREROUTING runs before the kernel's martian
check, so a NodePort rule matching ``-m addrtype --dst-type LOCAL`` (kube-proxy
without ``--nodeport-addresses``) DNATs a neighbour's SYN to 127.0.0.1:NodePort to a
backend even with ``route_localnet=0`` (tried by hand: the probe then sees the
SYN-ACK from 127.0.0.1, and the forwarded SYN shows on the node). The iptables
driver jumps to KUBE-NODEPORTS for ``-d <node IP>/32`` only, tcnodeport matches node
addresses, and socklb has no packet path: the checks below hold for all three.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbcore.conformance.env import LAB_OPTIONS
from lbcore.lab import NetLab, Netns
from lbcore.lab.agents import start_agents, stop_agents
from lbcore.lab.capture import Capture
from lbcore.lab.cluster import Cluster, ClusterNode, ClusterPod
from lbcore.lab.controller import ServicePortSpec, ServiceSpec

NODE_PORT = 31080
LOCAL_PORT = 8099  # bound to 127.0.0.1 / ::1 only, in the node's namespace
NEIGHBOUR4, NEIGHBOUR6 = "172.18.0.200", "fc00:f853:ccd:e793::c8"
DRIVERS = ("iptables", "tcnodeport", "socklb")
REPO = Path(__file__).resolve().parents[2]

# Sends one SYN per target from a fresh source port and prints, as JSON, every TCP
# packet that came back to those ports within WAIT seconds (none, if all is well).
_PROBE = textwrap.dedent("""
    import json, random, sys, time
    from scapy.all import IP, TCP, AsyncSniffer, Ether, IPv6, conf, get_if_hwaddr, sendp
    conf.verb = 0
    iface, mac, src4, src6, wait = sys.argv[1:6]
    own = get_if_hwaddr(iface)  # else scapy takes lo's (zero) MAC for 127.0.0.1: dropped
    targets = [(host, int(port)) for host, port in (t.rsplit(":", 1) for t in sys.argv[6:])]
    sports = {random.randint(20000, 60000): t for t in targets}
    sniffer = AsyncSniffer(iface=iface, store=True,
                           lfilter=lambda p: TCP in p and p[TCP].dport in sports)
    sniffer.start()
    time.sleep(0.3)
    for sport, (host, port) in sports.items():
        ip = IPv6(src=src6, dst=host) if ":" in host else IP(src=src4, dst=host)
        sendp(Ether(src=own, dst=mac) / ip / TCP(sport=sport, dport=port, flags="S", seq=1000),
              iface=iface)
    time.sleep(float(wait))
    replies = []
    for p in sniffer.stop():
        layer = IPv6 if IPv6 in p else IP
        replies.append({"to": "%s:%d" % sports[p[TCP].dport], "src": p[layer].src,
                        "sport": p[TCP].sport, "flags": str(p[TCP].flags)})
    print(json.dumps({"sent": {str(k): "%s:%d" % v for k, v in sports.items()},
                      "replies": replies}))
""")

_LOCAL_SERVER = textwrap.dedent("""
    import http.server, socket, sys, threading
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"node-local\\n")
    class Server6(http.server.HTTPServer):
        address_family = socket.AF_INET6
    port = int(sys.argv[1])
    six = Server6(("::1", port), Handler)
    threading.Thread(target=six.serve_forever, daemon=True).start()
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


@dataclass
class Env:
    lab: NetLab
    cluster: Cluster
    node: ClusterNode  # the node the neighbour probes
    backend: ClusterPod
    client: ClusterPod  # a pod on that node (socklb's NodePort clients are pods)
    neighbour: Netns

    def node_mac(self) -> str:
        out = self.node.ns.run(["ip", "-j", "link", "show", "eth0"], check=True).stdout
        return json.loads(out)[0]["address"]

    def probe(self, *targets: str, wait: float = 1.5) -> dict:
        # A neighbour the node already knows (its ARP/ND entry is there): a reply from
        # 127.0.0.1 could not resolve the neighbour's MAC by itself (its ARP request
        # "tell 127.0.0.1" is ignored), as an attacker's host would not need it to.
        for ip in (self.node.ipv4, f"[{self.node.ipv6}]"):  # refused, but resolved
            self.lab.curl(self.neighbour, f"http://{ip}:9/", timeout=1)
        r = self.lab.run(self.neighbour, [sys.executable, "-c", _PROBE, "eth0", self.node_mac(),
                                          NEIGHBOUR4, NEIGHBOUR6, str(wait), *targets],
                         timeout=wait + 20)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def route_localnet(self) -> dict[str, str]:
        """Every ``net.ipv4.conf.*.route_localnet`` of the probed node's namespace."""
        r = self.node.ns.run(["sysctl", "-a", "-r", "route_localnet"], check=True)
        return dict(line.split(" = ") for line in r.stdout.splitlines())


@pytest.fixture(scope="module")
def env():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, eBPF)")
    lab = NetLab()
    try:
        cluster = Cluster.create(lab, 2)  # control-plane (probed), worker (the backend)
        node = cluster.node("control-plane")
        backend = cluster.add_pod("web", "worker", {"app": "web"})
        cluster.http_server(backend, "web\n", 80)
        client = cluster.add_pod("client", "control-plane")
        cluster.controller.add_service(ServiceSpec(
            "web", {"app": "web"}, (ServicePortSpec(80, 80, node_port=NODE_PORT),),
            type="NodePort"), dual_stack=True)
        local = lab.spawn(node.ns, [sys.executable, "-I", "-c", _LOCAL_SERVER, str(LOCAL_PORT)],
                          name="node-local-server")
        lab.wait_listening(local, LOCAL_PORT)
        neighbour = lab.netns("neighbour")
        lab.plug(neighbour, "eth0", cluster.switch, cluster.bridge)
        neighbour.add_addr("eth0", f"{NEIGHBOUR4}/16")
        neighbour.add_addr("eth0", f"{NEIGHBOUR6}/64")
        yield Env(lab, cluster, node, backend, client, neighbour)
    finally:
        lab.close()


LOOPBACK = ("127.0.0.1", "::1")
TARGETS = (f"127.0.0.1:{NODE_PORT}", f"127.0.0.1:{LOCAL_PORT}",
           f"::1:{NODE_PORT}", f"::1:{LOCAL_PORT}")


def test_nothing_in_lbcore_sets_route_localnet():
    """No code, manifest or script of lbcore writes the sysctl (docs and tests may name it)."""
    hits = []
    for top in ("lbcore", "drivers", "bpf", "plugins", "deploy", "scripts", "dev", "Makefile"):
        root = REPO / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "tests" in path.relative_to(REPO).parts or path.suffix in (".md", ".pyc"):
                continue
            text = path.read_text(errors="replace")
            hits += [f"{path.relative_to(REPO)}: {m.group(0)}"
                     for m in re.finditer(r".*route.localnet.*", text)]
    assert hits == []


@pytest.mark.netns
def test_the_probe_sees_an_answer_when_route_localnet_is_on(env):
    """The control: with the sysctl on (lab node namespace only), 127.0.0.1 answers."""
    assert set(env.route_localnet().values()) == {"0"}
    r = env.lab.curl(env.node.ns, f"http://127.0.0.1:{LOCAL_PORT}/")
    assert r.stdout == "node-local\n", r.stderr  # the server is there, for the node itself
    env.node.ns.sysctl(**{"net.ipv4.conf.all.route_localnet": 1,
                          "net.ipv4.conf.eth0.route_localnet": 1})
    try:
        seen = env.probe(f"127.0.0.1:{LOCAL_PORT}")
    finally:
        env.node.ns.sysctl(**{"net.ipv4.conf.all.route_localnet": 0,
                              "net.ipv4.conf.eth0.route_localnet": 0})
    # The SYN-ACK (and its retransmissions: the neighbour's kernel drops it as martian)
    assert {(x["src"], x["sport"], x["flags"]) for x in seen["replies"]} == {
        ("127.0.0.1", LOCAL_PORT, "SA")}
    assert set(env.route_localnet().values()) == {"0"}


@pytest.mark.netns
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_neighbour_gets_nothing_from_the_nodes_loopback(env, driver):
    agents = start_agents(env.cluster, [driver], options=LAB_OPTIONS)
    try:
        # The NodePort is programmed and answers on the node's address ...
        where = env.client.ns if driver == "socklb" else env.neighbour
        cgroup = env.client.cgroup if driver == "socklb" else None
        r = env.lab.curl(where, f"http://{env.node.ipv4}:{NODE_PORT}/", cgroup=cgroup)
        assert r.stdout == "web\n", r.stderr
        # ... the driver left the sysctl alone on every node ...
        assert set(env.route_localnet().values()) == {"0"}
        # ... and the node's loopback gets nothing through, to the NodePort or to the
        # server bound to 127.0.0.1 / ::1.
        with Capture(env.lab, env.node.ns, "eth0", ["tcp"]) as cap:
            seen = env.probe(*TARGETS)
        assert seen["replies"] == []
        arrived = {f"{p.dst}:{p.dport}" for p in cap.packets
                   if p.syn and p.src in (NEIGHBOUR4, NEIGHBOUR6) and p.dst in LOOPBACK}
        assert arrived == set(TARGETS), cap.lines  # sent, and on the node's wire
        answered = [p.line for p in cap.packets if p.dst in (NEIGHBOUR4, NEIGHBOUR6)
                    and p.sport in (NODE_PORT, LOCAL_PORT)]
        forwarded = [p.line for p in cap.packets if p.dst in env.backend.ips]
        assert answered == [] and forwarded == [], cap.lines
    finally:
        problems = stop_agents(env.cluster, agents)
    assert problems == []
