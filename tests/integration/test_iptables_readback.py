"""Read back of the legacy tables, three ways, on rulesets the driver really applied.

For every golden scenario (ClusterIP, NodePort, ExternalIP, LoadBalancer with source
ranges, affinity, ETP Local, no endpoints -> REJECT, MARK, masquerade; IPv4 and IPv6),
written by the driver into a lab namespace, plus a few foreign rules the decoder does not
know: the raw-entry decoder, python-iptables' save() path and ``iptables-legacy-save`` +
``parse`` must give the same Ruleset and the same ``lbcore services`` rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbcore.expand import IncrementalExpander
from lbcore.k8s import load_file
from lbcore.lab import NetLab
from lbcore.model import NodeInfo
from lbcore_iptables.driver import IptablesDriver
from lbcore_iptables.readback import frontends, read_ruleset
from lbcore_iptables.ruleset import parse

GOLDEN = Path(__file__).parent.parent / "golden"
SCENARIOS = sorted([*(GOLDEN / "scenarios").glob("*.yaml"), *(GOLDEN / "iptables").glob("*.yaml")])
NODE = NodeInfo("worker", ("172.18.0.3", "fd00:18::3"))

# rules of other software in the same tables: unknown extensions, options and
# revisions the decoder leaves to python-iptables (each one a slow-path rule)
FOREIGN = {
    4: ["-A KUBE-FOREIGN -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A KUBE-FOREIGN -p udp -m udp --sport 53 -j RETURN",
        "-A KUBE-FOREIGN -m limit --limit 5/sec -j ACCEPT",
        "-A KUBE-FOREIGN -p tcp -m tcp --dport 8 -j DNAT --to-destination 10.1.1.1:80-90",
        "-A KUBE-FOREIGN ! -d 10.9.0.0/16 -p tcp -j MASQUERADE --to-ports 1000-2000"],
    6: ["-A KUBE-FOREIGN -o eth1 -p udp -m udp --dport 53 -j ACCEPT",
        "-A KUBE-FOREIGN -m limit --limit 5/sec -j ACCEPT",
        "-A KUBE-FOREIGN -p tcp -m tcp --dport 8 -j DNAT --to-destination [fd00::1]:80-90"],
}
# and foreign rules it does decode
DECODED = {4: ["-A KUBE-FOREIGN -s 10.1.2.0/24 -p sctp -m sctp --dport 9 -j RETURN",
               "-A KUBE-FOREIGN ! -s 10.3.0.0/16 -m mark --mark 0x1 -j RETURN"],
           6: ["-A KUBE-FOREIGN ! -s fd00:3::/64 -m mark --mark 0x1/0x3 -j RETURN"]}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_decoder_reads_what_python_iptables_and_iptables_save_read(netlab: NetLab,
                                                                   scenario: Path):
    node_ns = netlab.netns("node")
    driver = IptablesDriver({"netns": node_ns.name, "cluster_cidr": "10.0.0.0/16,fd00:244::/48"},
                            NODE)
    expander = IncrementalExpander(NODE, admit=IptablesDriver.capabilities().unsupported,
                                   local_node_ports=True)
    driver.setup()
    try:
        driver.sync(expander.expand(load_file(str(scenario)), None), None)
        for family, ft in driver.tables.items():
            lines = FOREIGN[family] + DECODED[family]
            ft.ipt.restore("*nat\n:KUBE-FOREIGN - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n")
            fast = read_ruleset(driver.opts.netns_path, "legacy", ft.ipt.save, family)
            slow = read_ruleset(driver.opts.netns_path, "legacy", ft.ipt.save, family,
                                decode=False)
            saved = parse(driver.ruleset_text(family))
            rules = sum(len(r) for chains in fast.tables.values() for r in chains.values())
            assert rules > 20 and slow.slow_rules == rules
            assert fast.slow_rules == len(FOREIGN[family]), family  # the rest decoded
            assert fast.chain("nat", "KUBE-FOREIGN")[0].other  # -i / -o kept, not lost
            assert fast == slow, family
            assert fast == saved, family
            assert frontends(fast) == frontends(slow) == frontends(saved)
            assert frontends(fast) or family == 6
    finally:
        driver.cleanup()
