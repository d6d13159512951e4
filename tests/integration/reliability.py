"""What the reliability tests share: load that runs *through* an event, a kept-alive
connection that must keep its backend, samplers of what is attached, and agents that
are killed with SIGKILL and started again.

The cluster is the benchmark's (``lbcore.bench.env.BenchCluster``): control-plane and
worker nodes, nginx backends ``web-0``/``web-1`` on worker, a ``client`` pod on
control-plane (east-west: its connect() to a ClusterIP) and an ``outside`` namespace
on the node network (north-south: to control-plane's NodePort).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lbcore.bench import tools
from lbcore.bench.env import AGENT_OPTIONS, WEB_NODE_PORT, BenchCluster
from lbcore.lab import NetLab
from lbcore.lab.agents import Agent, lbcore_argv, wait_healthy
from lbcore.lab.procs import Proc

# One kept-alive HTTP/1.1 connection: GET / every ``gap`` seconds on the same socket,
# never reconnecting (a reconnect would hide a broken flow). SIGTERM ends it; prints
# {"requests", "backends": {name: count}, "errors": [...], "local": "ip:port"}.
REQUEST_TIMEOUT = 10  # seconds after which a request counts as failed
HELD_CONNECTION = textwrap.dedent("""\
    import json, signal, socket, sys, time
    host, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    s = socket.create_connection((host, port), timeout=10)
    local = "%s:%d" % s.getsockname()[:2]
    req = ("GET / HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % host).encode()
    backends, errors, n = {}, [], 0
    buf = b""
    print(json.dumps({"connected": local}), flush=True)
    while not stop and not errors:
        try:
            s.sendall(req)
            while b"\\r\\n\\r\\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed by peer")
                buf += chunk
            head, buf = buf.split(b"\\r\\n\\r\\n", 1)
            length = int([h.split(b":")[1] for h in head.split(b"\\r\\n")
                          if h.lower().startswith(b"content-length")][0])
            while len(buf) < length:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed by peer")
                buf += chunk
            body, buf = buf[:length], buf[length:]
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError("status " + head.split(b"\\r\\n")[0].decode())
            name = body.decode().strip().split("=", 1)[1]
            backends[name] = backends.get(name, 0) + 1
            n += 1
        except (OSError, ValueError, IndexError) as e:
            errors.append("%.3f %s" % (time.time(), e))
        time.sleep(gap)
    print(json.dumps({"requests": n, "backends": backends, "errors": errors,
                      "local": local}), flush=True)
    """)


def bench_cluster() -> Iterator[BenchCluster]:
    """The body of each test module's ``bench`` fixture: a BenchCluster on a fresh
    lab, closed afterwards (skips without root)."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces, cgroups, eBPF)")
    lab = NetLab()
    try:
        yield BenchCluster.build(lab)
    finally:
        lab.close()


# New connections in a row (connect, GET /, read to the end, close) until SIGTERM; the
# timeout is 10 s (a SYN retransmitted three times still counts as answered). Prints
# {"requests", "errors": [...], "max_seconds", "slow": requests that took > 0.5 s}.
CONNECTOR = textwrap.dedent("""\
    import json, signal, socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    n, errors, worst, slow = 0, [], 0.0, 0
    while not stop:
        t0 = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            s.close()
            if not data.startswith(b"HTTP/1.1 200"):
                errors.append("%.3f %r" % (time.time(), data[:40]))
            n += 1
        except OSError as e:
            errors.append("%.3f %s" % (time.time(), e))
        took = time.monotonic() - t0
        worst, slow = max(worst, took), slow + (took > 0.5)
        time.sleep(0.005)
    print(json.dumps({"requests": n, "errors": errors, "max_seconds": round(worst, 3),
                      "slow": slow}), flush=True)
    """)


@dataclass
class Load:
    """wrk and held connections running in the background; ``finish`` stops them and
    returns what they saw."""

    wrk: list[tuple[str, Proc]] = field(default_factory=list)
    held: list[tuple[str, Proc]] = field(default_factory=list)
    connectors: list[tuple[str, Proc]] = field(default_factory=list)

    def finish(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for label, proc in self.wrk:
            if proc.alive():
                proc.popen.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                proc.stop()
            out[label] = tools.parse_wrk(proc.output())
        for label, proc in self.held + self.connectors:
            proc.stop(timeout=10)
            lines = [ln for ln in proc.output().splitlines() if ln.startswith("{")]
            out[label] = json.loads(lines[-1]) if lines else {"errors": [proc.output()]}
        return out


def start_load(bench: BenchCluster, *, ew: bool, ns: bool, close: bool = False,
               connections: int = 4, gap: float = 0.02, connector: bool = False) -> Load:
    """wrk (kept-alive, or a new connection per request with ``close``) and one held
    connection, east-west to the web ClusterIP and/or north-south to the NodePort;
    with ``connector`` also a client that times every new connection (wrk does not
    count a connect that hangs as an error)."""
    load = Load()
    script = tools.wrk_script(bench.lab.run_dir)
    targets = []
    if ew:
        targets.append(("ew", bench.services["web"].cluster_ip, 80,
                        lambda argv, name: bench.cluster.spawn(bench.client, argv, name=name)))
    if ns:
        targets.append(("ns", bench.entry_ip, WEB_NODE_PORT,
                        lambda argv, name: bench.lab.spawn(bench.outside, argv, name=name)))
    for label, host, port, spawn in targets:
        argv = tools.wrk_argv(f"http://{host}:{port}/", script, seconds=600,
                              connections=connections, threads=1, close=close)
        # A request counts as failed after 10 s, not wrk's 2 s: these tests look for
        # datapath failures (refused, reset, lost), not for latency on a loaded host.
        argv[argv.index("--timeout") + 1] = f"{REQUEST_TIMEOUT}s"
        load.wrk.append((f"wrk-{label}", spawn(argv, f"wrk-{label}")))
        held = [sys.executable, "-I", "-S", "-c", HELD_CONNECTION, host, str(port), str(gap)]
        load.held.append((f"held-{label}", spawn(held, f"held-{label}")))
        if connector:
            argv = [sys.executable, "-I", "-S", "-c", CONNECTOR, host, str(port)]
            load.connectors.append((f"connector-{label}", spawn(argv, f"connector-{label}")))
    deadline = time.monotonic() + 10
    for label, proc in load.held:
        while '"connected"' not in proc.output():
            if not proc.alive() or time.monotonic() > deadline:
                load.finish()
                raise AssertionError(f"{label} could not connect: {proc.output()}")
            time.sleep(0.02)
    time.sleep(0.5)  # wrk is connected and running
    return load


def assert_load_clean(results: dict[str, dict[str, Any]]) -> None:
    """Zero failed wrk requests, and every held connection answered by one backend."""
    for label, r in results.items():
        if label.startswith("wrk"):
            assert r["requests"] > 0, (label, r)
            assert r["errors"] == 0, (label, r)
        elif label.startswith("connector"):
            assert r["requests"] > 0 and r["errors"] == [], (label, r)
        else:
            assert r["errors"] == [], (label, r)
            assert r["requests"] > 10, (label, r)
            assert len(r["backends"]) == 1, (label, r)  # kept its backend throughout


class Sampler:
    """Calls ``probe()`` in a thread until stopped; keeps every distinct answer with a
    count. ``probe`` reads the kernel (what is attached now)."""

    def __init__(self, probe: Callable[[], Any]) -> None:
        self.probe = probe
        self.seen: dict[str, int] = {}
        self.samples = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                key = json.dumps(self.probe(), sort_keys=True)
            except Exception as exc:  # recorded: a probe that fails is a finding too
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
                continue
            self.seen[key] = self.seen.get(key, 0) + 1
            self.samples += 1


def kill_and_restart(bench: BenchCluster, agents: Sequence[Agent], *,
                     between: Callable[[], None] = lambda: None,
                     timeout: float = 60) -> None:
    """SIGKILL every agent (no cleanup of any kind runs), ``between()``, then start
    each again on its own config and wait until it holds its plan (read back)."""
    for agent in agents:
        assert agent.proc is not None and agent.proc.alive(), agent.proc.output()
        agent.proc.popen.send_signal(signal.SIGKILL)
    for agent in agents:
        agent.proc.popen.wait(10)
        assert agent.proc.popen.returncode == -signal.SIGKILL
    between()
    for agent in agents:
        agent.proc = bench.lab.spawn(
            agent.node.ns, [*lbcore_argv(), "-v", "run", "-c", str(agent.config)],
            cgroup=agent.node.agent_cgroup, name=f"{agent.name}-restarted")
    wait_healthy(bench.cluster, agents, timeout)


HEALTHZ_PORT = 10256


def start_agent(bench: BenchCluster, node: Any, driver: str, *, name: str | None = None,
                options: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                runner: dict[str, float] | None = None) -> Agent:
    """One ``lbcore -v run --healthz-bind-address 127.0.0.1:10256`` on ``node`` (in its
    namespace: every node has its own 127.0.0.1), config ``<node>.<name>.yaml``;
    ``runner`` overrides keys of the config's ``runner:``."""
    import yaml

    from lbcore.lab.agents import DRIVER_OPTIONS, netns_local_options, write_config

    if options is None:
        fn = AGENT_OPTIONS.get(driver) or DRIVER_OPTIONS.get(driver, netns_local_options)
        options = fn(bench.cluster, node)
    bench.cluster.controller.write()
    config = write_config(bench.cluster, node, driver, options)
    if name is not None:
        config = config.rename(config.with_name(f"{node.name}.{name}.yaml"))
    if runner:
        raw = yaml.safe_load(config.read_text())
        raw["runner"].update(runner)
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
    agent = Agent(node, driver, config)
    respawn(bench, agent, env)
    bench.cluster.agents.append(agent)
    return agent


def respawn(bench: BenchCluster, agent: Agent, env: dict[str, str] | None = None) -> Proc:
    """(Re)start ``agent``'s process on its config."""
    agent.proc = bench.lab.spawn(
        agent.node.ns, [*lbcore_argv(), "-v", "run", "-c", str(agent.config),
                        "--healthz-bind-address", f"127.0.0.1:{HEALTHZ_PORT}"],
        cgroup=agent.node.agent_cgroup, name=f"lbcore-{agent.config.stem}", env=env)
    return agent.proc


def config_for(bench: BenchCluster, node: Any, driver: str) -> str:
    """The text of an agent config for ``driver`` on ``node`` (lab options)."""
    from lbcore.lab.agents import DRIVER_OPTIONS, netns_local_options, write_config

    fn = AGENT_OPTIONS.get(driver) or DRIVER_OPTIONS.get(driver, netns_local_options)
    path = write_config(bench.cluster, node, driver, fn(bench.cluster, node))
    text = path.read_text()
    path.unlink()
    return text


def rewrite(path: Path, text: str) -> None:
    """Replace a file atomically (as an editor or a ConfigMap update does)."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    os.replace(tmp, path)


def scrape(bench: BenchCluster, agent: Agent, path: str = "/metrics") -> tuple[int, str]:
    """HTTP GET of the agent's health port, from inside its node's namespace."""
    r = bench.lab.run(agent.node.ns, ["curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                                      f"http://127.0.0.1:{HEALTHZ_PORT}{path}"], timeout=10)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text (``labels`` as printed, e.g.
    ``map_name="lbc_svc"``), or None."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30,
             proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: {proc.name} exited:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            tail = proc.output()[-3000:] if proc is not None else ""
            raise AssertionError(f"{what}: not within {timeout}s\n{tail}")
        time.sleep(0.1)


def stop_and_clean(bench: BenchCluster, agents: Sequence[Agent], tries: int = 4) -> list[str]:
    """SIGTERM the agents, then ``lbcore cleanup`` each; a cleanup that found the
    machine-wide xtables lock taken (other users of this shared machine) is retried.
    Returns the problems left."""
    from lbcore.lab.agents import lbcore_in_node

    agents = list(dict.fromkeys(agents))
    for agent in agents:
        if agent.proc is not None:
            agent.proc.stop(timeout=10)
    problems = []
    for agent in agents:
        for attempt in range(tries):
            r = lbcore_in_node(bench.cluster, agent.node, "cleanup", "-c", str(agent.config))
            if r.returncode == 0:
                break
            if "xtables lock" not in r.stderr or attempt == tries - 1:
                problems.append(f"cleanup {agent.name}: {r.stderr.strip()}")
                break
            time.sleep(1)
    bench.cluster.agents = [a for a in bench.cluster.agents if a not in agents]
    return problems
