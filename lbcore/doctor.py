"""``lbcore doctor``: preflight checks, each with a fix.

Generic checks look at the host; the configured driver adds its own through
``Driver.check()``. Only missing privileges are fatal among the generic checks —
cgroup v2, bpffs, kernel headers and bcc matter to the eBPF drivers only, and those
drivers report them as fatal themselves; here they are warnings.

The host is read through ``HostProbe`` so tests can describe any host.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .driver import Problem

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


@dataclass(frozen=True)
class CheckResult:
    check: str
    ok: bool
    message: str
    fix: str = ""
    fatal: bool = True

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "FAIL" if self.fatal else "warn"

    @classmethod
    def from_problem(cls, driver: str, problem: Problem) -> CheckResult:
        return cls(f"{driver}: {problem.check}", False, problem.message, problem.fix,
                   problem.fatal)


@dataclass
class HostProbe:
    """Where the checks look. Defaults read this host."""

    proc: Path = Path("/proc")
    modules: Path = Path("/lib/modules")
    euid: Callable[[], int] = os.geteuid
    kernel_release: Callable[[], str] = field(default=lambda: os.uname().release)
    has_module: Callable[[str], bool] = field(
        default=lambda name: importlib.util.find_spec(name) is not None
    )

    def mounts(self) -> list[tuple[str, str]]:
        """(mount point, fstype) from mountinfo."""
        try:
            text = (self.proc / "self" / "mountinfo").read_text()
        except OSError:
            return []
        mounts = []
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            fields = left.split()
            if sep and len(fields) >= 5 and right.split():
                mounts.append((fields[4].replace("\\040", " "), right.split()[0]))
        return mounts

    def effective_caps(self) -> int:
        try:
            for line in (self.proc / "self" / "status").read_text().splitlines():
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
        except (OSError, ValueError, IndexError):
            pass
        return 0


def check_privileges(host: HostProbe) -> CheckResult:
    if host.euid() == 0:
        return CheckResult("privileges", True, "running as root")
    caps = host.effective_caps()
    has = {bit: bool(caps >> bit & 1) for bit in (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)}
    if has[CAP_NET_ADMIN] and (has[CAP_BPF] or has[CAP_SYS_ADMIN]):
        return CheckResult("privileges", True, "CAP_NET_ADMIN and CAP_BPF/CAP_SYS_ADMIN held")
    return CheckResult(
        "privileges", False,
        "not root and lacking CAP_NET_ADMIN + CAP_BPF (or CAP_SYS_ADMIN): "
        "no datapath can be programmed",
        "run as root (sudo lbcore ...) or grant the capabilities to the container",
    )


def _mount_check(host: HostProbe, fstype: str, name: str, fix: str) -> CheckResult:
    points = [point for point, kind in host.mounts() if kind == fstype]
    if points:
        return CheckResult(name, True, f"{fstype} mounted at {', '.join(points)}")
    return CheckResult(name, False, f"no {fstype} filesystem is mounted", fix, fatal=False)


def check_cgroup2(host: HostProbe) -> CheckResult:
    return _mount_check(
        host, "cgroup2", "cgroup2",
        "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified",
    )


def check_bpffs(host: HostProbe) -> CheckResult:
    return _mount_check(host, "bpf", "bpffs", "mount -t bpf bpf /sys/fs/bpf")


def check_kernel_headers(host: HostProbe) -> CheckResult:
    release = host.kernel_release()
    build = host.modules / release / "build"
    if build.exists():
        return CheckResult("kernel headers", True, f"{build} -> {build.resolve()}")
    return CheckResult(
        "kernel headers", False,
        f"{build} is missing (bcc compiles eBPF against the running kernel's headers)",
        f"apt-get install linux-headers-{release}  (or: dnf install kernel-devel-{release})",
        fatal=False,
    )


def check_bcc(host: HostProbe) -> CheckResult:
    if host.has_module("bcc"):
        return CheckResult("bcc", True, "python module bcc importable")
    return CheckResult(
        "bcc", False, "python module bcc is not importable",
        "apt-get install python3-bpfcc, and create the venv with --system-site-packages",
        fatal=False,
    )


GENERIC_CHECKS = (check_privileges, check_cgroup2, check_bpffs, check_kernel_headers, check_bcc)


def generic_checks(host: HostProbe | None = None) -> list[CheckResult]:
    host = host or HostProbe()
    return [check(host) for check in GENERIC_CHECKS]


def any_fatal(results: Sequence[CheckResult]) -> bool:
    return any(not r.ok and r.fatal for r in results)
