"""Commands and processes of a lab: ``sh`` on the host, and processes run inside a lab
namespace *and* a lab cgroup, tracked by pid (never found or ended by name).

Processes run through ``nsenter --net=/run/netns/NS`` (not ``ip netns exec``, which gives
them a fresh ``/sys`` without the cgroup2/bpffs mounts)::

    sh -c 'echo $$ > CG/cgroup.procs && exec nsenter --net=/run/netns/NS -- cmd ...'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .paths import SBIN_PATH

if TYPE_CHECKING:
    from .netns import Netns

# sh wrapper: join the cgroup, then become `cmd` inside the namespace (same pid throughout).
_SPAWN_SH = 'echo $$ > "$1/cgroup.procs" && ns="$2" && shift 2 && exec nsenter --net="$ns" -- "$@"'


class NetLabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def _env() -> dict[str, str]:
    """Environment for lab processes: no proxies, sbin on PATH."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = SBIN_PATH + ":" + env.get("PATH", "")
    return env


def _which(name: str) -> str:
    path = shutil.which(name, path=SBIN_PATH + ":" + os.environ.get("PATH", ""))
    if not path:
        raise NetLabError(f"{name!r} not found (run `make setup`)")
    return path


def sh(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command in the *current* namespace (only used for ip -n / mount / umount)."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise NetLabError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


# ------------------------------------------------------------------------- pids only


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_pids(pids: Sequence[int], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `timeout`. Pids only, never names."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def _bound(pid: int, port: int, proto: str) -> bool:
    hexport = f"{port:04X}"
    for fam in ("", "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}{fam}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].rsplit(":", 1)[1] == hexport and (proto == "udp" or cols[3] == "0A"):
                return True
    return False


# -------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Proc:
    """A process started by the lab inside ``ns`` and ``cgroup``; ``pid`` is the command's."""

    name: str
    popen: subprocess.Popen
    ns: Netns
    cgroup: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps it. Returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} ns={self.ns.short}>"


class ProcessesMixin:
    """``NetLab``'s process verbs: spawn (tracked), run (to completion), wait_listening.

    Needs from the lab: ``run_dir``, ``cgroup_root``, ``procs``, ``_nlog``, ``_own()``
    and ``cgroup()``.
    """

    run_dir: Path
    cgroup_root: Path
    procs: list[Proc]
    _nlog: int
    _own: Callable[[Netns], None]
    cgroup: Callable[..., Path]

    def _wrap(self, ns: Netns, cmd: Sequence[str], cgroup: Path | None) -> tuple[list, Path]:
        self._own(ns)
        cg = cgroup if cgroup is not None else self.cgroup("default")
        if cg.resolve() != self.cgroup_root and self.cgroup_root not in cg.resolve().parents:
            raise NetLabError(f"cgroup {cg} is not inside {self.cgroup_root}")
        argv = [_which("sh"), "-c", _SPAWN_SH, "lbt-spawn", str(cg), ns.path, *map(str, cmd)]
        return argv, cg

    def spawn(
        self,
        ns: Netns,
        cmd: Sequence[str],
        *,
        cgroup: Path | None = None,
        name: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``cmd`` in ``ns`` and ``cgroup`` (default ``lbt-<id>/default``), tracked.

        stdout+stderr go to ``/run/lbt-<id>/logs/<name>.<n>.log`` (``Proc.output()``).
        """
        argv, cg = self._wrap(ns, cmd, cgroup)
        name = name or Path(str(cmd[0])).name
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        self._nlog += 1
        log = logs / f"{name}.{self._nlog}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**_env(), **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, ns, cg, log)
        self.procs.append(proc)
        return proc

    def run(
        self,
        ns: Netns,
        cmd: Sequence[str],
        *,
        cgroup: Path | None = None,
        timeout: float = 10,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in ``ns`` and ``cgroup`` to completion, capturing its output.

        On timeout the command is killed and ``subprocess.TimeoutExpired`` raised. The
        returned ``args`` is ``cmd`` (not the wrapper).
        """
        argv, _ = self._wrap(ns, cmd, cgroup)
        with subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        ) as popen:
            try:
                out, err = popen.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                out, err = popen.communicate()
                raise subprocess.TimeoutExpired(list(cmd), timeout, out, err) from None
        res = subprocess.CompletedProcess(list(cmd), popen.returncode, out, err)
        if check and res.returncode != 0:
            raise NetLabError(
                f"in {ns.short}: {' '.join(map(str, cmd))} exited {res.returncode}\n{out}{err}"
            )
        return res

    def wait_listening(self, proc: Proc, port: int, proto: str = "tcp",
                       timeout: float = 30) -> None:
        """Wait until ``proc`` has a ``proto`` socket bound to ``port`` in its namespace.

        Reads ``/proc/<pid>/net/{tcp,udp}{,6}``, which shows the namespace of ``pid``.
        Returns as soon as it is; the 30 s are for a machine loaded by other work (at a
        load average of 16-29 on 2 cores, servers took more than 5 s to bind).
        """
        want_ns = f"net:[{proc.ns.inode}]"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise NetLabError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}")
            try:
                in_ns = os.readlink(f"/proc/{proc.pid}/ns/net") == want_ns
            except OSError:
                in_ns = False
            if in_ns and _bound(proc.pid, port, proto):
                return
            time.sleep(0.01)
        raise NetLabError(
            f"{proc.name} not listening on {proto}/{port} after {timeout}s:\n{proc.output()}"
        )
