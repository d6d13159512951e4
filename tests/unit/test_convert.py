"""Whole files to ClusterObjects: kinds, defaults, indexing, nodes, whole-file rejection."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from lbcore.errors import SourceError, ValidationError
from lbcore.k8s import load_file, parse_documents, parse_objects
from lbcore.k8s.node import node_from_object
from lbcore.model import (
    Endpoint,
    EndpointSlice,
    Node,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SlicePort,
)

DATA = Path(__file__).parent.parent / "data"
WALKTHROUGH = DATA / "walkthrough.yaml"
MANY = DATA / "many-kinds.yaml"


@pytest.fixture(scope="module")
def many():
    return load_file(MANY)


def test_walkthrough_converts_to_exactly_this():
    objects = load_file(WALKTHROUGH)
    key = ServiceKey("default", "serversvc")
    assert objects.services == {key: Service(
        key=key, type=ServiceType.NODE_PORT, cluster_ips=("10.96.10.10",), ip_families=(4,),
        ports=(ServicePort("", "TCP", 80, 80, 32000),),
        labels=MappingProxyType({"app": "server"}),
    )}
    assert objects.slices == {key: (EndpointSlice(
        namespace="default", name="serversvc-x7b2k", service=key, address_type="IPv4",
        ports=(SlicePort("", "TCP", 80),),
        endpoints=(Endpoint(("10.0.1.145",), True, True, False, "worker"),
                   Endpoint(("10.0.2.17",), True, True, False, "worker2")),
    ),)}
    assert objects.nodes == {
        "control-plane": Node("control-plane", ("172.18.0.2",)),
        "worker": Node("worker", ("172.18.0.3",)),
        "worker2": Node("worker2", ("172.18.0.4",)),
    }


def test_irrelevant_kinds_and_ownerless_slices_are_left_out(many):
    assert sorted(str(k) for k in many.services) == [
        "default/drain", "default/ext", "default/ext-name", "default/headless", "default/lb",
        "default/local-np", "default/sticky", "default/sticky-default", "kube-system/kube-dns",
        "shop/web",
    ]
    assert all(s.name != "orphan" for slices in many.slices.values() for s in slices)
    assert ServiceKey("default", "orphan") not in many.slices


def test_slices_are_indexed_by_service_and_sorted_by_name(many):
    web = many.slices[ServiceKey("shop", "web")]
    assert [s.name for s in web] == ["web-v4-a", "web-v4-b", "web-v6"]
    assert [s.address_type for s in web] == ["IPv4", "IPv4", "IPv6"]


def test_service_defaults(many):
    dns = many.services[ServiceKey("kube-system", "kube-dns")]
    assert dns.type is ServiceType.CLUSTER_IP
    assert dns.cluster_ips == ("10.96.0.10",) and dns.ip_families == (4,)
    assert dns.ports == (ServicePort("dns", "UDP", 53, "dns"),
                         ServicePort("dns-tcp", "TCP", 53, "dns-tcp"))
    assert dns.session_affinity_timeout is None
    assert not dns.external_traffic_local and not dns.internal_traffic_local
    drain = many.services[ServiceKey("default", "drain")]
    assert drain.ports == (ServicePort("", "TCP", 443, 8443),)


def test_dual_stack(many):
    web = many.services[ServiceKey("shop", "web")]
    assert web.cluster_ips == ("10.96.0.20", "fd00:10:96::20")
    assert web.ip_families == (4, 6)
    assert web.annotations == {"lbcore.io/lb-algorithm": "maglev"}


def test_affinity_and_policies(many):
    assert many.services[ServiceKey("default", "sticky")].session_affinity_timeout == 600
    assert many.services[ServiceKey("default", "sticky-default")].session_affinity_timeout \
        == 10800
    local = many.services[ServiceKey("default", "local-np")]
    assert local.external_traffic_local and local.internal_traffic_local
    assert local.ports == (ServicePort("", "TCP", 80, 8080, 30080),)


def test_load_balancer_fields(many):
    lb = many.services[ServiceKey("default", "lb")]
    assert lb.type is ServiceType.LOAD_BALANCER
    # 203.0.113.11 is ipMode Proxy (not a local VIP); the hostname ingress has no IP.
    assert lb.load_balancer_ips == ("203.0.113.10",)
    assert lb.load_balancer_source_ranges == ("198.51.100.0/24", "203.0.113.128/25")


def test_external_ips_headless_and_external_name(many):
    assert many.services[ServiceKey("default", "ext")].external_ips == ("192.0.2.50",)
    assert many.services[ServiceKey("default", "headless")].headless
    ext_name = many.services[ServiceKey("default", "ext-name")]
    assert ext_name.type is ServiceType.EXTERNAL_NAME
    assert ext_name.external_name == "db.example.com."
    assert ext_name.cluster_ips == ()


def test_nodes_carry_all_ip_addresses_and_zone(many):
    assert many.nodes["node-a"] == Node("node-a", ("192.168.1.10", "fd00:1::a"), "zone-a")
    assert many.nodes["node-b"].addresses == ("192.168.1.11", "fd00:1::b")


def test_node_port_range_reaches_validation(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(WALKTHROUGH.read_text())
    with pytest.raises(ValidationError) as info:
        load_file(path, node_port_range=(30000, 31999))
    [error] = info.value.errors
    assert (error.file, error.document, error.field) == (str(path), 1, "spec.ports[0].nodePort")
    assert error.valid == "30000-31999 (the node port range)"
    assert info.value.source == str(path)


def test_bad_node_port_range_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_objects([], node_port_range=(32767, 30000))


def test_unreadable_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError):
        load_file(tmp_path / "nope.yaml")


# --------------------------------------------------------------- kinds & versions


def _parse(text: str):
    return parse_objects(parse_documents(text, "f.yaml"))


def _errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as info:
        _parse(text)
    return [str(e) for e in info.value.errors]


def test_document_without_api_version_or_kind_is_an_error():
    assert _errors("metadata: {name: x}\n---\nkind: Service\nmetadata: {name: y}\n") == [
        "f.yaml:document 1 (x): apiVersion: required value (valid: e.g. v1)",
        "f.yaml:document 1 (x): kind: required value (valid: e.g. Service)",
        "f.yaml:document 2 (Service y): apiVersion: required value (valid: e.g. v1)",
    ]


def test_nameless_kindless_document_is_located_by_number_alone():
    assert _errors("{spec: {}}\n") == [
        "f.yaml:document 1: apiVersion: required value (valid: e.g. v1)",
        "f.yaml:document 1: kind: required value (valid: e.g. Service)",
    ]


def test_nameless_object_is_located_by_kind():
    assert _errors("apiVersion: v1\nkind: Service\nspec: {clusterIP: None}\n") == [
        "f.yaml:document 1 (Service): metadata.name: required value "
        "(valid: a DNS-1035 label, e.g. 'my-name' (starts with a letter))"]


def test_unsupported_version_of_a_known_kind_is_an_error():
    text = ("apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\n"
            "metadata: {name: s, namespace: ns}\n")
    assert _errors(text) == [
        "f.yaml:document 1 (EndpointSlice ns/s): apiVersion: unsupported version "
        '"discovery.k8s.io/v1beta1" (valid: discovery.k8s.io/v1)']


def test_same_kind_name_in_another_api_group_is_ignored():
    text = ("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: Not_Valid}\n"
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    assert _parse(text).services == {}


def test_list_items_are_located_by_document_and_name():
    text = """apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 10.0.0.256}]}
"""
    assert _errors(text) == [
        "f.yaml:document 1 (Node n1): status.addresses[0].address: invalid value "
        "\"10.0.0.256\": must be a valid IP address, e.g. 10.9.8.7 "
        "(valid: an IPv4 or IPv6 address)"]


# ---------------------------------------------------------------------- nodes


def _node(**status):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": status}


def test_node_keeps_ip_addresses_only_and_deduplicates():
    node, errors = node_from_object(_node(addresses=[
        {"type": "Hostname", "address": "n1"},
        {"type": "ExternalIP", "address": "203.0.113.5"},
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "InternalDNS", "address": "n1.cluster.local"},
    ]))
    assert errors == []
    assert node == Node("n1", ("203.0.113.5", "10.0.0.5"))


def test_deprecated_zone_label_is_a_fallback():
    obj = _node()
    obj["metadata"]["labels"] = {"failure-domain.beta.kubernetes.io/zone": "z1"}
    node, _ = node_from_object(obj)
    assert node is not None and node.zone == "z1"


@pytest.mark.parametrize("obj_change, field, problem", [
    ({"status": {"addresses": [{"type": "PodIP", "address": "10.0.0.1"}]}},
     "status.addresses[0].type", "unsupported"),
    ({"status": {"addresses": [{"address": "10.0.0.1"}]}}, "status.addresses[0].type",
     "required"),
    ({"status": {"addresses": [{"type": "InternalIP"}]}}, "status.addresses[0].address",
     "required"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "0.0.0.0"}]}},
     "status.addresses[0].address", "unspecified"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}},
     "status.addresses[0].address", "loopback"),
    ({"status": {"addresses": [{"type": "ExternalIP", "address": "::ffff:127.0.0.1"}]}},
     "status.addresses[0].address", "loopback"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "fe80::1"}]}},
     "status.addresses[0].address", "link-local"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "224.0.0.1"}]}},
     "status.addresses[0].address", "multicast"),
    ({"metadata": {"name": "n1", "namespace": "default"}}, "metadata.namespace", "forbidden"),
    ({"metadata": {"name": "-n1"}}, "metadata.name", "alphanumeric"),
])
def test_invalid_node(obj_change, field, problem):
    obj = _node()
    obj.update(obj_change)
    node, errors = node_from_object(obj)
    assert node is None
    assert any(e.field == field and problem in e.problem for e in errors), errors
