"""Render and plan are pure: golden JSON transactions, a walk of the rendered table that
says which endpoints each frontend can reach (the kube-proxy "tracer" idea), and what a
sync adds and deletes when the kernel already holds a table."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from lbcore.errors import ConfigError
from lbcore.model import Backend, DesiredState, FrontendType, ServiceKey
from lbcore_nftables import naming, plan
from lbcore_nftables.driver import NftablesDriver
from lbcore_nftables.readback import Table
from lbcore_nftables.render import RenderOptions, render, render_services

from .states import DNS, EXPECTED, NODE, WEB, basic_state, fe

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


def full_sync(state: DesiredState, table: plan.Table | None = None,
              opts: RenderOptions | None = None) -> list[dict]:
    """The transactions of a full sync of ``state`` onto ``table`` (default: empty)."""
    opts = opts or RenderOptions()
    return list(plan.full_sync(table or plan.Table(), state.services.keys(),
                               lambda keys: render_services(state, opts, keys), opts))


def transaction(state: DesiredState, opts: RenderOptions | None = None) -> dict:
    (doc,) = full_sync(state, opts=opts)
    return doc


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
    check_golden(name, transaction(basic_state(), opts))


def test_rendered_table_reaches_exactly_the_planned_endpoints():
    table = Table(listing(transaction(basic_state())))
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


def commands(docs: list[dict]) -> list[tuple[str, str, str]]:
    """(verb, kind, name) of every command that touches a service's objects."""
    out = []
    for doc in docs:
        for cmd in doc["nftables"][1:]:
            (verb, body), = cmd.items()
            (kind, o), = body.items()
            name = o.get("name") or o.get("chain", "")
            if kind in ("table", "map") or name in naming.FIXED_CHAINS:
                continue
            if kind == "element":
                name = ",".join(sorted(str(e) for e in o["elem"]))
            out.append((verb, kind, name))
    return out


def held_like(rs) -> plan.Table:
    """The table a kernel holding ``rs`` lists."""
    return plan.Table.from_listing(rs.chains, rs.sets, rs.elements)


def test_affinity_sets_and_stale_objects_are_deleted():
    rs = render(basic_state())
    assert list(rs.sets.values()) == [10800]
    stale_chain = "endpoint-OLDHASH0-default/web/tcp/p80__10.0.9.9/80"
    table = plan.Table.from_listing([*rs.chains, stale_chain], [*rs.sets, "affinity-OLD-x"],
                                    rs.elements)
    assert commands(full_sync(basic_state(), table)) == [
        ("flush", "chain", stale_chain), ("delete", "chain", stale_chain),
        ("delete", "set", "affinity-OLD-x")]


def test_a_full_sync_of_what_the_kernel_holds_writes_no_service_object():
    assert commands(full_sync(basic_state(), held_like(render(basic_state())))) == []


def test_a_changed_endpoint_is_new_chains_a_moved_element_and_deleted_chains():
    before = basic_state()
    table = held_like(render(before))
    b2 = Backend("10.0.3.30", 8080)
    after = DesiredState(NODE, tuple(
        replace(fe, backends=(fe.backends[0], b2)) if fe.service == WEB
        and fe.type is FrontendType.CLUSTER_IP else fe for fe in before.frontends))
    wanted = render_services(after, keys=[WEB])
    phases = table.update(wanted)
    got = commands([phases.document()])
    old, new = render(before).chains.keys(), render(after).chains.keys()
    assert sorted(c[2] for c in got if c[0] == "add" and c[1] == "chain") == sorted(new - old)
    assert sorted(c[2] for c in got if c[0] == "delete" and c[1] == "chain") == sorted(old - new)
    assert [c[:2] for c in got if c[1] == "element"] == [("delete", "element"),
                                                           ("add", "element")]
    assert all("default/web/tcp/p80" in c[2] for c in got if c[1] == "chain")
    table.commit(wanted)
    assert commands(full_sync(after, held_like(render(after)))) == []
    assert table.services[WEB].chains == {c for c in new if "default/web/" in c}


def test_a_removed_service_leaves_nothing_and_a_moved_frontend_changes_owner():
    state = basic_state()
    table = held_like(render(state))
    without_dns = DesiredState(NODE, tuple(fe for fe in state.frontends if fe.service != DNS))
    phases = table.update(render_services(without_dns, keys=[DNS]))
    got = commands([phases.document()])
    assert {c[:2] for c in got} == {("delete", "element"), ("flush", "chain"),
                                    ("delete", "chain"), ("delete", "set")}
    # the DNS ClusterIP now belongs to a new service "other": the element changes owner
    moved = tuple(replace(fe, service=ServiceKey("default", "other")) if fe.service == DNS
                  else fe for fe in state.frontends)
    table = held_like(render(state))
    other = ServiceKey("default", "other")
    phases = table.update(render_services(DesiredState(NODE, moved), keys=[other]))
    elems = [c for c in commands([phases.document()]) if c[1] == "element"]
    assert [v for v, _, _ in elems] == ["delete", "add"]  # taken from dns, given to other
    table.commit(render_services(DesiredState(NODE, moved), keys=[other]))
    assert ("10.96.0.53", "udp", 53) not in table.services[DNS].elements
    assert table.owner[("10.96.0.53", "udp", 53)] == other


def test_a_full_sync_is_split_into_batches_each_holding_whole_services():
    many = DesiredState(NODE, tuple(
        fe(ServiceKey("idle", f"s{i}"), "", FrontendType.CLUSTER_IP,
           f"10.97.{i // 256}.{i % 256}", 80, "TCP", (Backend("10.0.1.10", 80),))
        for i in range(plan.BATCH_SERVICES + 10)))
    docs = full_sync(many)
    assert len(docs) == 2
    owners = [{c[2].split("-", 2)[2].split("/")[1] for c in commands([d]) if c[1] == "chain"}
              for d in docs]
    assert not owners[0] & owners[1] and len(owners[0] | owners[1]) == len(many.services)
    table = Table(listing(docs[0]) + listing(docs[1]))
    assert len(table.frontends()) == len(many.frontends)


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
