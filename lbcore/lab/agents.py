"""One ``lbcore run`` agent per node (and per configured driver), started inside the
node's network namespace and its ``<node>/agent`` cgroup, health-checked and stopped.

Each agent gets its own ``lbcore.yaml``: the driver, options pointing at this node's
resources, the node's name and addresses, and ``source: file`` on the cluster's objects
file. Health: the agent is alive and ``lbcore services -o json`` (run in the node's
namespace, read back from the kernel) lists every frontend the agent should hold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .procs import NetLabError, Proc, _proc_starttime

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterNode

OptionsFn = Callable[["Cluster", "ClusterNode"], dict[str, Any]]


def lbcore_argv() -> list[str]:
    """The installed ``lbcore`` next to this Python, else the CLI through ``-c``."""
    script = Path(sys.executable).with_name("lbcore")
    if script.is_file():
        return [str(script)]
    found = shutil.which("lbcore")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from lbcore.cli import main; main(sys.argv[1:])"]


def socklb_options(cluster: Cluster, node: ClusterNode) -> dict[str, Any]:
    """Attach to the node's pods cgroup; pin maps in the lab's bpffs, one dir per node."""
    return {"cgroup_path": str(node.pods_cgroup), "bpffs_path": str(cluster.bpffs / node.name),
            "mount_bpffs": False}


def netns_local_options(cluster: Cluster, node: ClusterNode) -> dict[str, Any]:
    """Drivers that program the network namespace they run in (iptables, tc): the agent
    already runs inside the node's namespace, so they need nothing lab-specific."""
    return {}


DRIVER_OPTIONS: dict[str, OptionsFn] = {"socklb": socklb_options}


@dataclass(eq=False)
class Agent:
    node: ClusterNode
    driver: str
    config: Path
    proc: Proc | None = None

    @property
    def name(self) -> str:
        return f"lbcore-{self.driver}-{self.node.name}"

    def to_dict(self) -> dict[str, Any]:
        pid = self.proc.pid if self.proc and self.proc.alive() else None
        return {"node": self.node.name, "driver": self.driver, "config": str(self.config),
                "pid": pid, "starttime": _proc_starttime(pid) if pid else None,
                "log": str(self.proc.log) if self.proc else None}


def write_config(cluster: Cluster, node: ClusterNode, driver: str,
                 options: Mapping[str, Any] | None = None) -> Path:
    if options is None:
        options = DRIVER_OPTIONS.get(driver, netns_local_options)(cluster, node)
    config = {
        "driver": driver,
        "driver_options": dict(options),
        "node": {"name": node.name, "addresses": list(node.addresses)},
        "source": {"kind": "file", "path": cluster.controller.path.name},
        "runner": {"min_sync_period": 0, "sync_period": 30},
    }
    path = cluster.dir / f"{node.name}.{driver}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lbcore_in_node(cluster: Cluster, node: ClusterNode, *args: str,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``lbcore ARGS`` in the node's namespace (and its agent cgroup)."""
    return cluster.lab.run(node.ns, [*lbcore_argv(), *args], cgroup=node.agent_cgroup,
                           timeout=timeout)


def services_json(cluster: Cluster, agent: Agent) -> list[dict[str, Any]]:
    r = lbcore_in_node(cluster, agent.node, "services", "-c", str(agent.config), "-o", "json")
    if r.returncode != 0:
        raise NetLabError(f"lbcore services on {agent.node.name} failed:\n{r.stderr}{r.stdout}")
    return json.loads(r.stdout)


def services_table(cluster: Cluster, agent: Agent) -> str:
    r = lbcore_in_node(cluster, agent.node, "services", "-c", str(agent.config))
    return r.stdout if r.returncode == 0 else r.stderr


def expected_frontends(agent: Agent) -> set[tuple[str, int, str]]:
    """What the agent must end up holding: the core's plan for its node and driver."""
    from ..config import load_config  # lazy: core imports stay out of lbcore.lab
    from ..loop import expander_for
    from ..plugins import DRIVERS, PluginRegistry, create_source, load_driver_class

    config = load_config(agent.config)
    cls = load_driver_class(PluginRegistry(DRIVERS), config.driver)
    expander = expander_for(config, cls.capabilities(), config.driver)
    state = expander.expand(create_source(config).read(), None)
    return {(fe.ip, fe.port, fe.protocol) for fe in state.frontends}


def _held(services: Sequence[Mapping[str, Any]]) -> set[tuple[str, int, str]]:
    return {(s["frontend"]["ip"], s["frontend"]["port"], s["frontend"]["protocol"])
            for s in services}


def wait_healthy(cluster: Cluster, agents: Sequence[Agent], timeout: float = 30) -> None:
    """Until every agent is alive and holds what its plan says (raises NetLabError)."""

    def one(agent: Agent) -> None:
        want = expected_frontends(agent)
        deadline = time.monotonic() + timeout
        held: set[tuple[str, int, str]] = set()
        while time.monotonic() < deadline:
            if agent.proc is None or not agent.proc.alive():
                out = agent.proc.output() if agent.proc else ""
                raise NetLabError(f"agent {agent.name} exited:\n{out[-3000:]}")
            if "sync:" not in agent.proc.output():  # no sync logged yet: don't poll
                time.sleep(0.1)
                continue
            try:
                held = _held(services_json(cluster, agent))
            except (NetLabError, ValueError):
                held = set()
            if held == want:
                return
            time.sleep(0.2)
        out = agent.proc.output() if agent.proc else ""
        raise NetLabError(f"agent {agent.name} not healthy after {timeout}s: holds "
                          f"{sorted(held)}, wants {sorted(want)}\n{out[-3000:]}")

    with ThreadPoolExecutor(max(1, len(agents))) as pool:
        for future in [pool.submit(one, a) for a in agents]:
            future.result()


def start_agents(cluster: Cluster, drivers: Sequence[str] = ("socklb",), *,
                 options: Mapping[str, OptionsFn] | None = None,
                 nodes: Sequence[str] | None = None, wait: bool = True,
                 timeout: float = 30) -> list[Agent]:
    """``lbcore -v run -c <node>.<driver>.yaml`` on every node; health-checked."""
    cluster.controller.write()
    started = []
    for node in cluster.nodes.values():
        if nodes is not None and node.name not in nodes:
            continue
        for driver in drivers:
            fn = (options or {}).get(driver)
            config = write_config(cluster, node, driver, fn(cluster, node) if fn else None)
            agent = Agent(node, driver, config)
            agent.proc = cluster.lab.spawn(
                node.ns, [*lbcore_argv(), "-v", "run", "-c", str(config)],
                cgroup=node.agent_cgroup, name=agent.name)
            cluster.agents.append(agent)
            started.append(agent)
    if wait:
        wait_healthy(cluster, started, timeout)
    return started


def stop_agents(cluster: Cluster, agents: Sequence[Agent] | None = None, *,
                cleanup: bool = True) -> list[str]:
    """SIGTERM the agents (the datapath stays), then ``lbcore cleanup`` each unless
    ``cleanup=False``. Returns the problems met (empty if none)."""
    agents = list(cluster.agents if agents is None else agents)
    problems = []
    for agent in agents:
        if agent.proc is not None:
            agent.proc.stop(timeout=5)
    if cleanup:
        def one(agent: Agent) -> str | None:
            r = lbcore_in_node(cluster, agent.node, "cleanup", "-c", str(agent.config))
            return None if r.returncode == 0 else f"cleanup {agent.name}: {r.stderr.strip()}"

        with ThreadPoolExecutor(max(1, len(agents))) as pool:
            problems = [p for p in pool.map(one, agents) if p]
    for agent in agents:
        if agent in cluster.agents:
            cluster.agents.remove(agent)
    return problems
