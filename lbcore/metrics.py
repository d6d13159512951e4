"""Agent metrics: plain counters, gauges and histograms, rendered as Prometheus text.

Names follow kube-proxy's (``kubeproxy_sync_proxy_rules_*``,
``kubeproxy_network_programming_duration_seconds``, ``kubeproxy_proxy_healthz_total``)
so dashboards and alerts written for kube-proxy read lbcore unchanged; lbcore's own
additions are ``lbcore_*``, and per-map pressure is Cilium's ``bpf_map_pressure``
(``lbcore_bpf_map_pressure{map_name}``). Timestamps are Unix seconds (``Clock.wall``),
durations monotonic seconds.

One ``Metrics`` object per agent (no global registry); the agent reports *events*
(``sync_succeeded``, ``changes_queued``...) and this module turns them into series.
What must be read at scrape time (map pressure from the kernel, a source's watch
errors) comes from *collectors*: callables registered with ``add_collector`` that
return ``Series``; they run outside the lock, so a slow one never blocks a sync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)
KUBE_PROXY = "kubeproxy"

# kube-proxy's per-mode failure counters: every failed sync of that driver counts
# (the iptables driver's sync is one iptables-restore, the nftables driver's one
# transaction). Other drivers count in lbcore_sync_failures_total only.
DRIVER_FAILURE_COUNTERS = {
    "iptables": (f"{KUBE_PROXY}_sync_proxy_rules_iptables_restore_failures_total",
                 "Cumulative proxy iptables restore failures"),
    "nftables": (f"{KUBE_PROXY}_sync_proxy_rules_nftables_sync_failures_total",
                 "Cumulative proxy nftables sync failures"),
}


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


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Series:
    """One metric family from a collector: name, type, help, (labels, value) samples."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: tuple[tuple[Labels, float], ...]


Collector = Callable[[], Iterable[Series]]


class Metrics:
    """What the agent did, for ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sync_duration = Histogram(SYNC_BUCKETS)
        self.full_sync_duration = Histogram(SYNC_BUCKETS)
        self.partial_sync_duration = Histogram(SYNC_BUCKETS)
        self.network_programming_duration = Histogram(PROGRAMMING_BUCKETS)
        self.driver = ""  # the driver programming the datapath now
        self.syncs_total = 0  # successful and failed
        self.full_syncs_total = 0  # successful full syncs
        self.sync_failures_total = 0
        self.driver_failures: dict[str, int] = {}  # DRIVER_FAILURE_COUNTERS name -> count
        self.setup_failures_total = 0
        self.last_sync_timestamp = 0.0  # last *successful* sync, Unix seconds
        self.last_queued_timestamp = 0.0  # last time a change asked for a sync
        self.service_changes_pending = 0
        self.service_changes_total = 0
        self.endpoint_changes_pending = 0
        self.endpoint_changes_total = 0
        self.skipped_frontends = 0
        self.frontends = 0  # frontends the datapath holds after the last sync
        self.source_errors_total = 0
        self.source_stale = False  # the last read failed: running on the last good one
        self.driver_switches_total = 0
        self.driver_switch_failures_total = 0
        self.healthz: dict[int, int] = {}  # HTTP status -> responses
        self.livez: dict[int, int] = {}
        self._collectors: list[tuple[str, Collector]] = []

    # ------------------------------------------------------------------- events

    def changes_queued(self, services: int, endpoints: int, pending: tuple[int, int],
                       wall: float) -> None:
        """A snapshot changed ``services`` services and ``endpoints`` services'
        endpoints; ``pending`` is (services, endpoints) waiting for a sync."""
        with self._lock:
            self.service_changes_total += services
            self.endpoint_changes_total += endpoints
            self.service_changes_pending, self.endpoint_changes_pending = pending
            if services or endpoints:
                self.last_queued_timestamp = wall

    def sync_queued(self, wall: float) -> None:
        """A sync was asked for without a change (start, a forced resync)."""
        with self._lock:
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
        pending: tuple[int, int] = (0, 0),
    ) -> None:
        with self._lock:
            self.syncs_total += 1
            self.full_syncs_total += int(full)
            self.sync_duration.observe(duration)
            (self.full_sync_duration if full else self.partial_sync_duration).observe(duration)
            for delay in programming_delays:
                self.network_programming_duration.observe(delay)
            self.last_sync_timestamp = wall
            self.frontends = frontends
            self.skipped_frontends = skipped
            self.service_changes_pending, self.endpoint_changes_pending = pending

    def sync_failed(self, *, duration: float, full: bool,
                    pending: tuple[int, int]) -> None:
        with self._lock:
            self.syncs_total += 1
            self.sync_failures_total += 1
            self.sync_duration.observe(duration)
            (self.full_sync_duration if full else self.partial_sync_duration).observe(duration)
            counter = DRIVER_FAILURE_COUNTERS.get(self.driver)
            if counter is not None:
                self.driver_failures[counter[0]] = self.driver_failures.get(counter[0], 0) + 1
            self.service_changes_pending, self.endpoint_changes_pending = pending

    def setup_failed(self) -> None:
        with self._lock:
            self.setup_failures_total += 1

    def source_failed(self) -> None:
        with self._lock:
            self.source_errors_total += 1
            self.source_stale = True

    def source_read(self) -> None:
        with self._lock:
            self.source_stale = False

    def driver_switched(self, driver: str, *, ok: bool) -> None:
        with self._lock:
            if ok:
                self.driver_switches_total += 1
                self.driver = driver
            else:
                self.driver_switch_failures_total += 1

    def served(self, path: str, status: int) -> None:
        """A /healthz or /livez response (kube-proxy's proxy_healthz_total{code})."""
        with self._lock:
            counts = self.healthz if path == "/healthz" else self.livez
            counts[status] = counts.get(status, 0) + 1

    # --------------------------------------------------------------- collectors

    def add_collector(self, name: str, fn: Collector) -> None:
        """``fn`` is called at every scrape; its failures are logged, never raised."""
        with self._lock:
            self._collectors.append((name, fn))

    def remove_collector(self, name: str) -> None:
        with self._lock:
            self._collectors = [(n, fn) for n, fn in self._collectors if n != name]

    def collect(self) -> list[Series]:
        with self._lock:
            collectors = list(self._collectors)
        out: list[Series] = []
        for name, fn in collectors:
            try:
                out.extend(fn())
            except Exception as exc:  # a broken collector must not break /metrics
                LOG.warning("metrics collector %s failed: %s", name, exc)
        return out


def map_pressure_series(pressure: Mapping[str, tuple[int, int]]) -> list[Series]:
    """``Driver.map_pressure()`` as Cilium's ``bpf_map_pressure`` (ratio) per map,
    with the entry counts it is computed from. Nothing for a driver without maps."""
    names = sorted(pressure)
    if not names:
        return []
    return [
        Series("lbcore_bpf_map_pressure", "gauge",
               "Fill ratio of each BPF map (entries in use / max entries), as Cilium's "
               "bpf_map_pressure",
               tuple(((("map_name", n),), used / size if size else 0.0)
                     for n, (used, size) in ((n, pressure[n]) for n in names))),
        Series("lbcore_bpf_map_entries", "gauge", "Entries in use in each BPF map",
               tuple(((("map_name", n),), float(pressure[n][0])) for n in names)),
        Series("lbcore_bpf_map_max_entries", "gauge", "Capacity of each BPF map",
               tuple(((("map_name", n),), float(pressure[n][1])) for n in names)),
    ]


def render_prometheus(metrics: Metrics) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``metrics``."""
    m = metrics
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    def scalar(name: str, kind: str, help_: str, value: float) -> None:
        family(name, kind, help_)
        out.append(f"{name} {_num(value)}")

    def labelled(name: str, kind: str, help_: str,
                 samples: Iterable[tuple[Labels, float]]) -> None:
        family(name, kind, help_)
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            out.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

    def histogram(name: str, help_: str, h: Histogram) -> None:
        family(name, "histogram", help_)
        for bound, count in zip(h.buckets, h.counts, strict=True):
            out.append(f'{name}_bucket{{le="{_num(bound)}"}} {count}')
        out.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
        out.append(f"{name}_sum {_num(h.total)}")
        out.append(f"{name}_count {h.count}")

    collected = m.collect()  # outside the lock: collectors may read the kernel
    kp = KUBE_PROXY
    with m._lock:
        histogram(f"{kp}_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
                  m.sync_duration)
        histogram(f"{kp}_sync_full_proxy_rules_duration_seconds",
                  "SyncProxyRules latency in seconds for full resyncs", m.full_sync_duration)
        histogram(f"{kp}_sync_partial_proxy_rules_duration_seconds",
                  "SyncProxyRules latency in seconds for partial resyncs",
                  m.partial_sync_duration)
        histogram(f"{kp}_network_programming_duration_seconds",
                  "In Cluster Network Programming Latency in seconds (from a change being "
                  "seen to it being programmed)", m.network_programming_duration)
        scalar(f"{kp}_sync_proxy_rules_last_timestamp_seconds", "gauge",
               "The last time proxy rules were successfully synced", m.last_sync_timestamp)
        scalar(f"{kp}_sync_proxy_rules_last_queued_timestamp_seconds", "gauge",
               "The last time a sync of proxy rules was queued", m.last_queued_timestamp)
        scalar(f"{kp}_sync_proxy_rules_service_changes_pending", "gauge",
               "Pending proxy rules Service changes", m.service_changes_pending)
        scalar(f"{kp}_sync_proxy_rules_service_changes_total", "counter",
               "Cumulative proxy rules Service changes", m.service_changes_total)
        scalar(f"{kp}_sync_proxy_rules_endpoint_changes_pending", "gauge",
               "Pending proxy rules Endpoint changes", m.endpoint_changes_pending)
        scalar(f"{kp}_sync_proxy_rules_endpoint_changes_total", "counter",
               "Cumulative proxy rules Endpoint changes", m.endpoint_changes_total)
        for driver, (name, help_) in sorted(DRIVER_FAILURE_COUNTERS.items()):
            if driver == m.driver or name in m.driver_failures:
                scalar(name, "counter", help_, m.driver_failures.get(name, 0))
        labelled(f"{kp}_proxy_healthz_total", "counter", "Cumulative proxy healthz HTTP status",
                 ((((("code", str(c)),), n) for c, n in sorted(m.healthz.items()))))
        labelled(f"{kp}_proxy_livez_total", "counter", "Cumulative proxy livez HTTP status",
                 ((((("code", str(c)),), n) for c, n in sorted(m.livez.items()))))
        labelled("lbcore_driver_info", "gauge", "The driver programming the datapath",
                 [((("driver", m.driver),), 1)] if m.driver else [])
        scalar("lbcore_syncs_total", "counter", "Datapath syncs attempted", m.syncs_total)
        scalar("lbcore_full_syncs_total", "counter", "Successful full syncs", m.full_syncs_total)
        scalar("lbcore_sync_failures_total", "counter",
               "Datapath syncs that failed (retried with backoff, then full)",
               m.sync_failures_total)
        scalar("lbcore_setup_failures_total", "counter",
               "Driver setups (load and attach) that failed and were retried",
               m.setup_failures_total)
        scalar("lbcore_source_errors_total", "counter",
               "Source reads rejected (invalid or unreadable input; previous state kept)",
               m.source_errors_total)
        scalar("lbcore_source_stale", "gauge",
               "1 while the last source read failed and the last good snapshot is in force",
               int(m.source_stale))
        scalar("lbcore_driver_switches_total", "counter", "Live driver switches completed",
               m.driver_switches_total)
        scalar("lbcore_driver_switch_failures_total", "counter",
               "Live driver switches abandoned (the previous driver kept the datapath)",
               m.driver_switch_failures_total)
        scalar("lbcore_skipped_frontends", "gauge",
               "Frontends not programmed because the core or the driver cannot serve them",
               m.skipped_frontends)
        scalar("lbcore_frontends", "gauge", "Frontends programmed by the last sync", m.frontends)
    for series in _merge(collected):
        labelled(series.name, series.kind, series.help, series.samples)
    return "\n".join(out) + "\n"


def _merge(collected: Iterable[Series]) -> list[Series]:
    """One family per name (collectors may return the same name more than once)."""
    merged: dict[str, Series] = {}
    for s in collected:
        old = merged.get(s.name)
        merged[s.name] = s if old is None else Series(s.name, s.kind, s.help,
                                                      old.samples + s.samples)
    return list(merged.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
