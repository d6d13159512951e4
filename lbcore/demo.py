"""``python -m lbcore.demo`` (``make demo``, ``lbcore demo``): the essence of Cilium 1.6's
socket-LB walkthrough, in network namespaces on this machine, through the real agent.

1. a lab (:mod:`lbcore.lab`): node ``10.244.0.1``, client pod ``net``, backend pods each
   answering ``PodName: <pod> | PodIP: eth0 <ip>/32``;
2. Kubernetes YAML (Service ``serversvc``, NodePort 32000; its EndpointSlice; the Node)
   and an ``lbcore.yaml`` (driver socklb on ``net``'s cgroup, maps in the lab's private
   bpffs) are written, and ``lbcore sync -c lbcore.yaml`` programs the kernel;
3. ``lbcore services`` shows the ClusterIP and NodePort frontends;
4. ``curl`` from ``net`` to the ClusterIP and to the node's NodePort, several times;
5. ``tcpdump`` on ``net``'s eth0 during a curl: the SYN already goes to a pod IP, port 80;
6. ``getpeername()`` in the client still names the service address.

Every claim is a check; the exit status is 0 only if all held. Everything lives in
namespaces and cgroups the demo created and is removed at the end (also on failure and
on Ctrl-C): ``lbcore cleanup``, then the lab. ``--json`` prints the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .demo_report import Reporter
from .lab import Capture, NetLab, NetLabError, SockLBLab, build_socklb_lab, lab_ids

CLUSTER_IP = "10.96.0.10"
PORT = 80
NODE_PORT = 32000
NODE_NAME = "node"
CLIENT = "net"
REQUESTS = 8
DESCRIPTION = (
    "Cilium 1.6's socket-LB walkthrough in network namespaces, through the real agent "
    "(lbcore sync with driver socklb); exit status 0 only if every check held."
)

_GETPEERNAME = textwrap.dedent(
    """
    import json, socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((host, port), timeout=3)
    peer = s.getpeername()
    s.sendall(f"GET /whoami HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(json.dumps({"peer": list(peer[:2]),
                      "server": json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])}))
    """
)


class DemoError(RuntimeError):
    """A step could not run; the message says which and why."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoReport:
    checks: list[Check] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    capture: list[str] = field(default_factory=list)
    syns: list[dict[str, Any]] = field(default_factory=list)
    getpeername: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False
    lab_id: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# ----------------------------------------------------------------------------- inputs


def pod_body(name: str, ip: str) -> str:
    return f"PodName: {name} | PodIP: eth0 {ip}/32\n"


def kubernetes_objects(sl: SockLBLab) -> list[dict[str, Any]]:
    """What ``kubectl get svc,endpointslices,nodes -o yaml`` would print for the demo."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "serversvc", "namespace": "default", "labels": {"app": "server"}},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP,
            "clusterIPs": [CLUSTER_IP],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": "server"},
            "ports": [{"port": PORT, "targetPort": PORT, "nodePort": NODE_PORT, "protocol": "TCP"}],
            "externalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
        },
    }
    endpoints = [
        {
            "addresses": [b.ipv4],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": NODE_NAME,
            "targetRef": {"kind": "Pod", "name": b.name, "namespace": "default"},
        }
        for b in sl.backends
    ]
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "serversvc-demo1",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "serversvc",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": sl.node.ipv4},
                {"type": "Hostname", "address": NODE_NAME},
            ]
        },
    }
    return [service, endpoint_slice, node]


def write_inputs(workdir: Path, sl: SockLBLab) -> Path:
    """``services.yaml`` and ``lbcore.yaml`` in ``workdir``; returns the config path."""
    (workdir / "services.yaml").write_text(
        yaml.safe_dump_all(kubernetes_objects(sl), sort_keys=False)
    )
    config = {
        "driver": "socklb",
        "driver_options": {**sl.driver_options(), "mount_bpffs": False},
        "node": {"name": NODE_NAME, "addresses": [sl.node.ipv4]},
        "source": {"kind": "file", "path": "services.yaml"},
    }
    path = workdir / "lbcore.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------------- the agent


def lbcore_argv() -> list[str]:
    """The installed ``lbcore`` next to this Python, else the CLI through ``-c``."""
    script = Path(sys.executable).with_name("lbcore")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from lbcore.cli import main; main(sys.argv[1:])"]


def lbcore(*args: str, timeout: float = 60) -> str:
    """Run ``lbcore ARGS`` (host side: it loads eBPF and attaches to the lab's cgroup)."""
    cmd = [*lbcore_argv(), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise DemoError(
            f"`lbcore {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
    return proc.stdout


# ----------------------------------------------------------------------------- steps


def _pod_of(body: str) -> str | None:
    m = re.search(r"PodName: (\S+)", body)
    return m.group(1) if m else None


def start_pods(sl: SockLBLab) -> None:
    procs = [
        sl.lab.http_server(
            b.ns, b.name, PORT, cgroup=sl.servers_cgroup, wait=False, body=pod_body(b.name, b.ipv4)
        )
        for b in sl.backends
    ]
    sl.servers += procs
    for p in procs:
        sl.lab.wait_listening(p, PORT, "tcp")


def step_before(sl: SockLBLab, report: DemoReport, out: Reporter) -> None:
    urls = [f"http://{CLUSTER_IP}/", f"http://{sl.node.ipv4}:{NODE_PORT}/"]
    results = [(url, sl.curl(url, timeout=2)) for url in urls]
    out.before(results)
    report.check(
        "no service without lbcore",
        all(r.returncode != 0 for _, r in results),
        "before the sync, curl to the ClusterIP and to the NodePort fails",
    )


def step_services(config: Path, sl: SockLBLab, report: DemoReport, out: Reporter) -> None:
    table = lbcore("services", "-c", str(config))
    report.services = json.loads(lbcore("services", "-c", str(config), "-o", "json"))
    out.services(table)
    pods = sorted((b.ipv4, PORT, "active") for b in sl.backends)
    want = {
        (CLUSTER_IP, PORT, "TCP", "ClusterIP"),
        (sl.node.ipv4, NODE_PORT, "TCP", "NodePort"),
    }
    got = {}
    for fe in report.services:
        f = fe["frontend"]
        backends = sorted((b["ip"], b["port"], b["state"]) for b in fe["backends"])
        got[(f["ip"], f["port"], f["protocol"], fe["type"])] = backends
    report.check(
        "kernel holds the service",
        set(got) == want and all(b == pods for b in got.values()),
        f"read back from the maps: {CLUSTER_IP}:{PORT} (ClusterIP) and "
        f"{sl.node.ipv4}:{NODE_PORT} (NodePort), each -> {len(pods)} pods :{PORT}",
    )


def step_requests(sl: SockLBLab, report: DemoReport, out: Reporter, n: int) -> None:
    names = {b.name for b in sl.backends}
    for label, url in (
        ("ClusterIP", f"http://{CLUSTER_IP}/"),
        ("NodePort", f"http://{sl.node.ipv4}:{NODE_PORT}/"),
    ):
        rows = []
        for _ in range(n):
            r = sl.curl(url)
            rows.append(
                {
                    "url": url,
                    "rc": r.returncode,
                    "pod": _pod_of(r.stdout),
                    "answer": (r.stdout or r.stderr).strip(),
                }
            )
        report.requests[label] = rows
        out.requests(label, url, rows)
        answered = [row["pod"] for row in rows if row["rc"] == 0 and row["pod"] in names]
        spread = sorted(set(answered))
        report.check(
            f"curl {label} answered by pods",
            len(answered) == n and len(spread) >= min(2, len(names)),
            f"{len(answered)}/{n} answered, spread over {len(spread)} pod(s): {', '.join(spread)}",
        )


def step_capture(sl: SockLBLab, report: DemoReport, out: Reporter) -> None:
    backend_ips = {b.ipv4: b.name for b in sl.backends}
    urls = [f"http://{CLUSTER_IP}/", f"http://{sl.node.ipv4}:{NODE_PORT}/"]
    with Capture(sl.lab, sl.client.ns, sl.client.ifname) as cap:
        answers = [_pod_of(sl.curl(url).stdout) for url in urls]
    report.capture = cap.lines
    syns = [p for p in cap.packets if p.syn and p.src == sl.client.ipv4]
    report.syns = [
        {
            "url": url,
            "syn": f"{p.src}:{p.sport} > {p.dst}:{p.dport}",
            "dst_pod": backend_ips.get(p.dst),
            "answered_by": pod,
            "line": p.line,
        }
        for url, p, pod in zip(urls, syns, answers, strict=False)
    ]
    vips = {CLUSTER_IP, sl.node.ipv4}
    leaked = [p.line for p in cap.packets if vips & set(p.endpoints())]
    leaked += [ln for ln in cap.lines if any(f"who-has {ip} " in ln for ip in vips)]
    out.capture(cap.lines, report.syns)
    report.check(
        "SYN carries the pod address",
        len(syns) == len(urls)
        and all(p.dst in backend_ips and p.dport == PORT for p in syns)
        and all(s["dst_pod"] == s["answered_by"] for s in report.syns),
        f"{len(syns)} SYN(s) on {sl.client.name}'s {sl.client.ifname}, each to the pod that "
        f"answered, port {PORT}",
    )
    report.check(
        "no service address on the wire",
        not leaked,
        f"no packet to or from {CLUSTER_IP} or {sl.node.ipv4} (:{NODE_PORT}) in "
        f"{len(cap.lines)} captured line(s)"
        if not leaked
        else "seen: " + "; ".join(leaked[:3]),
    )


def step_getpeername(sl: SockLBLab, report: DemoReport, out: Reporter) -> None:
    backend_ips = {b.ipv4 for b in sl.backends}
    for host, port in ((CLUSTER_IP, PORT), (sl.node.ipv4, NODE_PORT)):
        r = sl.client_run([sys.executable, "-I", "-S", "-c", _GETPEERNAME, host, str(port)])
        if r.returncode != 0:
            raise DemoError(f"getpeername client to {host}:{port} failed:\n{r.stderr}")
        res = json.loads(r.stdout)
        res["service"] = [host, port]
        report.getpeername.append(res)
        server = res["server"]
        report.check(
            f"getpeername {host}:{port}",
            res["peer"] == [host, port]
            and server["local_ip"] in backend_ips
            and server["local_port"] == PORT
            and server["client_ip"] == sl.client.ipv4,
            f"client sees {res['peer'][0]}:{res['peer'][1]}; {server['backend']} sees "
            f"{server['client_ip']} -> {server['local_ip']}:{server['local_port']}",
        )
    out.getpeername(report.getpeername)


# ------------------------------------------------------------------------------ main


def run_demo(out: Reporter, *, backends: int = 3, requests: int = REQUESTS) -> DemoReport:
    report = DemoReport()
    start = time.monotonic()
    config: Path | None = None
    lab = NetLab()
    report.lab_id = lab.id
    try:
        sl = build_socklb_lab(lab, backends, client=CLIENT)
        start_pods(sl)
        out.lab(sl)
        workdir = lab.run_dir / "demo"
        workdir.mkdir()
        config = write_inputs(workdir, sl)
        out.inputs(workdir, config, kubernetes_objects(sl))
        step_before(sl, report, out)
        synced = lbcore("sync", "-c", str(config))
        out.synced(f"lbcore sync -c {config.name}", synced)
        step_services(config, sl, report, out)
        step_requests(sl, report, out, requests)
        step_capture(sl, report, out)
        step_getpeername(sl, report, out)
    except (DemoError, NetLabError, OSError, subprocess.SubprocessError, ValueError) as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.error, report.interrupted = "interrupted (Ctrl-C or SIGTERM)", True
    finally:
        _teardown(lab, config, report)
        report.seconds = round(time.monotonic() - start, 2)
    return report


def _teardown(lab: NetLab, config: Path | None, report: DemoReport) -> None:
    problems = []
    if config is not None:
        try:
            lbcore("cleanup", "-c", str(config))
        except (DemoError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
    try:
        lab.close()
    except NetLabError as exc:
        problems.append(str(exc))
    if lab.id in lab_ids():
        problems.append(f"lab {lab.id} left resources behind")
    if report.checks or problems:
        report.check(
            "everything removed",
            not problems,
            "lbcore cleanup, then the lab's namespaces, cgroups and bpffs"
            if not problems
            else "; ".join(problems),
        )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbcore demo", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--backends", type=int, default=3, help="backend pods (2-10)")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="curls per frontend")
    args = parser.parse_args(argv)
    if not 2 <= args.backends <= 10:
        parser.error("--backends must be 2..10")
    if os.geteuid() != 0:
        print("lbcore demo: needs root (network namespaces, cgroups, eBPF)", file=sys.stderr)
        return 1
    out = Reporter(quiet=args.json)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_demo(out, backends=args.backends, requests=args.requests)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif not report.interrupted:
        out.summary(report)
    if report.ok:
        return 0
    leftovers = [c.detail for c in report.checks if c.name == "everything removed" and not c.ok]
    if report.interrupted:
        done = f"cleanup incomplete: {leftovers[0]}" if leftovers else "everything was removed"
        print(f"lbcore demo: interrupted; {done}", file=sys.stderr)
        return 130
    failed = [c.name for c in report.checks if not c.ok]
    why = report.error or f"failed check(s): {', '.join(failed)}"
    print(f"lbcore demo: FAILED: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
