"""Rendering for the CLI: rich tables and the JSON shapes DESIGN.md fixes.

Every cell is a ``rich.text.Text`` so that addresses such as ``[fd00::1]:80/TCP`` are
never mistaken for console markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .driver import Capabilities
from .model import (
    BackendState,
    DesiredState,
    Frontend,
    FrontendAddress,
    FrontendState,
    SkippedService,
)


def make_console(file: IO[str] | None = None) -> Console:
    """A console on ``file`` (default: the current ``sys.stdout``). Not a terminal:
    no colour and wide enough that rows never wrap (the output is for scripts)."""
    file = file or sys.stdout
    tty = file.isatty()
    return Console(file=file, width=None if tty else 400, highlight=False, no_color=not tty)


def print_table(console: Console, table: Table) -> None:
    """Print ``table``; off a terminal without the padding rich leaves at line ends."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    console.file.write("\n".join(lines) + "\n")


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    return table


def _row(*cells: object) -> list[Text]:
    return [Text("" if c is None else str(c)) for c in cells]


# ---------------------------------------------------------------------- frontends


def frontend_flags(fe: Frontend) -> tuple[str, ...]:
    flags = []
    if fe.session_affinity_timeout is not None:
        flags.append(f"affinity={fe.session_affinity_timeout}s")
    if fe.external_traffic_local:
        flags.append("externalTrafficPolicy=Local")
    if fe.internal_traffic_local:
        flags.append("internalTrafficPolicy=Local")
    if fe.source_ranges:
        flags.append("sourceRanges=" + ",".join(fe.source_ranges))
    return tuple(flags)


def desired_frontend_states(state: DesiredState) -> list[FrontendState]:
    """The desired frontends in read-back shape, numbered 1..N in address order,
    so ``sync --dry-run`` and ``services`` print alike."""
    ordered = sorted(state.frontends, key=lambda fe: (fe.address, str(fe.service)))
    return [
        FrontendState(
            id=i,
            address=fe.address,
            type=fe.type.value,
            backends=tuple(BackendState(b.ip, b.port, b.state) for b in fe.backends),
            service=fe.service_port,
            flags=frontend_flags(fe),
        )
        for i, fe in enumerate(ordered, start=1)
    ]


def backend_text(backend: BackendState, protocol: str) -> str:
    return f"{FrontendAddress(backend.ip, backend.port, protocol)} ({backend.state})"


def frontends_table(frontends: Sequence[FrontendState]) -> Table:
    """``cilium service list``: ``ID  Frontend  Service Type  Backend``, the first
    backend on the frontend's row and further backends on the rows below."""
    table = _table("ID", "Frontend", "Service Type", "Backend")
    for fs in sorted(frontends, key=lambda f: f.id):
        backends = [
            f"{n} => {backend_text(b, fs.address.protocol)}"
            for n, b in enumerate(fs.backends, start=1)
        ]
        table.add_row(*_row(fs.id, fs.address, fs.type, backends[0] if backends else ""))
        for line in backends[1:]:
            table.add_row(*_row("", "", "", line))
    return table


def frontends_json(frontends: Iterable[FrontendState]) -> list[dict[str, object]]:
    return [fs.to_json() for fs in sorted(frontends, key=lambda f: f.id)]


def skipped_table(skipped: Sequence[SkippedService]) -> Table:
    table = _table("Service", "Frontend", "Not programmed because")
    for skip in sorted(skipped, key=lambda s: (str(s.service), str(s.frontend or ""))):
        table.add_row(*_row(skip.service, skip.frontend or "(all)", skip.reason))
    return table


def skipped_json(skipped: Iterable[SkippedService]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for skip in sorted(skipped, key=lambda s: (str(s.service), str(s.frontend or ""))):
        frontend = None
        if skip.frontend is not None:
            fa = skip.frontend
            frontend = {"ip": fa.ip, "port": fa.port, "protocol": fa.protocol}
        out.append({"service": str(skip.service), "frontend": frontend, "reason": skip.reason})
    return out


def plan_json(state: DesiredState) -> dict[str, object]:
    """``sync --dry-run -o json``: the frontends in ``services -o json`` shape, plus
    what will not be programmed and why."""
    return {
        "frontends": frontends_json(desired_frontend_states(state)),
        "skipped": skipped_json(state.skipped),
    }


# ------------------------------------------------------------------------ drivers


def capability_summary(caps: Capabilities) -> dict[str, str]:
    data = caps.to_json()
    features = [k for k in ("session_affinity", "source_ranges", "external_traffic_local",
                            "internal_traffic_local") if data[k]]
    return {
        "types": ",".join(data["frontend_types"]),
        "protocols": ",".join(data["protocols"]),
        "families": ",".join(f"IPv{f}" for f in data["families"]),
        "features": ",".join(features) or "-",
        "algorithms": ",".join(data["algorithms"]),
    }


def drivers_table(rows: Sequence[dict[str, Any]]) -> Table:
    """``rows``: name, target, configured, and capabilities or error."""
    table = _table("Driver", "Frontend types", "Protocols", "Families", "Features",
                   "Algorithms", "Entry point")
    for row in rows:
        name = row["name"] + (" *" if row.get("configured") else "")
        if row.get("error"):
            table.add_row(*_row(name, f"cannot load: {row['error']}", "", "", "", "",
                                row["target"]))
            continue
        s = capability_summary(row["capabilities"])
        table.add_row(*_row(name, s["types"], s["protocols"], s["families"], s["features"],
                            s["algorithms"], row["target"]))
    return table


def drivers_json(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        item: dict[str, Any] = {"name": row["name"], "entry_point": row["target"],
                                "configured": bool(row.get("configured"))}
        if row.get("error"):
            item["error"] = row["error"]
        else:
            item["capabilities"] = row["capabilities"].to_json()
            item["description"] = row["capabilities"].description
        out.append(item)
    return out


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


# ------------------------------------------------------------------------- doctor


def checks_table(results: Sequence[Any]) -> Table:
    """``doctor``: one row per check (``doctor.CheckResult``), the fix on the row below."""
    table = _table("", "Check", "Result")
    for r in results:
        table.add_row(*_row(r.status, r.check, r.message))
        if not r.ok and r.fix:
            table.add_row(*_row("", "", f"fix: {r.fix}"))
    return table
