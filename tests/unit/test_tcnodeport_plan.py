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
    NodePortImage,
    format_image,
    render_entry,
)
from lbcore_tcnodeport.options import TcNodePortOptions
from lbcore_tcnodeport.plan import plan_sync

M = 251
NODE = "node0"


def fe(port, backends, *, etp=False, ranges=(), algo=None, ip="172.18.0.2"):
    bes = tuple(Backend(ip_, 8080, node_name=node) for ip_, node in backends)
    ext = tuple(b for b in bes if b.node_name == NODE) if etp else bes
    return Frontend(ServiceKey("default", f"s{port}"), "http", FrontendType.NODE_PORT,
                    FrontendAddress(ip, port, "TCP"), bes, ext, source_ranges=ranges,
                    external_traffic_local=etp,
                    annotations={"lbcore.io/lb-algorithm": algo} if algo else {})


def sync(image, frontends, *, prune=True):
    ids = Allocators.seeded(image, 1000)
    backend_ids = image.backend_ids()
    desired = {f.address: render_entry(f, NODE, image, ids, backend_ids) for f in frontends}
    for addr in image.services:
        desired.setdefault(addr, None)
    backends = {bid: a for a, bid in backend_ids.items()}
    return plan_sync(image, desired, backends, set(), M, prune=prune)


def test_render_flags_local_backends_and_publish_order():
    plan, after = sync(NodePortImage(), [fe(30080, [("10.0.0.10", NODE), ("10.0.1.10", "n1")],
                                            ranges=("192.0.2.7/24",), algo="maglev")])
    entry = after.services[FrontendAddress("172.18.0.2", 30080, "TCP")]
    assert entry.flags == F_MAGLEV | F_SRC_RANGES
    assert entry.source_ranges == ("192.0.2.0/24",)
    assert [after.backends[b].local for b in entry.slots] == [True, False]
    order = [(m, op) for m, op, items in plan.phases() if items]
    assert order == [("backends", "put"), ("maglev", "put"), ("ranges", "put"),
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
    assert opts.mode == "snat" and opts.snat_ports == (61000, 65535)
    assert opts.macros()["LBN_MAGLEV_M"] == 16381 and opts.devices == ("eth0",)
