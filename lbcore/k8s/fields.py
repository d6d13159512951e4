"""Reading untyped object dicts field by field, collecting every problem.

``Errors`` plays the part of apimachinery's ``field.ErrorList``: validators add to it
and carry on, so that one pass reports everything wrong with an object. Its typed
getters stand in for JSON decoding into Go structs: a field of the wrong type is
reported at its path and read as absent.

Paths are written as Kubernetes writes them: ``spec.ports[1].port``,
``metadata.labels[kubernetes.io/service-name]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import FieldError
from . import rules


def show(value: Any) -> str:
    """A value as Kubernetes error texts show it: JSON, strings quoted."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "an integer",
    bool: "a boolean (true or false)",
}


class Errors:
    """An ordered collection of FieldErrors for one object."""

    def __init__(self) -> None:
        self._items: list[FieldError] = []

    def __iter__(self) -> Iterator[FieldError]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    # ---------------------------------------------------------------- kinds of error

    def add(self, path: str, problem: str, valid: str = "") -> None:
        self._items.append(FieldError(path, problem, valid))

    def invalid(self, path: str, value: Any, reason: str, valid: str = "") -> None:
        self.add(path, f"invalid value {show(value)}: {reason}", valid)

    def required(self, path: str, valid: str = "") -> None:
        self.add(path, "required value", valid)

    def unsupported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        self.add(path, f"unsupported value {show(value)}", ", ".join(map(show, supported)))

    def duplicate(self, path: str, value: Any, valid: str = "") -> None:
        self.add(path, f"duplicate value {show(value)}", valid)

    def forbidden(self, path: str, reason: str, valid: str = "", *, value: Any = None) -> None:
        """A field that may not be set here; ``value`` (if given) is shown."""
        shown = "" if value is None else f" value {show(value)}"
        self.add(path, f"forbidden{shown}: {reason}", valid)

    def too_many(self, path: str, count: int, limit: int) -> None:
        self.add(path, f"too many: {count}", f"at most {limit} items")

    def check(self, path: str, value: str, rule: rules.Rule) -> bool:
        """Apply a format rule; report each problem. True when the value is valid."""
        problems = rule(value)
        for problem in problems:
            self.invalid(path, value, problem, rule.valid)
        return not problems

    def check_port(self, path: str, value: int) -> bool:
        problems = rules.port_number_problems(value)
        for problem in problems:
            self.invalid(path, value, problem, rules.PORT_RANGE)
        return not problems

    # ------------------------------------------------------------------ typed reads

    def _typed(self, obj: Mapping[str, Any], key: str, path: str, kind: type) -> Any:
        value = obj.get(key)
        if value is None:
            return None
        # bool is an int in Python, not in JSON.
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        self.invalid(path, value, f"must be {_TYPE_NAMES[kind]}")
        return None

    def mapping(self, obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        return self._typed(obj, key, path, dict) or {}

    def sequence(self, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
        """A list; ``null`` and absent read as empty."""
        return self._typed(obj, key, path, list) or []

    def mappings(self, obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, dict]]:
        """A list of mappings with their paths; entries of another type are reported."""
        out = []
        for i, entry in enumerate(self.sequence(obj, key, path)):
            if isinstance(entry, dict):
                out.append((f"{path}[{i}]", entry))
            else:
                self.invalid(f"{path}[{i}]", entry, "must be a mapping")
        return out

    def strings(self, obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, str]]:
        """A list of strings with their paths; entries of another type are reported."""
        out = []
        for i, entry in enumerate(self.sequence(obj, key, path)):
            if isinstance(entry, str):
                out.append((f"{path}[{i}]", entry))
            else:
                self.invalid(f"{path}[{i}]", entry, "must be a string")
        return out

    def string(self, obj: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = self._typed(obj, key, path, str)
        return default if value is None or value == "" else value

    def optional_string(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        return self._typed(obj, key, path, str)

    def integer(self, obj: Mapping[str, Any], key: str, path: str) -> int | None:
        return self._typed(obj, key, path, int)

    def boolean(self, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
        return self._typed(obj, key, path, bool)


# ---------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class Meta:
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


DEFAULT_NAMESPACE = "default"
ANNOTATIONS_MAX_BYTES = 256 * 1024  # ValidateAnnotations' TotalAnnotationSizeLimitB


def read_meta(obj: Mapping[str, Any], errs: Errors, *, name_rule: rules.Rule,
              namespaced: bool = True) -> Meta:
    """``metadata`` as ValidateObjectMeta checks it; namespace defaults to "default"."""
    meta = errs.mapping(obj, "metadata", "metadata")
    name = errs.string(meta, "name", "metadata.name")
    if not name:
        errs.required("metadata.name", name_rule.valid)
    else:
        errs.check("metadata.name", name, name_rule)

    namespace = errs.string(meta, "namespace", "metadata.namespace")
    if namespaced:
        namespace = namespace or DEFAULT_NAMESPACE
        errs.check("metadata.namespace", namespace, rules.DNS1123_LABEL)
    elif namespace:
        errs.forbidden("metadata.namespace", "not allowed on this type", "no namespace",
                       value=namespace)
        namespace = ""

    labels = read_string_map(meta, "labels", "metadata.labels", errs, rules.LABEL_VALUE)
    annotations = read_string_map(meta, "annotations", "metadata.annotations", errs, None)
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        errs.add("metadata.annotations", f"too long: {size} bytes",
                 f"at most {ANNOTATIONS_MAX_BYTES} bytes of keys and values in all")
    return Meta(namespace, name, labels, annotations)


def read_string_map(obj: Mapping[str, Any], key: str, path: str, errs: Errors,
                    value_rule: rules.Rule | None) -> Mapping[str, str]:
    """A map of qualified-name keys to strings (labels, annotations, a selector);
    ``value_rule`` checks each value (None: any string)."""
    out: dict[str, str] = {}
    for k, v in errs.mapping(obj, key, path).items():
        entry = f"{path}[{k}]"
        if not isinstance(k, str):
            errs.invalid(path, k, "keys must be strings", rules.QUALIFIED_NAME.valid)
            continue
        errs.check(path, k, rules.QUALIFIED_NAME)
        if not isinstance(v, str):
            errs.invalid(entry, v, "must be a string (quote it in YAML)")
            continue
        if value_rule is not None:
            errs.check(entry, v, value_rule)
        out[k] = v
    return MappingProxyType(out)
