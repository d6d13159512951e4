"""Render and plan of the tcnodeport maps: pure, no kernel."""

from __future__ import annotations

import pytest

from lbcore.errors import ConfigError
from lbcore.model import Backend, Frontend, FrontendAddress, FrontendType, ServiceKey
from lbcore_tcnodeport.image import (
    F_ETP_LOCAL,
    F_MAGLEV,
    F_SRC_RANGES,
    Allocators,
    DsrKey,
    NodePortImage,
    dsr_ports,
    format_image,
    render_entry,
)
from lbcore_tcnodeport.options import TcNodePortOptions
from lbcore_tcnodeport.plan import plan_sync

M = 251
NODE = "node0"


def fe(port, backends, *, etp=False, ranges=(), algo=None, ip="172.18.0.2",
       type=FrontendType.NODE_PORT, target=8080, protocol="TCP"):
    bes = tuple(Backend(ip_, target, node_name=node) for ip_, node in backends)
    ext = tuple(b for b in bes if b.node_name == NODE) if etp else bes
    return Frontend(ServiceKey("default", f"s{port}"), "http", type,
                    FrontendAddress(ip, port, protocol), bes, ext, source_ranges=ranges,
                    external_traffic_local=etp,
                    annotations={"lbcore.io/lb-algorithm": algo} if algo else {})


def sync(image, frontends, *, prune=True):
    ids = Allocators.seeded(image, 1000)
    backend_ids = image.backend_ids()
    desired = {f.address: render_entry(f, NODE, image, ids, backend_ids) for f in frontends}
    for addr in image.services:
        desired.setdefault(addr, None)
    backends = {bid: a for a, bid in backend_ids.items()}
    return plan_sync(image, desired, backends, dsr_ports(frontends, NODE), M, prune=prune)


def test_render_flags_local_backends_and_publish_order():
    plan, after = sync(NodePortImage(), [fe(30080, [("10.0.0.10", NODE), ("10.0.1.10", "n1")],
                                            ranges=("192.0.2.7/24",), algo="maglev")])
    entry = after.services[FrontendAddress("172.18.0.2", 30080, "TCP")]
    assert entry.flags == F_MAGLEV | F_SRC_RANGES
    assert entry.source_ranges == ("192.0.2.0/24",)
    assert [after.backends[b].local for b in entry.slots] == [True, False]
    order = [(m, op) for m, op, items in plan.phases() if items]
    assert order == [("backends", "put"), ("dsr", "put"), ("maglev", "put"), ("ranges", "put"),
                     ("slots", "put"), ("headers", "put")]
    assert len(plan.maglev_puts) == M and len(after.maglev[entry.svc_id]) == M


def test_etp_local_without_local_backend_has_no_slots():
    _, after = sync(NodePortImage(), [fe(30081, [("10.0.1.10", "n1")], etp=True)])
    entry = next(iter(after.services.values()))
    assert entry.flags & F_ETP_LOCAL and entry.slots == ()


def test_maglev_backend_leaving_rewrites_only_changed_slots():
    backends = [("10.0.0.10", NODE), ("10.0.1.10", "n1"), ("10.0.1.11", "n1")]
    _, before = sync(NodePortImage(), [fe(30080, backends, algo="maglev")])
    plan, after = sync(before, [fe(30080, backends[:2], algo="maglev")])
    svc_id = next(iter(after.services.values())).svc_id
    old, new = before.maglev[svc_id], after.maglev[svc_id]
    changed = {i for i in range(M) if old[i] != new[i]}
    assert {i for _, i, _ in plan.maglev_puts} == changed
    gone = next(b for b, a in before.backends.items() if a.ip == "10.0.1.11")
    assert changed >= {i for i in range(M) if old[i] == gone}
    assert plan.backend_deletes == [gone]
    assert plan.slot_deletes == [(FrontendAddress("172.18.0.2", 30080, "TCP"), 3)]


def test_resync_is_a_no_op_and_removal_deletes_everything():
    frontends = [fe(30080, [("10.0.0.10", NODE)], ranges=("10.1.0.0/16",), algo="maglev")]
    _, image = sync(NodePortImage(), frontends)
    again, _ = sync(image, frontends)
    assert again.writes() == 0
    plan, empty = sync(image, [])
    assert empty.services == {} and empty.backends == {} and empty.maglev == {}
    assert len(plan.maglev_deletes) == M and plan.range_deletes and plan.header_deletes
    assert "svc 172.18.0.2:30080/TCP" in format_image(image)


def test_dsr_delivery_entries_name_the_frontend_port_of_local_pods():
    frontends = [
        fe(30080, [("10.0.0.10", NODE), ("10.0.1.10", "n1")]),  # NodePort: via any node
        fe(80, [("10.0.0.10", NODE)], ip="198.51.100.1", type=FrontendType.EXTERNAL_IP,
           target=9090),
        fe(80, [("10.0.0.10", NODE)], ip="198.51.100.1", type=FrontendType.EXTERNAL_IP,
           target=9000, protocol="UDP"),
        fe(30081, [("fd00:10::a", NODE)], ip="fc00::2"),
    ]
    assert dsr_ports(frontends, NODE) == {
        DsrKey("10.0.0.10", "", 30080, "TCP"): 8080,
        DsrKey("10.0.0.10", "198.51.100.1", 80, "TCP"): 9090,
        DsrKey("10.0.0.10", "198.51.100.1", 80, "UDP"): 9000,
        DsrKey("fd00:10::a", "", 30081, "TCP"): 8080,
    }
    # Two services on one pod and one ExternalIP port: the lowest port, on every run.
    clash = [fe(80, [("10.0.0.10", NODE)], ip="198.51.100.1", type=FrontendType.EXTERNAL_IP,
                target=t) for t in (9090, 9001)]
    assert dsr_ports(clash, NODE) == {DsrKey("10.0.0.10", "198.51.100.1", 80, "TCP"): 9001}
    plan, image = sync(NodePortImage(), frontends)
    assert sorted(plan.dsr_puts) == sorted(dsr_ports(frontends, NODE).items())
    plan, _ = sync(image, frontends[:1])
    assert sorted(plan.dsr_deletes) == sorted(set(image.dsr) - {
        DsrKey("10.0.0.10", "", 30080, "TCP")})


def test_plan_names_the_frontend_backend_pairs_that_ended():
    both = [("10.0.0.10", NODE), ("10.0.1.10", "n1")]
    _, image = sync(NodePortImage(), [fe(30080, both), fe(30090, both)])
    plan, after = sync(image, [fe(30080, both[:1]), fe(30090, both)])
    gone = next(b for b, a in image.backends.items() if a.ip == "10.0.1.10")
    assert plan.removed_pairs == [(FrontendAddress("172.18.0.2", 30080, "TCP"), gone,
                                   image.backends[gone])]
    assert plan.backend_deletes == []  # 30090 still uses it
    plan, _ = sync(after, [])
    assert {(f.port, b) for f, b, _ in plan.removed_pairs} == {
        (30080, next(b for b, a in image.backends.items() if a.ip == "10.0.0.10")),
        (30090, gone), (30090, next(b for b, a in image.backends.items() if a.ip == "10.0.0.10"))}


def test_slots_keep_positions():
    _, image = sync(NodePortImage(), [fe(30080, [("10.0.1.1", "n1"), ("10.0.1.2", "n1"),
                                                 ("10.0.1.3", "n1")])])
    _, after = sync(image, [fe(30080, [("10.0.1.1", "n1"), ("10.0.1.3", "n1"),
                                      ("10.0.1.4", "n1")])])
    old = next(iter(image.services.values())).slots
    new = next(iter(after.services.values())).slots
    assert new[0] == old[0] and new[2] == old[2] and new[1] not in old


@pytest.mark.parametrize("bad, match", [
    ({"mode": "tunnel"}, "mode"),
    ({"maglev_table_size": 16380}, "not prime"),
    ({"snat_port_range": "70000-80000"}, "snat_port_range"),
    ({"devices": []}, "devices"),
    ({"bogus": 1}, "unknown option"),
])
def test_options_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        TcNodePortOptions.parse(bad)


def test_options_defaults():
    opts = TcNodePortOptions.parse({})
    assert opts.mode == "snat" and opts.snat_ports == (61000, 65535) and not opts.ct_flush_tcp
    assert opts.macros()["LBN_MAGLEV_M"] == 16381 and opts.devices == ("eth0",)
