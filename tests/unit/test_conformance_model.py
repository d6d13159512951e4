"""The conformance suite's bookkeeping (no lab): what a scenario needs against what a
driver claims, scenario selection, and that an unclaimed scenario is a skip, not a pass."""

from __future__ import annotations

import pytest

from lbcore.conformance.model import Needs, Status, missing
from lbcore.conformance.runner import ConformanceError, run_one, select
from lbcore.conformance.scenarios import SCENARIOS
from lbcore.driver import Capabilities
from lbcore.model import FrontendType

ISSUE_SCENARIOS = {
    "endpoints-0-1-2-1-0", "multiport", "tcp-udp-same-port", "no-endpoints-rejected",
    "session-affinity", "proxy-name-headless-labels", "source-ip-preserved", "hairpin",
    "nodeport", "external-traffic-local", "internal-traffic-local", "terminating-endpoints",
    "udp-fixed-source-port-swap", "delete-one-service",
}


def test_every_scenario_of_the_issue_is_there_once():
    names = [s.name for s in SCENARIOS]
    assert sorted(names) == sorted(ISSUE_SCENARIOS)


def test_missing_names_each_unclaimed_capability():
    caps = Capabilities(frontend_types=frozenset({FrontendType.NODE_PORT}),
                        protocols=frozenset({"TCP"}), families=frozenset({6}))
    needs = Needs(protocols=frozenset({"TCP", "UDP"}), session_affinity=True,
                  clients=frozenset({"pod", "host"}))
    assert missing(needs, caps) == [
        "frontend type ClusterIP", "protocol UDP", "IPv4", "clients host", "clients pod",
        "session_affinity"]
    full = Capabilities(session_affinity=True, clients=frozenset({"pod", "host"}))
    assert missing(needs, full) == []


def test_select_by_substring_or_glob_and_unknown_is_an_error():
    assert [s.name for s in select("affinity")] == ["session-affinity"]
    assert {s.name for s in select("*-local")} == {"external-traffic-local",
                                                   "internal-traffic-local"}
    with pytest.raises(ConformanceError, match="no scenario matches 'nope'"):
        select("nope")


class _NoLabEnv:
    """An env a skipped scenario must never touch (any traffic verb would raise)."""

    driver = "fake"
    caps = Capabilities(frontend_types=frozenset({FrontendType.NODE_PORT}))

    def reset(self) -> None:
        raise AssertionError("a skipped scenario must not run")


def test_unclaimed_scenario_is_skipped_with_the_capability_named():
    (sc,) = select("session-affinity")
    result = run_one(_NoLabEnv(), sc)  # type: ignore[arg-type]
    assert result.status is Status.SKIP
    assert "frontend type ClusterIP" in result.detail and "session_affinity" in result.detail
