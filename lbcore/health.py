"""The agent's HTTP endpoints: ``/healthz`` and ``/livez`` (kube-proxy's), ``/metrics``.

``lbcore run --healthz-bind-address 0.0.0.0:10256`` serves them, as kube-proxy serves
its health on port 10256, for the DaemonSet's probes. The rule is kube-proxy's
(``pkg/proxy/healthcheck``), kept by :class:`ProxyHealth`:

* the agent is *updated* when its loop starts and after every successful sync;
* a change the agent must program is *queued*; the oldest queued change that no
  successful sync has programmed yet starts the clock;
* unhealthy once that oldest pending change is ``runner.health_timeout`` old or older.
  So before the first sync the agent is healthy, as kube-proxy is, until the first
  snapshot's changes have waited the timeout (a driver that cannot set up, a sync that
  keeps failing); a failed sync with nothing pending does not by itself turn it
  unhealthy (kube-proxy: SyncFailure without a queued update).

``/healthz`` is also 503 while this node is not *eligible* (its Node is being deleted
or carries the cluster autoscaler's ``ToBeDeletedByClusterAutoscaler`` taint), so a
load balancer drains it; ``/livez`` ignores eligibility (a liveness probe must not
restart a healthy agent on a draining node). Bodies are kube-proxy's JSON:
``{"lastUpdated", "currentTime"}`` (plus ``"nodeEligible"`` on ``/healthz``); while
healthy ``lastUpdated`` is the current time, as kube-proxy reports it for
compatibility, else the last time the agent was updated. Times are RFC 3339 (kube-proxy
prints Go's ``time.Time`` string form). Every response counts in
``kubeproxy_proxy_healthz_total{code}`` / ``kubeproxy_proxy_livez_total{code}``.

``/metrics`` is the Prometheus text of ``lbcore.metrics``. Anything else is ``404``.
A ``ThreadingHTTPServer`` in a daemon thread; it reads state only (under locks), so a
slow scrape never delays a sync.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clock import Clock
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


@dataclass(frozen=True)
class HealthStatus:
    healthy: bool  # no change pending longer than the timeout
    last_updated: float  # Unix time of the start or the last successful sync
    current_time: float
    node_eligible: bool = True


class ProxyHealth:
    """kube-proxy's proxier health state: ``updated``, ``queued_update``, ``status``.

    Times of pending changes are monotonic (``clock.now``); ``lastUpdated`` is Unix
    time (``clock.wall``). Thread-safe.
    """

    def __init__(self, clock: Clock, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._lock = threading.Lock()
        self._oldest_pending: float | None = None
        self._last_updated = 0.0
        self._node_eligible = True

    def updated(self, still_pending_since: float | None = None) -> None:
        """A sync succeeded (or the loop starts). Changes that arrived during the
        sync are still pending since ``still_pending_since``."""
        with self._lock:
            self._oldest_pending = still_pending_since
            self._last_updated = self._clock.wall()

    def queued_update(self, since: float | None = None) -> None:
        """A change waits for a sync (seen at monotonic ``since``, default now)."""
        when = self._clock.now() if since is None else since
        with self._lock:
            if self._oldest_pending is None or when < self._oldest_pending:
                self._oldest_pending = when

    def set_node_eligible(self, eligible: bool) -> None:
        with self._lock:
            if eligible != self._node_eligible:
                LOG.info("this node is %s", "eligible again" if eligible else
                         "being deleted: /healthz answers 503 so load balancers drain it")
            self._node_eligible = eligible

    def status(self) -> HealthStatus:
        now, wall = self._clock.now(), self._clock.wall()
        with self._lock:
            oldest = self._oldest_pending
            healthy = oldest is None or now - oldest < self.timeout
            return HealthStatus(healthy, self._last_updated, wall, self._node_eligible)


def health_reply(path: str, status: HealthStatus) -> tuple[int, dict[str, Any]]:
    """kube-proxy's /healthz (node eligibility counts) or /livez answer."""
    ok = status.healthy and (status.node_eligible or path == "/livez")
    last = status.current_time if ok else status.last_updated
    body: dict[str, Any] = {"lastUpdated": rfc3339(last),
                            "currentTime": rfc3339(status.current_time)}
    if path == "/healthz":
        body["nodeEligible"] = status.node_eligible
    return (200 if ok else 503), body


class HealthServer:
    """Serves the endpoints for ``status()`` and ``metrics``."""

    def __init__(self, address: tuple[str, int], status: Callable[[], HealthStatus],
                 metrics: Metrics) -> None:
        self.status = status
        self.metrics = metrics
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

    def health(self, path: str) -> tuple[int, dict[str, Any]]:
        code, body = health_reply(path, self.status())
        self.metrics.served(path, code)
        return code, body


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
            status, body = owner.health(path)
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
