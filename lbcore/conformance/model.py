"""What a conformance scenario needs, what it found, and how the two are compared.

A scenario declares its :class:`Needs`; :func:`missing` compares them with a driver's
:class:`~lbcore.driver.Capabilities`. A scenario whose needs the driver does not claim is
*skipped* and the report names the capability; it is never counted as passed. A scenario
the driver claims and fails is a failure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..driver import Capabilities
from ..model import FrontendType

if TYPE_CHECKING:
    from .env import ConformanceEnv


class Failed(AssertionError):
    """A scenario observed something the Kubernetes Service contract forbids."""


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Needs:
    """The capabilities a scenario exercises (all must be claimed for it to run)."""

    frontend_types: frozenset[FrontendType] = frozenset({FrontendType.CLUSTER_IP})
    protocols: frozenset[str] = frozenset({"TCP"})
    clients: frozenset[str] = frozenset({"pod"})
    session_affinity: bool = False
    external_traffic_local: bool = False
    internal_traffic_local: bool = False


def missing(needs: Needs, caps: Capabilities) -> list[str]:
    """The capabilities ``needs`` asks for that ``caps`` does not claim."""
    out = [f"frontend type {t.value}" for t in sorted(needs.frontend_types - caps.frontend_types)]
    out += [f"protocol {p}" for p in sorted(needs.protocols - caps.protocols)]
    if 4 not in caps.families:
        out.append("IPv4")
    out += [f"clients {c}" for c in sorted(needs.clients - caps.served_clients())]
    for flag in ("session_affinity", "external_traffic_local", "internal_traffic_local"):
        if getattr(needs, flag) and not getattr(caps, flag):
            out.append(flag)
    return out


ScenarioFn = Callable[["ConformanceEnv"], str]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # the Kubernetes e2e behaviour it checks
    needs: Needs
    fn: ScenarioFn = field(compare=False, repr=False)


@dataclass(frozen=True)
class Result:
    driver: str
    scenario: str
    status: Status
    detail: str  # evidence on pass, what went wrong on fail, the missing capability on skip
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"driver": self.driver, "scenario": self.scenario, "status": self.status.value,
                "detail": self.detail, "seconds": round(self.seconds, 2)}
