"""The driver API is versioned: a driver declares ``api_version`` and the core refuses
one written for a version it does not support, with a message saying what to do."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from stevedore.extension import Extension

from lbcore.config import Config
from lbcore.driver import DRIVER_API_VERSION, SUPPORTED_DRIVER_API_VERSIONS, Capabilities, Driver
from lbcore.errors import PluginError
from lbcore.model import FrontendType, NodeInfo
from lbcore.plugins import DRIVERS, PluginRegistry, create_driver, load_driver_class
from lbcore.testing import FakeDriver

NODE = NodeInfo("node-a", ("172.18.0.2",))


def registry(name: str, plugin: object) -> PluginRegistry:
    ep = EntryPoint(name, f"tests:{name}", DRIVERS)
    return PluginRegistry(DRIVERS, extensions=[Extension(name, ep, plugin, None)])


class FutureDriver(FakeDriver):
    api_version = DRIVER_API_VERSION + 1


class UnversionedDriver(FakeDriver):
    api_version = None  # type: ignore[assignment]


def test_drivers_inherit_the_current_version():
    assert Driver.api_version == DRIVER_API_VERSION
    assert DRIVER_API_VERSION in SUPPORTED_DRIVER_API_VERSIONS
    assert load_driver_class(registry("fake", FakeDriver), "fake") is FakeDriver


@pytest.mark.parametrize("cls", [FutureDriver, UnversionedDriver])
def test_incompatible_driver_is_refused_with_a_clear_message(cls):
    cfg = Config(Path("/etc/lbcore/lbcore.yaml"), "odd", {}, NODE, "file",
                 {"path": "/etc/lbcore/services.yaml"})
    with pytest.raises(PluginError) as err:
        create_driver(cfg, registry("odd", cls))
    text = str(err.value)
    assert "driver 'odd'" in text
    assert f"targets driver API version {cls.api_version!r}" in text
    assert f"driver API {DRIVER_API_VERSION}" in text
    assert "install a release of the plugin" in text


def test_clients_are_inferred_for_drivers_that_do_not_declare_them():
    assert Capabilities().served_clients() == frozenset({"pod"})
    assert Capabilities().to_json()["clients"] == ["pod"]
    north_south = Capabilities(frontend_types=frozenset({FrontendType.NODE_PORT}))
    assert north_south.served_clients() == frozenset({"external"})
    declared = Capabilities(clients=frozenset({"pod", "host"}))
    assert declared.to_json()["clients"] == ["host", "pod"]
