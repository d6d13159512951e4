"""`lbcore demo --json` end to end: every verdict holds, re-judged here from the raw
capture, and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbcore.demo import driver_problem
from lbcore.lab import lab_ids
from lbcore.lab.capture import parse_line

pytestmark = pytest.mark.netns

NET_NODE_IP = "172.18.0.3"  # net runs on worker


def test_parse_tcpdump_lines():
    syn = parse_line("04:13:08.6 IP 10.244.0.10.40130 > 10.244.0.102.80: Flags [S], seq 3")
    assert syn is not None and syn.syn
    assert (syn.src, syn.sport, syn.dst, syn.dport) == ("10.244.0.10", 40130, "10.244.0.102", 80)
    ack = parse_line("04:13:08.6 IP6 fd00::10.40130 > fd00::102.80: Flags [S.], seq 3, ack 4")
    assert ack is not None and not ack.syn and (ack.dst, ack.dport) == ("fd00::102", 80)
    icmp = parse_line("04:13:08.6 IP 10.244.0.10 > 10.244.0.1: ICMP echo request, id 1")
    assert icmp is not None and (icmp.dst, icmp.dport) == ("10.244.0.1", None)
    assert parse_line("04:13:08.6 ARP, Request who-has 10.244.0.1 tell 10.244.0.10") is None


def _demo(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "lbcore.demo", "--json", *args],
                          capture_output=True, text=True, timeout=150, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-4000:]
    return json.loads(proc.stdout)


def test_demo_json_verdicts():
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, cgroups, eBPF)")
    report = _demo()
    checks = {c["name"]: c for c in report["checks"]}
    for run in report["runs"]:
        checks.update({c["name"]: c for c in run["checks"]})
    assert report["ok"] and report["error"] is None
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["everything removed"]["ok"]
    assert report["lab_id"] not in lab_ids()
    assert report["seconds"] < 60

    # the cluster: three nodes, a cni pod on each worker, net on worker
    nodes = {n["name"]: n for n in report["cluster"]["nodes"]}
    assert list(nodes) == ["control-plane", "worker", "worker2"]
    pods = {p["name"]: p for p in report["cluster"]["pods"]}
    cni = {n: p for n, p in pods.items() if n.startswith("cni-")}
    assert sorted(p["node"] for p in cni.values()) == ["worker", "worker2"]
    assert pods["net"]["node"] == "worker" and nodes["worker"]["ipv4"] == NET_NODE_IP
    svc = report["cluster"]["services"][0]
    assert (svc["name"], svc["type"], svc["ports"][0]["node_port"]) == ("serversvc", "NodePort",
                                                                        32000)
    cluster_ip = svc["cluster_ips"][0]
    cni_ips = {p["ipv4"]: n for n, p in cni.items()}

    runs = {r["driver"]: r for r in report["runs"]}
    assert "socklb" in runs
    if driver_problem("iptables") is None:
        assert "iptables" in runs
    else:
        assert "iptables" in report["skipped_drivers"]

    # every agent holds ClusterIP and NodePort on its node's address -> both cni pods
    for node, services in runs["socklb"]["services"].items():
        fes = {(s["frontend"]["ip"], s["frontend"]["port"]): {b["ip"] for b in s["backends"]}
               for s in services}
        assert fes[(cluster_ip, 80)] == set(cni_ips)
        assert fes[(nodes[node]["ipv4"], 32000)] == set(cni_ips)
    for label, rows in runs["socklb"]["requests"].items():
        assert rows and all(r["rc"] == 0 and r["pod"] in cni for r in rows), label

    # re-judge the wire from the raw capture on net's eth0
    net = runs["socklb"]["capture"]["net"]
    syns = [p for p in map(parse_line, net) if p is not None and p.syn]
    assert len(syns) == 2 and all(p.dst in cni_ips and p.dport == 80 for p in syns)
    assert not any(cluster_ip in line or f"{NET_NODE_IP}.32000" in line for line in net)
    assert {o["mode"] for o in runs["socklb"]["observations"]} == {"socket"}
    if "iptables" in runs:
        net = runs["iptables"]["capture"]["net"]
        syns = [p for p in map(parse_line, net) if p is not None and p.syn]
        assert {(p.dst, p.dport) for p in syns} == {(NET_NODE_IP, 32000), (cluster_ip, 80)}
        assert {o["mode"] for o in runs["iptables"]["observations"]} == {"node"}


def test_demo_unknown_driver_fails():
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    proc = subprocess.run([sys.executable, "-m", "lbcore.demo", "--json", "--driver", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    assert not report["ok"] and "nosuch" in report["skipped_drivers"]
