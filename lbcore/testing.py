"""Test doubles for the control plane: an in-memory driver, an in-memory source, a
naive expansion, and small model builders.

These exist so that the agent, the CLI and third-party plugins can be tested without
a kernel, installed entry points or the Kubernetes conversion — the Katran pattern of
a fake datapath adapter instead of ``if testing:`` branches in the real code. None of
this is used outside tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from .driver import Capabilities, Driver, SyncResult
from .errors import LBCoreError
from .model import (
    Backend,
    BackendState,
    ClusterObjects,
    DesiredState,
    Endpoint,
    EndpointSlice,
    Frontend,
    FrontendAddress,
    FrontendState,
    FrontendType,
    Node,
    NodeInfo,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SlicePort,
)
from .sources.base import Source


class FakeDriver(Driver):
    """TEST DOUBLE: a datapath held in a dict. Records every call.

    ``calls`` lists method names in order; ``syncs`` the ``(state, changed)`` pairs
    given to ``sync``. Queue exceptions in ``sync_failures`` to make the next syncs
    raise them (after recording the call). ``dump`` reads the dict, with ids kept
    stable per frontend address, as a real datapath's would be.
    """

    name = "fake"
    caps: ClassVar[Capabilities] = Capabilities(description="in-memory test double")

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.calls: list[str] = []
        self.syncs: list[tuple[DesiredState, frozenset[ServiceKey] | None]] = []
        self.sync_failures: list[BaseException] = []
        self.problems: list[Any] = []
        self.held: dict[FrontendAddress, Frontend] = {}
        self._ids: dict[FrontendAddress, int] = {}

    @classmethod
    def capabilities(cls) -> Capabilities:
        return cls.caps

    def check(self) -> list[Any]:
        self.calls.append("check")
        return list(self.problems)

    def setup(self) -> None:
        self.calls.append("setup")

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        self.calls.append("sync")
        self.syncs.append((state, changed))
        if self.sync_failures:
            raise self.sync_failures.pop(0)
        before = set(self.held)
        self.held = {fe.address: fe for fe in state.frontends}
        for address in sorted(self.held):
            self._ids.setdefault(address, len(self._ids) + 1)
        written = len(state.services) if changed is None else len(changed)
        return SyncResult(changed is None, len(self.held), written, len(before - set(self.held)))

    def dump(self) -> list[FrontendState]:
        self.calls.append("dump")
        return [
            FrontendState(
                self._ids[address], address, fe.type.value,
                tuple(BackendState(b.ip, b.port, b.state) for b in fe.backends),
                fe.service_port,
            )
            for address, fe in sorted(self.held.items())
        ]

    def cleanup(self) -> None:
        self.calls.append("cleanup")
        self.held.clear()

    def close(self) -> None:
        self.calls.append("close")

    @property
    def last_changed(self) -> frozenset[ServiceKey] | None:
        return self.syncs[-1][1]


class MemorySource(Source):
    """TEST DOUBLE: a source whose snapshot a test sets (``put``) or breaks (``fail``).

    ``watch`` calls back at start and after every ``put``/``fail``/``trigger``, and
    returns when ``stop`` is set.
    """

    kind = "memory"

    def __init__(self, objects: ClusterObjects | None = None) -> None:
        super().__init__({}, None)
        self._objects = objects or ClusterObjects.empty()
        self._error: LBCoreError | None = None
        self._changed = threading.Event()
        self.reads = 0

    def put(self, objects: ClusterObjects) -> None:
        self._objects, self._error = objects, None
        self._changed.set()

    def fail(self, error: LBCoreError) -> None:
        self._error = error
        self._changed.set()

    def trigger(self) -> None:
        super().trigger()
        self._changed.set()

    def read(self) -> ClusterObjects:
        self.reads += 1
        if self._error is not None:
            raise self._error
        return self._objects

    def watch(self, callback: Callable[[], None], stop: threading.Event) -> None:
        callback()
        while not stop.is_set():
            if self._changed.wait(0.05):
                self._changed.clear()
                self.take_trigger()
                callback()


def naive_expand(
    objects: ClusterObjects, node: NodeInfo, *, service_proxy_name: str | None = None
) -> DesiredState:
    """TEST DOUBLE for ``lbcore.expand.expand``: ClusterIP and NodePort frontends with
    every ready endpoint at the slice's first port. No policies, no topology."""
    frontends: list[Frontend] = []
    for key, svc in sorted(objects.services.items()):
        backends = tuple(sorted(
            Backend(address, sl.ports[0].port if sl.ports else 0)
            for sl in objects.slices.get(key, ())
            for ep in sl.endpoints if ep.ready
            for address in ep.addresses
        ))
        for sp in svc.ports:
            addresses = [(FrontendType.CLUSTER_IP, ip, sp.port) for ip in svc.cluster_ips]
            if sp.node_port:
                addresses += [(FrontendType.NODE_PORT, ip, sp.node_port) for ip in node.addresses]
            for kind, ip, port in addresses:
                frontends.append(Frontend(
                    key, sp.name, kind, FrontendAddress(ip, port, sp.protocol), backends,
                    backends, session_affinity_timeout=svc.session_affinity_timeout,
                ))
    return DesiredState(node, tuple(frontends))


# ---------------------------------------------------------------- model builders


def service(
    name: str, cluster_ip: str, *, port: int = 80, protocol: str = "TCP",
    namespace: str = "default", node_port: int | None = None,
    affinity: int | None = None,
) -> Service:
    kind = ServiceType.NODE_PORT if node_port else ServiceType.CLUSTER_IP
    return Service(
        ServiceKey(namespace, name), kind, (cluster_ip,), (4 if ":" not in cluster_ip else 6,),
        (ServicePort("", protocol, port, port, node_port),), session_affinity_timeout=affinity,
    )


def endpoint_slice(
    svc: Service, addresses: Iterable[str], *, port: int = 8080, suffix: str = "abc",
) -> EndpointSlice:
    addresses = list(addresses)
    family = "IPv6" if addresses and ":" in addresses[0] else "IPv4"
    return EndpointSlice(
        svc.key.namespace, f"{svc.key.name}-{suffix}", svc.key, family,
        (SlicePort("", svc.ports[0].protocol, port),),
        tuple(Endpoint((a,), True, True, False) for a in addresses),
    )


def cluster(
    services: Iterable[Service] = (), slices: Iterable[EndpointSlice] = (),
    nodes: Iterable[Node] = (),
) -> ClusterObjects:
    by_key: dict[ServiceKey, list[EndpointSlice]] = {}
    for sl in slices:
        by_key.setdefault(sl.service, []).append(sl)
    return ClusterObjects(
        MappingProxyType({s.key: s for s in services}),
        MappingProxyType({k: tuple(v) for k, v in by_key.items()}),
        MappingProxyType({n.name: n for n in nodes}),
    )
