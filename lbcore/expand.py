"""Frontend expansion: validated cluster objects -> what this node's datapath holds.

Follows kube-proxy (pkg/proxy: ServicePortInfo, EndpointSliceCache, CategorizeEndpoints):

* Every service port becomes frontends on each cluster IP, on each node address
  (NodePort: this node's configured addresses plus those of every Node object, as
  Cilium's socket-LB answers NodePort on all node IPs), on each externalIP, and on each
  LoadBalancer ingress IP. Only addresses of the service's IP families are used.
* Backends come from the service's EndpointSlices of the frontend's family. The backend
  port is that of the slice port with the service port's name and protocol; a slice
  that lists no ports at all falls back to a numeric targetPort. Only each endpoint's
  first address is used. An address:port in several slices counts once, ready first.
* Ready endpoints are used; if none is ready, serving-and-terminating ones are (KEP-1669);
  not-serving ones never. The same fallback applies among node-local endpoints.
* Topology-aware routing (kube-proxy's ``canUseTopology``): for a service with
  ``trafficDistribution: PreferClose``/``PreferSameZone`` or the annotation
  ``service.kubernetes.io/topology-mode: Auto`` (older: ``topology-aware-hints``), when
  this node's zone is known (``node.zone``, else its Node object's zone label), every
  ready endpoint carries zone hints and one hints this zone, the cluster-wide backends
  are the ready endpoints hinted for this zone. Otherwise hints are ignored.
  (Node hints of ``PreferSameNode`` are not read: such services use zone hints.)
* ``backends`` (clients in the cluster): internalTrafficPolicy for ClusterIP frontends,
  all cluster endpoints for the others (kube-proxy's short-circuit of pod and host
  traffic). ``external_backends``: externalTrafficPolicy for NodePort, ExternalIP and
  LoadBalancer frontends; for ClusterIP frontends the same as ``backends``.

* With an ``ExternalIPPolicy`` (``external_ips.allowed_cidrs`` in lbcore.yaml), a
  Service that claims an externalIP outside the allowed CIDRs is not programmed at
  all, as if the DenyServiceExternalIPs admission plugin or the externalip-webhook
  had refused it (CVE-2020-8554: whoever may create a Service could otherwise take
  over traffic to any address).

Nothing is dropped silently: whatever is not programmed appears in ``skipped``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import NamedTuple

from .model import (
    Backend,
    ClusterObjects,
    Condition,
    DesiredState,
    EndpointSlice,
    Frontend,
    FrontendAddress,
    FrontendType,
    NodeInfo,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SkippedService,
    ip_family,
)

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
TOPOLOGY_ANNOTATIONS = ("service.kubernetes.io/topology-mode",
                        "service.kubernetes.io/topology-aware-hints")
TOPOLOGY_DISTRIBUTIONS = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})
_SLICE_FAMILIES = {"IPv4": 4, "IPv6": 6}  # FQDN slices carry no addresses to balance to
_TYPE_ORDER = {t: i for i, t in enumerate(FrontendType)}


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ExternalIPPolicy:
    """Which externalIPs a Service may claim: those inside ``allowed`` (none if empty)."""

    allowed: tuple[Network, ...]

    def refusal(self, service: Service) -> str | None:
        """Why ``service`` is refused (it claims an address outside ``allowed``), or None."""
        outside = [ip for ip in service.external_ips
                   if not any(ipaddress.ip_address(ip) in net for net in self.allowed)]
        if not outside:
            return None
        what = f"externalIP{'s' if len(outside) > 1 else ''} {', '.join(outside)}"
        if not self.allowed:
            return (f"{what} refused: external_ips.allowed_cidrs is empty, no Service may "
                    "claim externalIPs (CVE-2020-8554)")
        allowed = ", ".join(map(str, self.allowed))
        return f"{what} outside external_ips.allowed_cidrs ({allowed}) (CVE-2020-8554)"


def expand(
    objects: ClusterObjects, node: NodeInfo, *, service_proxy_name: str | None = None,
    external_ips: ExternalIPPolicy | None = None,
) -> DesiredState:
    """The full desired state for ``node``, frontends in a deterministic order."""
    return IncrementalExpander(node, service_proxy_name,
                               external_ips=external_ips).expand(objects, None)


def expand_service(
    service: Service, slices: Sequence[EndpointSlice], node: NodeInfo,
    node_ips: Sequence[str], service_proxy_name: str | None = None,
    external_ips: ExternalIPPolicy | None = None,
) -> tuple[tuple[Frontend, ...], tuple[SkippedService, ...]]:
    """One service's frontends (sorted) and what of it is not programmed."""
    reason = skip_reason(service, service_proxy_name, external_ips)
    if reason is not None:
        return (), (SkippedService(service.key, reason),)
    expansion = _ServiceExpansion(service, slices, node, node_ips)
    return tuple(sorted(expansion.frontends, key=frontend_order)), tuple(expansion.skipped)


class IncrementalExpander:
    """``expand`` that recomputes only the services that changed.

    The agent calls it on every sync; with 10,000 services an endpoint change must
    not cost a full expansion. A change of the node addresses (Node objects) or a
    full sync (``changed=None``) recomputes everything. ``admit`` (the driver's
    capability check) is applied here too, so its verdicts are cached per service.
    """

    def __init__(self, node: NodeInfo, service_proxy_name: str | None = None,
                 admit: Callable[[Frontend], str | None] | None = None,
                 *, local_node_ports: bool = False,
                 external_ips: ExternalIPPolicy | None = None) -> None:
        self.node = node
        self.local_node_ports = local_node_ports
        self.service_proxy_name = service_proxy_name
        self.external_ips = external_ips
        self.admit = admit
        self._node_ips: tuple[str, ...] | None = None
        self._zone: str | None = None
        # Per service, only when non-empty; orders kept sorted, rebuilt when keys change.
        self._frontends: dict[ServiceKey, tuple[Frontend, ...]] = {}
        self._skipped: dict[ServiceKey, tuple[SkippedService, ...]] = {}
        self._frontend_order: list[ServiceKey] = []
        self._skipped_order: list[ServiceKey] = []

    def expand(self, objects: ClusterObjects, changed: frozenset[ServiceKey] | None
               ) -> DesiredState:
        node_ips = node_addresses(objects, self.node, local_only=self.local_node_ports)
        zone = node_zone(objects, self.node)
        full = changed is None or node_ips != self._node_ips or zone != self._zone
        self._zone = zone
        if full:
            self._frontends.clear()
            self._skipped.clear()
        self._node_ips = node_ips
        reorder = full
        for key in objects.services if full else changed or ():
            had = (self._frontends.pop(key, None) is not None,
                   self._skipped.pop(key, None) is not None)
            service = objects.services.get(key)
            if service is not None:
                frontends, skipped = self._expand_one(service, objects.slices.get(key, ()))
                if frontends:
                    self._frontends[key] = frontends
                if skipped:
                    self._skipped[key] = skipped
            reorder |= had != (key in self._frontends, key in self._skipped)
        if reorder:
            self._frontend_order = sorted(self._frontends)
            self._skipped_order = sorted(self._skipped)
        # map() over a bound dict method keeps the 10,000-service assembly in C.
        frontends = tuple(chain.from_iterable(map(self._frontends.__getitem__,
                                                  self._frontend_order)))
        skipped = tuple(chain.from_iterable(map(self._skipped.__getitem__,
                                                self._skipped_order)))
        return DesiredState.with_index(self.node, frontends, skipped, dict(self._frontends))

    def _expand_one(self, service: Service, slices: Sequence[EndpointSlice]
                    ) -> tuple[tuple[Frontend, ...], tuple[SkippedService, ...]]:
        node = self.node if self.node.zone == self._zone else replace(self.node, zone=self._zone)
        frontends, skipped = expand_service(service, slices, node, self._node_ips or (),
                                            self.service_proxy_name, self.external_ips)
        if self.admit is None:
            return frontends, skipped
        kept, refused = [], list(skipped)
        for fe in frontends:
            reason = self.admit(fe)
            if reason is None:
                kept.append(fe)
            else:
                refused.append(SkippedService(fe.service, reason, fe.address))
        return tuple(kept), tuple(refused)


def node_addresses(objects: ClusterObjects, node: NodeInfo, *,
                   local_only: bool = False) -> tuple[str, ...]:
    """Every address NodePort frontends open on, de-duplicated, in address order.

    ``local_only``: just this node's (its configured addresses and those of the Node
    object of its name), for per-packet datapaths.
    """
    addresses = set(node.addresses)
    for n in objects.nodes.values():
        if not local_only or n.name == node.name:
            addresses.update(n.addresses)
    return tuple(sorted(addresses, key=_ip_order))


def skip_reason(service: Service, service_proxy_name: str | None = None,
                external_ips: ExternalIPPolicy | None = None) -> str | None:
    """Why ``service`` gets no frontends at all, or None (kube-proxy's ShouldSkipService
    plus the label selection it applies to its Service informer, and the externalIP
    policy)."""
    proxy_name = service.labels.get(SERVICE_PROXY_NAME_LABEL)
    if proxy_name is not None and proxy_name != service_proxy_name:
        return f"labelled {SERVICE_PROXY_NAME_LABEL}={proxy_name}: served by another proxy"
    if proxy_name is None and service_proxy_name is not None:
        return f"not labelled {SERVICE_PROXY_NAME_LABEL}={service_proxy_name}"
    if HEADLESS_LABEL in service.labels:
        return f"labelled {HEADLESS_LABEL}: no load balancing"
    if service.type is ServiceType.EXTERNAL_NAME:
        return f"ExternalName service (DNS CNAME to {service.external_name}): no load balancing"
    if service.headless:
        return "headless service (clusterIP None): no load balancing"
    refused = external_ips.refusal(service) if external_ips is not None else None
    if refused is not None:
        return refused
    if not service.cluster_ips:
        return "no clusterIP allocated"
    return None


def frontend_order(fe: Frontend) -> tuple[object, ...]:
    """Service, port name, frontend type, then address (numerically)."""
    return (fe.service, fe.port_name, _TYPE_ORDER[fe.type], _ip_order(fe.ip), fe.port,
            fe.protocol)


def _ip_order(ip: str) -> tuple[int, bytes]:
    """Numeric order, IPv4 first; inet_pton is ~20x cheaper than ipaddress here."""
    if ":" in ip:
        return 6, socket.inet_pton(socket.AF_INET6, ip)
    return 4, socket.inet_pton(socket.AF_INET, ip)


# ------------------------------------------------------------------- endpoints


class _Candidate(NamedTuple):
    """One endpoint address:port of one family, before filtering."""

    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone: str | None
    zone_hints: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        """Preference when the same address:port is in several slices."""
        if self.ready:
            return 2
        return 1 if self.serving and self.terminating else 0


def candidates(slices: Iterable[EndpointSlice], port: ServicePort,
               family: int) -> list[_Candidate]:
    """Endpoints of ``family`` that serve ``port``, merged across slices."""
    merged: dict[tuple[str, int], _Candidate] = {}
    for eps in slices:
        if _SLICE_FAMILIES.get(eps.address_type) != family:
            continue
        number = _backend_port(eps, port)
        if number is None:
            continue
        for ep in eps.endpoints:
            c = _Candidate(ep.addresses[0], number, ep.ready, ep.serving, ep.terminating,
                           ep.node_name, ep.zone, ep.zone_hints)
            key = (c.ip, c.port)
            if key not in merged or c.rank > merged[key].rank:
                merged[key] = c
    return list(merged.values())


def _backend_port(eps: EndpointSlice, port: ServicePort) -> int | None:
    for sp in eps.ports:
        if sp.name == port.name and sp.protocol == port.protocol:
            return sp.port
    if not eps.ports and isinstance(port.target_port, int):
        return port.target_port
    return None


def wants_topology(service: Service) -> bool:
    """Whether ``service`` asks for topology-aware routing (trafficDistribution or the
    topology-mode annotation set to Auto)."""
    if service.traffic_distribution in TOPOLOGY_DISTRIBUTIONS:
        return True
    for annotation in TOPOLOGY_ANNOTATIONS:
        value = service.annotations.get(annotation)
        if value is not None:
            return value in ("Auto", "auto")
    return False


def by_topology(found: list[_Candidate], zone: str | None) -> list[_Candidate]:
    """The candidates hinted for ``zone``, if hints can be used; else all of them."""
    ready = [c for c in found if c.ready]
    if zone is None or not ready or not all(c.zone_hints for c in ready):
        return found
    ours = [c for c in ready if zone in c.zone_hints]
    return ours or found


def node_zone(objects: ClusterObjects, node: NodeInfo) -> str | None:
    """This node's zone: configured, else its Node object's topology label."""
    if node.zone:
        return node.zone
    own = objects.nodes.get(node.name)
    return own.zone if own is not None else None


def usable(found: Sequence[_Candidate]) -> tuple[Backend, ...]:
    """Ready endpoints; else serving-and-terminating ones; never not-serving ones."""
    chosen = [(c, Condition.READY) for c in found if c.ready]
    if not chosen:
        chosen = [(c, Condition.TERMINATING) for c in found if c.serving and c.terminating]
    backends = (Backend(c.ip, c.port, cond, c.node_name, c.zone) for c, cond in chosen)
    return tuple(sorted(backends, key=lambda b: (_ip_order(b.ip), b.port)))


# ------------------------------------------------------------ one service


class _ServiceExpansion:
    """The frontends (and skipped frontends) of one service that is not skipped."""

    def __init__(self, service: Service, slices: Sequence[EndpointSlice], node: NodeInfo,
                 node_ips: Sequence[str]) -> None:
        self.service = service
        self.node = node
        self.frontends: list[Frontend] = []
        self.skipped: list[SkippedService] = []
        families = tuple(ip_family(ip) for ip in service.cluster_ips)
        topology = wants_topology(service)
        for port in service.ports:
            for family in families:
                found = candidates(slices, port, family)
                cluster = usable(by_topology(found, node.zone) if topology else found)
                local = usable([c for c in found if c.node_name == node.name])
                self._port(port, family, node_ips, cluster, local)
            self._foreign_families(port, families)

    def _port(self, port: ServicePort, family: int, node_ips: Sequence[str],
              cluster: tuple[Backend, ...], local: tuple[Backend, ...]) -> None:
        svc = self.service
        internal = local if svc.internal_traffic_local else cluster
        external = local if svc.external_traffic_local else cluster
        for ip in svc.cluster_ips:
            if ip_family(ip) == family:
                self._add(port, FrontendType.CLUSTER_IP, ip, port.port, internal, internal)
        if svc.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER):
            if port.node_port is not None:
                for ip in node_ips:
                    if ip_family(ip) == family:
                        self._add(port, FrontendType.NODE_PORT, ip, port.node_port,
                                  cluster, external)
            elif svc.type is ServiceType.NODE_PORT and family == ip_family(svc.cluster_ips[0]):
                self.skipped.append(SkippedService(
                    svc.key, f"port {port.name or port.port}/{port.protocol}: "
                    "no nodePort allocated"))
        for ip in svc.external_ips:
            if ip_family(ip) == family:
                self._add(port, FrontendType.EXTERNAL_IP, ip, port.port, cluster, external)
        if svc.type is ServiceType.LOAD_BALANCER:
            for ip in svc.load_balancer_ips:
                if ip_family(ip) == family:
                    self._load_balancer(port, ip, cluster, external)

    def _load_balancer(self, port: ServicePort, ip: str, cluster: tuple[Backend, ...],
                       external: tuple[Backend, ...]) -> None:
        family = ip_family(ip)
        all_ranges = self.service.load_balancer_source_ranges
        ranges = tuple(r for r in all_ranges if ipaddress.ip_network(r).version == family)
        if all_ranges and not ranges:
            # Opening it to everyone would defeat the ranges: leave it closed.
            self.skipped.append(SkippedService(
                self.service.key,
                f"loadBalancerSourceRanges has no IPv{family} range for this IPv{family} "
                "LoadBalancer IP", FrontendAddress(ip, port.port, port.protocol)))
            return
        self._add(port, FrontendType.LOAD_BALANCER, ip, port.port, cluster, external, ranges)

    def _foreign_families(self, port: ServicePort, families: tuple[int, ...]) -> None:
        """externalIPs / ingress IPs of a family the service has no cluster IP of."""
        svc = self.service
        lb_ips = svc.load_balancer_ips if svc.type is ServiceType.LOAD_BALANCER else ()
        for what, ips in (("externalIP", svc.external_ips), ("LoadBalancer IP", lb_ips)):
            for ip in ips:
                if ip_family(ip) not in families:
                    self.skipped.append(SkippedService(
                        svc.key, f"{what} {ip} is IPv{ip_family(ip)} but the service has "
                        f"no IPv{ip_family(ip)} cluster IP",
                        FrontendAddress(ip, port.port, port.protocol)))

    def _add(self, port: ServicePort, kind: FrontendType, ip: str, number: int,
             backends: tuple[Backend, ...], external_backends: tuple[Backend, ...],
             source_ranges: tuple[str, ...] = ()) -> None:
        svc = self.service
        is_cluster_ip = kind is FrontendType.CLUSTER_IP
        self.frontends.append(Frontend(
            service=svc.key,
            port_name=port.name,
            type=kind,
            address=FrontendAddress(ip, number, port.protocol),
            backends=backends,
            external_backends=external_backends,
            session_affinity_timeout=svc.session_affinity_timeout,
            source_ranges=source_ranges,
            # Each policy only on the frontends it governs.
            external_traffic_local=svc.external_traffic_local and not is_cluster_ip,
            internal_traffic_local=svc.internal_traffic_local and is_cluster_ip,
            annotations=svc.annotations,
        ))
