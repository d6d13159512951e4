"""The agent: source -> change tracker -> expand -> capability filter -> driver.

One ``Agent`` per process. ``sync_once`` is ``lbcore sync``; ``run`` is ``lbcore run``:

* ``driver.setup()`` (adopting what an earlier run left), then a source thread
  watches; it calls back once at start and on every change: the snapshot is
  re-read, the tracker records
  which services changed, and the runner is asked for a sync (coalesced, at most every
  ``runner.min_sync_period``);
* each sync hands the driver the *full* ``DesiredState`` plus the changed keys — or
  ``None`` (full sync) for the first sync, after any failure, and at least every
  ``runner.sync_period``; a failed sync is retried with capped exponential backoff;
* a snapshot that fails to read or validate is logged and ignored: the previous one
  stays in force and the driver is not called with partial data. Until a first valid
  snapshot exists the datapath is left exactly as found;
* SIGTERM/SIGINT stop the agent and leave the datapath in place; SIGHUP re-reads
  (``Source.trigger``).

Frontends the driver's ``Capabilities`` reject are taken out of the state the driver
sees and reported in ``DesiredState.skipped`` (logged once when they appear, counted in
``lbcore_skipped_frontends``), never silently dropped.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clock import Clock, SystemClock
from .config import Config
from .driver import Capabilities, SyncResult
from .errors import LBCoreError, SourceError, ValidationError
from .expand import IncrementalExpander
from .memory import freeze_survivors, gc_paused, release_free_memory
from .metrics import Metrics
from .model import ClusterObjects, DesiredState, Frontend, NodeInfo, ServiceKey, SkippedService
from .plugins import GuardedDriver
from .runner import Backoff, BoundedFrequencyRunner
from .sources.base import Source
from .tracker import ChangeTracker

LOG = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)
SIGNAL_POLL = 0.2  # seconds: how soon a signal is acted on
WATCH_RESTART_DELAY = 5.0  # seconds before a crashed source watch is restarted

ExpandFn = Callable[..., DesiredState]  # (objects, node, *, service_proxy_name) -> state


def default_expand(
    objects: ClusterObjects, node: NodeInfo, *, service_proxy_name: str | None = None
) -> DesiredState:
    from .expand import expand  # lazy: the CLI's `drivers` need not import conversion

    return expand(objects, node, service_proxy_name=service_proxy_name)


def expander_for(config: Config, caps: Capabilities, driver: str) -> IncrementalExpander:
    """The expansion a driver with ``caps`` gets: unsupported frontends go to
    ``skipped``; per-packet drivers get NodePorts on this node's addresses only."""
    return IncrementalExpander(
        config.node, config.service_proxy_name,
        admit=lambda fe: _refusal(caps, driver, fe),
        local_node_ports=caps.node_ports == "local", external_ips=config.external_ips)


def _refusal(caps: Capabilities, driver: str, fe: Frontend) -> str | None:
    reason = caps.unsupported(fe)
    return None if reason is None else f"driver {driver}: {reason}"


def apply_capabilities(state: DesiredState, caps: Capabilities, driver: str) -> DesiredState:
    """``state`` without the frontends ``caps`` rejects; those move to ``skipped``."""
    kept, skipped = [], list(state.skipped)
    for fe in state.frontends:
        reason = caps.unsupported(fe)
        if reason is None:
            kept.append(fe)
        else:
            skipped.append(SkippedService(fe.service, f"driver {driver}: {reason}", fe.address))
    if len(kept) == len(state.frontends):
        return state
    return DesiredState(state.node, tuple(kept), tuple(skipped))


@dataclass(frozen=True)
class SyncOutcome:
    state: DesiredState  # what the driver was given (unsupported frontends in .skipped)
    result: SyncResult | None  # None for a dry run
    full: bool = True


class Agent:
    def __init__(
        self,
        config: Config,
        driver: GuardedDriver,
        source: Source,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        expand: ExpandFn = default_expand,
        backoff: Backoff | None = None,
        log_skips: bool = True,
    ) -> None:
        self.config = config
        self.driver = driver
        self.source = source
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.tracker = ChangeTracker(self.clock)
        self._expand = expand
        self._log_skips = log_skips  # False when the caller prints state.skipped itself
        period = config.runner.sync_period
        self._backoff = backoff or Backoff(
            initial=max(1.0, config.runner.min_sync_period),
            maximum=max(1.0, config.runner.min_sync_period, min(period or 60.0, 60.0)),
        )
        self.runner = BoundedFrequencyRunner(
            "sync", self._runner_sync, config.runner.min_sync_period, period, self.clock
        )
        self._capabilities: Capabilities | None = None
        self._expander: IncrementalExpander | None = None
        self._sync_lock = threading.Lock()
        self._force_full = True
        self._last_full: float | None = None
        self._reported_skips: frozenset[SkippedService] = frozenset()
        self._signals: deque[int] = deque()

    # ------------------------------------------------------------------- planning

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = self.driver.capabilities()
        return self._capabilities

    def plan(self, objects: ClusterObjects,
             changed: frozenset[ServiceKey] | None = None) -> DesiredState:
        """The state the driver must hold for ``objects`` (pure, no kernel access).

        With the default expansion only ``changed`` services are recomputed (None:
        all); an injected expand function always expands everything.
        """
        if self._expand is default_expand:
            if self._expander is None:
                self._expander = expander_for(self.config, self.capabilities, self.driver.name)
            state = self._expander.expand(objects, changed)
        else:
            state = self._expand(
                objects, self.config.node, service_proxy_name=self.config.service_proxy_name
            )
            state = apply_capabilities(state, self.capabilities, self.driver.name)
        self._report_skips(state)
        return state

    def _report_skips(self, state: DesiredState) -> None:
        current = frozenset(state.skipped)
        if not self._log_skips:
            self._reported_skips = current
            return
        for skip in sorted(current - self._reported_skips, key=_skip_order):
            where = f" {skip.frontend}" if skip.frontend else ""
            LOG.warning("not programming %s%s: %s", skip.service, where, skip.reason)
        for skip in sorted(self._reported_skips - current, key=_skip_order):
            where = f" {skip.frontend}" if skip.frontend else ""
            LOG.info("no longer skipping %s%s", skip.service, where)
        self._reported_skips = current

    # -------------------------------------------------------------------- reading

    def refresh(self) -> bool:
        """Re-read the source into the tracker. False (and logged) if it was invalid."""
        try:
            objects = self.source.read()
        except (ValidationError, SourceError) as exc:
            self.metrics.source_failed()
            LOG.error("keeping the previous state; %s", exc)
            if self.tracker.objects is None:
                LOG.warning("no valid snapshot yet: the datapath stays as it is until %s "
                            "is fixed", self.source.describe())
            return False
        touched = self.tracker.update(objects)
        pending = self.tracker.pending()
        self.metrics.changes_queued(len(touched), len(pending), self.clock.wall())
        if touched:
            LOG.info("%d service(s) changed, %d pending sync", len(touched), len(pending))
        return True

    # -------------------------------------------------------------------- syncing

    def sync(self, *, full: bool | None = None) -> SyncOutcome | None:
        """Program what the tracker holds. None if no valid snapshot was read yet.

        ``full=None`` decides by itself (first sync, after a failure, or when the
        last full sync is older than ``runner.sync_period``). Raises the driver's
        error after recording it; the next sync is then full.
        """
        with self._sync_lock:
            checkpoint = self.tracker.checkpoint()
            if checkpoint.objects is None:
                LOG.warning("no valid snapshot from %s yet; datapath left as is",
                            self.source.describe())
                return None
            start = self.clock.now()
            if full is None:
                full = self._full_sync_due(start)
            try:
                with gc_paused():
                    state = self.plan(checkpoint.objects, None if full else checkpoint.changed)
                    result = self.driver.sync(state, None if full else checkpoint.changed)
            except Exception:
                self.tracker.requeue(checkpoint)
                self._force_full = True
                self.metrics.sync_failed(
                    duration=self.clock.now() - start, pending=len(self.tracker.pending())
                )
                raise
            end = self.clock.now()
            self._force_full = False
            if full:
                self._last_full = start
                freeze_survivors()  # the state just built lives until the next full sync
                release_free_memory()
            self._backoff.reset()
            self.metrics.sync_succeeded(
                duration=end - start,
                wall=self.clock.wall(),
                full=full,
                frontends=result.frontends,
                skipped=len(state.skipped),
                programming_delays=[end - t for t in checkpoint.queued_at.values()],
                pending=len(self.tracker.pending()),
            )
            LOG.info(
                "%s sync: %d frontend(s), %d service(s) written, %d removed, %d skipped "
                "(%.3f s)", "full" if full else "partial", result.frontends,
                result.services_written, result.services_removed, len(state.skipped),
                end - start,
            )
            return SyncOutcome(state, result, full)

    def _full_sync_due(self, now: float) -> bool:
        period = self.config.runner.sync_period
        if self._force_full or self._last_full is None:
            return True
        return bool(period) and now - self._last_full >= period

    def _runner_sync(self) -> None:
        try:
            self.sync()
        except Exception as exc:
            delay = self._backoff.next()
            LOG.error(
                "sync failed: %s; retrying with a full sync in %.1f s", exc, delay,
                exc_info=not isinstance(exc, LBCoreError),
            )
            self.runner.retry_after(delay)

    def sync_once(self, *, dry_run: bool = False) -> SyncOutcome:
        """``lbcore sync``: read (errors raise), plan, and unless ``dry_run`` set up
        the driver and sync everything (full)."""
        objects = self.source.read()
        self.tracker.update(objects)
        if dry_run:
            return SyncOutcome(self.plan(objects), None, True)
        self.driver.setup()
        outcome = self.sync(full=True)
        assert outcome is not None  # the tracker holds the snapshot just read
        return outcome

    def healthy(self) -> bool:
        return self.metrics.healthy(self.clock.wall(), self.config.runner.health_timeout)

    # -------------------------------------------------------------------- running

    def run(self, stop: threading.Event, *, handle_signals: bool | None = None) -> None:
        """``lbcore run``: sync, then follow the source until ``stop`` (or a signal).

        Signals are handled only on the main thread (``handle_signals=None``). The
        handlers only append the signal number to a deque (atomic, takes no lock);
        this thread acts on it within ``SIGNAL_POLL`` seconds. Syncing and watching
        run in their own threads. The datapath is left in place on exit.
        """
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        self.driver.setup()
        # No read here: the source's watch calls back as soon as it is watching, and
        # that first read queues the initial (full) sync, so no change can fall
        # between a read and the start of the watch.
        previous = self._install_signal_handlers() if handle_signals else {}
        threads = [
            threading.Thread(target=self.runner.loop, args=(stop,), name="lbcore-sync"),
            threading.Thread(target=self._watch, args=(stop,), name="lbcore-source"),
        ]
        try:
            for thread in threads:
                thread.start()
            while not stop.is_set():
                stop.wait(SIGNAL_POLL)
                self._handle_signals(stop)
        finally:
            stop.set()
            self.runner.wake()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.source.close()
            self.driver.close()
            LOG.info("stopped; the datapath stays in place")

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}
        for signum in (*STOP_SIGNALS, *RELOAD_SIGNALS):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self, stop: threading.Event) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in RELOAD_SIGNALS:
                LOG.info("SIGHUP: re-reading %s", self.source.describe())
                self.source.trigger()
            else:
                LOG.info("%s: stopping", signal.Signals(signum).name)
                stop.set()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.source.watch(self._on_source_change, stop)
            except Exception:
                LOG.exception("watching %s failed; restarting the watch in %.0f s",
                              self.source.describe(), WATCH_RESTART_DELAY)
                stop.wait(WATCH_RESTART_DELAY)

    def _on_source_change(self) -> None:
        if self.refresh() and (self.tracker.pending() or self._force_full):
            self.runner.run()


def _skip_order(skip: SkippedService) -> tuple[str, str]:
    return (str(skip.service), str(skip.frontend or ""))
