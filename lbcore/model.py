"""The immutable model the core computes and drivers consume.

Two layers:

* *Cluster objects* (``Service``, ``EndpointSlice``, ``Node``): validated Kubernetes
  objects, reduced to what load balancing needs. ``lbcore.k8s`` builds them.
* *Desired state* (``Frontend``, ``Backend``, ``DesiredState``): what this node's
  datapath must hold. ``lbcore.expand`` computes it; drivers program it.

Addresses are kept as normalised text (``ipaddress`` canonical form) so that model
objects compare, hash and print simply.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

PROTOCOLS = ("TCP", "UDP", "SCTP")


def ip_family(address: str) -> int:
    """4 or 6 for a textual IP address that was already validated (hot path: no parse)."""
    return 6 if ":" in address else 4


def normalise_ip(address: str) -> str:
    """Canonical text form (``2001:DB8::01`` -> ``2001:db8::1``)."""
    return str(ipaddress.ip_address(address))


# --------------------------------------------------------------------------- keys


class ServiceKey(NamedTuple):
    """Identifies a Service (and its EndpointSlices) across updates.

    A named tuple rather than a dataclass: keys are hashed on every map lookup of
    every sync, and a tuple hashes in C.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        namespace, _, name = text.partition("/")
        return cls(namespace, name)


# ----------------------------------------------------------------- cluster objects


class ServiceType(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str  # a number, or a container port name resolved via slices
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    type: ServiceType
    cluster_ips: tuple[str, ...] = ()  # empty, or ("None",) for headless
    ip_families: tuple[int, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_timeout: int | None = None  # seconds; None: no ClientIP affinity
    external_traffic_local: bool = False
    internal_traffic_local: bool = False
    external_name: str = ""
    traffic_distribution: str = ""  # spec.trafficDistribution, e.g. PreferClose
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __hash__(self) -> int:  # Mappings are not hashable; the key identifies.
        return hash((self.key, self.type, self.cluster_ips, self.ports))

    @property
    def headless(self) -> bool:
        return self.cluster_ips == ("None",)


class Condition(enum.Enum):
    """A backend's usability, derived from EndpointSlice conditions (KEP-1672)."""

    READY = "active"
    TERMINATING = "terminating"  # serving but terminating: used only if no ready ones


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None = None
    zone: str | None = None
    hostname: str | None = None
    zone_hints: tuple[str, ...] = ()  # hints.forZones: zones that should use this endpoint


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: ServiceKey  # from the kubernetes.io/service-name label
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[str, ...]  # InternalIP / ExternalIP addresses
    zone: str | None = None
    # Being deleted (deletionTimestamp) or tainted ToBeDeletedByClusterAutoscaler:
    # kube-proxy's "not eligible", /healthz 503 so load balancers drain the node.
    deleting: bool = False


@dataclass(frozen=True)
class ClusterObjects:
    """Everything a source read, validated, indexed for expansion."""

    services: Mapping[ServiceKey, Service]
    slices: Mapping[ServiceKey, tuple[EndpointSlice, ...]]
    nodes: Mapping[str, Node]

    @classmethod
    def empty(cls) -> ClusterObjects:
        return cls(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


# -------------------------------------------------------------------- desired state


@dataclass(frozen=True)
class NodeInfo:
    """This node, as configured (node.name, node.addresses)."""

    name: str
    addresses: tuple[str, ...] = ()
    zone: str | None = None


class FrontendType(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    EXTERNAL_IP = "ExternalIP"
    LOAD_BALANCER = "LoadBalancer"


class Backend(NamedTuple):
    """One usable endpoint address:port. A tuple: 100,000 of them are built per full sync."""

    ip: str
    port: int
    condition: Condition = Condition.READY
    node_name: str | None = None
    zone: str | None = None

    @property
    def state(self) -> str:
        return self.condition.value

    @property
    def family(self) -> int:
        return ip_family(self.ip)


class FrontendAddress(NamedTuple):
    """(ip, port, protocol): what a datapath matches on. A tuple: hashed constantly."""

    ip: str
    port: int
    protocol: str

    @property
    def family(self) -> int:
        return ip_family(self.ip)

    def __str__(self) -> str:
        host = f"[{self.ip}]" if self.family == 6 else self.ip
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class Frontend:
    """One address:port/protocol this node answers for, with its backends.

    ``backends`` serve clients inside the cluster (pods and processes on this node):
    for a ClusterIP they follow ``internalTrafficPolicy``; for NodePort, ExternalIP and
    LoadBalancer frontends, in-cluster clients are short-circuited to all cluster
    endpoints as kube-proxy does. ``external_backends`` serve clients from outside the
    cluster and follow ``externalTrafficPolicy``. Both lists are already filtered to
    what may be used: ready endpoints, or serving-terminating ones if none is ready.
    """

    service: ServiceKey
    port_name: str
    type: FrontendType
    address: FrontendAddress
    backends: tuple[Backend, ...]
    external_backends: tuple[Backend, ...]
    session_affinity_timeout: int | None = None
    source_ranges: tuple[str, ...] = ()
    external_traffic_local: bool = False
    internal_traffic_local: bool = False
    annotations: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, hash=False
    )

    @property
    def ip(self) -> str:
        return self.address.ip

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def protocol(self) -> str:
        return self.address.protocol

    @property
    def family(self) -> int:
        return self.address.family

    @property
    def service_port(self) -> str:
        """kube-proxy's ServicePortName text: ``ns/name:port``."""
        return f"{self.service}:{self.port_name}" if self.port_name else str(self.service)


@dataclass(frozen=True)
class SkippedService:
    """A service the core (or a driver) will not program, and why. Never silent."""

    service: ServiceKey
    reason: str
    frontend: FrontendAddress | None = None


@dataclass(frozen=True)
class DesiredState:
    """The full state a driver must make the kernel hold on this node."""

    node: NodeInfo
    frontends: tuple[Frontend, ...] = ()
    skipped: tuple[SkippedService, ...] = ()

    @classmethod
    def with_index(
        cls, node: NodeInfo, frontends: tuple[Frontend, ...], skipped: tuple[SkippedService, ...],
        by_service: Mapping[ServiceKey, tuple[Frontend, ...]],
    ) -> DesiredState:
        """A state whose caller already grouped ``frontends`` by service (incremental)."""
        state = cls(node, frontends, skipped)
        state.__dict__["services"] = MappingProxyType(dict(by_service))
        return state

    @functools.cached_property
    def services(self) -> Mapping[ServiceKey, tuple[Frontend, ...]]:
        """Frontends by service, built on first use (partial syncs may never need it)."""
        index: dict[ServiceKey, list[Frontend]] = {}
        for fe in self.frontends:
            index.setdefault(fe.service, []).append(fe)
        return MappingProxyType({k: tuple(v) for k, v in index.items()})

    def frontends_of(self, key: ServiceKey) -> tuple[Frontend, ...]:
        return self.services.get(key, ())

    def __iter__(self) -> Iterator[Frontend]:
        return iter(self.frontends)

    def __len__(self) -> int:
        return len(self.frontends)


# -------------------------------------------------------------------- read back


@dataclass(frozen=True, order=True, slots=True)
class BackendState:
    ip: str
    port: int
    state: str = "active"


@dataclass(frozen=True, order=True)
class FrontendState:
    """What a datapath holds for one frontend, read back from the kernel."""

    id: int
    address: FrontendAddress
    type: str
    backends: tuple[BackendState, ...]
    service: str = ""  # "ns/name:port" when the datapath records it
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The shape DESIGN.md fixes for ``lbcore services -o json``."""
        return {
            "id": self.id,
            "frontend": {
                "ip": self.address.ip,
                "port": self.address.port,
                "protocol": self.address.protocol,
            },
            "type": self.type,
            "backends": [{"ip": b.ip, "port": b.port, "state": b.state} for b in self.backends],
            **({"service": self.service} if self.service else {}),
            **({"flags": list(self.flags)} if self.flags else {}),
        }
