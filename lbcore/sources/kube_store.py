"""What the watches have seen: objects validated one by one, and snapshots of them.

Unlike the file source, where one invalid object rejects the whole file, an object the
API server accepted but lbcore cannot program is *skipped*: it is left out of the
snapshots (as if deleted), reported once per resourceVersion (log line and, through
``report``, a Kubernetes Event naming it), and everything else keeps flowing.

Snapshots keep object identity: an object whose resourceVersion did not change — or
whose converted model did not change (a Node heartbeat, a label lbcore ignores) — stays
the *same* Python object from one snapshot to the next, and a service's slices tuple is
rebuilt only when one of its slices changed. The change tracker relies on that to find
what changed without comparing 10,000 services (``lbcore.tracker._candidates``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import FieldError
from ..k8s.endpointslice import slice_from_object
from ..k8s.node import node_from_object
from ..k8s.service import DEFAULT_NODE_PORT_RANGE, service_from_object
from ..model import ClusterObjects, EndpointSlice, Node, Service, ServiceKey
from .kube_client import ENDPOINTSLICES, NODES, SERVICES, Resource

LOG = logging.getLogger(__name__)

Reporter = Callable[[Resource, dict[str, Any], list[FieldError]], None]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for nodes


@dataclass
class _Entry:
    resource_version: str
    value: Any  # Service | EndpointSlice | Node


def object_key(obj: dict[str, Any]) -> ObjKey | None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    return (namespace if isinstance(namespace, str) else "", meta["name"])


def display_name(key: ObjKey) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


class ObjectStore:
    """Services, EndpointSlices and Nodes by key; thread-safe."""

    def __init__(self, *, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
                 report: Reporter | None = None) -> None:
        self._node_port_range = node_port_range
        self._report = report
        self._lock = threading.Lock()
        self._entries: dict[str, dict[ObjKey, _Entry]] = {r.plural: {} for r in
                                                          (SERVICES, ENDPOINTSLICES, NODES)}
        self._invalid: dict[str, dict[ObjKey, str]] = {r.plural: {} for r in
                                                       (SERVICES, ENDPOINTSLICES, NODES)}
        self._slices_of: dict[ServiceKey, dict[ObjKey, EndpointSlice]] = {}
        self._slice_tuples: dict[ServiceKey, tuple[EndpointSlice, ...]] = {}
        self._dirty = {SERVICES.plural, ENDPOINTSLICES.plural, NODES.plural}
        self._snapshot: ClusterObjects | None = None
        self.generation = 0  # counts changes; a snapshot is current if taken at this count

    # ----------------------------------------------------------------- updates

    def apply(self, resource: Resource, event_type: str, obj: dict[str, Any]) -> bool:
        """A watch event (ADDED, MODIFIED, DELETED). True if a snapshot would differ."""
        key = object_key(obj)
        if key is None:
            LOG.warning("kubernetes: %s %s event without metadata.name ignored",
                        resource.kind, event_type)
            return False
        with self._lock:
            if event_type == "DELETED":
                self._invalid[resource.plural].pop(key, None)
                return self._remove(resource, key)
            return self._put(resource, key, obj)

    def replace(self, resource: Resource, items: Iterable[dict[str, Any]]) -> bool:
        """The result of a (re)list: exactly these objects exist now."""
        changed = False
        seen: set[ObjKey] = set()
        with self._lock:
            for obj in items:
                key = object_key(obj)
                if key is None:
                    continue
                seen.add(key)
                changed |= self._put(resource, key, obj)
            for key in list(self._entries[resource.plural].keys() - seen):
                changed |= self._remove(resource, key)
            for key in list(self._invalid[resource.plural].keys() - seen):
                del self._invalid[resource.plural][key]
        return changed

    def _put(self, resource: Resource, key: ObjKey, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        rv = str(meta.get("resourceVersion") or "")
        entries = self._entries[resource.plural]
        old = entries.get(key)
        if old is not None and rv and old.resource_version == rv:
            return False  # the same version again (a relist): keep the very object
        value, errors = self._convert(resource, obj)
        if errors or value is None:
            if errors:
                self._skip(resource, key, rv, obj, errors)
            return self._remove(resource, key)
        self._invalid[resource.plural].pop(key, None)
        if old is not None and old.value == value:
            old.resource_version = rv  # nothing lbcore uses changed: keep the object
            return False
        entries[key] = _Entry(rv, value)
        if resource is ENDPOINTSLICES:
            self._index_slice(key, old.value if old else None, value)
        self._changed(resource)
        return True

    def _remove(self, resource: Resource, key: ObjKey) -> bool:
        old = self._entries[resource.plural].pop(key, None)
        if old is None:
            return False
        if resource is ENDPOINTSLICES:
            self._index_slice(key, old.value, None)
        self._changed(resource)
        return True

    def _changed(self, resource: Resource) -> None:
        self._dirty.add(resource.plural)
        self.generation += 1

    def _convert(self, resource: Resource, obj: dict[str, Any]) -> tuple[Any, list[FieldError]]:
        if resource is SERVICES:
            return service_from_object(obj, node_port_range=self._node_port_range)
        if resource is ENDPOINTSLICES:
            return slice_from_object(obj)
        return node_from_object(obj)

    def _skip(self, resource: Resource, key: ObjKey, rv: str, obj: dict[str, Any],
              errors: list[FieldError]) -> None:
        invalid = self._invalid[resource.plural]
        if invalid.get(key) == rv:
            return  # reported already (a relist sends it again)
        invalid[key] = rv
        problems = "; ".join(str(e) for e in errors)
        LOG.warning("kubernetes: skipping invalid %s %s (resourceVersion %s): %s",
                    resource.kind, display_name(key), rv or "?", problems)
        if self._report is not None:
            self._report(resource, obj, errors)

    def _index_slice(self, key: ObjKey, old: EndpointSlice | None,
                     new: EndpointSlice | None) -> None:
        """Keep per-service slice tuples; rebuild only the services this slice touches."""
        touched = set()
        if old is not None:
            self._slices_of.get(old.service, {}).pop(key, None)
            touched.add(old.service)
        if new is not None:
            self._slices_of.setdefault(new.service, {})[key] = new
            touched.add(new.service)
        for service in touched:
            slices = self._slices_of.get(service)
            if slices:
                self._slice_tuples[service] = tuple(sorted(slices.values(),
                                                           key=lambda s: s.name))
            else:
                self._slices_of.pop(service, None)
                self._slice_tuples.pop(service, None)

    # --------------------------------------------------------------- reading

    @property
    def invalid(self) -> dict[str, list[str]]:
        """Skipped objects by resource, as ``ns/name``."""
        with self._lock:
            return {plural: sorted(display_name(k) for k in keys)
                    for plural, keys in self._invalid.items() if keys}

    def snapshot(self) -> ClusterObjects:
        """The objects now; mappings that did not change are reused as they are."""
        with self._lock:
            if self._snapshot is not None and not self._dirty:
                return self._snapshot
            old = self._snapshot or ClusterObjects.empty()
            services, slices, nodes = old.services, old.slices, old.nodes
            if SERVICES.plural in self._dirty:
                found: dict[ServiceKey, Service] = {
                    e.value.key: e.value for e in self._entries[SERVICES.plural].values()}
                services = MappingProxyType(dict(sorted(found.items())))
            if ENDPOINTSLICES.plural in self._dirty:
                slices = MappingProxyType(dict(sorted(self._slice_tuples.items())))
            if NODES.plural in self._dirty:
                by_name: dict[str, Node] = {
                    e.value.name: e.value for e in self._entries[NODES.plural].values()}
                nodes = MappingProxyType(dict(sorted(by_name.items())))
            self._dirty.clear()
            self._snapshot = ClusterObjects(services, slices, nodes)
            return self._snapshot
