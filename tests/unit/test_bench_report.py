"""lbcore.bench without root: parsing wrk/iperf3 output, the summary (median/min/max,
ratio to direct), Markdown, plots, options, which drivers run and what they carry, and
the control-plane helpers (plan vs read back, agent logs)."""

from __future__ import annotations

import json

import pytest

from lbcore.bench import choose_drivers, control, drivers, parse_args, tools
from lbcore.bench import report as rep
from lbcore.bench.env import idle_ips
from lbcore.driver import Capabilities
from lbcore.model import FrontendType

WRK_OUT = """Running 1s test @ http://10.96.0.5:80/
  2 threads and 16 connections
BENCH {"requests": 20000, "duration_us": 2000000, "errors": 3, "p50_us": 400, \
"p99_us": 2500, "p999_us": 9000, "mean_us": 512.5}
"""


def test_parse_wrk_and_iperf3():
    f = tools.parse_wrk(WRK_OUT)
    assert f["rate"] == pytest.approx(10000.0)
    assert (f["p50_ms"], f["p99_ms"], f["p999_ms"], f["errors"]) == (0.4, 2.5, 9.0, 3)
    with pytest.raises(ValueError, match="no BENCH line"):
        tools.parse_wrk("Requests/sec: 5\n")
    bits = json.dumps({"end": {"sum_received": {"bits_per_second": 12.5e9}}})
    assert tools.parse_iperf3(bits) == {"gbit": 12.5}
    with pytest.raises(ValueError, match="busy"):
        tools.parse_iperf3(json.dumps({"error": "the server is busy"}))


def test_wrk_script_round_robin_and_argv(tmp_path):
    plain = tools.wrk_script(tmp_path)
    rr = tools.wrk_script(tmp_path, ["10.0.1.10", "10.0.1.77"])
    assert "function done" in plain.read_text() and "setup" not in plain.read_text()
    text = rr.read_text()
    assert '"10.0.1.10", "10.0.1.77"' in text and "thread.addr" in text
    argv = tools.wrk_argv("http://x/", rr, seconds=2, connections=16, threads=2, close=True)
    assert argv[argv.index("-H") + 1] == "Connection: close" and "-c16" in argv
    assert "-H" not in tools.wrk_argv("http://x/", rr, seconds=2, connections=16,
                                      threads=2, close=False)
    assert tools.prober_seen("first backend=web-0\nseen 123.500000\n") == 123.5
    assert tools.prober_seen("first backend=web-0\ntimeout\n") is None


def _sample(path, scenario, rate, count=1, rep_=0, p99=1.0):
    return {"count": count, "rep": rep_, "path": path, "scenario": scenario, "rate": rate,
            "requests": 1, "errors": 0, "p50_ms": 0.5, "p99_ms": p99, "p999_ms": 2 * p99,
            "gbit": rate / 1000, "load1": 0.5}


RESULTS = {
    "settings": {"reps": 3, "duration": 1, "tput_duration": 1, "threads": 2,
                 "connections": 16, "command": "lbcore bench --quick"},
    "machine": {"cpus": 2, "kernel": "6.18", "loadavg_start": [0.5, 0.5, 0.5],
                "loadavg_end": [1.0, 1.0, 1.0]},
    "samples": [_sample("direct", "ew-rr", r, rep_=i, p99=2.0) for i, r in
                enumerate((100, 120, 110))]
    + [_sample("socklb", "ew-rr", r, rep_=i) for i, r in enumerate((90, 105, 99))]
    + [_sample("iptables", "ew-tput", 50), _sample("direct", "ew-tput", 100)],
    "control": [{"count": 1, "rep": i, "driver": "socklb", "first_sync_s": f,
                 "held_s": f + 1, "readback_s": 0.5, "probe_answers_s": f - 1,
                 "endpoint_change_s": [0.1, e],
                 "frontends_held": 6, "rss_mb": {"a": 100.0, "b": 120.0}, "load1": 0.5,
                 "agent_syncs": {"a": [("full", 6, f - 2), ("partial", 6, 0.01)],
                                 "b": [("full", 6, f - 2.5)]}}
                for i, (f, e) in enumerate(((3.0, 0.3), (2.5, 0.2), (4.0, 0.4)))],
    "skipped": {"tcnodeport east-west": "north-south only"},
    "errors": [],
}


def test_summary_medians_ratios_and_markdown(tmp_path):
    summ = rep.summarize(RESULTS)
    rows = {(r["path"], r["scenario"]): r for r in summ["data"]}
    sock = rows[("socklb", "ew-rr")]
    assert sock["rate"] == {"median": 99.0, "min": 90.0, "max": 105.0, "n": 3}
    assert sock["ratio"] == pytest.approx(99 / 110)
    assert sock["p99_ratio"] == pytest.approx(0.5)
    assert rows[("iptables", "ew-tput")]["ratio"] == pytest.approx(0.5)
    assert summ["data"][0]["path"] == "direct"  # direct first within each scenario
    (ctl,) = summ["control"]
    assert ctl["first_sync_s"] == {"median": 3.0, "min": 2.5, "max": 4.0, "n": 3}
    assert ctl["endpoint_change_s"]["n"] == 6
    assert ctl["endpoint_change_s"]["median"] == pytest.approx(0.15)
    assert ctl["own_full_sync_s"]["median"] == 1.0  # the slower node's first full sync
    assert ctl["rss_mb_max_node"]["max"] == 120.0
    md = rep.markdown(RESULTS, summ, ["/x/bench-ratio-to-direct.png"])
    assert "| 1 | ew-rr | socklb | 99 [90-105] req/s | 0.90x |" in md
    assert "| 1 | socklb | 3.0 [2.5-4.0] | 1.00 [0.50-2.00] | 4.0 [3.5-5.0] | 0.5 [0.5-0.5] |" in md
    assert "tcnodeport east-west: north-south only" in md
    assert "![bench-ratio-to-direct](bench-ratio-to-direct.png)" in md
    rep.write_all(RESULTS, tmp_path, [])
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["data"]


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    from lbcore.bench import plots

    files = plots.write_plots(rep.summarize(RESULTS), tmp_path)
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    assert names == ["bench-control-vs-services.png", "bench-ew-vs-services.png",
                     "bench-ratio-to-direct.png"]
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_options():
    quick = parse_args(["--quick"])
    assert quick.counts == [100] and quick.duration == 1.0 and quick.reps == 1
    full = parse_args(["--services", "30000,1,1000", "--drivers", "socklb"])
    assert full.counts == [1, 1000, 30000] and full.reps == 3
    with pytest.raises(SystemExit):
        parse_args(["--scenarios", "ew-nope"])
    with pytest.raises(SystemExit):
        parse_args(["--services", "0"])
    ips = idle_ips(40001, taken={"10.96.128.1"})
    assert ips[:2] == ["10.96.128.0", "10.96.128.2"] and len(set(ips)) == 40001
    assert ips[29999] == "10.96.245.48" and ips[40000] == "10.97.28.65"


def test_every_installed_driver_runs_by_default_with_what_its_capabilities_carry():
    skipped: dict[str, str] = {}
    names, support = choose_drivers("", skipped)
    assert set(names) | {k for k in skipped} == set(drivers.installed())
    assert {"socklb", "iptables", "tcnodeport", "nftables"} <= set(drivers.installed())
    assert support["socklb"]["ew"] is None and "socket LB" in support["socklb"]["ns"]
    assert support["tcnodeport"]["ew"] and support["tcnodeport"]["ns"] is None
    assert support["iptables"] == {"ew": None, "ns": None}
    assert support["nftables"] == {"ew": None, "ns": None}  # a plugin, like a built-in
    with pytest.raises(ValueError, match="nope not installed"):
        choose_drivers("socklb,nope", {})
    assert choose_drivers("nftables,socklb,nftables", {})[0] == ["nftables", "socklb"]


def test_support_of_a_third_party_driver_comes_from_its_capabilities():
    host_only = Capabilities(clients=frozenset({"host"}))
    assert drivers.support("x", host_only) == {
        "ew": "it serves host clients, not pods",
        "ns": "it serves host clients, not outside ones"}
    cluster_ip_only = Capabilities(frontend_types=frozenset({FrontendType.CLUSTER_IP}))
    assert drivers.support("y", cluster_ip_only)["ns"].startswith("east-west only")


def test_plan_and_read_back_compare_frontends_and_backends():
    services = [{"frontend": {"ip": "10.96.0.1", "port": 80, "protocol": "TCP"},
                 "backends": [{"ip": "10.0.1.10", "port": 80, "state": "active"}]}]
    held = control.held_by(services)
    assert held == {("10.96.0.1", 80, "TCP"): frozenset({("10.0.1.10", 80)})}
    want = {**held, ("10.96.0.2", 80, "TCP"): frozenset()}
    assert control.differences(held, want) == "1 missing (e.g. [('10.96.0.2', 80, 'TCP')])"
    other = {("10.96.0.1", 80, "TCP"): frozenset({("10.0.1.11", 80)})}
    assert "1 with other backends" in control.differences(other, held)
    log = ("INFO full sync: 30006 frontend(s), 30003 service(s) written, 0 removed, "
           "0 skipped (12.345 s)\nINFO partial sync: 30006 frontend(s), 1 service(s) "
           "written, 0 removed, 0 skipped (0.020 s)\n")
    assert control.agent_syncs(log) == [("full", 30006, 12.345), ("partial", 30006, 0.02)]
    assert control.scaled_timeout(30000) > control.scaled_timeout(1) >= 60
    assert control.sample(1) == [0] and control.sample(0) == []
    picks = control.sample(29997)
    assert picks[0] == 0 and 29996 in picks and 9999 in picks and len(picks) <= 17
    assert 999 in control.sample(1500)  # idle-999 sorts last among idle-0..1499
