"""The driver conformance suite: Kubernetes Service behaviours (from the e2e tests
test/e2e/network/service.go and conntrack.go) checked with real traffic on the namespace
lab against any installed driver.

- :mod:`.model` — ``Needs`` (what a scenario exercises), ``Result`` (pass / fail / skip);
- :mod:`.env` — the shared cluster of one run and the traffic verbs scenarios use;
- :mod:`.scenarios`, :mod:`.scenarios_policy` — the scenarios (``SCENARIOS``);
- :mod:`.runner` — ``run_conformance(driver)``; :mod:`.cli` — ``lbcore conformance``;
- :mod:`.pytest_plugin` — fixtures so any driver's own test suite runs the scenarios.

A scenario whose needs the driver's ``Capabilities`` do not claim is reported as skipped
with the capability named; a claimed one that fails is a failure.
"""

from .model import Failed, Needs, Result, Scenario, Status, missing

__all__ = ["Failed", "Needs", "Result", "Scenario", "Status", "missing"]
