"""Documents in, ``ClusterObjects`` out: dispatch by kind, then checks across objects.

An input is all or nothing: if any object is invalid, ``ValidationError`` lists every
problem of every object and nothing is returned, so a half-valid file can never
replace a good state. Kinds that ``kubectl get ... -o yaml`` may print but that do not
matter for load balancing (Endpoints, Pod, ConfigMap, ...) are skipped.

Across objects, the checks the API server's allocators make: one object per
kind/namespace/name, a nodePort belongs to one service, a clusterIP to one service.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import FieldError, ValidationError
from ..model import ClusterObjects, EndpointSlice, Node, Service, ServiceKey
from .documents import Document
from .endpointslice import slice_from_object
from .fields import show
from .node import node_from_object
from .service import DEFAULT_NODE_PORT_RANGE, service_from_object

KNOWN_KINDS = {
    # kind: (API group, version we read, namespaced)
    "Service": ("", "v1", True),
    "EndpointSlice": ("discovery.k8s.io", "v1", True),
    "Node": ("", "v1", False),
}


@dataclass(frozen=True)
class _Parsed:
    """A converted object (None if the object is ignored) and its origin."""

    document: Document
    kind: str
    name: str  # ns/name, or name for cluster-scoped kinds
    value: Service | EndpointSlice | Node | None


def parse_objects(
    documents: Iterable[Document],
    *,
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
    source: str = "",
) -> ClusterObjects:
    """Validate and index ``documents``. Raises ValidationError listing every problem."""
    _check_range(node_port_range)
    documents = list(documents)
    errors: list[FieldError] = []
    parsed: list[_Parsed] = []
    for doc in documents:
        result, errs = _parse(doc, node_port_range)
        if result is not None:
            parsed.append(result)
        errors += errs
    errors += _cross_object_errors(parsed)
    if errors:
        files = {d.file for d in documents}
        raise ValidationError(errors, source=source or (files.pop() if len(files) == 1 else ""))
    return _index(parsed)


# ------------------------------------------------------------------ one document


Converter = Callable[[Mapping[str, Any]], tuple[Any, list[FieldError]]]


def _parse(doc: Document, node_port_range: tuple[int, int]) -> tuple[_Parsed | None,
                                                                     list[FieldError]]:
    obj = doc.obj
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    missing = [FieldError(field, "required value", valid)
               for field, value, valid in (("apiVersion", api_version, "e.g. v1"),
                                           ("kind", kind, "e.g. Service"))
               if not isinstance(value, str) or not value]
    if missing:
        name = _display_name(obj, namespaced=None)
        return None, [_locate(e, doc, kind if isinstance(kind, str) else "", name)
                      for e in missing]
    assert isinstance(api_version, str) and isinstance(kind, str)

    known = KNOWN_KINDS.get(kind)
    group, _, version = api_version.rpartition("/")
    if known is None or group != known[0]:
        return None, []  # another kind, or another group's kind of the same name
    expected_group, expected_version, namespaced = known
    name = _display_name(obj, namespaced)
    if version != expected_version:
        wanted = f"{expected_group}/{expected_version}".lstrip("/")
        return None, [_locate(FieldError("apiVersion", f"unsupported version {show(api_version)}",
                                         wanted), doc, kind, name)]

    converters: dict[str, Converter] = {
        "Service": functools.partial(service_from_object, node_port_range=node_port_range),
        "EndpointSlice": slice_from_object,
        "Node": node_from_object,
    }
    value, errs = converters[kind](obj)
    return _Parsed(doc, kind, name, value), [_locate(e, doc, kind, name) for e in errs]


def _display_name(obj: Mapping[str, Any], namespaced: bool | None) -> str:
    """``ns/name`` (namespace defaulted) or ``name``; for an unknown kind (None),
    the namespace only if the object gives one."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    namespace = meta.get("namespace")
    namespace = namespace if isinstance(namespace, str) else ""
    if not name or namespaced is False or (namespaced is None and not namespace):
        return name
    return f"{namespace or 'default'}/{name}"


def _locate(error: FieldError, doc: Document, kind: str, name: str) -> FieldError:
    return error.located(file=doc.file, document=doc.index, kind=kind, name=name)


# -------------------------------------------------------------- across objects


def _cross_object_errors(parsed: list[_Parsed]) -> list[FieldError]:
    """What the API server's allocators would refuse across objects."""
    services = [p for p in parsed if isinstance(p.value, Service)]
    return _duplicates(parsed) + _node_port_conflicts(services) + _cluster_ip_conflicts(services)


def _duplicates(parsed: list[_Parsed]) -> list[FieldError]:
    first: dict[tuple[str, str], _Parsed] = {}
    errors = []
    for p in parsed:
        if not p.name:
            continue  # nameless: already reported
        earlier = first.setdefault((p.kind, p.name), p)
        if earlier is not p:
            errors.append(_locate(FieldError(
                "metadata.name", f"duplicate {p.kind} {p.name!r}, "
                f"first defined in {earlier.document.where}", "each object once per input"),
                p.document, p.kind, p.name))
    return errors


def _node_port_conflicts(services: list[_Parsed]) -> list[FieldError]:
    """The node port allocator: a port number belongs to one service, any protocol."""
    owners: dict[int, _Parsed] = {}
    errors = []
    for p in services:
        assert isinstance(p.value, Service)
        for i, port in enumerate(p.value.ports):
            if port.node_port is None:
                continue
            owner = owners.setdefault(port.node_port, p)
            if owner.name != p.name:
                errors.append(_locate(FieldError(
                    f"spec.ports[{i}].nodePort",
                    f"invalid value {port.node_port}: provided port is already allocated "
                    f"to Service {owner.name} ({owner.document.where})",
                    "a node port no other service uses"), p.document, p.kind, p.name))
    return errors


def _cluster_ip_conflicts(services: list[_Parsed]) -> list[FieldError]:
    """The service IP allocator: a cluster IP belongs to one service."""
    owners: dict[str, _Parsed] = {}
    errors = []
    for p in services:
        assert isinstance(p.value, Service)
        if p.value.headless:
            continue
        for i, ip in enumerate(p.value.cluster_ips):
            owner = owners.setdefault(ip, p)
            if owner.name != p.name:
                errors.append(_locate(FieldError(
                    f"spec.clusterIPs[{i}]",
                    f"invalid value {show(ip)}: provided IP is already allocated "
                    f"to Service {owner.name} ({owner.document.where})",
                    "a cluster IP no other service uses"), p.document, p.kind, p.name))
    return errors


def _index(parsed: list[_Parsed]) -> ClusterObjects:
    services: dict[ServiceKey, Service] = {}
    slices: dict[ServiceKey, list[EndpointSlice]] = {}
    nodes: dict[str, Node] = {}
    for p in parsed:
        if isinstance(p.value, Service):
            services[p.value.key] = p.value
        elif isinstance(p.value, EndpointSlice):
            slices.setdefault(p.value.service, []).append(p.value)
        elif isinstance(p.value, Node):
            nodes[p.value.name] = p.value
    return ClusterObjects(
        services=MappingProxyType(dict(sorted(services.items()))),
        slices=MappingProxyType({k: tuple(sorted(v, key=lambda s: s.name))
                                 for k, v in sorted(slices.items())}),
        nodes=MappingProxyType(dict(sorted(nodes.items()))),
    )


def _check_range(node_port_range: tuple[int, int]) -> None:
    low, high = node_port_range
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"node_port_range {node_port_range!r}: want 1 <= low <= high <= 65535")
