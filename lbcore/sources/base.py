"""The source contract: where Service / EndpointSlice / Node objects come from.

A source is a plugin in the entry-point group ``lbcore.sources``. It reads whole,
validated snapshots (``read``) and tells the agent when it may have changed
(``watch``). Partial data never leaves a source: ``read`` returns a complete snapshot
or raises ``ValidationError`` / ``SourceError``, and the agent keeps the previous one.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..model import ClusterObjects


class Source(abc.ABC):
    """Base class of every source plugin.

    ``options`` are the ``source:`` mapping of ``lbcore.yaml`` without ``kind``;
    ``config_path`` is that file (relative paths in options are relative to it).
    Validate options in ``__init__`` and raise ``ConfigError`` naming the option.
    """

    kind: ClassVar[str]
    known_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Mapping[str, Any], config_path: str | Path | None) -> None:
        self.options = dict(options)
        self.config_path = Path(config_path) if config_path is not None else None
        unknown = sorted(set(self.options) - self.known_options)
        if unknown:
            valid = ", ".join(sorted(self.known_options)) or "none"
            raise ConfigError(
                f"source: unknown option(s) {', '.join(unknown)} for source kind "
                f"{self.kind} (valid: {valid})"
            )
        self._triggered = threading.Event()
        self._full_sync_requested = threading.Event()

    @abc.abstractmethod
    def read(self) -> ClusterObjects:
        """A complete, validated snapshot. Raises ValidationError or SourceError."""

    @abc.abstractmethod
    def watch(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Block until ``stop`` is set; call ``callback()`` (which then calls
        ``read``) once as soon as the watch is established, whenever the objects may
        have changed, and after ``trigger()``. The first call makes sure no change
        falls between an earlier ``read`` and the start of the watch. Spurious
        callbacks are allowed; the change tracker filters them."""

    def trigger(self) -> None:
        """Ask ``watch`` to call back soon (SIGHUP: re-read now). Never blocks:
        it sets a flag that ``watch`` implementations poll (``take_trigger``)."""
        self._triggered.set()

    def take_trigger(self) -> bool:
        """For ``watch`` implementations: True once per ``trigger()``."""
        if self._triggered.is_set():
            self._triggered.clear()
            return True
        return False

    def request_full_sync(self) -> None:
        """For implementations: the source recovered from a failure (a watch that
        dropped and was re-established, a relist); the agent's next sync is full.
        Call back (``watch``'s callback) afterwards so the agent notices soon."""
        self._full_sync_requested.set()

    def take_full_sync_request(self) -> bool:
        """For the agent: True once per ``request_full_sync()``."""
        if self._full_sync_requested.is_set():
            self._full_sync_requested.clear()
            return True
        return False

    def error_counts(self) -> Mapping[str, int]:
        """Failures of the watch so far, per resource (``lbcore_source_watch_errors_total``).
        Sources without a long-lived watch return {}."""
        return {}

    def describe(self) -> str:
        """One line for logs and ``doctor``: what this source reads."""
        return self.kind

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (sockets, watches)."""
