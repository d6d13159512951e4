"""The soak's cluster (:mod:`.soak`): backends, clients, the loaded Services, the
churn of the objects file, and the fresh-connection load client.

::

    client pod (control-plane) ──▶ api ClusterIP :8080 ─┐
    client pod or outside host ──▶ web NodePort :30080 ─┼──▶ web-0..web-3 (nginx, two per
                                                        │    node; never stopped)
    churn (every 100 ms): endpoints of web/api added / removed / replaced (never fewer
    than one), idle Services created / deleted / reselected
"""

from __future__ import annotations

import random
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass

from ..lab import NetLab
from ..lab.addressing import cluster_ips
from ..lab.cluster import Cluster
from ..lab.controller import ServicePortSpec, ServiceSpec

WEB_NODE_PORT = 30080
API_PORT = 8080
BACKENDS = 4  # nginx pods, two per node; they never stop

# A fresh TCP connection per request at a fixed rate; a summary line every 10 s and
# a final JSON line: {"ok", "failed", "errors": {kind: n}, "first_failures": [...]}.
LOAD_CLIENT = textwrap.dedent("""\
    import errno, json, socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    rate, seconds = float(sys.argv[3]), float(sys.argv[4])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    req = ("GET / HTTP/1.1\\r\\nHost: soak\\r\\nConnection: close\\r\\n\\r\\n").encode()
    ok = failed = 0
    errors, first, backends = {}, [], {}
    start = time.monotonic()
    next_at, report = start, start + 10
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += 1.0 / rate
        t0 = time.monotonic()
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(2.0)
            try:
                s.connect((host, port))
                s.sendall(req)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            finally:
                s.close()
            if not data.startswith(b"HTTP/1.1 200") or b"backend=" not in data:
                raise ValueError("bad answer: %r" % data[:60])
            ok += 1
            name = data.split(b"backend=", 1)[1].split(b"\\n", 1)[0].decode()
            backends[name] = backends.get(name, 0) + 1
        except (OSError, ValueError) as e:
            failed += 1
            kind = (errno.errorcode.get(e.errno, str(e.errno)) if getattr(e, "errno", None)
                    else type(e).__name__)
            errors[kind] = errors.get(kind, 0) + 1
            if len(first) < 20:
                first.append({"t": round(t0 - start, 3), "wall": round(time.time(), 3),
                              "error": kind, "detail": str(e)[:80]})
        if time.monotonic() >= report:
            report += 10
            print(json.dumps({"progress": round(time.monotonic() - start, 1), "ok": ok,
                              "failed": failed}), flush=True)
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "first_failures": first,
                      "backends": backends}), flush=True)
""")


@dataclass
class Target:
    """One loaded frontend and where its clients run."""

    name: str  # "web NodePort", "api ClusterIP"
    host: str
    port: int
    where: str  # "pod" or "external"


class SoakCluster:
    """Two nodes, four nginx backends, a client pod, an outside host, the loaded
    Services ``web`` (NodePort) and ``api`` (ClusterIP) and the idle ones."""

    def __init__(self, lab: NetLab, seed: int) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.cluster = Cluster.create(lab, 2)  # control-plane, worker
        self.backends = []
        for i in range(BACKENDS):
            node = "control-plane" if i % 2 else "worker"
            pod = self.cluster.add_pod(f"web-{i}", node, {"app": "web", "bk": f"web-{i}"})
            lab.nginx(pod.ns, pod.name, 80, cgroup=pod.cgroup)
            self.backends.append(pod)
        self.client = self.cluster.add_pod("client", "control-plane", {"run": "client"})
        self.outside = lab.netns("outside")
        lab.plug(self.outside, "eth0", self.cluster.switch, self.cluster.bridge)
        self.outside.add_addr("eth0", "172.18.0.250/16")
        ctl = self.cluster.controller
        self.loaded: dict[str, set[str]] = {"web": set(), "api": set()}
        for name in self.loaded:  # both start with two endpoints
            for pod in self.rng.sample(self.backends, 2):
                self._select(name, pod.name, True)
        self.web = ctl.add_service(ServiceSpec(
            "web", {"soak-web": "y"}, (ServicePortSpec(80, 80, node_port=WEB_NODE_PORT),),
            type="NodePort"), dual_stack=False)
        self.api = ctl.add_service(ServiceSpec(
            "api", {"soak-api": "y"}, (ServicePortSpec(API_PORT, 80),)), dual_stack=False)
        self.idle: dict[str, int] = {}  # idle service name -> its number
        self._next_idle = 0

    def targets(self, driver: str) -> list[Target]:
        """The loaded frontends this driver serves, each with a client kind it serves."""
        from ..driver import Capabilities
        from ..model import FrontendType
        from ..plugins import DRIVERS, PluginRegistry, load_driver_class

        caps: Capabilities = load_driver_class(PluginRegistry(DRIVERS), driver).capabilities()
        clients = caps.served_clients()
        out = []
        if FrontendType.CLUSTER_IP in caps.frontend_types and "pod" in clients:
            out.append(Target("api ClusterIP", self.api.cluster_ip, API_PORT, "pod"))
        if FrontendType.NODE_PORT in caps.frontend_types:
            where = "external" if "external" in clients else "pod"
            out.append(Target("web NodePort", self.client.node.ipv4, WEB_NODE_PORT, where))
        return out

    # --------------------------------------------------------------- churn

    def _select(self, service: str, pod: str, on: bool) -> None:
        labels = next(p for p in self.backends if p.name == pod).labels
        if on:
            labels[f"soak-{service}"] = "y"
            self.loaded[service].add(pod)
        else:
            labels.pop(f"soak-{service}", None)
            self.loaded[service].discard(pod)

    def churn_once(self, max_idle: int) -> str:
        """One change of the objects, written to the file; returns what it was."""
        choices: list[tuple[str, str]] = []
        for svc, chosen in self.loaded.items():
            if self._spare(svc):
                choices += [(svc, "endpoint added"), (svc, "endpoint replaced")]
            if len(chosen) > 1:
                choices.append((svc, "endpoint removed"))
        if len(self.idle) < max_idle:
            choices.append(("idle", "service created"))
        if self.idle:
            choices += [("idle", "service deleted"), ("idle", "endpoints changed")]
        svc, what = self.rng.choice(choices)
        if svc == "idle":
            {"service created": self._create_idle, "service deleted": self._delete_idle,
             "endpoints changed": self._reselect_idle}[what]()
        else:
            chosen = sorted(self.loaded[svc])
            if what != "endpoint removed":
                self._select(svc, self.rng.choice(self._spare(svc)), True)
            if what != "endpoint added":
                self._select(svc, self.rng.choice(chosen), False)
        assert all(self.loaded.values()), "a loaded service lost its last endpoint"
        self.cluster.controller.write()
        return f"{svc} {what}"

    def _spare(self, service: str) -> list[str]:
        return sorted({p.name for p in self.backends} - self.loaded[service])

    def _create_idle(self) -> None:
        n = self._next_idle
        self._next_idle += 1
        name = f"idle-{n}"
        selector = {"bk": self.rng.choice(self.backends).name}
        port = self.rng.choice([80, 443, 8443, 9000 + n % 100])
        taken = {ip for svc in self.cluster.controller.services.values()
                 for ip in svc.cluster_ips}
        v4, _ = cluster_ips("idle", name, taken)
        svc = ServiceSpec(name, selector, (ServicePortSpec(port, 80),), namespace="idle",
                          cluster_ips=(v4,))
        self.cluster.controller.services[("idle", name)] = svc
        self.idle[name] = n

    def _delete_idle(self) -> None:
        name = self.rng.choice(sorted(self.idle))
        del self.idle[name]
        del self.cluster.controller.services[("idle", name)]

    def _reselect_idle(self) -> None:
        name = self.rng.choice(sorted(self.idle))
        old = self.cluster.controller.services[("idle", name)]
        selector = self.rng.choice([{"app": "web"}, {"bk": self.rng.choice(self.backends).name}])
        self.cluster.controller.services[("idle", name)] = ServiceSpec(
            **{**old.__dict__, "selector": selector})


class Churner(threading.Thread):
    """Calls ``churn_once`` every ``interval`` seconds until stopped; counts kinds."""

    def __init__(self, cluster: SoakCluster, interval: float, max_idle: int) -> None:
        super().__init__(name="soak-churn", daemon=True)
        self.cluster, self.interval, self.max_idle = cluster, interval, max_idle
        self.stop_event = threading.Event()
        self.kinds: Counter[str] = Counter()
        self.error: str | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.kinds[self.cluster.churn_once(self.max_idle)] += 1
                next_at += self.interval
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # reported in the results, never silently
            self.error = f"{type(exc).__name__}: {exc}"



def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
