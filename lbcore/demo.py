"""``python -m lbcore.demo`` (``make demo``, ``lbcore demo``): Cilium's socket-LB
walkthrough, reproduced in a namespace cluster on this machine, through the real agents.

1. a cluster (:mod:`lbcore.lab`): nodes ``control-plane``, ``worker``, ``worker2``; a
   ``cni`` pod on each worker answering ``PodName: cni-xxxxx | PodIP: eth0 <ip>/32``;
   the NodePort Service ``serversvc`` (80 -> 80, nodePort 32000); a client pod ``net``;
2. for each driver (default: socklb, then iptables if that driver loads): one
   ``lbcore run`` agent per node, health-checked; each agent's ``lbcore services``;
3. ``curl <nodeIP>:32000`` and ``curl <clusterIP>`` from ``net``, with the answering pod;
4. a real ``tcpdump`` on ``net``'s eth0 (and on the ``cni`` pods' eth0) during one curl
   to each, and the verdict drawn from it (:mod:`lbcore.demo_verdict`);
5. the agents are stopped and ``lbcore cleanup`` removes the datapath; next driver;
6. a side-by-side summary of the drivers.

Every claim is a check; the exit status is 0 only if all held. Everything is removed at
the end (also on failure and on Ctrl-C), unless ``--keep`` leaves the cluster up (with
the last driver's agents) for ``lbcore lab exec``; ``lbcore lab down`` removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .demo_report import Reporter
from .demo_verdict import EXPECTED_MODE, claim_holds, observe
from .lab import Capture, NetLab, NetLabError, lab_ids
from .lab.agents import services_json, start_agents, stop_agents
from .lab.cluster import Cluster
from .lab.state import keep as keep_lab
from .lab.workload import NODE_PORT, PORT, Walkthrough, deploy_walkthrough

REQUESTS = 6
DEFAULT_DRIVERS = ("socklb", "iptables")
DESCRIPTION = (
    "Cilium's socket-LB walkthrough in a namespace cluster, through the real agents "
    "(lbcore run per node); exit status 0 only if every check held."
)


class DemoError(RuntimeError):
    """A step could not run; the message says which and why."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DriverRun:
    driver: str
    checks: list[Check] = field(default_factory=list)
    services: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    capture: dict[str, list[str]] = field(default_factory=dict)
    observations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(f"{self.driver}: {name}", bool(ok), detail))
        return bool(ok)


@dataclass
class DemoReport:
    checks: list[Check] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)
    runs: list[DriverRun] = field(default_factory=list)
    skipped_drivers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False
    kept: bool = False
    lab_id: str | None = None
    seconds: float = 0.0

    def all_checks(self) -> list[Check]:
        return [*self.checks, *(c for r in self.runs for c in r.checks)]

    @property
    def ok(self) -> bool:
        checks = self.all_checks()
        return self.error is None and bool(self.runs) and all(c.ok for c in checks)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def driver_problem(name: str) -> str | None:
    """None if driver ``name`` loads (lbcore.plugins), else why not."""
    from .errors import LBCoreError
    from .plugins import DRIVERS, PluginRegistry, load_driver_class

    try:
        load_driver_class(PluginRegistry(DRIVERS), name)
    except LBCoreError as exc:
        return str(exc)
    return None


def _pod_of(body: str) -> str | None:
    m = re.search(r"PodName: (\S+)", body)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- steps


def frontends(w: Walkthrough) -> list[tuple[str, str, int]]:
    """(label, ip, port) that net curls: its node's NodePort, the ClusterIP(s)."""
    node = w.client.node
    out = [(f"NodePort {node.name}", node.ipv4, NODE_PORT),
           ("ClusterIP", w.service.cluster_ip, PORT)]
    if w.service.cluster_ip6:
        out.append(("ClusterIP IPv6", w.service.cluster_ip6, PORT))
    return out


def url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}/" if port == 80 else f"http://{host}:{port}/"


def step_before(w: Walkthrough, report: DemoReport, out: Reporter) -> None:
    results = [(url(ip, port), w.cluster.curl(w.client, url(ip, port), timeout=2))
               for _, ip, port in frontends(w)[:2]]
    out.before(results)
    report.check("no service before the agents", all(r.returncode != 0 for _, r in results),
                 "curl from net to the NodePort and the ClusterIP fails without lbcore")


def step_services(w: Walkthrough, run: DriverRun, agents, out: Reporter) -> set[tuple[str, int]]:
    """Each agent's ``lbcore services``; returns the frontends net's node holds."""
    pods4 = sorted((p.ipv4, PORT) for p in w.servers)
    held_by_net_node: set[tuple[str, int]] = set()
    with ThreadPoolExecutor(len(agents)) as pool:
        dumps = list(pool.map(lambda a: services_json(w.cluster, a), agents))
    for agent, dump in zip(agents, dumps, strict=True):
        node = agent.node
        run.services[node.name] = dump
        out.services(run.driver, node.name, dump)
        got = {(s["frontend"]["ip"], s["frontend"]["port"]):
               sorted((b["ip"], b["port"]) for b in s["backends"]) for s in run.services[node.name]}
        if node is w.client.node:
            held_by_net_node = set(got)
        want = [(w.service.cluster_ip, PORT), (node.ipv4, NODE_PORT)]
        run.check(f"{node.name} holds serversvc",
                  all(got.get(fe) == pods4 for fe in want),
                  f"{w.service.cluster_ip}:{PORT} (ClusterIP) and {node.ipv4}:{NODE_PORT} "
                  f"(NodePort) -> {', '.join(ip for ip, _ in pods4)} :{PORT}")
    return held_by_net_node


def step_requests(w: Walkthrough, run: DriverRun, held: set[tuple[str, int]],
                  out: Reporter, n: int) -> None:
    names = {p.name for p in w.servers}
    for label, ip, port in frontends(w):
        if (ip, port) not in held:
            out.note(f"{label} {url(ip, port)}: not programmed by {run.driver} (see services)")
            continue
        rows = []
        for _ in range(n):
            r = w.cluster.curl(w.client, url(ip, port))
            rows.append({"url": url(ip, port), "rc": r.returncode, "pod": _pod_of(r.stdout),
                         "answer": (r.stdout or r.stderr).strip()})
        run.requests[label] = rows
        out.requests(label, rows)
        answered = [row["pod"] for row in rows if row["rc"] == 0 and row["pod"] in names]
        run.check(f"curl {label} answered by cni pods", len(answered) == n,
                  f"{len(answered)}/{n} answered by {', '.join(sorted(set(answered))) or '-'}")


def step_capture(w: Walkthrough, run: DriverRun, out: Reporter) -> None:
    lab, cluster = w.cluster.lab, w.cluster
    targets = frontends(w)[:2]  # the walkthrough's two curls (IPv4)
    caps = {"net": Capture(lab, w.client.ns, "eth0", cgroup=w.client.cgroup)}
    for p in w.servers:
        caps[p.name] = Capture(lab, p.ns, "eth0", ["tcp"], cgroup=p.cgroup)
    for cap in caps.values():
        cap.start()
    answers = []
    try:
        for _, ip, port in targets:
            answers.append(_pod_of(cluster.curl(w.client, url(ip, port)).stdout))
    finally:
        for cap in caps.values():
            cap.stop()
    run.capture = {name: cap.lines for name, cap in caps.items()}
    net_syns = [p for p in caps["net"].packets if p.syn and p.src == w.client.ipv4]
    backend_syns = {name: [p for p in cap.packets if p.syn]
                    for name, cap in caps.items() if name != "net"}
    pod_ips = {p.ipv4: p.name for p in w.servers}
    # The requests ran one after the other: the i-th SYN any pod received (tcpdump
    # timestamps) belongs to the i-th request, whatever its source after NAT.
    arrivals = sorted((p.line.split()[0], name, p)
                      for name, syns in backend_syns.items() for p in syns)
    for i, ((label, ip, port), pod) in enumerate(zip(targets, answers, strict=True)):
        mine = {arrivals[i][1]: [arrivals[i][2]]} if i < len(arrivals) else {}
        obs = observe(label, (ip, port), pod, net_syns[i:i + 1], caps["net"].lines,
                      mine, pod_ips, PORT)
        run.observations.append(obs.to_json())
        want = EXPECTED_MODE.get(run.driver)
        claim = {"socket": "SYN carries the backend pod IP:80, no service address on the wire",
                 "node": "SYN carries the service address; translated in the node"}
        run.check(f"tcpdump: curl {label}",
                  claim_holds(run.driver, obs),
                  f"{claim.get(want, 'conclusive observation')}; seen: SYN "
                  f"{obs.client_syn or 'none'} ({obs.client_syn_to or '-'}), at "
                  f"{pod or '?'}: {obs.backend_syn or 'none'}"
                  + (f"; service address on the wire: {obs.service_on_wire[0]}"
                     if obs.service_on_wire else ""))
    out.capture(run.driver, run.capture, run.observations)


def step_removed(w: Walkthrough, run: DriverRun, agents, out: Reporter) -> None:
    problems = stop_agents(w.cluster, agents, cleanup=True)
    r = w.cluster.curl(w.client, url(w.service.cluster_ip, PORT), timeout=2)
    out.removed(run.driver, problems, r)
    run.check("lbcore cleanup removed the datapath", not problems and r.returncode != 0,
              "; ".join(problems) or "agents stopped, `lbcore cleanup` on each node; "
              "curl to the ClusterIP fails again")


def run_driver(w: Walkthrough, driver: str, out: Reporter, *, requests: int,
               last_kept: bool) -> DriverRun:
    run = DriverRun(driver)
    start = time.monotonic()
    out.driver_start(driver)
    agents = start_agents(w.cluster, [driver])
    out.agents(driver, agents)
    held = step_services(w, run, agents, out)
    step_requests(w, run, held, out, requests)
    step_capture(w, run, out)
    if not last_kept:
        step_removed(w, run, agents, out)
    run.seconds = round(time.monotonic() - start, 2)
    return run


# ------------------------------------------------------------------------------ main


def run_demo(out: Reporter, drivers: list[str], *, nodes: int = 3, requests: int = REQUESTS,
             keep: bool = False) -> DemoReport:
    report = DemoReport()
    start = time.monotonic()
    for name in list(drivers):
        problem = driver_problem(name)
        if problem:
            report.skipped_drivers[name] = problem
            drivers.remove(name)
    out.skipped_drivers(report.skipped_drivers)
    lab = NetLab()
    report.lab_id = lab.id
    cluster: Cluster | None = None
    try:
        if not drivers:
            raise DemoError("no driver to run: " + "; ".join(report.skipped_drivers.values()))
        cluster = Cluster.create(lab, nodes)
        w = deploy_walkthrough(cluster)
        report.cluster = cluster.to_dict()
        out.cluster(cluster, w)
        step_before(w, report, out)
        for i, driver in enumerate(drivers):
            last = i == len(drivers) - 1
            report.runs.append(run_driver(w, driver, out, requests=requests,
                                          last_kept=keep and last))
        if keep:
            keep_lab(cluster)
            report.kept = True
    except (DemoError, NetLabError, OSError, subprocess.SubprocessError, ValueError) as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.error, report.interrupted = "interrupted (Ctrl-C or SIGTERM)", True
    finally:
        if not report.kept:
            _teardown(lab, cluster, report)
        report.seconds = round(time.monotonic() - start, 2)
    return report


def _teardown(lab: NetLab, cluster: Cluster | None, report: DemoReport) -> None:
    problems = []
    if cluster is not None and cluster.agents:
        problems += stop_agents(cluster, cleanup=True)
    try:
        lab.close()
    except NetLabError as exc:
        problems.append(str(exc))
    if lab.id in lab_ids():
        problems.append(f"lab {lab.id} left resources behind")
    report.check("everything removed", not problems,
                 "agents, namespaces, cgroups, bpffs pins, processes" if not problems
                 else "; ".join(problems))


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbcore demo", description=DESCRIPTION)
    parser.add_argument("--driver", action="append", metavar="NAME",
                        help="driver to run (repeatable; default: socklb, then iptables "
                             "if it is installed and loads)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="leave the cluster up (last driver's agents running) for "
                             "`lbcore lab exec`; remove it with `lbcore lab down`")
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes (2-6)")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="curls per frontend")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 6:
        parser.error("--nodes must be 2..6")
    if os.geteuid() != 0:
        print("lbcore demo: needs root (network namespaces, cgroups, eBPF)", file=sys.stderr)
        return 1
    explicit = bool(args.driver)
    drivers = list(dict.fromkeys(args.driver or DEFAULT_DRIVERS))
    out = Reporter(quiet=args.json)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_demo(out, drivers, nodes=args.nodes, requests=args.requests,
                          keep=args.keep)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if explicit and report.skipped_drivers:
        report.error = report.error or "driver(s) not available: " + "; ".join(
            f"{k}: {v}" for k, v in report.skipped_drivers.items())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif not report.interrupted:
        out.summary(report)
    if report.ok:
        return 0
    if report.interrupted:
        print("lbcore demo: interrupted; everything was removed" if not any(
            c.name == "everything removed" and not c.ok for c in report.checks)
            else "lbcore demo: interrupted; cleanup incomplete", file=sys.stderr)
        return 130
    failed = [c.name for c in report.all_checks() if not c.ok]
    why = report.error or f"failed check(s): {', '.join(failed)}"
    print(f"lbcore demo: FAILED: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
