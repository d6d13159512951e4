"""``lbcore bench soak``: steady traffic while services and endpoints churn, per driver.

For each driver, on a two-node lab cluster with one ``lbcore run`` agent per node:

* **load** — through the ClusterIP of Service ``api`` and the NodePort of Service
  ``web``, two kinds of client for each: wrk with kept-alive connections (established
  connections must survive every update) and a client that opens a fresh connection
  for every request at a fixed rate (every new connection must find a live backend).
  A client runs in a pod or outside the cluster, whichever the driver serves;
* **churn** — every ``--churn-interval`` (100 ms) one change to the objects file the
  agents follow: an endpoint of ``web`` or ``api`` added, removed or replaced (each
  always keeps at least one, and every backend pod stays up, so every request has a
  live backend), an idle Service created or deleted, or an idle Service's endpoints
  changed (tens of idle Services: the file source re-reads the whole file);
* **memory** — VmRSS of every agent sampled every ``--sample-interval`` seconds; the
  growth after a warm-up and the least-squares slope (MB per 10 minutes) are reported;
* **convergence** — after the churn stops, every agent must hold exactly what the
  core plans for the final objects (read back from the kernel).

Verdict per driver: zero failed requests, memory flat (growth within
``--rss-tolerance``), converged. JSON (``soak.json``) and Markdown (``soak.md``) in
``--out``; the exit status is non-zero when a verdict fails. The cluster, the load
client and the churn are in :mod:`.soak_env`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..conformance.env import LAB_OPTIONS
from ..lab import NetLab
from ..lab.agents import start_agents, stop_agents, wait_healthy
from . import tools
from .soak_env import LOAD_CLIENT, Churner, SoakCluster, Target, rss_mb

TOLERANCE_MB = 8.0

@dataclass
class SoakSettings:
    drivers: list[str]
    duration: float = 1800.0
    churn_interval: float = 0.1
    idle_services: int = 20
    rate: float = 50.0  # new connections per second, per target
    wrk_connections: int = 2
    wrk_delay_ms: int = 5  # between two requests of a connection: steady, not flat out
    sample_interval: float = 5.0
    warmup: float | None = None  # seconds of RSS not judged; None: min(120, duration / 4)
    rss_tolerance_mb: float = TOLERANCE_MB
    seed: int = 1
    out: str = "soak-results"

    @property
    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else min(120.0, self.duration / 4)


def parse_args(argv: Sequence[str] | None) -> SoakSettings:
    p = argparse.ArgumentParser(prog="lbcore bench soak", description=(
        "Steady traffic (ClusterIP and NodePort) while endpoints and services churn; "
        "zero failed requests and flat agent memory, per driver."))
    p.add_argument("--drivers", default="socklb,iptables", help="comma-separated drivers")
    p.add_argument("--duration", type=float, default=1800.0,
                   help="seconds of load and churn per driver (default 1800)")
    p.add_argument("--churn-interval", type=float, default=0.1,
                   help="seconds between two changes of the objects (default 0.1)")
    p.add_argument("--idle-services", type=int, default=20,
                   help="at most this many idle Services are created/deleted (default 20)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="new connections per second per target (default 50)")
    p.add_argument("--wrk-connections", type=int, default=2,
                   help="kept-alive wrk connections per target (default 2)")
    p.add_argument("--wrk-delay-ms", type=int, default=5,
                   help="ms between two requests of a kept-alive connection (default 5; "
                        "0: as fast as it goes)")
    p.add_argument("--sample-interval", type=float, default=5.0,
                   help="seconds between two VmRSS samples (default 5)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of RSS not judged (default: min(120, duration/4))")
    p.add_argument("--rss-tolerance", type=float, default=TOLERANCE_MB,
                   help=f"MB of RSS growth after the warm-up still called flat "
                        f"(default {TOLERANCE_MB})")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn")
    p.add_argument("--out", default="soak-results", help="directory for soak.json, soak.md")
    a = p.parse_args(argv)
    drivers = [d.strip() for d in a.drivers.split(",") if d.strip()]
    if not drivers:
        p.error("--drivers: name at least one driver")
    if a.duration <= 0 or a.churn_interval <= 0 or a.rate <= 0 or a.sample_interval <= 0:
        p.error("--duration, --churn-interval, --rate and --sample-interval must be > 0")
    if a.idle_services < 0 or a.wrk_connections < 1 or a.wrk_delay_ms < 0:
        p.error("--idle-services and --wrk-delay-ms must be >= 0, --wrk-connections >= 1")
    return SoakSettings(drivers, a.duration, a.churn_interval, a.idle_services, a.rate,
                        a.wrk_connections, a.wrk_delay_ms, a.sample_interval, a.warmup,
                        a.rss_tolerance, a.seed, a.out)


# -------------------------------------------------------------------- memory


def memory_summary(samples: Sequence[tuple[float, float]], warmup: float,
                   tolerance: float) -> dict[str, Any]:
    """First/last/max, and after ``warmup`` seconds: growth (mean of the last quarter
    minus mean of the first quarter) and the least-squares slope in MB per 10 min."""
    out: dict[str, Any] = {"samples": len(samples)}
    if not samples:
        return {**out, "flat": False, "why": "no samples"}
    values = [v for _, v in samples]
    out.update(first_mb=round(values[0], 2), last_mb=round(values[-1], 2),
               max_mb=round(max(values), 2))
    judged = [(t, v) for t, v in samples if t >= warmup] or list(samples)
    q = max(1, len(judged) // 4)
    growth = sum(v for _, v in judged[-q:]) / q - sum(v for _, v in judged[:q]) / q
    out.update(judged_from_s=round(judged[0][0], 1), judged_first_mb=round(judged[0][1], 2),
               growth_mb=round(growth, 2), slope_mb_per_10min=round(_slope(judged) * 600, 3),
               flat=growth <= tolerance)
    return out


def _slope(points: Sequence[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in points) / var


# ------------------------------------------------------------------- one run


@dataclass
class DriverResult:
    driver: str
    started_at: float = 0.0  # time.time(), to line failures up with agent logs
    seconds: float = 0.0
    targets: list[dict[str, Any]] = field(default_factory=list)
    churn: dict[str, int] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss_samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    syncs: dict[str, int] = field(default_factory=dict)
    failed_syncs: dict[str, list[str]] = field(default_factory=dict)  # log times, per agent
    agent_errors: list[str] = field(default_factory=list)
    converged: bool = False
    problems: list[str] = field(default_factory=list)
    loadavg: list[tuple[float, list[float]]] = field(default_factory=list)

    @property
    def failed_requests(self) -> int:
        return sum(t.get("failed", 0) for t in self.targets)

    @property
    def ok(self) -> bool:
        return (not self.problems and self.converged and self.failed_requests == 0
                and bool(self.targets) and all(m.get("flat") for m in self.memory.values()))


def run_driver(soak: SoakCluster, driver: str, s: SoakSettings,
               progress: Callable[[str], None] = lambda _: None) -> DriverResult:
    result = DriverResult(driver)
    targets = soak.targets(driver)
    if not targets:
        result.problems.append("the driver serves none of the soak's frontends")
        return result
    agents = start_agents(soak.cluster, [driver], options=LAB_OPTIONS, timeout=60)
    procs: list[tuple[Target, str, Any]] = []
    churner = Churner(soak, s.churn_interval, s.idle_services)
    script = _wrk_script(soak.lab.run_dir, s.wrk_delay_ms)
    samples: dict[str, list[tuple[float, float]]] = {a.node.name: [] for a in agents}
    start, result.started_at = time.monotonic(), round(time.time(), 3)
    try:
        for t in targets:
            url = f"http://{t.host}:{t.port}/"
            wrk = tools.wrk_argv(url, script, seconds=s.duration, connections=s.wrk_connections,
                                 threads=1, close=False)
            conn = [sys.executable, "-I", "-S", "-c", LOAD_CLIENT, t.host, str(t.port),
                    str(s.rate), str(s.duration)]
            for kind, argv in (("wrk kept-alive", wrk), ("new connection per request", conn)):
                name = f"soak-{kind.split()[0]}-{t.name.split()[0]}"
                proc = (soak.cluster.spawn(soak.client, argv, name=name) if t.where == "pod"
                        else soak.lab.spawn(soak.outside, argv, name=name))
                procs.append((t, kind, proc))
        churner.start()
        next_sample = start
        while (now := time.monotonic()) - start < s.duration:
            if now >= next_sample:
                for a in agents:
                    mb = rss_mb(a.proc.pid) if a.proc else None
                    if mb is not None:
                        samples[a.node.name].append((round(now - start, 1), round(mb, 2)))
                result.loadavg.append((round(now - start, 1), list(os.getloadavg())))
                next_sample += s.sample_interval
                done = round(100 * (now - start) / s.duration)
                progress(f"{driver}: {done}% ({sum(churner.kinds.values())} changes)")
            dead = [a.name for a in agents if a.proc is None or not a.proc.alive()]
            if dead:
                result.problems.append(f"agent(s) exited during the soak: {', '.join(dead)}")
                break
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
    finally:
        churner.stop_event.set()
        churner.join(10)
        result.seconds = round(time.monotonic() - start, 1)
        for t, kind, proc in procs:
            result.targets.append(_collect(t, kind, proc, s.duration))
        if churner.error:
            result.problems.append(f"churn stopped: {churner.error}")
        result.churn = dict(sorted(churner.kinds.items()))
        try:
            wait_healthy(soak.cluster, agents, timeout=60)
            result.converged = True
        except Exception as exc:
            result.problems.append(f"not converged after the churn: {str(exc)[:500]}")
        for a in agents:
            log = a.proc.output() if a.proc else ""
            lines = log.splitlines()
            result.syncs[a.node.name] = sum(" sync: " in line for line in lines)
            # A failed sync is retried (and the next one is full): reported, not a failure
            # of the soak; any other error line is.
            result.failed_syncs[a.node.name] = [" ".join(line.split()[:2]) for line in lines
                                                if "sync failed:" in line]
            result.agent_errors += [f"{a.name}: {line[:300]}" for line in lines
                                    if (" ERROR " in line and "sync failed:" not in line)
                                    or "Traceback" in line][:20]
        problems = stop_agents(soak.cluster, agents)
        result.problems += problems
    result.rss_samples = samples
    result.memory = {node: memory_summary(v, s.warmup_seconds, s.rss_tolerance_mb)
                     for node, v in samples.items()}
    if result.agent_errors:
        result.problems.append(f"{len(result.agent_errors)} error line(s) in agent logs")
    return result


def _wrk_script(directory: Path, delay_ms: int) -> Path:
    """The bench's wrk script (JSON summary) plus a fixed pause between requests."""
    text = tools.wrk_script(directory).read_text()
    if delay_ms:
        text += f"function delay()\n  return {delay_ms}\nend\n"
    path = directory / f"wrk-soak-{delay_ms}ms.lua"
    path.write_text(text)
    return path


def _collect(t: Target, kind: str, proc: Any, duration: float) -> dict[str, Any]:
    """Wait for one load process to end and read its figures."""
    try:
        proc.popen.wait(timeout=30)
    except Exception:
        proc.stop()
    out = proc.output()
    entry: dict[str, Any] = {"target": t.name, "address": f"{t.host}:{t.port}", "client": t.where,
                             "kind": kind}
    try:
        if kind.startswith("wrk"):
            figures = tools.parse_wrk(out)
            entry.update(requests=int(figures["requests"]), failed=int(figures["errors"]),
                         rate=round(figures["rate"], 1), p99_ms=round(figures["p99_ms"], 2))
        else:
            last = json.loads(out.strip().splitlines()[-1])
            entry.update(requests=last["ok"] + last["failed"], failed=last["failed"],
                         rate=round((last["ok"] + last["failed"]) / duration, 1),
                         errors=last["errors"], first_failures=last["first_failures"],
                         backends=last["backends"])
    except (ValueError, KeyError, IndexError) as exc:
        entry.update(requests=0, failed=1, error=f"no result ({exc}): {out[-300:]}")
    return entry


# ------------------------------------------------------------------- reports


def markdown(results: Sequence[DriverResult], s: SoakSettings, machine: dict[str, Any]) -> str:
    lines = [f"# Soak: {', '.join(r.driver for r in results)}", "",
             f"{s.duration:.0f} s of load per driver, one change of the objects every "
             f"{s.churn_interval * 1000:.0f} ms (up to {s.idle_services} idle services), "
             f"{s.rate:g} new connections/s per target plus {s.wrk_connections} kept-alive "
             f"wrk connections ({s.wrk_delay_ms} ms between requests); VmRSS every "
             f"{s.sample_interval:g} s, judged after "
             f"{s.warmup_seconds:.0f} s (flat: growth <= {s.rss_tolerance_mb:g} MB). "
             f"{machine['cpus']} CPUs, load average {machine['loadavg_start'][0]:.2f} at the "
             f"start, {machine['loadavg_end'][0]:.2f} at the end.", "",
             "| driver | target | client | kind | requests | failed | rate/s | answered by |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for r in results:
        for t in r.targets:
            seen = ", ".join(f"{k} {v}" for k, v in sorted(t.get("backends", {}).items()))
            lines.append(f"| {r.driver} | {t['target']} ({t['address']}) | {t['client']} | "
                         f"{t['kind']} | {t['requests']} | {t['failed']} | {t.get('rate', 0)} "
                         f"| {seen} |")
    lines += ["", "| driver | agent | RSS first → last (max) MB | growth after warm-up MB | "
              "slope MB/10 min | flat |", "|---|---|---|---:|---:|---|"]
    for r in results:
        for node, m in r.memory.items():
            lines.append(f"| {r.driver} | {node} | {m.get('first_mb')} → {m.get('last_mb')} "
                         f"({m.get('max_mb')}) | {m.get('growth_mb')} | "
                         f"{m.get('slope_mb_per_10min')} | {'yes' if m.get('flat') else 'NO'} |")
    lines += ["", "| driver | changes | syncs per agent | failed syncs (retried) | converged "
              "| verdict |", "|---|---:|---|---|---|---|"]
    for r in results:
        syncs = ", ".join(f"{k} {v}" for k, v in r.syncs.items())
        failed = ", ".join(f"{k} {len(v)}" for k, v in r.failed_syncs.items())
        lines.append(f"| {r.driver} | {sum(r.churn.values())} | {syncs} | {failed} | "
                     f"{'yes' if r.converged else 'NO'} | {'PASS' if r.ok else 'FAIL'} |")
    for r in results:
        for p in r.problems:
            lines.append(f"\n- {r.driver}: {p}")
        for t in r.targets:
            for f in t.get("first_failures", ()):
                lines.append(f"\n- {r.driver} {t['target']} ({t['kind']}): at {f['t']} s "
                             f"{f['error']} {f['detail']}; load average "
                             f"{_load_at(r.loadavg, f['t']):.2f}")
    return "\n".join(lines) + "\n"


def _load_at(samples: Sequence[tuple[float, list[float]]], t: float) -> float:
    """The 1-minute load average sampled nearest to ``t`` seconds."""
    return min(samples, key=lambda x: abs(x[0] - t))[1][0] if samples else float("nan")


def write_results(results: Sequence[DriverResult], s: SoakSettings, machine: dict[str, Any],
                  out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {"settings": asdict(s), "machine": machine,
            "drivers": [{**asdict(r), "failed_requests": r.failed_requests, "ok": r.ok}
                        for r in results]}
    json_path, md_path = out / "soak.json", out / "soak.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown(results, s, machine))
    return json_path, md_path


# ---------------------------------------------------------------------- main


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(s: SoakSettings, argv: Sequence[str] = (),
        progress: Callable[[str], None] = lambda _: None) -> tuple[list[DriverResult],
                                                                   dict[str, Any]]:
    """The soak for every driver that loads, on one lab (removed afterwards)."""
    from ..demo import driver_problem

    machine: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": os.uname().release,
                               "loadavg_start": list(os.getloadavg()),
                               "command": "lbcore bench soak " + shlex.join(argv)}
    results = []
    with NetLab() as lab:
        soak = SoakCluster(lab, s.seed)
        for driver in s.drivers:
            problem = driver_problem(driver)
            if problem:
                results.append(DriverResult(driver, problems=[f"does not load: {problem}"]))
                continue
            results.append(run_driver(soak, driver, s, progress))
    machine["loadavg_end"] = list(os.getloadavg())
    return results, machine


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    s = parse_args(argv)
    if os.geteuid() != 0:
        print("lbcore bench soak: needs root (network namespaces, cgroups, eBPF)",
              file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results, machine = run(s, argv, lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("lbcore bench soak: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    json_path, md_path = write_results(results, s, machine, Path(s.out))
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
