"""PNG plots of ``lbcore bench`` results (matplotlib, Agg backend; optional: without
matplotlib the run still writes its JSON and Markdown and says plots were skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"direct": "#555555", "socklb": "#1f77b4", "iptables": "#d62728",
          "tcnodeport": "#2ca02c", "nftables": "#9467bd"}  # others: matplotlib's cycle


def available() -> str | None:
    """None if matplotlib imports, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib not installed ({exc})"
    return None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(data: list[dict], scenario: str, metric: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in data:
        if r["scenario"] == scenario and metric in r and r[metric]["median"] is not None:
            s = r[metric]
            out.setdefault(r["path"], []).append((r["count"], s["median"], s["min"], s["max"]))
    return {k: sorted(v) for k, v in out.items()}


def vs_services(summ: dict[str, Any], out: Path) -> list[str]:
    """Per direction: connection rate and p99 latency vs number of services."""
    plt = _plt()
    files = []
    for direction in ("ew", "ns"):
        panels = [(f"{direction}-crr", "rate", "connections/s (Connection: close)"),
                  (f"{direction}-rr", "p99_ms", "p99 latency, kept-alive (ms)"),
                  (f"{direction}-rr", "rate", "requests/s, kept-alive")]
        if not any(_series(summ["data"], sc, m) for sc, m, _ in panels):
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
        for ax, (scenario, metric, label) in zip(axes, panels, strict=True):
            for path, pts in _series(summ["data"], scenario, metric).items():
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=path,
                            color=COLORS.get(path))
            ax.set_xscale("log")
            ax.set_xlabel("services programmed")
            ax.set_title(label, fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        legend: dict[str, Any] = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, h)
        if legend:
            axes[0].legend(list(legend.values()), list(legend))
        name = "east-west (pod → ClusterIP)" if direction == "ew" else \
            "north-south (outside → NodePort)"
        fig.suptitle(f"{name}: median of reps, bars = min-max")
        fig.tight_layout()
        path = out / f"bench-{direction}-vs-services.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(str(path))
    return files


def ratios(summ: dict[str, Any], out: Path) -> list[str]:
    """Grouped bars: ratio to direct per scenario (headline metric), one group per count."""
    plt = _plt()
    rows = [r for r in summ["data"] if r["path"] != "direct" and r.get("ratio") is not None]
    if not rows:
        return []
    counts = sorted({r["count"] for r in rows})
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4), squeeze=False)
    for ax, count in zip(axes[0], counts, strict=True):
        sub = [r for r in rows if r["count"] == count]
        scenarios = sorted({r["scenario"] for r in sub})
        paths = sorted({r["path"] for r in sub})
        width = 0.8 / max(1, len(paths))
        for i, p in enumerate(paths):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                hit = [r for r in sub if r["path"] == p and r["scenario"] == sc]
                if hit:
                    xs.append(j + i * width)
                    ys.append(hit[0]["ratio"])
            ax.bar(xs, ys, width, label=p, color=COLORS.get(p))
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(scenarios))])
        ax.set_xticklabels(scenarios, rotation=20)
        ax.set_title(f"{count:,} services: median ÷ direct (higher is better)", fontsize=10)
        ax.legend()
    fig.tight_layout()
    path = out / "bench-ratio-to-direct.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


def control_vs_services(summ: dict[str, Any], out: Path) -> list[str]:
    """First sync and one endpoint change vs number of services, per driver (log-log)."""
    rows = summ.get("control", [])
    panels = [("first_sync_s", "first sync of N services → sampled services answer (s)"),
              ("endpoint_change_s", "one endpoint change → programmed (s)")]
    if not any(r[m]["median"] for r in rows for m, _ in panels):
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for driver in sorted({r["driver"] for r in rows}):
            pts = sorted((r["count"], r[metric]) for r in rows
                         if r["driver"] == driver and r[metric]["median"] is not None)
            if not pts:
                continue
            ys = [s["median"] for _, s in pts]
            err = [[s["median"] - s["min"] for _, s in pts], [s["max"] - s["median"]
                                                               for _, s in pts]]
            ax.errorbar([c for c, _ in pts], ys, yerr=err, marker="o", capsize=3,
                        label=driver, color=COLORS.get(driver))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("services programmed")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("control plane, observed by traffic: median of reps, bars = min-max")
    fig.tight_layout()
    path = out / "bench-control-vs-services.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


def write_plots(summ: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return vs_services(summ, out) + ratios(summ, out) + control_vs_services(summ, out)
