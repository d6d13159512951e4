"""``lbcore bench``: A/B benchmark of datapaths on the namespace lab, side by side.

Real clients (wrk, iperf3) and servers (nginx, iperf3) in a two-node lab cluster; each
driver programmed by its real agents (``lbcore run`` per node, file source); a direct
baseline (the same clients to the same backends, round-robin, no translation) measured
in the same run, interleaved with the drivers. See docs/benchmarks.md.

Modules: :mod:`.drivers` (which drivers, which traffic each carries), :mod:`.env`
(cluster, services, objects files, agents), :mod:`.control` (control-plane figures,
observed from the kernel), :mod:`.tools` (wrk/iperf3/prober), :mod:`.runner` (the
interleaved loop), :mod:`.report` (summary, rich table, Markdown, JSON), :mod:`.plots`
(PNG).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

QUICK = {"counts": "100", "reps": 1, "duration": 1.0, "tput_duration": 1.0,
         "warmup": 0.0}


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .runner import SCENARIOS

    p = argparse.ArgumentParser(prog="lbcore bench", description=(
        "A/B benchmark of datapaths: drivers interleaved with a direct baseline, "
        "median of repetitions, JSON + Markdown + PNG plots."))
    p.add_argument("--drivers", default="",
                   help="comma-separated drivers (default: every installed driver, "
                        "built-in or plugin, that loads; see `lbcore drivers`)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {','.join(SCENARIOS)}")
    p.add_argument("--services", default="1,1000",
                   help="service counts, e.g. 1,1000,10000,30000 (see docs/benchmarks.md "
                        "for the time 10,000+ take)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (>= 3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    p.add_argument("--tput-duration", type=float, default=3.0, help="seconds per iperf3 run")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of discarded wrk warm-up per path and direction (0: none)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--out", default="bench-results", help="directory for results")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="harness check (< 2 min): 100 services, one repetition, 1 s "
                        "runs, no warm-up (figures not for publication)")
    args = p.parse_args(argv)
    if args.quick:
        args.services, args.reps = QUICK["counts"], QUICK["reps"]
        args.duration, args.tput_duration = QUICK["duration"], QUICK["tput_duration"]
        args.warmup = QUICK["warmup"]
    bad = set(_csv(args.scenarios)) - set(SCENARIOS)
    if bad:
        p.error(f"unknown scenario(s) {sorted(bad)}; valid: {', '.join(SCENARIOS)}")
    try:
        args.counts = sorted({int(c) for c in _csv(args.services)})
    except ValueError:
        p.error("--services takes comma-separated integers")
    if not args.counts or min(args.counts) < 1:
        p.error("--services: counts must be >= 1")
    if args.reps < 1 or args.connections < 1 or args.threads < 1:
        p.error("--reps, --connections and --threads must be >= 1")
    return args


def choose_drivers(requested: str, skipped: dict[str, str]
                   ) -> tuple[list[str], dict[str, dict[str, str | None]]]:
    """The drivers to run (``requested``, default every installed one) and what traffic
    each carries; drivers that do not load go to ``skipped`` with the reason. Raises
    ValueError for a name that is not installed."""
    from . import drivers as d

    installed = d.installed()
    names = _csv(requested) or installed
    unknown = [n for n in names if n not in installed]
    if unknown:
        raise ValueError(f"--drivers: {', '.join(unknown)} not installed (installed: "
                         f"{', '.join(installed) or 'none'}; see `lbcore drivers`)")
    chosen, support = [], {}
    for name in dict.fromkeys(names):
        problem = d.problem(name)
        if problem:
            skipped[name] = f"does not load: {problem}"
            continue
        chosen.append(name)
        support[name] = d.support(name, d.capabilities(name))
    return chosen, support


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # its own arguments and module: lbcore/bench/soak.py
        from .soak import main as soak_main

        return soak_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("lbcore bench: needs root (network namespaces, cgroups, eBPF)", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..lab import NetLab
    from . import plots, report
    from .drivers import DIRECTIONS
    from .env import BenchCluster
    from .runner import Results, Runner, Settings, machine_info

    console = Console(stderr=True)
    results = Results(settings={}, machine=machine_info())
    try:
        drivers, support = choose_drivers(args.drivers, results.skipped)
    except ValueError as exc:
        print(f"lbcore bench: {exc}", file=sys.stderr)
        return 2
    settings = Settings(drivers, _csv(args.scenarios), args.counts, args.reps, args.duration,
                        args.tput_duration, args.connections, args.threads, args.warmup,
                        support)
    results.settings = {**settings.__dict__, "quick": args.quick,
                        "command": "lbcore bench " + shlex.join(argv if argv is not None
                                                               else sys.argv[1:])}
    for d in drivers:
        for direction, text in DIRECTIONS.items():
            why = support[d][direction]
            if why and any(s.startswith(direction) for s in settings.scenarios):
                results.skipped[f"{d} {text}"] = why
    start = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    total = len(settings.counts) * (1 + settings.reps * (1 + len(drivers)))
    try:
        with NetLab() as lab, Progress(TextColumn("{task.description}"), BarColumn(),
                                       TextColumn("{task.completed}/{task.total}"),
                                       TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("building the lab", total=total)
            results.machine["lab_id"] = lab.id
            bench = BenchCluster.build(lab)
            first = [True]

            def advance(text: str) -> None:
                if not first[0]:
                    progress.advance(task)
                first[0] = False
                progress.update(task, description=text)

            try:
                Runner(bench, settings, results, advance).run()
                progress.advance(task)
            finally:
                bench.stop()
    except KeyboardInterrupt:
        results.errors.append("interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
    results.machine["seconds"] = round(time.monotonic() - start, 1)
    results.machine.setdefault("loadavg_end", list(os.getloadavg()))
    out = Path(args.out)
    raw = results.__dict__
    plot_files: list[str] = []
    if not args.no_plots:
        why = plots.available()
        if why:
            results.skipped["plots"] = why
        elif results.samples:
            plot_files = plots.write_plots(report.summarize(raw), out)
    summ = report.write_all(raw, out, plot_files)
    for table in report.rich_tables(summ):
        console.print(table)
    for k, v in results.skipped.items():
        console.print(f"not run: {k}: {v}")
    for e in results.errors:
        console.print(f"[red]error[/red]: {e}")
    console.print(f"results: {out / 'results.json'}, {out / 'report.md'}"
                  + (f", {len(plot_files)} plots" if plot_files else "")
                  + f"; {results.machine['seconds']} s; load "
                  f"{results.machine['loadavg_start'][0]:.2f} -> "
                  f"{results.machine['loadavg_end'][0]:.2f} on {results.machine['cpus']} CPUs")
    return 1 if results.errors or not results.samples else 0
