"""The CLI through click's CliRunner, with the driver (and source) injected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from stevedore.extension import Extension

from lbcore.cli import CliEnv, cli
from lbcore.doctor import HostProbe
from lbcore.driver import Capabilities, Problem
from lbcore.errors import DriverError, ValidationError
from lbcore.model import NodeInfo
from lbcore.plugins import DRIVERS, GuardedDriver, PluginRegistry
from lbcore.testing import FakeDriver, MemorySource, cluster, endpoint_slice, naive_expand, service

NODE = NodeInfo("node-a", ("172.18.0.2",))
WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", port=53, protocol="UDP", namespace="kube-system")
OBJECTS = cluster([WEB, DNS], [endpoint_slice(WEB, ["10.0.1.5", "10.0.1.6"]),
                               endpoint_slice(DNS, ["10.0.2.5"], port=53)])
REPO = Path(__file__).resolve().parents[2]


class TCPOnlyDriver(FakeDriver):
    """Test double without UDP."""

    caps = Capabilities(protocols=frozenset({"TCP"}), description="tcp only")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "lbcore.yaml"
    path.write_text(
        "driver: fake\nnode: {name: node-a, addresses: [172.18.0.2]}\n"
        "source: {kind: file, path: services.yaml}\n"
    )
    return path


def env_with(driver, objects=OBJECTS, **kw) -> CliEnv:
    source = MemorySource(objects)
    return CliEnv(driver_factory=lambda cfg: GuardedDriver(driver),
                  source_factory=lambda cfg: source, expand=naive_expand, **kw)


def invoke(env, *args):
    return CliRunner().invoke(cli, list(args), obj=env)


def test_services_table_like_cilium_service_list(config_file):
    driver = FakeDriver({}, NODE)
    env = env_with(driver)
    assert invoke(env, "sync", "-c", str(config_file)).exit_code == 0
    result = invoke(env, "services", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.output.splitlines()]
    assert lines[0].split() == ["ID", "Frontend", "Service", "Type", "Backend"]
    assert lines[1].split() == ["1", "10.96.0.10:80/TCP", "ClusterIP", "1", "=>",
                                "10.0.1.5:8080/TCP", "(active)"]
    assert lines[2].split() == ["2", "=>", "10.0.1.6:8080/TCP", "(active)"]
    assert lines[2].index("2 =>") == lines[1].index("1 =>")
    assert lines[3].split() == ["2", "10.96.0.53:53/UDP", "ClusterIP", "1", "=>",
                                "10.0.2.5:53/UDP", "(active)"]
    assert driver.calls.count("dump") == 1


def test_services_json_is_the_design_shape(config_file):
    driver = FakeDriver({}, NODE)
    env = env_with(driver)
    invoke(env, "sync", "-c", str(config_file))
    result = invoke(env, "services", "-c", str(config_file), "-o", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[1] == {
        "id": 2, "frontend": {"ip": "10.96.0.53", "port": 53, "protocol": "UDP"},
        "type": "ClusterIP", "backends": [{"ip": "10.0.2.5", "port": 53, "state": "active"}],
        "service": "kube-system/dns",
    }


def test_services_table_lists_what_the_driver_cannot_hold(config_file):
    driver = TCPOnlyDriver({}, NODE)
    env = env_with(driver)
    invoke(env, "sync", "-c", str(config_file))
    result = invoke(env, "services", "-c", str(config_file))
    assert "kube-system/dns" in result.output
    assert "protocol UDP is not supported" in result.output


def test_sync_dry_run_prints_plan_and_does_not_touch_driver(config_file):
    driver = TCPOnlyDriver({}, NODE)
    result = invoke(env_with(driver), "sync", "--dry-run", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert driver.calls == []
    assert "10.96.0.10:80/TCP" in result.output
    assert "1 => 10.0.1.5:8080/TCP (active)" in result.output
    assert "kube-system/dns" in result.output
    assert "driver fake: protocol UDP is not supported" in result.output


def test_sync_dry_run_json(config_file):
    driver = TCPOnlyDriver({}, NODE)
    result = invoke(env_with(driver), "sync", "--dry-run", "-o", "json", "-c", str(config_file))
    data = json.loads(result.stdout)
    assert [f["frontend"]["ip"] for f in data["frontends"]] == ["10.96.0.10"]
    assert data["skipped"] == [{
        "service": "kube-system/dns",
        "frontend": {"ip": "10.96.0.53", "port": 53, "protocol": "UDP"},
        "reason": "driver fake: protocol UDP is not supported",
    }]


def test_sync_programs_the_driver(config_file):
    driver = FakeDriver({}, NODE)
    result = invoke(env_with(driver), "sync", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert driver.calls == ["setup", "sync"]
    assert "synced 2 frontend(s) with driver fake" in result.output


def test_sync_with_real_file_source_and_expansion(tmp_path):
    pytest.importorskip("lbcore.expand")
    data = REPO / "tests" / "data" / "walkthrough.yaml"
    if not data.exists():
        pytest.skip("tests/data/walkthrough.yaml not present")
    cfg = tmp_path / "lbcore.yaml"
    cfg.write_text(f"driver: fake\nnode: {{name: worker, addresses: [172.18.0.3]}}\n"
                   f"source: {{kind: file, path: {data}}}\n")
    driver = FakeDriver({}, NODE)
    env = CliEnv(driver_factory=lambda c: GuardedDriver(driver))
    result = invoke(env, "sync", "--dry-run", "-o", "json", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {"ip": "10.96.10.10", "port": 80, "protocol": "TCP"} in [
        f["frontend"] for f in plan["frontends"]]


def test_invalid_source_is_one_clear_error(config_file):
    driver = FakeDriver({}, NODE)
    env = env_with(driver)
    error = ValidationError([], source="services.yaml")
    env.source_factory = lambda cfg: _failing_source(error)
    result = invoke(env, "sync", "-c", str(config_file))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: services.yaml: rejected")
    assert "Traceback" not in result.stderr
    assert driver.calls == []


def _failing_source(error):
    source = MemorySource()
    source.fail(error)
    return source


def test_missing_config_file(tmp_path):
    result = invoke(CliEnv(), "sync", "-c", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope.yaml'}: no such config file\n"


def test_debug_shows_traceback(tmp_path):
    result = invoke(CliEnv(), "--debug", "sync", "-c", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "error: " in result.stderr


def test_driver_error_exits_1(config_file):
    driver = FakeDriver({}, NODE)
    driver.sync_failures.append(DriverError("fake", "map full; raise driver_options.x"))
    result = invoke(env_with(driver), "sync", "-c", str(config_file))
    assert result.exit_code == 1
    assert "error: driver fake: map full; raise driver_options.x" in result.stderr


def test_unknown_driver_lists_installed(config_file):
    reg = PluginRegistry(DRIVERS, extensions=[_ext("fake2", FakeDriver)])
    env = CliEnv(driver_registry=lambda: reg, source_factory=lambda cfg: MemorySource())
    result = invoke(env, "cleanup", "-c", str(config_file))
    assert result.exit_code == 1
    assert "no lbcore.drivers plugin named 'fake' (installed: fake2)" in result.stderr


def _ext(name, plugin):
    from importlib.metadata import EntryPoint

    return Extension(name, EntryPoint(name, f"x:{name}", DRIVERS), plugin, None)


def test_drivers_table_and_json(config_file):
    reg = PluginRegistry(DRIVERS, extensions=[_ext("fake", FakeDriver),
                                              _ext("tcponly", TCPOnlyDriver)])
    env = CliEnv(driver_registry=lambda: reg)
    result = invoke(env, "drivers", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert "fake *" in result.output  # the configured one
    assert "TCP,UDP" in result.output
    result = invoke(env, "drivers", "-o", "json", "-c", str(config_file))
    data = json.loads(result.stdout)
    assert [d["name"] for d in data] == ["fake", "tcponly"]
    assert data[0]["configured"] is True
    assert data[1]["capabilities"]["protocols"] == ["TCP"]
    assert data[1]["description"] == "tcp only"


def test_cleanup(config_file):
    driver = FakeDriver({}, NODE)
    result = invoke(env_with(driver), "cleanup", "-c", str(config_file))
    assert result.exit_code == 0
    assert driver.calls == ["cleanup"]


def fake_host(tmp_path, *, root: bool, mounts: str, headers: bool, bcc: bool) -> HostProbe:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mounts)
    (proc / "self" / "status").write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    modules = tmp_path / "modules"
    if headers:
        (modules / "6.1.0" / "build").mkdir(parents=True)
    return HostProbe(proc=proc, modules=modules, euid=lambda: 0 if root else 1000,
                     kernel_release=lambda: "6.1.0", has_module=lambda name: bcc)


GOOD_MOUNTS = (
    "29 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    "30 1 0:27 / /sys/fs/bpf rw - bpf bpf rw\n"
)


def test_doctor_all_good(config_file, tmp_path):
    env = env_with(FakeDriver({}, NODE),
                   host=fake_host(tmp_path, root=True, mounts=GOOD_MOUNTS, headers=True, bcc=True))
    result = invoke(env, "doctor", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "warn" not in result.output
    assert "2 service(s)" in result.output


def test_doctor_reports_problems_with_fixes(config_file, tmp_path):
    driver = FakeDriver({}, NODE)
    driver.problems = [Problem("bpffs", "/sys/fs/bpf/lbcore not writable",
                               "mount -t bpf bpf /sys/fs/bpf")]
    env = env_with(driver, host=fake_host(tmp_path, root=False, mounts="", headers=False,
                                          bcc=False))
    result = invoke(env, "doctor", "-c", str(config_file))
    assert result.exit_code == 1
    out = result.output
    assert "FAIL" in out and "privileges" in out
    assert "fix: run as root" in out
    assert "fix: mount -t bpf bpf /sys/fs/bpf" in out
    assert "fix: apt-get install linux-headers-6.1.0" in out
    assert "fake: bpffs" in out


def test_doctor_warnings_only_exit_0(config_file, tmp_path):
    env = env_with(FakeDriver({}, NODE),
                   host=fake_host(tmp_path, root=True, mounts="", headers=False, bcc=False))
    result = invoke(env, "doctor", "-c", str(config_file))
    assert result.exit_code == 0, result.output
    assert "warn" in result.output


def test_doctor_bad_config(tmp_path):
    env = CliEnv(host=fake_host(tmp_path, root=True, mounts=GOOD_MOUNTS, headers=True,
                                bcc=True))
    result = invoke(env, "doctor", "-c", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert "no such config file" in result.output
