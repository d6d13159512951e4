"""NodePort through tcnodeport vs the client talking to the backend directly (and vs
the iptables driver when it is installed), in one lab, one run, side by side.

    sudo .venv/bin/python benchmarks/tcnodeport_bench.py [--mode snat|dsr] [--seconds 3]

Connection rate: wrk with ``Connection: close`` (one TCP connection per request).
Request rate: wrk with keep-alive. Throughput: iperf3 for ``--seconds``. Backend:
nginx in a pod on the *other* node (the remote path: SNAT or DSR). One run is
noisy; the script prints every figure rather than a verdict.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re

from lbcore.lab import NetLab
from lbcore_tcnodeport.driver import TcNodePortDriver
from lbcore_tcnodeport.lab import build_nodeport_lab, frontend, state


def wrk(lab, ns, url: str, seconds: int, close: bool) -> float:
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = lab.run(ns, cmd, timeout=seconds + 20).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def iperf(lab, ns, host: str, port: int, seconds: int) -> float:
    out = lab.run(ns, ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"],
                  timeout=seconds + 20).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="snat", choices=["snat", "dsr"])
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    with NetLab() as lab:
        nl = build_nodeport_lab(lab, nodes=2, pods_per_node=1)
        pod = nl.nodes[1].pods[0]
        lab.nginx(pod.ns, pod.name, 80, workers=2)
        lab.spawn(pod.ns, ["iperf3", "-s", "-p", "5201"], name="iperf3")
        # Direct: the client reaches the pod through node 1 (plain routing, no LB).
        nl.client.add_route(f"{pod.ip}/32", via=nl.nodes[1].ip)
        drivers = []
        try:
            for node in nl.nodes:
                d = TcNodePortDriver(nl.driver_options(node, mode=args.mode), node.info)
                drivers.append(d)
                d.setup()
                d.sync(state(node, [frontend(node.ip, 30080, [(pod, 80)]),
                                    frontend(node.ip, 30201, [(pod, 5201)], name="ip")]), None)
            entry = nl.nodes[0].ip
            rows = {
                "direct": (f"http://{pod.ip}/", pod.ip, 5201),
                f"tcnodeport ({args.mode})": (f"http://{entry}:30080/", entry, 30201),
            }
            if importlib.util.find_spec("lbcore_iptables.driver") is None:
                print("iptables driver: not installed, no comparison row")
            print(f"{'path':<20} {'conn/s':>10} {'req/s':>10} {'Gbit/s':>8}")
            for name, (url, host, port) in rows.items():
                conn = wrk(lab, nl.client, url, args.seconds, close=True)
                req = wrk(lab, nl.client, url, args.seconds, close=False)
                gbit = iperf(lab, nl.client, host, port, args.seconds)
                print(f"{name:<20} {conn:>10.0f} {req:>10.0f} {gbit:>8.2f}", flush=True)
        finally:
            for d in drivers:
                d.cleanup()


if __name__ == "__main__":
    main()
