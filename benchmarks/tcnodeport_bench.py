"""NodePort through tcnodeport (snat, dsr) vs the iptables driver vs the client talking to
the backend directly: one lab, one run, the paths interleaved, repeated.

    sudo .venv/bin/python benchmarks/tcnodeport_bench.py [--reps 3] [--seconds 3]
        [--backend remote|local] [--paths direct,iptables,tcnodeport-snat,tcnodeport-dsr]
        [--metrics crr,rr,tput] [--json out.json]

Lab: ``lbcore_tcnodeport.lab`` (two nodes on a node bridge, an outside client on it).
Backend: nginx (2 workers) and an iperf3 server in one pod, on node 1 (``remote``: the
NodePort entry node 0 forwards to node 1) or on node 0 (``local``). Direct: the client
routes the pod address via the pod's node (no translation; for ``remote`` one node
fewer on the path than any NodePort path, which is what the issue compares against).

Per repetition every path is set up (drivers ``setup`` + ``sync`` on both nodes), then
measured: connection rate (wrk ``Connection: close``, a new TCP connection per
request), request rate (wrk keep-alive), throughput (iperf3, one stream); then torn
down (``cleanup``), so two datapaths never coexist. The order of the paths rotates per
repetition. Netfilter (the legacy nat table, so conntrack) is loaded on every node from
the start, for every path alike, as on a real node. Before each path the backend's
TIME_WAIT sockets are destroyed, so no path meets another's (see ``Datapaths.up``).
The load average is recorded with every sample, and the client's SYN retransmissions
during each conn/s run (connections that waited a retransmission timeout); the table
gives median (min-max), the ratios of the medians and the ratios paired per repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lbcore.bench import tools
from lbcore.driver import Driver
from lbcore.lab import NetLab
from lbcore_tcnodeport.lab import LabPod, NodePortLab, build_nodeport_lab, frontend, state

PATHS = ("direct", "iptables", "tcnodeport-snat", "tcnodeport-dsr")
METRICS = {"crr": "conn/s", "rr": "req/s", "tput": "Gbit/s"}
HTTP_NODE_PORT, IPERF_NODE_PORT, IPERF_PORT = 30080, 30201, 5201


@dataclass
class Samples:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    loads: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    reps: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    syn_retrans: dict[str, list[int]] = field(default_factory=dict)  # per conn/s run
    errors: list[str] = field(default_factory=list)

    def add(self, path: str, metric: str, value: float, load1: float, rep: int) -> None:
        self.values.setdefault((path, metric), []).append(value)
        self.loads.setdefault((path, metric), []).append(load1)
        self.reps.setdefault((path, metric), []).append(rep)

    def paired_ratios(self, path: str, base: str, metric: str) -> list[float]:
        """path / base within each repetition (measured minutes apart at most): the
        drift of a shared machine's load cancels better than in a ratio of medians."""
        mine = dict(zip(self.reps.get((path, metric), []), self.values.get((path, metric), []),
                        strict=True))
        theirs = dict(zip(self.reps.get((base, metric), []),
                          self.values.get((base, metric), []), strict=True))
        return [mine[r] / theirs[r] for r in sorted(set(mine) & set(theirs)) if theirs[r]]


class Datapaths:
    """Switches the lab between the measured datapaths (one at a time).

    Between repetitions tcnodeport's filters are detached but its pinned maps kept
    (one bpffs directory per mode), as a long-running agent keeps its conntrack: the
    SNAT reservations of closed flows know which backend TIME_WAITs a reused port
    would meet. ``close`` removes everything at the end.
    """

    def __init__(self, nl: NodePortLab, pod: LabPod) -> None:
        self.nl, self.pod = nl, pod
        self.drivers: list[Driver] = []

    def _tcn_options(self, node, mode: str) -> dict:
        return self.nl.driver_options(node, mode=mode, bpffs_path=str(node.bpffs / mode))

    def _make(self, path: str, node) -> Driver:
        if path == "iptables":
            from lbcore_iptables.driver import IptablesDriver

            return IptablesDriver({"netns": node.ns.name}, node.info)
        from lbcore_tcnodeport.driver import TcNodePortDriver

        return TcNodePortDriver(self._tcn_options(node, path.split("-")[1]), node.info)

    def up(self, path: str) -> tuple[str, int, int]:
        """Program ``path`` on every node; returns (host, http port, iperf3 port).

        The backend's TIME_WAIT sockets are destroyed first (``ss -K``): those of the
        path measured before would otherwise meet this path's SYNs from the same node
        address and ports (the iptables driver's MASQUERADE --random-fully uses
        1024-65535, tcnodeport's SNAT range is inside it), and a SYN a TIME_WAIT
        refuses by PAWS waits a 1 s retransmission."""
        self.pod.ns.run(["ss", "-K", "state", "time-wait"])
        if path == "direct":
            return self.pod.ip, 80, IPERF_PORT
        for node in self.nl.nodes:
            d = self._make(path, node)
            self.drivers.append(d)
            d.setup()
            d.sync(state(node, [frontend(node.ip, HTTP_NODE_PORT, [(self.pod, 80)]),
                                frontend(node.ip, IPERF_NODE_PORT, [(self.pod, IPERF_PORT)],
                                         name="perf")]), None)
        return self.nl.nodes[0].ip, HTTP_NODE_PORT, IPERF_NODE_PORT

    def down(self) -> None:
        from lbcore_tcnodeport import loader
        from lbcore_tcnodeport.driver import TcNodePortDriver

        for d in self.drivers:
            if isinstance(d, TcNodePortDriver):
                loader.detach(list(d.opts.devices), d.opts.netns)
                d.close()
            else:
                d.cleanup()
        self.drivers = []

    def close(self) -> None:
        from lbcore_tcnodeport.driver import TcNodePortDriver

        self.down()
        for node in self.nl.nodes:
            for mode in ("snat", "dsr"):
                TcNodePortDriver(self._tcn_options(node, mode), node.info).cleanup()


def syn_retransmissions(lab: NetLab, nl: NodePortLab) -> int:
    """The client's SYN retransmissions so far: each one is a connection that waited
    its retransmission timeout (a dropped SYN, a SYN a backend's TIME_WAIT refused)."""
    out = lab.run(nl.client, ["nstat", "-asz", "TcpExtTCPSynRetrans"]).stdout
    return int(out.split()[-2]) if "TcpExtTCPSynRetrans" in out else 0


def measure(lab: NetLab, nl: NodePortLab, target: tuple[str, int, int], metric: str,
            args: argparse.Namespace, script) -> float:
    host, http, perf = target
    if metric == "tput":
        r = lab.run(nl.client, tools.iperf3_argv(host, perf, args.seconds),
                    timeout=args.seconds + 30)
        return tools.parse_iperf3(r.stdout or r.stderr)["gbit"]
    argv = tools.wrk_argv(f"http://{host}:{http}/", script, seconds=args.seconds,
                          connections=args.connections, threads=args.threads,
                          close=metric == "crr")
    r = lab.run(nl.client, argv, timeout=args.seconds + 30)
    out = tools.parse_wrk(r.stdout)
    if out["requests"] == 0 or out["errors"] > 0.01 * out["requests"]:
        raise RuntimeError(f"wrk to {host}:{http}: {out['requests']:.0f} requests, "
                           f"{out['errors']:.0f} errors")
    return out["rate"]


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[Samples, dict]:
    samples = Samples()
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": os.uname().release,
                               "loadavg_start": list(os.getloadavg())}
    with NetLab() as lab:
        nl = build_nodeport_lab(lab, nodes=2, pods_per_node=1)
        backend_node = nl.nodes[1 if args.backend == "remote" else 0]
        pod = backend_node.pods[0]
        for node in nl.nodes:  # netfilter loaded for every path alike
            node.ns.run(["iptables-legacy", "-t", "nat", "-L", "-n"], check=True)
        lab.nginx(pod.ns, pod.name, 80, workers=2)
        iperf = lab.spawn(pod.ns, ["iperf3", "-s", "-p", str(IPERF_PORT)], name="iperf3")
        lab.wait_listening(iperf, IPERF_PORT, "tcp")
        nl.client.add_route(f"{pod.ip}/32", via=backend_node.ip)
        script = tools.wrk_script(lab.run_dir)
        dps = Datapaths(nl, pod)
        try:
            measure_all(lab, nl, dps, args, script, samples, progress)
        finally:
            dps.close()
    machine["loadavg_end"] = list(os.getloadavg())
    return samples, machine


def measure_all(lab: NetLab, nl: NodePortLab, dps: Datapaths, args: argparse.Namespace,
                script, samples: Samples, progress: Callable[[str], None]) -> None:
    """Repetitions of every path, the order rotated per repetition."""
    paths = list(args.paths)
    for rep in range(args.reps):
        order = paths[rep % len(paths):] + paths[:rep % len(paths)]
        for path in order:
            progress(f"rep {rep + 1}/{args.reps}: {path}")
            try:
                target = dps.up(path)
                if args.warmup:
                    measure(lab, nl, target, "rr", argparse.Namespace(
                        **{**vars(args), "seconds": 1}), script)
                for metric in args.metrics:
                    load1 = os.getloadavg()[0]
                    before = syn_retransmissions(lab, nl)
                    value = measure(lab, nl, target, metric, args, script)
                    samples.add(path, metric, value, load1, rep)
                    if metric == "crr":
                        samples.syn_retrans.setdefault(path, []).append(
                            syn_retransmissions(lab, nl) - before)
                    progress(f"  {path} {METRICS[metric]} {value:.2f} (load {load1:.2f})")
            except Exception as exc:  # keep the other paths' figures
                samples.errors.append(f"rep {rep + 1} {path}: {exc}")
                progress(f"  error: {exc}")
            finally:
                dps.down()


def report(samples: Samples, machine: dict, args: argparse.Namespace) -> str:
    def med(path: str, metric: str) -> float | None:
        vals = samples.values.get((path, metric))
        return statistics.median(vals) if vals else None

    lines = [f"backend {args.backend}, {args.reps} reps x {args.seconds} s, wrk -t{args.threads} "
             f"-c{args.connections}; load {machine['loadavg_start'][0]:.2f} -> "
             f"{machine['loadavg_end'][0]:.2f}, {machine['cpus']} CPUs, {machine['kernel']}",
             f"{'path':<17}" + "".join(f"{unit:>26}" for unit in METRICS.values())
             + f"{'load1':>12}"]
    for path in args.paths:
        row = f"{path:<17}"
        loads = []
        for metric in METRICS:
            s = tools.summary(samples.values.get((path, metric), []))
            loads += samples.loads.get((path, metric), [])
            f = ".2f" if metric == "tput" else ".0f"
            row += (f"{s['median']:{f}} ({s['min']:{f}}-{s['max']:{f}})".rjust(26)
                    if s["n"] else f"{'-':>26}")
        row += f"{statistics.median(loads):>12.2f}" if loads else ""
        lines.append(row)
    for path, counts in samples.syn_retrans.items():
        lines.append(f"{path}: client SYN retransmissions per conn/s run {counts}")
    lines.append("ratios: of the medians; per repetition (paired), median (min-max)")
    for path in args.paths:
        for base in ("direct", "iptables"):
            if path in ("direct", base):
                continue
            parts = []
            for metric, unit in METRICS.items():
                a, b = med(path, metric), med(base, metric)
                pairs = tools.summary(samples.paired_ratios(path, base, metric))
                if a is not None and b:
                    parts.append(f"{unit} {a / b:.2f}x; {pairs['median']:.2f}x "
                                 f"({pairs['min']:.2f}-{pairs['max']:.2f})")
            if parts:
                lines.append(f"  {path} / {base}: " + ", ".join(parts))
    lines += [f"error: {e}" for e in samples.errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["remote", "local"], default="remote")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help=f"comma-separated, from {','.join(METRICS)}")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--json", help="also write the samples here")
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = (set(args.paths) - set(PATHS)) | (set(args.metrics) - set(METRICS))
    if bad or args.reps < 1:
        ap.error(f"unknown {sorted(bad)} (--paths: {', '.join(PATHS)}; --metrics: "
                 f"{', '.join(METRICS)}); --reps >= 1")
    samples, machine = run(args, lambda msg: print(msg, file=sys.stderr, flush=True))
    print(report(samples, machine, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "json"},
                       "machine": machine, "time": time.time(), "errors": samples.errors,
                       "syn_retrans": samples.syn_retrans,
                       "samples": [{"path": p, "metric": m, "values": v,
                                    "load1": samples.loads[(p, m)],
                                    "rep": samples.reps[(p, m)]}
                                   for (p, m), v in samples.values.items()]}, f, indent=1)
    return 1 if samples.errors else 0


if __name__ == "__main__":
    sys.exit(main())
