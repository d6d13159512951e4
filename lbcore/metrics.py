"""Agent metrics: plain counters, gauges and histograms, rendered as Prometheus text.

Names follow kube-proxy's (``kubeproxy_sync_proxy_rules_*``,
``kubeproxy_network_programming_duration_seconds``) so dashboards and alerts written
for kube-proxy read lbcore unchanged; lbcore's own additions are ``lbcore_*``.
Timestamps are Unix seconds (``Clock.wall``), durations monotonic seconds.

One ``Metrics`` object per agent (no global registry); the agent reports *events*
(``sync_succeeded``, ``changes_queued``...) and this module turns them into series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KUBE_PROXY = "kubeproxy"


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    return tuple(start * factor**i for i in range(count))


# kube-proxy: SyncProxyRulesLatency uses ExponentialBuckets(0.001, 2, 15);
# NetworkProgrammingLatency merges linear buckets from 0.25 s up to 5 min.
SYNC_BUCKETS = exponential_buckets(0.001, 2, 15)
PROGRAMMING_BUCKETS = (
    0.25, 0.5,
    *(float(s) for s in range(1, 16)),  # 1..15 s by 1
    *(float(s) for s in range(20, 61, 5)),  # 20..60 s by 5
    *(float(s) for s in range(90, 301, 30)),  # 90..300 s by 30
)


@dataclass
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)  # cumulative per bucket
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """What the agent did, for ``/metrics`` and for ``healthy()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sync_duration = Histogram(SYNC_BUCKETS)
        self.network_programming_duration = Histogram(PROGRAMMING_BUCKETS)
        self.syncs_total = 0  # successful and failed
        self.full_syncs_total = 0  # successful full syncs
        self.sync_failures_total = 0
        self.last_sync_timestamp = 0.0  # last *successful* sync, Unix seconds
        self.last_queued_timestamp = 0.0  # last time a change asked for a sync
        self.service_changes_pending = 0
        self.service_changes_total = 0
        self.skipped_frontends = 0
        self.frontends = 0  # frontends the datapath holds after the last sync
        self.source_errors_total = 0

    # ------------------------------------------------------------------- events

    def changes_queued(self, new: int, pending: int, wall: float) -> None:
        with self._lock:
            self.service_changes_total += new
            self.service_changes_pending = pending
            if new:
                self.last_queued_timestamp = wall

    def sync_succeeded(
        self,
        *,
        duration: float,
        wall: float,
        full: bool,
        frontends: int,
        skipped: int,
        programming_delays: Iterable[float] = (),
        pending: int = 0,
    ) -> None:
        with self._lock:
            self.syncs_total += 1
            self.full_syncs_total += int(full)
            self.sync_duration.observe(duration)
            for delay in programming_delays:
                self.network_programming_duration.observe(delay)
            self.last_sync_timestamp = wall
            self.frontends = frontends
            self.skipped_frontends = skipped
            self.service_changes_pending = pending

    def sync_failed(self, *, duration: float, pending: int) -> None:
        with self._lock:
            self.syncs_total += 1
            self.sync_failures_total += 1
            self.sync_duration.observe(duration)
            self.service_changes_pending = pending

    def source_failed(self) -> None:
        with self._lock:
            self.source_errors_total += 1

    # ------------------------------------------------------------------ queries

    def healthy(self, wall: float, timeout: float) -> bool:
        """kube-proxy's healthz rule: unhealthy when a queued update waits > timeout."""
        with self._lock:
            queued, synced = self.last_queued_timestamp, self.last_sync_timestamp
        if queued <= synced:
            return True
        return wall - queued <= timeout


def render_prometheus(metrics: Metrics) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``metrics``."""
    m = metrics
    out: list[str] = []

    def scalar(name: str, kind: str, help_: str, value: float) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {_num(value)}")

    def histogram(name: str, help_: str, h: Histogram) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} histogram")
        for bound, count in zip(h.buckets, h.counts, strict=True):
            out.append(f'{name}_bucket{{le="{_num(bound)}"}} {count}')
        out.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
        out.append(f"{name}_sum {_num(h.total)}")
        out.append(f"{name}_count {h.count}")

    with m._lock:
        histogram(
            f"{KUBE_PROXY}_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration,
        )
        histogram(
            f"{KUBE_PROXY}_network_programming_duration_seconds",
            "Seconds from a service or endpoint change being seen to it being programmed",
            m.network_programming_duration,
        )
        scalar(
            f"{KUBE_PROXY}_sync_proxy_rules_last_timestamp_seconds",
            "gauge",
            "The last time the datapath was successfully synced",
            m.last_sync_timestamp,
        )
        scalar(
            f"{KUBE_PROXY}_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
            "The last time a sync of the datapath was queued",
            m.last_queued_timestamp,
        )
        scalar(
            f"{KUBE_PROXY}_sync_proxy_rules_service_changes_pending",
            "gauge",
            "Pending service changes",
            m.service_changes_pending,
        )
        scalar(
            f"{KUBE_PROXY}_sync_proxy_rules_service_changes_total",
            "counter",
            "Cumulative service changes",
            m.service_changes_total,
        )
        scalar("lbcore_syncs_total", "counter", "Datapath syncs attempted", m.syncs_total)
        scalar("lbcore_full_syncs_total", "counter", "Successful full syncs", m.full_syncs_total)
        scalar(
            "lbcore_sync_failures_total", "counter", "Datapath syncs that failed",
            m.sync_failures_total,
        )
        scalar(
            "lbcore_source_errors_total", "counter",
            "Source reads rejected (invalid or unreadable input; previous state kept)",
            m.source_errors_total,
        )
        scalar(
            "lbcore_skipped_frontends", "gauge",
            "Frontends not programmed because the core or the driver cannot serve them",
            m.skipped_frontends,
        )
        scalar("lbcore_frontends", "gauge", "Frontends programmed by the last sync", m.frontends)
    return "\n".join(out) + "\n"


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
