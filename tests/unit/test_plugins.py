"""Plugin loading with injected extensions / entry points, and GuardedDriver."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from stevedore.extension import Extension

from lbcore.config import Config
from lbcore.driver import Capabilities, Driver
from lbcore.errors import ConfigError, DriverError, PluginError
from lbcore.model import DesiredState, NodeInfo
from lbcore.plugins import (
    DRIVERS,
    SOURCES,
    GuardedDriver,
    PluginRegistry,
    create_driver,
    create_source,
)
from lbcore.sources.file import FileSource
from lbcore.testing import FakeDriver

NODE = NodeInfo("node-a", ("172.18.0.2",))


def ext(name: str, plugin: object) -> Extension:
    ep = EntryPoint(name, f"tests:{name}", DRIVERS)
    return Extension(name, ep, plugin, None)


def config(driver: str = "fake", **options) -> Config:
    return Config(Path("/etc/lbcore/lbcore.yaml"), driver, options, NODE, "file",
                  {"path": "/etc/lbcore/services.yaml"})


def test_load_injected_extension():
    reg = PluginRegistry(DRIVERS, extensions=[ext("fake", FakeDriver)])
    assert reg.load("fake") is FakeDriver
    assert reg.names() == ["fake"]


def test_unknown_name_lists_installed():
    reg = PluginRegistry(DRIVERS, extensions=[ext("fake", FakeDriver), ext("other", FakeDriver)])
    with pytest.raises(PluginError, match=r"no lbcore.drivers plugin named 'nope' "
                                          r"\(installed: fake, other\)"):
        reg.load("nope")


def test_unknown_name_with_nothing_installed():
    reg = PluginRegistry(DRIVERS, extensions=[])
    with pytest.raises(PluginError, match=r"installed: none"):
        reg.load("socklb")


def test_load_failure_names_entry_point_and_cause():
    broken = EntryPoint("broken", "lbcore_no_such_module.driver:Driver", DRIVERS)
    reg = PluginRegistry(DRIVERS, entry_points=[broken])
    with pytest.raises(PluginError) as info:
        reg.load("broken")
    text = str(info.value)
    assert "'broken'" in text
    assert "lbcore_no_such_module.driver:Driver" in text
    assert "ModuleNotFoundError" in text


def test_load_from_unloaded_entry_point():
    ep = EntryPoint("fake", "lbcore.testing:FakeDriver", DRIVERS)
    reg = PluginRegistry(DRIVERS, entry_points=[ep])
    assert reg.load("fake") is FakeDriver
    with pytest.raises(PluginError, match="installed: fake"):
        reg.load("other")


def test_list_reports_broken_plugins_instead_of_skipping_them():
    eps = [
        EntryPoint("fake", "lbcore.testing:FakeDriver", DRIVERS),
        EntryPoint("broken", "lbcore_no_such_module:X", DRIVERS),
    ]
    infos = PluginRegistry(DRIVERS, entry_points=eps).list()
    assert [i.name for i in infos] == ["broken", "fake"]
    assert "ModuleNotFoundError" in infos[0].error and infos[0].plugin is None
    assert infos[1].plugin is FakeDriver and infos[1].error == ""


def test_installed_file_source_is_registered():
    assert "file" in PluginRegistry(SOURCES).names()


def test_create_driver_passes_options_and_node():
    reg = PluginRegistry(DRIVERS, extensions=[ext("fake", FakeDriver)])
    driver = create_driver(config(answer=42), reg)
    assert isinstance(driver, GuardedDriver)
    assert driver.name == "fake"
    assert driver.inner.options == {"answer": 42}
    assert driver.inner.node == NODE


def test_create_driver_rejects_non_driver_plugins():
    reg = PluginRegistry(DRIVERS, extensions=[ext("odd", dict)])
    with pytest.raises(PluginError, match=r"not a subclass of lbcore\.driver\.Driver"):
        create_driver(config("odd"), reg)


class PickyDriver(FakeDriver):
    def __init__(self, options, node):
        super().__init__(options, node)
        if "bad" in options:
            raise ConfigError("driver_options.bad: unknown option (driver picky)")
        if "crash" in options:
            raise ValueError("oops")


def test_driver_config_errors_pass_through_and_crashes_name_the_driver():
    reg = PluginRegistry(DRIVERS, extensions=[ext("picky", PickyDriver)])
    with pytest.raises(ConfigError, match=r"driver_options\.bad"):
        create_driver(config("picky", bad=1), reg)
    with pytest.raises(DriverError, match=r"driver picky: __init__\(\) failed: ValueError: oops"):
        create_driver(config("picky", crash=1), reg)


class CrashingDriver(Driver):
    name = "crashy"

    @classmethod
    def capabilities(cls):
        return Capabilities()

    def setup(self):
        raise OSError(1, "Operation not permitted")

    def sync(self, state, changed):
        return "done"  # not a SyncResult

    def dump(self):
        raise DriverError("crashy", "map not pinned")

    def cleanup(self):
        pass


def test_guarded_driver_wraps_unexpected_errors_and_checks_results():
    d = GuardedDriver(CrashingDriver({}, NODE))
    with pytest.raises(DriverError, match=r"driver crashy: setup\(\) failed: PermissionError"):
        d.setup()
    with pytest.raises(DriverError, match=r"sync\(\) returned 'done', expected SyncResult"):
        d.sync(DesiredState(NODE), None)
    with pytest.raises(DriverError, match=r"^driver crashy: map not pinned$"):
        d.dump()
    d.cleanup()
    d.close()
    assert isinstance(d.capabilities(), Capabilities)


def test_guarded_driver_keeps_original_cause():
    d = GuardedDriver(CrashingDriver({}, NODE))
    with pytest.raises(DriverError) as info:
        d.setup()
    assert isinstance(info.value.__cause__, PermissionError)


def test_create_source_from_installed_entry_point(tmp_path):
    cfg = Config(tmp_path / "lbcore.yaml", "fake", {}, NODE, "file", {"path": "svc.yaml"})
    source = create_source(cfg)
    assert isinstance(source, FileSource)
    assert source.path == tmp_path / "svc.yaml"


def test_create_source_unknown_kind():
    cfg = Config(Path("x.yaml"), "fake", {}, NODE, "consul", {})
    with pytest.raises(PluginError, match=r"no lbcore.sources plugin named 'consul'.*file"):
        create_source(cfg)


def test_source_rejects_unknown_options():
    with pytest.raises(ConfigError, match=r"unknown option.*pth.*valid: node_port_range, path"):
        FileSource({"path": "a.yaml", "pth": "b"}, None)
