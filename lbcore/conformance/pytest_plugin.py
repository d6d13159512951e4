"""Run the conformance suite from any driver's test suite.

In a test module (or the root ``conftest.py``)::

    pytest_plugins = ["lbcore.conformance.pytest_plugin"]
    CONFORMANCE_DRIVERS = ["nftables"]        # optional; default: every driver that loads

    def test_conformance(conformance_result):
        conformance_result.check()            # pass, or pytest.fail with the evidence

Tests that use ``conformance_result`` are parametrized over (driver, scenario); one lab
cluster is built per driver and shared by its scenarios (session scope), and removed at
the end, also after a failure. ``--lbcore-driver NAME`` (repeatable) overrides the
drivers; ``-k`` selects scenarios by name as usual. A scenario needing a capability the
driver does not claim is *skipped* with the capability named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from .model import Result, Scenario, Status
from .scenarios import SCENARIOS


@dataclass(frozen=True)
class ConformanceOutcome:
    result: Result

    def check(self) -> Result:
        if self.result.status is Status.FAIL:
            pytest.fail(f"{self.result.driver} {self.result.scenario}: {self.result.detail}",
                        pytrace=False)
        return self.result


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--lbcore-driver", action="append", default=[],
                     help="driver(s) the conformance tests run against (default: all loading)")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "conformance: lbcore driver conformance scenarios")


def _drivers(metafunc: Any) -> list[str]:
    chosen = metafunc.config.getoption("--lbcore-driver")
    if chosen:
        return list(chosen)
    declared = getattr(metafunc.module, "CONFORMANCE_DRIVERS", None)
    if declared is not None:
        return list(declared)
    from .runner import loadable_drivers

    return loadable_drivers()


def pytest_generate_tests(metafunc: Any) -> None:
    if "conformance_result" not in metafunc.fixturenames:
        return
    metafunc.parametrize("conformance_driver", _drivers(metafunc), scope="session")
    metafunc.parametrize("conformance_scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])


@pytest.fixture(scope="session")
def conformance_env(conformance_driver: str) -> Any:
    """The shared cluster with ``conformance_driver``'s agents (one per driver)."""
    if os.geteuid() != 0:
        pytest.skip("the conformance suite needs root (network namespaces, cgroups)")
    from .runner import start_env

    lab, env = start_env(conformance_driver)
    try:
        yield env
    finally:
        problems = env.close()
        lab.close()
        assert not problems, f"driver {conformance_driver}: cleanup failed: {problems}"


@pytest.fixture
def conformance_result(conformance_env: Any, conformance_scenario: Scenario) -> ConformanceOutcome:
    """Runs the scenario; skips (naming the capability) when the driver does not claim it."""
    from .runner import run_one

    result = run_one(conformance_env, conformance_scenario)
    if result.status is Status.SKIP:
        pytest.skip(f"{result.driver}: {result.detail}")
    return ConformanceOutcome(result)
