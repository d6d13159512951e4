"""Render is pure: golden JSON transactions, and a walk of the rendered table that says
which endpoints each frontend can reach (the kube-proxy "tracer" idea)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lbcore.errors import ConfigError
from lbcore.model import DesiredState
from lbcore_nftables import naming
from lbcore_nftables.driver import NftablesDriver
from lbcore_nftables.readback import Table
from lbcore_nftables.render import RenderOptions, render, transaction

from .states import EXPECTED, NODE, basic_state

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LBCORE_UPDATE_GOLDEN") == "1"


def listing(doc: dict) -> list[dict]:
    """What ``nft -j list table`` would show after ``doc`` on an empty kernel."""
    objs: list[dict] = []
    elems: list = []
    for cmd in doc["nftables"]:
        add = cmd.get("add", {})
        if "chain" in add:
            objs.append({"chain": add["chain"]})
        elif "rule" in add:
            objs.append({"rule": add["rule"]})
        elif "set" in add:
            objs.append({"set": add["set"]})
        elif "element" in add:
            elems += add["element"]["elem"]
    objs.append({"map": {"name": naming.SERVICES_MAP, "elem": elems}})
    return objs


def check_golden(name: str, doc: dict) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; re-run")
    assert text == path.read_text(), f"render changed; LBCORE_UPDATE_GOLDEN=1 rewrites {path}"


@pytest.mark.parametrize("opts,name", [
    (RenderOptions(), "basic"),
    (RenderOptions(cluster_cidr="10.0.0.0/16", pod_interface_prefix="lxc",
                   masquerade_all=True), "basic-detect-local-masquerade-all"),
])
def test_golden_transaction(opts, name):
    check_golden(name, transaction(render(basic_state(), opts)))


def test_rendered_table_reaches_exactly_the_planned_endpoints():
    table = Table(listing(transaction(render(basic_state()))))
    got = {(f.address.ip, f.address.port, f.address.protocol):
           (f.type, {(b.ip, b.port) for b in f.backends}) for f in table.frontends()}
    assert got == EXPECTED


def test_service_dispatch_is_one_map_lookup_whatever_the_number_of_services():
    rs = render(basic_state())
    (dispatch,) = rs.chains[naming.CHAIN_SERVICES]
    (vmap,) = dispatch[0]
    assert vmap["vmap"]["data"] == f"@{naming.SERVICES_MAP}"
    assert len(rs.elements) == 4


def test_endpoint_choice_is_numgen_random_and_no_endpoints_reject():
    rs = render(basic_state())
    web = rs.elements[("10.96.0.10", "tcp", 80)][0]
    (rule,) = [r for r in rs.chains[web] if "vmap" in r[0][0]]
    numgen = rule[0][0]["vmap"]["key"]["numgen"]
    assert numgen == {"mode": "random", "mod": 2, "offset": 0}
    assert rs.elements[("10.96.0.99", "tcp", 80)][0] == naming.CHAIN_REJECT


def test_affinity_sets_and_stale_objects_are_deleted():
    rs = render(basic_state())
    assert list(rs.sets.values()) == [10800]
    doc = transaction(rs, existing_chains=["endpoint-OLD-x", *rs.chains],
                      existing_sets={"affinity-OLD-x": 5})
    deletes = [c["delete"] for c in doc["nftables"] if "delete" in c]
    assert deletes == [{"chain": {"family": "ip", "table": "lbcore", "name": "endpoint-OLD-x"}},
                       {"set": {"family": "ip", "table": "lbcore", "name": "affinity-OLD-x"}}]


def test_empty_state_keeps_only_fixed_chains():
    rs = render(DesiredState(NODE))
    assert set(rs.chains) == set(naming.FIXED_CHAINS) and not rs.elements


@pytest.mark.parametrize("options,match", [
    ({"netns": "a/b"}, "driver_options.netns"),
    ({"cluster_cidr": "fd00::/64"}, "driver_options.cluster_cidr"),
    ({"bogus": 1}, "unknown option"),
])
def test_bad_options_name_the_option(options, match):
    with pytest.raises(ConfigError, match=match):
        NftablesDriver(options, NODE)
