"""What ``lbcore demo`` prints while it runs, and its closing side-by-side summary (rich).

A :class:`Reporter` with ``quiet=True`` prints nothing (``--json``: only the JSON).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .demo_verdict import MODE_TEXT

if TYPE_CHECKING:
    from .demo import DemoReport
    from .lab.cluster import Cluster
    from .lab.workload import Walkthrough


def _table(*cols: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in cols:
        table.add_column(col, no_wrap=True)
    return table


class Reporter:
    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(highlight=False, width=140)
        self._step = 0

    def _title(self, text: str) -> None:
        if not self.quiet:
            self._step += 1
            self.console.rule(f"[bold]{self._step}. {escape(text)}", align="left")

    def _print(self, *objs: Any) -> None:
        if not self.quiet:
            self.console.print(*objs)

    def _text(self, text: str, style: str = "") -> None:
        self._print(Text(text.rstrip("\n"), style=style))

    def note(self, text: str) -> None:
        self._text(text, "yellow")

    # ---------------------------------------------------------------------- steps

    def skipped_drivers(self, skipped: Mapping[str, str]) -> None:
        for name, why in skipped.items():
            self._text(f"driver {name}: not run ({why})", "yellow")

    def cluster(self, cluster: Cluster, w: Walkthrough) -> None:
        self._title("the cluster: kubectl get nodes,pods -o wide")
        nodes = _table("NAME", "STATUS", "ROLES", "INTERNAL-IP", "POD-CIDRS", "NETNS")
        for n in cluster.nodes.values():
            nodes.add_row(n.name, "Ready", n.roles, f"{n.ipv4},{n.ipv6}",
                          f"{n.pod_cidr4},{n.pod_cidr6}", n.ns.name)
        self._print(nodes)
        self._text("")
        pods = _table("NAME", "READY", "STATUS", "IP", "IPv6", "NODE", "LABELS")
        for p in cluster.pods.values():
            labels = ",".join(f"{k}={v}" for k, v in p.labels.items())
            pods.add_row(p.name, "1/1", "Running", p.ipv4, p.ipv6, p.node.name, labels)
        self._print(pods)
        s = w.service
        self._text("")
        svc = _table("NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "SELECTOR")
        svc.add_row(s.name, s.type, ",".join(s.cluster_ips),
                    ",".join(f"{p.port}:{p.node_port}/{p.protocol}" for p in s.ports),
                    ",".join(f"{k}={v}" for k, v in s.selector.items()))
        self._print(svc)
        self._text(f"objects (Service, EndpointSlices, Nodes) written to "
                   f"{cluster.controller.path}; each pod's processes in "
                   f"{cluster.lab.cgroup_root}/<node>/pods/<pod>", "dim")

    def before(self, results: Sequence[tuple[str, subprocess.CompletedProcess[str]]]) -> None:
        self._title("before any agent: curl from net")
        for url, r in results:
            answer = (r.stdout or r.stderr).strip().removeprefix("curl: ")
            self._text(f"$ kubectl exec net -- curl {url}\n  {answer or f'exit {r.returncode}'}",
                       "dim")

    def driver_start(self, driver: str) -> None:
        self._title(f"driver {driver}: one `lbcore run` agent per node")

    def agents(self, driver: str, agents: Sequence[Any]) -> None:
        for a in agents:
            self._text(f"{a.name}: pid {a.proc.pid}, in netns {a.node.ns.name}, "
                       f"config {a.config} -> healthy (holds every planned frontend)", "dim")

    def services(self, driver: str, node: str, services: Sequence[dict[str, Any]]) -> None:
        """``lbcore services -o json`` of one node, shown as ``cilium service list``."""
        self._text(f"$ lbcore services   # on {node} ({driver}), read back from the kernel",
                   "bold")
        table = _table("ID", "Frontend", "Service Type", "Backend")
        for s in sorted(services, key=lambda s: s["id"]):
            fe = s["frontend"]
            host = f"[{fe['ip']}]" if ":" in fe["ip"] else fe["ip"]
            backends = "\n".join(
                f"{i} => {'[' + b['ip'] + ']' if ':' in b['ip'] else b['ip']}:{b['port']} "
                f"({b['state']})" for i, b in enumerate(s["backends"], 1))
            table.add_row(str(s["id"]), f"{host}:{fe['port']}/{fe['protocol']}", s["type"],
                          backends or "-")
        self._print(table)

    def requests(self, label: str, rows: Sequence[dict[str, Any]]) -> None:
        url = rows[0]["url"] if rows else ""
        self._text(f"$ kubectl exec net -- curl -s {url}   # x{len(rows)} ({label})", "bold")
        for row in rows:
            self._text(row["answer"], "" if row["rc"] == 0 else "red")

    def capture(self, driver: str, capture: Mapping[str, list[str]],
                observations: Sequence[dict[str, Any]]) -> None:
        self._text(f"$ tcpdump -n -i eth0   # in net (and tcp on each cni pod), during one "
                   f"curl to each ({driver})", "bold")
        for name, lines in capture.items():
            for line in lines:
                if name != "net" and "Flags [S]," not in line:
                    continue
                style = "bold" if "Flags [S]," in line else "dim"
                if not self.quiet:
                    self.console.print(Text(f"{name:>9} | {line}", style=style), no_wrap=True,
                                       overflow="ellipsis")
        for o in observations:
            self._text(f"=> curl {o['label']} {o['service'][0]}:{o['service'][1]}: net sent "
                       f"SYN {o['client_syn']} ({o['client_syn_to']}); {o['answered_by']} got "
                       f"{o['backend_syn']}; translated {MODE_TEXT[o['mode']]}", "green bold")

    def removed(self, driver: str, problems: Sequence[str],
                r: subprocess.CompletedProcess[str]) -> None:
        self._text(f"agents stopped, `lbcore cleanup` on every node ({driver}); curl to the "
                   f"ClusterIP now: {(r.stderr or r.stdout).strip() or r.returncode}", "dim")
        for p in problems:
            self._text(p, "red")

    # -------------------------------------------------------------------- summary

    def summary(self, report: DemoReport) -> None:
        self._title(f"side by side ({report.seconds:.1f} s)")
        runs = report.runs
        if runs:
            table = Table(header_style="bold", show_lines=True)
            table.add_column("", no_wrap=True)
            for run in runs:
                table.add_column(run.driver)
            labels = [o["label"] for o in runs[0].observations]
            for label in labels:
                obs = [next((o for o in r.observations if o["label"] == label), None)
                       for r in runs]
                table.add_row(f"curl {label}: SYN on net's eth0",
                              *[f"{o['client_syn']}\n({o['client_syn_to']})" if o else "-"
                                for o in obs])
                table.add_row(f"curl {label}: SYN at the pod",
                              *[(o["backend_syn"] or "-") if o else "-" for o in obs])
                table.add_row(f"curl {label}: translated",
                              *[MODE_TEXT[o["mode"]] if o else "-" for o in obs])
            table.add_row("checks", *[
                f"{sum(c.ok for c in r.checks)}/{len(r.checks)} passed" for r in runs])
            self._print(table)
        for name, why in report.skipped_drivers.items():
            self._text(f"not run: {name} ({why})", "yellow")
        checks = _table("", "check", "evidence")
        checks.columns[2].no_wrap = False
        for c in report.all_checks():
            mark = Text("PASS", style="green bold") if c.ok else Text("FAIL", style="red bold")
            checks.add_row(mark, Text(c.name), Text(c.detail))
        self._print(checks)
        if report.error:
            self._print(Panel(Text(report.error), title="demo stopped", style="red"))
        if report.kept:
            self._text(f"lab {report.lab_id} kept: `lbcore lab status`, `lbcore lab exec net -- "
                       f"curl ...`, `lbcore lab down`", "bold")
