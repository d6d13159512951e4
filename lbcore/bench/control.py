"""Control-plane measurements of ``lbcore bench``, observed from the kernel.

* :meth:`ControlProbe.first_sync` — the agents start on the objects file of N services
  with an empty datapath (a node joining, or an agent restarted after ``cleanup``). The
  clock runs until a client of the datapath has had a connection accepted by every one
  of ~18 sampled services (the probe, the first and the last idle service in file order
  and in name order, and evenly spaced ones between): a full sync of N services,
  observed by behaviour, process start, eBPF compile and the file source's first read
  included. Then every agent's datapath is **read back from the kernel** (``lbcore
  services -o json`` in the node's namespace) until it holds exactly its plan — every
  frontend with exactly its backends; the time that took and the read-back's own
  duration are recorded too (a read-back of 30,000 services takes minutes for some
  drivers, so it is the check, not the clock).
* :meth:`ControlProbe.endpoint_change` — ``probe`` flips to its other backend at N
  services; the clock stops when a client of that datapath, opening a fresh connection
  every ~2 ms, first gets an answer from the new backend (kernel behaviour, not a log).
* What the agents say about their own syncs (``full sync: ... (1.234 s)``) is kept as a
  breakdown only.

The plan (what each agent must hold) is computed here once per service count, driver
and node, with the agents' own expansion, from the objects the file is rendered from.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..lab.agents import Agent, lbcore_in_node
from ..lab.procs import NetLabError
from . import tools
from .env import PROBE_NODE_PORT, BenchCluster

Held = dict[tuple[str, int, str], frozenset[tuple[str, int]]]  # frontend -> backends

_SYNC_LINE = re.compile(r"(full|partial) sync: (\d+) frontend\(s\).*\(([\d.]+) s\)")


def plan_of(agent: Agent, objects: Any) -> Held:
    """What ``agent`` must hold for ``objects``: its driver's expansion for its node."""
    from ..config import load_config  # lazy: core imports stay out of the CLI's start
    from ..loop import expander_for
    from ..plugins import DRIVERS, PluginRegistry, load_driver_class

    config = load_config(agent.config)
    cls = load_driver_class(PluginRegistry(DRIVERS), config.driver)
    state = expander_for(config, cls.capabilities(), config.driver).expand(objects, None)
    return {(fe.ip, fe.port, fe.protocol): frozenset(
        (b.ip, b.port) for b in (*fe.backends, *fe.external_backends))
        for fe in state.frontends}


def sample(n: int, k: int = 16) -> list[int]:
    """Indices of ``k`` of ``n`` idle services, evenly spaced from the first to the last,
    and the last in name order (idle-9999 sorts after idle-10000)."""
    if n <= 0:
        return []
    picks = {round(i * (n - 1) / max(1, k - 1)) for i in range(k)}
    picks.add(max(range(n), key=str))
    return sorted(picks)


def read_back(bench: BenchCluster, agent: Agent, timeout: float) -> Held:
    """``lbcore services -o json`` in the agent's node: what its datapath holds."""
    r = lbcore_in_node(bench.cluster, agent.node, "services", "-c", str(agent.config), "-o",
                       "json", timeout=max(1.0, timeout))
    if r.returncode != 0:
        raise NetLabError(f"lbcore services on {agent.node.name} failed:\n{r.stderr}{r.stdout}")
    return held_by(json.loads(r.stdout))


def held_by(services: list[dict[str, Any]]) -> Held:
    return {(s["frontend"]["ip"], s["frontend"]["port"], s["frontend"]["protocol"]):
            frozenset((b["ip"], b["port"]) for b in s["backends"]) for s in services}


def differences(held: Held, want: Held, limit: int = 5) -> str:
    """A short account of how ``held`` differs from ``want``."""
    missing = sorted(want.keys() - held.keys())
    extra = sorted(held.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & held.keys() if want[k] != held[k])
    parts = [f"{len(x)} {what} (e.g. {x[:limit]})" for what, x in
             (("missing", missing), ("unexpected", extra), ("with other backends", wrong)) if x]
    return "; ".join(parts) or "none"


def agent_syncs(output: str) -> list[tuple[str, int, float]]:
    """``(full|partial, frontends, seconds)`` of every sync an agent logged."""
    return [(m.group(1), int(m.group(2)), float(m.group(3)))
            for m in _SYNC_LINE.finditer(output)]


@dataclass
class Readback:
    """One agent's wait until it holds its plan."""

    node: str
    programmed_s: float | None = None  # since t0, when a read-back first equalled the plan
    polls: list[tuple[float, float, int]] = field(default_factory=list)  # start, s, held

    @property
    def last_poll_s(self) -> float | None:
        """How long the read-back that succeeded took."""
        return self.polls[-1][1] if self.polls else None


class ControlProbe:
    """The control-plane figures of one driver at one service count."""

    def __init__(self, bench: BenchCluster, ew: bool) -> None:
        self.b = bench
        self.ew = ew  # True: observe by a client pod -> ClusterIP; else outside -> NodePort

    # ------------------------------------------------------------------ prober

    def _prober(self, want: str, timeout: float):
        if self.ew:
            host, port, where = self.b.services["probe"].cluster_ip, 80, self.b.client
        else:
            host, port, where = self.b.entry_ip, PROBE_NODE_PORT, None
        cmd = [sys.executable, "-I", "-S", "-c", tools.PROBER, host, str(port), want,
               str(timeout)]
        return (self.b.cluster.spawn(where, cmd, name="prober") if where is not None
                else self.b.lab.spawn(self.b.outside, cmd, name="prober"))

    def endpoint_change(self, count: int, variant: str, timeout: float) -> float:
        """Swap in ``(count, variant)``; seconds until the probe Service answers from
        ``variant``, seen by a client of this driver's traffic (kernel behaviour)."""
        proc = self._prober(variant, timeout)
        try:
            deadline = time.monotonic() + 10
            while "first" not in proc.output() and proc.alive():
                if time.monotonic() > deadline:
                    raise RuntimeError("prober got no answer from the probe service")
                time.sleep(0.01)
            t0 = self.b.install(count, variant)
            proc.popen.wait(timeout + 5)
            seen = tools.prober_seen(proc.output())
            if seen is None:
                raise RuntimeError(f"probe never answered from {variant} within {timeout}s: "
                                   f"{proc.output()[-500:]!r}")
            return seen - t0
        finally:
            proc.stop()

    # ------------------------------------------------------------- first sync

    def first_sync(self, agents: list[Agent], plans: dict[str, Held], count: int,
                   timeout: float) -> dict[str, Any]:
        """``agents`` (configured, not running) started on ``count`` services (probe ->
        web-0) with an empty datapath; until every sampled service answers (traffic),
        then until every agent holds its plan (read back)."""
        self.b.install(count, "web-0")
        targets = self.targets(count)
        cmd = [sys.executable, "-I", "-S", "-c", tools.SWEEPER, str(timeout), ",".join(targets)]
        sweeper = (self.b.cluster.spawn(self.b.client, cmd, name="sweeper") if self.ew
                   else self.b.lab.spawn(self.b.outside, cmd, name="sweeper"))
        try:
            t0 = time.monotonic()
            self.b.launch(agents)
            sweeper.popen.wait(timeout + 5)
            seen = tools.sweep_seen(sweeper.output()) or {}
        finally:
            sweeper.stop()
        silent = [t for t in targets if seen.get(t) is None]
        if silent:
            raise RuntimeError(f"{len(silent)} of {len(targets)} sampled services never "
                               f"answered within {timeout:.0f}s: {silent[:5]}")
        t_read = time.monotonic()
        with ThreadPoolExecutor(len(agents)) as pool:
            waits = list(pool.map(lambda a: self._until_held(
                a, plans[a.node.name], t0, time.monotonic() + timeout), agents))
        return {
            "first_sync_s": max(seen.values()) - t0,
            "probe_answers_s": seen[targets[0]] - t0,
            "sampled": len(targets),
            "held_s": max(w.programmed_s or 0.0 for w in waits),
            "readback_s": max(w.last_poll_s or 0.0 for w in waits),
            "readback_started_s": t_read - t0,
            "readbacks": {w.node: {"programmed_s": w.programmed_s, "polls": w.polls}
                          for w in waits},
        }

    def targets(self, count: int) -> list[str]:
        """``ip:port`` of the services the first sync is observed by (probe first)."""
        if not self.ew:  # outside -> NodePort: the only services such a driver holds
            return [f"{self.b.entry_ip}:{PROBE_NODE_PORT}"]
        probe = f"{self.b.services['probe'].cluster_ip}:80"
        idle = self.b.idle[count]
        return [probe, *(f"{idle[i]}:80" for i in sample(len(idle)))]

    def _until_held(self, agent: Agent, want: Held, t0: float, deadline: float) -> Readback:
        out = Readback(agent.node.name)
        held: Held = {}
        while time.monotonic() < deadline:
            if agent.proc is None or not agent.proc.alive():
                log = agent.proc.output() if agent.proc else ""
                raise NetLabError(f"agent {agent.name} exited:\n{log[-3000:]}")
            if "sync:" not in agent.proc.output():  # nothing programmed yet: don't poll
                time.sleep(0.05)
                continue
            start = time.monotonic()
            try:
                held = read_back(self.b, agent, deadline - start)
            except (NetLabError, ValueError, subprocess.TimeoutExpired):
                held = {}
            out.polls.append((start - t0, time.monotonic() - start, len(held)))
            if held == want:
                out.programmed_s = time.monotonic() - t0
                return out
            time.sleep(0.2)
        log = agent.proc.output() if agent.proc else ""
        raise NetLabError(f"agent {agent.name} does not hold its plan after "
                          f"{time.monotonic() - t0:.0f}s: "
                          f"{differences(held, want)}\n{log[-3000:]}")


def log_breakdown(agents: list[Agent]) -> dict[str, list[tuple[str, int, float]]]:
    """Each agent's own account of its syncs (a breakdown, not the measurement)."""
    return {a.node.name: agent_syncs(a.proc.output() if a.proc else "") for a in agents}


def scaled_timeout(count: int, base: float = 120.0, per_service: float = 0.03) -> float:
    """Seconds to allow a control-plane step at ``count`` services: the slowest
    datapaths need tens of milliseconds per service for a full sync on 2 busy cores."""
    return base + per_service * count

