"""End to end: ``lbcore run`` with the ``kubernetes`` source and the socklb datapath.

The API server is the in-process test double (``lbcore.sources.kube_fake``), listening on
the loopback of the lab's node namespace (its socket is created there), where the agent
runs as a real ``lbcore run`` process. Every change is made through the API double, as
kubectl/the controllers would; the test then checks what the lab's client actually
reaches through the service address.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from lbcore.sources.kube_fake import FakeAPIServer
from lbcore.sources.kube_objects import node_object

from .test_socklb import LBCORE, VIP, Lbcore, _wait_for_backends, _wait_for_log, ready, web

pytestmark = pytest.mark.netns

CLONE_NEWNET = 0x40000000
HEALTHZ_PORT = 10256


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def in_netns(path: str, fn):
    """``fn()`` in a thread that entered the network namespace at ``path`` (sockets it
    creates stay there); the calling thread's namespace is untouched."""
    result: dict = {}

    def run():
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc
        finally:
            _setns(own)
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def healthz(lab) -> tuple[int, dict]:
    def get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz",
                                        timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
    return in_netns(lab.node.ns.path, get)


@pytest.fixture
def api(lab):
    server = in_netns(lab.node.ns.path, FakeAPIServer)
    with server:
        yield server


def test_agent_follows_the_api_server(lab, api, tmp_path):
    lab.start_http_backends()
    b0, b1, b2 = lab.backends
    api.apply(node_object("node-a", lab.node.ipv4))
    svc, eps = web(ready([b0]))
    api.apply(svc)
    api.apply(eps)

    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "lbcore", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lbcore"}}]}))
    lb = Lbcore(lab, tmp_path, {})
    lb.write_config()
    config = yaml.safe_load(lb.config.read_text())
    config["source"] = {"kind": "kubernetes", "kubeconfig": "kubeconfig", "backoff": [0.1, 1]}
    lb.config.write_text(yaml.safe_dump(config))

    agent = lab.node.ns.spawn([LBCORE, "-v", "run", "-c", str(lb.config),
                               f"--healthz-bind-address=127.0.0.1:{HEALTHZ_PORT}"],
                              name="agent")
    try:
        _wait_for_backends(lab, {b0.name}, deadline_s=30)  # the first sync compiles
        status, body = healthz(lab)
        assert status == 200 and body["lastUpdated"] != "0001-01-01T00:00:00Z", body

        api.apply(web(ready([b0, b1]))[1])  # endpoints added: a watch event
        assert _wait_for_backends(lab, {b0.name, b1.name}) < 5

        bad, _ = web([], ip="10.96.0.99", name="bad")
        bad["spec"]["ports"][0]["port"] = 70000  # accepted by the server, not by lbcore
        api.apply(bad)
        _wait_for_log(agent, "skipping invalid Service default/bad")
        api.apply(web(ready([b2]))[1])  # and the rest keeps flowing
        assert _wait_for_backends(lab, {b2.name}) < 5

        api.drop_watches()  # connections cut: the agent resumes where it was
        api.apply(web(ready([b1]))[1])
        assert _wait_for_backends(lab, {b1.name}) < 5

        api.compact()  # history lost: 410, relist
        api.apply(web(ready([b0, b2]))[1])
        api.expire_watches()
        assert _wait_for_backends(lab, {b0.name, b2.name}) < 5

        api.delete("Service", "web", "default")  # gone: the frontend leaves the kernel
        deadline = time.monotonic() + 5
        while any(s["frontend"]["ip"] == VIP for s in lb.services()):
            assert time.monotonic() < deadline, lb.services()
            time.sleep(0.1)

        assert agent.stop(timeout=10) == 0, agent.output()
        assert "Traceback" not in agent.output(), agent.output()
    finally:
        with contextlib.suppress(Exception):
            agent.stop(timeout=5)
        lb.cleanup()
    assert {r.verb for r in api.requests} <= {"list", "watch", "create"}
    assert any(r.verb == "create" for r in api.requests)  # the Event for default/bad
    assert api.events[0]["involvedObject"]["name"] == "bad"
