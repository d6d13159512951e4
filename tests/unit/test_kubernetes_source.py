"""The ``kubernetes`` source against the in-process API server test double
(``lbcore.sources.kube_fake``): real HTTP, the official client, real API JSON.

Every test ends by checking the verbs the source used (``verbs`` fixture): only list
and watch of services, endpointslices and nodes, and create of events — the
``system:node-proxier`` ClusterRole.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml

from lbcore.clock import SystemClock
from lbcore.config import Config, RunnerConfig
from lbcore.errors import ConfigError, SourceError
from lbcore.loop import Agent
from lbcore.model import NodeInfo, ServiceKey
from lbcore.plugins import GuardedDriver
from lbcore.sources.kube_client import ApiError, connect
from lbcore.sources.kube_fake import FakeAPIServer
from lbcore.sources.kube_objects import node_object, service_object, slice_object
from lbcore.sources.kube_reflector import Reflector
from lbcore.sources.kube_store import ObjectStore
from lbcore.sources.kubernetes import KubernetesSource, label_selector
from lbcore.testing import FakeDriver

NODE_PROXIER = {
    ("list", "services"), ("watch", "services"),
    ("list", "endpointslices"), ("watch", "endpointslices"),
    ("list", "nodes"), ("watch", "nodes"),
    ("create", "events"),
}
WEB = ServiceKey("default", "web")
DNS = ServiceKey("kube-system", "dns")


def web(*addresses: str, suffix: str = "abcde"):
    svc = service_object("web", "10.96.0.10", [{"name": "http", "port": 80}])
    return svc, slice_object(svc, list(addresses), suffix=suffix)


def dns(*addresses: str):
    svc = service_object("dns", "10.96.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"}],
                         namespace="kube-system")
    return svc, slice_object(svc, list(addresses))


def backends(objects, key=WEB):
    return sorted(a for s in objects.slices.get(key, ()) for e in s.endpoints
                  for a in e.addresses)


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def api():
    with FakeAPIServer() as server:
        yield server
        verbs = {(r.verb, r.resource) for r in server.requests}
        assert verbs <= NODE_PROXIER, f"calls outside system:node-proxier: {verbs - NODE_PROXIER}"


def write_kubeconfig(path: Path, servers: dict[str, str], current: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "lbcore", "user": {"token": "t0ken"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "lbcore"}} for n in servers],
        "current-context": current,
    }))
    return path


@pytest.fixture
def kubeconfig(tmp_path, api):
    return write_kubeconfig(tmp_path / "kubeconfig", {"test": api.url}, "test")


@pytest.fixture
def make_source(kubeconfig):
    made = []

    def make(**options):
        spn = options.pop("service_proxy_name", None)
        src = KubernetesSource({"kubeconfig": str(kubeconfig), "backoff": [0.02, 0.1],
                                **options}, None, service_proxy_name=spn, node_name="node-a")
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


class Watching:
    """``source.watch`` in a thread; every callback reads a snapshot into ``snapshots``."""

    def __init__(self, source):
        self.source = source
        self.snapshots = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.watch, args=(self._callback, self.stop))

    def _callback(self):
        self.snapshots.append(self.source.read())

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.snapshots, what="the first callback")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        started = time.monotonic()
        self.thread.join(10)
        assert not self.thread.is_alive(), "watch did not stop"
        assert time.monotonic() - started < 3, "watch took too long to stop"

    @property
    def last(self):
        return self.source.read()

    def until(self, predicate, what="change"):
        wait_until(lambda: predicate(self.source.read()), what=what)


# ------------------------------------------------------------------------ list


def test_initial_list_is_paged_and_complete(api, make_source):
    for i in range(5):
        svc = service_object(f"s{i}", f"10.96.1.{i + 1}", [{"name": "http", "port": 80}])
        api.apply(svc)
        api.apply(slice_object(svc, [f"10.0.2.{i + 1}"]))
    api.apply(node_object("node-a", "172.18.0.2"))
    objects = make_source(page_size=2).read()
    assert sorted(k.name for k in objects.services) == ["s0", "s1", "s2", "s3", "s4"]
    assert sum(len(s) for s in objects.slices.values()) == 5
    assert list(objects.nodes) == ["node-a"]
    service_lists = [r for r in api.requests if r.verb == "list" and r.resource == "services"]
    assert len(service_lists) == 3  # 2 + 2 + 1
    assert "continue" not in service_lists[0].query
    assert all("continue" in r.query for r in service_lists[1:])


def test_expired_continue_token_restarts_the_list(api, make_source):
    for i in range(3):
        api.apply(service_object(f"s{i}", f"10.96.1.{i + 1}", [{"name": "http", "port": 80}]))
    source = make_source(page_size=1)
    real_list = source.api.list
    calls = []

    def list_expiring_once(resource, **kw):
        calls.append(kw.get("continue_token"))
        if len(calls) == 2:
            api.expire_continue_tokens()
        return real_list(resource, **kw)

    source.api.list = list_expiring_once
    source.reflectors[0].list()
    assert len(source.store.snapshot().services) == 3
    assert calls[0] is None and calls[2] is None  # restarted from the beginning after 410


def test_unreachable_api_server_is_a_source_error(tmp_path):
    config = write_kubeconfig(tmp_path / "kc", {"dead": "http://127.0.0.1:9"}, "dead")
    source = KubernetesSource({"kubeconfig": str(config)}, None, service_proxy_name=None)
    with pytest.raises(SourceError, match=r"kubernetes http://127\.0\.0\.1:9: list services"):
        source.read()


def test_kubeconfig_context_is_honoured(tmp_path, api):
    config = write_kubeconfig(tmp_path / "kc", {"dead": "http://127.0.0.1:9", "live": api.url},
                              "dead")
    api.apply(web("10.0.1.1")[0])
    source = KubernetesSource({"kubeconfig": "kc", "context": "live"}, tmp_path / "lbcore.yaml",
                              service_proxy_name=None)
    assert source.kubeconfig == str(config)  # relative to lbcore.yaml
    assert list(source.read().services) == [WEB]


def test_in_cluster_config(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = connect(environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert client.configuration.host == "https://10.96.0.1:443"
    assert client.configuration.api_key["BearerToken"].endswith("sa-token")
    assert client.configuration.refresh_api_key_hook is not None  # rotated tokens re-read
    assert client.configuration.ssl_ca_cert == str(ca)


def test_options_are_validated(kubeconfig):
    for bad, match in (({"page_size": 0}, "page_size"), ({"backoff": [5, 1]}, "backoff"),
                       ({"watch_timeout": "x"}, "watch_timeout"), ({"namespace": "x"}, "unknown"),
                       ({"report_events": "yes"}, "report_events")):
        with pytest.raises(ConfigError, match=match):
            KubernetesSource({"kubeconfig": str(kubeconfig), **bad}, None)


def test_service_proxy_name_and_config_file(tmp_path, kubeconfig, api, monkeypatch):
    monkeypatch.setenv("NODE_NAME", "node-from-env")
    (tmp_path / "lbcore.yaml").write_text(yaml.safe_dump({
        "driver": "socklb", "service_proxy_name": "lbcore",
        "source": {"kind": "kubernetes", "kubeconfig": str(kubeconfig)}}))
    ours = service_object("ours", "10.96.0.20", [{"name": "http", "port": 80}],
                          labels={"service.kubernetes.io/service-proxy-name": "lbcore"})
    api.apply(ours)
    api.apply(service_object("theirs", "10.96.0.21", [{"name": "http", "port": 80}],
                             labels={"service.kubernetes.io/service-proxy-name": "cilium"}))
    api.apply(web()[0])  # unlabelled: kube-proxy's, not ours
    source = KubernetesSource({"kubeconfig": str(kubeconfig)}, tmp_path / "lbcore.yaml")
    assert (source.service_proxy_name, source.node_name) == ("lbcore", "node-from-env")
    assert [k.name for k in source.read().services] == ["ours"]
    selectors = {r.query.get("labelSelector") for r in api.requests if r.resource == "services"}
    assert selectors == {"service.kubernetes.io/service-proxy-name=lbcore,"
                         "!service.kubernetes.io/headless"}
    assert label_selector(None) == ("!service.kubernetes.io/service-proxy-name,"
                                    "!service.kubernetes.io/headless")


# ----------------------------------------------------------------------- watch


def test_add_update_delete_of_each_kind(api, make_source):
    svc, eps = web("10.0.1.1")
    with Watching(make_source()) as w:
        assert w.last.services == {}
        api.apply(svc)
        w.until(lambda o: WEB in o.services, "service added")
        api.apply(eps)
        w.until(lambda o: backends(o) == ["10.0.1.1"], "slice added")
        api.apply(node_object("node-b", "172.18.0.3"))
        w.until(lambda o: "node-b" in o.nodes, "node added")

        svc["spec"]["ports"][0]["port"] = 8080
        api.apply(svc)
        w.until(lambda o: WEB in o.services and o.services[WEB].ports[0].port == 8080,
                "service updated")
        api.apply(web("10.0.1.1", "10.0.1.2")[1])
        w.until(lambda o: backends(o) == ["10.0.1.1", "10.0.1.2"], "slice updated")
        api.apply(node_object("node-b", "172.18.0.4"))
        w.until(lambda o: "node-b" in o.nodes and o.nodes["node-b"].addresses == ("172.18.0.4",),
                "node updated")

        api.delete("EndpointSlice", eps["metadata"]["name"], "default")
        w.until(lambda o: WEB not in o.slices, "slice deleted")
        api.delete("Service", "web", "default")
        w.until(lambda o: WEB not in o.services, "service deleted")
        api.delete("Node", "node-b")
        w.until(lambda o: "node-b" not in o.nodes, "node deleted")
    watches = [r for r in api.requests if r.verb == "watch"]
    assert {r.resource for r in watches} == {"services", "endpointslices", "nodes"}
    assert all(r.query["allowWatchBookmarks"] == "true" for r in watches)


def test_unchanged_objects_keep_their_identity(api, make_source):
    from lbcore.tracker import ChangeTracker

    for svc, eps in (web("10.0.1.1"), dns("10.0.3.1")):
        api.apply(svc)
        api.apply(eps)
    with Watching(make_source()) as w:
        before = w.last
        tracker = ChangeTracker(SystemClock())
        tracker.update(before)
        api.apply(web("10.0.1.9")[1])
        w.until(lambda o: backends(o) == ["10.0.1.9"])
        after = w.last
    assert after.services[DNS] is before.services[DNS]
    assert after.slices[DNS] is before.slices[DNS]
    assert after.services[WEB] is before.services[WEB]  # only its slice changed
    assert tracker.update(after) == {WEB}


def test_410_gone_relists_and_catches_up(api, make_source):
    svc, eps = web("10.0.1.1")
    api.apply(svc)
    api.apply(eps)
    source = make_source()
    with Watching(source) as w:
        lists = source.reflectors[1].lists
        api.wait_for(lambda: api.open_watches("endpointslices") == 1)
        # The server loses its history and the watch is told its version is too old;
        # meanwhile the slice changed and another service came and went.
        api.compact()
        api.apply(web("10.0.1.2")[1])
        api.compact()
        api.expire_watches()
        w.until(lambda o: backends(o) == ["10.0.1.2"], "relisted state")
        assert source.reflectors[1].lists == lists + 1
        api.apply(web("10.0.1.3")[1])  # and the new watch works
        w.until(lambda o: backends(o) == ["10.0.1.3"], "change after the relist")


def test_disconnect_resumes_without_missing_or_replaying(api, make_source, caplog):
    svc, eps = web("10.0.1.1")
    api.apply(svc)
    api.apply(eps)
    source = make_source()
    applied = []
    store_apply = source.store.apply
    source.store.apply = lambda res, kind, obj: (
        applied.append((res.plural, kind, obj["metadata"]["resourceVersion"]))
        or store_apply(res, kind, obj))
    with Watching(source) as w:
        api.wait_for(lambda: api.open_watches() == 3)
        api.apply(web("10.0.1.2")[1])
        w.until(lambda o: backends(o) == ["10.0.1.2"])
        seen = source.reflectors[1].resource_version
        # An event is pending when the connection breaks in the middle of it.
        with api._cond:
            api.apply(web("10.0.1.3")[1])
            missed = api.version
            api.drop_watches(partial=True)
        api.apply(web("10.0.1.4")[1])
        w.until(lambda o: backends(o) == ["10.0.1.4"], "changes after the drop")
    resumed = [r for r in api.requests if r.verb == "watch" and r.resource == "endpointslices"]
    assert [r.query["resourceVersion"] for r in resumed][:2] == [resumed[0].query[
        "resourceVersion"], seen]
    versions = [v for plural, _, v in applied if plural == "endpointslices"]
    assert len(versions) == len(set(versions)), f"an event was applied twice: {versions}"
    assert str(missed) in versions  # the half-sent event came again, whole, once
    assert source.reflectors[1].lists == 1  # resumed, no relist
    assert "watch stream broken" in caplog.text


def test_bookmark_moves_the_resume_version(api, make_source):
    source = make_source()
    with Watching(source):
        api.wait_for(lambda: api.open_watches("nodes") == 1)
        api.apply(web()[0])  # moves the global version; nodes see no event
        api.bookmark()
        wait_until(lambda: source.reflectors[2].resource_version == str(api.version))
        api.drop_watches()
        api.wait_for(lambda: sum(r.resource == "nodes" and r.verb == "watch"
                                 for r in api.requests) >= 2)
    node_watches = [r for r in api.requests if r.verb == "watch" and r.resource == "nodes"]
    assert node_watches[1].query["resourceVersion"] == str(api.version)


def test_errors_retry_with_capped_exponential_backoff_and_jitter():
    class Failing:
        def list(self, *a, **kw):
            raise ApiError("list services: 503 Service Unavailable", 503)

    class CountingStop(threading.Event):
        def __init__(self):
            super().__init__()
            self.waits = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            if len(self.waits) == 8:
                self.set()
            return self.is_set()

    from lbcore.sources.kube_client import SERVICES

    reflector = Reflector(Failing(), SERVICES, ObjectStore(), lambda: None,
                          backoff_initial=1.0, backoff_max=8.0, jitter=0.5)
    stop = CountingStop()
    reflector.run(stop)
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(b <= w <= b * 1.5 for b, w in zip(bases, stop.waits, strict=True)), stop.waits
    assert len(set(stop.waits)) > 3  # jittered, not the bare sequence


def test_server_errors_then_recovery(api, make_source):
    source = make_source()
    api.fail_next(500, 503, 500)
    api.apply(web("10.0.1.1")[0])
    with Watching(source) as w:
        assert WEB in w.last.services
    assert sum(r.verb == "list" for r in api.requests) == 6  # 3 failed + 3 good


def test_invalid_object_is_skipped_and_reported_while_the_rest_flows(api, make_source,
                                                                     caplog):
    caplog.set_level(logging.WARNING)
    bad = service_object("bad", "10.96.0.99", [{"name": "http", "port": 80}])
    bad["spec"]["ports"][0]["port"] = 70000  # the server "accepted" what lbcore cannot use
    api.apply(bad)
    svc, eps = web("10.0.1.1")
    api.apply(svc)
    api.apply(eps)
    source = make_source()
    with Watching(source) as w:
        assert list(w.last.services) == [WEB]
        api.apply(web("10.0.1.2")[1])
        w.until(lambda o: backends(o) == ["10.0.1.2"], "the rest flows")
        bad_slice = slice_object(bad, ["10.0.9.1"])
        bad_slice["endpoints"][0]["addresses"] = ["not-an-ip"]
        api.apply(bad_slice)
        source.events.flush()
        api.wait_for(lambda: len(api.events) == 2)
        bad["spec"]["ports"][0]["port"] = 80  # fixed: now it is programmed
        api.apply(bad)
        w.until(lambda o: ServiceKey("default", "bad") in o.services, "fixed object")
    assert "skipping invalid Service default/bad" in caplog.text
    assert "spec.ports[0].port" in caplog.text
    kinds = sorted((e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in api.events)
    assert kinds == [("EndpointSlice", "bad-abcde"), ("Service", "bad")]
    event = next(e for e in api.events if e["involvedObject"]["kind"] == "Service")
    assert event["type"] == "Warning" and event["reason"] == "LBCoreInvalidObject"
    assert event["metadata"]["namespace"] == "default"
    assert "spec.ports[0].port" in event["message"]
    assert event["involvedObject"]["uid"]
    assert event["source"] == {"component": "lbcore", "host": "node-a"}


def test_invalid_object_is_reported_once_per_version(api, make_source):
    bad = node_object("bad-node", "0.0.0.0")
    api.apply(bad)
    source = make_source()
    source.read()
    source.reflectors[2].list()  # a relist sees the same version again
    source.events.flush()
    assert len(api.events) == 1
    assert api.events[0]["metadata"]["namespace"] == "default"  # cluster-scoped object
    assert source.store.invalid == {"nodes": ["bad-node"]}


def test_trigger_calls_back(api, make_source):
    source = make_source()
    with Watching(source) as w:
        count = len(w.snapshots)
        source.trigger()
        wait_until(lambda: len(w.snapshots) > count, what="callback after trigger")


# --------------------------------------------------------------- with the agent


def test_burst_of_1000_endpoint_changes_is_coalesced(api, make_source):
    svc, _ = web()
    api.apply(svc)
    api.apply(node_object("node-a", "172.18.0.2"))
    source = make_source()
    driver = FakeDriver({}, NodeInfo("node-a"))
    config = Config(Path("lbcore.yaml"), "fake", {}, NodeInfo("node-a"), "kubernetes", {},
                    RunnerConfig(min_sync_period=0.2, sync_period=0))
    agent = Agent(config, GuardedDriver(driver), source)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), kwargs={"handle_signals": False})
    thread.start()
    try:
        wait_until(lambda: driver.syncs, what="the first sync")
        before = len(driver.syncs)
        for i in range(1000):
            api.apply(slice_object(svc, [f"10.1.{i // 250}.{i % 250 + 1}"]))

        def programmed():
            held = [fe for fe in driver.held.values() if fe.service == WEB]
            return held and [b.ip for b in held[0].backends] == ["10.1.3.250"]

        wait_until(programmed, timeout=30, what="the last endpoint programmed")
    finally:
        stop.set()
        thread.join(10)
    syncs = len(driver.syncs) - before
    print(f"1000 endpoint changes: {syncs} sync(s)")
    assert 1 <= syncs <= 25, f"{syncs} syncs for 1000 changes"
    assert all(changed in (None, frozenset({WEB})) for _, changed in driver.syncs[before:])


def test_periodic_relist_repairs_a_missed_event_and_keeps_identity(api, make_source):
    for svc, eps in (web("10.0.1.1"), dns("10.0.3.1")):
        api.apply(svc)
        api.apply(eps)
    source = make_source(resync_period=0.3)
    with Watching(source) as w:
        before = w.last
        # Change the store behind the watches' back, as if an event had been lost.
        with api._cond:
            key = ("default", "web-abcde")
            api.objects["endpointslices"][key]["endpoints"][0]["addresses"] = ["10.0.1.7"]
            api.version += 1
            api.objects["endpointslices"][key]["metadata"]["resourceVersion"] = str(api.version)
        w.until(lambda o: backends(o) == ["10.0.1.7"], "the relist")
        after = w.last
    assert source.reflectors[1].lists >= 2
    assert after.slices[DNS] is before.slices[DNS]  # same resourceVersion: same object
    assert after.services[WEB] is before.services[WEB]


def test_stop_while_the_api_server_is_unreachable(tmp_path):
    config = write_kubeconfig(tmp_path / "kc", {"dead": "http://127.0.0.1:9"}, "dead")
    source = KubernetesSource({"kubeconfig": str(config), "backoff": [0.05, 0.1]}, None,
                              service_proxy_name=None)
    stop = threading.Event()
    calls = []
    thread = threading.Thread(target=source.watch, args=(lambda: calls.append(1), stop))
    thread.start()
    time.sleep(0.5)
    assert not calls  # no snapshot until every resource was listed once
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    source.close()


def test_dropped_watches_are_counted_and_their_recovery_forces_a_full_sync(api, make_source):
    svc, eps = web("10.0.1.1")
    api.apply(svc)
    api.apply(eps)
    api.apply(node_object("node-a", "172.18.0.2"))
    source = make_source()
    driver = FakeDriver({}, NodeInfo("node-a"))
    config = Config(Path("lbcore.yaml"), "fake", {}, NodeInfo("node-a"), "kubernetes", {},
                    RunnerConfig(min_sync_period=0, sync_period=0))
    agent = Agent(config, GuardedDriver(driver), source)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), kwargs={"handle_signals": False})
    thread.start()
    try:
        wait_until(lambda: driver.syncs, what="the first sync")
        api.wait_for(lambda: api.open_watches() == 3)
        api.apply(web("10.0.1.2")[1])
        wait_until(lambda: driver.last_changed == frozenset({WEB}), what="a partial sync")
        syncs = len(driver.syncs)
        api.fail_next(503, 503)  # the reconnects fail too: backoff, then recovery
        api.drop_watches()
        with api._cond:  # a change while nobody watches
            api.apply(web("10.0.1.3")[1])
        wait_until(lambda: [b.ip for fe in driver.held.values() for b in fe.backends]
                   == ["10.0.1.3"], timeout=30, what="the change made during the drop")
        wait_until(lambda: any(changed is None for _, changed in driver.syncs[syncs:]),
                   what="a full sync after the watches came back")
        assert driver.held, "the datapath was never emptied"
        assert all(s[0].frontends for s in driver.syncs)  # no sync ever had zero services
        counts = source.error_counts()
        assert set(counts) == {"services", "endpointslices", "nodes"}
        assert all(n >= 1 for n in counts.values()) and sum(counts.values()) >= 4, counts
        from lbcore.metrics import render_prometheus

        text = render_prometheus(agent.metrics)
        assert 'lbcore_source_watch_errors_total{resource="endpointslices"}' in text
    finally:
        stop.set()
        thread.join(10)
