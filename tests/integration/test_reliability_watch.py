"""The Kubernetes watch drops under load: the API server test double
(``lbcore.sources.kube_fake``, listening in the lab node's namespace) cuts every watch
and answers the reconnects with 503 for a while. The agent (a real ``lbcore run`` with
the kubernetes source and socklb) retries with a growing backoff, keeps the datapath
as it was (read back, and a client connecting all along never fails), counts every
failure in ``lbcore_source_watch_errors_total``, and once the watch is back it programs
the change made meanwhile with a full sync."""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from lbcore.sources.kube_fake import FakeAPIServer
from lbcore.sources.kube_objects import node_object

from .test_kubernetes_socklb import HEALTHZ_PORT, in_netns
from .test_socklb import (
    CONNECT_UNTIL_TERM,
    LBCORE,
    VIP,
    Lbcore,
    _wait_for_backends,
    _wait_for_log,
    ready,
    web,
)

pytestmark = pytest.mark.netns



def test_watch_drop_keeps_the_datapath_and_resyncs_in_full(lab, tmp_path):
    """The API server double cuts every watch and fails the reconnects for a while;
    a change made meanwhile arrives once the watch is back, with a full sync."""
    def get(path):
        def fetch():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HEALTHZ_PORT}{path}",
                                            timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
        return in_netns(lab.node.ns.path, fetch)

    lab.start_http_backends()
    b0, b1, _ = lab.backends
    api = in_netns(lab.node.ns.path, FakeAPIServer)
    with api:
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
        config["source"] = {"kind": "kubernetes", "kubeconfig": "kubeconfig",
                            "backoff": [0.2, 2]}
        lb.config.write_text(yaml.safe_dump(config))
        agent = lab.node.ns.spawn([LBCORE, "-v", "run", "-c", str(lb.config),
                                   f"--healthz-bind-address=127.0.0.1:{HEALTHZ_PORT}"],
                                  name="agent")
        loop = None
        try:
            _wait_for_backends(lab, {b0.name}, deadline_s=30)
            api.wait_for(lambda: api.open_watches() == 3)
            before = lb.services()
            loop = lab.client_spawn([sys.executable, "-I", "-S", "-c", CONNECT_UNTIL_TERM,
                                     VIP, "80"], name="connect-loop")
            with api._cond:
                api.fail_next(*[503] * 12)  # every reconnect fails, a few times each
                api.drop_watches()
                api.apply(web(ready([b1]))[1])  # a change nobody is watching
            _wait_for_log(agent, "retrying in", count=6, deadline_s=30)
            assert lb.services() == before  # the datapath as it was
            _status, text = get("/metrics")
            errors = [ln for ln in text.splitlines()
                      if ln.startswith("lbcore_source_watch_errors_total{")]
            assert errors and sum(float(ln.split()[-1]) for ln in errors) >= 6, errors
            assert _wait_for_backends(lab, {b1.name}, deadline_s=30) < 30  # recovered
            _wait_for_log(agent, "recovered from a failure; the next sync is full")
            out = agent.output().rsplit("recovered from a failure", 1)[1]
            assert "full sync" in out
            delays = [float(ln.rsplit(" in ", 1)[1].split()[0]) for ln in
                      agent.output().splitlines() if "endpointslices" in ln
                      and "retrying in" in ln]
            assert len(delays) >= 2 and max(delays) > min(delays)  # backoff grew
            assert get("/healthz")[0] == 200
        finally:
            if loop is not None:
                loop.popen.send_signal(signal.SIGTERM)
                loop.popen.wait(10)
            agent.stop(timeout=10)
            lb.cleanup()
        summary = json.loads(loop.output().strip().splitlines()[-1])
        assert summary["errors"] == [] and summary["ok"] > 20, summary
