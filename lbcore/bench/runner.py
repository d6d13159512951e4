"""The measurement loop of ``lbcore bench``: for each service count, repetitions in
which the paths are interleaved (direct, A, B, C, direct, A, B, C, ...).

Per driver and repetition: the driver's agents (one ``lbcore run`` per node) start on the
objects file of N services with an empty datapath and the control-plane figures are
taken (:mod:`.control`: first sync of N services, read back; two endpoint changes,
by traffic; agent RSS); then a 1 s warm-up per direction is run and discarded, then
every scenario the path supports; the agents are stopped and ``lbcore cleanup`` removes
the datapath before the next path, so two datapaths never coexist.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LBCoreError
from . import tools
from .control import ControlProbe, Held, log_breakdown, plan_of, scaled_timeout
from .env import IPERF_PORT, PERF_NODE_PORT, WEB_NODE_PORT, BenchCluster

SCENARIOS = ("ew-crr", "ew-rr", "ew-tput", "ns-crr", "ns-rr", "ns-tput")
SCENARIO_TEXT = {
    "crr": "connections/s (wrk, Connection: close)",
    "rr": "requests/s + latency (wrk, kept-alive)",
    "tput": "Gbit/s (iperf3, one stream)",
}


@dataclass
class Settings:
    drivers: list[str]  # every one loads; support[d]: {"ew"|"ns": why not, or None}
    scenarios: list[str]
    counts: list[int]
    reps: int = 3
    duration: float = 3.0
    tput_duration: float = 3.0
    connections: int = 16
    threads: int = 2
    warmup: float = 1.0
    support: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass
class Results:
    settings: dict[str, Any]
    machine: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    load: list[dict[str, Any]] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": os.uname().release,
            "loadavg_start": list(os.getloadavg())}


def objects_of(documents: list[dict[str, Any]]) -> Any:
    """The validated objects of a rendered file, without reading it back as YAML."""
    from ..k8s import Document, parse_objects

    return parse_objects([Document("bench", i, d) for i, d in enumerate(documents, 1)])


class Runner:
    def __init__(self, bench: BenchCluster, settings: Settings, results: Results,
                 advance: Callable[[str], None] = lambda _: None) -> None:
        self.b = bench
        self.s = settings
        self.r = results
        self.advance = advance
        self.plans: dict[tuple[str, int], dict[str, Held]] = {}
        self.objects: Any = None
        self.scripts = {
            "plain": tools.wrk_script(bench.lab.run_dir),
            "direct": tools.wrk_script(bench.lab.run_dir, [p.ipv4 for p in bench.backends]),
        }

    def supports(self, path: str, scenario: str) -> str | None:
        """None if ``path`` (a driver or ``direct``) can run ``scenario``, else why not."""
        if path == "direct":
            return None
        return self.s.support.get(path, {}).get(scenario.split("-")[0])

    # ------------------------------------------------------------ one measurement

    def _where(self, direction: str):
        if direction == "ew":
            return lambda argv, t: self.b.cluster.run(self.b.client, argv, timeout=t)
        return lambda argv, t: self.b.lab.run(self.b.outside, argv, timeout=t)

    def _target(self, path: str, direction: str, kind: str) -> tuple[str, int]:
        web0 = self.b.backends[0].ipv4
        if kind == "tput":
            if path == "direct":
                return web0, IPERF_PORT
            if direction == "ew":
                return self.b.services["perf"].cluster_ip, IPERF_PORT
            return self.b.entry_ip, PERF_NODE_PORT
        if path == "direct":
            return web0, 80  # the Lua setup() spreads threads over every backend
        if direction == "ew":
            return self.b.services["web"].cluster_ip, 80
        return self.b.entry_ip, WEB_NODE_PORT

    def measure(self, path: str, scenario: str, seconds: float) -> dict[str, float]:
        direction, kind = scenario.split("-")
        run = self._where(direction)
        host, port = self._target(path, direction, kind)
        if kind == "tput":
            r = run(tools.iperf3_argv(host, port, seconds), seconds + 30)
            return tools.parse_iperf3(r.stdout or r.stderr)
        script = self.scripts["direct" if path == "direct" else "plain"]
        argv = tools.wrk_argv(f"http://{host}:{port}/", script, seconds=seconds,
                              connections=self.s.connections, threads=self.s.threads,
                              close=kind == "crr")
        r = run(argv, seconds + 30)
        out = tools.parse_wrk(r.stdout)
        if out["requests"] == 0:
            raise RuntimeError(f"wrk got no answer from {host}:{port}: {r.stderr.strip()}")
        return out

    # ---------------------------------------------------------------- the loop

    def run(self) -> Results:
        paths = ["direct", *self.s.drivers]
        for count in self.s.counts:
            self.advance(f"rendering {count:,} services")
            try:
                self.b.render(count)
                self.objects = objects_of(self.b.documents.pop(count))
                self.plans.clear()  # the previous count's: no longer needed
            except (LBCoreError, OSError, ValueError) as exc:  # a harness bug: say so, go on
                self.r.errors.append(f"{count} services: objects file: {exc}")
                continue
            for rep in range(self.s.reps):
                for path in paths:
                    self.advance(f"{count:,} services, rep {rep + 1}/{self.s.reps}: {path}")
                    try:
                        self.one_path(count, rep, path)
                    except (LBCoreError, RuntimeError, ValueError, OSError, KeyError,
                            subprocess.SubprocessError) as exc:
                        self.r.errors.append(f"{count} services, rep {rep + 1}, {path}: {exc}")
                    finally:
                        problems = self.b.stop()
                        self.r.errors += [f"{path}: {p}" for p in problems]
                    if problems:  # what follows would run on top of this datapath
                        self.r.errors.append(f"stopped after {path}: its datapath could "
                                             "not be removed")
                        return self.r
        self.r.machine["loadavg_end"] = list(os.getloadavg())
        return self.r

    def one_path(self, count: int, rep: int, path: str) -> None:
        scenarios = [s for s in self.s.scenarios if self.supports(path, s) is None]
        self.b.reset_transport_state()  # no path inherits the previous one's TIME_WAITs
        if path != "direct":
            self.control(count, rep, path)
        for direction in sorted({s.split("-")[0] for s in scenarios}):
            if self.s.warmup > 0:  # warm-up, discarded
                self.measure(path, f"{direction}-rr", self.s.warmup)
        for scenario in scenarios:
            seconds = self.s.tput_duration if scenario.endswith("tput") else self.s.duration
            load = os.getloadavg()[0]
            figures = self.measure(path, scenario, seconds)
            self.r.samples.append({"count": count, "rep": rep, "path": path,
                                   "scenario": scenario, "load1": load, **figures})
        self.r.load.append({"t": time.time(), "count": count, "rep": rep, "path": path,
                            "load1": os.getloadavg()[0]})

    def control(self, count: int, rep: int, driver: str) -> None:
        """Agents up on ``count`` services from an empty datapath (first sync); two
        endpoint changes at ``count``; RSS; each agent's own account of its syncs."""
        timeout = scaled_timeout(count)
        agents = self.b.configure(driver)
        key = (driver, count)
        if key not in self.plans:  # the same for every repetition
            self.plans[key] = {a.node.name: plan_of(a, self.objects) for a in agents}
        ew = self.supports(driver, "ew-rr") is None
        if not ew and self.supports(driver, "ns-rr") is not None:
            raise RuntimeError(f"{driver} carries neither east-west nor north-south traffic: "
                               "no client of this benchmark can observe it")
        probe = ControlProbe(self.b, ew)
        first = probe.first_sync(agents, self.plans[key], count, timeout)
        changes = [probe.endpoint_change(count, v, timeout) for v in ("web-1", "web-0")]
        client_node = self.b.client.node.name
        self.r.control.append({
            "count": count, "rep": rep, "driver": driver, **first,
            "endpoint_change_s": changes, "observed_by": "client pod" if ew else "outside",
            "frontends_held": len(self.plans[key][client_node]),
            "rss_mb": self.b.rss_mb(), "agent_syncs": log_breakdown(agents),
            "load1": os.getloadavg()[0]})
