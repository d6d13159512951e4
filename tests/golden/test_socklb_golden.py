"""Golden tests: Kubernetes YAML in, the socket-LB maps out, as a readable dump.

Each ``scenarios/NAME.yaml`` (with an optional ``NAME.node`` naming this node and its
addresses) is converted, validated, expanded for the node, filtered by socklb's
capabilities and rendered into empty maps; the dump must equal ``NAME.socklb.txt``.
Regenerate after an intended change with ``LBCORE_UPDATE_GOLDEN=1 pytest tests/golden``
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbcore.expand import IncrementalExpander
from lbcore.k8s import load_file
from lbcore.model import NodeInfo
from lbcore_socklb.driver import SockLBDriver
from lbcore_socklb.image import format_image
from lbcore_socklb.plan import image_for

HERE = Path(__file__).parent / "scenarios"
SCENARIOS = sorted(p.stem for p in HERE.glob("*.yaml"))


def node_for(name: str) -> NodeInfo:
    path = HERE / f"{name}.node"
    if not path.exists():
        return NodeInfo("worker", ("172.18.0.3",))
    node_name, *addresses = path.read_text().split()
    return NodeInfo(node_name, tuple(addresses))


def render(name: str) -> str:
    objects = load_file(str(HERE / f"{name}.yaml"))
    caps = SockLBDriver.capabilities()
    expander = IncrementalExpander(node_for(name), admit=caps.unsupported)
    state = expander.expand(objects, None)
    skipped = [f"skipped {s.service}{' ' + str(s.frontend) if s.frontend else ''}: {s.reason}"
               for s in state.skipped]
    return format_image(image_for(state.frontends)) + "".join(f"{line}\n" for line in skipped)


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_map_dump(name: str) -> None:
    expected_path = HERE / f"{name}.socklb.txt"
    got = render(name)
    if os.environ.get("LBCORE_UPDATE_GOLDEN"):
        expected_path.write_text(got)
    assert expected_path.exists(), f"{expected_path} missing; rerun with LBCORE_UPDATE_GOLDEN=1"
    assert got == expected_path.read_text()


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 3
