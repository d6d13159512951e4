"""iptables (legacy) read back at scale, three ways side by side on one ruleset.

Run as root: ``.venv/bin/python benchmarks/iptables_readback.py [--services 1000,10000]
[--endpoints 10] [--profile]``.

For each size, N ClusterIP services x E endpoints (as benchmarks/iptables_scale.py builds
them) are written by the driver into a private network namespace (removed at the end);
then the nat and filter tables are read back, timed as wall seconds of the call:

* ``decoded_s``: ``read_ruleset`` as ``lbcore services``/``dump``/``bench`` use it (a
  forked child reads through python-iptables/libiptc and decodes the raw entries);
* ``iptc_save_s``: the same with ``decode=False``: every rule an ``iptc.Rule`` whose
  matches and target print themselves with save() (the read back before the decoder);
* ``legacy_save_parse_s``: ``iptables-legacy-save`` of both tables + ``ruleset.parse``.

All three must give the same Ruleset. ``--profile`` adds the cProfile split of the
decoded read (in the child). The load average is recorded before and after each size.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from iptables_scale import NODE, loadavg, objects

from lbcore.expand import IncrementalExpander
from lbcore.netns import in_netns
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.readback import read_iptc, read_ruleset
from lbcore_iptables.ruleset import parse


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    return result, round(time.perf_counter() - t0, 3)


def _profiled_read() -> str:
    prof = cProfile.Profile()
    prof.enable()
    read_iptc(("nat", "filter"), 4)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def run_size(n: int, eps: int, ns: str, profile: bool) -> dict:
    drv = IptablesDriver({"netns": ns, "cluster_cidr": "10.0.0.0/8"}, NODE)
    exp = IncrementalExpander(NODE, admit=drv.capabilities().unsupported)
    drv.setup()
    drv.sync(exp.expand(objects(n, eps), None), None)
    ipt, path = drv.ipt, drv.opts.netns_path
    import iptc  # noqa: F401 - loaded once before the timed reads (~0.5 s), not in one of them

    out: dict = {"services": n, "endpoints_each": eps, "load_before": loadavg()}
    fast, out["decoded_s"] = timed(read_ruleset, path, "legacy", ipt.save, 4)
    slow, out["iptc_save_s"] = timed(read_ruleset, path, "legacy", ipt.save, 4, decode=False)
    saved, out["legacy_save_parse_s"] = timed(lambda: parse(drv.ruleset_text(4)))
    out["load_after"] = loadavg()
    out["rules"] = sum(len(r) for chains in fast.tables.values() for r in chains.values())
    out["rules_not_decoded"] = fast.slow_rules
    out["same_ruleset"] = fast == slow == saved
    out["speedup_vs_iptc_save"] = round(out["iptc_save_s"] / out["decoded_s"], 1)
    print(json.dumps(out), flush=True)
    if profile:
        print(in_netns("iptables", path, _profiled_read), flush=True)
    drv.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default="docs/results/iptables_readback.json")
    args = ap.parse_args()
    results: dict = {"command": " ".join(sys.argv), "sizes": []}
    for n in (int(x) for x in args.services.split(",")):
        ns = f"lbbench-iptrb-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            results["sizes"].append(run_size(n, args.endpoints, ns, args.profile))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
