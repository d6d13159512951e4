"""The socklb driver end to end: real clients in the lab's client pod, real servers in
its backend pods, and the real ``lbcore`` command line reading Kubernetes YAML.

Every test programs the driver through ``lbcore`` (a subprocess, as a user runs it, or
click's runner in-process where many syncs in a row would each pay a bcc compile) and
then checks what a client actually sees: which backend answered, which address
``getpeername``/``recvfrom`` report, how a connect fails. Teardown always runs the
driver's cleanup before the lab is removed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from lbcore.cli import CliEnv, cli
from lbcore.config import load_config
from lbcore.model import NodeInfo
from lbcore.plugins import GuardedDriver, create_driver
from lbcore_socklb.driver import SockLBDriver

pytestmark = pytest.mark.netns

LBCORE = str(Path(sys.executable).with_name("lbcore"))
HOOKS = (
    "connect4", "connect6", "sendmsg4", "sendmsg6",
    "recvmsg4", "recvmsg6", "getpeername4", "getpeername6",
)  # fmt: skip
MAPS = ("lbc_svc", "lbc_backends", "lbc_revnat", "lbc_sk_revnat", "lbc_affinity",
        "lbc_aff_match")
CHI2_2DOF_P001 = 13.82  # chi-square critical value, 2 degrees of freedom, p = 0.001

VIP = "10.96.0.10"
VIP6 = "fd00:10:96::10"
DNS_VIP = "10.96.0.53"

# --------------------------------------------------------------------------- clients

# N connects in a row, one socket each: GET /whoami, and what the client's own socket
# said about its peer. One JSON line: [{"backend", "local_ip", "peer", ...} | {"error"}].
CONNECT_LOOP = textwrap.dedent(
    """
    import errno, json, socket, sys
    host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    out = []
    for _ in range(count):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            peer, local = s.getpeername()[:2], s.getsockname()[:2]
            s.sendall(b"GET /whoami HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            who = json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])
            out.append({**who, "peer": list(peer), "sock": list(local)})
        except OSError as e:
            out.append({"error": errno.errorcode.get(e.errno, str(e))})
        finally:
            s.close()
    print(json.dumps(out))
    """
)

# Connects to host:port until SIGTERM (every ~5 ms); then prints {"ok", "errors"}.
CONNECT_UNTIL_TERM = textwrap.dedent(
    """
    import errno, json, signal, socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    ok, errors = 0, []
    while not stop:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect((host, port))
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            if b"backend=" in data:
                ok += 1
            else:
                errors.append(f"{time.time():.3f} bad reply {data[-60:]!r}")
        except OSError as e:
            errors.append(f"{time.time():.3f} {errno.errorcode.get(e.errno, e)}")
        finally:
            s.close()
        time.sleep(0.005)
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)
    """
)


def connects(lab, host: str, count: int, port: int = 80, timeout: float = 2) -> list[dict]:
    """``count`` connections from the client pod (one process)."""
    r = lab.client_run(
        [sys.executable, "-I", "-S", "-c", CONNECT_LOOP, host, str(port), str(count),
         str(timeout)],
        timeout=count * timeout + 10,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def backends_hit(results: Iterable[dict]) -> Counter[str]:
    results = list(results)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, f"{len(errors)} of {len(results)} connects failed: {Counter(errors)}"
    return Counter(r["backend"] for r in results)


def connect_errno(lab, host: str, port: int = 80, timeout: float = 1) -> tuple[str, float]:
    """One connect from the client pod: (errno name or "OK", seconds it took)."""
    started = time.monotonic()
    (res,) = connects(lab, host, 1, port, timeout)
    return res.get("error", "OK"), time.monotonic() - started


# ------------------------------------------------------------------- Kubernetes YAML

READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
GONE = {"ready": False, "serving": False, "terminating": True}


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[dict],
    *,
    type: str = "ClusterIP",
    affinity_timeout: int | None = None,
) -> dict:
    family = "IPv6" if ":" in cluster_ip else "IPv4"
    spec: dict[str, Any] = {
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": [family],
        "ipFamilyPolicy": "SingleStack",
        "ports": [{"targetPort": p["port"], **p} for p in ports],
        "selector": {"app": name},
        "sessionAffinity": "None",
        "type": type,
    }
    if type == "NodePort":
        spec["externalTrafficPolicy"] = "Cluster"
    if affinity_timeout is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def endpoint_slice(
    svc: dict, endpoints: Sequence[tuple[str, dict]], *, suffix: str = "x7b2k"
) -> dict:
    """The EndpointSlice of ``svc`` (its ports, target port = port) for
    ``endpoints`` = [(ip, conditions)]."""
    name = svc["metadata"]["name"]
    return {
        "addressType": svc["spec"]["ipFamilies"][0],
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-{suffix}",
            "namespace": "default",
            "generateName": f"{name}-",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": name,
            },
        },
        "endpoints": [
            {"addresses": [ip], "conditions": dict(cond), "nodeName": "node-a"}
            for ip, cond in endpoints
        ],
        "ports": [
            {"name": p.get("name", ""), "port": p["targetPort"], "protocol": p["protocol"]}
            for p in svc["spec"]["ports"]
        ],
    }


def web(endpoints: Iterable[tuple[str, dict]], *, ip: str = VIP, name: str = "web",
        **kw: Any) -> list[dict]:
    """Service ``name`` (TCP ip:80 -> 80) and its slice."""
    svc = service(name, ip, [{"name": "http", "port": 80, "protocol": "TCP"}], **kw)
    return [svc, endpoint_slice(svc, list(endpoints))]


def ready(pods: Iterable[Any], family: int = 4) -> list[tuple[str, dict]]:
    return [(p.ipv4 if family == 4 else p.ipv6, READY) for p in pods]


# ---------------------------------------------------------------------- lbcore helper


@dataclass
class Lbcore:
    """One lbcore installation for the lab: lbcore.yaml + services.yaml in ``dir``."""

    lab: Any
    dir: Path
    options: dict[str, Any]
    _driver: GuardedDriver | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.dir / "lbcore.yaml"

    @property
    def services_file(self) -> Path:
        return self.dir / "services.yaml"

    def write_config(self, **driver_options: Any) -> None:
        self.options = {**self.lab.driver_options(), **driver_options}
        self.config.write_text(yaml.safe_dump({
            "driver": "socklb",
            "driver_options": self.options,
            "node": {"name": "node-a", "addresses": [self.lab.node.ipv4]},
            "source": {"kind": "file", "path": self.services_file.name},
        }))  # fmt: skip

    def write(self, *objects: dict | list[dict]) -> None:
        """services.yaml as ``kubectl get svc,endpointslices -o yaml`` prints it."""
        items = [o for obj in objects for o in (obj if isinstance(obj, list) else [obj])]
        doc = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": items}
        self.services_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    # -- the real CLI, as a user runs it (each call compiles the program: ~1.5 s)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        cmd, rest = args[0], args[1:]
        r = subprocess.run([LBCORE, cmd, "-c", str(self.config), *rest], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"lbcore {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
        return r

    def sync(self) -> None:
        self.cli("sync")

    def services_json_text(self) -> str:
        return self.cli("services", "-o", "json").stdout

    def services(self) -> list[dict]:
        return json.loads(self.services_json_text())

    # -- the same CLI in-process, with one driver kept loaded across calls

    def invoke(self, *args: str) -> Any:
        """``lbcore <cmd> -c CONFIG args`` through click, sharing one loaded driver."""
        if self._driver is None:
            self._driver = create_driver(load_config(self.config))
        env = CliEnv(driver_factory=lambda _config: self._driver)
        cmd, rest = args[0], args[1:]
        return CliRunner().invoke(cli, [cmd, "-c", str(self.config), *rest], obj=env)

    def invoke_sync(self) -> None:
        res = self.invoke("sync")
        assert res.exit_code == 0, (res.output, res.exception)

    def invoke_services(self) -> list[dict]:
        res = self.invoke("services", "-o", "json")
        assert res.exit_code == 0, (res.output, res.exception)
        return json.loads(res.stdout)

    # -- kernel state without compiling anything

    def driver(self) -> SockLBDriver:
        return SockLBDriver(self.options, NodeInfo("node-a", (self.lab.node.ipv4,)))

    def attachments(self) -> dict[str, list[str]]:
        return self.driver().attachments()

    def program_ids(self) -> set[int]:
        """Ids of the programs attached to the cgroup (bpftool, not the driver)."""
        out = subprocess.run(["bpftool", "-j", "cgroup", "show", self.options["cgroup_path"]],
                             capture_output=True, text=True, check=True).stdout
        return {p["id"] for p in json.loads(out or "[]")}

    def pinned(self) -> list[str]:
        bpffs = Path(self.options["bpffs_path"])
        return sorted(p.name for p in bpffs.iterdir()) if bpffs.is_dir() else []

    def cleanup(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        self.driver().cleanup()


@pytest.fixture
def lbcore(lab, tmp_path: Path) -> Iterator[Lbcore]:
    lb = Lbcore(lab, tmp_path, {})
    lb.write_config()
    try:
        yield lb
    finally:
        lb.cleanup()  # detach + unpin before the lab removes cgroup and bpffs


def frontends(services: list[dict]) -> dict[tuple[str, int, str], list[str]]:
    """``services -o json`` -> {(ip, port, proto): [backend ip:port (state)]}."""
    out = {}
    for s in services:
        fe = s["frontend"]
        out[(fe["ip"], fe["port"], fe["protocol"])] = sorted(
            f"{b['ip']}:{b['port']} {b['state']}" for b in s["backends"]
        )
    return out


def names(pods: Iterable[Any]) -> set[str]:
    return {p.name for p in pods}


# ------------------------------------------------------------------------------ tests


def test_preflight_accepts_a_bpffs_mount_point_as_bpffs_path(lab, lbcore):
    # the lab's bpffs_path is a bpffs mount itself, not a directory below one
    problems = lbcore.driver().check()
    assert problems == []


def test_clusterip_spreads_600_connects_over_all_backends(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends)))
    lbcore.sync()

    r = lab.curl(f"http://{VIP}/")
    assert r.returncode == 0 and r.stdout.startswith("backend=backend-"), r

    hits = backends_hit(connects(lab, VIP, 600))
    assert set(hits) == names(lab.backends), hits
    expected = 600 / len(lab.backends)
    chi2 = sum((hits[b.name] - expected) ** 2 / expected for b in lab.backends)
    assert chi2 < CHI2_2DOF_P001, f"spread {dict(hits)} is not uniform (chi2={chi2:.1f})"


def test_getpeername_shows_service_while_backend_sees_its_own_address(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends)))
    lbcore.sync()

    backend_ips = {b.ipv4 for b in lab.backends}
    for res in connects(lab, VIP, 10):
        assert res["peer"] == [VIP, 80]  # the client's socket names the service
        assert res["local_ip"] in backend_ips and res["local_port"] == 80  # no NAT
        # the server saw the client's real address and port, untranslated
        assert [res["client_ip"], res["client_port"]] == [lab.client.ipv4, res["sock"][1]]


def test_udp_clusterip_dns_and_datagrams_answer_from_the_service(lab, lbcore):
    lab.start_dns_backends()
    lab.start_udp_backends(port=5353)
    svc = service("dns", DNS_VIP, [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "echo", "port": 5353, "protocol": "UDP"},
    ])  # fmt: skip
    lbcore.write(svc, endpoint_slice(svc, ready(lab.backends)))
    lbcore.sync()

    # dig (9.18) connect()s its UDP socket, so connect4 translates it and the kernel
    # accepts the backend's reply; it does not exercise recvmsg4 (tried: it still
    # answers with recvmsg4 disabled). The unconnected recvfrom below does.
    answers = Counter()
    for _ in range(12):
        r = lab.dig(DNS_VIP)
        assert r.returncode == 0, r
        (answer,) = r.stdout.split()
        answers[answer] += 1
    assert set(answers) <= {f'"backend={b.name}"' for b in lab.backends}
    assert len(answers) > 1, f"12 queries, one backend: {answers}"

    seen = set()
    for connect in (True, False) * 4:
        ans = lab.udp_request(DNS_VIP, 5353, connect=connect)
        assert ans is not None, f"no reply (connect={connect})"
        name, client = ans["reply"].split()
        assert (ans["from_ip"], ans["from_port"]) == (DNS_VIP, 5353), (connect, ans)
        assert client.startswith(f"client={lab.client.ipv4}:")
        seen.add(name)
    assert seen <= {f"backend={b.name}" for b in lab.backends}


def test_ipv6_clusterip(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends, family=6), ip=VIP6, name="web6"))
    lbcore.sync()

    r = lab.curl(f"http://[{VIP6}]/")
    assert r.returncode == 0 and r.stdout.startswith("backend=backend-"), r
    results = connects(lab, VIP6, 60)
    assert set(backends_hit(results)) == names(lab.backends)
    backend_ips = {b.ipv6 for b in lab.backends}
    for res in results:
        assert res["peer"] == [VIP6, 80]
        assert res["local_ip"] in backend_ips
        assert res["client_ip"] == lab.client.ipv6


def test_nodeport_on_node_address_goes_straight_to_a_backend(lab, lbcore):
    lab.start_http_backends()
    svc = service("np", "10.96.0.20",
                  [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 32000}],
                  type="NodePort")  # fmt: skip
    lbcore.write(svc, endpoint_slice(svc, ready(lab.backends)))
    lbcore.sync()

    fes = frontends(lbcore.services())
    want_backends = sorted(f"{b.ipv4}:80 active" for b in lab.backends)
    assert fes == {
        ("10.96.0.20", 80, "TCP"): want_backends,
        (lab.node.ipv4, 32000, "TCP"): want_backends,
    }
    types = {s["frontend"]["port"]: s["type"] for s in lbcore.services()}
    assert types == {80: "ClusterIP", 32000: "NodePort"}

    listening = lab.node.ns.run(["ss", "-Hltn", "sport = :32000"])
    assert listening.returncode == 0 and listening.stdout.strip() == ""
    results = connects(lab, lab.node.ipv4, 30, port=32000)
    assert set(backends_hit(results)) == names(lab.backends)
    assert all(r["peer"] == [lab.node.ipv4, 32000] for r in results)
    # the same connect from a process outside the attached cgroup meets the bare node
    r = lab.curl(f"http://{lab.node.ipv4}:32000/", cgroup=lab.servers_cgroup, timeout=1)
    assert r.returncode == 7, r


def test_endpoints_0_1_2_1_0_are_followed_exactly(lab, lbcore):
    lab.start_http_backends()
    b0, b1 = lab.backends[:2]
    for step in ([], [b0], [b0, b1], [b1], []):
        lbcore.write(web(ready(step)))
        lbcore.invoke_sync()
        assert frontends(lbcore.invoke_services()) == {
            (VIP, 80, "TCP"): sorted(f"{b.ipv4}:80 active" for b in step)
        }, [b.name for b in step]
        if step:
            assert set(backends_hit(connects(lab, VIP, 40))) == names(step)
            continue
        started = time.monotonic()
        r = lab.curl(f"http://{VIP}/", timeout=3)
        elapsed = time.monotonic() - started
        assert r.returncode == 7, r  # couldn't connect
        assert elapsed < 1, f"refusal took {elapsed:.2f} s"
        assert connect_errno(lab, VIP)[0] == "ECONNREFUSED"


@pytest.mark.parametrize("lab_backends", [5])
def test_client_ip_affinity_sticks_then_expires(lab, lbcore):
    timeout = 2
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends), affinity_timeout=timeout))
    lbcore.sync()
    (entry,) = lbcore.services()
    assert entry["flags"] == [f"affinity={timeout}s"]

    hits = backends_hit(connects(lab, VIP, 15))
    assert len(hits) == 1, f"15 connects within the timeout spread: {hits}"
    (sticky,) = hits
    time.sleep(timeout / 2)
    assert backends_hit(connects(lab, VIP, 3)) == {sticky: 3}, "expired too early"

    # Idle past the timeout (the map counts whole seconds: timeout + 1 s is enough),
    # then the next connect chooses afresh and sticks to its new choice. A fresh
    # choice equals the old one with p = 1/5, so try a few idle periods.
    picks = []
    for _ in range(6):
        time.sleep(timeout + 1.1)
        hits = backends_hit(connects(lab, VIP, 4))
        assert len(hits) == 1, f"affinity not re-established after expiry: {hits}"
        picks.append(next(iter(hits)))
        if picks[-1] != sticky:
            break
    assert picks[-1] != sticky, f"affinity never expired: {sticky} every time ({picks})"


def test_terminating_backends_only_when_no_ready_ones(lab, lbcore):
    lab.start_http_backends()
    b0, b1, b2 = lab.backends
    lbcore.write(web([(b0.ipv4, READY), (b1.ipv4, TERMINATING), (b2.ipv4, TERMINATING)]))
    lbcore.invoke_sync()
    assert frontends(lbcore.invoke_services()) == {(VIP, 80, "TCP"): [f"{b0.ipv4}:80 active"]}
    assert backends_hit(connects(lab, VIP, 30)) == {b0.name: 30}

    # b0 terminates too, but no longer serves: only the serving terminating ones are used
    lbcore.write(web([(b0.ipv4, GONE), (b1.ipv4, TERMINATING), (b2.ipv4, TERMINATING)]))
    lbcore.invoke_sync()
    assert frontends(lbcore.invoke_services()) == {
        (VIP, 80, "TCP"): [f"{b1.ipv4}:80 terminating", f"{b2.ipv4}:80 terminating"]
    }
    assert set(backends_hit(connects(lab, VIP, 40))) == {b1.name, b2.name}


def test_invalid_file_keeps_previous_state(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends)))
    lbcore.sync()
    before = lbcore.services_json_text()
    assert json.loads(before)

    bad = web(ready(lab.backends))
    bad[0]["spec"]["ports"][0]["port"] = 70000
    lbcore.write(bad)
    r = lbcore.cli("sync", check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert str(lbcore.services_file) in r.stderr, r.stderr
    assert "document" in r.stderr and "spec.ports[0].port" in r.stderr, r.stderr
    assert "70000" in r.stderr, r.stderr

    assert lbcore.services_json_text() == before
    assert set(backends_hit(connects(lab, VIP, 30))) == names(lab.backends)


def test_resync_and_agent_restart_adopt_state_without_a_gap(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends)), web(ready(lab.backends[:1]), ip="10.96.0.11",
                                               name="one"))
    lbcore.sync()
    ids = {(s["frontend"]["ip"], s["id"]) for s in lbcore.services()}
    assert len(ids) == 2

    def assert_one_program_per_hook() -> set[int]:
        att = lbcore.attachments()
        assert sorted(att) == sorted(HOOKS)
        for hook, progs in att.items():
            assert len(progs) == 1 and progs[0].startswith("lbc_"), (hook, progs)
        ids = lbcore.program_ids()
        assert len(ids) == len(HOOKS)
        return ids

    progs = assert_one_program_per_hook()
    loop = lab.client_spawn([sys.executable, "-I", "-S", "-c", CONNECT_UNTIL_TERM, VIP, "80"],
                            name="connect-loop")
    try:
        lbcore.sync()
        progs, previous = assert_one_program_per_hook(), progs
        assert not progs & previous  # every hook got the new program: replaced, not kept
        assert {(s["frontend"]["ip"], s["id"]) for s in lbcore.services()} == ids

        for round_ in range(2):
            agent = lab.node.ns.spawn([LBCORE, "-v", "run", "-c", str(lbcore.config)],
                                      name=f"lbcore-run-{round_}")
            deadline = time.monotonic() + 30
            while "full sync" not in agent.output():
                assert agent.alive(), agent.output()
                assert time.monotonic() < deadline, agent.output()
                time.sleep(0.05)
            progs, previous = assert_one_program_per_hook(), progs
            assert not progs & previous
            assert agent.stop(timeout=10) == 0, agent.output()
            assert "Traceback" not in agent.output(), agent.output()
            assert assert_one_program_per_hook() == progs  # SIGTERM leaves them in place
            assert {(s["frontend"]["ip"], s["id"]) for s in lbcore.services()} == ids
    finally:
        loop.popen.send_signal(signal.SIGTERM)
        loop.popen.wait(10)
    summary = json.loads(loop.output().strip().splitlines()[-1])
    assert summary["errors"] == [], summary
    assert summary["ok"] > 50, summary


def test_cleanup_detaches_everything_and_unpins_the_maps(lab, lbcore):
    lab.start_http_backends()
    lbcore.write(web(ready(lab.backends)))
    lbcore.sync()
    assert all(len(p) == 1 for p in lbcore.attachments().values())
    assert set(MAPS) <= set(lbcore.pinned())
    assert connect_errno(lab, VIP)[0] == "OK"

    r = lbcore.cli("cleanup")
    assert "removed" in r.stdout
    assert lbcore.attachments() == {hook: [] for hook in HOOKS}
    assert not set(MAPS) & set(lbcore.pinned()), lbcore.pinned()
    # Reading back after cleanup shows nothing and creates nothing.
    assert json.loads(lbcore.cli("services", "-o", "json").stdout) == []
    assert not set(MAPS) & set(lbcore.pinned()), lbcore.pinned()

    err, elapsed = connect_errno(lab, VIP, timeout=1)
    assert err != "OK", "the VIP is still translated after cleanup"
    assert err == "ENETUNREACH" and elapsed < 1.5  # the kernel routes the bare VIP: nowhere
    b = lab.backends[0]
    assert lab.curl(f"http://{b.ipv4}/").stdout == f"backend={b.name}\n"  # lab still fine


def test_service_map_full_is_refused_and_changes_nothing(lab, lbcore):
    lab.start_http_backends()
    lbcore.write_config(service_map_max=16)  # 1 header + 3 slots per service: 4 fit

    def many(n: int) -> list[dict]:
        return [obj for i in range(n)
                for obj in web(ready(lab.backends), ip=f"10.96.1.{i}", name=f"web{i}")]

    lbcore.write(many(2))
    lbcore.sync()
    before = lbcore.services_json_text()
    assert len(json.loads(before)) == 2

    lbcore.write(many(6))  # 24 entries
    r = lbcore.cli("sync", check=False)
    assert r.returncode != 0
    assert "service_map_max" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert lbcore.services_json_text() == before
    assert set(backends_hit(connects(lab, "10.96.1.1", 40))) == names(lab.backends)
    assert connect_errno(lab, "10.96.1.5")[0] == "ENETUNREACH"  # never programmed


def _wait_for_backends(lab, want: set[str], deadline_s: float = 10) -> float:
    """Seconds until 12 connects to VIP all succeed and reach exactly ``want``."""
    started = time.monotonic()
    while True:
        results = connects(lab, VIP, 12, timeout=1)
        if all("error" not in r for r in results) and {r["backend"] for r in results} == want:
            return time.monotonic() - started
        assert time.monotonic() - started < deadline_s, f"still {results[:3]}..., want {want}"
        time.sleep(0.1)


def _wait_for_log(agent, text: str, count: int = 1, deadline_s: float = 10) -> None:
    deadline = time.monotonic() + deadline_s
    while agent.output().count(text) < count:
        assert agent.alive(), agent.output()
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.05)


def test_running_agent_follows_file_edits_and_sighup(lab, lbcore):
    """`lbcore run` reprograms the kernel when services.yaml changes (inotify), keeps the
    last good state when an edit is invalid, and re-reads the file on SIGHUP."""
    lab.start_http_backends()
    b0, b1, b2 = lab.backends
    lbcore.write(web(ready([b0])))
    agent = lab.node.ns.spawn([LBCORE, "-v", "run", "-c", str(lbcore.config)], name="agent")
    try:
        _wait_for_backends(lab, {b0.name}, deadline_s=30)  # the first sync compiles

        lbcore.write(web(ready([b0, b1])))  # an edit in place: the watch must see it
        assert _wait_for_backends(lab, {b0.name, b1.name}) < 5

        good = lbcore.services_json_text()
        bad = web(ready([b2]))
        bad[0]["spec"]["ports"][0]["port"] = 70000
        lbcore.write(bad)
        _wait_for_log(agent, "spec.ports[0].port")
        assert lbcore.services_json_text() == good  # the kernel kept the last good state
        assert _wait_for_backends(lab, {b0.name, b1.name}) < 1

        agent.popen.send_signal(signal.SIGHUP)  # re-read now: the same error, reported again
        _wait_for_log(agent, "SIGHUP: re-reading")
        _wait_for_log(agent, "spec.ports[0].port", count=2)

        lbcore.write(web(ready([b2])))
        assert _wait_for_backends(lab, {b2.name}) < 5

        assert agent.stop(timeout=10) == 0, agent.output()
        assert "Traceback" not in agent.output(), agent.output()
        assert _wait_for_backends(lab, {b2.name}) < 1  # SIGTERM left the datapath in place
    finally:
        if agent.alive():
            agent.stop(timeout=10)


# A long-lived DNS client on ONE connected UDP socket, as many resolvers and apps keep:
# a query every 50 ms; on a socket error it opens a new socket, on a timeout it just
# retries the same one. One line per query: "A backend=<name>" or "E <errno name>".
LONG_LIVED_UDP_CLIENT = textwrap.dedent(
    """
    import errno, signal, socket, struct, sys, time
    vip, stop = sys.argv[1], []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\x03who\\x04test\\x00" \\
        + struct.pack("!HH", 16, 1)
    def fresh():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        s.connect((vip, 53))
        return s
    s = fresh()
    while not stop:
        try:
            s.send(query)
            reply = s.recv(512)
            name = reply[reply.index(b"backend="):].split(b"\\x00")[0].decode(errors="replace")
            print("A", name.rstrip(), flush=True)
        except socket.timeout:
            print("E TIMEOUT", flush=True)
        except OSError as e:
            print("E", errno.errorcode.get(e.errno, e), flush=True)
            s.close()
            s = fresh()
        time.sleep(0.05)
    """
)


def test_removed_udp_backend_destroys_connected_sockets(lab, lbcore):
    """A connected UDP socket whose backend leaves the service is destroyed (sock_diag
    SOCK_DESTROY): the client's next call fails, it reconnects and gets a serving backend —
    instead of talking to the removed one for ever (kubernetes#48370, in socket form).

    The removed backend keeps answering (a pod taken out of the service while still
    running): without the destroy the client would never notice. Had it stopped, its
    namespace's ICMP port-unreachable would have told the client (tried: ECONNREFUSED).
    """
    dns = lab.start_dns_backends()
    assert len(dns) == len(lab.backends)
    svc = service("dns", DNS_VIP, [{"name": "dns", "port": 53, "protocol": "UDP"}])
    lbcore.write(svc, endpoint_slice(svc, ready(lab.backends)))
    lbcore.sync()
    client = lab.client_spawn([sys.executable, "-I", "-S", "-c", LONG_LIVED_UDP_CLIENT, DNS_VIP],
                              name="udp-client")
    try:
        deadline = time.monotonic() + 10
        while not client.output().startswith("A backend="):
            assert time.monotonic() < deadline and client.alive(), client.output()
            time.sleep(0.05)
        first = client.output().split()[1].removeprefix("backend=")
        victim = next(i for i, b in enumerate(lab.backends) if b.name == first)
        survivors = [b for i, b in enumerate(lab.backends) if i != victim]

        assert dns[victim].alive()
        lbcore.write(svc, endpoint_slice(svc, ready(survivors)))
        mark = len(client.output().splitlines())
        lbcore.sync()
        deadline = time.monotonic() + 5
        while True:
            after = client.output().splitlines()[mark:]
            answers = [line.split()[1] for line in after if line.startswith("A ")]
            if answers[-3:] and all(a != f"backend={first}" for a in answers[-3:]):
                break
            assert time.monotonic() < deadline, f"still stuck on {first}: {after[-10:]}"
            time.sleep(0.05)
        # The kernel aborts and disconnects the socket: the next call reports
        # ECONNABORTED, or EDESTADDRREQ when the send finds it already unconnected.
        errors = {line for line in after if line.startswith("E ")}
        assert errors & {"E ECONNABORTED", "E EDESTADDRREQ"}, sorted(set(after))
        first_error = next(i for i, line in enumerate(after) if line.startswith("E "))
        later = {line.split()[1].removeprefix("backend=") for line in after[first_error:]
                 if line.startswith("A ")}
        assert later and later <= {b.name for b in survivors}, after[first_error:]
    finally:
        client.stop()
