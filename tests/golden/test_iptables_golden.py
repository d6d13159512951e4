"""Golden tests for the iptables driver: Kubernetes YAML in, the full
``iptables-restore`` text out, plus a packet-flow table from the tracer.

For each ``scenarios/NAME.yaml`` (node from ``NAME.node``), ``iptables/NAME.txt`` holds
the rendered ruleset and, for every frontend, what the tracer says happens to a first
packet from a pod (10.0.9.9, cluster CIDR 10.0.0.0/16), from outside (192.0.2.1) and
from the node itself. Regenerate with ``LBCORE_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbcore.expand import IncrementalExpander
from lbcore.k8s import load_file
from lbcore.model import NodeInfo
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.render import RenderOptions, render
from lbcore_iptables.ruleset import parse
from lbcore_iptables.tracer import Packet, format_trace, trace, with_hooks

HERE = Path(__file__).parent / "scenarios"

OUT = Path(__file__).parent / "iptables"
# the shared scenarios, and iptables-only ones kept next to the expected output
SCENARIOS = sorted([p.stem for p in HERE.glob("*.yaml")] + [p.stem for p in OUT.glob("*.yaml")])


def _source(name: str, ext: str) -> Path:
    own = OUT / f"{name}.{ext}"
    return own if own.exists() or (OUT / f"{name}.yaml").exists() else HERE / f"{name}.{ext}"


def node_for(name: str) -> NodeInfo:
    path = _source(name, "node")
    if not path.exists():
        return NodeInfo("worker", ("172.18.0.3",))
    node_name, *addresses = path.read_text().split()
    return NodeInfo(node_name, tuple(addresses))
POD, OUTSIDE = "10.0.9.9", "192.0.2.1"


def render_scenario(name: str) -> str:
    node = node_for(name)
    objects = load_file(str(_source(name, "yaml")))
    expander = IncrementalExpander(node, admit=IptablesDriver.capabilities().unsupported)
    state = expander.expand(objects, None)
    opts = RenderOptions(cluster_cidr="10.0.0.0/16", node_addresses=node.addresses)
    text = render(state, opts)
    rs = with_hooks(parse(text))
    flows = []
    for fe in state.frontends:
        pkt = (fe.protocol.lower(), fe.ip, fe.port)
        for label, src, hook in (("pod", POD, "PREROUTING"), ("outside", OUTSIDE, "PREROUTING"),
                                 ("node", node.addresses[0], "OUTPUT")):
            result = trace(rs, Packet(src, *pkt), hook, node.addresses)
            flows.append(f"{fe.type.value} {fe.address} from {label}: {format_trace(result)}")
    skipped = [f"skipped {s.service}: {s.reason}" for s in state.skipped]
    return text + "\n# flows\n" + "\n".join(flows + skipped) + "\n"


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_ruleset_and_flows(name: str) -> None:
    path = OUT / f"{name}.iptables.txt"
    got = render_scenario(name)
    if os.environ.get("LBCORE_UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"{path} missing; rerun with LBCORE_UPDATE_GOLDEN=1"
    assert got == path.read_text()


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_jump_targets_a_defined_chain(name: str) -> None:
    rs = parse(render_scenario(name).split("\n# flows\n")[0])
    builtin = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE", ""}
    for table, chains in rs.tables.items():
        for rules in chains.values():
            for r in rules:
                assert r.target in builtin or r.target in chains, (table, r.chain, r.target)
