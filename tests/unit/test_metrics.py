"""Metrics: events to series, Prometheus text with kube-proxy's names, collectors."""

from __future__ import annotations

from lbcore.metrics import Metrics, Series, map_pressure_series, render_prometheus


def test_render_prometheus_text():
    m = Metrics()
    m.driver = "iptables"
    m.changes_queued(2, 1, (2, 1), wall=1000.0)
    m.sync_succeeded(duration=0.003, wall=1001.5, full=True, frontends=7, skipped=2,
                     programming_delays=[0.3, 1.5], pending=(0, 0))
    m.sync_failed(duration=0.5, full=False, pending=(1, 0))
    lines = render_prometheus(m).splitlines()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in lines
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in lines
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 2' in lines
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 2" in lines
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1" in lines
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1" in lines
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 1' in lines
    assert 'kubeproxy_network_programming_duration_seconds_bucket{le="2"} 2' in lines
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1001.5" in lines
    assert "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1000" in lines
    assert "kubeproxy_sync_proxy_rules_service_changes_total 2" in lines
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_total 1" in lines
    assert "kubeproxy_sync_proxy_rules_service_changes_pending 1" in lines
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0" in lines
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1" in lines
    assert not any("nftables_sync_failures" in line for line in lines)
    assert 'lbcore_driver_info{driver="iptables"} 1' in lines
    assert "lbcore_sync_failures_total 1" in lines
    assert "lbcore_skipped_frontends 2" in lines
    assert "lbcore_frontends 7" in lines
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    assert all(f"# HELP {n} " in "\n".join(lines) for n in names)


def test_other_drivers_count_in_the_generic_counter_only():
    m = Metrics()
    m.driver = "socklb"
    m.sync_failed(duration=0.1, full=True, pending=(0, 0))
    text = render_prometheus(m)
    assert "lbcore_sync_failures_total 1" in text
    assert "restore_failures" not in text and "nftables_sync_failures" not in text


def test_map_pressure_is_a_ratio_per_map():
    m = Metrics()
    m.add_collector("maps", lambda: map_pressure_series({"lbc_svc": (4, 16),
                                                         "lbc_backends": (0, 64)}))
    lines = render_prometheus(m).splitlines()
    assert "# TYPE lbcore_bpf_map_pressure gauge" in lines
    assert 'lbcore_bpf_map_pressure{map_name="lbc_svc"} 0.25' in lines
    assert 'lbcore_bpf_map_pressure{map_name="lbc_backends"} 0' in lines
    assert 'lbcore_bpf_map_entries{map_name="lbc_svc"} 4' in lines
    assert 'lbcore_bpf_map_max_entries{map_name="lbc_svc"} 16' in lines


def test_a_failing_collector_does_not_break_the_scrape(caplog):
    m = Metrics()

    def broken():
        raise OSError("map gone")

    m.add_collector("broken", broken)
    m.add_collector("ok", lambda: [Series("lbcore_x", "gauge", "x", (((("a", 'q"'),), 1.0),))])
    text = render_prometheus(m)
    assert 'lbcore_x{a="q\\""} 1' in text
    assert "map gone" in caplog.text
