"""ChangeTracker: which services changed between snapshots, {previous, current} pairs."""

from __future__ import annotations

from dataclasses import replace

from lbcore.clock import FakeClock
from lbcore.model import Node, ServiceKey
from lbcore.testing import cluster, endpoint_slice, service
from lbcore.tracker import ChangeTracker

WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", port=53, protocol="UDP", namespace="kube-system")
NP = service("np", "10.96.0.80", node_port=30080)
WEB_EPS = endpoint_slice(WEB, ["10.0.1.5", "10.0.1.6"])
DNS_EPS = endpoint_slice(DNS, ["10.0.2.5"], port=53)
NODE_A = Node("node-a", ("172.18.0.2",))


def keys(*svcs):
    return frozenset(s.key for s in svcs)


def test_first_snapshot_reports_every_service():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    assert t.pending() == keys(WEB, DNS)


def test_checkpoint_hands_over_state_and_clears_changes():
    t = ChangeTracker(FakeClock())
    objects = cluster([WEB], [WEB_EPS])
    t.update(objects)
    cp = t.checkpoint()
    assert cp.objects is objects
    assert cp.changed == keys(WEB)
    assert t.pending() == frozenset()
    assert t.checkpoint().changed == frozenset()


def test_identical_snapshot_is_no_change():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    t.checkpoint()
    t.update(cluster([DNS, WEB], [DNS_EPS, WEB_EPS]))  # other order, same content
    assert t.pending() == frozenset()


def test_endpoint_change_reports_only_its_service():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB, DNS], [WEB_EPS, DNS_EPS]))
    t.checkpoint()
    t.update(cluster([WEB, DNS], [endpoint_slice(WEB, ["10.0.1.7"]), DNS_EPS]))
    assert t.pending() == keys(WEB)


def test_added_and_removed_services_and_slices():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB], [WEB_EPS]))
    t.checkpoint()
    t.update(cluster([DNS], [WEB_EPS, DNS_EPS]))  # WEB's Service gone, slice stays
    assert t.pending() == keys(WEB, DNS)
    t.checkpoint()
    t.update(cluster([DNS], [DNS_EPS]))  # WEB's orphan slice gone too
    assert t.pending() == keys(WEB)


def test_change_and_revert_before_sync_is_dropped():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB], [WEB_EPS]))
    t.checkpoint()
    t.update(cluster([WEB], [endpoint_slice(WEB, ["10.0.9.9"])]))
    assert t.pending() == keys(WEB)
    t.update(cluster([WEB], [WEB_EPS]))
    assert t.pending() == frozenset()


def test_add_then_remove_before_sync_is_dropped():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB], [WEB_EPS]))
    t.checkpoint()
    t.update(cluster([WEB, DNS], [WEB_EPS]))
    t.update(cluster([WEB], [WEB_EPS]))
    assert t.pending() == frozenset()


def test_node_change_reports_nodeport_services_only():
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB, NP], [WEB_EPS], [NODE_A]))
    t.checkpoint()
    t.update(cluster([WEB, NP], [WEB_EPS], [replace(NODE_A, zone="z1")]))
    assert t.pending() == keys(NP)
    t.checkpoint()
    t.update(cluster([WEB, NP], [WEB_EPS], []))  # node removed
    assert t.pending() == keys(NP)


def test_update_returns_what_this_update_touched():
    t = ChangeTracker(FakeClock())
    assert t.update(cluster([WEB])) == keys(WEB)
    assert t.update(cluster([WEB, DNS])) == keys(DNS)
    assert t.pending() == keys(WEB, DNS)


def test_pending_since_keeps_first_sighting():
    clock = FakeClock(start=100.0)
    t = ChangeTracker(clock)
    t.update(cluster([WEB]))
    clock.advance(5)
    t.update(cluster([WEB], [WEB_EPS]))
    assert t.oldest_pending() == 100.0
    cp = t.checkpoint()
    assert cp.queued_at == {WEB.key: 100.0}
    assert t.oldest_pending() is None


def test_requeue_after_failed_sync_keeps_changes_and_times():
    clock = FakeClock(start=100.0)
    t = ChangeTracker(clock)
    t.update(cluster([WEB], [WEB_EPS]))
    cp = t.checkpoint()
    clock.advance(3)
    t.requeue(cp)
    assert t.pending() == keys(WEB)
    assert t.oldest_pending() == 100.0


def test_requeued_change_is_not_dropped_as_noop():
    # After a failed sync the kernel may hold anything: an edit that is then
    # reverted must still be synced.
    t = ChangeTracker(FakeClock())
    t.update(cluster([WEB], [WEB_EPS]))
    t.checkpoint()
    t.update(cluster([WEB], [endpoint_slice(WEB, ["10.0.9.9"])]))
    cp = t.checkpoint()
    t.requeue(cp)
    t.update(cluster([WEB], [WEB_EPS]))  # reverted, but the failed sync never landed
    assert t.pending() == keys(WEB)


def test_requeue_merges_with_newer_changes():
    clock = FakeClock(start=10.0)
    t = ChangeTracker(clock)
    t.update(cluster([WEB]))
    cp = t.checkpoint()
    clock.advance(1)
    t.update(cluster([WEB, DNS]))
    t.requeue(cp)
    assert t.pending() == keys(WEB, DNS)
    assert t.checkpoint().queued_at == {WEB.key: 10.0, DNS.key: 11.0}


def test_no_snapshot_yet():
    t = ChangeTracker(FakeClock())
    cp = t.checkpoint()
    assert cp.objects is None and cp.changed == frozenset()
    assert ServiceKey("a", "b") not in t.pending()
