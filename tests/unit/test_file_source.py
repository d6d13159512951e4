"""FileSource: options, reading through the loader, change detection, trigger."""

from __future__ import annotations

import os
import threading
import time

import pytest

from lbcore.errors import ConfigError
from lbcore.model import ClusterObjects, ServiceKey
from lbcore.sources.file import FileSource


def loader_calls():
    calls = []

    def loader(path, **kwargs):
        calls.append((path, kwargs))
        return ClusterObjects.empty()

    return calls, loader


def test_relative_path_is_relative_to_config(tmp_path):
    src = FileSource({"path": "svc.yaml"}, tmp_path / "lbcore.yaml")
    assert src.path == tmp_path / "svc.yaml"
    assert src.describe() == f"file {tmp_path / 'svc.yaml'}"


def test_read_uses_loader_with_node_port_range(tmp_path):
    calls, loader = loader_calls()
    src = FileSource({"path": "svc.yaml", "node_port_range": [20000, 20999]},
                     tmp_path / "lbcore.yaml", loader=loader)
    src.read()
    assert calls == [(str(tmp_path / "svc.yaml"), {"node_port_range": (20000, 20999)})]


@pytest.mark.parametrize("bad", [[1], [5, 1], "30000-32767", [0, 10], [1, True]])
def test_bad_node_port_range(bad):
    with pytest.raises(ConfigError, match=r"source\.node_port_range"):
        FileSource({"path": "a", "node_port_range": bad}, None)


def test_missing_path():
    with pytest.raises(ConfigError, match=r"source\.path: missing"):
        FileSource({}, None)


def test_real_loader_reads_yaml(tmp_path):
    pytest.importorskip("lbcore.k8s")
    path = tmp_path / "svc.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, protocol: TCP}]\n"
    )
    objects = FileSource({"path": str(path)}, None).read()
    assert [str(k) for k in objects.services] == ["default/web"]


def watch_in_thread(src):
    events = []
    stop = threading.Event()
    thread = threading.Thread(target=src.watch, args=(lambda: events.append(1), stop))
    thread.start()
    assert wait_for(lambda: len(events) == 1)  # the initial call back
    return events, stop, thread


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_watch_sees_writes_renames_and_trigger(tmp_path, use_inotify):
    path = tmp_path / "svc.yaml"
    path.write_text("a: 1\n")
    src = FileSource({"path": str(path)}, None, use_inotify=use_inotify)
    events, stop, thread = watch_in_thread(src)
    try:
        path.write_text("a: 22\n")
        assert wait_for(lambda: len(events) >= 2)
        n = len(events)
        tmp = tmp_path / ".svc.yaml.swp"
        tmp.write_text("a: 333\n")
        os.replace(tmp, path)  # editor-style atomic replace
        assert wait_for(lambda: len(events) > n)
        n = len(events)
        src.trigger()  # SIGHUP
        assert wait_for(lambda: len(events) > n)
        n = len(events)
        (tmp_path / "unrelated").write_text("x")
        time.sleep(0.8)
        assert len(events) == n  # other files in the directory do not count
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_watch_follows_configmap_style_symlink_swap(tmp_path):
    # Kubernetes ConfigMap volumes: svc.yaml -> ..data/svc.yaml, ..data -> ..v1
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "svc.yaml").write_text("v: 1\n")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "svc.yaml").symlink_to("..data/svc.yaml")
    src = FileSource({"path": str(tmp_path / "svc.yaml")}, None)
    events, stop, thread = watch_in_thread(src)
    try:
        (tmp_path / "..v2").mkdir()
        (tmp_path / "..v2" / "svc.yaml").write_text("v: 2\n")
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert wait_for(lambda: len(events) >= 2)
    finally:
        stop.set()
        thread.join(5)


def test_real_loader_rereads_only_what_changed(tmp_path):
    pytest.importorskip("lbcore.k8s")
    path = tmp_path / "svc.yaml"
    doc = ("apiVersion: v1\nkind: Service\nmetadata: {{name: {0}, namespace: default}}\n"
           "spec:\n  clusterIP: {1}\n  ports: [{{port: {2}, protocol: TCP}}]\n")
    path.write_text("---\n".join([doc.format("a", "10.96.0.10", 80),
                                  doc.format("b", "10.96.0.11", 80)]))
    src = FileSource({"path": str(path)}, None)
    before = src.read()
    path.write_text("---\n".join([doc.format("a", "10.96.0.10", 80),
                                  doc.format("b", "10.96.0.11", 81)]))
    after = src.read()
    a, b = (ServiceKey("default", n) for n in "ab")
    assert after.services[a] is before.services[a]  # untouched: the very same object
    assert after.services[b].ports[0].port == 81
