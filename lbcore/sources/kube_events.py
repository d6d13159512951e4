"""Report objects lbcore skips as Kubernetes Events (``kubectl describe`` shows them).

A ``Warning`` event with reason ``LBCoreInvalidObject`` on the object itself (Events of
cluster-scoped objects, such as Nodes, go to the ``default`` namespace, as the kubelet
does). Sent from one background thread through a bounded queue so that a watch never
waits for the API server; when the queue is full, events are dropped (the log line
that the store writes for every skipped object remains). Only ``create`` is used.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
from typing import Any

from ..errors import FieldError
from .kube_client import ApiError, KubeAPI, Resource

LOG = logging.getLogger(__name__)

REASON = "LBCoreInvalidObject"
COMPONENT = "lbcore"
MAX_MESSAGE = 1024  # the API server rejects longer event messages
QUEUE_SIZE = 256


def invalid_object_event(resource: Resource, obj: dict[str, Any], errors: list[FieldError],
                         node_name: str, now: datetime.datetime) -> tuple[str, dict[str, Any]]:
    """(namespace, v1 Event) saying that ``obj`` is skipped, and why."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "") if resource.namespaced else ""
    involved = {"apiVersion": resource.api_version, "kind": resource.kind, "name": name,
                **({"namespace": namespace} if namespace else {}),
                **{k: meta[k] for k in ("uid", "resourceVersion") if isinstance(meta.get(k), str)}}
    problems = "; ".join(f"{e.field}: {e.problem}" + (f" (valid: {e.valid})" if e.valid else "")
                         for e in errors)
    message = f"lbcore on node {node_name} cannot program this {resource.kind}: {problems}"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event_namespace = namespace or "default"
    return event_namespace, {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": event_namespace},
        "involvedObject": involved,
        "reason": REASON,
        "message": message,
        "type": "Warning",
        "source": {"component": COMPONENT, "host": node_name},
        "reportingComponent": COMPONENT,
        "reportingInstance": node_name,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventReporter:
    """``report(resource, obj, errors)`` queues an Event; a thread creates it."""

    def __init__(self, api: KubeAPI, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0

    def report(self, resource: Resource, obj: dict[str, Any], errors: list[FieldError]) -> None:
        item = invalid_object_event(resource, obj, errors, self.node_name,
                                    datetime.datetime.now(datetime.UTC))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_all, daemon=True,
                                                name="lbcore-kube-events")
                self._thread.start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            LOG.warning("kubernetes: event queue full; no Event for %s %s",
                        resource.kind, item[1]["involvedObject"]["name"])

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued events are sent (tests)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _send_all(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                namespace, event = item
                try:
                    self.api.create_event(namespace, event)
                    self.sent += 1
                except ApiError as exc:
                    LOG.warning("kubernetes: cannot create Event for %s %s: %s",
                                event["involvedObject"]["kind"],
                                event["involvedObject"]["name"], exc)
            finally:
                self._queue.task_done()
