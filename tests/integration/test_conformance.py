"""Every built-in driver runs the conformance suite (lbcore.conformance):
Kubernetes Service behaviours checked with real traffic on one shared 3-node namespace
cluster per driver. A scenario the driver does not claim is skipped with the capability
named; a claimed one that fails fails here. ``--lbcore-driver NAME`` narrows the run.
Plugins run it from their own tests (plugins/lbcore-nftables/tests/test_conformance.py)."""

from __future__ import annotations

import pytest

from lbcore.conformance.model import Status

pytest_plugins = ["lbcore.conformance.pytest_plugin"]
pytestmark = pytest.mark.netns
CONFORMANCE_DRIVERS = ["socklb", "iptables", "tcnodeport"]


def test_conformance(conformance_result):
    result = conformance_result.check()
    assert result.status is Status.PASS, result.detail
