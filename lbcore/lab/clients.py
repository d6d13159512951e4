"""Client verbs of a lab (``NetLab.curl``, ``dig``, ``udp_request``): real tools run in a
lab namespace and cgroup, so a socket-LB program attached to that cgroup sees them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .procs import NetLabError, _which

if TYPE_CHECKING:
    from .netns import Netns

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


class ClientsMixin:
    """Needs ``run(ns, cmd, cgroup=, timeout=)`` from :class:`ProcessesMixin`."""

    run: Callable[..., subprocess.CompletedProcess[str]]

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
