"""The agent against an in-memory driver and source: what the driver is handed."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lbcore.clock import FakeClock
from lbcore.config import Config, RunnerConfig
from lbcore.driver import Capabilities
from lbcore.errors import DriverError, FieldError, SourceError, ValidationError
from lbcore.loop import Agent
from lbcore.metrics import render_prometheus
from lbcore.model import FrontendAddress, NodeInfo
from lbcore.plugins import GuardedDriver
from lbcore.sources.file import FileSource
from lbcore.testing import (
    FakeDriver,
    MemorySource,
    cluster,
    endpoint_slice,
    naive_expand,
    service,
)

NODE = NodeInfo("node-a", ("172.18.0.2",))
WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", port=53, protocol="UDP", namespace="kube-system")
WEB_EPS = endpoint_slice(WEB, ["10.0.1.5", "10.0.1.6"])
DNS_EPS = endpoint_slice(DNS, ["10.0.2.5"], port=53)
INVALID = ValidationError(
    [
        FieldError("spec.ports[0].port", "must be between 1 and 65535", "1-65535",
                   "svc.yaml", 1, "Service", "default/web"),
        FieldError("spec.clusterIP", "not an IP address", file="svc.yaml", document=1,
                   kind="Service", name="default/web"),
    ],
    source="svc.yaml",
)


def make_config(**runner) -> Config:
    return Config(Path("lbcore.yaml"), "fake", {}, NODE, "memory", {},
                  RunnerConfig(**{"min_sync_period": 0.0, "sync_period": 30.0, **runner}))


def make_agent(objects=None, driver_cls=FakeDriver, clock=None, **runner):
    driver = driver_cls({}, NODE)
    source = MemorySource(objects)
    agent = Agent(make_config(**runner), GuardedDriver(driver), source,
                  clock=clock or FakeClock(), expand=naive_expand)
    return agent, driver, source


def addresses(state):
    return sorted(fe.address for fe in state.frontends)


# --------------------------------------------------------------------- sync_once


def test_sync_once_sets_up_and_syncs_everything_full():
    agent, driver, _ = make_agent(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    outcome = agent.sync_once()
    assert driver.calls == ["setup", "sync"]
    state, changed = driver.syncs[0]
    assert changed is None
    assert addresses(state) == [FrontendAddress("10.96.0.10", 80, "TCP"),
                                FrontendAddress("10.96.0.53", 53, "UDP")]
    assert outcome.result.frontends == 2 and outcome.full


def test_dry_run_does_not_touch_the_driver():
    agent, driver, _ = make_agent(cluster([WEB], [WEB_EPS]))
    outcome = agent.sync_once(dry_run=True)
    assert driver.calls == []
    assert outcome.result is None
    assert len(outcome.state.frontends) == 1


def test_sync_once_raises_on_invalid_source_without_calling_driver():
    agent, driver, source = make_agent()
    source.fail(INVALID)
    with pytest.raises(ValidationError):
        agent.sync_once()
    assert driver.calls == []


# ------------------------------------------------------------- incremental syncs


def test_first_sync_full_then_changed_keys_with_full_state():
    agent, driver, source = make_agent(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    assert agent.refresh()
    agent.sync()
    assert driver.last_changed is None

    source.put(cluster([WEB, DNS], [endpoint_slice(WEB, ["10.0.1.9"]), DNS_EPS]))
    agent.refresh()
    agent.sync()
    state, changed = driver.syncs[-1]
    assert changed == frozenset({WEB.key})
    assert len(state.frontends) == 2  # the full state, not just the change
    web = state.frontends_of(WEB.key)[0]
    assert [b.ip for b in web.backends] == ["10.0.1.9"]


def test_failed_sync_forces_next_full_and_retries_with_backoff():
    clock = FakeClock(start=0.0)
    agent, driver, source = make_agent(cluster([WEB], [WEB_EPS]), clock=clock)
    agent.refresh()
    agent.sync()
    source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    agent.refresh()
    driver.sync_failures.append(DriverError("fake", "map full"))
    driver.sync_failures.append(DriverError("fake", "still full"))

    agent.runner.run()
    agent.runner.step()  # fails: retry in 1 s
    assert driver.syncs[-1][1] == frozenset({DNS.key})
    assert agent.runner.next_run() == 1.0
    assert agent.metrics.sync_failures_total == 1
    assert agent.tracker.pending() == frozenset({DNS.key})  # requeued

    clock.set(1.0)
    agent.runner.step()  # fails again: full sync attempted, retry in 2 s
    assert driver.syncs[-1][1] is None
    assert agent.runner.next_run() == 3.0

    clock.set(3.0)
    agent.runner.step()  # succeeds, full
    assert driver.syncs[-1][1] is None
    assert agent.metrics.sync_failures_total == 2
    assert agent.tracker.pending() == frozenset()
    source.put(cluster([WEB], [WEB_EPS]))
    agent.refresh()
    agent.sync()
    assert driver.syncs[-1][1] == frozenset({DNS.key})  # back to partial syncs


def test_unexpected_driver_exception_becomes_driver_error_and_next_sync_is_full():
    agent, driver, _ = make_agent(cluster([WEB], [WEB_EPS]))
    agent.refresh()
    agent.sync()
    driver.sync_failures.append(KeyError("slot"))
    with pytest.raises(DriverError, match=r"driver fake: sync\(\) failed: KeyError"):
        agent.sync()
    agent.sync()
    assert driver.last_changed is None


def test_periodic_full_resync():
    clock = FakeClock(start=0.0)
    agent, driver, _source = make_agent(cluster([WEB], [WEB_EPS]), clock=clock,
                                       sync_period=30.0)
    agent.refresh()
    agent.sync()
    clock.set(10.0)
    agent.sync()
    assert driver.last_changed == frozenset()
    clock.set(30.0)
    agent.runner.step()  # the runner's periodic run
    assert driver.last_changed is None
    assert agent.metrics.full_syncs_total == 2


# ------------------------------------------------------------ unsupported frontends


class TCPOnlyDriver(FakeDriver):
    """Test double that cannot do UDP."""

    caps = Capabilities(protocols=frozenset({"TCP"}))


def test_unsupported_frontends_are_reported_not_dropped(caplog):
    agent, driver, _source = make_agent(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]),
                                       driver_cls=TCPOnlyDriver)
    caplog.set_level(logging.WARNING, logger="lbcore")
    agent.refresh()
    agent.sync()
    state, _ = driver.syncs[-1]
    assert addresses(state) == [FrontendAddress("10.96.0.10", 80, "TCP")]
    [skip] = state.skipped
    assert skip.service == DNS.key
    assert skip.frontend == FrontendAddress("10.96.0.53", 53, "UDP")
    assert skip.reason == "driver fake: protocol UDP is not supported"
    assert agent.metrics.skipped_frontends == 1
    assert "lbcore_skipped_frontends 1" in render_prometheus(agent.metrics)
    warnings = [r for r in caplog.records if "not programming" in r.getMessage()]
    assert len(warnings) == 1
    assert "kube-system/dns 10.96.0.53:53/UDP" in warnings[0].getMessage()

    agent.sync()  # same skip again: not logged again
    assert len([r for r in caplog.records if "not programming" in r.getMessage()]) == 1


def test_dry_run_lists_skipped_too():
    agent, _, _ = make_agent(cluster([DNS], [DNS_EPS]), driver_cls=TCPOnlyDriver)
    outcome = agent.sync_once(dry_run=True)
    assert outcome.state.frontends == ()
    assert [s.service for s in outcome.state.skipped] == [DNS.key]


# ----------------------------------------------------------------- invalid input


def test_invalid_source_keeps_previous_state_and_does_not_sync(caplog):
    agent, driver, source = make_agent(cluster([WEB], [WEB_EPS]))
    agent.refresh()
    agent.sync()
    syncs = len(driver.syncs)
    before = agent.tracker.objects

    source.fail(INVALID)
    with caplog.at_level(logging.ERROR, logger="lbcore"):
        assert agent.refresh() is False
    message = caplog.records[-1].getMessage()
    assert "spec.ports[0].port: must be between 1 and 65535" in message
    assert "spec.clusterIP: not an IP address" in message
    assert message.startswith("keeping the previous state; svc.yaml: rejected, 2 invalid")
    assert agent.tracker.objects is before
    assert agent.tracker.pending() == frozenset()
    assert len(driver.syncs) == syncs
    assert agent.metrics.source_errors_total == 1


def test_no_valid_snapshot_yet_leaves_datapath_alone():
    agent, driver, source = make_agent()
    source.fail(SourceError("services.yaml: no such file"))
    assert agent.refresh() is False
    assert agent.sync() is None
    assert driver.syncs == []


def test_file_source_invalid_file_keeps_previous_objects(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("good")
    good = cluster([WEB], [WEB_EPS])

    def loader(p, **_):
        if Path(p).read_text() == "good":
            return good
        raise INVALID

    source = FileSource({"path": str(path)}, None, loader=loader)
    driver = FakeDriver({}, NODE)
    agent = Agent(make_config(), GuardedDriver(driver), source, clock=FakeClock(),
                  expand=naive_expand)
    agent.refresh()
    agent.sync()
    path.write_text("broken")
    assert agent.refresh() is False
    assert agent.tracker.objects is good
    assert len(driver.syncs) == 1


# ------------------------------------------------------------------------ metrics


def test_metrics_after_syncs():
    clock = FakeClock(start=0.0)
    agent, _driver, _source = make_agent(cluster([WEB], [WEB_EPS]), clock=clock)
    agent.refresh()
    clock.advance(2.0)
    agent.sync()
    m = agent.metrics
    assert m.syncs_total == 1
    assert m.last_sync_timestamp == clock.wall()
    assert m.network_programming_duration.count == 1
    assert m.network_programming_duration.total == 2.0
    assert m.service_changes_total == 1 and m.service_changes_pending == 0
    text = render_prometheus(m)
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in text
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="2"} 1' in text
    assert agent.healthy()


def test_unhealthy_when_a_queued_change_waits_too_long():
    clock = FakeClock(start=0.0)
    agent, _driver, _source = make_agent(cluster([WEB]), clock=clock, health_timeout=60.0)
    agent.refresh()
    clock.advance(61)
    assert not agent.healthy()
    agent.sync()
    assert agent.healthy()


# ---------------------------------------------------------------------------- run


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_run_follows_the_source_and_leaves_datapath_on_stop():
    driver = FakeDriver({}, NODE)
    source = MemorySource(cluster([WEB], [WEB_EPS]))
    agent = Agent(make_config(), GuardedDriver(driver), source, expand=naive_expand)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), kwargs={"handle_signals": False})
    thread.start()
    try:
        assert wait_for(lambda: len(driver.syncs) >= 1)
        assert driver.syncs[0][1] is None
        source.put(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
        assert wait_for(lambda: len(driver.syncs) >= 2)
        assert driver.syncs[1][1] == frozenset({DNS.key})
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert "cleanup" not in driver.calls
    assert driver.calls[0] == "setup" and driver.calls[-1] == "close"


def test_run_signals_sighup_rereads_sigterm_stops():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    driver = FakeDriver({}, NODE)
    source = MemorySource(cluster([WEB], [WEB_EPS]))
    agent = Agent(make_config(), GuardedDriver(driver), source, expand=naive_expand)
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)

    def send():
        assert wait_for(lambda: len(driver.syncs) >= 1)
        reads = source.reads
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: source.reads > reads)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send)
    sender.start()
    agent.run(stop)  # returns on SIGTERM
    sender.join(5)
    assert stop.is_set()
    assert driver.calls[-1] == "close" and "cleanup" not in driver.calls
    assert signal.getsignal(signal.SIGTERM) == before


def test_changing_frontend_set_via_replace_keeps_tracker_consistent():
    agent, driver, source = make_agent(cluster([WEB], [WEB_EPS]))
    agent.refresh()
    agent.sync()
    source.put(cluster([replace(WEB, cluster_ips=("10.96.0.11",))], [WEB_EPS]))
    agent.refresh()
    agent.sync()
    assert driver.last_changed == frozenset({WEB.key})
    assert list(driver.held) == [FrontendAddress("10.96.0.11", 80, "TCP")]


def test_run_waits_for_a_first_valid_snapshot_without_touching_the_datapath():
    driver = FakeDriver({}, NODE)
    source = MemorySource()
    source.fail(INVALID)
    agent = Agent(make_config(), GuardedDriver(driver), source, expand=naive_expand)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), kwargs={"handle_signals": False})
    thread.start()
    try:
        assert wait_for(lambda: source.reads >= 1)
        time.sleep(0.1)
        assert driver.syncs == []
        source.put(cluster([], []))  # valid, even if empty: the first sync is full
        assert wait_for(lambda: len(driver.syncs) >= 1)
        assert driver.syncs[0][1] is None
    finally:
        stop.set()
        thread.join(5)
