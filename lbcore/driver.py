"""The datapath driver contract.

A driver makes the kernel hold a ``DesiredState`` and reads back what it holds. The
core never touches the kernel; drivers never read Kubernetes objects. Built-in drivers
register in the entry-point group ``lbcore.drivers`` exactly as third-party ones do.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError
from .model import DesiredState, Frontend, FrontendState, FrontendType, NodeInfo, ServiceKey

ALL_FRONTEND_TYPES = frozenset(FrontendType)

# The driver API version. A driver class declares the version it was written for
# (``api_version``, inherited from ``Driver``); the core refuses to load a driver whose
# version it does not support. Bump on an incompatible change to ``Driver``,
# ``Capabilities`` or the model objects drivers receive; list kept versions here.
DRIVER_API_VERSION = 1
SUPPORTED_DRIVER_API_VERSIONS = frozenset({1})

# Where the clients of a frontend may be: "pod" (a process in a pod on this node),
# "host" (a process in the node's own network namespace, outside pods), "external"
# (a packet arriving on a node device from outside the cluster).
CLIENT_KINDS = frozenset({"pod", "host", "external"})


@dataclass(frozen=True)
class Capabilities:
    """What a driver can program. The core reports frontends that need more."""

    frontend_types: frozenset[FrontendType] = ALL_FRONTEND_TYPES
    protocols: frozenset[str] = frozenset({"TCP", "UDP"})
    families: frozenset[int] = frozenset({4, 6})
    session_affinity: bool = False
    source_ranges: bool = False
    external_traffic_local: bool = False
    internal_traffic_local: bool = True
    algorithms: frozenset[str] = frozenset({"random"})
    # "all": NodePort frontends on every node's addresses (a socket-level datapath
    # translates a connect() to any node); "local": only this node's own addresses
    # (a per-packet datapath sees only packets addressed to this node; the other
    # nodes' agents answer for theirs).
    node_ports: str = "all"
    description: str = ""
    # Which clients the datapath serves (see CLIENT_KINDS). None (drivers written before
    # this field): inferred by ``served_clients`` from ``frontend_types``.
    clients: frozenset[str] | None = None
    # The datapath translates with netfilter conntrack NAT (iptables, nftables): its
    # established flows keep their translation only while conntrack stays enabled in
    # the namespace (a live switch away from it keeps it on: lbcore.ctkeep).
    conntrack_nat: bool = False

    def served_clients(self) -> frozenset[str]:
        """``clients``, or when unset: pods for a driver that programs ClusterIPs (east-west),
        outside traffic for one that programs only NodePort/ExternalIP/LoadBalancer."""
        if self.clients is not None:
            return self.clients
        if FrontendType.CLUSTER_IP in self.frontend_types:
            return frozenset({"pod"})
        return frozenset({"external"})

    def unsupported(self, fe: Frontend) -> str | None:
        """Why this driver cannot program ``fe`` faithfully, or None."""
        if fe.type not in self.frontend_types:
            return f"{fe.type.value} frontends are not supported"
        if fe.protocol not in self.protocols:
            return f"protocol {fe.protocol} is not supported"
        if fe.family not in self.families:
            return f"IPv{fe.family} is not supported"
        if fe.session_affinity_timeout is not None and not self.session_affinity:
            return "sessionAffinity ClientIP is not supported"
        if fe.source_ranges and not self.source_ranges:
            return "loadBalancerSourceRanges cannot be enforced"
        algorithm = fe.annotations.get("lbcore.io/lb-algorithm", "random")
        if algorithm not in self.algorithms:
            return f"lb-algorithm {algorithm!r} is not supported"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "frontend_types": sorted(t.value for t in self.frontend_types),
            "protocols": sorted(self.protocols),
            "families": sorted(self.families),
            "session_affinity": self.session_affinity,
            "source_ranges": self.source_ranges,
            "external_traffic_local": self.external_traffic_local,
            "internal_traffic_local": self.internal_traffic_local,
            "algorithms": sorted(self.algorithms),
            "clients": sorted(self.served_clients()),
        }


@dataclass(frozen=True)
class Problem:
    """A preflight finding: what is wrong and how to fix it."""

    check: str
    message: str
    fix: str = ""
    fatal: bool = True

    def __str__(self) -> str:
        text = f"{self.check}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class SyncResult:
    """What a sync did, for logs and metrics."""

    full: bool
    frontends: int  # frontends the datapath holds after the sync
    services_written: int = 0  # services whose entries were (re)written
    services_removed: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)


class Driver(abc.ABC):
    """Base class of every datapath driver.

    Subclasses validate ``options`` in ``__init__`` (raise ``ConfigError`` naming the
    option), load nothing until ``setup``, and keep render (pure) / apply (kernel) /
    read back (kernel -> model) in separate functions.
    """

    name: ClassVar[str]
    api_version: ClassVar[int] = DRIVER_API_VERSION  # the driver API this class targets

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        self.options = dict(options)
        self.node = node

    @classmethod
    @abc.abstractmethod
    def capabilities(cls) -> Capabilities: ...

    def check(self) -> list[Problem]:
        """Preflight: kernel features, tools, permissions. Empty when ready."""
        return []

    @abc.abstractmethod
    def setup(self) -> None:
        """Load and attach; adopt what an earlier run left (no gap, no duplicates)."""

    @abc.abstractmethod
    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        """Make the kernel hold ``state``.

        ``changed`` names the services that changed since the last successful sync;
        ``None`` asks for a full sync (reconcile everything against the kernel).
        Must be idempotent. On failure raise ``DriverError``; the core retries with a
        full sync.
        """

    @abc.abstractmethod
    def dump(self) -> list[FrontendState]:
        """What the kernel holds now, read back from it (not from memory)."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove everything this driver created."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release user-space resources; the datapath stays in place."""

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Optional: ``{map name: (entries in use, max entries)}`` of the driver's BPF
        maps, read from the kernel (not from memory). Exported as Cilium's
        ``bpf_map_pressure``. Called from the metrics thread, concurrently with
        ``sync``: open the maps independently (e.g. by their pins). Drivers without
        maps return ``{}``."""
        return {}


def option(
    options: Mapping[str, Any],
    driver: str,
    name: str,
    kind: type,
    default: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    """Read and check one driver option; raise ``ConfigError`` naming it."""
    value = options.get(name, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(
            f"driver_options.{name}: {value!r} is not an integer (driver {driver})"
        )
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"driver_options.{name}: {value!r} is not a string (driver {driver})")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"driver_options.{name}: {value!r} is not true/false (driver {driver})")
    if kind is int and minimum is not None and value < minimum:
        raise ConfigError(
            f"driver_options.{name}: {value} is below the minimum {minimum} (driver {driver})"
        )
    if kind is int and maximum is not None and value > maximum:
        raise ConfigError(
            f"driver_options.{name}: {value} is above the maximum {maximum} (driver {driver})"
        )
    return value


def reject_unknown_options(options: Mapping[str, Any], driver: str, known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"driver_options: unknown option(s) {', '.join(unknown)} for driver {driver} "
            f"(valid: {', '.join(sorted(known))})"
        )
