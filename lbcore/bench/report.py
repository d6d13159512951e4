"""Summaries of ``lbcore bench`` results: per (count, scenario, path) median/min/max over
repetitions, ratios to the direct baseline of the same run, a rich table, Markdown, and
the JSON file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .tools import summary

# The headline figure of each scenario kind, and whether higher is better.
HEADLINE = {"crr": ("rate", "conn/s"), "rr": ("rate", "req/s"), "tput": ("gbit", "Gbit/s")}
LATENCY = ("p50_ms", "p99_ms", "p999_ms")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """``{"data": [...], "control": [...]}``: one row per (count, scenario, path)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in results["samples"]:
        groups[(s["count"], s["scenario"], s["path"])].append(s)
    data = []
    for (count, scenario, path), rows in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2] != "direct", kv[0][2])):
        kind = scenario.split("-")[1]
        metrics = [HEADLINE[kind][0], *(LATENCY if kind == "rr" else ())]
        if kind != "tput":
            metrics.append("errors")
        row = {"count": count, "scenario": scenario, "path": path,
               **{m: summary([r[m] for r in rows]) for m in metrics}}
        data.append(row)
    direct = {(r["count"], r["scenario"]): r for r in data if r["path"] == "direct"}
    for row in data:
        base = direct.get((row["count"], row["scenario"]))
        key = HEADLINE[row["scenario"].split("-")[1]][0]
        med, bmed = row[key]["median"], base[key]["median"] if base else None
        row["ratio"] = med / bmed if base and bmed else None
        if "p99_ms" in row and base and base["p99_ms"]["median"]:
            row["p99_ratio"] = row["p99_ms"]["median"] / base["p99_ms"]["median"]
    cgroups: dict[tuple, list[dict]] = defaultdict(list)
    for c in results["control"]:
        cgroups[(c["count"], c["driver"])].append(c)
    control = []
    for (count, driver), rows in sorted(cgroups.items()):
        rss = [max(r["rss_mb"].values()) for r in rows if r["rss_mb"]]
        own = [v for v in (own_full_sync(r) for r in rows) if v is not None]
        control.append({
            "count": count, "driver": driver,
            **{k: summary([r[k] for r in rows if r.get(k) is not None]) for k in
               ("first_sync_s", "held_s", "readback_s", "probe_answers_s")},
            "endpoint_change_s": summary([v for r in rows for v in r["endpoint_change_s"]]),
            "own_full_sync_s": summary(own),
            "rss_mb_max_node": summary(rss),
            "observed_by": rows[0].get("observed_by", ""),
            "frontends_held": max(r["frontends_held"] for r in rows)})
    return {"data": data, "control": control}


def own_full_sync(row: dict[str, Any]) -> float | None:
    """The slowest node's first full sync, as its agent logged it (a breakdown)."""
    firsts = [next((secs for kind, _, secs in syncs if kind == "full"), None)
              for syncs in row.get("agent_syncs", {}).values()]
    firsts = [f for f in firsts if f is not None]
    return max(firsts) if firsts else None


def fmt(s: dict[str, Any], digits: int = 0, scale: float = 1.0) -> str:
    if s is None or s.get("median") is None:
        return "-"
    f = f"{{:,.{digits}f}}"
    return (f"{f.format(s['median'] * scale)} [{f.format(s['min'] * scale)}-"
            f"{f.format(s['max'] * scale)}]")


def _digits(kind: str) -> int:
    return 2 if kind == "tput" else 0


def table_rows(summ: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in summ["data"]:
        kind = r["scenario"].split("-")[1]
        key, unit = HEADLINE[kind]
        lat = (f"{r['p50_ms']['median']:.2f} / {r['p99_ms']['median']:.2f} / "
               f"{r['p999_ms']['median']:.2f}" if kind == "rr" else "")
        ratio = "" if r["path"] == "direct" or r.get("ratio") is None else f"{r['ratio']:.2f}x"
        errs = r.get("errors", {}).get("median")
        rows.append([f"{r['count']:,}", r["scenario"], r["path"],
                     f"{fmt(r[key], _digits(kind))} {unit}", ratio, lat,
                     "" if not errs else f"{errs:,.0f}"])
    return rows


HEADERS = ["services", "scenario", "path", "median [min-max]", "÷ direct",
           "p50 / p99 / p99.9 ms", "errors"]
CONTROL_HEADERS = ["services", "driver", "first sync → sampled services answer (s)",
                   "its full sync, by its log (s)", "read back = plan at (s)",
                   "a read-back takes (s)", "one endpoint change → programmed (s)",
                   "agent RSS MB (max node)", "frontends held"]


def control_rows(summ: dict[str, Any]) -> list[list[str]]:
    return [[f"{c['count']:,}", c["driver"], fmt(c["first_sync_s"], 1),
             fmt(c["own_full_sync_s"], 2), fmt(c["held_s"], 1), fmt(c["readback_s"], 1),
             fmt(c["endpoint_change_s"], 3), fmt(c["rss_mb_max_node"], 0),
             str(c["frontends_held"])]
            for c in summ["control"]]


def rich_tables(summ: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    out = []
    for title, headers, rows in (("data path (median of reps [min-max])", HEADERS,
                                  table_rows(summ)),
                                 ("control plane", CONTROL_HEADERS, control_rows(summ))):
        t = Table(title=title)
        for h in headers:
            t.add_column(h, overflow="fold")
        for row in rows:
            t.add_row(*row)
        out.append(t)
    return out


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any], summ: dict[str, Any], plots: list[str]) -> str:
    m, s = results["machine"], results["settings"]
    parts = [
        "# lbcore bench results",
        "",
        f"Command: `{s.get('command', 'lbcore bench')}`",
        "",
        f"Machine: {m['cpus']} CPUs, kernel {m['kernel']}; load average (1/5/15 min) at "
        f"start {'/'.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{'/'.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}. "
        f"Repetitions: {s['reps']} (drivers interleaved), {s['duration']} s per wrk run, "
        f"{s['tput_duration']} s per iperf3 run, wrk -t{s['threads']} -c{s['connections']}.",
        "",
        "## Data path (median of repetitions [min-max]; ratio = median ÷ direct median)",
        "",
        _md_table(HEADERS, table_rows(summ)),
        "",
        "## Control plane (observed by a client of the datapath, not the agent's log)",
        "",
        _md_table(CONTROL_HEADERS, control_rows(summ)),
        "",
    ]
    if results.get("skipped"):
        parts += ["## Not run", ""] + [f"* {k}: {v}" for k, v in results["skipped"].items()]
        parts.append("")
    if results.get("errors"):
        parts += ["## Errors", ""] + [f"* {e}" for e in results["errors"]] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        parts.append("")
    return "\n".join(parts)


def write_all(results: dict[str, Any], out: Path, plots: list[str]) -> dict[str, Any]:
    summ = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**results, "summary": summ}, indent=1)
                                      + "\n")
    (out / "report.md").write_text(markdown(results, summ, plots))
    return summ
