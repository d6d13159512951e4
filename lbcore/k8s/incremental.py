"""Re-reading a large objects file at the cost of what changed in it.

A file of 30,000 Services (with their EndpointSlices) is ~30 MB of YAML; parsing and
validating all of it takes ~20 s here (PyYAML's constructor and the validation are
Python), so re-reading it whole on every edit makes one endpoint change cost 20 s.
:class:`IncrementalLoader` cuts the file before every document start marker (``---`` at
the start of a line, followed by a blank or the end of the line: YAML forbids that
inside any scalar, so the parser would cut there too), hashes each document's bytes and
parses and validates only the documents whose hash the last good read did not have.
An unchanged document keeps its very objects, and a service's slices tuple is reused
when its slices are, so the change tracker finds what changed by identity
(``lbcore.tracker._candidates``) instead of comparing every service.

The result and the errors are those of :func:`lbcore.k8s.load_file`: the checks across
objects (one object per name, node ports, cluster IPs) run over the whole file on
every read (dictionary work, cheap); an invalid object raises the same
``ValidationError`` with this read's document numbers. Whatever the cut cannot vouch
for — a YAML error, a directive (``%YAML``), bytes that are not UTF-8 — is handed to
``load_file`` itself, so such files are read (and their errors worded) exactly as
before. A read that fails changes nothing: the cache stays that of the last good read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import yaml

from ..errors import FieldError, SourceError, ValidationError
from ..memory import gc_paused
from ..model import ClusterObjects
from .convert import _check_range, _cross_object_errors, _parse, _Parsed, parse_objects
from .delta import Owners, patched
from .documents import Document, _flatten, _StrictLoader, load_documents
from .service import DEFAULT_NODE_PORT_RANGE

LOG = logging.getLogger(__name__)

_BLANKS = b" \t\r\n"
_FORGOTTEN: dict = {}  # what a cached Document holds instead of its raw object (memory)


class _Unsure(Exception):
    """The cut-up file cannot be read piecewise: read it whole instead."""


@dataclass(frozen=True)
class _Piece:
    """What one cut of the file (normally one document) gave."""

    first: int  # number of its first YAML document in the read that parsed it
    count: int  # YAML documents in it (0 for a leading comment, 1 otherwise)
    parsed: tuple[_Parsed, ...]
    errors: tuple[FieldError, ...] = ()


@dataclass
class _Good:
    """The last read that succeeded: its pieces, in file order, and what they gave."""

    order: list[bytes]  # digests, in file order
    present: set[bytes]  # the same, as a set
    pieces: dict[bytes, _Piece]  # digest -> piece
    objects: ClusterObjects
    owners: Owners


def cut_documents(data: bytes) -> list[bytes]:
    """``data`` cut before every ``---`` that starts a line and a YAML document."""
    starts, pos = [0], 0  # a marker at the very start begins the first piece
    while (i := data.find(b"\n---", pos)) >= 0:
        after = i + 4
        if after == len(data) or data[after] in _BLANKS:
            starts.append(i + 1)
        pos = i + 1
    ends = [*starts[1:], len(data)]
    return [data[a:b] for a, b in zip(starts, ends, strict=True)]


class IncrementalLoader:
    """``load_file`` for a file read again and again: ``loader(path, node_port_range=..)``.

    One instance per file (a ``FileSource`` has one); thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, tuple[int, int]] | None = None  # what the cache is valid for
        self._good: _Good | None = None
        self.last_parsed = 0  # pieces parsed by the last read (for tests and logs)

    def __call__(self, path: str | os.PathLike[str], *,
                 node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE) -> ClusterObjects:
        name = os.fspath(path)
        _check_range(node_port_range)
        with self._lock:
            if self._key != (name, node_port_range):
                self._good, self._key = None, (name, node_port_range)
            start = time.monotonic()
            try:
                data = _read_bytes(name)
                with gc_paused():  # ~100k long-lived objects, no cycles among them
                    objects = self._read(data, name, node_port_range)
            except _Unsure:
                self._good = None
                documents = load_documents(name)  # raises the same SourceError as before
                self.last_parsed = len(documents)
                return parse_objects(documents, node_port_range=node_port_range, source=name)
            LOG.debug("%s: %d parsed, %.3f s", name, self.last_parsed, time.monotonic() - start)
            return objects

    def _read(self, data: bytes, name: str, node_port_range: tuple[int, int]) -> ClusterObjects:
        if data.startswith(b"%") or b"\n%" in data:
            raise _Unsure  # a directive belongs to the next document: leave it to PyYAML
        chunks = cut_documents(data)
        digests = [hashlib.blake2b(c, digest_size=16).digest() for c in chunks]
        good = self._good
        self.last_parsed = 0
        if good is not None and digests == good.order:
            return good.objects  # the same bytes again (a spurious wake-up)
        known = good.pieces if good is not None else {}
        present = set(digests)
        missing = present.difference(known)
        fresh: dict[bytes, _Piece] = {}
        for i, digest in enumerate(digests):
            if digest in missing and digest not in fresh:
                # numbered by position for now; _rejection renumbers if it must
                fresh[digest] = _parse_piece(chunks[i], name, i + 1, node_port_range)
        self.last_parsed = len(fresh)
        pieces = {**known, **fresh}
        gone, came = _difference(good, digests, present)
        delta = [(p, -1) for d in gone for p in pieces[d].parsed]
        delta += [(p, 1) for d in came for p in pieces[d].parsed]
        owners = good.owners if good is not None else Owners()
        if any(p.errors for p in fresh.values()) or owners.conflict(delta):
            raise self._rejection(digests, pieces, name)
        objects = patched(good.objects if good is not None else ClusterObjects.empty(), delta)
        owners.apply(delta)
        for d in known.keys() - present:
            del pieces[d]
        self._good = _Good(digests, present, pieces, objects, owners)
        return objects

    @staticmethod
    def _rejection(digests: list[bytes], pieces: dict[bytes, _Piece],
                   name: str) -> ValidationError:
        """The error ``load_file`` raises for this file: every document's problems in
        file order (numbered for this read), then the checks across objects."""
        parsed: list[_Parsed] = []
        errors: list[FieldError] = []
        index = 1
        for digest in digests:
            piece = pieces[digest]
            if piece.first != index:
                piece = _renumbered(piece, index)
            parsed += piece.parsed
            errors += piece.errors
            index += piece.count
        errors += _cross_object_errors(parsed)
        return ValidationError(errors, source=name)


def _difference(good: _Good | None, digests: list[bytes],
                present: set[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The pieces that left and came since ``good``, each as often as it did."""
    if good is None:
        return [], digests
    if len(good.present) == len(good.order) and len(present) == len(digests):
        return list(good.present - present), list(present - good.present)  # no repeats
    old, new = Counter(good.order), Counter(digests)
    return list((old - new).elements()), list((new - old).elements())


def _read_bytes(name: str) -> bytes:
    try:
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{name}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise SourceError(f"{name}: cannot read: {exc}") from None


def _parse_piece(chunk: bytes, name: str, first: int,
                 node_port_range: tuple[int, int]) -> _Piece:
    """Parse and validate one piece (its documents numbered from ``first``)."""
    try:
        text = chunk.decode("utf-8")
        raws = list(yaml.load_all(text, Loader=_StrictLoader))
        documents = [d for i, raw in enumerate(raws) for d in _flatten(raw, name, first + i)]
    except (UnicodeDecodeError, yaml.YAMLError, SourceError):
        raise _Unsure from None  # worded (with the file's line numbers) by load_file
    parsed, errors = [], []
    for doc in documents:
        result, errs = _parse(doc, node_port_range)
        errors += errs
        if result is not None:
            parsed.append(_Parsed(Document(doc.file, doc.index, _FORGOTTEN, doc.item),
                                  result.kind, result.name, result.value))
    return _Piece(first, len(raws), tuple(parsed), tuple(errors))


def _renumbered(piece: _Piece, first: int) -> _Piece:
    """The same piece, its documents numbered from ``first`` (documents were added or
    removed before it)."""
    shift = first - piece.first
    return _Piece(first, piece.count, tuple(
        _Parsed(Document(p.document.file, p.document.index + shift, _FORGOTTEN,
                         p.document.item), p.kind, p.name, p.value) for p in piece.parsed),
        tuple(replace(e, document=e.document + shift) for e in piece.errors))
