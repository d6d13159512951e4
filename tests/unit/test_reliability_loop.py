"""The agent under faults, with test doubles and a fake clock: setup retried with
backoff, changes waiting out a backoff, full syncs after a source recovers, node
eligibility, metrics, and the live driver switch (order, verification, rollback)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import yaml

from lbcore.clock import FakeClock, SystemClock
from lbcore.config import Config, RunnerConfig, load_config
from lbcore.driver import Capabilities
from lbcore.errors import ConfigError, DriverError, SourceError
from lbcore.loop import Agent
from lbcore.metrics import render_prometheus
from lbcore.model import Node, NodeInfo
from lbcore.plugins import GuardedDriver
from lbcore.switch import ConfigWatch, diff_config
from lbcore.testing import FakeDriver, MemorySource, cluster, endpoint_slice, naive_expand, service

NODE = NodeInfo("node-a", ("172.18.0.2",))
WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", port=53, protocol="UDP", namespace="kube-system")
WEB_EPS = endpoint_slice(WEB, ["10.0.1.5", "10.0.1.6"])
DNS_EPS = endpoint_slice(DNS, ["10.0.2.5"], port=53)


class FlakyDriver(FakeDriver):
    """Test double whose setup fails while ``setup_failures`` holds errors."""

    caps = Capabilities(clients=frozenset({"pod", "host", "external"}))

    def __init__(self, options, node) -> None:
        super().__init__(options, node)
        self.setup_failures: list[BaseException] = []
        self.pressure = {"lbc_svc": (3, 12)}

    def setup(self) -> None:
        super().setup()
        if self.setup_failures:
            raise self.setup_failures.pop(0)

    def map_pressure(self):
        return dict(self.pressure)


class OtherDriver(FakeDriver):
    name = "other"
    caps = Capabilities(clients=frozenset({"pod"}), description="another test double")


class BlindDriver(OtherDriver):
    """Programs nothing it is asked to: its read back never matches the plan."""

    def dump(self):
        self.calls.append("dump")
        return []


def make_agent(objects=None, driver=None, *, path=Path("lbcore.yaml"), factory=None,
               clock=None, **runner):
    clock = clock or FakeClock(start=0.0)
    config = Config(path, "fake", {}, NODE, "memory", {},
                    RunnerConfig(**{"min_sync_period": 0.0, "sync_period": 30.0, **runner}))
    driver = driver or FlakyDriver({}, NODE)
    source = MemorySource(objects if objects is not None else cluster([WEB], [WEB_EPS]))
    agent = Agent(config, GuardedDriver(driver), source, clock=clock, expand=naive_expand,
                  driver_factory=factory)
    return agent, driver, source, clock


# ---------------------------------------------------------------------- setup


def test_failed_setup_is_retried_with_backoff_and_the_datapath_untouched():
    agent, driver, source, clock = make_agent()
    driver.setup_failures += [DriverError("fake", "compiling sock.c failed"),
                              DriverError("fake", "compiling sock.c failed")]
    agent.refresh()
    agent.runner.run()
    agent.runner.step()  # setup fails: retry in 1 s
    assert driver.calls == ["setup"] and driver.syncs == []
    assert agent.metrics.setup_failures_total == 1
    assert agent.runner.next_run() == 1.0

    source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))  # a change during the backoff
    agent.refresh()
    agent.runner.run()
    agent.runner.step()  # waits for the retry: no setup attempt now
    assert driver.calls == ["setup"]

    clock.set(1.0)
    agent.runner.step()  # fails again: 2 s
    assert agent.runner.next_run() == 3.0
    clock.set(3.0)
    agent.runner.step()  # set up, then the first (full) sync
    assert driver.calls == ["setup", "setup", "setup", "sync"]
    assert driver.last_changed is None
    text = render_prometheus(agent.metrics)
    assert "lbcore_setup_failures_total 2" in text
    assert 'lbcore_bpf_map_pressure{map_name="lbc_svc"} 0.25' in text


def test_setup_refusing_the_options_stops_the_agent():
    agent, driver, _source, _clock = make_agent(clock=SystemClock())
    driver.setup_failures.append(ConfigError("driver_options.service_map_max: 16, but the "
                                             "pinned map holds 64 entries"))
    stop = threading.Event()
    with pytest.raises(ConfigError, match="service_map_max"):
        agent.run(stop, handle_signals=False)
    assert driver.syncs == [] and "cleanup" not in driver.calls


def test_unhealthy_while_setup_keeps_failing():
    agent, driver, _source, clock = make_agent(health_timeout=60.0)
    driver.setup_failures += [DriverError("fake", "no")] * 10
    agent.health.updated()
    agent.refresh()  # the first snapshot: every service queued
    for _ in range(7):
        agent.runner.step()
        clock.set(agent.runner.next_run())
    assert clock.now() >= 60 and not agent.healthy()


# ----------------------------------------------------------------- sync faults


def test_a_change_during_a_sync_backoff_is_tried_at_once_and_the_retry_stays():
    agent, driver, source, clock = make_agent()
    agent.refresh()
    agent.runner.run()
    agent.runner.step()
    driver.sync_failures += [DriverError("fake", "map full"), DriverError("fake", "map full")]
    source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    agent.refresh()
    agent.runner.run()
    agent.runner.step()  # fails: retry in 1 s
    assert agent.runner.next_run() == 1.0
    source.put(cluster([WEB], [WEB_EPS]))  # the change that fixes it (fewer services)
    agent.refresh()
    agent.runner.run()
    agent.runner.step()  # tried at once (fails once more: retry in 2 s)
    assert len(driver.syncs) == 3 and driver.last_changed is None
    assert agent.runner.next_run() == 2.0
    clock.set(2.0)
    agent.runner.step()  # the retry, full, with what the source holds now
    assert len(driver.syncs) == 4 and driver.last_changed is None
    assert [fe.service for fe in driver.syncs[-1][0].frontends] == [WEB.key]
    assert agent.tracker.pending() == frozenset()


def test_mid_sync_changes_keep_the_health_clock():
    agent, driver, source, clock = make_agent(health_timeout=60.0)
    agent.refresh()
    real_sync = driver.sync

    def sync_while_a_change_arrives(state, changed):
        source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
        agent.refresh()  # seen at t=0, during the sync
        return real_sync(state, changed)

    driver.sync = sync_while_a_change_arrives
    agent.sync()
    driver.sync = real_sync
    clock.set(59.9)
    assert agent.healthy()
    clock.set(60.0)
    assert not agent.healthy()  # DNS waited 60 s: kube-proxy would have said 200 here
    agent.sync()
    assert agent.healthy()


# ---------------------------------------------------------------- source faults


def test_a_vanished_source_keeps_the_state_and_its_return_forces_a_full_sync(caplog):
    agent, driver, source, _clock = make_agent(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    agent.refresh()
    agent.sync()
    agent.sync()
    assert driver.last_changed == frozenset()  # partial while all is well
    source.fail(SourceError("services.yaml: no such file"))
    with caplog.at_level(logging.ERROR, logger="lbcore"):
        assert agent.refresh() is False
    assert "2 service(s) of the last good read stay programmed" in caplog.text
    assert len(agent.tracker.objects.services) == 2  # not "zero services"
    assert "lbcore_source_stale 1" in render_prometheus(agent.metrics)
    source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    assert agent.refresh()
    agent.sync()
    assert driver.last_changed is None
    text = render_prometheus(agent.metrics)
    assert "lbcore_source_stale 0" in text and "lbcore_source_errors_total 1" in text


def test_a_source_that_recovered_asks_for_a_full_sync():
    agent, driver, source, _clock = make_agent()
    agent.refresh()
    agent.sync()
    source.request_full_sync()
    agent._on_source_change()  # what the watch's callback does
    agent.runner.step()
    assert driver.last_changed is None


def test_node_being_deleted_turns_healthz_not_livez():
    agent, _driver, source, _clock = make_agent()
    agent.refresh()
    assert agent.health_status().node_eligible
    source.put(cluster([WEB], [WEB_EPS], [Node("node-a", ("172.18.0.2",), deleting=True)]))
    agent.refresh()
    assert not agent.health_status().node_eligible


# ------------------------------------------------------------------ live switch


def factory_of(*classes):
    made = []

    def factory(config):
        cls = next(c for c in classes if c.name == config.driver)
        made.append(cls(config.driver_options, config.node))
        return GuardedDriver(made[-1], name=config.driver)

    return factory, made


def test_switch_brings_the_new_one_up_verifies_then_removes_the_old(caplog):
    factory, made = factory_of(OtherDriver)
    agent, old, _source, _clock = make_agent(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]),
                                             factory=factory)
    agent.refresh()
    agent.sync()
    held = set(old.held)
    with caplog.at_level(logging.WARNING, logger="lbcore"):
        assert agent.switch_driver(Config(agent.config.path, "other", {}, NODE, "memory", {}))
    [new] = made
    assert new.calls == ["setup", "sync", "dump"]
    assert new.syncs[0][1] is None and set(new.held) == held and len(held) == 2
    assert old.calls[-2:] == ["cleanup", "close"]  # only after the new one was verified
    assert agent.driver.name == "other"
    assert "does not serve external, host clients" in caplog.text  # fake served all kinds
    agent.sync()
    assert new.calls[-1] == "sync" and new.last_changed == frozenset()
    text = render_prometheus(agent.metrics)
    assert 'lbcore_driver_info{driver="other"} 1' in text
    assert "lbcore_driver_switches_total 1" in text


def test_a_switch_whose_read_back_does_not_match_keeps_the_old_driver(caplog):
    factory, made = factory_of(BlindDriver)
    agent, old, source, _clock = make_agent(factory=factory)
    agent.refresh()
    agent.sync()
    source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    agent.refresh()  # pending when the switch fails: still pending after it
    assert not agent.switch_driver(Config(agent.config.path, "other", {}, NODE, "memory", {}))
    [new] = made
    assert new.calls == ["setup", "sync", "dump", "cleanup"]
    assert "cleanup" not in old.calls and agent.driver.inner is old
    assert "does not match the plan: missing 10.96.0.10:80/TCP" in caplog.text
    assert agent.tracker.pending() == frozenset({DNS.key})
    assert "lbcore_driver_switch_failures_total 1" in render_prometheus(agent.metrics)


def test_config_file_change_switches_and_other_changes_need_a_restart(tmp_path, caplog):
    path = tmp_path / "lbcore.yaml"
    raw = {"driver": "fake", "node": {"name": "node-a", "addresses": ["172.18.0.2"]},
           "source": {"kind": "memory"}}
    path.write_text(yaml.safe_dump(raw))
    factory, made = factory_of(OtherDriver, FlakyDriver)
    agent, old, _source, _clock = make_agent(factory=factory)
    agent.config = load_config(path)
    agent.refresh()
    agent.sync()
    agent._config_watch = ConfigWatch(path, agent.clock)
    path.write_text(yaml.safe_dump({**raw, "driver_options": {"x": 1}}))
    with caplog.at_level(logging.WARNING, logger="lbcore"):
        agent.check_config()
    assert "driver_options changed; restart the agent" in caplog.text
    assert made == [] and agent.driver.inner is old

    path.write_text("driver: [")
    agent.check_config()  # invalid: ignored, said so
    assert "ignoring the changed config" in caplog.text

    path.write_text(yaml.safe_dump({**raw, "driver": "other", "runner": {"sync_period": 5}}))
    agent.check_config()
    assert agent.driver.name == "other" and [d.name for d in made] == ["other"]
    assert "runner changed; restart the agent" in caplog.text
    assert agent.config.runner == RunnerConfig(min_sync_period=0.0, sync_period=30.0)


def test_diff_config_only_switches_on_a_new_driver_name():
    a = Config(Path("x"), "iptables", {}, NODE, "file", {"path": "/s"})
    assert diff_config(a, a).switch_to is None and diff_config(a, a).needs_restart == ()
    b = Config(Path("x"), "socklb", {"cgroup_path": "/c"}, NODE, "file", {"path": "/s"})
    change = diff_config(a, b)
    assert change.switch_to is not None and change.switch_to.driver == "socklb"
    assert change.switch_to.driver_options == {"cgroup_path": "/c"}


def test_a_failed_switch_is_retried_with_backoff_while_the_config_asks(tmp_path):
    path = tmp_path / "lbcore.yaml"
    raw = {"driver": "fake", "node": {"name": "node-a", "addresses": ["172.18.0.2"]},
           "source": {"kind": "memory"}}
    path.write_text(yaml.safe_dump(raw))
    failures = [DriverError("other", "xtables lock held")]

    class Locked(OtherDriver):
        def setup(self):
            super().setup()
            if failures:
                raise failures.pop(0)

    factory, made = factory_of(Locked)
    agent, old, _source, clock = make_agent(factory=factory)
    agent.config = load_config(path)
    agent.refresh()
    agent.sync()
    agent._config_watch = ConfigWatch(path, agent.clock)
    path.write_text(yaml.safe_dump({**raw, "driver": "other"}))
    agent.check_config()
    assert agent.driver.inner is old and len(made) == 1
    agent.check_config()  # not due yet
    assert len(made) == 1
    clock.advance(2.0)
    agent.check_config()  # the retry: works now
    assert agent.driver.name == "other" and len(made) == 2
    assert "cleanup" in old.calls
