"""iptables driver at scale: full sync and one-endpoint partial sync, observed in the kernel.

Run as root: ``.venv/bin/python benchmarks/iptables_scale.py [--services 1000,10000]``.

For each size: N ClusterIP services x 10 endpoints go through the incremental expander
and the driver into a private network namespace (removed at the end). Measured:

* full sync into empty tables (render + one ``iptables-restore --noflush``), then the
  kernel is read with ``iptables-save`` to check every KUBE-SEP chain is there;
* one endpoint of one service replaced (partial sync: only that service's chains plus
  the shared top-level chains), then ``iptables-save`` must show the new endpoint;
* (``--iptc``) the same rules for a smaller N written rule by rule with python-iptables.

Issue #4 targets: full <= 1 s, partial <= 100 ms at 10,000 services.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import MappingProxyType

from lbcore.expand import IncrementalExpander
from lbcore.model import ClusterObjects, NodeInfo
from lbcore.testing import cluster, endpoint_slice, service
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.netns import in_netns
from lbcore_iptables.render import RenderOptions, render_all
from lbcore_iptables.ruleset import parse

NODE = NodeInfo("bench-node", ("172.18.0.2",))


def objects(n: int, eps: int) -> ClusterObjects:
    svcs = [service(f"svc-{i}", f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                    namespace="bench") for i in range(n)]
    slices = [endpoint_slice(s, [f"10.{(i // 250) % 200 + 1}.{i % 250}.{j + 1}"
                                 for j in range(eps)]) for i, s in enumerate(svcs)]
    return cluster(svcs, slices)


def save(ns: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "iptables-legacy-save", "-t",
                           "nat"], capture_output=True, text=True, check=True).stdout


def run_size(n: int, eps: int, ns: str) -> dict:
    objs = objects(n, eps)
    drv = IptablesDriver({"netns": ns, "cluster_cidr": "10.0.0.0/8"}, NODE)
    exp = IncrementalExpander(NODE, admit=drv.capabilities().unsupported)
    st = exp.expand(objs, None)
    t0 = time.perf_counter()
    render_all(st, drv.render_opts)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = drv.sync(st, None)
    full_s = time.perf_counter() - t0
    text = save(ns)
    seps = text.count("\n:KUBE-SEP-")
    assert seps == n * eps, (seps, n * eps)
    # one endpoint of svc-7 replaced by a new address
    key = next(k for k in objs.services if k.name == "svc-7")
    new_ip = "10.250.250.250"
    slices = dict(objs.slices)
    old = slices[key][0]
    ips = [*(e.addresses[0] for e in old.endpoints[1:]), new_ip]
    slices[key] = (endpoint_slice(objs.services[key], ips),)
    objs2 = ClusterObjects(objs.services, MappingProxyType(slices), objs.nodes)
    st2 = exp.expand(objs2, frozenset({key}))
    t0 = time.perf_counter()
    res2 = drv.sync(st2, frozenset({key}))
    partial_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert f"--to-destination {new_ip}:8080" in save(ns)
    save_s = time.perf_counter() - t0
    drv.cleanup()
    return {"services": n, "endpoints_each": eps,
            "restore_lines_full": res.details["restore_lines"],
            "render_full_s": round(render_s, 3), "full_sync_s": round(full_s, 3),
            "partial_sync_s": round(partial_s, 3), "partial_full": res2.full,
            "restore_lines_partial": res2.details["restore_lines"],
            "iptables_save_s": round(save_s, 3)}


def _iptc_write(rules_text: str) -> float:
    import iptc

    rs = parse(rules_text)
    t0 = time.perf_counter()
    table = iptc.Table(iptc.Table.NAT)
    table.refresh()
    table.autocommit = False
    for name in rs.chains("nat"):
        if not table.is_chain(name):
            table.create_chain(name)
    for name, rules in rs.chains("nat").items():
        chain = iptc.Chain(table, name)
        for r in rules:
            rule = iptc.Rule()
            if r.dst:
                rule.dst = r.dst
            if r.proto:
                rule.protocol = r.proto
                if r.dport:
                    m = rule.create_match(r.proto)
                    m.dport = str(r.dport)
            if r.probability is not None:
                m = rule.create_match("statistic")
                m.mode, m.probability = "random", str(r.probability)
            if r.target == "DNAT":
                t = rule.create_target("DNAT")
                t.to_destination = r.to_destination
            elif r.target == "MARK":
                t = rule.create_target("MARK")
                t.set_xmark = "0x4000/0x4000"
            elif r.target:
                rule.create_target(r.target)
            chain.append_rule(rule)
    table.commit()
    table.autocommit = True
    return time.perf_counter() - t0


def run_iptc(n: int, eps: int, ns: str) -> dict:
    objs = objects(n, eps)
    opts = RenderOptions(cluster_cidr="10.0.0.0/8", node_addresses=NODE.addresses)
    st = IncrementalExpander(NODE).expand(objs, None)
    from lbcore_iptables.render import assemble

    text = assemble(render_all(st, opts), opts).split("*nat\n", 1)[1]
    text = "*nat\n" + text
    drv = IptablesDriver({"netns": ns}, NODE)
    t0 = time.perf_counter()
    drv.ipt.restore(text)
    restore_s = time.perf_counter() - t0
    drv.cleanup()
    import iptc  # noqa: F401 - loaded before the fork
    iptc_s = in_netns(f"/run/netns/{ns}", _iptc_write, text)
    drv.cleanup()
    return {"services": n, "endpoints_each": eps, "iptables_restore_s": round(restore_s, 3),
            "iptc_rule_by_rule_s": round(iptc_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--iptc", type=int, default=1000, help="services for the iptc comparison")
    ap.add_argument("--out", default="docs/results/iptables_scale.json")
    args = ap.parse_args()
    ns = f"lbbench-ipt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    results: dict = {"sizes": [], "iptc": None, "load_before": Path("/proc/loadavg").read_text()}
    try:
        for n in (int(x) for x in args.services.split(",")):
            r = run_size(n, args.endpoints, ns)
            print(json.dumps(r), flush=True)
            results["sizes"].append(r)
        if args.iptc:
            results["iptc"] = run_iptc(args.iptc, args.endpoints, ns)
            print(json.dumps(results["iptc"]), flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
