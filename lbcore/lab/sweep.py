"""Teardown of a whole lab id, and the sweep of labs that killed runs left behind.

``/run/lbt-<id>/owner`` names the owning process (pid and start time), so
:func:`sweep_leftovers` removes what dead owners left without touching a lab that another
live run still uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

from .paths import CGROUP2_ROOT, ID_RE, NETNS_DIR, PREFIX, RUN_ROOT
from .procs import NetLabError, _alive, _kill_pids, _proc_starttime, _which, sh


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == str(path) or mnt.startswith(prefix):
                mounts.append(mnt)
    return sorted(mounts, key=len, reverse=True)


def destroy_lab(lab_id: str, cgroup2_root: Path = CGROUP2_ROOT) -> list[str]:
    """Remove every resource of lab ``lab_id``; returns the errors (empty if all went).

    Kills (by pid) what is left in its namespaces and cgroups, removes the cgroups
    bottom-up, unmounts its bpffs mounts, deletes its namespaces and its run directory.
    """
    if not re.fullmatch(r"[0-9a-f]{8}", lab_id):
        raise ValueError(f"not a lab id: {lab_id!r}")
    errors: list[str] = []
    prefix = f"{PREFIX}{lab_id}-"
    names = [n for n in _netns_names() if n.startswith(prefix)]
    cg_root = cgroup2_root / f"{PREFIX}{lab_id}"
    run_dir = RUN_ROOT / f"{PREFIX}{lab_id}"

    # 1. processes still inside the lab's namespaces or cgroups
    pids: set[int] = set()
    for n in names:
        out = sh([_which("ip"), "netns", "pids", n], check=False)
        pids.update(int(p) for p in out.split() if p.isdigit())
    cgroups = [Path(d) for d, _, _ in os.walk(cg_root, topdown=False)] if cg_root.is_dir() else []
    for cg in cgroups:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (cg / "cgroup.procs").read_text().split())
    _kill_pids(sorted(pids))

    # 2. cgroups, deepest first (a cgroup can go once it has no processes)
    for cg in cgroups:
        deadline = time.monotonic() + 5
        while True:
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    errors.append(f"rmdir {cg}: {e}")
                    break
                with contextlib.suppress(OSError):
                    _kill_pids([int(p) for p in (cg / "cgroup.procs").read_text().split()], 1)
                time.sleep(0.05)

    # 3. bpffs (and any other) mounts under the run dir
    for mnt in _mounts_under(run_dir):
        sh([_which("umount"), mnt], check=False)
        if os.path.ismount(mnt):
            sh([_which("umount"), "-l", mnt], check=False)
        if os.path.ismount(mnt):
            errors.append(f"umount {mnt} failed")

    # 4. namespaces (their veths, bridges, routes, tc and iptables state go with them)
    for n in names:
        try:
            sh([_which("ip"), "netns", "del", n])
        except NetLabError as e:
            errors.append(str(e))

    # 5. scratch files, only once nothing is mounted below
    if run_dir.is_dir():
        if _mounts_under(run_dir):
            errors.append(f"{run_dir} still has mounts, left in place")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return errors


def _owner_alive(lab_id: str) -> bool:
    run_dir = RUN_ROOT / f"{PREFIX}{lab_id}"
    try:
        pid_s, start = (run_dir / "owner").read_text().split()
    except FileNotFoundError:
        # owner is written right after mkdir: a very young dir may be a lab being born
        try:
            return time.time() - run_dir.stat().st_mtime < 60
        except FileNotFoundError:
            return False
    except (OSError, ValueError):
        return False
    if pid_s == "kept":  # `lbcore lab up`: lives until `lbcore lab down`
        return True
    return _alive(int(pid_s)) and _proc_starttime(int(pid_s)) == start


def lab_ids(cgroup2_root: Path = CGROUP2_ROOT) -> set[str]:
    """Ids of every lab that has anything left on this machine (live or not)."""
    found = [*_netns_names()]
    for root in (cgroup2_root, RUN_ROOT):
        with contextlib.suppress(OSError):
            found += os.listdir(root)
    return {m.group(1) for n in found if (m := ID_RE.match(n))}


def sweep_leftovers(cgroup2_root: Path = CGROUP2_ROOT) -> list[str]:
    """Remove labs whose owning process is gone (killed test runs). Returns their ids.

    Labs of live processes (e.g. a concurrent test run) are left alone.
    """
    swept = []
    for lab_id in sorted(lab_ids(cgroup2_root)):
        if not _owner_alive(lab_id):
            destroy_lab(lab_id, cgroup2_root)
            swept.append(lab_id)
    return swept
