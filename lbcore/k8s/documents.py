"""Multi-document YAML in, one ``Document`` per Kubernetes object out.

Reads what ``kubectl get svc,endpointslices,nodes -o yaml`` prints (a ``v1 List`` with
``items``), hand-written files with ``---`` separators, and typed lists such as a
``ServiceList`` from the API (whose items carry no ``apiVersion``/``kind``: they are
filled in from the list). Empty documents are skipped.

Structural problems (YAML syntax, a document that is not a mapping, a key given
twice) raise ``SourceError`` naming the file and line. Whether an object is a valid
Kubernetes object is for ``lbcore.k8s.convert`` to say.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import SourceError


@dataclass(frozen=True)
class Document:
    """One object and where it came from.

    ``index`` is the 1-based document number in the file; ``item`` is the 0-based
    position in the ``items`` of a List document (None for a top-level object).
    """

    file: str
    index: int
    obj: dict[str, Any] = field(compare=False)
    item: int | None = None

    @property
    def kind(self) -> str:
        kind = self.obj.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def where(self) -> str:
        """``document 2`` or ``document 2 items[3]``, for messages."""
        return f"document {self.index}" + ("" if self.item is None else f" items[{self.item}]")


# libyaml's parser when PyYAML has it (the wheels do): ~10x faster on a 10,000-service
# file; the constructor (and so the duplicate-key check below) stays the Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that rejects a mapping key given twice (as sigs.k8s.io/yaml does)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = seen.get(key)
        except TypeError:  # unhashable key; construct_mapping reports it
            continue
        if earlier is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first given on line {earlier.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping  # type: ignore[arg-type]
)


def load_documents(path: str | os.PathLike[str]) -> list[Document]:
    """Read ``path`` and split it into objects. Raises SourceError."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SourceError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{name}: is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{name}: cannot read: {exc}") from None
    return parse_documents(text, name)


def parse_documents(text: str, file: str = "<input>") -> list[Document]:
    """Split YAML text into objects; ``file`` is used in messages only."""
    documents: list[Document] = []
    try:
        for index, raw in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            documents += _flatten(raw, file, index)
    except yaml.MarkedYAMLError as exc:
        raise SourceError(_yaml_message(file, exc)) from None
    except yaml.YAMLError as exc:
        raise SourceError(f"{file}: not valid YAML: {exc}") from None
    return documents


def _yaml_message(file: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
    problem = " ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
    return f"{where}: YAML syntax error: {problem}"


def _flatten(raw: Any, file: str, index: int) -> list[Document]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise SourceError(
            f"{file}:document {index}: a {_type_name(raw)} where a Kubernetes object "
            "(a mapping with apiVersion and kind) was expected"
        )
    kind = raw.get("kind")
    if not (isinstance(kind, str) and kind.endswith("List") and "items" in raw):
        return [Document(file, index, raw)]

    items = raw.get("items") or []
    if not isinstance(items, list):
        raise SourceError(f"{file}:document {index}: {kind}.items is a {_type_name(items)}, "
                          "expected a list of objects")
    item_kind = kind.removesuffix("List")  # "" for a plain v1 List
    documents = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SourceError(f"{file}:document {index} items[{i}]: a {_type_name(item)} "
                              "where a Kubernetes object was expected")
        if item_kind and "kind" not in item and "apiVersion" not in item:
            item = {"apiVersion": raw.get("apiVersion"), "kind": item_kind, **item}
        documents.append(Document(file, index, item, i))
    return documents


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string"}.get(type(value), type(value).__name__)
