"""What ``lbcore demo`` prints while it runs, and its closing summary (rich).

A :class:`Reporter` with ``quiet=True`` prints nothing (``--json``: only the JSON).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .demo import DemoReport
    from .lab import SockLBLab


class Reporter:
    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(highlight=False)
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

    # ---------------------------------------------------------------------- steps

    def lab(self, sl: SockLBLab) -> None:
        self._title("lab: one node, a client pod and server pods in network namespaces")
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("pod", "eth0", "network namespace", "cgroup"):
            table.add_column(col, no_wrap=True)
        root = sl.clients_cgroup.parent
        table.add_row("(node)", sl.node.ipv4, sl.node.ns.name, "-")
        table.add_row(
            sl.client.name,
            sl.client.ipv4,
            sl.client.ns.name,
            f"{root.name}/{sl.clients_cgroup.name}",
        )
        for b in sl.backends:
            table.add_row(b.name, b.ipv4, b.ns.name, f"{root.name}/{sl.servers_cgroup.name}")
        self._print(table)
        self._text(
            f"cgroups under {root.parent}/; socklb will attach to "
            f"{root.name}/{sl.clients_cgroup.name} only",
            "dim",
        )

    def inputs(self, workdir: Path, config: Path, objects: Sequence[dict[str, Any]]) -> None:
        self._title(f"Kubernetes objects and lbcore.yaml, written to {workdir}")
        service = yaml.safe_dump(objects[0], sort_keys=False).rstrip()
        self._print(Panel(Text(service), title="services.yaml: Service", expand=False))
        for obj in objects[1:]:
            meta = obj["metadata"]["name"]
            if obj["kind"] == "EndpointSlice":
                eps = ", ".join(
                    f"{e['targetRef']['name']} {e['addresses'][0]}" for e in obj["endpoints"]
                )
                self._text(
                    f"+ EndpointSlice {meta}: {eps} (ready), port {obj['ports'][0]['port']}/TCP"
                )
            elif obj["kind"] == "Node":
                addrs = ", ".join(
                    a["address"] for a in obj["status"]["addresses"] if a["type"] == "InternalIP"
                )
                self._text(f"+ Node {meta}: InternalIP {addrs}")
        self._print(Panel(Text(config.read_text().rstrip()), title=config.name, expand=False))

    def before(self, results: Sequence[tuple[str, subprocess.CompletedProcess[str]]]) -> None:
        self._title("before lbcore: curl from the client pod")
        for url, r in results:
            answer = (r.stdout or r.stderr).strip().removeprefix("curl: ")
            self._text(f"$ curl {url}\n  {answer or f'exit {r.returncode}'}", "dim")

    def synced(self, command: str, output: str) -> None:
        self._title(f"the agent: {command}")
        self._text(output)

    def services(self, table: str) -> None:
        self._title("lbcore services (read back from the kernel's maps)")
        self._text(table)

    def requests(self, label: str, url: str, rows: Sequence[dict[str, Any]]) -> None:
        self._title(f"{label}: curl from the client pod")
        self._text(f"$ for i in $(seq {len(rows)}); do curl -s {url}; done", "bold")
        counts: dict[str, int] = {}
        for row in rows:
            self._text(row["answer"], "" if row["rc"] == 0 else "red")
            if row["pod"]:
                counts[row["pod"]] = counts.get(row["pod"], 0) + 1
        spread = ", ".join(f"{pod} x{n}" for pod, n in sorted(counts.items()))
        self._text(f"spread: {spread or 'none'}", "bold")

    def capture(self, lines: Sequence[str], syns: Sequence[dict[str, Any]]) -> None:
        self._title("tcpdump -n -i eth0 in the client pod, during one curl to each")
        for line in lines:
            style = "bold" if "Flags [S]," in line else "dim"
            if not self.quiet:
                self.console.print(Text(line, style=style), no_wrap=True, overflow="ellipsis")
        for s in syns:
            self._text(
                f"curl {s['url']}: SYN {s['syn']} = {s['dst_pod']}, answered by {s['answered_by']}",
                "bold",
            )

    def getpeername(self, results: Sequence[dict[str, Any]]) -> None:
        self._title("getpeername() in the client, and what the server saw")
        for r in results:
            host, port = r["service"]
            peer, server = r["peer"], r["server"]
            self._text(f"connect({host}:{port}): getpeername() = {peer[0]}:{peer[1]}")
            self._text(
                f"  {server['backend']} accepted {server['client_ip']}:{server['client_port']}"
                f" on {server['local_ip']}:{server['local_port']} (client address kept)",
                "dim",
            )

    # -------------------------------------------------------------------- summary

    def summary(self, report: DemoReport) -> None:
        self._title(f"what was proven ({report.seconds:.1f} s)")
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("", no_wrap=True)
        table.add_column("check", no_wrap=True)
        table.add_column("evidence")
        for c in report.checks:
            mark = Text("PASS", style="green bold") if c.ok else Text("FAIL", style="red bold")
            table.add_row(mark, Text(c.name), Text(c.detail))
        self._print(table)
        if report.error:
            self._print(Panel(Text(report.error), title="demo stopped", style="red"))
        elif report.ok:
            self._text(
                "socket-LB: the service address was translated once, at connect(), inside "
                "the client's socket: no packet carried the ClusterIP or NodePort, and the "
                "application still saw the service address.",
                "green",
            )
