"""The agent's HTTP endpoints: ``/healthz`` and ``/livez`` (kube-proxy's), ``/metrics``.

``lbcore run --healthz-bind-address 0.0.0.0:10256`` serves them, as kube-proxy serves
its health on port 10256, for the DaemonSet's probes:

* ``/healthz`` and ``/livez``: ``200`` with ``{"lastUpdated": ..., "currentTime": ...}``
  (RFC 3339 times; ``lastUpdated`` is the last successful sync) while the agent is
  healthy, ``503`` with the same body when a queued update has not been programmed
  within ``runner.health_timeout`` (``Agent.healthy``: kube-proxy's rule).
* ``/metrics``: the Prometheus text of ``lbcore.metrics``.

Anything else is ``404``. A ``ThreadingHTTPServer`` in a daemon thread; it reads state
only (locks inside ``Metrics``), so a slow scrape never delays a sync.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .metrics import Metrics, render_prometheus

LOG = logging.getLogger(__name__)

DEFAULT_PORT = 10256


def parse_bind_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--healthz-bind-address {text!r}: (valid: HOST:PORT, e.g. "
                          f"0.0.0.0:{DEFAULT_PORT}, [::]:{DEFAULT_PORT} or :{DEFAULT_PORT})")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)


def rfc3339(wall: float) -> str:
    if wall <= 0:
        return "0001-01-01T00:00:00Z"  # Go's zero time, as kube-proxy prints it
    stamp = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HealthServer:
    """Serves the endpoints for ``healthy()`` / ``metrics``; ``wall`` gives Unix time."""

    def __init__(self, address: tuple[str, int], healthy: Callable[[], bool],
                 metrics: Metrics, wall: Callable[[], float]) -> None:
        self.healthy = healthy
        self.metrics = metrics
        self.wall = wall
        family = http.server.ThreadingHTTPServer
        if ":" in address[0]:
            family = _IPv6Server
        try:
            self._server = family(address, _Handler)
        except OSError as exc:
            raise ConfigError(f"--healthz-bind-address {address[0]}:{address[1]}: "
                              f"cannot listen: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._server.health = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="lbcore-healthz", daemon=True)
        self._thread.start()
        LOG.info("serving /healthz, /livez and /metrics on %s:%d",
                 self._server.server_address[0], self.port)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def health(self) -> tuple[int, dict[str, Any]]:
        ok = self.healthy()
        body = {"lastUpdated": rfc3339(self.metrics.last_sync_timestamp),
                "currentTime": rfc3339(self.wall())}
        return (200 if ok else 503), body


class _IPv6Server(http.server.ThreadingHTTPServer):
    import socket as _socket

    address_family = _socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("healthz %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        owner: HealthServer = self.server.health
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/livez"):
            status, body = owner.health()
            self._reply(status, "application/json", json.dumps(body).encode())
        elif path == "/metrics":
            self._reply(200, "text/plain; version=0.0.4",
                        render_prometheus(owner.metrics).encode())
        else:
            self._reply(404, "text/plain", b"404 page not found\n")

    def _reply(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
