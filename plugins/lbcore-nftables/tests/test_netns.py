"""apply and read back in a network namespace this test creates (never the root one):
the kernel's listing walks back to exactly the planned frontends and endpoints; a
second sync changes nothing; a removed service leaves no chain; cleanup removes the
table. The driver reaches the namespace through its ``netns`` option."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from lbcore.lab import NetLab
from lbcore.model import Backend, DesiredState
from lbcore_nftables import naming, nft
from lbcore_nftables.driver import NftablesDriver
from lbcore_nftables.readback import Table

from .states import EXPECTED, NODE, WEB, basic_state

pytestmark = pytest.mark.netns


@pytest.fixture
def netns_path():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with NetLab() as lab:
        ns = lab.netns("nft")
        yield ns.path


def held(driver: NftablesDriver) -> dict:
    return {(f.address.ip, f.address.port, f.address.protocol):
            (f.type, {(b.ip, b.port) for b in f.backends}) for f in driver.dump()}


def test_sync_dump_resync_remove_cleanup(netns_path):
    driver = NftablesDriver({"netns": netns_path}, NODE)
    assert driver.check() == []
    driver.setup()
    try:
        driver.sync(basic_state(), None)
        assert held(driver) == EXPECTED
        before = nft.list_table(netns_path)
        driver.sync(basic_state(), None)  # idempotent: the same objects again
        assert Table(nft.list_table(netns_path)).chains == Table(before).chains

        without_web = DesiredState(NODE, tuple(f for f in basic_state().frontends
                                               if f.service != WEB))
        driver.sync(without_web, frozenset({WEB}))
        table = Table(nft.list_table(netns_path))
        assert not [c for c in table.chains if "default/web/" in c]
        assert set(held(driver)) == set(EXPECTED) - {("10.96.0.10", 80, "TCP"),
                                                     ("172.18.0.3", 30080, "TCP")}
    finally:
        driver.cleanup()
    assert nft.list_table(netns_path) == []


def test_the_table_is_private_and_the_root_namespace_untouched(netns_path):
    driver = NftablesDriver({"netns": netns_path}, NODE)
    try:
        driver.sync(basic_state(), None)
        objects = nft.list_table(netns_path)
        tables = {(o["table"]["family"], o["table"]["name"]) for o in objects if "table" in o}
        assert tables == {(naming.FAMILY, naming.TABLE)}
        assert nft.list_table(None) == []  # a read of the root namespace, never a write
    finally:
        driver.cleanup()


def test_a_restarted_driver_adopts_the_table_and_changes_only_what_changed(netns_path):
    state = basic_state()
    NftablesDriver({"netns": netns_path}, NODE).sync(state, None)
    driver = NftablesDriver({"netns": netns_path}, NODE)  # an agent restart
    try:
        before = Table(nft.list_table(netns_path)).chains
        result = driver.sync(state, None)  # the first sync is full: it lists, then adopts
        assert result.full and result.details["transactions"] == 1
        assert Table(nft.list_table(netns_path)).chains == before
        assert held(driver) == EXPECTED

        moved = Backend("10.0.3.30", 8080)
        changed = DesiredState(NODE, tuple(
            replace(f, backends=(moved,)) if f.ip == "10.96.0.10" else f
            for f in state.frontends))
        result = driver.sync(changed, frozenset({WEB}))
        assert not result.full and result.details["transactions"] == 1
        got = held(driver)
        assert got[("10.96.0.10", 80, "TCP")] == ("ClusterIP", {("10.0.3.30", 8080)})
        assert {k: v for k, v in got.items() if k[0] != "10.96.0.10"} == {
            k: v for k, v in EXPECTED.items() if k[0] != "10.96.0.10"}
        after = set(Table(nft.list_table(netns_path)).chains)
        assert {c for c in set(before) ^ after if "default/web/tcp/p80" not in c} == set()
    finally:
        driver.cleanup()
