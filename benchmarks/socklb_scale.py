"""socklb at scale: sync cost, endpoint-change latency, agent memory, connect() cost.

Run as root: ``.venv/bin/python benchmarks/socklb_scale.py [--services 10000]``.

Everything goes through the real agent (tracker, incremental expansion, capability
filter, driver) into real pinned maps, in a private cgroup, bpffs and network
namespace that are removed at the end. Measures (issue #2 targets in brackets):

* full sync of N services x 10 backends into empty maps            [<= 2 s]
* a second full sync (reconcile against the kernel, nothing to write)
* one endpoint change: from the new snapshot reaching the agent until the new
  backend is read back from the kernel map; p50/p99 over --changes   [p99 <= 50 ms]
* agent peak RSS (the benchmark process is the agent)                [<= 300 MB]
* connect() latency to a service with 1 and with N services programmed,
  interleaved rounds, median of each round's median                   [within 5 %]

The snapshot is built in memory (``lbcore.testing.MemorySource``): parsing a
10,000-service YAML file is the file source's cost, reported separately.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

from lbcore.config import Config, RunnerConfig
from lbcore.loop import Agent
from lbcore.model import ClusterObjects, FrontendAddress, NodeInfo, ServiceKey
from lbcore.plugins import GuardedDriver
from lbcore.testing import MemorySource, cluster, endpoint_slice, service
from lbcore_socklb.driver import SockLBDriver
from lbcore_socklb.maps import words_address

NODE = NodeInfo("bench-node", ("172.18.0.2",))
PROBE_VIP = "10.96.0.1"
PROBE_BACKEND = "10.0.0.5"
BACKEND_PORT = 8080


def service_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def make_objects(services: int, backends: int) -> ClusterObjects:
    """``services`` ClusterIP services x ``backends`` endpoints; one is the probe."""
    svcs, slices = [], []
    for i in range(1, services):
        svc = service(f"svc-{i}", service_ip(i + 1), namespace="bench")
        svcs.append(svc)
        slices.append(endpoint_slice(
            svc, [f"10.{(i // 250) % 200 + 1}.{i % 250}.{j + 1}" for j in range(backends)],
            port=BACKEND_PORT))
    probe = service("probe", PROBE_VIP, namespace="bench")
    slices.append(endpoint_slice(probe, [PROBE_BACKEND], port=BACKEND_PORT))
    return cluster([*svcs, probe], slices)


def with_endpoints(objects: ClusterObjects, key: ServiceKey, ips: list[str]) -> ClusterObjects:
    """``objects`` with one service's endpoints replaced: a new snapshot, as a source gives."""
    slices = dict(objects.slices)
    slices[key] = (endpoint_slice(objects.services[key], ips, port=BACKEND_PORT),)
    return ClusterObjects(objects.services, MappingProxyType(slices), objects.nodes)


@contextlib.contextmanager
def sandbox() -> Iterator[tuple[str, str, str]]:
    tag = f"lbbench-{uuid.uuid4().hex[:6]}"
    cgroup = f"/sys/fs/cgroup/unified/{tag}"
    bpffs = tempfile.mkdtemp(prefix=f"{tag}-", dir="/run")
    os.makedirs(cgroup)
    subprocess.run(["mount", "-t", "bpf", "bpf", bpffs], check=True)
    subprocess.run(["ip", "netns", "add", tag], check=True)
    subprocess.run(["ip", "-n", tag, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-n", tag, "addr", "add", f"{PROBE_BACKEND}/32", "dev", "lo"],
                   check=True)
    try:
        yield cgroup, f"{bpffs}/lbcore", tag
    finally:
        subprocess.run(["ip", "netns", "del", tag], check=False)
        subprocess.run(["umount", bpffs], check=False)
        os.rmdir(bpffs)
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)


# The client closes with SO_LINGER 0 (RST): no TIME_WAIT, so thousands of connects
# per round never wrap the ephemeral ports onto a TIME_WAIT tuple (a ~4 ms stall).
CONNECT_PROBE = r"""
import socket, statistics, struct, sys, time
n = int(sys.argv[1]); out = []
linger = struct.pack("ii", 1, 0)
for _ in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    t0 = time.perf_counter_ns(); s.connect(("VIP", 80)); t1 = time.perf_counter_ns()
    s.close(); out.append(t1 - t0)
print(statistics.median(out[n // 10:]))
""".replace("VIP", PROBE_VIP)


def connect_median_ns(cgroup: str, netns: str, count: int) -> float:
    """Median connect() time of a client in the cgroup and netns (10 % warm-up dropped)."""
    script = (f"echo $$ > {cgroup}/cgroup.procs; exec nsenter --net=/run/netns/{netns} "
              f"{sys.executable} -c '{CONNECT_PROBE}' {count}")
    out = subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def start_listener(netns: str) -> subprocess.Popen:
    code = (
        "import socket\n"
        "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(('{PROBE_BACKEND}',{BACKEND_PORT}));s.listen(4096)\n"
        "while True:\n c,_=s.accept();c.close()\n"
    )
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", code])
    time.sleep(0.3)
    return proc


def kernel_backend_ips(driver: SockLBDriver, frontend: FrontendAddress) -> set[str]:
    """Backends of one frontend, looked up in the live maps (header, slots, backends)."""
    maps = driver._maps
    assert maps is not None
    header = maps.svc[maps._svc_key(frontend, 0)]
    ips = set()
    for slot in range(1, header.count + 1):
        backend_id = maps.svc[maps._svc_key(frontend, slot)].backend_id
        ips.add(words_address(maps.backends[maps.backends.Key(backend_id)].address.words))
    return ips


def endpoint_change_latencies(agent: Agent, driver: SockLBDriver, source: MemorySource,
                              objects: ClusterObjects, rounds: int) -> list[float]:
    """Replace one endpoint of one service; time until the kernel map shows it."""
    key = ServiceKey("bench", "svc-1")
    frontend = FrontendAddress(service_ip(2), 80, "TCP")
    ips = sorted(kernel_backend_ips(driver, frontend))
    latencies = []
    for r in range(rounds):
        ips = [*ips[1:], f"10.250.{r // 250}.{r % 250 + 1}"]
        objects = with_endpoints(objects, key, ips)
        source.put(objects)
        t0 = time.perf_counter()
        agent.refresh()
        agent.sync(full=False)
        seen = kernel_backend_ips(driver, frontend)
        latencies.append(time.perf_counter() - t0)
        assert seen == set(ips), (seen, ips)
    return latencies


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--connects", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    results: dict[str, object] = {"services": args.services, "backends": args.backends,
                                  "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    small = make_objects(1, args.backends)
    big = make_objects(args.services, args.backends)
    with sandbox() as (cgroup, bpffs, netns):
        listener = start_listener(netns)
        driver = SockLBDriver({"cgroup_path": cgroup, "bpffs_path": bpffs}, NODE)
        source = MemorySource(big)
        config = Config(Path("bench.yaml"), "socklb", {}, NODE, "memory", {},
                        RunnerConfig(sync_period=0))
        agent = Agent(config, GuardedDriver(driver), source)
        try:
            t0 = time.perf_counter()
            driver.setup()
            results["setup_s"] = time.perf_counter() - t0
            results["rss_after_setup_mb"] = _rss_mb()
            gc.collect()
            agent.refresh()
            t0 = time.perf_counter()
            agent.sync(full=True)
            results["full_sync_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            agent.sync(full=True)
            results["full_resync_noop_s"] = time.perf_counter() - t0

            lat = endpoint_change_latencies(agent, driver, source, big, args.changes)
            q = statistics.quantiles(lat, n=100)
            results["endpoint_change_ms"] = {"p50": q[49] * 1e3, "p99": q[98] * 1e3,
                                             "max": max(lat) * 1e3}
            results["agent_rss_mb"] = _rss_mb()
            results["agent_peak_rss_mb"] = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

            # connect() with 1 and N services programmed, interleaved rounds.
            per: dict[str, list[float]] = {"1": [], str(args.services): []}
            for _ in range(args.rounds):
                for label, objects in (("1", small), (str(args.services), big)):
                    source.put(objects)
                    agent.refresh()
                    agent.sync(full=True)
                    per[label].append(connect_median_ns(cgroup, netns, args.connects))
            results["connect_median_us"] = {
                k: {"median": statistics.median(v) / 1e3, "min": min(v) / 1e3,
                    "max": max(v) / 1e3} for k, v in per.items()}
            results["connect_ratio_N_over_1"] = (
                statistics.median(per[str(args.services)]) / statistics.median(per["1"]))
        finally:
            driver.cleanup()
            listener.kill()
            listener.wait()
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
