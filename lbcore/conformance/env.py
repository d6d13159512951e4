"""The shared cluster a driver's conformance scenarios run on, and the verbs they use.

One :class:`ConformanceEnv` per driver: a 3-node lab cluster (control-plane, worker,
worker2), a client pod ``client`` on ``worker``, backend pods ``a`` (worker), ``b``
(worker2) and ``c`` (control-plane) each serving HTTP on 80/8080/8081/5300 and UDP on
5300, an "external" host ``ext`` on the node network (a namespace on the bridge that is
no node), and one ``lbcore run`` agent per node. Scenarios add their own Services, whose
selectors are labels set on the pods, and remove them when done.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..driver import Capabilities
from ..lab import NetLab, Netns
from ..lab.agents import start_agents, stop_agents
from ..lab.cluster import Cluster, ClusterPod
from ..lab.controller import EndpointController, ServicePortSpec, ServiceSpec
from .model import Failed

T = TypeVar("T")
OptionsFn = Callable[[Cluster, Any], dict[str, Any]]

# Lab-specific driver_options of drivers that need more than "program the namespace you
# run in" (socklb's are built into lbcore.lab.agents). Everything stays inside the lab.
LAB_OPTIONS: dict[str, OptionsFn] = {
    "tcnodeport": lambda cluster, node: {"devices": ["eth0"],
                                         "bpffs_path": str(cluster.bpffs / node.name)},
}
HTTP_PORTS = (80, 8080, 8081, 5300)
UDP_PORT = 5300
EXTERNAL_IP = "172.18.0.200"
READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}

# count requests (TCP: GET /whoami; UDP: one datagram), optionally from a fixed source
# port, ``gap`` seconds apart. One JSON line: [{"backend", "client_ip"} | {"error", "secs"}]
_CLIENT = textwrap.dedent(
    """
    import errno, json, socket, sys, time
    proto, host, port, count, timeout, sport, gap = sys.argv[1:8]
    port, count, timeout, sport, gap = int(port), int(count), float(timeout), int(sport), float(gap)
    out = []
    for i in range(count):
        if i and gap:
            time.sleep(gap)
        t0 = time.monotonic()
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(timeout)
        try:
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", sport))
            if proto == "tcp":
                s.connect((host, port))
                s.sendall(b"GET /whoami HTTP/1.0\\r\\n\\r\\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                who = json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])
                out.append({"backend": who["backend"], "client_ip": who["client_ip"]})
            else:
                s.sendto(b"ping", (host, port))
                name, client = s.recvfrom(65535)[0].decode().split()
                out.append({"backend": name.split("=", 1)[1],
                            "client_ip": client.split("=", 1)[1].rsplit(":", 1)[0]})
        except OSError as e:
            err = errno.errorcode.get(e.errno, "") if e.errno else "TIMEOUT"
            out.append({"error": err or str(e), "secs": round(time.monotonic() - t0, 3)})
        finally:
            s.close()
    print(json.dumps(out))
    """
)


@dataclass(frozen=True)
class Client:
    """Where a request comes from: a pod, a node's own namespace, or outside."""

    kind: str  # "pod" | "host" | "external"
    name: str
    ns: Netns
    cgroup: Path
    ip: str


class ConformanceController(EndpointController):
    """The lab's controller plus what scenarios need beyond it: extra Service spec
    fields (affinity, traffic policies) and per-pod endpoint conditions."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.spec_extra: dict[tuple[str, str], dict[str, Any]] = {}
        self.conditions: dict[str, dict[str, bool]] = {}  # pod name -> conditions

    def documents(self) -> list[dict[str, Any]]:
        docs = super().documents()
        for doc in docs:
            meta = doc["metadata"]
            if doc["kind"] == "Service":
                doc["spec"].update(self.spec_extra.get((meta["namespace"], meta["name"]), {}))
            elif doc["kind"] == "EndpointSlice":
                for ep in doc["endpoints"]:
                    ep["conditions"] = dict(self.conditions.get(ep["targetRef"]["name"], READY))
        return docs


class ConformanceEnv:
    """The cluster, pods and agents of one driver's conformance run."""

    def __init__(self, lab: NetLab, cluster: Cluster, driver: str, caps: Capabilities) -> None:
        self.lab, self.cluster, self.driver, self.caps = lab, cluster, driver, caps
        self.controller = ConformanceController(cluster)
        cluster.controller = self.controller
        self.clients: dict[str, Client] = {}
        self.agents: list[Any] = []

    # ------------------------------------------------------------------ building

    @classmethod
    def create(cls, lab: NetLab, driver: str, caps: Capabilities) -> ConformanceEnv:
        env = cls(lab, Cluster.create(lab, 3), driver, caps)
        env._build()
        return env

    def _build(self) -> None:
        cluster = self.cluster
        client = cluster.add_pod("client", "worker")
        cluster.http_server(client, "", 80)  # for hairpin: the client is its own backend
        for name, node in (("a", "worker"), ("b", "worker2"), ("c", "control-plane")):
            pod = cluster.add_pod(name, node)
            for port in HTTP_PORTS:
                cluster.http_server(pod, "", port)
            pod.procs.append(self.lab.udp_server(pod.ns, name, UDP_PORT, cgroup=pod.cgroup))
        worker = cluster.node("worker")
        ext = self.lab.netns("ext")
        self.lab.plug(ext, "eth0", cluster.switch, cluster.bridge)
        ext.add_addr("eth0", f"{EXTERNAL_IP}/16")
        self.clients = {
            "pod": Client("pod", "client", client.ns, client.cgroup, client.ipv4),
            "host": Client("host", "worker", worker.ns, self.lab.cgroup("worker/host"),
                           worker.ipv4),
            "external": Client("external", "ext", ext, self.lab.cgroup("ext"), EXTERNAL_IP),
        }
        self.controller.write()
        try:
            self.agents = start_agents(cluster, [self.driver], options=LAB_OPTIONS)
        except BaseException:
            stop_agents(cluster)  # and `lbcore cleanup` on each node: nothing left behind
            raise

    def close(self) -> list[str]:
        """Stop the agents and run the driver's cleanup; the lab is closed by its owner."""
        return stop_agents(self.cluster, self.agents) if self.agents else []

    # --------------------------------------------------------------- services

    def pod(self, name: str) -> ClusterPod:
        return self.cluster.pod(name)

    def service(self, name: str, ports: Sequence[tuple[int, str] | tuple[int, str, int]], *,
                backends: Iterable[str] = (), type: str = "ClusterIP",
                labels: Mapping[str, str] | None = None, **spec: Any) -> ServiceSpec:
        """Add (or replace) Service ``name`` with ``ports`` = (port, proto[, nodePort])
        selecting ``backends`` (pod names); ``spec`` adds raw Service spec fields."""
        self.select(name, backends, write=False)
        self.controller.spec_extra[("default", name)] = dict(spec)
        old = self.controller.services.get(("default", name))
        svc = ServiceSpec(
            name, {f"conf-{name}": "y"},
            tuple(ServicePortSpec(p[0], p[0], p[1], p[2] if len(p) > 2 else None,  # type: ignore[misc]
                                  f"{p[1].lower()}-{p[0]}") for p in ports),
            type=type, labels=dict(labels or {}), cluster_ips=old.cluster_ips if old else (),
        )
        return self.controller.add_service(svc, dual_stack=False)

    def select(self, name: str, backends: Iterable[str], *, write: bool = True) -> None:
        """Make exactly ``backends`` (pod names) carry Service ``name``'s selector label."""
        want = set(backends)
        for pod in self.cluster.pods.values():
            if pod.name in want:
                pod.labels[f"conf-{name}"] = "y"
            else:
                pod.labels.pop(f"conf-{name}", None)
        if write:
            self.controller.write()

    def set_conditions(self, pod: str, conditions: Mapping[str, bool] | None) -> None:
        if conditions is None:
            self.controller.conditions.pop(pod, None)
        else:
            self.controller.conditions[pod] = dict(conditions)
        self.controller.write()

    def remove_service(self, name: str) -> None:
        self.controller.spec_extra.pop(("default", name), None)
        self.select(name, (), write=False)
        self.controller.remove_service("default", name)

    def reset(self) -> None:
        """Remove every Service and condition a scenario left."""
        for _ns, name in list(self.controller.services):
            self.remove_service(name)
        self.controller.conditions.clear()
        self.controller.write()

    def node_ips(self) -> list[str]:
        return [n.ipv4 for n in self.cluster.nodes.values()]

    # ---------------------------------------------------------------- traffic

    def requests(self, client: str | Client, ip: str, port: int, *, proto: str = "tcp",
                 count: int = 1, timeout: float = 1.0, sport: int = 0,
                 gap: float = 0.0) -> list[dict[str, Any]]:
        c = self.clients[client] if isinstance(client, str) else client
        cmd = [sys.executable, "-I", "-S", "-c", _CLIENT, proto, ip, str(port), str(count),
               str(timeout), str(sport), str(gap)]
        r = self.lab.run(c.ns, cmd, cgroup=c.cgroup, timeout=count * (timeout + gap) + 10)
        if r.returncode != 0:
            raise Failed(f"client in {c.name} crashed: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout)

    def hits(self, client: str | Client, ip: str, port: int, *, count: int = 16,
             **kw: Any) -> Counter[str]:
        """Backends that answered ``count`` requests; any failed request fails."""
        res = self.requests(client, ip, port, count=count, **kw)
        errors = Counter(r["error"] for r in res if "error" in r)
        if errors:
            raise Failed(f"{sum(errors.values())}/{count} requests to {ip}:{port} failed: "
                         f"{dict(errors)}")
        return Counter(r["backend"] for r in res)

    def fails(self, client: str | Client, ip: str, port: int, **kw: Any) -> dict[str, Any]:
        """One request that must fail; returns its error (raises if it was answered)."""
        (res,) = self.requests(client, ip, port, count=1, **kw)
        if "error" not in res:
            raise Failed(f"{ip}:{port} answered by {res['backend']}, expected no answer")
        return res

    def until(self, what: str, fn: Callable[[], T], timeout: float = 15.0) -> T:
        """``fn()`` until it returns without raising ``Failed`` (the agents converge)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except Failed as exc:
                if time.monotonic() > deadline:
                    raise Failed(f"{what}: not within {timeout:.0f}s: {exc}") from None
            time.sleep(0.3)

    def expect_backends(self, client: str | Client, ip: str, port: int, want: set[str], *,
                        timeout: float = 15.0, count: int = 16, **kw: Any) -> str:
        """Until ``count`` requests are answered by exactly the backends ``want``."""

        def check() -> str:
            got = self.hits(client, ip, port, count=count, **kw)
            if set(got) != want:
                raise Failed(f"answered by {dict(got)}, want exactly {sorted(want)}")
            return f"{ip}:{port} -> {dict(sorted(got.items()))}"

        return self.until(f"{ip}:{port} served by {sorted(want)}", check, timeout)

    def expect_refused(self, client: str | Client, ip: str, port: int, *,
                       timeout: float = 15.0, errors: Iterable[str] | None = None,
                       fast: float | None = None, **kw: Any) -> str:
        """Until a request fails (with one of ``errors``, within ``fast`` seconds)."""
        allowed = set(errors) if errors is not None else None

        def check() -> str:
            res = self.fails(client, ip, port, **kw)
            if allowed is not None and res["error"] not in allowed:
                raise Failed(f"failed with {res['error']}, want one of {sorted(allowed)}")
            if fast is not None and res["secs"] > fast:
                raise Failed(f"failed after {res['secs']}s, want < {fast}s")
            return f"{ip}:{port} -> {res['error']} in {res['secs']}s"

        return self.until(f"{ip}:{port} not served", check, timeout)
