"""`lbcore demo --json` end to end: every verdict holds and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbcore.lab import lab_ids
from lbcore.lab.capture import parse_line

pytestmark = pytest.mark.netns

CLUSTER_IP = "10.96.0.10"
NODE_IP = "10.244.0.1"


def test_parse_tcpdump_lines():
    syn = parse_line("04:13:08.6 IP 10.244.0.10.40130 > 10.244.0.102.80: Flags [S], seq 3")
    assert syn is not None and syn.syn
    assert (syn.src, syn.sport, syn.dst, syn.dport) == ("10.244.0.10", 40130, "10.244.0.102", 80)
    ack = parse_line("04:13:08.6 IP6 fd00::10.40130 > fd00::102.80: Flags [S.], seq 3, ack 4")
    assert ack is not None and not ack.syn and (ack.dst, ack.dport) == ("fd00::102", 80)
    icmp = parse_line("04:13:08.6 IP 10.244.0.10 > 10.244.0.1: ICMP echo request, id 1")
    assert icmp is not None and (icmp.dst, icmp.dport) == ("10.244.0.1", None)
    assert parse_line("04:13:08.6 ARP, Request who-has 10.244.0.1 tell 10.244.0.10") is None


def test_demo_json_verdicts():
    if os.geteuid() != 0:
        pytest.skip("the demo needs root (network namespaces, cgroups, eBPF)")
    proc = subprocess.run(
        [sys.executable, "-m", "lbcore.demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    services = report["services"]
    assert report["ok"] and report["error"] is None
    assert all(c["ok"] for c in checks.values()), checks
    for name in (
        "no service without lbcore",
        "kernel holds the service",
        "curl ClusterIP answered by pods",
        "curl NodePort answered by pods",
        "SYN carries the pod address",
        "no service address on the wire",
        f"getpeername {CLUSTER_IP}:80",
        f"getpeername {NODE_IP}:32000",
        "everything removed",
    ):
        assert name in checks

    frontends = {(fe["frontend"]["ip"], fe["frontend"]["port"], fe["type"]) for fe in services}
    assert frontends == {(CLUSTER_IP, 80, "ClusterIP"), (NODE_IP, 32000, "NodePort")}

    # the wire, re-judged from the raw capture: SYNs to pods on :80, no service address
    syns = [p for p in map(parse_line, report["capture"]) if p is not None and p.syn]
    assert len(syns) == 2
    pod_ips = {b["ip"] for s in report["services"] for b in s["backends"]}
    assert all(p.dst in pod_ips and p.dport == 80 for p in syns)
    assert not any(CLUSTER_IP in line for line in report["capture"])
    assert not any(f"{NODE_IP}.32000" in line for line in report["capture"])

    peers = {tuple(g["peer"]) for g in report["getpeername"]}
    assert peers == {(CLUSTER_IP, 80), (NODE_IP, 32000)}
    assert report["seconds"] < 30
    assert report["lab_id"] not in lab_ids()  # the demo's lab is gone
