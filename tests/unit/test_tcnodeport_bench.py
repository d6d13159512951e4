"""The tcnodeport benchmark's report arithmetic (no lab): paired ratios per repetition."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "tcnodeport_bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("tcnodeport_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_paired_ratios_cancel_drift_and_skip_missing_repetitions():
    tb = load_bench()
    s = tb.Samples()
    for rep, scale in enumerate((1.0, 0.5, 0.25)):  # the machine slows down 4x
        s.add("iptables", "crr", 1000 * scale, 2.0, rep)
        if rep != 1:  # one repetition of this path failed
            s.add("tcnodeport-snat", "crr", 1200 * scale, 2.0, rep)
    assert s.paired_ratios("tcnodeport-snat", "iptables", "crr") == [1.2, 1.2]
    args = argparse.Namespace(backend="remote", reps=3, seconds=3, threads=2, connections=16,
                              paths=["iptables", "tcnodeport-snat"])
    text = tb.report(s, {"loadavg_start": [2.0], "loadavg_end": [3.0], "cpus": 2,
                         "kernel": "k"}, args)
    # The ratio of the medians (750 / 500) is off by the missing repetition; the pairs not.
    assert "tcnodeport-snat / iptables: conn/s 1.50x; 1.20x (1.20-1.20)" in text
