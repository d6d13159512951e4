"""A real ``tcpdump`` on an interface of a lab namespace, and what it saw, parsed.

::

    with Capture(lab, ns, "eth0") as cap:   # returns once tcpdump is listening
        lab.curl(ns, "http://10.96.0.10/")
    syns = [p for p in cap.packets if p.syn]

tcpdump runs with ``-n -l`` (numeric, one flushed line per packet), in the namespace and
in the lab's default cgroup, tracked like every lab process and ended by pid.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .procs import NetLabError, Proc, _which

if TYPE_CHECKING:
    from .netns import NetLab, Netns

# "12:00:00.123456 IP 10.0.0.1.41234 > 10.0.0.2.80: Flags [S], seq 1, ..."
_IP_LINE = re.compile(r"^\S+ (IP6?) (\S+) > (\S+): (.*)$")
_TCP_FLAGS = re.compile(r"^Flags \[([^\]]*)\]")


@dataclass(frozen=True)
class Packet:
    """One IP packet as tcpdump printed it. Ports are None where there are none."""

    family: int
    src: str
    sport: int | None
    dst: str
    dport: int | None
    proto: str  # "tcp" or "other"
    flags: str  # tcpdump's TCP flags, e.g. "S", "S.", "P.", "F."; "" for non-TCP
    line: str

    @property
    def syn(self) -> bool:
        """The first packet of a TCP connection (SYN without ACK)."""
        return self.proto == "tcp" and self.flags == "S"

    def endpoints(self) -> tuple[str, str]:
        return (self.src, self.dst)


def _split_port(token: str, family: int, has_ports: bool) -> tuple[str, int | None]:
    """``10.0.0.1.80`` -> (``10.0.0.1``, 80); ``fd00::1.80`` -> (``fd00::1``, 80)."""
    if has_ports or (family == 4 and token.count(".") == 4) or (family == 6 and "." in token):
        addr, _, port = token.rpartition(".")
        if port.isdigit():
            return addr, int(port)
    return token, None


def parse_line(line: str) -> Packet | None:
    """A ``tcpdump -n`` line -> :class:`Packet`; None for ARP, banners and statistics."""
    m = _IP_LINE.match(line.strip())
    if not m:
        return None
    family = 6 if m.group(1) == "IP6" else 4
    rest = m.group(4)
    flags = _TCP_FLAGS.match(rest)
    src, sport = _split_port(m.group(2), family, flags is not None)
    dst, dport = _split_port(m.group(3).rstrip(":"), family, flags is not None)
    return Packet(
        family,
        src,
        sport,
        dst,
        dport,
        "tcp" if flags else "other",
        flags.group(1) if flags else "",
        line.strip(),
    )


class Capture:
    """``tcpdump -n -l -i IFNAME [FILTER...]`` in ``ns`` while the ``with`` block runs."""

    def __init__(
        self,
        lab: NetLab,
        ns: Netns,
        ifname: str = "eth0",
        filter: Sequence[str] = (),
        *,
        cgroup: Path | None = None,
    ) -> None:
        self.lab, self.ns, self.ifname = lab, ns, ifname
        self.filter, self.cgroup = list(filter), cgroup
        self.proc: Proc | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 5) -> None:
        cmd = [_which("tcpdump"), "-n", "-l", "-i", self.ifname, *self.filter]
        self.proc = self.lab.spawn(
            self.ns, cmd, cgroup=self.cgroup, name=f"tcpdump-{self.ns.short}"
        )
        deadline = time.monotonic() + timeout
        while "listening on" not in self.proc.output():
            if not self.proc.alive() or time.monotonic() > deadline:
                self.proc.stop()
                raise NetLabError(
                    f"tcpdump in {self.ns.short} did not start:\n{self.proc.output()}"
                )
            time.sleep(0.01)

    def stop(self, settle: float = 0.2) -> list[str]:
        """Let the last packets be printed, end tcpdump (by pid); returns its lines."""
        if self.proc is None:
            return self.lines
        time.sleep(settle)
        self.proc.stop()
        self.lines = [
            ln
            for ln in self.proc.output().splitlines()
            if ln
            and not ln.startswith(("tcpdump:", "listening on"))
            and "packets captured" not in ln
            and "packets received" not in ln
            and "packets dropped" not in ln
        ]
        return self.lines

    @property
    def packets(self) -> list[Packet]:
        return [p for p in map(parse_line, self.lines) if p is not None]

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
