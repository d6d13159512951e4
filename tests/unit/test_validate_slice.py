"""EndpointSlice validation (ValidateEndpointSlice) and condition defaults."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbcore.k8s.endpointslice import slice_from_object
from lbcore.model import Endpoint, ServiceKey, SlicePort


def eps(*, endpoints: Any = None, ports: Any = None, address_type: Any = "IPv4",
        labels: Any = None, name: str = "web-abc12") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"} if labels is None
                     else labels},
        "addressType": address_type,
        "endpoints": [{"addresses": ["10.244.0.5"]}] if endpoints is None else endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }
    if address_type is None:
        del obj["addressType"]
    return obj


def errors_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    converted, errors = slice_from_object(obj)
    assert converted is None or not errors
    return [(e.field, e.problem) for e in errors]


def test_valid_slice_converts():
    converted, errors = slice_from_object(eps(endpoints=[{
        "addresses": ["10.244.0.5"], "conditions": {"ready": True},
        "nodeName": "node-a", "zone": "zone-a", "hostname": "web-0",
    }]))
    assert errors == []
    assert converted is not None
    assert converted.service == ServiceKey("shop", "web")
    assert (converted.namespace, converted.name, converted.address_type) == (
        "shop", "web-abc12", "IPv4")
    assert converted.ports == (SlicePort("http", "TCP", 8080),)
    assert converted.endpoints == (Endpoint(("10.244.0.5",), True, True, False,
                                            "node-a", "zone-a", "web-0"),)


@pytest.mark.parametrize("conditions, expected", [
    ({}, (True, True, False)),  # ready: nil means ready; serving follows ready
    ({"ready": None, "serving": None, "terminating": None}, (True, True, False)),
    ({"ready": False}, (False, False, False)),
    ({"ready": False, "serving": True, "terminating": True}, (False, True, True)),
    ({"ready": False, "terminating": True}, (False, False, True)),
    ({"serving": False}, (True, False, False)),
])
def test_condition_defaults(conditions, expected):
    converted, errors = slice_from_object(eps(endpoints=[
        {"addresses": ["10.244.0.5"], "conditions": conditions}]))
    assert errors == []
    assert converted is not None
    ep = converted.endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == expected


def test_slice_without_service_label_is_ignored_without_error():
    assert slice_from_object(eps(labels={})) == (None, [])
    assert slice_from_object(eps(labels={"kubernetes.io/service-name": ""})) == (None, [])


def test_slice_without_service_label_is_still_validated():
    assert errors_of(eps(labels={}, address_type="IPv5")) == [
        ("addressType", 'unsupported value "IPv5"')]


@pytest.mark.parametrize("kwargs, field, problem", [
    ({"address_type": None}, "addressType", "required"),
    ({"address_type": "ipv4"}, "addressType", "unsupported"),
    ({"name": "Web_1"}, "metadata.name", "lower case"),
    ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses", "required"),
    ({"endpoints": [{}]}, "endpoints[0].addresses", "required"),
    ({"endpoints": [{"addresses": [f"10.0.0.{i % 250 + 1}" for i in range(101)]}]},
     "endpoints[0].addresses", "too many"),
    ({"endpoints": [{"addresses": ["10.0.0.1"]}] * 1001}, "endpoints", "too many"),
    ({"endpoints": [{"addresses": ["fd00::1"]}]}, "endpoints[0].addresses[0]", "IPv4"),
    ({"endpoints": [{"addresses": ["10.0.0.1"]}], "address_type": "IPv6"},
     "endpoints[0].addresses[0]", "IPv6"),
    ({"endpoints": [{"addresses": ["10.0.0.1", "127.0.0.1"]}]},
     "endpoints[0].addresses[1]", "loopback"),
    ({"endpoints": [{"addresses": ["169.254.0.7"]}]}, "endpoints[0].addresses[0]",
     "link-local"),
    ({"endpoints": [{"addresses": ["224.0.0.1"]}]}, "endpoints[0].addresses[0]", "multicast"),
    ({"endpoints": [{"addresses": ["0.0.0.0"]}]}, "endpoints[0].addresses[0]", "unspecified"),
    ({"endpoints": [{"addresses": ["::1"]}], "address_type": "IPv6"},
     "endpoints[0].addresses[0]", "loopback"),
    ({"endpoints": [{"addresses": ["255.255.255.255"]}]}, "endpoints[0].addresses[0]",
     "broadcast"),
    ({"endpoints": [{"addresses": ["::ffff:127.0.0.1"]}]}, "endpoints[0].addresses[0]",
     "loopback"),
    ({"endpoints": [{"addresses": ["::ffff:10.0.0.1"]}], "address_type": "IPv6"},
     "endpoints[0].addresses[0]", "IPv6"),
    ({"endpoints": [{"addresses": ["ff02::1"]}], "address_type": "IPv6"},
     "endpoints[0].addresses[0]", "multicast"),
    ({"endpoints": [{"addresses": ["10.0.0.1"],
                     "hints": {"forZones": [{"name": f"z{i}"} for i in range(9)]}}]},
     "endpoints[0].hints.forZones", "too many"),
    ({"endpoints": [{"addresses": ["10.0.0.1"],
                     "hints": {"forZones": [{"name": "z1"}, {"name": "z1"}]}}]},
     "endpoints[0].hints.forZones[1].name", "duplicate"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "hints": {"forZones": [{}]}}]},
     "endpoints[0].hints.forZones[0].name", "required"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "hints": {"forNodes": [{"name": "Node_A"}]}}]},
     "endpoints[0].hints.forNodes[0].name", "lower case"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "deprecatedTopology": {"rack": "-r1"}}]},
     "endpoints[0].deprecatedTopology[rack]", "label"),
    ({"endpoints": [{"addresses": ["10.0.0.1"],
                     "deprecatedTopology": {f"k{i}": "v" for i in range(17)}}]},
     "endpoints[0].deprecatedTopology", "too many"),
    ({"endpoints": [{"addresses": ["db"]}], "address_type": "FQDN"},
     "endpoints[0].addresses[0]", "two segments"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready", "boolean"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "Node_A"}]},
     "endpoints[0].nodeName", "lower case"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "hostname": "a.b"}]},
     "endpoints[0].hostname", "lower case"),
    ({"endpoints": ["10.0.0.1"]}, "endpoints[0]", "must be a mapping"),
    ({"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}, "ports[1].name",
     "duplicate"),
    ({"ports": [{"port": 1}, {"port": 2}]}, "ports[1].name", "duplicate"),
    ({"ports": [{"name": "A", "port": 1}]}, "ports[0].name", "lower case"),
    ({"ports": [{"name": "a", "port": 1, "protocol": "ICMP"}]}, "ports[0].protocol",
     "unsupported"),
    ({"ports": [{"name": "a", "port": 65536}]}, "ports[0].port", "65535"),
    ({"ports": [{"name": "a", "port": 1, "appProtocol": "a b"}]}, "ports[0].appProtocol",
     "name part"),
])
def test_invalid_slice_is_reported_at_its_field(kwargs, field, problem):
    errors = errors_of(eps(**kwargs))
    matching = [p for f, p in errors if f == field]
    assert matching, f"no error at {field}; got {errors[:5]}"
    assert any(problem in p for p in matching), matching


def test_addresses_are_normalised_and_fqdn_kept():
    converted, _ = slice_from_object(eps(address_type="IPv6", endpoints=[
        {"addresses": ["FD00:0::0:5"]}]))
    assert converted is not None and converted.endpoints[0].addresses == ("fd00::5",)
    converted, _ = slice_from_object(eps(address_type="FQDN", endpoints=[
        {"addresses": ["db.example.com"]}]))
    assert converted is not None and converted.endpoints[0].addresses == ("db.example.com",)


def test_ipv4_mapped_endpoint_address_is_its_ipv4_address():
    converted, errors = slice_from_object(eps(endpoints=[{"addresses": ["::ffff:10.0.0.9"]}]))
    assert errors == []
    assert converted is not None and converted.endpoints[0].addresses == ("10.0.0.9",)


def test_port_without_number_restricts_nothing_and_is_dropped():
    converted, errors = slice_from_object(eps(ports=[{"name": "any"},
                                                     {"name": "dns", "port": 53,
                                                      "protocol": "UDP"}]))
    assert errors == []
    assert converted is not None and converted.ports == (SlicePort("dns", "UDP", 53),)


def test_protocol_defaults_to_tcp_and_name_to_empty():
    converted, _ = slice_from_object(eps(ports=[{"port": 80}]))
    assert converted is not None and converted.ports == (SlicePort("", "TCP", 80),)


@given(ip=st.ip_addresses(v=4))
def test_an_ipv4_address_passes_exactly_when_not_special(ip):
    special = (ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_multicast
               or str(ip) == "255.255.255.255")
    converted, errors = slice_from_object(eps(endpoints=[{"addresses": [str(ip)]}]))
    assert (converted is None) == special
    assert all(e.field == "endpoints[0].addresses[0]" for e in errors)
