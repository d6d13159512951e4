"""tcnodeport end to end: an outside client on the node network, real servers in pods
behind two nodes, the driver attached to eth0 of both nodes (in their namespaces).

Node 0 (172.18.0.2, fc00:f853:ccd:e793::2) is the entry node; pod0-0 runs on it, pod1-0
on node 1. Frontends on node 0, on both of its addresses: 30080 both pods, 30081
remote pod only, 30082 local pod only, 30053/UDP dnsmasq on the remote pod, 30201
iperf3 and 30202 a sha256 sink on the remote pod; 30054/UDP (IPv4) starts on the
remote pod's dnsmasq and moves to the local one. Source IP seen by the backend, as
documented: local backend -> client; remote, snat -> node 0; remote, dsr -> client.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from lbcore.lab import NetLab
from lbcore.model import ServiceKey
from lbcore_tcnodeport.conntrack import ConntrackTable
from lbcore_tcnodeport.driver import TcNodePortDriver
from lbcore_tcnodeport.lab import NodePortLab, build_nodeport_lab, frontend, state

pytestmark = pytest.mark.netns
HTTP, ECHO, DNS, IPERF, SINK = 8080, 9000, 53, 5201, 9100
MB100 = 100 * 1024 * 1024


def frontends(nl: NodePortLab, node, flush_target=None) -> list:
    p0, p1 = nl.nodes[0].pods[0], nl.nodes[1].pods[0]
    fes = []
    for ip in (node.ip, node.ip6):
        fes += [
            frontend(ip, 30080, [(p0, HTTP), (p1, HTTP)], name="both"),
            frontend(ip, 30081, [(p1, HTTP)], name="remote"),
            frontend(ip, 30082, [(p0, HTTP)], name="local"),
            frontend(ip, 30053, [(p1, DNS)], protocol="UDP", name="dns"),
            frontend(ip, 30201, [(p1, IPERF)], name="iperf"),
            frontend(ip, 30202, [(p1, SINK)], name="sink"),
        ]
    fes += [frontend(node.ip, 30090, [(p0, ECHO), (p1, ECHO)], name="echo", algorithm="maglev"),
            frontend(node.ip, 30054, [(flush_target or p1, DNS)], protocol="UDP",
                     name="moving")]
    return fes


class Agents:
    """One driver per node, as the agent on that node would run it."""

    def __init__(self, nl: NodePortLab) -> None:
        self.nl, self.drivers = nl, []

    def start(self, mode: str, **options) -> None:
        self.stop()
        for node in self.nl.nodes:
            d = TcNodePortDriver(self.nl.driver_options(node, mode=mode, **options), node.info)
            self.drivers.append(d)
            d.setup()
            d.sync(state(node, frontends(self.nl, node)), None)

    def update(self, changed: str, **kw) -> None:
        """An incremental sync of service ``changed`` on every node."""
        for node, d in zip(self.nl.nodes, self.drivers, strict=True):
            d.sync(state(node, frontends(self.nl, node, **kw)),
                   frozenset({ServiceKey("default", changed)}))

    def stop(self) -> None:  # the process ends; the datapath stays
        for d in self.drivers:
            d.close()
        self.drivers = []

    def cleanup(self) -> None:
        self.stop()
        for node in self.nl.nodes:
            TcNodePortDriver(self.nl.driver_options(node), node.info).cleanup()


SEND = textwrap.dedent("""
    import hashlib, random, socket, sys
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rnd, h = random.Random(7), hashlib.sha256()
    s = socket.create_connection((host, port), timeout=20)
    sent = 0
    while sent < size:
        chunk = rnd.randbytes(min(1 << 20, size - sent))
        h.update(chunk)
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    reply = b"".join(iter(lambda: s.recv(4096), b"")).decode().strip()
    print(h.hexdigest(), reply)
""")


@pytest.fixture(scope="module")
def env():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = NetLab()
    agents = None
    try:
        nl = build_nodeport_lab(lab, nodes=2, pods_per_node=1)
        for pod in nl.pods():
            lab.http_server(pod.ns, pod.name, HTTP)
            lab.spawn(pod.ns, ["socat", f"TCP-LISTEN:{ECHO},fork,reuseaddr",
                               f"SYSTEM:echo {pod.name}; cat"], name=f"echo-{pod.name}")
            lab.dnsmasq(pod.ns, pod.name, [pod.ip, pod.ip6], port=DNS)
        p1 = nl.nodes[1].pods[0]
        lab.spawn(p1.ns, ["iperf3", "-s", "-p", str(IPERF)], name="iperf3-server")
        lab.spawn(p1.ns, ["socat", f"TCP6-LISTEN:{SINK},ipv6only=0,fork,reuseaddr",
                          "SYSTEM:sha256sum"], name="sha256-sink")
        agents = Agents(nl)
        yield lab, nl, agents
    finally:
        if agents:
            agents.cleanup()
        lab.close()


def url(host: str, port: int, path: str = "/whoami") -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def whoami(lab, nl, port: int, family: int = 4) -> dict:
    r = lab.curl(nl.client, url(nl.nodes[0].address(family), port), timeout=3)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("mode", ["snat", "dsr"])
@pytest.mark.parametrize("family", [4, 6])
def test_curl_local_and_remote_backends_with_documented_source(env, mode, family):
    lab, nl, agents = env
    agents.start(mode)
    client = nl.client_ip6 if family == 6 else nl.client_ip
    remote_source = {"snat": nl.nodes[0].address(family), "dsr": client}[mode]
    local = whoami(lab, nl, 30082, family)
    assert (local["backend"], local["client_ip"]) == ("pod0-0", client)
    remote = whoami(lab, nl, 30081, family)
    assert (remote["backend"], remote["client_ip"]) == ("pod1-0", remote_source)
    seen = {whoami(lab, nl, 30080, family)["backend"] for _ in range(30)}
    assert seen == {"pod0-0", "pod1-0"}
    # wrk: many connections through the NodePort, no errors.
    r = lab.run(nl.client, ["wrk", "-t1", "-c8", "-d1s",
                            url(nl.nodes[0].address(family), 30081, "/")])
    assert r.returncode == 0 and "Socket errors" not in r.stdout, r.stdout
    assert int(r.stdout.split(" requests in")[0].split()[-1]) > 100
    # DNS over UDP through the NodePort (dig -4 / -6 to the node's address).
    r = lab.dig(nl.client, nl.nodes[0].address(family), "who.test", "TXT", port=30053)
    assert r.stdout.strip() == '"backend=pod1-0"', r.stderr
    # A port with no service is left to the stack: refused by node 0 itself, quickly.
    r = lab.curl(nl.client, url(nl.nodes[0].address(family), 30099, "/"), timeout=2)
    assert r.returncode == 7, r.stderr  # connection refused, not a timeout


@pytest.mark.parametrize("mode", ["snat", "dsr"])
@pytest.mark.parametrize("family", [4, 6])
def test_100mb_through_nodeport_is_intact(env, mode, family):
    """iperf3 -n 100M completes, and 100 MB of known bytes arrive with the same sha256."""
    lab, nl, agents = env
    agents.start(mode)
    host = nl.nodes[0].address(family)
    r = lab.run(nl.client, ["iperf3", "-c", host, "-p", "30201", "-n", "100M", "-J"],
                timeout=30)
    assert r.returncode == 0, r.stdout[-2000:]
    end = json.loads(r.stdout)["end"]
    # -n is met in whole send buffers: iperf3 may overshoot by one (~128 KiB).
    assert MB100 <= end["sum_sent"]["bytes"] <= MB100 + 1024 * 1024
    assert end["sum_sent"]["retransmits"] < 1000
    r = lab.run(nl.client, [sys.executable, "-c", SEND, host, "30202", str(MB100)], timeout=60)
    assert r.returncode == 0, r.stderr
    sent, received = r.stdout.split()[:2]  # sha256sum prints "<hash>  -"
    assert sent == received


def dig_from(lab, nl, port: int, sport: int) -> str:
    """``dig -b client#sport``: every query of the client from one source port."""
    r = lab.run(nl.client, ["dig", f"@{nl.nodes[0].ip}", "-p", str(port), "-b",
                            f"{nl.client_ip}#{sport}", "who.test", "TXT", "+short",
                            "+time=1", "+tries=1"], timeout=6)
    return r.stdout.strip()


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no-flush-control"])
def test_udp_client_on_one_port_follows_a_removed_backend_to_a_live_one(env, monkeypatch,
                                                                         flush):
    """A UDP client that keeps its source port keeps its conntrack entry, so only the
    flush on backend removal moves it. The control run with the flush disabled shows
    the stale entry at work: the same client still reaches the removed backend."""
    lab, nl, agents = env
    agents.start("snat")
    sport = 45353 if flush else 45354
    assert dig_from(lab, nl, 30054, sport) == '"backend=pod1-0"'
    if not flush:
        monkeypatch.setattr(ConntrackTable, "flush_backends", lambda *_a, **_k: 0)
    agents.update("moving", flush_target=nl.nodes[0].pods[0])  # pod1-0 leaves, pod0-0 joins
    answers = {dig_from(lab, nl, 30054, sport) for _ in range(3)}
    assert answers == ({'"backend=pod0-0"'} if flush else {'"backend=pod1-0"'})
    flows = agents.drivers[0].flows()
    assert any(f.src.endswith(f":{sport}") for f in flows)


HOLD = textwrap.dedent("""
    import json, os, socket, sys, time
    host, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    socks = [socket.create_connection((host, port), timeout=5) for _ in range(6)]
    first = [s.recv(100).decode().strip() for s in socks]
    print(json.dumps({"phase": "connected", "backends": first}), flush=True)
    while not os.path.exists(flag):
        time.sleep(0.05)
    echoed = []
    for s in socks:
        s.sendall(b"still-there\\n")
        echoed.append(s.recv(100).decode().strip())
    print(json.dumps({"phase": "done", "echo": echoed}), flush=True)
""")


@pytest.mark.parametrize("mode", ["snat", "dsr"])
def test_flows_survive_an_agent_restart(env, mode):
    lab, nl, agents = env
    agents.start(mode)
    flag = lab.run_dir / f"restart-done-{mode}"
    proc = lab.spawn(nl.client, [sys.executable, "-c", HOLD, nl.nodes[0].ip, "30090", str(flag)],
                     name=f"hold-{mode}")
    deadline = time.monotonic() + 10
    while '"connected"' not in proc.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    before = json.loads(proc.output().splitlines()[0])["backends"]
    flows_before = {f for f in agents.drivers[0].flows() if f.dst.endswith(":30090")}
    agents.start(mode)  # a new agent process: recompiles, adopts the pinned maps
    flows_after = {f.src for f in agents.drivers[0].flows() if f.dst.endswith(":30090")}
    flag.write_text("go")
    proc.popen.wait(10)
    done = json.loads(proc.output().splitlines()[-1])
    assert done["echo"] == ["still-there"] * 6
    assert {f.src for f in flows_before} <= flows_after
    assert set(before) <= {"pod0-0", "pod1-0"}
    # Maglev: a new connection after the restart still works.
    assert whoami(lab, nl, 30082)["backend"] == "pod0-0"


def test_map_pressure_reads_entries_in_use_from_the_kernel(env):
    lab, nl, agents = env
    agents.start("snat")
    d = agents.drivers[0]
    before = d.map_pressure()
    assert set(before) == {"lbn_svc", "lbn_backends", "lbn_maglev", "lbn_src_range", "lbn_dsr",
                           "lbn_cfg", "lbn_ct"}
    image = d._maps.read_image(d.opts.maglev_table_size)
    assert before["lbn_svc"] == (sum(1 + len(e.slots) for e in image.services.values()),
                                 d.opts.sizes["service_map_max"])
    assert before["lbn_backends"][0] == len(image.backends)
    assert before["lbn_maglev"][0] == d.opts.maglev_table_size  # one Maglev service
    d._maps.ct.clear()
    for _ in range(3):
        whoami(lab, nl, 30081)
    used, size = d.map_pressure()["lbn_ct"]
    assert (used, size) == (6, d.opts.sizes["ct_map_max"])  # 3 flows x 2 directions


def test_pmtu_discovery_through_a_snat_nodeport(env):
    """The backend's node forwards to the pod over a 1400-byte link while the pod
    announces MSS 1460: its ICMP 'fragmentation needed' goes to node 0 (the SNAT
    source) about the translated packet, and reaches the client only if translated
    back. Without that the upload stalls: full-sized segments keep being dropped."""
    lab, nl, agents = env
    agents.start("snat")
    node1 = nl.nodes[1]
    link = "lxc1x0"  # node 1's side of the pod's veth
    node1.ns.ip("link", "set", "dev", link, "mtu", "1400")
    try:
        r = lab.run(nl.client, [sys.executable, "-c", SEND, nl.nodes[0].ip, "30202",
                                str(4 * 1024 * 1024)], timeout=30)
        assert r.returncode == 0, r.stderr
        sent, received = r.stdout.split()[:2]
        assert sent == received
        route = lab.run(nl.client, ["ip", "route", "get", nl.nodes[0].ip]).stdout
        assert "mtu 1400" in route, route  # the client learnt the path MTU
    finally:
        node1.ns.ip("link", "set", "dev", link, "mtu", "1500")
        lab.run(nl.client, ["ip", "route", "flush", "cache"])
