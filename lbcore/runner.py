"""Bounded-frequency runner: coalesce sync requests, retry failures, resync periodically.

The same contract as kube-proxy's ``async.BoundedFrequencyRunner``:

* ``run()`` asks for a run. Requests coalesce: however many arrive, ``fn`` runs once,
  and never sooner than ``min_interval`` after the previous run started.
* ``fn`` runs at least every ``max_interval`` even when nobody asks (periodic resync).
* ``retry_after(d)`` asks for a run ``d`` seconds from now, unless one is due sooner;
  ``min_interval`` still holds. ``Backoff`` computes capped exponential delays for it.

The scheduling decision (``step``) is separate from the blocking loop (``loop``), and
time comes from an injected ``Clock``, so tests drive the runner with a ``FakeClock``
and never sleep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .clock import Clock

LOG = logging.getLogger(__name__)

INFINITY = float("inf")


class Backoff:
    """Capped exponential backoff: initial, initial*factor, ... up to maximum."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.failures = 0

    def next(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        delay = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class BoundedFrequencyRunner:
    """Runs ``fn`` on request, at most every ``min_interval``, at least every ``max_interval``.

    ``max_interval`` of 0 or infinity disables the periodic run. Thread-safe: ``run``,
    ``retry_after`` and ``wake`` may be called from any thread while ``loop`` runs.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], None],
        min_interval: float,
        max_interval: float,
        clock: Clock,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        if min_interval < 0 or max_interval < 0:
            raise ValueError("runner intervals must be >= 0")
        if max_interval and max_interval < min_interval:
            raise ValueError(f"max_interval {max_interval} is below min_interval {min_interval}")
        self.name = name
        self._fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval or INFINITY
        self._clock = clock
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._created = clock.now()
        self._last_run: float | None = None
        self._requested = False
        self._retry_at: float | None = None
        self.runs = 0

    # ------------------------------------------------------------------ requests

    def run(self) -> None:
        """Ask for a run as soon as ``min_interval`` allows. Coalesces."""
        with self._lock:
            self._requested = True
        self._wake.set()

    def retry_after(self, seconds: float) -> None:
        """Ask for a run in ``seconds`` (or sooner if one is already due sooner)."""
        at = self._clock.now() + max(0.0, seconds)
        with self._lock:
            self._retry_at = at if self._retry_at is None else min(self._retry_at, at)
        self._wake.set()

    def wake(self) -> None:
        """Make ``loop`` re-check its stop event and deadlines now."""
        self._wake.set()

    # ---------------------------------------------------------------- scheduling

    def next_run(self) -> float:
        """Monotonic time at which ``fn`` is due next."""
        with self._lock:
            return self._due_locked()

    def _due_locked(self) -> float:
        if self._last_run is None:
            earliest = -INFINITY
            due = self._created + self.max_interval
        else:
            earliest = self._last_run + self.min_interval
            due = self._last_run + self.max_interval
        if self._requested:
            due = min(due, earliest)
        if self._retry_at is not None:
            due = min(due, max(self._retry_at, earliest))
        return due

    def step(self) -> float:
        """Run ``fn`` if it is due; return when it is due next.

        ``fn`` runs outside the lock, so it may itself call ``run`` or ``retry_after``
        (a failed sync schedules its own retry). An exception from ``fn`` is logged and
        does not stop the runner; callers that want a retry ask for one.
        """
        with self._lock:
            now = self._clock.now()
            if now < self._due_locked():
                return self._due_locked()
            self._requested = False
            self._retry_at = None
            self._last_run = now
            self.runs += 1
        try:
            self._fn()
        except Exception:
            LOG.exception("%s: unexpected error in run", self.name)
        return self.next_run()

    def loop(self, stop: threading.Event) -> None:
        """Call ``step`` until ``stop`` is set. Blocks; run it in its own thread.

        Waits are bounded by ``poll_interval`` so an external ``stop`` is noticed even
        without ``wake()``; call ``wake()`` after setting ``stop`` to stop at once.
        """
        while not stop.is_set():
            self._wake.clear()
            deadline = self.step()
            if stop.is_set():
                break
            self._clock.wait(self._wake, min(deadline, self._clock.now() + self._poll))
