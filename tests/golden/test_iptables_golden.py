"""Golden tests for the iptables driver: Kubernetes YAML in, the full
``iptables-restore`` text out, plus a packet-flow table from the tracer.

For each ``scenarios/NAME.yaml`` (node from ``NAME.node``), ``iptables/NAME.txt`` holds
the rendered rulesets (iptables, then ip6tables after ``# ip6tables``) and, for every
frontend, what the tracer says happens to a first packet from a pod (10.0.9.9 in
cluster CIDR 10.0.0.0/16; fd00:244::9:9 in fd00:244::/48), from outside (192.0.2.1,
2001:db8::1) and from the node itself. Regenerate with
``LBCORE_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbcore.expand import IncrementalExpander, node_addresses
from lbcore.k8s import load_file
from lbcore.model import NodeInfo, ip_family
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.render import RenderOptions, node_port_addresses, render
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


POD = {4: "10.0.9.9", 6: "fd00:244::9:9"}
OUTSIDE = {4: "192.0.2.1", 6: "2001:db8::1"}
CLUSTER_CIDR = {4: "10.0.0.0/16", 6: "fd00:244::/48"}
V6_MARK = "\n# ip6tables\n"


def render_scenario(name: str) -> str:
    node = node_for(name)
    objects = load_file(str(_source(name, "yaml")))
    # as the agent's loop builds it for a driver that answers NodePorts on its own node
    expander = IncrementalExpander(node, admit=IptablesDriver.capabilities().unsupported,
                                   local_node_ports=True)
    state = expander.expand(objects, None)
    node_ips = node_addresses(objects, node, local_only=True)
    texts, rulesets = {}, {}
    for family in (4, 6):
        opts = RenderOptions(cluster_cidr=CLUSTER_CIDR[family], family=family,
                             node_addresses=node_port_addresses(state, node.addresses, family))
        texts[family] = render(state, opts)
        rulesets[family] = with_hooks(parse(texts[family]))
    flows = []
    for fe in state.frontends:
        pkt = (fe.protocol.lower(), fe.ip, fe.port)
        node_ip = next((ip for ip in node_ips if ip_family(ip) == fe.family), "")
        for label, src, hook in (("pod", POD[fe.family], "PREROUTING"),
                                 ("outside", OUTSIDE[fe.family], "PREROUTING"),
                                 ("node", node_ip, "OUTPUT")):
            result = trace(rulesets[fe.family], Packet(src, *pkt), hook, node_ips)
            flows.append(f"{fe.type.value} {fe.address} from {label}: {format_trace(result)}")
    skipped = [f"skipped {s.service}: {s.reason}" for s in state.skipped]
    return (texts[4] + V6_MARK + texts[6] + "\n# flows\n" + "\n".join(flows + skipped)
            + "\n")


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
    for text in render_scenario(name).split("\n# flows\n")[0].split(V6_MARK):
        rs = parse(text)
        builtin = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE", ""}
        for table, chains in rs.tables.items():
            for rules in chains.values():
                for r in rules:
                    assert r.target in builtin or r.target in chains, (table, r.chain, r.target)
