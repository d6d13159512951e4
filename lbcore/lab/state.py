"""A cluster lab's state on disk (``/run/lbt-<id>/cluster.json``), so that
``lbcore lab status|exec|down`` work from another process than ``lab up``.

A lab that outlives its creator is *kept*: its ``owner`` file says ``kept`` instead of
a pid, so :func:`~.sweep.sweep_leftovers` (test sessions) leaves it alone; only
``lbcore lab down`` removes it. A lab whose creator died before keeping it is a
leftover, and ``down`` (or any sweep) removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .paths import PREFIX, RUN_ROOT
from .procs import NetLabError, _kill_pids, _proc_starttime, _which
from .sweep import destroy_lab, lab_ids, sweep_leftovers

STATE_FILE = "cluster.json"
KEPT = "kept"


def save(cluster) -> Path:
    """Write ``cluster.to_dict()`` to the lab's run directory (atomically)."""
    path = cluster.lab.run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cluster.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def keep(cluster) -> None:
    """Detach the lab from this process: it stays up after exit until ``lab down``."""
    save(cluster)
    cluster.lab.detach()
    (cluster.lab.run_dir / "owner").write_text(f"{KEPT} {int(time.time())}\n")


def is_kept(lab_id: str) -> bool:
    try:
        return (RUN_ROOT / f"{PREFIX}{lab_id}" / "owner").read_text().startswith(KEPT)
    except OSError:
        return False


def load(lab_id: str | None = None) -> dict[str, Any]:
    """The state of a kept cluster (``lab_id``, or the only one there is)."""
    ids = [i for i in sorted(lab_ids()) if is_kept(i)
           and (RUN_ROOT / f"{PREFIX}{i}" / STATE_FILE).is_file()]
    if lab_id is not None:
        ids = [i for i in ids if i == lab_id]
    if not ids:
        raise NetLabError("no lab is up (start one with `lbcore lab up`)"
                          if lab_id is None else f"no kept lab {lab_id}")
    if len(ids) > 1:
        raise NetLabError(f"several labs are up ({', '.join(ids)}): pass --id")
    return json.loads((RUN_ROOT / f"{PREFIX}{ids[0]}" / STATE_FILE).read_text())


def kept_ids() -> list[str]:
    return [i for i in sorted(lab_ids()) if is_kept(i)]


def _stop_agents(state: dict[str, Any]) -> None:
    pids = [a["pid"] for a in state.get("agents", [])
            if a.get("pid") and _proc_starttime(a["pid"]) == a.get("starttime")]
    _kill_pids(pids, timeout=5)  # SIGTERM first: agents exit cleanly


def down(lab_id: str | None = None) -> tuple[list[str], list[str]]:
    """Remove kept labs (``lab_id`` or all) and leftovers of killed runs.

    Returns (removed lab ids, errors). Labs of live processes are not touched.
    """
    removed, errors = [], []
    targets = [lab_id] if lab_id else kept_ids()
    for i in targets:
        with contextlib.suppress(OSError, ValueError):
            _stop_agents(json.loads((RUN_ROOT / f"{PREFIX}{i}" / STATE_FILE).read_text()))
        errors += destroy_lab(i)
        removed.append(i)
    removed += sweep_leftovers()
    return removed, errors


def exec_argv(state: dict[str, Any], target: str, cmd: list[str]) -> list[str]:
    """argv that runs ``cmd`` in a pod's netns and cgroup (or a node's netns and its
    agent cgroup). Uses nsenter, so /sys (cgroup2, bpffs) stays visible."""
    for pod in state["pods"]:
        if pod["name"] == target:
            netns, cgroup = pod["netns"], pod["cgroup"]
            break
    else:
        node = next((n for n in state["nodes"] if n["name"] == target), None)
        if node is None:
            names = [p["name"] for p in state["pods"]] + [n["name"] for n in state["nodes"]]
            raise NetLabError(f"no pod or node {target!r} (there are: {', '.join(names)})")
        netns, cgroup = node["netns"], node["agent_cgroup"]
    script = 'echo $$ > "$1/cgroup.procs" && ns="$2" && shift 2 && exec nsenter --net="$ns" -- "$@"'
    return [_which("sh"), "-c", script, "lbt-exec", cgroup, f"/run/netns/{netns}", *cmd]


def alive(pid: int | None, starttime: str | None) -> bool:
    return bool(pid) and _proc_starttime(pid) == starttime


def run_exec(state: dict[str, Any], target: str, cmd: list[str]) -> int:
    return subprocess.call(exec_argv(state, target, cmd))
