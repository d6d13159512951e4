"""Finding, loading and guarding plugins (drivers and sources) with stevedore.

* ``PluginRegistry(namespace)`` loads one plugin by name (stevedore ``DriverManager``)
  or lists them all (``ExtensionManager``). A plugin that fails to import raises
  ``PluginError`` naming the entry point and the cause — stevedore's default would log
  and skip it, and the user would see "unknown driver" instead of the real problem.
  An unknown name raises ``PluginError`` listing the installed names.
* Unit tests inject ``extensions=`` (stevedore ``make_test_instance``) or unloaded
  ``entry_points=`` and need no installed distribution.
* ``GuardedDriver`` wraps a driver so every call either returns what the contract
  says or raises a typed error naming the driver (the os-vif pattern): a stray
  ``KeyError`` deep in a driver becomes ``DriverError("socklb", "sync() failed: ...")``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from stevedore import DriverManager, ExtensionManager
from stevedore.exception import NoMatches
from stevedore.extension import Extension

from .config import Config
from .driver import (
    DRIVER_API_VERSION,
    SUPPORTED_DRIVER_API_VERSIONS,
    Capabilities,
    Driver,
    Problem,
    SyncResult,
)
from .errors import DriverError, LBCoreError, PluginError
from .model import DesiredState, FrontendState, ServiceKey
from .sources.base import Source

LOG = logging.getLogger(__name__)

DRIVERS = "lbcore.drivers"
SOURCES = "lbcore.sources"

EntryPoint = importlib.metadata.EntryPoint
T = TypeVar("T")


def raise_on_load_failure(manager: Any, entry_point: EntryPoint, error: BaseException) -> None:
    """stevedore ``on_load_failure_callback``: fail loudly, naming the entry point."""
    raise PluginError(
        f"cannot load {entry_point.group or manager.namespace} plugin {entry_point.name!r} "
        f"({entry_point.value}): {type(error).__name__}: {error}"
    ) from error


class _InjectedDriverManager(DriverManager):  # type: ignore[misc]
    """A DriverManager over given (unloaded) entry points instead of installed ones."""

    def __init__(self, entry_points: Sequence[EntryPoint], *args: Any, **kwargs: Any) -> None:
        self._injected = list(entry_points)
        super().__init__(*args, **kwargs)

    def list_entry_points(self) -> list[EntryPoint]:
        return self._injected


class _InjectedExtensionManager(ExtensionManager):  # type: ignore[misc]
    def __init__(self, entry_points: Sequence[EntryPoint], *args: Any, **kwargs: Any) -> None:
        self._injected = list(entry_points)
        super().__init__(*args, **kwargs)

    def list_entry_points(self) -> list[EntryPoint]:
        return self._injected


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin, loaded or not."""

    name: str
    target: str  # "module:attribute"
    plugin: Any = None  # the loaded class, None if it failed to load
    error: str = ""  # why it failed to load


class PluginRegistry:
    """The plugins of one entry-point group."""

    def __init__(
        self,
        namespace: str,
        *,
        extensions: Sequence[Extension] | None = None,
        entry_points: Sequence[EntryPoint] | None = None,
    ) -> None:
        if extensions is not None and entry_points is not None:
            raise ValueError("inject extensions or entry_points, not both")
        self.namespace = namespace
        self._extensions = list(extensions) if extensions is not None else None
        self._entry_points = list(entry_points) if entry_points is not None else None

    def names(self) -> list[str]:
        """Installed plugin names, without importing any of them."""
        if self._extensions is not None:
            return sorted({e.name for e in self._extensions})
        eps = self._entry_points
        if eps is None:
            eps = list(importlib.metadata.entry_points(group=self.namespace))
        return sorted({ep.name for ep in eps})

    def load(self, name: str) -> Any:
        """The plugin object (usually a class) registered as ``name``."""
        try:
            if self._extensions is not None:
                matches = [e for e in self._extensions if e.name == name]
                if not matches:
                    raise NoMatches(name)
                manager = DriverManager.make_test_instance(matches[0], namespace=self.namespace)
            else:
                kwargs: dict[str, Any] = {
                    "namespace": self.namespace,
                    "name": name,
                    "on_load_failure_callback": raise_on_load_failure,
                    "on_missing_entrypoints_callback": None,
                }
                if self._entry_points is not None:
                    manager = _InjectedDriverManager(self._entry_points, **kwargs)
                else:
                    manager = DriverManager(**kwargs)
        except NoMatches:
            installed = ", ".join(self.names()) or "none"
            raise PluginError(
                f"no {self.namespace} plugin named {name!r} (installed: {installed})"
            ) from None
        return manager.driver

    def list(self) -> list[PluginInfo]:
        """Every installed plugin; ones that fail to load carry the error."""
        if self._extensions is not None:
            return sorted(
                (PluginInfo(e.name, e.entry_point_target, e.plugin) for e in self._extensions),
                key=lambda p: p.name,
            )
        failed: list[PluginInfo] = []

        def collect(_manager: Any, ep: EntryPoint, error: BaseException) -> None:
            failed.append(PluginInfo(ep.name, ep.value, None, f"{type(error).__name__}: {error}"))

        if self._entry_points is not None:
            manager = _InjectedExtensionManager(
                self._entry_points, self.namespace, on_load_failure_callback=collect
            )
        else:
            manager = ExtensionManager(self.namespace, on_load_failure_callback=collect)
        loaded = [PluginInfo(e.name, e.entry_point_target, e.plugin) for e in manager]
        return sorted(loaded + failed, key=lambda p: p.name)


# ------------------------------------------------------------------- construction


def load_driver_class(registry: PluginRegistry, name: str) -> type[Driver]:
    cls = registry.load(name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise PluginError(
            f"{registry.namespace} plugin {name!r} is {cls!r}, not a subclass of "
            "lbcore.driver.Driver"
        )
    check_api_version(name, cls)
    return cls


def check_api_version(name: str, cls: type[Driver]) -> None:
    """Refuse a driver written for a driver API this core does not support."""
    version = getattr(cls, "api_version", None)
    if version not in SUPPORTED_DRIVER_API_VERSIONS:
        supported = ", ".join(map(str, sorted(SUPPORTED_DRIVER_API_VERSIONS)))
        raise PluginError(
            f"driver {name!r} ({cls.__module__}.{cls.__qualname__}) targets driver API "
            f"version {version!r}, but this lbcore (driver API {DRIVER_API_VERSION}) "
            f"supports {supported}; install a release of the plugin built for driver API "
            f"{DRIVER_API_VERSION}, or an lbcore that supports version {version!r}"
        )


def create_driver(config: Config, registry: PluginRegistry | None = None) -> GuardedDriver:
    """Load ``config.driver`` and construct it with its options and this node."""
    registry = registry or PluginRegistry(DRIVERS)
    cls = load_driver_class(registry, config.driver)
    guard = _Guard(config.driver)
    driver = guard.call("__init__", cls, config.driver_options, config.node)
    return GuardedDriver(driver, name=config.driver)


def create_source(config: Config, registry: PluginRegistry | None = None) -> Source:
    """Load the source plugin ``config.source_kind`` and construct it."""
    registry = registry or PluginRegistry(SOURCES)
    cls = registry.load(config.source_kind)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise PluginError(
            f"{SOURCES} plugin {config.source_kind!r} is {cls!r}, not a subclass of "
            "lbcore.sources.base.Source"
        )
    try:
        return cls(config.source_options, config.path)
    except LBCoreError:
        raise
    except Exception as exc:
        raise PluginError(
            f"source {config.source_kind!r} failed to start: {type(exc).__name__}: {exc}"
        ) from exc


# ------------------------------------------------------------------------ guarding


class _Guard:
    def __init__(self, name: str) -> None:
        self.name = name

    def call(self, method: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except LBCoreError:
            raise  # already typed: ConfigError, DriverError, CapacityError...
        except Exception as exc:
            raise DriverError(
                self.name, f"{method}() failed: {type(exc).__name__}: {exc}"
            ) from exc

    def expect(self, method: str, value: Any, kind: type, what: str) -> None:
        if not isinstance(value, kind):
            raise DriverError(self.name, f"{method}() returned {value!r}, expected {what}")


class GuardedDriver:
    """A driver whose every call returns what the contract says or raises typed errors.

    Errors the driver raises on purpose (``LBCoreError`` subclasses) pass through;
    anything else becomes ``DriverError`` naming the driver and the call, with the
    original exception chained (shown with ``--debug``).
    """

    def __init__(self, driver: Driver, *, name: str | None = None) -> None:
        self.inner = driver
        self.name = name or getattr(driver, "name", type(driver).__name__)
        self._guard = _Guard(self.name)

    @staticmethod
    def capabilities_of(name: str, cls: Any) -> Capabilities:
        """A driver class's capabilities, without constructing it (``lbcore drivers``)."""
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            raise PluginError(f"{cls!r} is not a subclass of lbcore.driver.Driver")
        guard = _Guard(name)
        caps = guard.call("capabilities", cls.capabilities)
        guard.expect("capabilities", caps, Capabilities, "Capabilities")
        return caps

    def capabilities(self) -> Capabilities:
        return self.capabilities_of(self.name, type(self.inner))

    def check(self) -> list[Problem]:
        problems = self._guard.call("check", self.inner.check)
        self._guard.expect("check", problems, list, "a list of Problem")
        return problems

    def setup(self) -> None:
        self._guard.call("setup", self.inner.setup)

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        result = self._guard.call("sync", self.inner.sync, state, changed)
        self._guard.expect("sync", result, SyncResult, "SyncResult")
        return result

    def dump(self) -> list[FrontendState]:
        frontends = self._guard.call("dump", self.inner.dump)
        self._guard.expect("dump", frontends, list, "a list of FrontendState")
        return frontends

    def cleanup(self) -> None:
        self._guard.call("cleanup", self.inner.cleanup)

    def close(self) -> None:
        self._guard.call("close", self.inner.close)

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        pressure = self._guard.call("map_pressure", self.inner.map_pressure)
        self._guard.expect("map_pressure", pressure, dict, "a dict of name -> (used, max)")
        return pressure
