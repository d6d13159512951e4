"""`lbcore bench --quick` end to end (root): the harness runs every loadable driver
against the direct baseline and writes JSON, Markdown and plots. No timing assertions:
only that each figure exists, is a real measurement and nothing is left behind."""

from __future__ import annotations

import json

import pytest

from lbcore.bench import main
from lbcore.bench.env import not_supported
from lbcore.demo import driver_problem
from lbcore.lab import lab_ids

pytestmark = pytest.mark.netns


def test_bench_quick(tmp_path):
    before = set(lab_ids())
    rc = main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert rc == 0, data["errors"]
    assert set(lab_ids()) <= before  # the bench's lab is gone
    drivers = [d for d in ("socklb", "iptables", "tcnodeport") if driver_problem(d) is None]
    assert "socklb" in drivers
    got = {(s["path"], s["scenario"], s["count"]) for s in data["samples"]}
    for path in ["direct", *drivers]:
        for scenario in ("ew-crr", "ew-rr", "ew-tput", "ns-crr", "ns-rr", "ns-tput"):
            if path != "direct" and not_supported(path, scenario[:2]):
                assert (path, scenario, 100) not in got
                continue
            assert (path, scenario, 100) in got, (path, scenario)
    for s in data["samples"]:
        assert s.get("requests", 1) > 0 and s.get("rate", s.get("gbit", 0)) > 0, s
    held = {(c["driver"], c["count"]): c for c in data["control"]}
    for d in drivers:
        c = held[(d, 100)]
        assert c["endpoint_change_s"] > 0 and c["bulk_change_s"] > 0
        assert c["frontends_held"] >= (3 if d == "tcnodeport" else 100)
        assert c["rss_mb"], c
    md = (tmp_path / "report.md").read_text()
    assert "| 100 | ew-rr | socklb |" in md
    if data["skipped"].get("plots") is None:
        assert (tmp_path / "bench-ratio-to-direct.png").read_bytes()[:4] == b"\x89PNG"
