"""Kubernetes objects in, validated ``ClusterObjects`` out.

``load_file`` reads a YAML file as ``kubectl get svc,endpointslices,nodes -o yaml``
prints it (or hand-written multi-document YAML), validates every Service,
EndpointSlice and Node with Kubernetes' own rules and converts them into the model.
The whole file is rejected if any object is invalid.

Where lbcore is stricter than the API server, on purpose (a file has no admission
chain and no allocator in front of it): special addresses (unspecified, loopback,
link-local, every multicast address, 255.255.255.255) are refused as cluster IPs,
externalIPs, LoadBalancer ingress IPs and node IPs too, not only as endpoint
addresses and externalIPs; endpoint ports must be 1-65535; IPv4 with leading zeros
(``010.0.0.1``, which Go's ParseIPSloppy reads as decimal) is refused. An
IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is read as its IPv4 address, as Go
reads it.
"""

from __future__ import annotations

import os

from ..model import ClusterObjects
from .convert import parse_objects
from .documents import Document, load_documents, parse_documents
from .service import DEFAULT_NODE_PORT_RANGE

__all__ = [
    "DEFAULT_NODE_PORT_RANGE",
    "Document",
    "load_documents",
    "load_file",
    "parse_documents",
    "parse_objects",
]


def load_file(
    path: str | os.PathLike[str],
    *,
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
) -> ClusterObjects:
    """Read, validate and convert one file.

    Raises ``SourceError`` if the file cannot be read or is not YAML, and
    ``ValidationError`` (listing every problem) if any object is invalid.
    """
    documents = load_documents(path)
    return parse_objects(documents, node_port_range=node_port_range, source=os.fspath(path))
