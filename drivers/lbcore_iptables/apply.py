"""Apply: ``iptables-restore --noflush`` in the driver's network namespace.

Everything here touches the kernel, through the iptables tools of one flavour
(``legacy``, the default, or ``nft``) and one IP family (``iptables-*`` for IPv4,
``ip6tables-*`` for IPv6), run in the configured namespace with
``nsenter --net=…`` (no namespace: the current one, as a DaemonSet runs). One sync is
one restore: the kernel replaces each table atomically at its ``COMMIT``, so a failed
restore leaves the rules of the previous sync in place.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from lbcore.errors import DriverError

from .naming import is_owned
from .render import HOOKS, TOP_FILTER, TOP_NAT

log = logging.getLogger(__name__)
NAME = "iptables"
FAILED_LINE = re.compile(r"line:?\s*(\d+)", re.IGNORECASE)
QUOTED = re.compile(r"[`']([A-Za-z0-9_-]+)'")  # Couldn't load target `X' / Chain 'X' ...
BACKENDS = ("legacy", "nft")
# Seconds iptables-legacy-restore waits for /run/xtables.lock. The lock is one file for
# the whole machine (every network namespace), and a restore at 10,000 services holds it
# for 10-20 s here; kube-proxy waits 5 s, which made our restores fail while another
# namespace's large restore ran. (The nft flavour takes no lock.) The `lock_wait` option.
LOCK_WAIT = 60


def offending_lines(text: str, stderr: str, most: int = 3) -> list[str]:
    """The input lines an iptables-restore error points at: the line it names and, when
    that is only the ``COMMIT`` (nft checks jumps when it commits), the lines using the
    chain or target the message names (``Chain 'X' does not exist``)."""
    lines = text.splitlines()
    out = []
    for m in FAILED_LINE.finditer(stderr):
        n = int(m.group(1))
        if 1 <= n <= len(lines):
            out.append(f"line {n}: {lines[n - 1]}")
    for name in dict.fromkeys(QUOTED.findall(stderr)):
        users = [f"line {i}: {ln}" for i, ln in enumerate(lines, 1)
                 if name in ln.split() and f"line {i}: {ln}" not in out]
        out += users[:most]
    return out


class Iptables:
    """The iptables tools of one flavour and IP ``family`` (4 or 6), in one network
    namespace (``netns_path``)."""

    def __init__(self, netns_path: str | None, backend: str = "legacy", family: int = 4,
                 lock_wait: int = LOCK_WAIT) -> None:
        self.netns_path = netns_path
        self.backend = backend
        self.family = family
        self.lock_wait = lock_wait

    def tool(self, name: str) -> str:
        base = "ip6tables" if self.family == 6 else "iptables"
        return f"{base}-{self.backend}{'-' + name if name else ''}"

    def command(self, name: str, *args: str) -> list[str]:
        prefix = ["nsenter", f"--net={self.netns_path}", "--"] if self.netns_path else []
        return [*prefix, self.tool(name), *args]

    def missing_tools(self) -> list[str]:
        tools = [self.tool("restore"), self.tool("save"), self.tool("")]
        if self.netns_path:
            tools.append("nsenter")
        return [t for t in tools if shutil.which(t) is None]

    def _run(self, cmd: Sequence[str], stdin: str | None = None, timeout: float = 300
             ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(NAME, f"{shlex.join(cmd)}: {exc}") from None

    # -- writing ------------------------------------------------------------------

    def restore(self, text: str) -> None:
        """One ``iptables-restore --noflush``; on failure log the tool's error and the
        offending input lines, and raise ``DriverError`` (the kernel keeps the previous
        rules: each table is committed as a unit)."""
        if not text:
            return
        r = self._run(self.command("restore", "--noflush", "-w", str(self.lock_wait)), stdin=text)
        if r.returncode == 0:
            return
        errors = [ln for ln in r.stderr.strip().splitlines() if ln and not ln.startswith("Try")]
        log.error("iptables: %s failed: %s", self.tool("restore"), " / ".join(errors))
        offending = offending_lines(text, r.stderr)
        for line in offending:
            log.error("iptables: restore rejected %s", line)
        raise DriverError(NAME, f"{self.tool('restore')} failed (exit {r.returncode}): "
                          + " / ".join(errors[-2:])
                          + (f"; offending input: {'; '.join(offending)}" if offending else "")
                          + "; the previous rules are still in place, the next sync is full")

    # -- reading ------------------------------------------------------------------

    def save(self, table: str) -> str:
        r = self._run(self.command("save", "-t", table))
        if r.returncode != 0:
            raise DriverError(NAME, f"{self.tool('save')} -t {table}: {r.stderr.strip()}")
        return r.stdout

    def chains(self, table: str) -> set[str]:
        return {line[1:].split()[0] for line in self.save(table).splitlines()
                if line.startswith(":")}

    # -- hooks and cleanup ------------------------------------------------------------

    def ensure_hooks(self) -> int:
        """Jump from the built-in chains into ours, once each; returns how many were
        added. Our top-level chains must exist (a sync has declared them)."""
        present = {table: self.save(table).splitlines() for table in ("nat", "filter")}
        missing = [(t, c, spec) for t, c, spec in HOOKS if f"-A {c} {spec}" not in present[t]]
        if not missing:
            return 0
        text = []
        for table in ("filter", "nat"):
            rules = [(c, spec) for t, c, spec in missing if t == table]
            if rules:
                # -I 1 in reverse keeps HOOKS' order at the head of each built-in chain
                text += [f"*{table}", *(f"-I {c} 1 {spec}" for c, spec in reversed(rules)),
                         "COMMIT"]
        self.restore("\n".join(text) + "\n")
        return len(missing)

    def cleanup(self, batch: int = 3000) -> int:
        """Remove the jumps and every chain this driver owns; returns chains removed.
        The nft flavour flushes, then deletes, ``batch`` chains per input (one input of
        110,000 chains takes iptables-nft-restore minutes, see tables.NFT_BATCH_CHAINS);
        the jumps go first, so what is left meanwhile is unreachable."""
        inputs, removed = [], 0
        for table, top in (("filter", TOP_FILTER), ("nat", TOP_NAT)):
            saved = self.save(table).splitlines()
            ours = sorted(c for c in {ln[1:].split()[0] for ln in saved if ln.startswith(":")}
                          if c in top or is_owned(c))
            hooks = [f"-D {c} {spec}" for t, c, spec in HOOKS
                     if t == table and f"-A {c} {spec}" in saved]
            if not ours and not hooks:
                continue
            removed += len(ours)
            step = batch if self.backend == "nft" else max(len(ours), 1)
            parts = [ours[i:i + step] for i in range(0, len(ours), step)]
            if self.backend != "nft":
                inputs.append([f"*{table}", *hooks, *(f":{c} - [0:0]" for c in ours),
                               *(f"-X {c}" for c in ours), "COMMIT"])
                continue
            inputs.append([f"*{table}", *hooks, "COMMIT"])
            inputs += [[f"*{table}", *(f":{c} - [0:0]" for c in part), "COMMIT"]
                       for part in parts]
            inputs += [[f"*{table}", *(f"-X {c}" for c in part), "COMMIT"] for part in parts]
        for lines in inputs:
            if len(lines) > 2:
                self.restore("\n".join(lines) + "\n")
        return removed
