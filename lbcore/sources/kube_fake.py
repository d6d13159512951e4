"""A TEST DOUBLE of the Kubernetes API server: list/watch of Services, EndpointSlices
and Nodes, and create of Events, over real HTTP in this process.

It is not Kubernetes. It speaks the parts of the protocol that lbcore's source uses, as
kube-apiserver does, so that the real ``kubernetes`` client and lbcore's reflectors can be
tested without a cluster:

* lists: ``GET /api/v1/services`` (``/apis/discovery.k8s.io/v1/endpointslices``,
  ``/api/v1/nodes``) answer a ``ServiceList`` whose ``metadata.resourceVersion`` is the
  store's current version; items carry no apiVersion/kind, as from the real server;
  ``limit``/``continue`` pages from a consistent snapshot; an expired continue token is
  ``410 Gone``; ``labelSelector`` supports ``k=v``, ``k!=v``, ``k`` and ``!k``.
* watches (``?watch=true&resourceVersion=N``): a chunked HTTP response of JSON events,
  one per line (``ADDED``/``MODIFIED``/``DELETED`` with the object, ``BOOKMARK`` with only
  ``metadata.resourceVersion``), replayed from the history after ``N`` and then live,
  until ``timeoutSeconds``. An object that starts or stops matching the selector is
  ``ADDED``/``DELETED``, as the watch cache does. A version older than the compacted
  history gets an ``ERROR`` event carrying a ``410 Expired`` Status.
* faults on demand: ``drop_watches`` cuts every open watch without the chunked
  terminator (optionally in the middle of an event), ``expire_watches`` sends 410 ERROR
  events, ``compact`` forgets history, ``fail_next`` answers 5xx.
* ``POST /api/v1/namespaces/NS/events`` stores the Event.

Every request is recorded (``requests``: method, path, query), so tests can prove which
verbs a client used. Versions are one counter across all resources, as etcd's.
Objects to put in it: ``lbcore.sources.kube_objects``.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATHS = {
    "/api/v1/services": ("services", "v1", "Service"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "discovery.k8s.io/v1",
                                                 "EndpointSlice"),
    "/api/v1/nodes": ("nodes", "v1", "Node"),
}
KIND_PLURAL = {kind: plural for plural, _, kind in PATHS.values()}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]

    @property
    def verb(self) -> str:
        """The RBAC verb: list, watch, create, or the method for anything else."""
        if self.method == "GET" and self.path in PATHS:
            return "watch" if self.query.get("watch") in ("true", "1") else "list"
        if self.method == "POST" and self.path.endswith("/events"):
            return "create"
        return self.method.lower()

    @property
    def resource(self) -> str:
        if self.path in PATHS:
            return PATHS[self.path][0]
        return self.path.rsplit("/", 1)[-1]


@dataclass
class _Change:
    version: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


def _matches(selector: str, obj: dict[str, Any] | None) -> bool:
    if obj is None:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            ok = term[1:] not in labels
        elif "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.split("=", 1)
            ok = labels.get(key.rstrip("=")) == value
        else:
            ok = term in labels
        if not ok:
            return False
    return True


class FakeAPIServer:
    """Start with ``with FakeAPIServer() as api:``; ``api.url`` is the server address."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._cond = threading.Condition()
        self.version = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            p: {} for p, _, _ in PATHS.values()}
        self.history: dict[str, list[_Change]] = {p: [] for p, _, _ in PATHS.values()}
        self.compacted = 0  # watches from a version below this get 410
        self.requests: list[Request] = []
        self.events: list[dict[str, Any]] = []
        self._snapshots: dict[str, list[dict[str, Any]]] = {}
        self._drops = 0
        self._drop_partial = False
        self._expiries = 0
        self._bookmarks = 0
        self._failures: list[int] = []
        self._stopping = False
        self._open: dict[str, int] = {}
        self._server = http.server.ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAPIServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ the store

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update ``obj`` (a full API object); returns it as stored."""
        plural = KIND_PLURAL[obj["kind"]]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", "") if plural != "nodes" else "", meta["name"])
        with self._cond:
            old = self.objects[plural].get(key)
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2025-05-20T10:00:00Z")
            self.objects[plural][key] = obj
            self._record(plural, "MODIFIED" if old else "ADDED", obj, old)
        return copy.deepcopy(obj)

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        plural = KIND_PLURAL[kind]
        with self._cond:
            old = self.objects[plural].pop((namespace, name))
            self.version += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.version)
            self._record(plural, "DELETED", gone, old)

    def _record(self, plural: str, kind: str, obj: dict[str, Any],
                old: dict[str, Any] | None) -> None:
        self.history[plural].append(_Change(self.version, kind, copy.deepcopy(obj), old))
        self._cond.notify_all()

    # ------------------------------------------------------------- faults

    def compact(self) -> None:
        """Forget all history: a watch from any version up to now gets 410."""
        with self._cond:
            self.compacted = self.version + 1
            for changes in self.history.values():
                changes.clear()

    def drop_watches(self, *, partial: bool = False) -> None:
        """Cut every open watch connection (``partial``: after half of a pending event)."""
        with self._cond:
            self._drops += 1
            self._drop_partial = partial
            self._cond.notify_all()

    def expire_watches(self) -> None:
        """Send a ``410 Expired`` ERROR event to every open watch."""
        with self._cond:
            self._expiries += 1
            self._cond.notify_all()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current version to every open watch."""
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses (e.g. 500, 503)."""
        with self._cond:
            self._failures += statuses

    def expire_continue_tokens(self) -> None:
        with self._cond:
            self._snapshots.clear()

    def open_watches(self, plural: str | None = None) -> int:
        with self._cond:
            return self._open.get(plural, 0) if plural else sum(self._open.values())

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("fake apiserver: condition not met in time")
            time.sleep(0.01)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def api(self) -> FakeAPIServer:
        return self.server.api  # type: ignore[no-any-return]

    def _start(self, method: str) -> tuple[str, dict[str, str]] | None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        api = self.api
        with api._cond:
            api.requests.append(Request(method, parts.path, query))
            failure = api._failures.pop(0) if api._failures else None
        if failure is not None:
            self._status(failure, "InternalError", "injected failure")
            return None
        return parts.path, query

    def do_GET(self) -> None:
        started = self._start("GET")
        if started is None:
            return
        path, query = started
        if path not in PATHS:
            self._status(404, "NotFound", f"the server could not find {path}")
        elif query.get("watch") in ("true", "1"):
            self._watch(PATHS[path], query)
        else:
            self._list(PATHS[path], query)

    def do_POST(self) -> None:
        started = self._start("POST")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if started is None:
            return
        path, _ = started
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "events":
            self._status(405, "MethodNotAllowed", f"POST {path} is not allowed")
            return
        api = self.api
        with api._cond:
            api.version += 1
            meta = body.setdefault("metadata", {})
            meta["name"] = meta.get("name") or f"{meta.get('generateName', 'event.')}{api.version}"
            meta["resourceVersion"] = str(api.version)
            meta["namespace"] = parts[3]
            api.events.append(body)
        self._json(201, body)

    # ---------------------------------------------------------------- list

    def _list(self, kind: tuple[str, str, str], query: dict[str, str]) -> None:
        plural, api_version, name = kind
        api = self.api
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with api._cond:
            if token:
                snap_id, _, start_text = token.partition(":")
                items = api._snapshots.get(snap_id)
                if items is None:
                    self._status(410, "Expired", "The provided continue parameter is too old")
                    return
                start = int(start_text)
                version = snap_id.split("-")[0]
            else:
                selector = query.get("labelSelector", "")
                found = sorted(api.objects[plural].items())
                items = [copy.deepcopy(o) for _, o in found if _matches(selector, o)]
                for o in items:
                    o.pop("apiVersion", None)
                    o.pop("kind", None)
                version, start = str(api.version), 0
                snap_id = f"{version}-{uuid.uuid4().hex[:8]}"
                api._snapshots[snap_id] = items
        end = start + limit if limit else len(items)
        meta: dict[str, Any] = {"resourceVersion": version}
        if end < len(items):
            meta["continue"] = f"{snap_id}:{end}"
        self._json(200, {"kind": f"{name}List", "apiVersion": api_version, "metadata": meta,
                         "items": items[start:end]})

    # --------------------------------------------------------------- watch

    def _watch(self, kind: tuple[str, str, str], query: dict[str, str]) -> None:
        plural = kind[0]
        api = self.api
        selector = query.get("labelSelector", "")
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with api._cond:
            drops, expiries, bookmarks = api._drops, api._expiries, api._bookmarks
            api._open[plural] = api._open.get(plural, 0) + 1
        try:
            if since < api.compacted:
                self._chunk(_expired(since))
                self._end()
                return
            while True:
                with api._cond:
                    pending = [c for c in api.history[plural] if c.version > since]
                    if not pending and api._drops == drops and api._expiries == expiries \
                            and api._bookmarks == bookmarks and not api._stopping:
                        api._cond.wait(max(0.0, min(0.2, deadline - time.monotonic())))
                        pending = [c for c in api.history[plural] if c.version > since]
                    dropped, partial = api._drops != drops, api._drop_partial
                    expired, stopping = api._expiries != expiries, api._stopping
                    bookmark = api._bookmarks != bookmarks
                    bookmarks = api._bookmarks
                    version = api.version
                if dropped:
                    if partial and pending:
                        self._raw_partial(_event_line(pending[0], selector) or b"{}\n")
                    self._cut()
                    return
                for change in pending:
                    line = _event_line(change, selector)
                    if line is not None:
                        self._chunk(line)
                    since = change.version
                if expired:
                    self._chunk(_expired(since))
                    self._end()
                    return
                if bookmark:
                    self._chunk(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": kind[2], "apiVersion": kind[1],
                        "metadata": {"resourceVersion": str(version)}}}).encode() + b"\n")
                if stopping or time.monotonic() >= deadline:
                    self._end()
                    return
        except OSError:
            self.close_connection = True
        finally:
            with api._cond:
                api._open[plural] -= 1

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _raw_partial(self, line: bytes) -> None:
        half = line[: max(1, len(line) // 2)]
        self.wfile.write(f"{len(line):x}\r\n".encode() + half)
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------- replies

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": message, "reason": reason,
                          "code": code})


def _event_line(change: _Change, selector: str) -> bytes | None:
    """The event a watch with ``selector`` sees for ``change``, as the watch cache does."""
    now, before = _matches(selector, change.obj), _matches(selector, change.old)
    kind = change.type
    if kind == "DELETED":
        if not before:
            return None
    elif now and not before:
        kind = "ADDED"
    elif before and not now:
        kind = "DELETED"
    elif not now:
        return None
    return json.dumps({"type": kind, "object": change.obj}).encode() + b"\n"


def _expired(since: int) -> bytes:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": f"too old resource version: {since}", "reason": "Expired",
              "code": 410}
    return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"

