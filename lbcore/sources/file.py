"""The ``file`` source: a multi-document YAML file of Kubernetes objects.

Options (``source:`` in ``lbcore.yaml``)::

    kind: file
    path: services.yaml              # relative to lbcore.yaml
    node_port_range: [30000, 32767]  # optional, the apiserver's --service-node-port-range

Change detection: an inotify watch on the file's directory (and on the directory of
its symlink target, if different) wakes the watcher; a ``stat`` signature (device,
inode, size, mtime, ctime of the file the path resolves to) decides whether the file
really changed. Watching the directory rather than the file catches editors that
write a new file and rename it over the old one, and Kubernetes ConfigMap volumes,
which swap a ``..data`` symlink. Without inotify (non-Linux, exhausted watches) the
same signature is polled twice a second (the watcher also re-checks it on
every wake-up, so a missed event costs at most that). ``trigger()`` (SIGHUP) forces a re-read.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..model import ClusterObjects
from .base import Source

LOG = logging.getLogger(__name__)

CHECK_INTERVAL = 0.5  # seconds: polling period; how often stop/trigger are checked
SETTLE_TIME = 0.1  # seconds to let a burst of writes finish before re-reading

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
WATCH_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
    | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)

Signature = tuple[int, int, int, int, int] | None
Loader = Callable[..., ClusterObjects]


class Inotify:
    """A minimal inotify(7) binding: watch directories, wait for any event."""

    def __init__(self, fd: int, libc: Any) -> None:
        self.fd = fd
        self._libc = libc

    @classmethod
    def open(cls, directories: list[Path]) -> Inotify | None:
        """An inotify instance watching ``directories``, or None if unavailable."""
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            init1 = libc.inotify_init1
        except (OSError, AttributeError):
            return None
        fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            LOG.debug("inotify_init1: %s", os.strerror(ctypes.get_errno()))
            return None
        watcher = cls(fd, libc)
        for directory in directories:
            wd = libc.inotify_add_watch(fd, os.fsencode(directory), WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                LOG.debug("inotify_add_watch %s: %s", directory, os.strerror(err))
                watcher.close()
                return None
        return watcher

    def drain(self) -> None:
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _default_loader() -> Loader:
    """``load_file`` that re-parses only the documents that changed since the last
    read (``lbcore.k8s.incremental``): one edit of a 30,000-service file costs
    milliseconds of parsing, not a whole re-read, and unchanged objects keep their
    identity for the change tracker."""
    from ..k8s.incremental import IncrementalLoader  # lazy: conversion is heavy

    return IncrementalLoader()


class FileSource(Source):
    kind = "file"
    known_options: ClassVar[frozenset[str]] = frozenset({"path", "node_port_range"})

    def __init__(
        self,
        options: Mapping[str, Any],
        config_path: str | Path | None,
        *,
        loader: Loader | None = None,
        use_inotify: bool = True,
    ) -> None:
        super().__init__(options, config_path)
        raw = self.options.get("path")
        if not isinstance(raw, str) or not raw:
            raise ConfigError("source.path: missing (valid: a YAML file of Kubernetes objects)")
        path = Path(raw)
        if not path.is_absolute() and self.config_path is not None:
            path = self.config_path.parent / path
        self.path = path
        self.node_port_range = _node_port_range(self.options.get("node_port_range"))
        self._loader = loader  # None: the incremental loader, made at the first read
        self._use_inotify = use_inotify
        self._wake_fd: int | None = None  # write end of the pipe that wakes watch()

    def describe(self) -> str:
        return f"file {self.path}"

    def read(self) -> ClusterObjects:
        if self._loader is None:
            self._loader = _default_loader()
        return self._loader(str(self.path), node_port_range=self.node_port_range)

    def signature(self) -> Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _directories(self) -> list[Path]:
        dirs = [self.path.parent]
        target = self.path.resolve().parent
        if target != dirs[0] and target.is_dir():
            dirs.append(target)
        return dirs

    def trigger(self) -> None:
        super().trigger()
        wake = self._wake_fd
        if wake is not None:
            with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
                os.write(wake, b"\0")

    def watch(self, callback: Callable[[], None], stop: threading.Event) -> None:
        seen = self.signature()
        inotify = Inotify.open(self._directories()) if self._use_inotify else None
        if inotify is None:
            LOG.info("watching %s by polling every %.1f s", self.path, CHECK_INTERVAL)
        else:
            LOG.debug("watching %s with inotify", self.path)
        wake_r, self._wake_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            callback()  # watching from here on: (re-)read once
            while not stop.is_set():
                self._wait(inotify, wake_r)
                if stop.is_set():
                    break
                triggered = self.take_trigger()
                current = self.signature()
                if triggered or current != seen:
                    seen = current
                    LOG.debug("%s: %s", self.path, "re-read requested" if triggered else "changed")
                    callback()
        finally:
            wake_w, self._wake_fd = self._wake_fd, None
            os.close(wake_w)
            os.close(wake_r)
            if inotify is not None:
                inotify.close()

    def _wait(self, inotify: Inotify | None, wake_r: int) -> None:
        """Until a file event, a trigger() or CHECK_INTERVAL; let write bursts settle."""
        fds = [wake_r] + ([inotify.fd] if inotify is not None else [])
        ready, _, _ = select.select(fds, [], [], CHECK_INTERVAL)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        if inotify is not None and inotify.fd in ready:
            time.sleep(SETTLE_TIME)
            inotify.drain()


def _node_port_range(raw: Any) -> tuple[int, int]:
    if raw is None:
        return (30000, 32767)
    valid = "a list [first, last] of ports, e.g. [30000, 32767]"
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in raw)
        or not 1 <= raw[0] <= raw[1] <= 65535
    ):
        raise ConfigError(f"source.node_port_range: {raw!r} (valid: {valid})")
    return (raw[0], raw[1])
