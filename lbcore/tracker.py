"""Which services changed since the last successful sync.

Like kube-proxy's ``serviceChangeTracker``/``endpointsChangeTracker``, the tracker keeps
a ``{previous, current}`` pair per changed service: *previous* is what the last
checkpoint (sync) saw, *current* the newest snapshot. A pair whose ends compare equal
(a service edited and edited back before the sync ran) is dropped, so the driver is not
asked to rewrite it.

What a service depends on is its ``ServiceView``: its Service object, its EndpointSlices
and — for NodePort and LoadBalancer services, whose NodePort frontends and
``externalTrafficPolicy: Local`` backends depend on nodes — the Node objects. A Node
change therefore reports every NodePort/LoadBalancer service.

Sources hand over whole snapshots (``update``); the tracker diffs them. It is
thread-safe: a source thread updates while the sync thread checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from .clock import Clock
from .model import ClusterObjects, EndpointSlice, Node, Service, ServiceKey, ServiceType

NODE_DEPENDENT_TYPES = frozenset({ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER})


@dataclass(frozen=True)
class ServiceView:
    """Everything in a snapshot that one service's frontends are computed from."""

    service: Service | None
    slices: tuple[EndpointSlice, ...] = ()
    nodes: tuple[Node, ...] | None = None  # only for NodePort / LoadBalancer services


class _Unsynced:
    """``previous`` of a change whose sync failed: equal to nothing, never dropped."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "<unsynced>"


UNSYNCED = _Unsynced()


@dataclass
class _Change:
    previous: ServiceView | _Unsynced | None  # None: did not exist at the last checkpoint
    current: ServiceView | None  # None: does not exist now
    since: float  # monotonic time the change was first seen


def change_kind(previous: ServiceView | _Unsynced | None, current: ServiceView | None) -> str:
    """"endpoints" when only a service's EndpointSlices differ, else "service" (its
    Service object, its nodes, its existence, or unknown after a failed sync), for
    kube-proxy's separate service/endpoint change counters."""
    same = (isinstance(previous, ServiceView) and current is not None
            and previous.service == current.service and previous.nodes == current.nodes)
    return "endpoints" if same else "service"


class Checkpoint(NamedTuple):
    """What one sync works from: the snapshot, what changed, and since when."""

    objects: ClusterObjects | None  # None until a source delivered a valid snapshot
    changed: frozenset[ServiceKey]
    queued_at: Mapping[ServiceKey, float]  # monotonic time each change was first seen


def _sorted_nodes(objects: ClusterObjects) -> tuple[Node, ...]:
    return tuple(sorted(objects.nodes.values(), key=lambda n: n.name))


def _view(objects: ClusterObjects, key: ServiceKey, nodes: tuple[Node, ...]) -> ServiceView:
    service = objects.services.get(key)
    slices = tuple(sorted(objects.slices.get(key, ()), key=lambda s: (s.namespace, s.name)))
    depends_on_nodes = service is not None and service.type in NODE_DEPENDENT_TYPES
    return ServiceView(service, slices, nodes if depends_on_nodes else None)


def service_views(objects: ClusterObjects) -> dict[ServiceKey, ServiceView]:
    """One view per service key that has a Service or an EndpointSlice."""
    nodes = _sorted_nodes(objects)
    return {key: _view(objects, key, nodes)
            for key in objects.services.keys() | objects.slices.keys()}


def _candidates(previous: ClusterObjects | None, objects: ClusterObjects) -> set[ServiceKey]:
    """Keys whose view may differ: all of them, unless ``previous`` shares objects.

    A key whose Service and slices are the very objects of the previous snapshot (a
    watch source replaces only what changed) cannot have changed; with 10,000
    services an endpoint change must not rebuild 10,000 views.
    """
    keys = objects.services.keys() | objects.slices.keys()
    if previous is None or _sorted_nodes(previous) != _sorted_nodes(objects):
        return keys | previous.services.keys() | previous.slices.keys() if previous else keys
    old_services, old_slices = previous.services, previous.slices
    new_services, new_slices = objects.services, objects.slices
    changed = {k for k in keys if old_services.get(k) is not new_services.get(k)
               or old_slices.get(k) is not new_slices.get(k)}
    return changed | (old_services.keys() - keys) | (old_slices.keys() - keys)


class ChangeTracker:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: ClusterObjects | None = None
        self._views: dict[ServiceKey, ServiceView] = {}
        self._changes: dict[ServiceKey, _Change] = {}
        self.last_kinds = (0, 0)  # (service, endpoint) changes of the last update

    @property
    def objects(self) -> ClusterObjects | None:
        with self._lock:
            return self._objects

    def update(self, objects: ClusterObjects) -> frozenset[ServiceKey]:
        """Take a new snapshot; return the keys whose view differs from the last one.

        The return value is what *this* update changed (for logs and counters);
        ``pending()`` is what the next sync has to program.
        """
        with self._lock:
            previous = self._objects
        nodes = _sorted_nodes(objects)
        live = objects.services.keys() | objects.slices.keys()
        fresh = {key: _view(objects, key, nodes)
                 for key in _candidates(previous, objects) if key in live}
        now = self._clock.now()
        touched: set[ServiceKey] = set()
        endpoint_only = 0
        with self._lock:
            gone = list(self._views.keys() - live)
            for key in [*fresh, *gone]:
                old, new = self._views.get(key), fresh.get(key)
                if old == new:
                    continue
                touched.add(key)
                endpoint_only += change_kind(old, new) == "endpoints"
                change = self._changes.get(key)
                if change is None:
                    self._changes[key] = _Change(previous=old, current=new, since=now)
                else:
                    change.current = new
                    if change.previous == change.current:
                        del self._changes[key]
            for key in gone:
                del self._views[key]
            self._views.update(fresh)
            self._objects = objects
            self.last_kinds = (len(touched) - endpoint_only, endpoint_only)
        return frozenset(touched)

    def pending(self) -> frozenset[ServiceKey]:
        with self._lock:
            return frozenset(self._changes)

    def pending_kinds(self) -> tuple[int, int]:
        """Pending (service, endpoint) changes: kube-proxy's *_changes_pending."""
        with self._lock:
            endpoints = sum(change_kind(c.previous, c.current) == "endpoints"
                            for c in self._changes.values())
            return len(self._changes) - endpoints, endpoints

    def oldest_pending(self) -> float | None:
        """Monotonic time the oldest unsynced change was seen, or None."""
        with self._lock:
            return min((c.since for c in self._changes.values()), default=None)

    def checkpoint(self) -> Checkpoint:
        """Take the state and the changes for one sync; pending changes are cleared.

        If the sync fails, hand the checkpoint back to ``requeue``.
        """
        with self._lock:
            changes, self._changes = self._changes, {}
            return Checkpoint(
                self._objects,
                frozenset(changes),
                MappingProxyType({k: c.since for k, c in changes.items()}),
            )

    def requeue(self, checkpoint: Checkpoint) -> None:
        """A sync of ``checkpoint`` failed: its changes are pending again.

        Their ``previous`` becomes unknown (the kernel may hold anything), so they are
        never dropped as no-ops, and they keep their original ``since`` time.
        """
        with self._lock:
            for key in checkpoint.changed:
                since = checkpoint.queued_at.get(key, self._clock.now())
                change = self._changes.get(key)
                if change is None:
                    self._changes[key] = _Change(UNSYNCED, self._views.get(key), since)
                else:
                    change.previous = UNSYNCED
                    change.since = min(change.since, since)
