"""Faults, injected for real, against a real ``lbcore run`` agent under load.

For each fault the test proves: the agent retries with backoff (the delays in its log
grow), the next sync after the fault is full, the datapath keeps what it held (read
back from the kernel, and the load's requests all succeed), the failure is counted in
``/metrics`` (scraped from the agent), and the agent recovers by itself once the
fault is gone. The agent runs on the client pod's node (control-plane), so it is the
one translating the load's connections.

* iptables-restore fails: the agent's iptables tools use a private xtables lock file
  (``XTABLES_LOCKFILE``, which iptables reads) and the test holds that lock, so
  ``iptables-restore -w 5`` gives up (the machine-wide lock is never touched);
* a BPF map is full: more services than socklb's service map holds;
* a program fails to load: bcc compiles against kernel headers it finds through
  ``BCC_KERNEL_SOURCE``; the test points that at a directory it swaps for an empty one
  while the agent restarts, then swaps back;
* the source file vanishes: deleted, then recreated (with a change);
* the Kubernetes watch drops: test_reliability_watch.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import pytest

from lbcore.bench.env import BenchCluster
from lbcore.lab.agents import services_json, socklb_options, wait_healthy
from lbcore_socklb import loader

from .reliability import (
    assert_load_clean,
    bench_cluster,
    metric,
    respawn,
    scrape,
    start_agent,
    start_load,
    stop_and_clean,
    wait_for,
)

pytestmark = pytest.mark.netns
LOCK_WAIT = 12  # seconds: the iptables agent's lock_wait in the xtables-lock test


@pytest.fixture(scope="module")
def bench():
    yield from bench_cluster()


@pytest.fixture
def agents(bench):
    """The agents a test starts (``start_agent`` adds each to ``cluster.agents``)."""
    started = bench.cluster.agents = []
    yield started
    problems = stop_and_clean(bench, started)
    bench.set_probe("web-0")
    bench.cluster.controller.write()
    assert problems == [], "\n".join(problems)


def probe_backend(bench: BenchCluster) -> str:
    r = bench.cluster.curl(bench.client, f"http://{bench.services['probe'].cluster_ip}/",
                           timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().removeprefix("backend=")


def nat_rules(bench: BenchCluster, node) -> list[str]:
    r = bench.lab.run(node.ns, ["iptables-legacy-save", "-t", "nat"])
    return [ln.split(" [")[0] for ln in r.stdout.splitlines() if not ln.startswith("#")]


def retry_delays(output: str) -> list[str]:
    return [ln.rsplit(" in ", 1)[1] for ln in output.splitlines() if "retrying with a full" in ln]


def after(output: str, marker: str) -> str:
    """The log after the last line containing ``marker``."""
    return output.rsplit(marker, 1)[1] if marker in output else ""


def test_iptables_restore_fails_while_the_xtables_lock_is_held(bench, agents):
    """The driver waits ``lock_wait`` seconds for the lock (12 here, 60 by default;
    longer than the 8 s health timeout, so /healthz turns 503 while it waits)."""
    cp = bench.client.node
    lockfile = bench.lab.run_dir / "xtables.lock"
    agent = start_agent(bench, cp, "iptables", name="lock", runner={"health_timeout": 8},
                        options={"lock_wait": LOCK_WAIT},
                        env={"XTABLES_LOCKFILE": str(lockfile)})
    wait_healthy(bench.cluster, [agent], timeout=30)
    assert probe_backend(bench) == "web-0"
    rules = nat_rules(bench, cp)
    load = start_load(bench, ew=True, ns=True, close=True, connections=2, connector=True)
    try:
        with open(lockfile, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # what another iptables user would hold
            bench.set_probe("web-1")
            bench.cluster.controller.write()  # a change the agent must program
            # While its restore waits for the lock, the agent is late: 503 after 8 s;
            # the previous rules are in place, exactly, and serve.
            wait_for("healthz 503", lambda: scrape(bench, agent, "/healthz")[0] == 503,
                     timeout=30, proc=agent.proc)
            assert scrape(bench, agent, "/livez")[0] == 503
            assert nat_rules(bench, cp) == rules
            assert probe_backend(bench) == "web-0"
            wait_for("a failed restore", lambda: retry_delays(agent.proc.output()),
                     timeout=LOCK_WAIT + 40, proc=agent.proc)
            assert f"Stopped waiting after {LOCK_WAIT}s" in agent.proc.output()
            _, text = scrape(bench, agent)
            restore_failures = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
            assert metric(text, restore_failures) >= 1
            assert metric(text, "lbcore_sync_failures_total") >= 1
            assert nat_rules(bench, cp) == rules and probe_backend(bench) == "web-0"
        # The lock is free: the retry (full) programs the change, no restart.
        wait_for("the retry", lambda: probe_backend(bench) == "web-1", timeout=LOCK_WAIT + 30,
                 proc=agent.proc)
    finally:
        results = load.finish()
    assert_load_clean(results)
    out = agent.proc.output()
    assert retry_delays(out)[0] == "1.0 s"
    assert "full sync" in after(out, "retrying with a full sync")
    _, text = scrape(bench, agent)
    assert scrape(bench, agent, "/healthz")[0] == 200
    assert metric(text, "kubeproxy_proxy_healthz_total", 'code="503"') >= 1
    assert metric(text, "kubeproxy_sync_proxy_rules_service_changes_pending") == 0
    assert metric(text, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1
    # Stopped here, not by the fixture: its cleanup takes the machine-wide xtables lock,
    # not this agent's, so it must not overlap a restore of this agent's.
    assert agent.proc.stop(timeout=30) == 0, agent.proc.output()


def test_socklb_map_full_keeps_the_maps_and_recovers(bench, agents):
    cp = bench.client.node
    bench.render(33)  # 30 more services than the three: more slots than the map has
    options = {**socklb_options(bench.cluster, cp), "service_map_max": 32,
               "bpffs_path": str(bench.cluster.bpffs / f"{cp.name}-small")}
    agent = start_agent(bench, cp, "socklb", name="small", options=options)
    wait_healthy(bench.cluster, [agent], timeout=60)
    before = services_json(bench.cluster, agent)
    _, text = scrape(bench, agent)
    used = metric(text, "lbcore_bpf_map_entries", 'map_name="lbc_svc"')
    assert metric(text, "lbcore_bpf_map_max_entries", 'map_name="lbc_svc"') == 32
    assert metric(text, "lbcore_bpf_map_pressure", 'map_name="lbc_svc"') == used / 32
    load = start_load(bench, ew=True, ns=False, close=True, connections=2, connector=True)
    try:
        bench.install(33, "web-1")
        wait_for("two refused syncs", lambda: len(retry_delays(agent.proc.output())) >= 2,
                 timeout=30, proc=agent.proc)
        assert "service_map_max" in agent.proc.output()
        assert services_json(bench.cluster, agent) == before  # nothing half-written
        assert probe_backend(bench) == "web-0"
        _, text = scrape(bench, agent)
        assert metric(text, "lbcore_sync_failures_total") >= 2
        assert metric(text, "lbcore_bpf_map_entries", 'map_name="lbc_svc"') == used
        bench.set_probe("web-1")
        bench.cluster.controller.write()  # back to three services, with a change
        wait_for("the retry", lambda: probe_backend(bench) == "web-1", timeout=60,
                 proc=agent.proc)
    finally:
        results = load.finish()
    assert_load_clean(results)
    assert "full sync" in after(agent.proc.output(), "retrying with a full sync")
    assert retry_delays(agent.proc.output())[:2] == ["1.0 s", "2.0 s"]


def merged_headers(run_dir: Path) -> Path:
    """The kernel headers bcc uses here (``/lib/modules/$(uname -r)/{build,source}``)
    as one tree, for ``BCC_KERNEL_SOURCE``."""
    modules = Path("/lib/modules") / os.uname().release
    out = run_dir / "kheaders-tree"

    def merge(a: Path, b: Path, into: Path) -> None:
        into.mkdir(parents=True)
        for name in sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()}):
            pa, pb = a / name, b / name
            if pa.is_dir() and pb.is_dir() and not pa.is_symlink() and not pb.is_symlink():
                merge(pa, pb, into / name)
            else:
                (into / name).symlink_to(pa if pa.exists() else pb)

    merge((modules / "build").resolve(), (modules / "source").resolve(), out)
    return out


def point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: bcc sees the old or the new tree


def test_program_that_fails_to_load_is_retried_while_the_old_one_serves(bench, agents):
    cp = bench.client.node
    headers = bench.lab.run_dir / "kheaders"
    tree, empty = merged_headers(bench.lab.run_dir), bench.lab.run_dir / "kheaders-empty"
    empty.mkdir()
    point(headers, tree)
    env = {"BCC_KERNEL_SOURCE": str(headers)}
    agent = start_agent(bench, cp, "socklb", name="load", env=env,
                        runner={"health_timeout": 6})
    wait_healthy(bench.cluster, [agent], timeout=60)
    ids = {p.id for progs in loader.attachments(str(cp.pods_cgroup)).values() for p in progs}
    load = start_load(bench, ew=True, ns=False, close=True, connections=2, connector=True)
    try:
        agent.proc.popen.send_signal(signal.SIGKILL)
        agent.proc.popen.wait(10)
        point(headers, empty)  # the headers are gone (a package upgrade, a bad mount)
        bench.set_probe("web-1")
        bench.cluster.controller.write()
        respawn(bench, agent, env)
        wait_for("two failed setups", lambda: agent.proc.output().count(
            "driver setup failed") >= 2, timeout=60, proc=agent.proc)
        assert "compiling" in agent.proc.output()
        now = {p.id for progs in loader.attachments(str(cp.pods_cgroup)).values()
               for p in progs}
        assert now == ids  # the programs of the killed agent still serve
        assert probe_backend(bench) == "web-0"
        _, text = scrape(bench, agent)
        assert metric(text, "lbcore_setup_failures_total") >= 2
        wait_for("healthz 503", lambda: scrape(bench, agent, "/healthz")[0] == 503, timeout=20)
        point(headers, tree)  # fixed: the next retry compiles, no restart
        wait_for("the retry", lambda: probe_backend(bench) == "web-1", timeout=90,
                 proc=agent.proc)
    finally:
        results = load.finish()
    assert_load_clean(results)
    new = {p.id for progs in loader.attachments(str(cp.pods_cgroup)).values() for p in progs}
    assert len(new) == 8 and not new & ids  # replaced in place
    assert scrape(bench, agent, "/healthz")[0] == 200
    out = agent.proc.output()
    assert [ln.rsplit(" in ", 1)[1] for ln in out.splitlines()
            if "driver setup failed" in ln][:2] == ["1.0 s", "2.0 s"]
    assert "full sync" in after(out, "driver setup failed")


def test_source_file_vanishing_keeps_the_last_good_state(bench, agents):
    cp = bench.client.node
    agent = start_agent(bench, cp, "iptables", name="vanish")
    wait_healthy(bench.cluster, [agent], timeout=30)
    rules, before = nat_rules(bench, cp), services_json(bench.cluster, agent)
    objects = bench.cluster.controller.path
    load = start_load(bench, ew=True, ns=True, close=True, connections=2, connector=True)
    try:
        objects.unlink()
        wait_for("the agent noticed", lambda: "no such file" in agent.proc.output(),
                 timeout=20, proc=agent.proc)
        assert "3 service(s) of the last good read stay programmed" in agent.proc.output()
        _, text = scrape(bench, agent)
        assert metric(text, "lbcore_source_stale") == 1
        assert metric(text, "lbcore_source_errors_total") >= 1
        assert nat_rules(bench, cp) == rules and services_json(bench.cluster, agent) == before
        assert probe_backend(bench) == "web-0"
        bench.set_probe("web-1")
        bench.cluster.controller.write()  # the file is back, with a change
        wait_for("the file again", lambda: probe_backend(bench) == "web-1", timeout=30,
                 proc=agent.proc)
    finally:
        results = load.finish()
    assert_load_clean(results)
    out = after(agent.proc.output(), "no such file")
    assert "readable again; the next sync is full" in out and "full sync" in out
    _, text = scrape(bench, agent)
    assert metric(text, "lbcore_source_stale") == 0


KUBE_PROXY_METRICS = (
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "kubeproxy_network_programming_duration_seconds",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_total",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_proxy_healthz_total",
)


def test_a_real_agent_serves_kube_proxy_health_and_metrics(bench, agents):
    import json

    cp = bench.client.node
    agent = start_agent(bench, cp, "iptables", name="metrics")
    wait_healthy(bench.cluster, [agent], timeout=30)
    code, body = scrape(bench, agent, "/healthz")
    assert code == 200, body
    health = json.loads(body)
    assert set(health) == {"lastUpdated", "currentTime", "nodeEligible"}
    assert health["lastUpdated"] == health["currentTime"] and health["nodeEligible"] is True
    code, body = scrape(bench, agent, "/livez")
    assert code == 200 and set(json.loads(body)) == {"lastUpdated", "currentTime"}
    bench.set_probe("web-1")
    bench.cluster.controller.write()
    wait_for("the change", lambda: probe_backend(bench) == "web-1", proc=agent.proc)
    code, text = scrape(bench, agent)
    assert code == 200
    types = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    assert set(KUBE_PROXY_METRICS) <= types, set(KUBE_PROXY_METRICS) - types
    assert metric(text, "kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1
    assert metric(text, "kubeproxy_network_programming_duration_seconds_count") >= 2
    assert metric(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.6e9
    assert metric(text, "kubeproxy_proxy_healthz_total", 'code="200"') == 1
    assert metric(text, "lbcore_driver_info", 'driver="iptables"') == 1
    assert "lbcore_bpf_map_pressure" not in types  # iptables has no BPF maps
