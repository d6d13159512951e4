"""``lbcore bench soak``, the short version CI runs: 20 s of load and 100 ms churn per
driver (socklb and iptables), with the verdicts of the full soak; plus the pure parts."""

from __future__ import annotations

import json
import os

import pytest

from lbcore.bench import soak
from lbcore.bench.soak import LOAD_CLIENT, memory_summary, parse_args

SECONDS = 20.0


def test_memory_summary_judges_growth_after_the_warm_up():
    flat = [(t * 5.0, 100.0 + (3.0 if t == 0 else 0.0)) for t in range(40)]  # start-up bump
    m = memory_summary(flat, warmup=10, tolerance=1.0)
    assert m["flat"] and m["growth_mb"] == 0.0 and m["slope_mb_per_10min"] == 0.0
    assert (m["first_mb"], m["last_mb"], m["max_mb"]) == (103.0, 100.0, 103.0)
    leak = [(t * 5.0, 100.0 + t * 0.1) for t in range(120)]  # 0.1 MB every 5 s
    m = memory_summary(leak, warmup=60, tolerance=8.0)
    assert not m["flat"] and m["slope_mb_per_10min"] == pytest.approx(12.0)
    assert memory_summary([], warmup=0, tolerance=1.0)["flat"] is False


def test_arguments_and_the_load_client_compile():
    s = parse_args(["--drivers", "socklb", "--duration", "30"])
    assert (s.drivers, s.duration, s.churn_interval, s.warmup_seconds) == (
        ["socklb"], 30.0, 0.1, 7.5)
    assert parse_args([]).duration == 1800.0 and parse_args([]).warmup_seconds == 120.0
    with pytest.raises(SystemExit):
        parse_args(["--churn-interval", "0"])
    compile(LOAD_CLIENT, "load-client", "exec")


@pytest.mark.netns
def test_short_soak_no_failed_request_flat_memory_converged(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, cgroups, eBPF)")
    s = parse_args(["--drivers", "socklb,iptables", "--duration", str(SECONDS),
                    "--out", str(tmp_path)])
    results, machine = soak.run(s)
    json_path, md_path = soak.write_results(results, s, machine, tmp_path)
    report = md_path.read_text()
    assert [r.driver for r in results] == ["socklb", "iptables"]
    for r in results:
        assert r.problems == [], (r.driver, r.problems, report)
        assert {t["target"] for t in r.targets} == {"api ClusterIP", "web NodePort"}
        for t in r.targets:
            assert t["failed"] == 0, (r.driver, t)
            assert t["requests"] > SECONDS * 10, (r.driver, t)  # traffic was steady
            if t["kind"] == "new connection per request":  # the churn moved traffic
                assert len(t["backends"]) >= 3, (r.driver, t)
        assert sum(r.churn.values()) >= SECONDS / s.churn_interval * 0.7, r.churn
        assert {k.split()[0] for k in r.churn} == {"api", "web", "idle"}, r.churn
        assert all(n > 10 for n in r.syncs.values()), r.syncs  # the agents kept up
        assert r.converged
        assert set(r.memory) == {"control-plane", "worker"}
        assert all(m["flat"] and m["samples"] >= 3 for m in r.memory.values()), r.memory
        assert r.ok
    data = json.loads(json_path.read_text())
    assert [d["ok"] for d in data["drivers"]] == [True, True]
    assert report.count("| PASS |") == 2 and "FAIL" not in report, report
