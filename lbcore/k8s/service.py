"""``v1 Service``: defaulting, validation (Kubernetes' ValidateService), conversion.

The input is what the API server stores, so the defaults the API server applies are
applied first (type ClusterIP, protocol TCP, targetPort = port, sessionAffinity None,
ClientIP timeout 10800 s, traffic policies Cluster, clusterIPs from clusterIP, IP
families from the cluster IPs). Allocation is not repeated: a service without a
clusterIP or nodePort is taken as it is (and reported by expansion).

Checks that span services (nodePort and clusterIP allocation) are in ``convert``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import FieldError
from ..model import PROTOCOLS, Service, ServiceKey, ServicePort, ServiceType
from . import rules
from .fields import Errors, read_meta, read_string_map
from .service_access import (
    external_ips,
    load_balancer_fields,
    load_balancer_ingress,
    source_ranges,
)

SERVICE_TYPES = tuple(t.value for t in ServiceType)
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
# PreferSameZone and PreferSameNode: Kubernetes 1.33+ (PreferSameTrafficDistribution).
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameNode", "PreferSameZone")
TOPOLOGY_MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
TOPOLOGY_HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"  # deprecated
CLUSTER_IP_NONE = "None"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as the API server defaults it
MAX_AFFINITY_TIMEOUT = 86400
KUBELET_PORT = 10250
DEFAULT_NODE_PORT_RANGE = (30000, 32767)


@dataclass(frozen=True)
class _Spec:
    """The fields several checks share, read once."""

    type: str
    headless: bool
    externally_accessible: bool


def service_from_object(
    obj: Mapping[str, Any], *, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
) -> tuple[Service | None, list[FieldError]]:
    """Validate and convert one Service; the service is None when anything is wrong."""
    errs = Errors()
    meta = read_meta(obj, errs, name_rule=rules.DNS1035_LABEL)
    spec = errs.mapping(obj, "spec", "spec")
    status = errs.mapping(obj, "status", "status")

    stype = errs.string(spec, "type", "spec.type", default=ServiceType.CLUSTER_IP.value)
    if stype not in SERVICE_TYPES:
        errs.unsupported("spec.type", stype, SERVICE_TYPES)
    external = external_ips(spec, errs)
    cluster_ips = _cluster_ip_fields(spec, errs, stype)
    headless = cluster_ips.ips == (CLUSTER_IP_NONE,)
    facts = _Spec(
        type=stype,
        headless=headless,
        externally_accessible=stype in ("NodePort", "LoadBalancer") or bool(external),
    )

    ports = _ports(spec, errs, facts, node_port_range)
    affinity_timeout = _session_affinity(spec, errs)
    external_local, internal_local = _traffic_policies(spec, errs, facts)
    ranges = source_ranges(spec, errs, stype)
    lb_ips = load_balancer_ingress(status, errs)
    external_name = _external_name(spec, errs, stype)
    distribution = _traffic_distribution(spec, errs)
    load_balancer_fields(spec, errs, stype)
    read_string_map(spec, "selector", "spec.selector", errs, rules.LABEL_VALUE)
    _topology_annotations(meta.annotations, errs)

    if errs:
        return None, list(errs)
    service = Service(
        key=ServiceKey(meta.namespace, meta.name),
        type=ServiceType(stype),
        cluster_ips=cluster_ips.ips,
        ip_families=cluster_ips.families,
        ports=ports,
        external_ips=external,
        load_balancer_ips=lb_ips,
        load_balancer_source_ranges=ranges,
        session_affinity_timeout=affinity_timeout,
        external_traffic_local=external_local,
        internal_traffic_local=internal_local,
        external_name=external_name,
        traffic_distribution=distribution,
        labels=meta.labels,
        annotations=meta.annotations,
    )
    return service, []


# ------------------------------------------------------------------------- ports


def _ports(spec: Mapping[str, Any], errs: Errors, facts: _Spec,
           node_port_range: tuple[int, int]) -> tuple[ServicePort, ...]:
    entries = errs.mappings(spec, "ports", "spec.ports")
    if not entries and not facts.headless and facts.type != "ExternalName":
        errs.required("spec.ports", "at least one port")
    names: set[str] = set()
    seen_ports: set[tuple[str, int]] = set()
    seen_node_ports: set[tuple[str, int]] = set()
    out = []
    for path, entry in entries:
        port = _port(path, entry, errs, len(entries) > 1, names)
        if port is None:
            continue
        key = (port.protocol, port.port)
        if key in seen_ports:
            errs.duplicate(path, f"{port.port}/{port.protocol}", "unique (protocol, port) pairs")
        seen_ports.add(key)
        if port.port == KUBELET_PORT and facts.type == "LoadBalancer":
            errs.invalid(f"{path}.port", port.port, "may not expose port 10250 externally "
                         "since it is used by kubelet", "any port but 10250")
        if port.node_port is not None:
            _check_node_port(f"{path}.nodePort", port, facts.type, node_port_range, errs)
            node_key = (port.protocol, port.node_port)
            if node_key in seen_node_ports:
                errs.duplicate(f"{path}.nodePort", port.node_port,
                               "unique (protocol, nodePort) pairs")
            seen_node_ports.add(node_key)
        out.append(port)
    return tuple(out)


def _port(path: str, entry: Mapping[str, Any], errs: Errors, name_required: bool,
          names: set[str]) -> ServicePort | None:
    name = errs.string(entry, "name", f"{path}.name")
    if not name and name_required:
        errs.required(f"{path}.name", "a unique DNS-1123 label (needed when there are 2+ ports)")
    elif name:
        errs.check(f"{path}.name", name, rules.DNS1123_LABEL)
        if name in names:
            errs.duplicate(f"{path}.name", name, "unique port names")
        names.add(name)

    port = errs.integer(entry, "port", f"{path}.port")
    if port is None:
        if "port" not in entry or entry["port"] is None:
            errs.required(f"{path}.port", rules.PORT_RANGE)
    else:
        errs.check_port(f"{path}.port", port)

    protocol = errs.string(entry, "protocol", f"{path}.protocol", default="TCP")
    if protocol not in PROTOCOLS:
        errs.unsupported(f"{path}.protocol", protocol, sorted(PROTOCOLS))

    target = _target_port(f"{path}.targetPort", entry.get("targetPort"), port, errs)

    app_protocol = errs.optional_string(entry, "appProtocol", f"{path}.appProtocol")
    if app_protocol:
        errs.check(f"{path}.appProtocol", app_protocol, rules.QUALIFIED_NAME)

    node_port = errs.integer(entry, "nodePort", f"{path}.nodePort") or None
    if port is None or target is None:
        return None
    return ServicePort(name, protocol, port, target, node_port)


def _target_port(path: str, value: Any, port: int | None, errs: Errors) -> int | str | None:
    """ValidatePortNumOrName; 0, "" and absent default to ``port``."""
    # By type, not ``value in (0, "")``: 0.0 and false equal 0 in Python, not in JSON.
    if value is None or value == "" or (type(value) is int and value == 0):
        return port
    if isinstance(value, bool) or not isinstance(value, int | str):
        errs.invalid(path, value, "must be a port number or a port name",
                     f"{rules.PORT_RANGE} or {rules.IANA_SVC_NAME.valid}")
        return None
    if isinstance(value, int):
        return value if errs.check_port(path, value) else None
    return value if errs.check(path, value, rules.IANA_SVC_NAME) else None


def _check_node_port(path: str, port: ServicePort, stype: str,
                     node_port_range: tuple[int, int], errs: Errors) -> None:
    assert port.node_port is not None
    if stype not in ("NodePort", "LoadBalancer"):
        errs.forbidden(path, f"may not be used when `type` is {stype!r}",
                       "only for type NodePort or LoadBalancer", value=port.node_port)
        return
    low, high = node_port_range
    if not low <= port.node_port <= high:
        errs.invalid(path, port.node_port, "provided port is not in the valid range",
                     f"{low}-{high} (the node port range)")


# ------------------------------------------------------------------- cluster IPs


@dataclass(frozen=True)
class _ClusterIPs:
    ips: tuple[str, ...]
    families: tuple[int, ...]


def _cluster_ip_fields(spec: Mapping[str, Any], errs: Errors, stype: str) -> _ClusterIPs:
    """ValidateServiceClusterIPsRelatedFields plus the registry's family defaulting."""
    cluster_ip = errs.string(spec, "clusterIP", "spec.clusterIP")
    ips = [ip for _, ip in errs.strings(spec, "clusterIPs", "spec.clusterIPs")]
    family_names = [f for _, f in errs.strings(spec, "ipFamilies", "spec.ipFamilies")]
    policy = errs.optional_string(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy")
    if cluster_ip and not ips:  # the registry's NormalizeClusterIPs
        ips = [cluster_ip]

    if stype == "ExternalName":
        if ips == [CLUSTER_IP_NONE]:
            ips = []  # tolerated: "no cluster IP" said explicitly
        for key, value in (("clusterIPs", ips), ("ipFamilies", family_names),
                           ("ipFamilyPolicy", policy)):
            if value:
                errs.forbidden(f"spec.{key}", "may not be set for ExternalName services",
                               value=value)
        return _ClusterIPs((), ())

    if cluster_ip and ips[0] != cluster_ip:
        errs.invalid("spec.clusterIPs", ips, "first value must match `clusterIP`")
    elif not cluster_ip and ips:
        errs.invalid("spec.clusterIPs", ips, "must be empty when `clusterIP` is not specified")

    families: list[int] = []
    for i, name in enumerate(family_names):
        if name not in IP_FAMILIES:
            errs.unsupported(f"spec.ipFamilies[{i}]", name, sorted(IP_FAMILIES))
        elif IP_FAMILIES[name] in families:
            errs.duplicate(f"spec.ipFamilies[{i}]", name, "one IPv4 and/or one IPv6")
        else:
            families.append(IP_FAMILIES[name])
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errs.unsupported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES)

    headless = bool(ips) and ips[0] == CLUSTER_IP_NONE
    if headless:
        if len(ips) > 1:
            errs.invalid("spec.clusterIPs", ips, "'None' must be the first and only value")
            return _ClusterIPs((), ())
        if stype in ("NodePort", "LoadBalancer"):
            errs.invalid("spec.clusterIPs[0]", CLUSTER_IP_NONE,
                         f"may not be set to 'None' for {stype} services")
        _check_policy(policy, len(families), errs)
        return _ClusterIPs((CLUSTER_IP_NONE,), tuple(families))

    valid = True
    for i, ip in enumerate(ips):
        # The API server allocates cluster IPs from the service CIDR, which holds no
        # special address; a file has no allocator, so they are refused here.
        valid &= errs.check(f"spec.clusterIPs[{i}]", ip, rules.IP) and errs.check(
            f"spec.clusterIPs[{i}]", ip, rules.NON_SPECIAL_IP)
    if len(ips) > 2:
        errs.invalid("spec.clusterIPs", ips, "may only hold up to 2 values")
    if not valid or len(ips) > 2:
        return _ClusterIPs((), ())
    normalised = tuple(rules.canonical_ip(ip) for ip in ips)
    ip_families = tuple(rules.parse_ip(ip).version for ip in normalised)  # type: ignore[union-attr]
    if len(ip_families) == 2 and ip_families[0] == ip_families[1]:
        errs.invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family")

    for i, (ip, family) in enumerate(zip(ips, families, strict=False)):
        if ip_families[i] != family:
            errs.invalid(f"spec.clusterIPs[{i}]", ip,
                         f"expected an IPv{family} value as indicated by `ipFamilies[{i}]`")
    if ips and families and len(families) != len(ips):
        errs.invalid("spec.ipFamilies", family_names,
                     "must list one family per `clusterIPs` value, in the same order")
    _check_policy(policy, max(len(ips), len(families)), errs)
    if policy == "RequireDualStack" and len(ips) == 1:
        errs.invalid("spec.clusterIPs", ips, "'RequireDualStack' needs one IPv4 and one IPv6 "
                     "cluster IP", "two clusterIPs, or ipFamilyPolicy PreferDualStack")
    return _ClusterIPs(normalised, ip_families or tuple(families))


def _check_policy(policy: str | None, family_count: int, errs: Errors) -> None:
    if policy == "SingleStack" and family_count > 1:
        errs.invalid("spec.ipFamilyPolicy", policy,
                     "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP "
                     "families are specified", "PreferDualStack, RequireDualStack")


# ------------------------------------------------------------- affinity, policies


def _session_affinity(spec: Mapping[str, Any], errs: Errors) -> int | None:
    affinity = errs.string(spec, "sessionAffinity", "spec.sessionAffinity", default="None")
    config = errs.mapping(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig")
    if affinity not in SESSION_AFFINITIES:
        errs.unsupported("spec.sessionAffinity", affinity, SESSION_AFFINITIES)
        return None
    if affinity == "None":
        if config:
            errs.forbidden("spec.sessionAffinityConfig",
                           "must not be set when session affinity is None",
                           "sessionAffinity: ClientIP, or no sessionAffinityConfig",
                           value=config)
        return None
    path = "spec.sessionAffinityConfig.clientIP"
    client_ip = errs.mapping(config, "clientIP", path)
    timeout = errs.integer(client_ip, "timeoutSeconds", f"{path}.timeoutSeconds")
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        errs.invalid(f"{path}.timeoutSeconds", timeout,
                     f"must be greater than 0 and less than or equal to {MAX_AFFINITY_TIMEOUT}",
                     f"1-{MAX_AFFINITY_TIMEOUT} seconds")
    return timeout


def _traffic_policies(spec: Mapping[str, Any], errs: Errors, facts: _Spec) -> tuple[bool, bool]:
    external = errs.string(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy")
    if external and not facts.externally_accessible:
        errs.invalid("spec.externalTrafficPolicy", external,
                     "may only be set for externally-accessible services",
                     "type NodePort or LoadBalancer, or a service with externalIPs")
    elif external and external not in TRAFFIC_POLICIES:
        errs.unsupported("spec.externalTrafficPolicy", external, TRAFFIC_POLICIES)

    health = errs.integer(spec, "healthCheckNodePort", "spec.healthCheckNodePort")
    if health and (facts.type != "LoadBalancer" or external != "Local"):
        errs.invalid("spec.healthCheckNodePort", health, "may only be set when `type` is "
                     "'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
    elif health:
        errs.check_port("spec.healthCheckNodePort", health)

    internal = errs.string(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy")
    if internal and internal not in TRAFFIC_POLICIES:
        errs.unsupported("spec.internalTrafficPolicy", internal, TRAFFIC_POLICIES)
    elif internal == "Local" and facts.headless:
        errs.invalid("spec.internalTrafficPolicy", internal,
                     "may not be set to 'Local' for headless services", "Cluster")
    return external == "Local" and facts.externally_accessible, internal == "Local"


def _traffic_distribution(spec: Mapping[str, Any], errs: Errors) -> str:
    value = errs.optional_string(spec, "trafficDistribution", "spec.trafficDistribution")
    if value is not None and value not in TRAFFIC_DISTRIBUTIONS:
        errs.unsupported("spec.trafficDistribution", value, TRAFFIC_DISTRIBUTIONS)
        return ""
    return value or ""


def _topology_annotations(annotations: Mapping[str, str], errs: Errors) -> None:
    mode = annotations.get(TOPOLOGY_MODE_ANNOTATION)
    hints = annotations.get(TOPOLOGY_HINTS_ANNOTATION)
    if mode is not None and hints is not None and mode != hints:
        errs.invalid(f"metadata.annotations[{TOPOLOGY_MODE_ANNOTATION}]", mode,
                     f"must match annotations[{TOPOLOGY_HINTS_ANNOTATION}] when both are "
                     "specified", f"{hints!r}, or only one of the two annotations")


def _external_name(spec: Mapping[str, Any], errs: Errors, stype: str) -> str:
    if stype != "ExternalName":
        return ""  # the registry drops it for other types
    name = errs.string(spec, "externalName", "spec.externalName")
    cname = name.removesuffix(".")  # a trailing dot marks it fully qualified
    if not cname:
        errs.required("spec.externalName", rules.DNS1123_SUBDOMAIN.valid)
    else:
        errs.check("spec.externalName", cname, rules.DNS1123_SUBDOMAIN)
    return name
