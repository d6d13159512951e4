"""Time, injected: the agent and the runner never call ``time`` directly.

``SystemClock`` is the real thing. ``FakeClock`` lets unit tests move time by hand: its
``wait`` never blocks, it jumps to the deadline (or returns at once when the event is
already set), so a test of minutes of agent behaviour runs in microseconds.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, for intervals and deadlines."""

    def wall(self) -> float:
        """Unix time, for ``*_timestamp_seconds`` metrics and logs."""

    def wait(self, event: threading.Event, deadline: float) -> bool:
        """Block until ``event`` is set or ``now() >= deadline``; True if the event was set."""


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, deadline: float) -> bool:
        return event.wait(max(0.0, deadline - self.now()))


class FakeClock:
    """A clock that only moves when told to (``advance``) or when someone waits."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._lock = threading.Lock()
        self.waits: list[float] = []  # deadlines passed to wait(), for assertions

    def now(self) -> float:
        with self._lock:
            return self._now

    def wall(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._now = max(self._now, now)

    def wait(self, event: threading.Event, deadline: float) -> bool:
        self.waits.append(deadline)
        if event.is_set():
            return True
        if deadline != float("inf"):
            self.set(deadline)
        return event.is_set()
