"""Network-namespace lab for integration tests (root only).

A :class:`NetLab` owns everything it creates and removes all of it in :meth:`NetLab.close`
(also on failure; fixtures call it, and an ``atexit`` hook is the last resort):

- network namespaces ``lbt-<id>-<short>`` (``/run/netns/...``), with veth pairs between
  them and bridges inside a dedicated "switch" namespace,
- cgroup v2 directories under ``/sys/fs/cgroup/unified/lbt-<id>/``,
- private bpffs mounts and scratch files under ``/run/lbt-<id>/``,
- processes started inside a namespace *and* a cgroup, tracked by pid.

``<id>`` is 8 random hex digits; ``/run/lbt-<id>/owner`` names the owning process, so
:func:`sweep_leftovers` can remove what killed runs left behind without touching a lab
that another live test run still uses.

Safety: nothing is ever created in the root network namespace (veth pairs are created
directly inside test namespaces with ``ip -n``), no test namespace is connected to the
root namespace, and no cgroup outside ``lbt-<id>/`` is written to. Processes are ended
by pid only.

Processes run through ``nsenter --net=/run/netns/NS`` (not ``ip netns exec``, which gives
them a fresh ``/sys`` without the cgroup2/bpffs mounts)::

    sh -c 'echo $$ > CG/cgroup.procs && exec nsenter --net=/run/netns/NS -- cmd ...'
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "lbt-"
CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
RUN_ROOT = Path("/run")
NETNS_DIR = Path("/run/netns")
_ID_RE = re.compile(r"^lbt-([0-9a-f]{8})(?:-|$)")
_SHORT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# sh wrapper: join the cgroup, then become `cmd` inside the namespace (same pid throughout).
_SPAWN_SH = 'echo $$ > "$1/cgroup.procs" && ns="$2" && shift 2 && exec nsenter --net="$ns" -- "$@"'


class NetLabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def _env() -> dict[str, str]:
    """Environment for lab processes: no proxies, sbin on PATH."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = _SBIN_PATH + ":" + env.get("PATH", "")
    return env


def _which(name: str) -> str:
    path = shutil.which(name, path=_SBIN_PATH + ":" + os.environ.get("PATH", ""))
    if not path:
        raise NetLabError(f"{name!r} not found (run `make setup`)")
    return path


def sh(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command in the *current* namespace (only used for ip -n / mount / umount)."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise NetLabError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _kill_pids(pids: Sequence[int], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `timeout`. Pids only, never names."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- namespaces


@dataclass(eq=False)
class Netns:
    """A test network namespace. ``name`` is the full ``lbt-<id>-<short>`` name."""

    lab: NetLab
    short: str
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def ip(self, *args: str, check: bool = True) -> str:
        """``ip -n <this namespace> args...``"""
        return sh([_which("ip"), "-n", self.name, *args], check=check)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", "dev", ifname, "up")

    def add_addr(self, ifname: str, cidr: str) -> None:
        """Add an IPv4 or IPv6 address (IPv6 with ``nodad``: usable at once)."""
        extra = ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
        self.ip("addr", "add", cidr, "dev", ifname, *extra)

    def add_route(self, dst: str, via: str | None = None, dev: str | None = None) -> None:
        """Route inside this namespace (``dst`` may be ``default``; ``-6`` if IPv6)."""
        fam = "-6" if ":" in (via or "") or ":" in dst else "-4"
        args = [fam, "route", "add", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    def sysctl(self, **settings: str | int) -> None:
        """``ns.sysctl(**{"net.ipv4.ip_forward": 1})`` inside this namespace."""
        args = [f"{k}={v}" for k, v in settings.items()]
        sh([_which("nsenter"), f"--net={self.path}", "--", _which("sysctl"), "-q", "-w", *args])

    def run(self, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self, cmd, **kw)

    def spawn(self, cmd: Sequence[str], **kw) -> Proc:
        return self.lab.spawn(self, cmd, **kw)

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Proc:
    """A process started by the lab inside ``ns`` and ``cgroup``; ``pid`` is the command's."""

    name: str
    popen: subprocess.Popen
    ns: Netns
    cgroup: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps it. Returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} ns={self.ns.short}>"


# ------------------------------------------------------------------------------ servers

_HTTP_SERVER = textwrap.dedent(
    """
    import http.server, json, socket, socketserver, sys
    name, port = sys.argv[1], int(sys.argv[2])
    def plain(a):
        return a[7:] if a.startswith("::ffff:") else a
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            peer, local = self.client_address, self.connection.getsockname()
            if self.path.startswith("/whoami"):
                body = json.dumps({"backend": name, "client_ip": plain(peer[0]),
                                   "client_port": peer[1], "local_ip": plain(local[0]),
                                   "local_port": local[1]}) + "\\n"
            else:
                body = f"backend={name}\\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Backend", name)
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    class S(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        allow_reuse_address = True
        def server_bind(self):  # dual-stack; skip HTTPServer's getfqdn() lookup
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            socketserver.TCPServer.server_bind(self)
    S(("::", port), H).serve_forever()
    """
)

_UDP_SERVER = textwrap.dedent(
    """
    import socket, sys
    name, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(65535)
        ip = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
        s.sendto(f"backend={name} client={ip}:{peer[1]}\\n".encode(), peer)
    """
)


_UDP_CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    host, port, data, connect, timeout = sys.argv[1:6]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(float(timeout))
    addr = (host, int(port))
    if connect == "1":
        s.connect(addr)
        s.send(data.encode())
        reply, src = s.recv(65535), s.getpeername()
    else:
        s.sendto(data.encode(), addr)
        reply, src = s.recvfrom(65535)
    print(json.dumps({"reply": reply.decode(), "from_ip": src[0], "from_port": src[1]}))
    """
)


# ---------------------------------------------------------------------------------- lab


class NetLab:
    """Creates namespaces, links, cgroups, bpffs mounts and processes; removes them all."""

    def __init__(self, cgroup2_root: Path = CGROUP2_ROOT) -> None:
        if os.geteuid() != 0:
            raise NetLabError("NetLab needs root")
        for _ in range(10):
            self.id = secrets.token_hex(4)
            self.run_dir = RUN_ROOT / f"{PREFIX}{self.id}"
            try:
                self.run_dir.mkdir(mode=0o755)
                break
            except FileExistsError:
                continue
        else:
            raise NetLabError("could not allocate a lab id")
        (self.run_dir / "owner").write_text(f"{os.getpid()} {_proc_starttime(os.getpid())}\n")
        self.prefix = f"{PREFIX}{self.id}-"
        self.cgroup_root = cgroup2_root / f"{PREFIX}{self.id}"
        self.netns_list: dict[str, Netns] = {}
        self.procs: list[Proc] = []
        self._bridge_ports: dict[str, int] = {}
        self._nlog = 0
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- namespaces and links --------------------------------------------------------

    def netns(self, short: str) -> Netns:
        """Create namespace ``lbt-<id>-<short>`` with ``lo`` up and IPv6 DAD off."""
        if not _SHORT_RE.match(short):
            raise ValueError(f"bad namespace name {short!r}: use [a-z0-9-], max 31 chars")
        if short in self.netns_list:
            raise ValueError(f"namespace {short!r} exists in this lab")
        ns = Netns(self, short, self.prefix + short)
        sh([_which("ip"), "netns", "add", ns.name])
        self.netns_list[short] = ns
        ns.link_up("lo")
        ns.sysctl(**{"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair ``a:a_if <-> b:b_if``, created inside ``a`` (never in the root ns)."""
        self._own(a)
        self._own(b)
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.link_up(a_if)
        b.link_up(b_if)

    def bridge(self, switch: Netns, name: str = "br0") -> str:
        """A bridge inside ``switch`` (multicast snooping off so IPv6 ND always floods)."""
        self._own(switch)
        switch.ip("link", "add", name, "type", "bridge", "mcast_snooping", "0")
        switch.ip("link", "set", "dev", name, "addrgenmode", "none")
        switch.link_up(name)
        return name

    def plug(self, ns: Netns, ifname: str, switch: Netns, bridge: str = "br0") -> str:
        """Connect ``ns`` to ``bridge`` in ``switch`` with a veth; returns the port name."""
        n = self._bridge_ports.get(switch.name, 0)
        self._bridge_ports[switch.name] = n + 1
        port = f"p{n}-{ns.short}"[:15]
        self.veth(ns, ifname, switch, port)
        switch.ip("link", "set", "dev", port, "master", bridge)
        return port

    def _own(self, ns: Netns) -> None:
        if ns.lab is not self or not ns.name.startswith(self.prefix):
            raise NetLabError(f"{ns} is not a namespace of this lab")

    # -- cgroups and bpffs -------------------------------------------------------------

    def cgroup(self, rel: str = "default") -> Path:
        """``/sys/fs/cgroup/unified/lbt-<id>/<rel>`` (created with parents)."""
        path = (self.cgroup_root / rel).resolve()
        if path != self.cgroup_root and self.cgroup_root not in path.parents:
            raise ValueError(f"cgroup {rel!r} is outside the lab's cgroup")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bpffs(self, name: str = "bpffs") -> Path:
        """A private bpffs instance mounted at ``/run/lbt-<id>/<name>``."""
        path = self.run_dir / name
        path.mkdir()
        sh([_which("mount"), "-t", "bpf", "bpf", str(path)])
        return path

    # -- processes ---------------------------------------------------------------------

    def _wrap(self, ns: Netns, cmd: Sequence[str], cgroup: Path | None) -> tuple[list, Path]:
        self._own(ns)
        cg = cgroup if cgroup is not None else self.cgroup("default")
        if cg.resolve() != self.cgroup_root and self.cgroup_root not in cg.resolve().parents:
            raise NetLabError(f"cgroup {cg} is not inside {self.cgroup_root}")
        argv = [_which("sh"), "-c", _SPAWN_SH, "lbt-spawn", str(cg), ns.path, *map(str, cmd)]
        return argv, cg

    def spawn(
        self,
        ns: Netns,
        cmd: Sequence[str],
        *,
        cgroup: Path | None = None,
        name: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``cmd`` in ``ns`` and ``cgroup`` (default ``lbt-<id>/default``), tracked.

        stdout+stderr go to ``/run/lbt-<id>/logs/<name>.<n>.log`` (``Proc.output()``).
        """
        argv, cg = self._wrap(ns, cmd, cgroup)
        name = name or Path(str(cmd[0])).name
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        self._nlog += 1
        log = logs / f"{name}.{self._nlog}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**_env(), **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, ns, cg, log)
        self.procs.append(proc)
        return proc

    def run(
        self,
        ns: Netns,
        cmd: Sequence[str],
        *,
        cgroup: Path | None = None,
        timeout: float = 10,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in ``ns`` and ``cgroup`` to completion, capturing its output.

        On timeout the command is killed and ``subprocess.TimeoutExpired`` raised. The
        returned ``args`` is ``cmd`` (not the wrapper).
        """
        argv, _ = self._wrap(ns, cmd, cgroup)
        with subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        ) as popen:
            try:
                out, err = popen.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                out, err = popen.communicate()
                raise subprocess.TimeoutExpired(list(cmd), timeout, out, err) from None
        res = subprocess.CompletedProcess(list(cmd), popen.returncode, out, err)
        if check and res.returncode != 0:
            raise NetLabError(
                f"in {ns.short}: {' '.join(map(str, cmd))} exited {res.returncode}\n{out}{err}"
            )
        return res

    def curl(
        self,
        ns: Netns,
        url: str,
        *,
        cgroup: Path | None = None,
        timeout: float = 3,
        args: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``curl -sS`` from ``ns`` (``-g`` so ``http://[fd00::1]/`` works)."""
        cmd = [
            _which("curl"),
            "-sS",
            "-g",
            "--noproxy",
            "*",
            "--max-time",
            str(timeout),
            *args,
            url,
        ]
        return self.run(ns, cmd, cgroup=cgroup, timeout=timeout + 5)

    def dig(
        self,
        ns: Netns,
        server: str,
        qname: str,
        qtype: str = "A",
        *,
        port: int = 53,
        cgroup: Path | None = None,
        tcp: bool = False,
        timeout: float = 2,
    ) -> subprocess.CompletedProcess[str]:
        """``dig +short`` from ``ns``; answers are ``result.stdout.split()``."""
        cmd = [
            _which("dig"),
            f"@{server}",
            "-p",
            str(port),
            qname,
            qtype,
            "+short",
            f"+time={max(1, int(timeout))}",
            "+tries=1",
            "+tcp" if tcp else "+notcp",
        ]
        return self.run(ns, cmd, cgroup=cgroup, timeout=timeout + 5)

    def udp_request(
        self,
        ns: Netns,
        host: str,
        port: int,
        data: str = "ping",
        *,
        connect: bool = False,
        cgroup: Path | None = None,
        timeout: float = 2,
    ) -> dict | None:
        """One UDP request/reply from ``ns``: ``{"reply", "from_ip", "from_port"}`` or
        ``None`` on timeout. ``connect=True`` uses a connected socket (send/recv and
        getpeername); else sendto/recvfrom, where ``from_ip`` is the reply's source."""
        cmd = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _UDP_CLIENT,
            host,
            str(port),
            data,
            "1" if connect else "0",
            str(timeout),
        ]
        r = self.run(ns, cmd, cgroup=cgroup, timeout=timeout + 5)
        if r.returncode != 0:
            if "timed out" in r.stderr:
                return None
            raise NetLabError(f"udp_request {host}:{port} failed:\n{r.stderr}")
        return json.loads(r.stdout)

    def wait_listening(self, proc: Proc, port: int, proto: str = "tcp", timeout: float = 5) -> None:
        """Wait until ``proc`` has a ``proto`` socket bound to ``port`` in its namespace.

        Reads ``/proc/<pid>/net/{tcp,udp}{,6}``, which shows the namespace of ``pid``.
        """
        want_ns = f"net:[{proc.ns.inode}]"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise NetLabError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}")
            try:
                in_ns = os.readlink(f"/proc/{proc.pid}/ns/net") == want_ns
            except OSError:
                in_ns = False
            if in_ns and _bound(proc.pid, port, proto):
                return
            time.sleep(0.01)
        raise NetLabError(
            f"{proc.name} not listening on {proto}/{port} after {timeout}s:\n{proc.output()}"
        )

    def http_server(
        self, ns: Netns, name: str, port: int = 80, *, cgroup: Path | None = None, wait: bool = True
    ) -> Proc:
        """HTTP on ``[::]:port`` (dual stack): ``GET /`` -> ``backend=<name>\\n``;
        ``GET /whoami`` -> JSON with backend, client_ip/port, local_ip/port."""
        proc = self.spawn(
            ns,
            [sys.executable, "-I", "-S", "-c", _HTTP_SERVER, name, str(port)],
            cgroup=cgroup,
            name=f"http-{name}",
        )
        if wait:
            self.wait_listening(proc, port, "tcp")
        return proc

    def udp_server(
        self, ns: Netns, name: str, port: int, *, cgroup: Path | None = None, wait: bool = True
    ) -> Proc:
        """UDP on ``[::]:port``: answers every datagram with ``backend=<name> client=IP:PORT``."""
        proc = self.spawn(
            ns,
            [sys.executable, "-I", "-S", "-c", _UDP_SERVER, name, str(port)],
            cgroup=cgroup,
            name=f"udp-{name}",
        )
        if wait:
            self.wait_listening(proc, port, "udp")
        return proc

    def dnsmasq(
        self,
        ns: Netns,
        name: str,
        listen: Sequence[str],
        *,
        records: Mapping[str, Sequence[str]] | None = None,
        port: int = 53,
        cgroup: Path | None = None,
        wait: bool = True,
    ) -> Proc:
        """dnsmasq answering only from its command line, on ``listen`` addresses.

        Always answers ``TXT who.test`` with ``"backend=<name>"``; ``records`` maps a host
        name to its A/AAAA addresses (``--host-record``), e.g.
        ``{"who.test": ["10.244.0.100", "fd00:10:244::100"]}``.
        """
        cmd = [
            _which("dnsmasq"),
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--port={port}",
            "--log-facility=-",
            f"--txt-record=who.test,backend={name}",
        ]
        cmd += [f"--listen-address={ip}" for ip in listen]
        cmd += [
            f"--host-record={host},{','.join(addrs)}" for host, addrs in (records or {}).items()
        ]
        proc = self.spawn(ns, cmd, cgroup=cgroup, name=f"dnsmasq-{name}")
        if wait:
            self.wait_listening(proc, port, "udp")
        return proc

    def nginx(
        self,
        ns: Netns,
        name: str,
        port: int = 80,
        *,
        cgroup: Path | None = None,
        workers: int = 1,
        wait: bool = True,
    ) -> Proc:
        """nginx (one master + ``workers``) on ``[::]:port`` dual stack:
        every request -> ``backend=<name>\\n``. For benchmarks with wrk."""
        d = self.run_dir / f"nginx-{name}-{port}"
        d.mkdir()
        (d / "nginx.conf").write_text(
            textwrap.dedent(f"""\
            daemon off;
            worker_processes {workers};
            pid {d}/nginx.pid;
            error_log stderr warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                keepalive_requests 1000000;
                server {{
                    listen [::]:{port} ipv6only=off reuseport backlog=4096;
                    location / {{
                        default_type text/plain;
                        return 200 "backend={name}\\n";
                    }}
                }}
            }}
            """)
        )
        cmd = [_which("nginx"), "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf")]
        proc = self.spawn(ns, cmd, cgroup=cgroup, name=f"nginx-{name}")
        if wait:
            self.wait_listening(proc, port, "tcp")
        return proc

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything (idempotent): processes, cgroups, mounts, namespaces, files."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        # Our own children first (SIGTERM all, then wait, then SIGKILL), and reap them.
        live = [p for p in self.procs if p.alive()]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        for p in live:
            try:
                p.stop(timeout=3)
            except Exception as e:  # keep tearing down
                errors.append(f"stop {p}: {e}")
        errors += destroy_lab(self.id)
        if errors:
            raise NetLabError("teardown incomplete:\n" + "\n".join(errors))


def _bound(pid: int, port: int, proto: str) -> bool:
    hexport = f"{port:04X}"
    for fam in ("", "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}{fam}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].rsplit(":", 1)[1] == hexport and (proto == "udp" or cols[3] == "0A"):
                return True
    return False


# ------------------------------------------------------------- teardown of a whole lab id


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == str(path) or mnt.startswith(prefix):
                mounts.append(mnt)
    return sorted(mounts, key=len, reverse=True)


def destroy_lab(lab_id: str, cgroup2_root: Path = CGROUP2_ROOT) -> list[str]:
    """Remove every resource of lab ``lab_id``; returns the errors (empty if all went).

    Kills (by pid) what is left in its namespaces and cgroups, removes the cgroups
    bottom-up, unmounts its bpffs mounts, deletes its namespaces and its run directory.
    """
    if not re.fullmatch(r"[0-9a-f]{8}", lab_id):
        raise ValueError(f"not a lab id: {lab_id!r}")
    errors: list[str] = []
    prefix = f"{PREFIX}{lab_id}-"
    names = [n for n in _netns_names() if n.startswith(prefix)]
    cg_root = cgroup2_root / f"{PREFIX}{lab_id}"
    run_dir = RUN_ROOT / f"{PREFIX}{lab_id}"

    # 1. processes still inside the lab's namespaces or cgroups
    pids: set[int] = set()
    for n in names:
        out = sh([_which("ip"), "netns", "pids", n], check=False)
        pids.update(int(p) for p in out.split() if p.isdigit())
    cgroups = [Path(d) for d, _, _ in os.walk(cg_root, topdown=False)] if cg_root.is_dir() else []
    for cg in cgroups:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (cg / "cgroup.procs").read_text().split())
    _kill_pids(sorted(pids))

    # 2. cgroups, deepest first (a cgroup can go once it has no processes)
    for cg in cgroups:
        deadline = time.monotonic() + 5
        while True:
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    errors.append(f"rmdir {cg}: {e}")
                    break
                with contextlib.suppress(OSError):
                    _kill_pids([int(p) for p in (cg / "cgroup.procs").read_text().split()], 1)
                time.sleep(0.05)

    # 3. bpffs (and any other) mounts under the run dir
    for mnt in _mounts_under(run_dir):
        sh([_which("umount"), mnt], check=False)
        if os.path.ismount(mnt):
            sh([_which("umount"), "-l", mnt], check=False)
        if os.path.ismount(mnt):
            errors.append(f"umount {mnt} failed")

    # 4. namespaces (their veths, bridges, routes, tc and iptables state go with them)
    for n in names:
        try:
            sh([_which("ip"), "netns", "del", n])
        except NetLabError as e:
            errors.append(str(e))

    # 5. scratch files, only once nothing is mounted below
    if run_dir.is_dir():
        if _mounts_under(run_dir):
            errors.append(f"{run_dir} still has mounts, left in place")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return errors


def _owner_alive(lab_id: str) -> bool:
    run_dir = RUN_ROOT / f"{PREFIX}{lab_id}"
    try:
        pid_s, start = (run_dir / "owner").read_text().split()
    except FileNotFoundError:
        # owner is written right after mkdir: a very young dir may be a lab being born
        try:
            return time.time() - run_dir.stat().st_mtime < 60
        except FileNotFoundError:
            return False
    except (OSError, ValueError):
        return False
    return _alive(int(pid_s)) and _proc_starttime(int(pid_s)) == start


def lab_ids(cgroup2_root: Path = CGROUP2_ROOT) -> set[str]:
    """Ids of every lab that has anything left on this machine (live or not)."""
    found = [*_netns_names()]
    for root in (cgroup2_root, RUN_ROOT):
        with contextlib.suppress(OSError):
            found += os.listdir(root)
    return {m.group(1) for n in found if (m := _ID_RE.match(n))}


def sweep_leftovers(cgroup2_root: Path = CGROUP2_ROOT) -> list[str]:
    """Remove labs whose owning process is gone (killed test runs). Returns their ids.

    Labs of live processes (e.g. a concurrent test run) are left alone.
    """
    swept = []
    for lab_id in sorted(lab_ids(cgroup2_root)):
        if not _owner_alive(lab_id):
            destroy_lab(lab_id, cgroup2_root)
            swept.append(lab_id)
    return swept


# ------------------------------------------------------------- socket-LB test topology


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


def build_socklb_lab(lab: NetLab, backends: int = 3) -> SockLBLab:
    """The socket-LB topology (about 0.3 s for 3 backends)::

    switch ns: br0 ── node (10.244.0.1, fd00:10:244::1)
                   ── client (10.244.0.10, fd00:10:244::10)
                   ── backend-i (10.244.0.(100+i), fd00:10:244::(100+i))
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
    client = pod("client", 10)
    pods = [pod(f"backend-{i}", 100 + i) for i in range(backends)]
    return SockLBLab(
        lab=lab,
        switch=switch,
        bridge=br,
        node=node,
        client=client,
        backends=pods,
        clients_cgroup=lab.cgroup("clients"),
        servers_cgroup=lab.cgroup("servers"),
        bpffs=lab.bpffs(),
    )
