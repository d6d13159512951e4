"""The fields of a ``v1 Service`` that open it to outside traffic: ``externalIPs``,
``loadBalancerSourceRanges``, ``status.loadBalancer.ingress``, and the
LoadBalancer-only fields (ValidateService, ValidateLoadBalancerStatus).

Every address here is one a client outside the cluster is sent to, so special
addresses (``rules.NON_SPECIAL_IP``) are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import rules
from .fields import Errors

INGRESS_IP_MODES = ("Proxy", "VIP")
INGRESS_PORT_PROTOCOLS = ("SCTP", "TCP", "UDP")


def external_ips(spec: Mapping[str, Any], errs: Errors) -> tuple[str, ...]:
    out = []
    for path, ip in errs.strings(spec, "externalIPs", "spec.externalIPs"):
        if errs.check(path, ip, rules.IP) and errs.check(path, ip, rules.NON_SPECIAL_IP):
            out.append(rules.canonical_ip(ip))
    return tuple(dict.fromkeys(out))


def source_ranges(spec: Mapping[str, Any], errs: Errors, stype: str) -> tuple[str, ...]:
    path = "spec.loadBalancerSourceRanges"
    entries = errs.strings(spec, "loadBalancerSourceRanges", path)
    if entries and stype != "LoadBalancer":
        errs.forbidden(path, "may only be used when `type` is 'LoadBalancer'",
                       value=[v for _, v in entries])
    out = []
    for entry_path, value in entries:
        # Space padding is tolerated, a leftover of the annotation it replaced.
        if errs.check(entry_path, value.strip(), rules.CIDR):
            out.append(rules.normalise_cidr(value))
    return tuple(dict.fromkeys(out))


def load_balancer_ingress(status: Mapping[str, Any], errs: Errors) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip, except ``ipMode: Proxy`` ones (KEP-1860).

    An ingress IP in Proxy mode belongs to a load balancer that proxies to the
    nodes; kube-proxy does not treat it as a local address, and neither do we.
    """
    path = "status.loadBalancer.ingress"
    lb = errs.mapping(status, "loadBalancer", "status.loadBalancer")
    out = []
    for entry_path, entry in errs.mappings(lb, "ingress", path):
        ip = errs.string(entry, "ip", f"{entry_path}.ip")
        hostname = errs.string(entry, "hostname", f"{entry_path}.hostname")
        mode = errs.optional_string(entry, "ipMode", f"{entry_path}.ipMode")
        if hostname:
            if rules.parse_ip(hostname) is not None:
                errs.invalid(f"{entry_path}.hostname", hostname, "must be a DNS name, not an IP "
                             "address", "a DNS-1123 subdomain; put IPs in `ip`")
            else:
                errs.check(f"{entry_path}.hostname", hostname, rules.DNS1123_SUBDOMAIN)
        if mode is not None:
            if not ip:
                errs.forbidden(f"{entry_path}.ipMode", "may only be set when `ip` is set",
                               value=mode)
            elif mode not in INGRESS_IP_MODES:
                errs.unsupported(f"{entry_path}.ipMode", mode, INGRESS_IP_MODES)
        for port_path, port in errs.mappings(entry, "ports", f"{entry_path}.ports"):
            number = errs.integer(port, "port", f"{port_path}.port")
            if number is None:
                errs.required(f"{port_path}.port", rules.PORT_RANGE)
            else:
                errs.check_port(f"{port_path}.port", number)
            protocol = errs.string(port, "protocol", f"{port_path}.protocol")
            if protocol not in INGRESS_PORT_PROTOCOLS:
                errs.unsupported(f"{port_path}.protocol", protocol, INGRESS_PORT_PROTOCOLS)
        ip_path = f"{entry_path}.ip"
        if ip and errs.check(ip_path, ip, rules.IP) and errs.check(
            ip_path, ip, rules.NON_SPECIAL_IP
        ) and mode != "Proxy":
            out.append(rules.canonical_ip(ip))
    return tuple(dict.fromkeys(out))


def load_balancer_fields(spec: Mapping[str, Any], errs: Errors, stype: str) -> None:
    """allocateLoadBalancerNodePorts and loadBalancerClass: LoadBalancer only."""
    allocate = errs.boolean(spec, "allocateLoadBalancerNodePorts",
                            "spec.allocateLoadBalancerNodePorts")
    lb_class = errs.optional_string(spec, "loadBalancerClass", "spec.loadBalancerClass")
    for key, value in (("allocateLoadBalancerNodePorts", allocate),
                       ("loadBalancerClass", lb_class)):
        if value is not None and stype != "LoadBalancer":
            errs.forbidden(f"spec.{key}", "may only be used when `type` is 'LoadBalancer'",
                           value=value)
    if lb_class is not None and stype == "LoadBalancer":
        errs.check("spec.loadBalancerClass", lb_class, rules.QUALIFIED_NAME)
