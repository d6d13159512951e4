"""The socket-LB topology: node, client pod and K backend pods on one bridge."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netns import NetLab, Netns
from .procs import Proc


@dataclass(eq=False)
class Pod:
    """A namespace plugged into the lab bridge with one IPv4 and one IPv6 address."""

    name: str
    ns: Netns
    ipv4: str
    ipv6: str
    ifname: str = "eth0"

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ipv4, self.ipv6)


@dataclass(eq=False)
class SockLBLab:
    """Node + client pod + K backend pods on one bridge (in its own switch namespace).

    ``clients_cgroup`` is where client processes run: the cgroup the socklb driver
    attaches to. Backend servers run in ``servers_cgroup`` (a sibling, not attached).
    """

    lab: NetLab
    switch: Netns
    bridge: str
    node: Pod
    client: Pod
    backends: list[Pod]
    clients_cgroup: Path
    servers_cgroup: Path
    bpffs: Path
    subnet4: str = "10.244.0.0/24"
    subnet6: str = "fd00:10:244::/64"
    servers: list[Proc] = field(default_factory=list)

    def driver_options(self) -> dict[str, str]:
        """socklb ``driver_options`` for this lab: attach to the clients cgroup, pin maps
        in the lab's private bpffs."""
        return {"cgroup_path": str(self.clients_cgroup), "bpffs_path": str(self.bpffs)}

    # client side: client namespace + clients cgroup
    def client_run(self, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cgroup", self.clients_cgroup)
        return self.lab.run(self.client.ns, cmd, **kw)

    def client_spawn(self, cmd: Sequence[str], **kw) -> Proc:
        kw.setdefault("cgroup", self.clients_cgroup)
        return self.lab.spawn(self.client.ns, cmd, **kw)

    def curl(self, url: str, **kw) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cgroup", self.clients_cgroup)
        return self.lab.curl(self.client.ns, url, **kw)

    def udp_request(self, host: str, port: int, data: str = "ping", **kw) -> dict | None:
        kw.setdefault("cgroup", self.clients_cgroup)
        return self.lab.udp_request(self.client.ns, host, port, data, **kw)

    def dig(
        self, server: str, qname: str = "who.test", qtype: str = "TXT", **kw
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cgroup", self.clients_cgroup)
        return self.lab.dig(self.client.ns, server, qname, qtype, **kw)

    # backend side: servers cgroup; all backends start in parallel
    def _started(self, procs: list[Proc], port: int, proto: str) -> list[Proc]:
        self.servers += procs
        for p in procs:
            self.lab.wait_listening(p, port, proto)
        return procs

    def start_http_backends(self, port: int = 80) -> list[Proc]:
        """``GET /`` on every backend answers ``backend=<name>\\n`` (see NetLab.http_server)."""
        return self._started(
            [
                self.lab.http_server(b.ns, b.name, port, wait=False, cgroup=self.servers_cgroup)
                for b in self.backends
            ],
            port,
            "tcp",
        )

    def start_udp_backends(self, port: int = 5353) -> list[Proc]:
        """Every backend answers a datagram with ``backend=<name> client=IP:PORT``."""
        return self._started(
            [
                self.lab.udp_server(b.ns, b.name, port, wait=False, cgroup=self.servers_cgroup)
                for b in self.backends
            ],
            port,
            "udp",
        )

    def start_dns_backends(self, port: int = 53) -> list[Proc]:
        """dnsmasq on every backend: ``TXT who.test`` = ``"backend=<name>"`` and
        ``A/AAAA who.test`` = that backend's own addresses."""
        return self._started(
            [
                self.lab.dnsmasq(
                    b.ns,
                    b.name,
                    b.ips,
                    port=port,
                    wait=False,
                    records={"who.test": b.ips},
                    cgroup=self.servers_cgroup,
                )
                for b in self.backends
            ],
            port,
            "udp",
        )


def build_socklb_lab(lab: NetLab, backends: int = 3, *, client: str = "client") -> SockLBLab:
    """The socket-LB topology (about 0.3 s for 3 backends)::

    switch ns: br0 ── node (10.244.0.1, fd00:10:244::1)
                   ── client (10.244.0.10, fd00:10:244::10)
                   ── backend-i (10.244.0.(100+i), fd00:10:244::(100+i))

    ``client`` names the client pod (and its namespace), e.g. ``net`` as in Cilium's
    walkthrough.
    """
    if not 1 <= backends <= 100:
        raise ValueError("backends must be 1..100")
    switch = lab.netns("sw")
    br = lab.bridge(switch)

    def pod(name: str, host: int) -> Pod:
        ns = lab.netns(name)
        p = Pod(name, ns, f"10.244.0.{host}", f"fd00:10:244::{host}")
        lab.plug(ns, p.ifname, switch, br)
        ns.add_addr(p.ifname, f"{p.ipv4}/24")
        ns.add_addr(p.ifname, f"{p.ipv6}/64")
        return p

    node = pod("node", 1)
    client_pod = pod(client, 10)
    pods = [pod(f"backend-{i}", 100 + i) for i in range(backends)]
    return SockLBLab(
        lab=lab,
        switch=switch,
        bridge=br,
        node=node,
        client=client_pod,
        backends=pods,
        clients_cgroup=lab.cgroup("clients"),
        servers_cgroup=lab.cgroup("servers"),
        bpffs=lab.bpffs(),
    )
