"""A lab's resources: network namespaces, veth pairs, bridges, cgroups, private bpffs.

A :class:`NetLab` owns everything it creates and removes all of it in :meth:`NetLab.close`
(also on failure; fixtures call it, and an ``atexit`` hook is the last resort):

- network namespaces ``lbt-<id>-<short>`` (``/run/netns/...``), with veth pairs between
  them and bridges inside a dedicated "switch" namespace,
- cgroup v2 directories under ``/sys/fs/cgroup/unified/lbt-<id>/``,
- private bpffs mounts and scratch files under ``/run/lbt-<id>/``,
- processes started inside a namespace *and* a cgroup, tracked by pid (:mod:`.procs`),
  clients (:mod:`.clients`) and servers (:mod:`.servers`) among them.

Safety: nothing is ever created in the root network namespace (veth pairs are created
directly inside test namespaces with ``ip -n``), no lab namespace is connected to the
root namespace, and no cgroup outside ``lbt-<id>/`` is written to. Processes are ended
by pid only.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .clients import ClientsMixin
from .paths import CGROUP2_ROOT, NETNS_DIR, PREFIX, RUN_ROOT, SHORT_RE
from .procs import NetLabError, Proc, ProcessesMixin, _proc_starttime, _which, sh
from .servers import ServersMixin
from .sweep import destroy_lab


@dataclass(eq=False)
class Netns:
    """A lab network namespace. ``name`` is the full ``lbt-<id>-<short>`` name."""

    lab: NetLab
    short: str
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def ip(self, *args: str, check: bool = True) -> str:
        """``ip -n <this namespace> args...``"""
        return sh([_which("ip"), "-n", self.name, *args], check=check)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", "dev", ifname, "up")

    def add_addr(self, ifname: str, cidr: str) -> None:
        """Add an IPv4 or IPv6 address (IPv6 with ``nodad``: usable at once)."""
        extra = ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
        self.ip("addr", "add", cidr, "dev", ifname, *extra)

    def add_route(self, dst: str, via: str | None = None, dev: str | None = None) -> None:
        """Route inside this namespace (``dst`` may be ``default``; ``-6`` if IPv6)."""
        fam = "-6" if ":" in (via or "") or ":" in dst else "-4"
        args = [fam, "route", "add", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    def sysctl(self, **settings: str | int) -> None:
        """``ns.sysctl(**{"net.ipv4.ip_forward": 1})`` inside this namespace."""
        args = [f"{k}={v}" for k, v in settings.items()]
        sh([_which("nsenter"), f"--net={self.path}", "--", _which("sysctl"), "-q", "-w", *args])

    def run(self, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self, cmd, **kw)

    def spawn(self, cmd: Sequence[str], **kw) -> Proc:
        return self.lab.spawn(self, cmd, **kw)

    def __str__(self) -> str:
        return self.name


class NetLab(ProcessesMixin, ClientsMixin, ServersMixin):
    """Creates namespaces, links, cgroups, bpffs mounts and processes; removes them all."""

    def __init__(self, cgroup2_root: Path = CGROUP2_ROOT) -> None:
        if os.geteuid() != 0:
            raise NetLabError("NetLab needs root")
        for _ in range(10):
            self.id = secrets.token_hex(4)
            self.run_dir = RUN_ROOT / f"{PREFIX}{self.id}"
            try:
                self.run_dir.mkdir(mode=0o755)
                break
            except FileExistsError:
                continue
        else:
            raise NetLabError("could not allocate a lab id")
        (self.run_dir / "owner").write_text(f"{os.getpid()} {_proc_starttime(os.getpid())}\n")
        self.prefix = f"{PREFIX}{self.id}-"
        self.cgroup_root = cgroup2_root / f"{PREFIX}{self.id}"
        self.netns_list: dict[str, Netns] = {}
        self.procs: list[Proc] = []
        self._bridge_ports: dict[str, int] = {}
        self._nlog = 0
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- namespaces and links --------------------------------------------------------

    def netns(self, short: str) -> Netns:
        """Create namespace ``lbt-<id>-<short>`` with ``lo`` up and IPv6 DAD off."""
        if not SHORT_RE.match(short):
            raise ValueError(f"bad namespace name {short!r}: use [a-z0-9-], max 31 chars")
        if short in self.netns_list:
            raise ValueError(f"namespace {short!r} exists in this lab")
        ns = Netns(self, short, self.prefix + short)
        sh([_which("ip"), "netns", "add", ns.name])
        self.netns_list[short] = ns
        ns.link_up("lo")
        ns.sysctl(**{"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair ``a:a_if <-> b:b_if``, created inside ``a`` (never in the root ns)."""
        self._own(a)
        self._own(b)
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.link_up(a_if)
        b.link_up(b_if)

    def bridge(self, switch: Netns, name: str = "br0") -> str:
        """A bridge inside ``switch`` (multicast snooping off so IPv6 ND always floods)."""
        self._own(switch)
        switch.ip("link", "add", name, "type", "bridge", "mcast_snooping", "0")
        switch.ip("link", "set", "dev", name, "addrgenmode", "none")
        switch.link_up(name)
        return name

    def plug(self, ns: Netns, ifname: str, switch: Netns, bridge: str = "br0") -> str:
        """Connect ``ns`` to ``bridge`` in ``switch`` with a veth; returns the port name."""
        n = self._bridge_ports.get(switch.name, 0)
        self._bridge_ports[switch.name] = n + 1
        port = f"p{n}-{ns.short}"[:15]
        self.veth(ns, ifname, switch, port)
        switch.ip("link", "set", "dev", port, "master", bridge)
        return port

    def _own(self, ns: Netns) -> None:
        if ns.lab is not self or not ns.name.startswith(self.prefix):
            raise NetLabError(f"{ns} is not a namespace of this lab")

    # -- cgroups and bpffs -------------------------------------------------------------

    def cgroup(self, rel: str = "default") -> Path:
        """``/sys/fs/cgroup/unified/lbt-<id>/<rel>`` (created with parents)."""
        path = (self.cgroup_root / rel).resolve()
        if path != self.cgroup_root and self.cgroup_root not in path.parents:
            raise ValueError(f"cgroup {rel!r} is outside the lab's cgroup")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bpffs(self, name: str = "bpffs") -> Path:
        """A private bpffs instance mounted at ``/run/lbt-<id>/<name>``."""
        path = self.run_dir / name
        path.mkdir()
        sh([_which("mount"), "-t", "bpf", "bpf", str(path)])
        return path

    # -- teardown ----------------------------------------------------------------------

    def detach(self) -> None:
        """Let the lab outlive this process (``lbcore lab up``): no ``atexit`` teardown,
        and :meth:`close` does nothing. The caller marks the lab kept (:mod:`.state`)."""
        self._closed = True
        atexit.unregister(self.close)

    def close(self) -> None:
        """Remove everything (idempotent): processes, cgroups, mounts, namespaces, files."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        # Our own children first (SIGTERM all, then wait, then SIGKILL), and reap them.
        live = [p for p in self.procs if p.alive()]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        for p in live:
            try:
                p.stop(timeout=3)
            except Exception as e:  # keep tearing down
                errors.append(f"stop {p}: {e}")
        errors += destroy_lab(self.id)
        if errors:
            raise NetLabError("teardown incomplete:\n" + "\n".join(errors))
