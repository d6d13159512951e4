"""Through the real agent path (file source, real loader, real expansion, the agent's
refresh/sync, a recording driver), property-based: a file that holds any invalid
object never hands the driver anything from that file, and the previous state stays.

Each example: a valid file is synced; then the same objects plus a new Service (the
canary) plus one invalid thing are written; the agent re-reads, refuses, and a full
resync still programs exactly the first state, without the canary. Once the file is
fixed the canary is programmed: the check can fail.
"""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from k8s_strategies import MUTATIONS, cluster_docs

from lbcore.clock import FakeClock, SystemClock
from lbcore.config import Config, RunnerConfig
from lbcore.loop import Agent
from lbcore.model import NodeInfo, ServiceKey
from lbcore.plugins import GuardedDriver
from lbcore.sources.file import FileSource
from lbcore.testing import FakeDriver

NODE = NodeInfo("node-0", ("172.18.0.2",))
CANARY = ServiceKey("canary", "canary")
CANARY_DOCS = [
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "canary", "namespace": "canary"},
     "spec": {"type": "NodePort", "clusterIP": "10.96.250.1", "externalIPs": ["192.0.2.250"],
              "ports": [{"port": 80, "nodePort": 32700}]}},  # protocol defaulted
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "canary-x", "namespace": "canary",
                  "labels": {"kubernetes.io/service-name": "canary"}},
     "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.250.9"]}],
     "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]},
]


def write(path: Path, docs: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(path)


def make_agent(path: Path, *, clock=None) -> tuple[Agent, FakeDriver]:
    config = Config(Path("lbcore.yaml"), "fake", {}, NODE, "file", {"path": str(path)},
                    RunnerConfig(min_sync_period=0.0, sync_period=30.0))
    driver = FakeDriver({}, NODE)
    source = FileSource({"path": str(path)}, None)
    return Agent(config, GuardedDriver(driver), source, clock=clock or FakeClock()), driver


def programmed(driver: FakeDriver, since: int = 0) -> list:
    return [fe for state, _ in driver.syncs[since:] for fe in state.frontends]


@settings(max_examples=int(os.environ.get("LBCORE_PROPERTY_EXAMPLES", "0")) or 30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(base=cluster_docs(max_services=2), name=st.sampled_from(sorted(MUTATIONS)),
       data=st.data())
def test_an_invalid_object_never_reaches_the_driver_and_the_state_stays(base, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objects.yaml"
        write(path, base)
        agent, driver = make_agent(path)
        assert agent.refresh()
        first = agent.sync()
        assert first is not None
        held, synced = dict(driver.held), len(driver.syncs)

        bad = copy.deepcopy(base) + copy.deepcopy(CANARY_DOCS)
        note(f"{name}: {MUTATIONS[name](data, bad)}")
        write(path, bad)
        assert not agent.refresh()  # refused, logged, counted
        assert agent.metrics.source_errors_total == 1
        agent.sync(full=True)  # a periodic full resync meanwhile
        agent.sync()
        assert driver.held == held
        for state, _ in driver.syncs[synced:]:
            assert state.frontends == first.state.frontends
        assert all(fe.service != CANARY for fe in programmed(driver))

        write(path, base + CANARY_DOCS)  # fixed: now the canary gets through
        assert agent.refresh()
        agent.sync()
        assert {fe.service for fe in driver.held.values()} >= {CANARY}


@settings(max_examples=3, deadline=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(base=cluster_docs(max_services=2), data=st.data(),
       names=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=3, max_size=3))
def test_the_running_agent_ignores_invalid_files_until_one_is_valid(base, data, names):
    """``lbcore run``'s loop (source watch thread, runner thread) on real files."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objects.yaml"
        write(path, base)
        agent, driver = make_agent(path, clock=SystemClock())
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,),
                                  kwargs={"handle_signals": False})
        thread.start()
        try:
            assert wait_for(lambda: len(driver.syncs) >= 1)
            held, synced = dict(driver.held), len(driver.syncs)
            for n, name in enumerate(names, 1):
                bad = copy.deepcopy(base) + copy.deepcopy(CANARY_DOCS)
                note(f"{name}: {MUTATIONS[name](data, bad)}")
                write(path, bad)
                assert wait_for(lambda n=n: agent.metrics.source_errors_total >= n), name
            agent.source.trigger()  # SIGHUP: re-read (still invalid)
            assert wait_for(lambda: agent.metrics.source_errors_total > len(names))
            assert len(driver.syncs) == synced and driver.held == held
            write(path, base + CANARY_DOCS)
            assert wait_for(lambda: any(fe.service == CANARY for fe in driver.held.values()))
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
