"""Why ew-crr through an iptables ClusterIP decays in ``lbcore bench`` (docs/iptables.md).

Run as root: ``.venv/bin/python benchmarks/iptables_ew_crr.py [--reps 3]
[--client-sysctl net.ipv4.tcp_timestamps=2]``.

Runs lbcore bench's own loop (``Runner``: agents started, control-plane changes, direct
and iptables paths interleaved) for ew-crr with one service, and around every ew-crr
measurement records: conntrack -S deltas and TCP states on the client's node, a capture
of SYNs/RSTs on the client pod (SYNs sent again with the same sequence number are
retransmissions), and the backends' TIME_WAIT/PAWS counters (nstat). With
``--client-sysctl net.ipv4.tcp_timestamps=2`` (timestamps without per-destination
random offsets) the decay should disappear.
"""

from __future__ import annotations

import argparse
import collections
import os

from lbcore.bench.env import BenchCluster
from lbcore.bench.runner import Results, Runner, Settings, machine_info
from lbcore.lab import NetLab
from lbcore.lab.capture import Capture


def conntrack_stats(ns) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for line in ns.run(["conntrack", "-S"]).stdout.splitlines():
        for kv in line.split()[1:]:
            key, _, value = kv.partition("=")
            total[key] += int(value) if value.isdigit() else 0
    return total


def tcp_states(ns) -> dict[str, int]:
    states: collections.Counter = collections.Counter()
    for line in ns.run(["conntrack", "-L", "-p", "tcp"]).stdout.splitlines():
        states[line.split()[3]] += 1
    return dict(states)


def nstat(bench: BenchCluster, pod) -> dict[str, int]:
    out = bench.cluster.run(pod, ["nstat", "-az"]).stdout.splitlines()[1:]
    return {f[0]: int(f[1]) for f in (line.split() for line in out) if len(f) > 1}


class Instrumented(Runner):
    def measure(self, path: str, scenario: str, seconds: float) -> dict[str, float]:
        if scenario != "ew-crr":
            return super().measure(path, scenario, seconds)
        node = self.b.client.node.ns
        ct0, tcp0 = conntrack_stats(node), [nstat(self.b, p) for p in self.b.backends]
        with Capture(self.b.lab, self.b.client.ns, "eth0",
                     ["tcp[tcpflags] & (tcp-syn|tcp-rst) != 0"]) as cap:
            out = super().measure(path, scenario, seconds)
        ct1, tcp1 = conntrack_stats(node), [nstat(self.b, p) for p in self.b.backends]
        syns = collections.Counter((p.sport, p.line.split("seq ")[1].split(",")[0])
                                   for p in cap.packets if p.flags == "S")
        paws = [t1.get("TcpExtPAWSTimewait", 0) - t0.get("TcpExtPAWSTimewait", 0)
                for t0, t1 in zip(tcp0, tcp1, strict=True)]
        print(f"{path:9s} {out['rate']:6.0f} conn/s | SYNs {sum(syns.values())}, "
              f"retransmitted {sum(n - 1 for n in syns.values() if n > 1)}, "
              f"RSTs {sum(1 for p in cap.packets if 'R' in p.flags)} | backends' PAWS "
              f"rejects in TIME_WAIT {paws} | conntrack -S delta "
              f"{ {k: ct1[k] - ct0[k] for k in ct1 if ct1[k] != ct0[k]} } | "
              f"states {tcp_states(node)} | load {os.getloadavg()[0]:.1f}", flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2)
    ap.add_argument("--client-sysctl", action="append", default=[])
    args = ap.parse_args()
    with NetLab() as lab:
        bench = BenchCluster.build(lab)
        for setting in args.client_sysctl:
            print(bench.cluster.run(bench.client, ["sysctl", "-w", setting]).stdout.strip())
        settings = Settings(["iptables"], ["ew-crr"], [1], reps=args.reps,
                            duration=args.duration)
        results = Results({}, machine_info())
        try:
            Instrumented(bench, settings, results).run()
        finally:
            bench.stop()
        if results.errors:
            print("errors:", results.errors)


if __name__ == "__main__":
    main()
