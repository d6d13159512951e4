"""``v1 Node``: the addresses NodePort frontends open on, and the node's zone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import FieldError
from ..model import Node
from . import rules
from .fields import Errors, read_meta

ZONE_LABEL = "topology.kubernetes.io/zone"
DEPRECATED_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"
ADDRESS_TYPES = ("ExternalDNS", "ExternalIP", "Hostname", "InternalDNS", "InternalIP")
IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"  # the cluster autoscaler's


def node_from_object(obj: Mapping[str, Any]) -> tuple[Node | None, list[FieldError]]:
    """Validate and convert one Node; None when anything is wrong."""
    errs = Errors()
    meta = read_meta(obj, errs, name_rule=rules.DNS1123_SUBDOMAIN, namespaced=False)
    status = errs.mapping(obj, "status", "status")

    addresses = []
    for path, entry in errs.mappings(status, "addresses", "status.addresses"):
        kind = errs.string(entry, "type", f"{path}.type")
        address = errs.string(entry, "address", f"{path}.address")
        if not kind:
            errs.required(f"{path}.type", ", ".join(ADDRESS_TYPES))
        elif kind not in ADDRESS_TYPES:
            errs.unsupported(f"{path}.type", kind, ADDRESS_TYPES)
        if not address:
            errs.required(f"{path}.address")
        elif kind in IP_ADDRESS_TYPES and _node_ip(f"{path}.address", address, errs):
            addresses.append(rules.canonical_ip(address))

    zone = meta.labels.get(ZONE_LABEL) or meta.labels.get(DEPRECATED_ZONE_LABEL)
    if errs:
        return None, list(errs)
    return Node(meta.name, tuple(dict.fromkeys(addresses)), zone or None,
                _deleting(obj)), []


def _deleting(obj: Mapping[str, Any]) -> bool:
    """kube-proxy's node eligibility, inverted: deleted, or about to be."""
    meta, spec = obj.get("metadata"), obj.get("spec")
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        return True
    taints = spec.get("taints") if isinstance(spec, Mapping) else None
    return isinstance(taints, list) and any(
        isinstance(t, Mapping) and t.get("key") == TO_BE_DELETED_TAINT for t in taints)


def _node_ip(path: str, address: str, errs: Errors) -> bool:
    """A usable node IP. kubelet refuses the special ones too (validateNodeIP);
    NodePorts open on these addresses, and one on 127.0.0.1 is CVE-2020-8558's."""
    return errs.check(path, address, rules.IP) and errs.check(path, address, rules.NON_SPECIAL_IP)
