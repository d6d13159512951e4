"""Server verbs of a lab (``NetLab.http_server``, ``udp_server``, ``dnsmasq``, ``nginx``):
each answers with the name it was given, so a client can tell backends apart."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .procs import Proc, _which

if TYPE_CHECKING:
    from .netns import Netns

_HTTP_SERVER = textwrap.dedent(
    """
    import http.server, json, socket, socketserver, sys
    name, port = sys.argv[1], int(sys.argv[2])
    text = sys.argv[3] if len(sys.argv) > 3 else f"backend={name}\\n"
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
                body = text
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


class ServersMixin:
    """Needs ``spawn``, ``wait_listening`` (:class:`ProcessesMixin`) and ``run_dir``."""

    run_dir: Path
    spawn: Callable[..., Proc]
    wait_listening: Callable[..., None]

    def http_server(
        self,
        ns: Netns,
        name: str,
        port: int = 80,
        *,
        cgroup: Path | None = None,
        wait: bool = True,
        body: str | None = None,
    ) -> Proc:
        """HTTP on ``[::]:port`` (dual stack): ``GET /`` -> ``backend=<name>\\n`` (or
        ``body`` if given); ``GET /whoami`` -> JSON with backend, client_ip/port,
        local_ip/port."""
        cmd = [sys.executable, "-I", "-S", "-c", _HTTP_SERVER, name, str(port)]
        if body is not None:
            cmd.append(body)
        proc = self.spawn(ns, cmd, cgroup=cgroup, name=f"http-{name}")
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
