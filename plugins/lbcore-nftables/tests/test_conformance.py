"""The conformance suite (lbcore.conformance) against this plugin: real traffic on a
3-node namespace cluster, one agent per node. Root only; ~1 minute."""

from __future__ import annotations

import pytest

pytest_plugins = ["lbcore.conformance.pytest_plugin"]
pytestmark = pytest.mark.netns
CONFORMANCE_DRIVERS = ["nftables"]


def test_conformance(conformance_result):
    result = conformance_result.check()
    assert result.status.value == "pass", result.detail
