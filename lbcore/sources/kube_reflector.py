"""List, then watch, one resource — client-go's Reflector, reduced to what lbcore needs.

* **List** in pages (``limit`` + ``continue``) with ``resourceVersion`` unset, i.e. a
  consistent read; the list's ``metadata.resourceVersion`` is where the watch starts.
  An expired continue token (``410``) restarts the list from the beginning.
* **Watch** from the last resourceVersion seen, with ``allowWatchBookmarks`` (a
  ``BOOKMARK`` only moves the resourceVersion on) and a server-side ``timeoutSeconds``
  drawn between ``watch_timeout`` and twice that, as client-go does, so that all agents
  of a cluster do not reconnect at once. When a watch ends (timeout, dropped
  connection, any error) the next one resumes from the last resourceVersion: no event
  is missed and none is replayed.
* **410 Gone** (as the response status or as an ``ERROR`` event): the resourceVersion
  is older than the server's history; relist at once.
* **Errors** (connection refused, 5xx, a broken stream, ...): retry after a capped
  exponential backoff with jitter; the backoff resets once a list or a watch works.
  Each failure counts in ``errors``; the first list or watch that works after one
  calls ``on_recovered`` (the source then asks the agent for a full sync).
* **Periodic relist** every ``resync_period`` (jittered), a safety net against any
  event lost by a bug anywhere; unchanged objects keep their identity (``ObjectStore``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..runner import Backoff
from .kube_client import ApiError, KubeAPI, Resource, WatchStream
from .kube_store import ObjectStore

LOG = logging.getLogger(__name__)

WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})
MIN_HEALTHY_WATCH = 1.0  # seconds: a watch that ends sooner with no event counts as failed


class Reflector:
    def __init__(
        self,
        api: KubeAPI,
        resource: Resource,
        store: ObjectStore,
        on_change: Callable[[], None],
        *,
        on_recovered: Callable[[], None] = lambda: None,
        label_selector: str | None = None,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        resync_period: float = 900.0,
        backoff_initial: float = 0.8,
        backoff_max: float = 30.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.resource = resource
        self.store = store
        self.on_change = on_change
        self.on_recovered = on_recovered
        self.label_selector = label_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.resync_period = resync_period
        self.jitter = jitter
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._rng = rng or random.Random()
        self._clock = clock
        self._list_lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._next_relist = float("inf")
        self.resource_version: str | None = None  # None: (re)list needed
        self.synced = threading.Event()  # set after the first successful list
        self.lists = 0
        self.watches = 0
        self.errors = 0  # failed lists and watches (each retried)
        self._failing = False

    def describe(self) -> str:
        selector = f" ({self.label_selector})" if self.label_selector else ""
        return f"{self.resource.plural}{selector}"

    # --------------------------------------------------------------------- list

    def list(self) -> None:
        """A full (paged) list into the store; the watch resumes from its version."""
        with self._list_lock:
            items, version = self._list_pages()
            for obj in items:  # items of a list carry no apiVersion/kind
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.resource.kind)
            changed = self.store.replace(self.resource, items)
            self.resource_version = version
            self.lists += 1
            period = self.resync_period
            self._next_relist = (self._clock() + period * (1 + self.jitter * self._rng.random())
                                 if period else float("inf"))
            self.synced.set()
        LOG.debug("kubernetes: listed %d %s at resourceVersion %s", len(items),
                  self.resource.plural, version)
        if changed:
            self.on_change()

    def _list_pages(self) -> tuple[list[dict[str, Any]], str]:
        for attempt in (1, 2):
            items: list[dict[str, Any]] = []
            token: str | None = None
            try:
                while True:
                    page = self.api.list(self.resource, label_selector=self.label_selector,
                                         limit=self.page_size, continue_token=token)
                    items += [o for o in page.get("items") or [] if isinstance(o, dict)]
                    meta = page.get("metadata") or {}
                    token = meta.get("continue") or None
                    if token is None:
                        return items, str(meta.get("resourceVersion") or "")
            except ApiError as exc:
                if not (exc.gone and token is not None and attempt == 1):
                    raise
                LOG.info("kubernetes: list %s: continue token expired; listing again",
                         self.resource.plural)
        raise AssertionError("unreachable")

    # -------------------------------------------------------------------- watch

    def run(self, stop: threading.Event) -> None:
        """List and watch until ``stop``; never raises."""
        while not stop.is_set():
            try:
                if self.resource_version is None or self._clock() >= self._next_relist:
                    self.list()
                    self._worked()
                    if stop.is_set():
                        break
                if self._watch_once(stop):
                    self._worked()
            except ApiError as exc:
                if stop.is_set():
                    break
                if exc.gone:
                    LOG.info("kubernetes: %s: %s; relisting", self.resource.plural, exc)
                    self.resource_version = None
                    self._failed()
                    continue
                self._retry_later(stop, str(exc))
            except Exception as exc:  # a bug must not end the watch for good
                if stop.is_set():
                    break
                LOG.exception("kubernetes: %s: unexpected error", self.resource.plural)
                self._retry_later(stop, f"{type(exc).__name__}: {exc}")

    def interrupt(self) -> None:
        """End a blocked watch now (from another thread)."""
        stream = self._stream
        if stream is not None:
            stream.close()

    def _failed(self) -> None:
        self.errors += 1
        self._failing = True

    def _worked(self) -> None:
        self._backoff.reset()
        self._recovered()

    def _recovered(self) -> None:
        """Working again after a failure (the backoff resets only once a list or
        watch has really worked, see ``_watch_once``)."""
        if self._failing:
            self._failing = False
            LOG.info("kubernetes: %s: working again", self.describe())
            self.on_recovered()

    def _retry_later(self, stop: threading.Event, why: str) -> None:
        self._failed()
        delay = self._backoff.next() * (1 + self.jitter * self._rng.random())
        LOG.warning("kubernetes: %s: %s; retrying in %.1f s", self.describe(), why, delay)
        stop.wait(delay)

    def _watch_once(self, stop: threading.Event) -> bool:
        """One watch request; True if it worked (ended normally or delivered events)."""
        assert self.resource_version is not None
        timeout = self.watch_timeout * (1 + self._rng.random())
        timeout = max(1, int(min(timeout, self._next_relist - self._clock() + 1)))
        started, events = self._clock(), 0
        stream = self.api.watch(self.resource, resource_version=self.resource_version,
                                label_selector=self.label_selector, timeout_seconds=timeout)
        self._stream = stream
        self.watches += 1
        self._recovered()  # the server answered: the watch is up again
        try:
            if stop.is_set():
                return True
            for event in stream:
                events += 1
                self._handle(event)
                if stop.is_set():
                    return True
        finally:
            self._stream = None
            stream.close()
        if events == 0 and self._clock() - started < MIN_HEALTHY_WATCH:
            raise ApiError(f"watch {self.resource.plural} ended at once without an event")
        return True

    def _handle(self, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(f"watch {self.resource.plural}: {kind} event without an object")
        if kind == "ERROR":  # obj is a Status
            code = obj.get("code") if isinstance(obj.get("code"), int) else 0
            raise ApiError(f"watch {self.resource.plural}: {code} {obj.get('reason', '')}: "
                           f"{obj.get('message', '')}", code)
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        version = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            if isinstance(version, str) and version:
                self.resource_version = version
            return
        if kind not in WATCH_EVENT_TYPES:
            LOG.warning("kubernetes: watch %s: unknown event type %r ignored",
                        self.resource.plural, kind)
            return
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        changed = self.store.apply(self.resource, kind, obj)
        if isinstance(version, str) and version:
            self.resource_version = version
        if changed:
            self.on_change()
