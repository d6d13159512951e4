"""The ``kubernetes`` source: follow the API server, as kube-proxy does.

Options (``source:`` in ``lbcore.yaml``)::

    kind: kubernetes
    kubeconfig: /etc/kubernetes/admin.conf  # optional; default: in-cluster, else ~/.kube/config
    context: kind-lbcore                    # optional kubeconfig context
    node_port_range: [30000, 32767]         # the apiserver's --service-node-port-range
    resync_period: 900                      # seconds between full relists (0: never)
    watch_timeout: 300                      # seconds; each watch lasts 1-2x this
    page_size: 500                          # objects per list page
    report_events: true                     # skipped objects get a Warning Event
    backoff: [0.8, 30]                      # retry delay: first, maximum (seconds)

Three reflectors (``kube_reflector``) list and watch Services, EndpointSlices
(discovery.k8s.io/v1) and Nodes into one ``ObjectStore``; every change wakes ``watch``,
which calls the agent back; the agent re-reads (``read``: a snapshot that shares
unchanged objects with the previous one, so the tracker's diff costs what changed) and
asks its bounded-frequency runner for a sync. However many events arrive while a
snapshot is being taken, they cost one more callback, and the runner's
``min_sync_period`` coalesces the syncs.

Like kube-proxy, Services and EndpointSlices are selected on the server by label:
``!service.kubernetes.io/headless`` and either ``!service.kubernetes.io/service-proxy-name``
or, with ``service_proxy_name: NAME`` in ``lbcore.yaml``,
``service.kubernetes.io/service-proxy-name=NAME``. (The core applies the same rules again,
``lbcore.expand.skip_reason``, for sources that cannot select.) All Nodes are watched:
NodePort frontends open on every node address.

The API calls are exactly those of ``system:node-proxier``: list and watch of services,
endpointslices and nodes, and create of events (``report_events``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, LBCoreError, SourceError
from ..expand import HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL
from ..model import ClusterObjects
from .base import Source
from .file import _node_port_range
from .kube_client import ENDPOINTSLICES, NODES, RESOURCES, SERVICES, ApiError, KubeAPI, connect
from .kube_events import EventReporter
from .kube_reflector import Reflector
from .kube_store import ObjectStore

LOG = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CHECK_INTERVAL = 0.5  # seconds: how often stop and trigger() are checked
_UNSET: Any = object()


def label_selector(service_proxy_name: str | None) -> str:
    """kube-proxy's informer selector for Services (and their EndpointSlices)."""
    proxy = (f"{SERVICE_PROXY_NAME_LABEL}={service_proxy_name}" if service_proxy_name
             else f"!{SERVICE_PROXY_NAME_LABEL}")
    return f"{proxy},!{HEADLESS_LABEL}"


class KubernetesSource(Source):
    kind = "kubernetes"
    known_options: ClassVar[frozenset[str]] = frozenset({
        "kubeconfig", "context", "node_port_range", "resync_period", "watch_timeout",
        "page_size", "report_events", "backoff",
    })

    def __init__(
        self,
        options: Mapping[str, Any],
        config_path: str | Path | None,
        *,
        api: KubeAPI | None = None,
        service_proxy_name: str | None = _UNSET,
        node_name: str | None = None,
    ) -> None:
        super().__init__(options, config_path)
        opts = self.options
        self.kubeconfig = self._path_option("kubeconfig")
        self.context = _string(opts, "context")
        self.node_port_range = _node_port_range(opts.get("node_port_range"))
        self.resync_period = _seconds(opts, "resync_period", 900.0)
        self.watch_timeout = _seconds(opts, "watch_timeout", 300.0, minimum=1.0)
        page_size = opts.get("page_size", 500)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(f"source.page_size: {page_size!r} (valid: an integer >= 1)")
        self.page_size = page_size
        report_events = opts.get("report_events", True)
        if not isinstance(report_events, bool):
            raise ConfigError(f"source.report_events: {report_events!r} (valid: true or false)")
        self.backoff = _backoff(opts.get("backoff", [0.8, 30.0]))

        config_spn, config_node = self._from_config()
        self.service_proxy_name = (config_spn if service_proxy_name is _UNSET
                                   else service_proxy_name)
        self.node_name = node_name or config_node
        self.api = api or KubeAPI(connect(self.kubeconfig, self.context))
        self.events = EventReporter(self.api, self.node_name) if report_events else None
        self.store = ObjectStore(node_port_range=self.node_port_range,
                                 report=self.events.report if self.events else None)
        self._wake = threading.Event()
        selector = label_selector(self.service_proxy_name)
        self.reflectors = [self._reflector(SERVICES, selector),
                           self._reflector(ENDPOINTSLICES, f"{selector},{SERVICE_NAME_LABEL}"),
                           self._reflector(NODES, None)]
        assert [r.resource for r in self.reflectors] == list(RESOURCES)

    def _reflector(self, resource: Any, selector: str | None) -> Reflector:
        return Reflector(self.api, resource, self.store, self._wake.set,
                         on_recovered=self._recovered, label_selector=selector,
                         page_size=self.page_size,
                         watch_timeout=self.watch_timeout, resync_period=self.resync_period,
                         backoff_initial=self.backoff[0], backoff_max=self.backoff[1])

    def _path_option(self, name: str) -> str | None:
        raw = _string(self.options, name)
        if raw is None:
            return None
        path = Path(raw).expanduser()
        if not path.is_absolute() and self.config_path is not None:
            path = self.config_path.parent / path
        return str(path)

    def _from_config(self) -> tuple[str | None, str]:
        """service_proxy_name and node.name of the lbcore.yaml this source is part of."""
        from ..config import load_config, parse_config

        path = self.config_path
        try:
            config = (load_config(path) if path is not None and path.is_file()
                      else parse_config({"driver": "-"}, Path("lbcore.yaml")))
        except LBCoreError:  # the caller loaded that file already; be lenient here
            config = parse_config({"driver": "-"}, Path("lbcore.yaml"))
        return config.service_proxy_name, config.node.name

    # ------------------------------------------------------------------ Source

    def describe(self) -> str:
        spn = f", service-proxy-name {self.service_proxy_name}" if self.service_proxy_name else ""
        return f"kubernetes {self.api.host} (services, endpointslices, nodes{spn})"

    def read(self) -> ClusterObjects:
        """The objects now. Before the watch has listed everything, list now."""
        for reflector in self.reflectors:
            if not reflector.synced.is_set():
                try:
                    reflector.list()
                except ApiError as exc:
                    raise SourceError(f"kubernetes {self.api.host}: {exc}") from None
        return self.store.snapshot()

    def trigger(self) -> None:
        super().trigger()
        self._wake.set()

    def _recovered(self) -> None:
        # Events may have been lost while the watch was down (a relist repairs the
        # objects); a full sync repairs anything the datapath made of them.
        self.request_full_sync()
        self._wake.set()

    def error_counts(self) -> dict[str, int]:
        return {r.resource.plural: r.errors for r in self.reflectors}

    def watch(self, callback: Callable[[], None], stop: threading.Event) -> None:
        halt = threading.Event()  # ends the reflectors when this call returns
        threads = [threading.Thread(target=r.run, args=(halt,), daemon=True,
                                    name=f"lbcore-kube-{r.resource.plural}")
                   for r in self.reflectors]
        for thread in threads:
            thread.start()
        try:
            if not self._wait_synced(stop):
                return
            LOG.info("kubernetes: watching %s", ", ".join(r.describe() for r in self.reflectors))
            self._wake.clear()
            callback()  # watching from here on: read once
            while not stop.is_set():
                self._wake.wait(CHECK_INTERVAL)
                if stop.is_set():
                    break
                if self._wake.is_set() or self.take_trigger():
                    self._wake.clear()  # before reading: later events wake us again
                    self.take_trigger()
                    callback()
        finally:
            halt.set()
            for reflector in self.reflectors:
                reflector.interrupt()
            for thread in threads:
                thread.join(timeout=10)

    def _wait_synced(self, stop: threading.Event) -> bool:
        waiting = [r for r in self.reflectors if not r.synced.is_set()]
        while waiting and not stop.is_set():
            waiting[0].synced.wait(CHECK_INTERVAL)
            waiting = [r for r in waiting if not r.synced.is_set()]
        return not stop.is_set()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        self.api.api_client.close()


# ---------------------------------------------------------------------- options


def _string(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"source.{name}: {value!r} (valid: a non-empty string)")
    return value


def _seconds(options: Mapping[str, Any], name: str, default: float,
             minimum: float = 0.0) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"source.{name}: {value!r} (valid: a number of seconds >= {minimum:g})")
    return float(value)


def _backoff(raw: Any) -> tuple[float, float]:
    valid = "[first, maximum] retry delays in seconds, 0 < first <= maximum"
    if (not isinstance(raw, list | tuple) or len(raw) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
            or not 0 < raw[0] <= raw[1]):
        raise ConfigError(f"source.backoff: {raw!r} (valid: {valid})")
    return float(raw[0]), float(raw[1])
