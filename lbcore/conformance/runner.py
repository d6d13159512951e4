"""Run the conformance scenarios against one driver on one shared lab cluster.

``run_conformance("nftables")`` builds the cluster, starts one agent per node, runs each
selected scenario (skipping, with the reason, those whose needs the driver does not
claim), removes each scenario's services after it, and tears everything down — also on
failure or Ctrl-C.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable, Sequence

from ..errors import LBCoreError
from ..lab import NetLab
from ..lab.procs import NetLabError
from ..plugins import DRIVERS, GuardedDriver, PluginRegistry, load_driver_class
from .env import ConformanceEnv
from .model import Failed, Result, Scenario, Status, missing
from .scenarios import SCENARIOS


class ConformanceError(LBCoreError):
    """The suite could not run at all (not root, driver does not load, lab failed)."""


def select(keyword: str | None, scenarios: Sequence[Scenario] = SCENARIOS) -> list[Scenario]:
    """Scenarios whose name matches ``keyword`` (a substring or a glob); all if None."""
    if not keyword:
        return list(scenarios)
    chosen = [s for s in scenarios if keyword in s.name or fnmatch.fnmatch(s.name, keyword)]
    if not chosen:
        names = ", ".join(s.name for s in scenarios)
        raise ConformanceError(f"no scenario matches {keyword!r} (scenarios: {names})")
    return chosen


def run_one(env: ConformanceEnv, sc: Scenario) -> Result:
    """One scenario on ``env``: skip if not claimed, else pass or fail; services removed."""
    lacks = missing(sc.needs, env.caps)
    if lacks:
        return Result(env.driver, sc.name, Status.SKIP,
                      f"capability not claimed: {', '.join(lacks)}")
    started = time.monotonic()
    try:
        detail = sc.fn(env)
        status = Status.PASS
    except Failed as exc:
        detail, status = str(exc), Status.FAIL
    except (NetLabError, OSError, ValueError) as exc:
        detail, status = f"{type(exc).__name__}: {exc}", Status.FAIL
    finally:
        env.reset()
    return Result(env.driver, sc.name, status, detail, time.monotonic() - started)


def start_env(driver: str, registry: PluginRegistry | None = None) -> tuple[NetLab, ConformanceEnv]:
    """A lab and its conformance cluster with ``driver``'s agents (caller closes both)."""
    if os.geteuid() != 0:
        raise ConformanceError("the conformance suite needs root (network namespaces, "
                               "cgroups); run it as root")
    cls = load_driver_class(registry or PluginRegistry(DRIVERS), driver)
    caps = GuardedDriver.capabilities_of(driver, cls)
    lab = NetLab()
    try:
        return lab, ConformanceEnv.create(lab, driver, caps)
    except BaseException as exc:
        lab.close()
        if isinstance(exc, NetLabError | OSError):
            raise ConformanceError(f"driver {driver}: the lab cluster did not come up: "
                                   f"{exc}") from exc
        raise


def run_conformance(driver: str, keyword: str | None = None, *,
                    on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Every selected scenario against ``driver``; results in scenario order."""
    chosen = select(keyword)
    lab, env = start_env(driver)
    results = []
    try:
        for sc in chosen:
            result = run_one(env, sc)
            results.append(result)
            if on_result:
                on_result(result)
    finally:
        problems = env.close()
        lab.close()
    if problems:
        raise ConformanceError(f"driver {driver}: cleanup failed: {'; '.join(problems)}")
    return results


def loadable_drivers(registry: PluginRegistry | None = None) -> list[str]:
    """Installed drivers that load (the others cannot be tested)."""
    registry = registry or PluginRegistry(DRIVERS)
    out = []
    for info in registry.list():
        if info.plugin is None:
            continue
        try:
            GuardedDriver.capabilities_of(info.name, load_driver_class(registry, info.name))
        except LBCoreError:
            continue
        out.append(info.name)
    return out


def summary(results: Iterable[Result]) -> dict[str, int]:
    counts = {s.value: 0 for s in Status}
    for r in results:
        counts[r.status.value] += 1
    return counts
