"""The agent: source -> change tracker -> expand -> capability filter -> driver.

One ``Agent`` per process. ``sync_once`` is ``lbcore sync``; ``run`` is ``lbcore run``:

* a source thread watches; it calls back once at start and on every change: the
  snapshot is re-read, the tracker records which services changed, and the runner is
  asked for a sync (coalesced, at most every ``runner.min_sync_period``);
* the first run of the sync thread sets the driver up (``driver.setup()``, adopting
  what an earlier run left); a setup that fails (a program that does not load, a
  cgroup not there yet) is retried with the same backoff as a failed sync, while the
  datapath stays exactly as the previous agent left it;
* each sync hands the driver the *full* ``DesiredState`` plus the changed keys — or
  ``None`` (full sync) for the first sync, after any failure (of a sync, of a source
  read, of a source's watch), and at least every ``runner.sync_period``; a failed
  sync is retried with capped exponential backoff (changes that arrive meanwhile wait
  for the retry), and the datapath keeps what the last good sync programmed;
* a snapshot that fails to read or validate (a file that vanished, an invalid edit,
  an unreachable API server) is logged, counted (``lbcore_source_errors_total``,
  ``lbcore_source_stale``) and ignored: the previous one stays in force and the
  driver is not called with partial data. Until a first valid snapshot exists the
  datapath is left exactly as found;
* ``lbcore.yaml`` is watched: a new ``driver:`` switches the datapath live
  (:mod:`lbcore.switch`);
* SIGTERM/SIGINT stop the agent and leave the datapath in place; SIGHUP re-reads
  the source (``Source.trigger``) and ``lbcore.yaml``.

Health is kube-proxy's (:class:`lbcore.health.ProxyHealth`): updated at start and
after each successful sync, unhealthy when a change waits longer than
``runner.health_timeout``.

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

from . import switch
from .clock import Clock, SystemClock
from .config import Config
from .driver import Capabilities, SyncResult
from .errors import ConfigError, LBCoreError, SourceError, ValidationError
from .expand import IncrementalExpander
from .health import HealthStatus, ProxyHealth
from .memory import freeze_survivors, gc_paused, release_free_memory
from .metrics import Metrics, Series, map_pressure_series
from .model import ClusterObjects, DesiredState, ServiceKey, SkippedService
from .planning import ExpandFn, apply_capabilities, default_expand, expander_for
from .plugins import GuardedDriver
from .runner import Backoff, BoundedFrequencyRunner
from .sources.base import Source
from .tracker import ChangeTracker

LOG = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)
SIGNAL_POLL = 0.2  # seconds: how soon a signal is acted on
WATCH_RESTART_DELAY = 5.0  # seconds before a crashed source watch is restarted

DriverFactory = Callable[[Config], GuardedDriver]


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
        driver_factory: DriverFactory | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.source = source
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.metrics.driver = driver.name
        self.tracker = ChangeTracker(self.clock)
        self.health = ProxyHealth(self.clock, config.runner.health_timeout)
        self._expand = expand
        self._log_skips = log_skips  # False when the caller prints state.skipped itself
        self._driver_factory = driver_factory  # how a live switch builds the new driver
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
        self._set_up = False
        self._retry_at: float | None = None  # after a failed setup: none before this
        self._fatal: LBCoreError | None = None
        self._source_failing = False
        self._reported_skips: frozenset[SkippedService] = frozenset()
        self._signals: deque[int] = deque()
        self._config_watch: switch.ConfigWatch | None = None
        self._next_config_check = 0.0
        self.metrics.add_collector("map-pressure", self._map_pressure_series)
        self.metrics.add_collector("source", self._source_series)

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
        """Re-read the source into the tracker. False (and logged) if it was invalid.

        A failed read never reaches the tracker: a file that vanished is not "no
        services". The first good read after failures forces a full sync.
        """
        try:
            objects = self.source.read()
        except (ValidationError, SourceError) as exc:
            self.metrics.source_failed()
            self._source_failing = True
            held = self.tracker.objects
            if held is None:
                LOG.error("%s", exc)
                LOG.warning("no valid snapshot yet: the datapath stays as it is until %s "
                            "is fixed", self.source.describe())
            else:
                LOG.error("keeping the previous state; %s\n  (the %d service(s) of the last "
                          "good read stay programmed)", exc, len(held.services))
            return False
        if self._source_failing:
            LOG.info("%s is readable again; the next sync is full", self.source.describe())
            self._source_failing = False
            self._force_full = True
        self.metrics.source_read()
        touched = self.tracker.update(objects)
        services, endpoints = self.tracker.last_kinds
        self.metrics.changes_queued(services, endpoints, self.tracker.pending_kinds(),
                                    self.clock.wall())
        oldest = self.tracker.oldest_pending()
        if oldest is not None:
            self.health.queued_update(oldest)
        self._check_node(objects)
        if touched:
            LOG.info("%d service(s) changed, %d pending sync", len(touched),
                     len(self.tracker.pending()))
        return True

    def _check_node(self, objects: ClusterObjects) -> None:
        node = objects.nodes.get(self.config.node.name)
        self.health.set_node_eligible(node is None or not node.deleting)

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
                self.metrics.sync_failed(duration=self.clock.now() - start, full=full,
                                         pending=self.tracker.pending_kinds())
                raise
            end = self.clock.now()
            self._force_full = False
            if full:
                self._last_full = start
                freeze_survivors()  # the state just built lives until the next full sync
                release_free_memory()
            self._backoff.reset()
            self._retry_at = None
            self.health.updated(self.tracker.oldest_pending())
            self.metrics.sync_succeeded(
                duration=end - start,
                wall=self.clock.wall(),
                full=full,
                frontends=result.frontends,
                skipped=len(state.skipped),
                programming_delays=[end - t for t in checkpoint.queued_at.values()],
                pending=self.tracker.pending_kinds(),
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
        if self._fatal is not None:
            return  # the agent is stopping
        now = self.clock.now()
        if not self._set_up and self._retry_at is not None and now < self._retry_at:
            # A setup (a compile) backing off: a source change cannot fix it, so it
            # waits for the retry (the request consumed the runner's schedule: renew
            # it). A failed *sync* is retried at once on a change, as kube-proxy
            # does: the change may be what fixes it (fewer services for a full map).
            self.runner.retry_after(self._retry_at - now)
            return
        try:
            if not self._set_up:
                self._setup()
            self.sync()
        except ConfigError as exc:
            # Options the driver refuses at setup (a pinned map of another size): no
            # retry can fix that; stop with the message, the datapath left as it is.
            self._fatal = exc
        except Exception as exc:
            delay = self._backoff.next()
            self._retry_at = self.clock.now() + delay
            what = "sync" if self._set_up else "driver setup"
            LOG.error(
                "%s failed: %s; retrying with a full sync in %.1f s", what, exc, delay,
                exc_info=not isinstance(exc, LBCoreError),
            )
            self.runner.retry_after(delay)

    def _setup(self) -> None:
        with self._sync_lock:  # not while a live switch replaces the driver
            try:
                self.driver.setup()
            except ConfigError:
                raise
            except Exception:
                self.metrics.setup_failed()
                raise
            self._set_up = True

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
        return self.health.status().healthy

    def health_status(self) -> HealthStatus:
        return self.health.status()

    # --------------------------------------------------------------- live switch

    def switch_driver(self, config: Config) -> bool:
        """Move the datapath to ``config.driver`` (:func:`lbcore.switch.bring_up`, then
        the old one's cleanup). False if the new one could not be brought up and
        verified: it is removed again and the old one keeps serving."""
        if self._driver_factory is None:
            raise ConfigError("this agent cannot switch drivers (no driver factory)")
        with self._sync_lock:
            old, checkpoint = self.driver, self.tracker.checkpoint()
            start = self.clock.now()
            LOG.info("switching the datapath from %s to %s", old.name, config.driver)
            try:
                up = switch.bring_up(config, self._driver_factory, checkpoint.objects,
                                     self.capabilities, old.name)
            except Exception as exc:
                self.tracker.requeue(checkpoint)
                self.metrics.driver_switched(config.driver, ok=False)
                LOG.error("switch to driver %s abandoned, %s keeps the datapath: %s",
                          config.driver, old.name, exc, exc_info=not isinstance(exc, LBCoreError))
                return False
            # Only now: the new datapath holds the plan, read back.
            switch.take_down(old, self.capabilities, self.config, up)
            self.driver, self.config = up.driver, config
            self._capabilities, self._expander = up.capabilities, up.expander
            self._set_up, self._force_full, self._last_full = True, False, start
            self._backoff.reset()
            self._retry_at = None
            self._report_skips(up.state)
            self.health.updated(self.tracker.oldest_pending())
            self.metrics.driver_switched(up.driver.name, ok=True)
            LOG.info("switched the datapath from %s to %s: %d frontend(s) (%.3f s)",
                     old.name, up.driver.name, len(up.state.frontends), self.clock.now() - start)
            return True

    def check_config(self, *, force: bool = False) -> None:
        """Apply a changed ``lbcore.yaml`` (:class:`lbcore.switch.ConfigWatch`)."""
        if self._config_watch is not None:
            self._config_watch.check(self, force=force)

    # ---------------------------------------------------------------- collectors

    def _map_pressure_series(self) -> list[Series]:
        return map_pressure_series(self.driver.map_pressure()) if self._set_up else []

    def _source_series(self) -> list[Series]:
        counts = self.source.error_counts()
        if not counts:
            return []
        return [Series("lbcore_source_watch_errors_total", "counter",
                       "Watch or list failures of the source, each retried with backoff",
                       tuple(((("resource", k),), float(v)) for k, v in sorted(counts.items())))]

    # -------------------------------------------------------------------- running

    def run(self, stop: threading.Event, *, handle_signals: bool | None = None) -> None:
        """``lbcore run``: set up, sync, then follow the source until ``stop`` (or a
        signal).

        Signals are handled only on the main thread (``handle_signals=None``). The
        handlers only append the signal number to a deque (atomic, takes no lock);
        this thread acts on it within ``SIGNAL_POLL`` seconds, and checks
        ``lbcore.yaml`` for a driver switch. Setup, syncing and watching run in their
        own threads. The datapath is left in place on exit. Raises the ``ConfigError``
        a driver's setup refused its options with.
        """
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        self.health.updated()  # kube-proxy: healthy while starting up
        self.metrics.sync_queued(self.clock.wall())
        if self._driver_factory is not None:
            self._config_watch = switch.ConfigWatch(self.config.path, self.clock)
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
                if self._fatal is not None:
                    stop.set()
                elif self.clock.now() >= self._next_config_check:
                    self._next_config_check = self.clock.now() + switch.CONFIG_CHECK_INTERVAL
                    self.check_config()
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
        if self._fatal is not None:
            raise self._fatal

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
                LOG.info("SIGHUP: re-reading %s and %s", self.source.describe(),
                         self.config.path)
                self.source.trigger()
                self.check_config()
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
                self._force_full = True
                stop.wait(WATCH_RESTART_DELAY)

    def _on_source_change(self) -> None:
        if self.source.take_full_sync_request():
            LOG.info("%s recovered from a failure; the next sync is full",
                     self.source.describe())
            self._force_full = True
        if self.refresh() and (self.tracker.pending() or self._force_full):
            self.runner.run()


def _skip_order(skip: SkippedService) -> tuple[str, str]:
    return (str(skip.service), str(skip.frontend or ""))
