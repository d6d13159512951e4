"""The iptables driver over IPv6 (ip6tables) and dual stack, with real traffic in the
lab of test_iptables.py (every address there has an IPv6 twin), legacy and nft."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections import Counter

import pytest

from .test_iptables import (
    BACKENDS_IN_NFT,
    CLIENT_IP,
    CLIENT_IP6,
    DENIED_IP6,
    EXT_IP6,
    LB_IP6,
    NODE_BRIDGE_IP6,
    NODE_IP,
    NODE_IP6,
    OUTSIDE_IP6,
    VIP,
    VIP6,
    agent,  # noqa: F401 - fixtures
    backend_ips,
    dual_eps,
    eps,
    ilab,  # noqa: F401
    svc,
    udp_ask,
)

pytestmark = pytest.mark.netns
both_backends = pytest.mark.parametrize("agent", BACKENDS_IN_NFT, indirect=True)


@both_backends
def test_dual_stack_service_answers_on_every_ipv6_frontend(ilab, agent):  # noqa: F811
    ilab.http()
    web = svc("web", (VIP, VIP6), node_port=30090, external_ips=(EXT_IP6,), lb_ips=(LB_IP6,))
    result = agent.sync([web], dual_eps(web, ilab))
    assert result.details["families"]["ipv6"]["services_written"] == 1
    seen = Counter(ilab.whoami(ilab.client, f"http://[{VIP6}]")["backend"] for _ in range(24))
    assert set(seen) == {"b0", "b1", "b2"}, seen
    who = ilab.whoami(ilab.client, f"http://[{VIP6}]")
    assert who["client_ip"] == CLIENT_IP6  # pod inside the IPv6 cluster CIDR: no SNAT
    assert ilab.whoami(ilab.client, f"http://{VIP}")["client_ip"] == CLIENT_IP  # and IPv4
    for url in (f"http://[{NODE_IP6}]:30090", f"http://[{EXT_IP6}]", f"http://[{LB_IP6}]"):
        who = ilab.whoami(ilab.outside, url)
        assert who["client_ip"] == NODE_BRIDGE_IP6, (url, who)  # external: masqueraded
    assert ilab.whoami(ilab.outside, f"http://{NODE_IP}:30090")["backend"].startswith("b")
    rows = {(r.address.ip, r.address.port): r for r in agent.driver.dump()}
    assert {rows[VIP6, 80].type, rows[NODE_IP6, 30090].type, rows[EXT_IP6, 80].type,
            rows[LB_IP6, 80].type} == {"ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"}
    assert sorted(b.ip for b in rows[VIP6, 80].backends) == backend_ips(ilab, family=6)
    assert sorted(b.ip for b in rows[VIP, 80].backends) == backend_ips(ilab)
    saved = agent.driver.ruleset_text(6)
    assert f"-d {VIP6}/128" in saved and "--to-destination [fd00:10::100]:80" in saved


def test_ipv6_etp_local_preserves_the_source_and_uses_local_endpoints(ilab, agent):  # noqa: F811
    ilab.http()
    web = svc("web", VIP6, node_port=30091, etp_local=True)
    ips = backend_ips(ilab, family=6)
    agent.sync([web], [eps(web, ips, nodes={ips[0]: "node-b", ips[1]: "node-a",
                                            ips[2]: "node-b"})])
    for _ in range(6):
        who = ilab.whoami(ilab.outside, f"http://[{NODE_IP6}]:30091", source=OUTSIDE_IP6)
        assert who == who | {"backend": "b1", "client_ip": OUTSIDE_IP6}, who


def test_ipv6_source_ranges_admit_one_source_and_drop_another(ilab, agent):  # noqa: F811
    ilab.http()
    web = svc("web", VIP6, lb_ips=(LB_IP6,), node_port=30092, ranges=(f"{OUTSIDE_IP6}/128",))
    agent.sync([web], [eps(web, backend_ips(ilab, family=6))])
    who = ilab.whoami(ilab.outside, f"http://[{LB_IP6}]", source=OUTSIDE_IP6)
    assert who["backend"].startswith("b")
    r = ilab.get(ilab.outside, f"http://[{LB_IP6}]", source=DENIED_IP6, timeout=1)
    assert r.returncode == 28, r  # dropped, not refused


@both_backends
def test_ipv6_no_endpoints_is_refused_at_once(ilab, agent):  # noqa: F811
    web = svc("web", VIP6)
    agent.sync([web], [eps(web, [])])
    started = time.monotonic()
    r = ilab.lab.curl(ilab.client, f"http://[{VIP6}]/", timeout=3)
    assert r.returncode == 7, r  # icmp6-port-unreachable: connection refused
    assert time.monotonic() - started < 1.5
    assert "--reject-with icmp6-port-unreachable" in agent.driver.ruleset_text(6)


def test_ipv6_udp_client_with_fixed_port_follows_an_endpoint_swap(ilab, agent):  # noqa: F811
    for i, (_ip, _ip6, ns) in enumerate(ilab.backends[:2]):
        ilab.servers.append(ilab.lab.udp_server(ns, f"b{i}", 5353))
    ips = backend_ips(ilab, 2, family=6)
    echo = svc("echo", VIP6, 5353, "UDP")
    agent.sync([echo], [eps(echo, ips[:1], port=5353)])
    assert udp_ask(ilab, VIP6).startswith("backend=b0")
    result = agent.sync([echo], [eps(echo, ips[1:], port=5353)], frozenset({echo.key}))
    assert result.details["conntrack_deleted"] >= 1  # the IPv6 entry, through AF_INET6
    assert udp_ask(ilab, VIP6).startswith("backend=b1")


IN_NODE = textwrap.dedent("""
    import json, sys
    from lbcore.expand import IncrementalExpander
    from lbcore.model import NodeInfo
    from lbcore.testing import cluster, endpoint_slice, service
    from lbcore_iptables.driver import IptablesDriver
    node = NodeInfo("node-a", ())
    driver = IptablesDriver({"cluster_cidr": "10.244.0.0/16,fd00:10::/48"}, node)
    svcs = [service("web", sys.argv[1], port=80), service("web6", sys.argv[2], port=80)]
    slices = [endpoint_slice(svcs[0], sys.argv[3].split(","), port=80),
              endpoint_slice(svcs[1], sys.argv[4].split(","), port=80)]
    state = IncrementalExpander(node).expand(cluster(svcs, slices), None)
    driver.sync(state, None)
    if sys.argv[5] == "cleanup":
        driver.cleanup()
    print(json.dumps([row.to_json() for row in driver.dump()]))
""")


def test_in_the_current_namespace_as_a_daemonset_runs(ilab):  # noqa: F811
    # no netns option: the driver programs (and reads back, iptc for both families)
    # the namespace it runs in
    ilab.http()
    args = [VIP, VIP6, ",".join(backend_ips(ilab)), ",".join(backend_ips(ilab, family=6))]
    r = ilab.lab.run(ilab.node, [sys.executable, "-c", IN_NODE, *args, "keep"], timeout=30)
    assert r.returncode == 0, r.stderr
    rows = {row["frontend"]["ip"]: row for row in json.loads(r.stdout)}
    assert {VIP, VIP6} <= set(rows)
    assert sorted(b["ip"] for b in rows[VIP6]["backends"]) == backend_ips(ilab, family=6)
    assert ilab.whoami(ilab.client, f"http://[{VIP6}]")["backend"].startswith("b")
    assert ilab.whoami(ilab.client, f"http://{VIP}")["backend"].startswith("b")
    r = ilab.lab.run(ilab.node, [sys.executable, "-c", IN_NODE, *args, "cleanup"], timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
