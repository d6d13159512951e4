"""Kubernetes objects in, validated ``ClusterObjects`` out.

``load_file`` reads a YAML file as ``kubectl get svc,endpointslices,nodes -o yaml``
prints it (or hand-written multi-document YAML), validates every Service,
EndpointSlice and Node with Kubernetes' own rules and converts them into the model.
The whole file is rejected if any object is invalid.
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
