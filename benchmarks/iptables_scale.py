"""iptables driver at scale: full and partial syncs, timed at the driver's sync() call
and checked in the kernel afterwards with iptables-save.

Run as root: ``.venv/bin/python benchmarks/iptables_scale.py [--services 1000,10000]
[--endpoints 10] [--backends legacy,nft]``.

For each backend and size: N ClusterIP services x E endpoints go through the
incremental expander and the driver into a private network namespace (removed at the
end). Measured, in this order, each as the wall time of ``driver.sync()`` (and, in
``cpu_s``, the CPU seconds of the agent process and the iptables tools it ran):

* ``full_first``: the first full sync, into empty tables;
* ``full_again``: a periodic full sync with nothing changed (every rule rewritten; the
  driver reuses its renders and skips iptables-save in large cluster mode);
* ``partial_endpoint``: one endpoint of one service replaced (partial sync: only that
  service's chains; the shared chains are unchanged and not written);
* ``partial_new_service``: one service added (partial: its chains and KUBE-SERVICES);
* ``cleanup``: every chain and jump removed (``lbcore cleanup``).

After each, ``iptables-save`` must show the change (all KUBE-SEP chains; the new
endpoint and not the old one; the new service's rule). ``--iptc N`` also writes the N
service nat ruleset rule by rule with python-iptables, against one restore. The load
average is recorded with every size (the machine is shared: compare within one run).

Issue #4 targets: full <= 1 s, partial <= 100 ms at 10,000 services x 10 endpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import MappingProxyType

from lbcore.expand import IncrementalExpander
from lbcore.model import ClusterObjects, NodeInfo
from lbcore.netns import in_netns
from lbcore.testing import cluster, endpoint_slice, service
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.render import RenderOptions, render
from lbcore_iptables.ruleset import parse

NODE = NodeInfo("bench-node", ("172.18.0.2",))


def objects(n: int, eps: int, first: int = 0) -> ClusterObjects:
    svcs = [service(f"svc-{i}", f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                    namespace="bench") for i in range(first, first + n)]
    slices = [endpoint_slice(s, [f"10.{(i // 250) % 200 + 1}.{i % 250}.{j + 1}"
                                 for j in range(eps)]) for i, s in enumerate(svcs, first)]
    return cluster(svcs, slices)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def save(ns: str, backend: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", f"iptables-{backend}-save",
                           "-t", "nat"], capture_output=True, text=True, check=True).stdout


CPU: dict[str, float] = {}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the iptables tools)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args, name: str = ""):
    """(result, wall seconds); the CPU seconds go to ``CPU[name]`` (a figure that the
    load of a shared machine inflates less than the wall time)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    if name:
        CPU[name] = round(cpu_seconds() - c0, 3)
    return result, round(time.perf_counter() - t0, 3)


def run_size(n: int, eps: int, ns: str, backend: str) -> dict:
    objs = objects(n, eps)
    drv = IptablesDriver({"netns": ns, "cluster_cidr": "10.0.0.0/8", "backend": backend}, NODE)
    exp = IncrementalExpander(NODE, admit=drv.capabilities().unsupported)
    out: dict = {"backend": backend, "services": n, "endpoints_each": eps,
                 "load_before": loadavg()}
    try:
        st = exp.expand(objs, None)
        res, out["full_first_s"] = timed(drv.sync, st, None, name="full_first")
        out["restore_lines_full"] = res.details["restore_lines"]
        out["large_cluster"] = res.details["large_cluster"] == [4]
        text, out["iptables_save_s"] = timed(save, ns, backend)
        assert text.count("\n:KUBE-SEP-") == n * eps, (text.count("\n:KUBE-SEP-"), n * eps)
        res, out["full_again_s"] = timed(drv.sync, exp.expand(objs, None), None,
                                         name="full_again")
        assert res.full and save(ns, backend).count("\n:KUBE-SEP-") == n * eps
        # one endpoint of svc-7 replaced by a new address
        key = next(k for k in objs.services if k.name == "svc-7")
        old = objs.slices[key][0]
        ips = [*(e.addresses[0] for e in old.endpoints[1:]), "10.250.250.250"]
        slices = dict(objs.slices)
        slices[key] = (endpoint_slice(objs.services[key], ips),)
        objs = ClusterObjects(objs.services, MappingProxyType(slices), objs.nodes)
        res, out["partial_endpoint_s"] = timed(drv.sync, exp.expand(objs, frozenset({key})),
                                               frozenset({key}), name="partial_endpoint")
        assert not res.full
        out["restore_lines_partial_endpoint"] = res.details["restore_lines"]
        text = save(ns, backend)
        assert "--to-destination 10.250.250.250:8080" in text
        assert f"--to-destination {old.endpoints[0].addresses[0]}:8080" not in text
        # one service added
        extra = objects(1, eps, first=n)
        new_key = next(iter(extra.services))
        objs = ClusterObjects(MappingProxyType({**objs.services, **extra.services}),
                              MappingProxyType({**objs.slices, **extra.slices}), objs.nodes)
        res, out["partial_new_service_s"] = timed(
            drv.sync, exp.expand(objs, frozenset({new_key})), frozenset({new_key}),
            name="partial_new_service")
        assert not res.full
        out["restore_lines_partial_new_service"] = res.details["restore_lines"]
        assert f'"{new_key} cluster IP"' in save(ns, backend)
        out["load_after"] = loadavg()
        out["cpu_s"] = dict(CPU)
    finally:
        print(json.dumps(out), flush=True)  # what was measured, also if a step failed
        _, out["cleanup_s"] = timed(drv.cleanup)
        assert "KUBE-" not in save(ns, backend)
    return out


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
    st = IncrementalExpander(NODE).expand(objects(n, eps), None)
    opts = RenderOptions(cluster_cidr="10.0.0.0/8", node_addresses=NODE.addresses)
    text = "*nat\n" + render(st, opts).split("*nat\n", 1)[1]
    drv = IptablesDriver({"netns": ns}, NODE)
    _, restore_s = timed(drv.ipt.restore, text)
    drv.cleanup()
    import iptc  # noqa: F401 - loaded before the fork
    iptc_s = in_netns("iptables", f"/run/netns/{ns}", _iptc_write, text)
    drv.cleanup()
    return {"services": n, "endpoints_each": eps, "iptables_restore_s": restore_s,
            "iptc_rule_by_rule_s": round(iptc_s, 3), "load": loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--backends", default="legacy,nft")
    ap.add_argument("--iptc", type=int, default=0, help="services for the iptc comparison")
    ap.add_argument("--out", default="docs/results/iptables_scale.json")
    args = ap.parse_args()
    results: dict = {"command": " ".join(sys.argv), "sizes": [], "iptc": None}
    for backend in args.backends.split(","):
        for n in (int(x) for x in args.services.split(",")):
            ns = f"lbbench-ipt-{uuid.uuid4().hex[:6]}"  # a fresh namespace per run
            subprocess.run(["ip", "netns", "add", ns], check=True)
            try:
                r = run_size(n, args.endpoints, ns, backend)
                if args.iptc and backend == "legacy" and results["iptc"] is None:
                    results["iptc"] = run_iptc(args.iptc, args.endpoints, ns)
                    print(json.dumps(results["iptc"]), flush=True)
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
            print(json.dumps({"cleanup_s": r["cleanup_s"]}), flush=True)
            results["sizes"].append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
