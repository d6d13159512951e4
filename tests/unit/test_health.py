"""``/healthz``, ``/livez`` and ``/metrics`` of ``lbcore run --healthz-bind-address``,
with kube-proxy's rule (pkg/proxy/healthcheck: Updated / QueuedUpdate / healthTimeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from lbcore.cli import cli
from lbcore.clock import FakeClock
from lbcore.errors import ConfigError
from lbcore.health import HealthServer, ProxyHealth, health_reply, parse_bind_address, rfc3339
from lbcore.metrics import Metrics, render_prometheus

START = 1000.0  # FakeClock: monotonic 1000 is Unix 1_700_001_000 (2023-11-14T22:30:00Z)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served():
    clock = FakeClock(start=START)
    health = ProxyHealth(clock, timeout=60.0)
    metrics = Metrics()
    server = HealthServer(("127.0.0.1", 0), health.status, metrics).start()
    yield server, health, clock, metrics
    server.close()


def test_healthy_while_starting_up_as_kube_proxy():
    clock = FakeClock(start=START)
    health = ProxyHealth(clock, timeout=60.0)
    health.updated()  # the agent's loop starts
    clock.advance(3600)  # nothing queued: healthy however long it takes
    assert health.status().healthy


def test_unhealthy_once_the_oldest_queued_update_is_timeout_old():
    clock = FakeClock(start=START)
    health = ProxyHealth(clock, timeout=60.0)
    health.updated()
    health.queued_update()  # at 1000
    clock.advance(30)
    health.queued_update()  # a later change does not move the clock forward
    clock.advance(29.9)
    assert health.status().healthy
    clock.advance(0.1)  # 60 s after the first: kube-proxy compares with "<"
    assert not health.status().healthy
    health.updated()
    assert health.status().healthy


def test_changes_that_arrive_during_a_sync_keep_waiting():
    clock = FakeClock(start=START)
    health = ProxyHealth(clock, timeout=60.0)
    health.queued_update()
    clock.advance(10)
    health.updated(still_pending_since=START + 5)  # one change came in mid-sync
    clock.advance(54.9)
    assert health.status().healthy
    clock.advance(0.2)
    assert not health.status().healthy


def test_bodies_and_codes_follow_kube_proxy(served):
    server, health, clock, metrics = served
    health.updated()  # 22:30:00
    clock.advance(5)
    status, body = get(server.port, "/healthz")
    assert status == 200
    # healthy: lastUpdated is the current time, as kube-proxy reports it
    assert json.loads(body) == {"lastUpdated": "2023-11-14T22:30:05.000000Z",
                                "currentTime": "2023-11-14T22:30:05.000000Z",
                                "nodeEligible": True}
    status, body = get(server.port, "/livez")
    assert status == 200 and "nodeEligible" not in json.loads(body)

    health.queued_update()
    clock.advance(61)
    for path in ("/healthz", "/livez"):
        status, body = get(server.port, path)
        assert status == 503
        assert json.loads(body)["lastUpdated"] == "2023-11-14T22:30:00.000000Z"
        assert json.loads(body)["currentTime"] == "2023-11-14T22:31:06.000000Z"
    text = render_prometheus(metrics)
    assert 'kubeproxy_proxy_healthz_total{code="200"} 1' in text
    assert 'kubeproxy_proxy_healthz_total{code="503"} 1' in text
    assert 'kubeproxy_proxy_livez_total{code="503"} 1' in text


def test_a_node_being_deleted_fails_healthz_but_not_livez():
    clock = FakeClock(start=START)
    health = ProxyHealth(clock, timeout=60.0)
    health.updated()
    health.set_node_eligible(False)
    code, body = health_reply("/healthz", health.status())
    assert code == 503 and body["nodeEligible"] is False
    assert health_reply("/livez", health.status())[0] == 200


def test_metrics_and_unknown_paths(served):
    server, _, _, metrics = served
    metrics.sync_succeeded(duration=0.1, wall=1.0, full=True, frontends=7, skipped=0)
    status, body = get(server.port, "/metrics")
    assert status == 200
    assert b"lbcore_frontends 7" in body
    assert get(server.port, "/nope")[0] == 404


def test_bind_address_parsing():
    assert parse_bind_address("0.0.0.0:10256") == ("0.0.0.0", 10256)
    assert parse_bind_address("[::]:10256") == ("::", 10256)
    assert parse_bind_address(":8080") == ("0.0.0.0", 8080)
    for bad in ("10256", "host:", "host:99999"):
        with pytest.raises(ConfigError, match="healthz-bind-address"):
            parse_bind_address(bad)
    assert rfc3339(0) == "0001-01-01T00:00:00Z"


def test_run_rejects_a_bad_bind_address(tmp_path):
    (tmp_path / "lbcore.yaml").write_text("driver: fake\n")
    result = CliRunner().invoke(cli, ["run", "-c", str(tmp_path / "lbcore.yaml"),
                                      "--healthz-bind-address", "nope"])
    assert result.exit_code == 1
    assert "healthz-bind-address" in result.output
