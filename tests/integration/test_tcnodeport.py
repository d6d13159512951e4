"""tcnodeport end to end: an outside client on the node network, real servers in pods
behind two nodes, the driver attached to eth0 of both nodes (in their namespaces).

Node 0 (172.18.0.2) is the entry node; pod0-0 runs on it, pod1-0 on node 1. Frontends
on node 0: 30080 both pods, 30081 remote pod only, 30082 local pod only, 30053/UDP
dnsmasq on the remote pod, 30201 iperf3 on the remote pod. Source IP seen by the
backend, as documented: local backend -> client; remote, snat -> node 0; remote, dsr
-> client.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from lbcore.lab import NetLab
from lbcore_tcnodeport.driver import TcNodePortDriver
from lbcore_tcnodeport.lab import CLIENT_IP, NodePortLab, build_nodeport_lab, frontend, state

pytestmark = pytest.mark.netns
HTTP, ECHO, DNS, IPERF = 8080, 9000, 53, 5201


def frontends(nl: NodePortLab, node) -> list:
    p0, p1 = nl.nodes[0].pods[0], nl.nodes[1].pods[0]
    ip = node.ip
    return [
        frontend(ip, 30080, [(p0, HTTP), (p1, HTTP)], name="both"),
        frontend(ip, 30081, [(p1, HTTP)], name="remote"),
        frontend(ip, 30082, [(p0, HTTP)], name="local"),
        frontend(ip, 30053, [(p1, DNS)], protocol="UDP", name="dns"),
        frontend(ip, 30201, [(p1, IPERF)], name="iperf"),
        frontend(ip, 30090, [(p0, ECHO), (p1, ECHO)], name="echo", algorithm="maglev"),
    ]


class Agents:
    """One driver per node, as the agent on that node would run it."""

    def __init__(self, nl: NodePortLab) -> None:
        self.nl, self.drivers = nl, []

    def start(self, mode: str) -> None:
        self.stop()
        for node in self.nl.nodes:
            d = TcNodePortDriver(self.nl.driver_options(node, mode=mode), node.info)
            self.drivers.append(d)
            d.setup()
            d.sync(state(node, frontends(self.nl, node)), None)

    def stop(self) -> None:  # the process ends; the datapath stays
        for d in self.drivers:
            d.close()
        self.drivers = []

    def cleanup(self) -> None:
        self.stop()
        for node in self.nl.nodes:
            TcNodePortDriver(self.nl.driver_options(node), node.info).cleanup()


@pytest.fixture(scope="module")
def env():
    import os

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
        p1 = nl.nodes[1].pods[0]
        lab.dnsmasq(p1.ns, p1.name, [p1.ip], port=DNS)
        lab.spawn(p1.ns, ["iperf3", "-s", "-p", str(IPERF)], name="iperf3-server")
        agents = Agents(nl)
        yield lab, nl, agents
    finally:
        if agents:
            agents.cleanup()
        lab.close()


def whoami(lab, nl, port: int) -> dict:
    r = lab.curl(nl.client, f"http://{nl.nodes[0].ip}:{port}/whoami", timeout=3)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("mode, remote_source", [("snat", "172.18.0.2"), ("dsr", CLIENT_IP)])
def test_curl_local_and_remote_backends_with_documented_source(env, mode, remote_source):
    lab, nl, agents = env
    agents.start(mode)
    local = whoami(lab, nl, 30082)
    assert (local["backend"], local["client_ip"]) == ("pod0-0", CLIENT_IP)
    remote = whoami(lab, nl, 30081)
    assert (remote["backend"], remote["client_ip"]) == ("pod1-0", remote_source)
    seen = {whoami(lab, nl, 30080)["backend"] for _ in range(30)}
    assert seen == {"pod0-0", "pod1-0"}
    # wrk: many connections through the NodePort, no errors.
    r = lab.run(nl.client, ["wrk", "-t1", "-c8", "-d1s", f"http://{nl.nodes[0].ip}:30081/"])
    assert r.returncode == 0 and "Socket errors" not in r.stdout, r.stdout
    assert int(r.stdout.split(" requests in")[0].split()[-1]) > 100
    # A port with no service is left to the stack: refused by node 0 itself, quickly.
    r = lab.curl(nl.client, f"http://{nl.nodes[0].ip}:30099/", timeout=2)
    assert r.returncode == 7, r.stderr  # connection refused, not a timeout


@pytest.mark.parametrize("mode", ["snat", "dsr"])
def test_iperf3_100mb_through_nodeport_is_intact(env, mode):
    lab, nl, agents = env
    agents.start(mode)
    r = lab.run(nl.client, ["iperf3", "-c", nl.nodes[0].ip, "-p", "30201", "-n", "100M", "-J"],
                timeout=25)
    assert r.returncode == 0, r.stdout[-2000:]
    end = json.loads(r.stdout)["end"]
    # -n is met in whole send buffers: iperf3 may overshoot by one (~128 KiB).
    assert 100 * 1024 * 1024 <= end["sum_sent"]["bytes"] <= 101 * 1024 * 1024
    # The server's report closes on its last interval: it may miss the final ~1 %.
    assert end["sum_received"]["bytes"] >= 0.95 * 100 * 1024 * 1024
    assert end["sum_sent"]["retransmits"] < 1000


def test_udp_dig_through_nodeport(env):
    lab, nl, agents = env
    agents.start("snat")
    r = lab.dig(nl.client, nl.nodes[0].ip, "who.test", "TXT", port=30053)
    assert r.stdout.strip() == '"backend=pod1-0"', r.stderr


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
