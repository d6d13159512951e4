"""iptables driver, pure parts: chain names, render (both families, large cluster mode),
partial assemble, tracer, read back rows."""

from __future__ import annotations

import base64
import hashlib

import pytest

from lbcore.errors import ConfigError
from lbcore.model import NodeInfo, ServiceKey
from lbcore.testing import cluster, endpoint_slice, naive_expand, service
from lbcore_iptables.apply import offending_lines
from lbcore_iptables.driver import IptablesOptions
from lbcore_iptables.naming import endpoint_chain, service_chain
from lbcore_iptables.readback import frontends
from lbcore_iptables.render import (
    RenderOptions,
    assemble,
    changed_shared,
    render,
    render_all,
    service_chains,
    shared_chains,
)
from lbcore_iptables.ruleset import parse
from lbcore_iptables.tracer import Outcome, Packet, trace, with_hooks

NODE = NodeInfo("n", ("172.18.0.2", "fd00:18::2"))
OPTS = RenderOptions(cluster_cidr="10.0.0.0/8", node_addresses=NODE.addresses)
OPTS6 = RenderOptions(cluster_cidr="fd00:10::/32", node_addresses=NODE.addresses, family=6)


def state(n_eps: int = 4, affinity: int | None = None, node_port: int | None = None,
          v6: bool = False):
    ip = "fd00:96::1" if v6 else "10.96.0.1"
    svc = service("web", ip, affinity=affinity, node_port=node_port)
    eps = [f"fd00:10::{i + 1}" if v6 else f"10.1.0.{i + 1}" for i in range(n_eps)]
    objs = cluster([svc], [endpoint_slice(svc, eps)])
    node = NodeInfo("n", tuple(a for a in NODE.addresses if (":" in a) == v6))
    return naive_expand(objs, node)


def test_chain_names_are_kube_proxys_hash() -> None:
    digest = hashlib.sha256(b"ns/web:httptcp").digest()
    assert service_chain("KUBE-SVC-", "ns/web:http", "TCP") == \
        "KUBE-SVC-" + base64.b32encode(digest).decode()[:16]
    a = endpoint_chain("ns/web:http", "TCP", "10.0.0.1:80")
    assert a.startswith("KUBE-SEP-") and len(a) == 25
    assert a != endpoint_chain("ns/web:http", "UDP", "10.0.0.1:80")


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_statistic_rules_give_each_endpoint_1_over_n(n: int) -> None:
    rs = with_hooks(parse(render(state(n), OPTS)))
    result = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 80), "PREROUTING", NODE.addresses)
    assert len(result) == n
    assert all(abs(p - 1 / n) < 1e-6 for p in result.values()), result


def test_no_endpoints_rejects_and_outside_clients_are_masqueraded() -> None:
    rs = with_hooks(parse(render(state(0), OPTS)))
    pkt = Packet("10.2.0.9", "tcp", "10.96.0.1", 80)
    assert trace(rs, pkt, "PREROUTING", NODE.addresses) == {Outcome("REJECT"): 1.0}
    rs = with_hooks(parse(render(state(1), OPTS)))
    outside = trace(rs, Packet("192.0.2.1", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert outside == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True): 1.0}
    other_port = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 81), "PREROUTING")
    assert other_port == {Outcome("ACCEPT"): 1.0}


def test_hairpin_is_masqueraded_and_affinity_recorded() -> None:
    rs = with_hooks(parse(render(state(1, affinity=30), OPTS)))
    result = trace(rs, Packet("10.1.0.1", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert result == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True, affinity=True): 1.0}
    assert "--rcheck --seconds 30 --reap" in render(state(1, affinity=30), OPTS)


def test_masquerade_all() -> None:
    opts = RenderOptions(masquerade_all=True, node_addresses=NODE.addresses)
    rs = with_hooks(parse(render(state(1), opts)))
    result = trace(rs, Packet("10.2.0.9", "tcp", "10.96.0.1", 80), "PREROUTING")
    assert result == {Outcome("DNAT", "10.1.0.1:8080", masquerade=True): 1.0}


def test_nodeport_reaches_the_service_from_outside() -> None:
    rs = with_hooks(parse(render(state(2, node_port=30080), OPTS)))
    result = trace(rs, Packet("192.0.2.1", "tcp", "172.18.0.2", 30080), "PREROUTING",
                   NODE.addresses)
    assert set(result) == {Outcome("DNAT", f"10.1.0.{i}:8080", masquerade=True) for i in (1, 2)}


def test_partial_assemble_writes_only_what_it_is_given_and_deletes_stale() -> None:
    st = state(2)
    rules = render_all(st, OPTS)
    text = assemble({}, {}, delete={"KUBE-SEP-GONE"})
    assert text == "*nat\n:KUBE-SEP-GONE - [0:0]\n-X KUBE-SEP-GONE\nCOMMIT\n"
    assert assemble({}, {}) == ""  # nothing changed: no restore at all
    only = shared_chains(rules, OPTS, only={("nat", "KUBE-SERVICES")})
    text = assemble(only, {})
    assert "*filter" not in text and ":KUBE-SERVICES - [0:0]" in text
    assert ":KUBE-SVC-" not in text and ":KUBE-NODEPORTS" not in text
    key = ServiceKey("default", "web")
    full = assemble(shared_chains(rules, OPTS), service_chains([rules[key]]))
    assert full == render(st, OPTS)


def test_an_endpoint_change_touches_no_shared_chain_but_losing_all_does() -> None:
    key = ServiceKey("default", "web")
    two, three, none = (render_all(state(n), OPTS)[key] for n in (2, 3, 0))
    assert changed_shared(two, three) == set()
    assert changed_shared(two, none) == {("nat", "KUBE-SERVICES"), ("filter", "KUBE-SERVICES")}
    assert changed_shared(None, two) == {("nat", "KUBE-SERVICES")}


def test_ipv6_rules_use_ip6tables_spelling_and_bracketed_endpoints() -> None:
    st = state(2, affinity=60, node_port=30080, v6=True)
    text = render(st, OPTS6)
    sep = endpoint_chain("default/web", "TCP", "[fd00:10::1]:8080")
    assert f"-A {sep} -s fd00:10::1/128 -m comment --comment \"default/web\" -j KUBE-MARK-MASQ" \
        in text
    assert "--to-destination [fd00:10::1]:8080" in text
    assert "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in text
    assert "-d fd00:18::2/128" in text and "172.18.0.2" not in text
    assert render(st, OPTS).count("KUBE-SEP-") == 0  # the IPv4 tables hold none of it
    rs = with_hooks(parse(text))
    result = trace(rs, Packet("2001:db8::9", "tcp", "fd00:96::1", 80), "PREROUTING")
    assert result == {Outcome("DNAT", f"[fd00:10::{i}]:8080", True, True): 0.5 for i in (1, 2)}
    rows = {r.type: r for r in frontends(rs)}
    assert [b.ip for b in rows["ClusterIP"].backends] == ["fd00:10::1", "fd00:10::2"]
    assert rows["NodePort"].address.ip == "fd00:18::2"
    assert rows["NodePort"].backends == rows["ClusterIP"].backends
    empty = render(state(0, v6=True), OPTS6)
    assert "-j REJECT --reject-with icmp6-port-unreachable" in empty


def test_large_cluster_mode_drops_per_endpoint_comments_only() -> None:
    st = state(3, affinity=10)
    large = render(st, RenderOptions(cluster_cidr="10.0.0.0/8", large_cluster=True))
    sep_and_jumps = [ln for ln in large.splitlines()
                     if ln.startswith("-A KUBE-SEP-") or " -j KUBE-SEP-" in ln]
    assert len(sep_and_jumps) == 3 * 4 and not any("--comment" in ln for ln in sep_and_jumps)
    assert '--comment "default/web cluster IP"' in large  # the service's own rules keep them
    normal = with_hooks(parse(render(st, OPTS)))
    small = with_hooks(parse(large))
    pkt = Packet("10.2.0.9", "tcp", "10.96.0.1", 80)
    assert trace(small, pkt) == trace(normal, pkt)
    assert [(r.address, r.backends) for r in frontends(small)] == [
        (r.address, r.backends) for r in frontends(normal)]


@pytest.mark.parametrize(("value", "expected"), [
    ("10.244.0.0/16", {4: "10.244.0.0/16"}),
    ("10.244.0.0/16,fd00:10::/48", {4: "10.244.0.0/16", 6: "fd00:10::/48"}),
    (["fd00:10::1/48"], {6: "fd00:10::/48"}),
    (None, {}),
])
def test_cluster_cidr_per_family(value, expected) -> None:
    assert dict(IptablesOptions.parse({"cluster_cidr": value}).cluster_cidrs) == expected


@pytest.mark.parametrize("value", ["10.0.0.0/8,10.1.0.0/16", "nonsense", 7])
def test_bad_cluster_cidr_is_refused_with_the_field(value) -> None:
    with pytest.raises(ConfigError, match=r"driver_options\.cluster_cidr"):
        IptablesOptions.parse({"cluster_cidr": value})


def test_lock_wait_defaults_to_60_s_and_is_handed_to_the_tools() -> None:
    from lbcore_iptables.apply import Iptables

    assert IptablesOptions.parse({}).lock_wait == 60
    ipt = Iptables(None, "legacy", 4, IptablesOptions.parse({"lock_wait": 5}).lock_wait)
    assert ipt.lock_wait == 5


@pytest.mark.parametrize("value", [0, -1, "5", True, 3601])
def test_bad_lock_wait_is_refused_with_the_field(value) -> None:
    with pytest.raises(ConfigError, match=r"driver_options\.lock_wait"):
        IptablesOptions.parse({"lock_wait": value})


def test_offending_lines_of_both_flavours_errors() -> None:
    text = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\nCOMMIT\n"
    legacy = ("iptables-restore v1.8.9 (legacy): Couldn't load target `KUBE-SVC-A':No such "
              "file or directory\n\nError occurred at line: 3\n")
    nft = ("iptables-nft-restore v1.8.9 (nf_tables): Chain 'KUBE-SVC-A' does not exist\n"
           "Error occurred at line: 4\n")
    rule = "line 3: -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A"
    assert offending_lines(text, legacy) == [rule]
    assert offending_lines(text, nft) == ["line 4: COMMIT", rule]
