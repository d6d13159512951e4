"""`lbcore bench --quick` end to end (root): the harness runs every installed driver that
loads (the nftables plugin too) against the direct baseline and writes JSON, Markdown
and plots. No timing assertions: only that each figure exists, is a real measurement
and nothing is left behind."""

from __future__ import annotations

import json

import pytest

from lbcore.bench import choose_drivers, main
from lbcore.lab import lab_ids

pytestmark = pytest.mark.netns


def test_bench_quick(tmp_path):
    rc = main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert rc == 0, data["errors"]
    assert data["machine"]["lab_id"] not in lab_ids()  # the bench's lab is gone
    drivers, support = choose_drivers("", {})
    assert {"socklb", "nftables"} <= set(drivers)
    assert data["settings"]["drivers"] == drivers
    got = {(s["path"], s["scenario"], s["count"]) for s in data["samples"]}
    for path in ["direct", *drivers]:
        for scenario in ("ew-crr", "ew-rr", "ew-tput", "ns-crr", "ns-rr", "ns-tput"):
            if path != "direct" and support[path][scenario[:2]]:
                assert (path, scenario, 100) not in got
                continue
            assert (path, scenario, 100) in got, (path, scenario)
    for s in data["samples"]:
        assert s.get("requests", 1) > 0 and s.get("rate", s.get("gbit", 0)) > 0, s
    held = {(c["driver"], c["count"]): c for c in data["control"]}
    for d in drivers:
        c = held[(d, 100)]
        assert 0 < c["probe_answers_s"] <= c["first_sync_s"] <= c["held_s"], c
        assert len(c["endpoint_change_s"]) == 2 and min(c["endpoint_change_s"]) > 0, c
        assert c["frontends_held"] >= (3 if d == "tcnodeport" else 100)
        for node in c["readbacks"].values():  # each node's read-back equalled its plan
            assert node["programmed_s"] > 0 and node["polls"], c
        assert c["rss_mb"] and all(any(k == "full" for k, _, _ in syncs)
                                   for syncs in c["agent_syncs"].values()), c
    md = (tmp_path / "report.md").read_text()
    assert "| 100 | ew-rr | socklb |" in md and "| 100 | nftables |" in md
    if data["skipped"].get("plots") is None:
        assert (tmp_path / "bench-ratio-to-direct.png").read_bytes()[:4] == b"\x89PNG"
