"""``/healthz``, ``/livez`` and ``/metrics`` of ``lbcore run --healthz-bind-address``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from lbcore.cli import cli
from lbcore.errors import ConfigError
from lbcore.health import HealthServer, parse_bind_address, rfc3339
from lbcore.metrics import Metrics


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served():
    state = {"healthy": True}
    metrics = Metrics()
    server = HealthServer(("127.0.0.1", 0), lambda: state["healthy"], metrics,
                          lambda: 1_700_000_100.0).start()
    yield server, state, metrics
    server.close()


def test_healthz_and_livez_follow_agent_health(served):
    server, state, metrics = served
    metrics.sync_succeeded(duration=0.1, wall=1_700_000_000.0, full=True, frontends=3,
                           skipped=0)
    for path in ("/healthz", "/livez"):
        status, body = get(server.port, path)
        assert status == 200
        assert json.loads(body) == {"lastUpdated": "2023-11-14T22:13:20.000000Z",
                                    "currentTime": "2023-11-14T22:15:00.000000Z"}
    state["healthy"] = False
    status, body = get(server.port, "/healthz")
    assert status == 503
    assert json.loads(body)["lastUpdated"] == "2023-11-14T22:13:20.000000Z"


def test_metrics_and_unknown_paths(served):
    server, _, metrics = served
    metrics.sync_succeeded(duration=0.1, wall=1.0, full=True, frontends=7, skipped=0)
    status, body = get(server.port, "/metrics")
    assert status == 200
    assert b"lbcore_frontends 7" in body
    assert get(server.port, "/nope")[0] == 404


def test_real_agent_health_rule():
    """kube-proxy's rule through Metrics.healthy: a queued update older than the timeout."""
    metrics = Metrics()
    metrics.changes_queued(1, 1, wall=100.0)
    assert metrics.healthy(150.0, 60.0)
    assert not metrics.healthy(161.0, 60.0)
    metrics.sync_succeeded(duration=0.1, wall=162.0, full=False, frontends=1, skipped=0)
    assert metrics.healthy(500.0, 60.0)


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
