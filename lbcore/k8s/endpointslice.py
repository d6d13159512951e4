"""``discovery.k8s.io/v1 EndpointSlice``: validation (ValidateEndpointSlice), conversion.

Conditions follow the API's documented defaults: ``ready: null`` is ready,
``serving: null`` is whatever ``ready`` is, ``terminating: null`` is not terminating.

A slice without the ``kubernetes.io/service-name`` label belongs to no service: it is
validated, then ignored, as kube-proxy ignores it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import FieldError
from ..model import PROTOCOLS, Endpoint, EndpointSlice, ServiceKey, SlicePort
from . import rules
from .fields import Errors, read_meta, read_string_map

LOG = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_PORTS = 20000
MAX_HINTS = 8  # forZones, forNodes
MAX_TOPOLOGY_LABELS = 16
_ADDRESS_RULES = {"IPv4": rules.IPV4, "IPv6": rules.IPV6, "FQDN": rules.FQDN}


def slice_from_object(obj: Mapping[str, Any]) -> tuple[EndpointSlice | None, list[FieldError]]:
    """Validate and convert one slice. None without errors: the slice has no service."""
    errs = Errors()
    meta = read_meta(obj, errs, name_rule=rules.DNS1123_SUBDOMAIN)

    address_type = errs.string(obj, "addressType", "addressType")
    if not address_type:
        errs.required("addressType", ", ".join(ADDRESS_TYPES))
    elif address_type not in ADDRESS_TYPES:
        errs.unsupported("addressType", address_type, ADDRESS_TYPES)
        address_type = ""

    endpoints = _endpoints(obj, errs, address_type)
    ports = _ports(obj, errs)

    if errs:
        return None, list(errs)
    service = meta.labels.get(SERVICE_NAME_LABEL)
    if not service:
        LOG.debug("EndpointSlice %s/%s has no %s label: ignored",
                  meta.namespace, meta.name, SERVICE_NAME_LABEL)
        return None, []
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service=ServiceKey(meta.namespace, service),
        address_type=address_type,
        ports=ports,
        endpoints=endpoints,
    ), []


def _endpoints(obj: Mapping[str, Any], errs: Errors, address_type: str) -> tuple[Endpoint, ...]:
    entries = errs.mappings(obj, "endpoints", "endpoints")
    if len(entries) > MAX_ENDPOINTS:
        errs.too_many("endpoints", len(entries), MAX_ENDPOINTS)
        return ()
    out = []
    for path, entry in entries:
        endpoint = _endpoint(path, entry, errs, address_type)
        if endpoint is not None:
            out.append(endpoint)
    return tuple(out)


def _endpoint(path: str, entry: Mapping[str, Any], errs: Errors,
              address_type: str) -> Endpoint | None:
    addresses_path = f"{path}.addresses"
    addresses = errs.strings(entry, "addresses", addresses_path)
    if not addresses:
        errs.required(addresses_path, "at least 1 address")
    elif len(addresses) > MAX_ADDRESSES:
        errs.too_many(addresses_path, len(addresses), MAX_ADDRESSES)

    rule = _ADDRESS_RULES.get(address_type)
    normalised = []
    for address_path, address in addresses:
        if rule is None:  # addressType is already reported
            continue
        if not errs.check(address_path, address, rule):
            continue
        if address_type == "FQDN":
            normalised.append(address)
        elif errs.check(address_path, address, rules.NON_SPECIAL_IP):
            normalised.append(rules.canonical_ip(address))

    conditions = errs.mapping(entry, "conditions", f"{path}.conditions")
    ready = errs.boolean(conditions, "ready", f"{path}.conditions.ready")
    serving = errs.boolean(conditions, "serving", f"{path}.conditions.serving")
    terminating = errs.boolean(conditions, "terminating", f"{path}.conditions.terminating")
    ready = True if ready is None else ready

    node_name = errs.optional_string(entry, "nodeName", f"{path}.nodeName")
    if node_name is not None:
        errs.check(f"{path}.nodeName", node_name, rules.DNS1123_SUBDOMAIN)
    hostname = errs.optional_string(entry, "hostname", f"{path}.hostname")
    if hostname is not None:
        errs.check(f"{path}.hostname", hostname, rules.DNS1123_LABEL)
    zone = errs.optional_string(entry, "zone", f"{path}.zone")
    if zone is not None:
        errs.check(f"{path}.zone", zone, rules.LABEL_VALUE)

    topology_path = f"{path}.deprecatedTopology"
    topology = read_string_map(entry, "deprecatedTopology", topology_path, errs,
                               rules.LABEL_VALUE)
    if len(topology) > MAX_TOPOLOGY_LABELS:
        errs.too_many(topology_path, len(topology), MAX_TOPOLOGY_LABELS)

    hints = errs.mapping(entry, "hints", f"{path}.hints")
    zone_hints = _hints(hints, "forZones", f"{path}.hints.forZones", errs, rules.LABEL_VALUE)
    _hints(hints, "forNodes", f"{path}.hints.forNodes", errs, rules.DNS1123_SUBDOMAIN)

    if not normalised:
        return None
    return Endpoint(
        addresses=tuple(normalised),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
        node_name=node_name or None,
        zone=zone or None,
        hostname=hostname or None,
        zone_hints=tuple(zone_hints),
    )


def _hints(hints: Mapping[str, Any], key: str, path: str, errs: Errors,
           rule: rules.Rule) -> list[str]:
    """validateHints: at most MAX_HINTS names, each valid and given once."""
    entries = errs.mappings(hints, key, path)
    if len(entries) > MAX_HINTS:
        errs.too_many(path, len(entries), MAX_HINTS)
        return []
    names: list[str] = []
    for hint_path, hint in entries:
        name = errs.string(hint, "name", f"{hint_path}.name")
        if not name:
            errs.required(f"{hint_path}.name", rule.valid)
        elif name in names:
            errs.duplicate(f"{hint_path}.name", name, "each name once")
        elif errs.check(f"{hint_path}.name", name, rule):
            names.append(name)
    return names


def _ports(obj: Mapping[str, Any], errs: Errors) -> tuple[SlicePort, ...]:
    """validateEndpointPorts. A port without a number restricts nothing: dropped."""
    entries = errs.mappings(obj, "ports", "ports")
    if len(entries) > MAX_PORTS:
        errs.too_many("ports", len(entries), MAX_PORTS)
        return ()
    names: set[str] = set()
    out = []
    for path, entry in entries:
        name = errs.string(entry, "name", f"{path}.name")
        if name:
            errs.check(f"{path}.name", name, rules.DNS1123_LABEL)
        if name in names:
            errs.duplicate(f"{path}.name", name, "unique port names")
        names.add(name)

        protocol = errs.string(entry, "protocol", f"{path}.protocol", default="TCP")
        if protocol not in PROTOCOLS:
            errs.unsupported(f"{path}.protocol", protocol, sorted(PROTOCOLS))

        app_protocol = errs.optional_string(entry, "appProtocol", f"{path}.appProtocol")
        if app_protocol:
            errs.check(f"{path}.appProtocol", app_protocol, rules.QUALIFIED_NAME)

        port = errs.integer(entry, "port", f"{path}.port")
        if port is not None and errs.check_port(f"{path}.port", port):
            out.append(SlicePort(name, protocol, port))
    return tuple(out)
