"""Services, EndpointSlices and Nodes as the API server returns them (for tests and the
API test double ``lbcore.sources.kube_fake``): the fields the server defaults are filled
in, the slice carries the labels and owner reference the EndpointSlice controller sets.
"""

from __future__ import annotations

from typing import Any


def service_object(name: str, cluster_ip: str, ports: list[dict[str, Any]], *,
                   namespace: str = "default", type: str = "ClusterIP",
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``v1 Service`` with the fields the API server defaults filled in."""
    family = "IPv6" if ":" in cluster_ip else "IPv4"
    spec: dict[str, Any] = {
        "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "internalTrafficPolicy": "Cluster", "ipFamilies": [family],
        "ipFamilyPolicy": "SingleStack",
        "ports": [{"targetPort": p["port"], "protocol": "TCP", **p} for p in ports],
        "selector": {"app": name}, "sessionAffinity": "None", "type": type,
    }
    if type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app": name, **(labels or {})}},
            "spec": spec, "status": {"loadBalancer": {}}}


def slice_object(service: dict[str, Any], addresses: list[str], *, suffix: str = "abcde",
                 ready: bool = True, node_name: str = "node-a") -> dict[str, Any]:
    """The ``discovery.k8s.io/v1 EndpointSlice`` the controller makes for ``service``."""
    meta, spec = service["metadata"], service["spec"]
    labels = {k: v for k, v in meta.get("labels", {}).items()}
    labels.update({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                   "kubernetes.io/service-name": meta["name"]})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "addressType": spec["ipFamilies"][0],
        "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": meta["namespace"],
                     "generateName": f"{meta['name']}-", "labels": labels,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                          "name": meta["name"], "uid": "0" * 8,
                                          "controller": True,
                                          "blockOwnerDeletion": True}]},
        "endpoints": [{"addresses": [ip], "nodeName": node_name,
                       "conditions": {"ready": ready, "serving": ready,
                                      "terminating": False}} for ip in addresses],
        "ports": [{"name": p.get("name", ""), "port": p["targetPort"],
                   "protocol": p["protocol"]} for p in spec["ports"]],
    }


def node_object(name: str, address: str, *, zone: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}
