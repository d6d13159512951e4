"""Metrics: events to series, Prometheus text, kube-proxy's health rule."""

from __future__ import annotations

from lbcore.metrics import Metrics, render_prometheus


def test_render_prometheus_text():
    m = Metrics()
    m.changes_queued(3, 3, wall=1000.0)
    m.sync_succeeded(duration=0.003, wall=1001.5, full=True, frontends=7, skipped=2,
                     programming_delays=[0.3, 1.5], pending=0)
    m.sync_failed(duration=0.5, pending=1)
    lines = render_prometheus(m).splitlines()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in lines
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in lines
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 2' in lines
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 2" in lines
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 1' in lines
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="2"} 2' in lines
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1001.5" in lines
    assert "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1000" in lines
    assert "kubeproxy_sync_proxy_rules_service_changes_total 3" in lines
    assert "kubeproxy_sync_proxy_rules_service_changes_pending 1" in lines
    assert "lbcore_sync_failures_total 1" in lines
    assert "lbcore_skipped_frontends 2" in lines
    assert "lbcore_frontends 7" in lines
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    assert all(f"# HELP {n} " in "\n".join(lines) for n in names)


def test_healthy_rule():
    m = Metrics()
    assert m.healthy(wall=10_000.0, timeout=60)  # nothing queued yet
    m.changes_queued(1, 1, wall=100.0)
    assert m.healthy(wall=160.0, timeout=60)
    assert not m.healthy(wall=161.0, timeout=60)
    m.sync_succeeded(duration=0.1, wall=162.0, full=False, frontends=1, skipped=0)
    assert m.healthy(wall=1000.0, timeout=60)
