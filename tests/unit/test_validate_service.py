"""Service validation: Kubernetes' ValidateService rules, every error collected."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbcore.errors import ValidationError
from lbcore.k8s import parse_documents, parse_objects
from lbcore.k8s.service import service_from_object


def service(spec: dict[str, Any] | None = None, *, name: str = "web",
            status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    base_spec: dict[str, Any] = {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
    base_spec.update(spec or {})
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", **meta},
        "spec": base_spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def errors_of(obj: dict[str, Any], **kwargs: Any) -> list[tuple[str, str]]:
    svc, errors = service_from_object(obj, **kwargs)
    assert (svc is None) == bool(errors)
    return [(e.field, e.problem) for e in errors]


def fields_of(obj: dict[str, Any], **kwargs: Any) -> list[str]:
    return [f for f, _ in errors_of(obj, **kwargs)]


def test_minimal_service_is_valid():
    assert errors_of(service()) == []


@pytest.mark.parametrize("spec, field, problem", [
    # ports
    ({"ports": []}, "spec.ports", "required"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port", "between 1 and 65535"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port", "must be an integer"),
    ({"ports": [{"name": "x"}]}, "spec.ports[0].port", "required"),
    ({"ports": [{"port": 80, "protocol": "HTTP"}]}, "spec.ports[0].protocol", "unsupported"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name", "required"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
     "spec.ports[1].name", "duplicate"),
    ({"ports": [{"name": "Web_1", "port": 80}]}, "spec.ports[0].name", "lower case"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
     "spec.ports[1]", "duplicate value \"80/TCP\""),
    ({"ports": [{"port": 80, "targetPort": 70000}]}, "spec.ports[0].targetPort", "65535"),
    ({"ports": [{"port": 80, "targetPort": "8080"}]}, "spec.ports[0].targetPort", "letter"),
    ({"ports": [{"port": 80, "targetPort": "my--port"}]}, "spec.ports[0].targetPort",
     "consecutive hyphens"),
    ({"ports": [{"port": 80, "targetPort": "a-very-long-port-name"}]},
     "spec.ports[0].targetPort", "no more than 15"),
    ({"ports": [{"port": 80, "targetPort": 1.5}]}, "spec.ports[0].targetPort", "port number"),
    ({"ports": [{"port": 80, "targetPort": 0.0}]}, "spec.ports[0].targetPort", "port number"),
    ({"ports": [{"port": 80, "targetPort": False}]}, "spec.ports[0].targetPort", "port number"),
    ({"ports": [{"port": 80, "nodePort": 30080}]}, "spec.ports[0].nodePort", "forbidden"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]},
     "spec.ports[0].nodePort", "not in the valid range"),
    ({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080},
                                    {"name": "b", "port": 81, "nodePort": 30080}]},
     "spec.ports[1].nodePort", "duplicate"),
    ({"type": "LoadBalancer", "ports": [{"port": 10250}]}, "spec.ports[0].port", "kubelet"),
    # type
    ({"type": "Internal"}, "spec.type", "unsupported value \"Internal\""),
    # cluster IPs
    ({"clusterIP": "10.96.0.300"}, "spec.clusterIPs[0]", "valid IP"),
    ({"clusterIPs": ["10.96.0.21"]}, "spec.clusterIPs", "first value must match"),
    ({"clusterIP": "", "clusterIPs": ["10.96.0.21"]}, "spec.clusterIPs", "must be empty"),
    ({"clusterIPs": ["10.96.0.20", "10.96.0.21"]}, "spec.clusterIPs", "one IP for each"),
    ({"clusterIPs": ["10.96.0.20", "fd00::1", "fd00::2"]}, "spec.clusterIPs", "up to 2"),
    ({"clusterIP": "None", "clusterIPs": ["None", "10.96.0.1"]}, "spec.clusterIPs",
     "first and only"),
    ({"ipFamilies": ["IPv6"]}, "spec.clusterIPs[0]", "expected an IPv6 value"),
    ({"ipFamilies": ["IPv4", "IPv4"]}, "spec.ipFamilies[1]", "duplicate"),
    ({"ipFamilies": ["IPv5"]}, "spec.ipFamilies[0]", "unsupported"),
    ({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"},
     "spec.ipFamilies", "one family per"),
    ({"ipFamilyPolicy": "DualStack"}, "spec.ipFamilyPolicy", "unsupported"),
    ({"clusterIPs": ["10.96.0.20", "fd00::20"], "ipFamilyPolicy": "SingleStack"},
     "spec.ipFamilyPolicy", "RequireDualStack"),
    ({"ipFamilyPolicy": "RequireDualStack"}, "spec.clusterIPs", "one IPv4 and one IPv6"),
    ({"type": "NodePort", "clusterIP": "None"}, "spec.clusterIPs[0]", "'None'"),
    ({"type": "LoadBalancer", "clusterIP": "None"}, "spec.clusterIPs[0]", "'None'"),
    # ExternalName
    ({"type": "ExternalName", "externalName": "db.example.com"}, "spec.clusterIPs",
     "forbidden"),
    ({"type": "ExternalName", "clusterIP": "", "ports": []}, "spec.externalName", "required"),
    ({"type": "ExternalName", "clusterIP": "", "externalName": "Bad_Name"},
     "spec.externalName", "lower case"),
    ({"type": "ExternalName", "clusterIP": "", "externalName": "a.b",
      "ipFamilyPolicy": "SingleStack"}, "spec.ipFamilyPolicy", "forbidden"),
    # affinity
    ({"sessionAffinity": "Cookie"}, "spec.sessionAffinity", "unsupported"),
    ({"sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "greater than 0"),
    ({"sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "86400"),
    ({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
     "spec.sessionAffinityConfig", "must not be set"),
    # traffic policies
    ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy",
     "externally-accessible"),
    ({"type": "NodePort", "externalTrafficPolicy": "Remote"}, "spec.externalTrafficPolicy",
     "unsupported"),
    ({"internalTrafficPolicy": "Node"}, "spec.internalTrafficPolicy", "unsupported"),
    ({"clusterIP": "None", "internalTrafficPolicy": "Local"}, "spec.internalTrafficPolicy",
     "headless"),
    ({"type": "NodePort", "healthCheckNodePort": 30001}, "spec.healthCheckNodePort",
     "LoadBalancer"),
    # external addresses
    ({"externalIPs": ["192.0.2.300"]}, "spec.externalIPs[0]", "valid IP"),
    ({"externalIPs": ["127.0.0.1"]}, "spec.externalIPs[0]", "loopback"),
    ({"externalIPs": ["169.254.1.1"]}, "spec.externalIPs[0]", "link-local"),
    ({"externalIPs": ["0.0.0.0"]}, "spec.externalIPs[0]", "unspecified"),
    ({"externalIPs": ["ff02::1"]}, "spec.externalIPs[0]", "multicast"),
    ({"externalIPs": ["fe80::1%eth0"]}, "spec.externalIPs[0]", "valid IP"),
    ({"externalIPs": "192.0.2.1"}, "spec.externalIPs", "must be a list"),
    ({"loadBalancerSourceRanges": ["10.0.0.0/8"]}, "spec.loadBalancerSourceRanges",
     "LoadBalancer"),
    ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0"]},
     "spec.loadBalancerSourceRanges[0]", "CIDR"),
    ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"]},
     "spec.loadBalancerSourceRanges[0]", "CIDR"),
    # special addresses: an IPv4-mapped address is its IPv4 address, as in Go
    ({"externalIPs": ["::ffff:127.0.0.1"]}, "spec.externalIPs[0]", "loopback"),
    ({"externalIPs": ["::ffff:169.254.169.254"]}, "spec.externalIPs[0]", "link-local"),
    ({"externalIPs": ["255.255.255.255"]}, "spec.externalIPs[0]", "broadcast"),
    ({"externalIPs": ["239.1.2.3"]}, "spec.externalIPs[0]", "multicast"),
    ({"externalIPs": ["::"]}, "spec.externalIPs[0]", "unspecified"),
    ({"clusterIP": "127.0.0.1"}, "spec.clusterIPs[0]", "loopback"),
    ({"clusterIP": "::1", "clusterIPs": ["::1"]}, "spec.clusterIPs[0]", "loopback"),
    ({"clusterIP": "::ffff:10.96.0.20", "ipFamilies": ["IPv6"]}, "spec.clusterIPs[0]",
     "expected an IPv6 value"),
    # fields ValidateService checks beyond the ports and IPs
    ({"trafficDistribution": "Nearby"}, "spec.trafficDistribution", "unsupported"),
    ({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 70000},
     "spec.healthCheckNodePort", "between 1 and 65535"),
    ({"selector": {"app": "-web"}}, "spec.selector[app]", "label"),
    ({"selector": {"bad key!": "web"}}, "spec.selector", "name part"),
    ({"selector": {"app": 1}}, "spec.selector[app]", "must be a string"),
    ({"allocateLoadBalancerNodePorts": True}, "spec.allocateLoadBalancerNodePorts",
     "forbidden"),
    ({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": "yes"},
     "spec.allocateLoadBalancerNodePorts", "boolean"),
    ({"type": "NodePort", "loadBalancerClass": "example.com/lb"}, "spec.loadBalancerClass",
     "forbidden"),
    ({"type": "LoadBalancer", "loadBalancerClass": "a b"}, "spec.loadBalancerClass",
     "name part"),
])
def test_invalid_spec_is_reported_at_its_field(spec, field, problem):
    errors = errors_of(service(spec))
    matching = [p for f, p in errors if f == field]
    assert matching, f"no error at {field}; got {errors}"
    assert any(problem in p for p in matching), errors


@pytest.mark.parametrize("status, field, problem", [
    ({"loadBalancer": {"ingress": [{"ip": "127.0.0.2"}]}},
     "status.loadBalancer.ingress[0].ip", "loopback"),
    ({"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}},
     "status.loadBalancer.ingress[0].ip", "valid IP"),
    ({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"ip": "::ffff:127.0.0.1"}]}},
     "status.loadBalancer.ingress[1].ip", "loopback"),
    ({"loadBalancer": {"ingress": [{"ip": "fe80::1"}]}},
     "status.loadBalancer.ingress[0].ip", "link-local"),
    ({"loadBalancer": {"ingress": [{"ip": "224.0.0.251"}]}},
     "status.loadBalancer.ingress[0].ip", "multicast"),
    ({"loadBalancer": {"ingress": [{"ip": "0.0.0.0"}]}},
     "status.loadBalancer.ingress[0].ip", "unspecified"),
    ({"loadBalancer": {"ingress": [{"ip": "255.255.255.255"}]}},
     "status.loadBalancer.ingress[0].ip", "broadcast"),
    ({"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ports": [{"port": 0,
                                                                  "protocol": "TCP"}]}]}},
     "status.loadBalancer.ingress[0].ports[0].port", "between 1 and 65535"),
    ({"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ports": [{"port": 80}]}]}},
     "status.loadBalancer.ingress[0].ports[0].protocol", "unsupported"),
    ({"loadBalancer": {"ingress": [{"hostname": "192.0.2.1"}]}},
     "status.loadBalancer.ingress[0].hostname", "not an IP"),
    ({"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "Direct"}]}},
     "status.loadBalancer.ingress[0].ipMode", "unsupported"),
    ({"loadBalancer": {"ingress": [{"hostname": "lb.example.com", "ipMode": "VIP"}]}},
     "status.loadBalancer.ingress[0].ipMode", "forbidden"),
])
def test_invalid_load_balancer_status(status, field, problem):
    errors = errors_of(service({"type": "LoadBalancer"}, status=status))
    assert any(f == field and problem in p for f, p in errors), errors


@pytest.mark.parametrize("meta, field, problem", [
    ({"name": ""}, "metadata.name", "required"),
    ({"name": "1web"}, "metadata.name", "alphabetic"),  # DNS-1035: a letter first
    ({"name": "web.shop"}, "metadata.name", "lower case"),
    ({"name": "w" * 64}, "metadata.name", "no more than 63"),
    ({"namespace": "Shop"}, "metadata.namespace", "lower case"),
    ({"labels": {"app": 1}}, "metadata.labels[app]", "must be a string"),
    ({"labels": {"app": "-x"}}, "metadata.labels[app]", "label"),
    ({"labels": {"bad key!": "x"}}, "metadata.labels", "name part"),
    ({"annotations": {"a/b/c": "x"}}, "metadata.annotations", "prefix part"),
    ({"annotations": {"big": "x" * (256 * 1024)}}, "metadata.annotations", "too long"),
    ({"annotations": {"service.kubernetes.io/topology-mode": "Auto",
                      "service.kubernetes.io/topology-aware-hints": "Disabled"}},
     "metadata.annotations[service.kubernetes.io/topology-mode]", "must match"),
])
def test_invalid_metadata(meta, field, problem):
    obj = service()
    obj["metadata"].update(meta)
    errors = errors_of(obj)
    assert any(f == field and problem in p for f, p in errors), errors


@pytest.mark.parametrize("spec", [
    {"clusterIP": "None", "ports": []},  # headless may have no ports
    {"type": "ExternalName", "clusterIP": "None", "externalName": "db.example.com"},
    {"type": "ExternalName", "clusterIP": "", "ports": [], "externalName": "db.example.com."},
    {"clusterIPs": ["10.96.0.20", "fd00::20"], "ipFamilies": ["IPv4", "IPv6"],
     "ipFamilyPolicy": "RequireDualStack"},
    {"clusterIP": "fd00::20", "clusterIPs": ["fd00::20", "10.96.0.20"],
     "ipFamilyPolicy": "PreferDualStack"},
    {"clusterIP": "None", "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"},
    {"type": "NodePort", "ports": [  # one nodePort number for both protocols of a service
        {"name": "d", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 30053}]},
    {"type": "NodePort", "externalTrafficPolicy": "Local"},
    {"externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local"},  # accessible via IPs
    {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31111},
    {"ports": [{"port": 80, "targetPort": "http-alt", "appProtocol": "kubernetes.io/h2c"}]},
    {"ports": [{"port": 80, "targetPort": 0}]},  # 0 is unset: defaults to port
    {"type": "LoadBalancer", "loadBalancerSourceRanges": [" 10.0.0.1/8 "]},
    {"sessionAffinity": "ClientIP",
     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}},
    {"trafficDistribution": "PreferSameZone", "selector": {"app": "web"}},
    {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False,
     "loadBalancerClass": "example.com/internal"},
    {"externalIPs": ["192.0.2.1", "2001:db8::1", "240.0.0.1"]},  # class E is unicast
])
def test_valid_specs(spec):
    assert errors_of(service(spec)) == []


def test_ipv4_mapped_addresses_are_read_as_ipv4():
    svc, errors = service_from_object(service({
        "clusterIP": "::ffff:10.96.0.20", "externalIPs": ["::ffff:192.0.2.7"],
        "type": "LoadBalancer", "loadBalancerSourceRanges": ["::ffff:10.0.0.0/104"]}))
    assert errors == []
    assert svc is not None
    assert (svc.cluster_ips, svc.ip_families) == (("10.96.0.20",), (4,))
    assert svc.external_ips == ("192.0.2.7",)
    assert svc.load_balancer_source_ranges == ("10.0.0.0/8",)


def test_every_error_is_collected_not_just_the_first():
    obj = service({"type": "Bogus", "ports": [{"name": "a", "port": 0, "protocol": "X"},
                                              {"port": 70000}],
                   "externalIPs": ["127.0.0.1"], "sessionAffinity": "Sticky"}, name="Web")
    fields = fields_of(obj)
    assert fields == sorted(set(fields), key=fields.index)  # no repeats
    assert set(fields) >= {
        "metadata.name", "spec.type", "spec.ports[0].port", "spec.ports[0].protocol",
        "spec.ports[1].name", "spec.ports[1].port", "spec.externalIPs[0]",
        "spec.sessionAffinity",
    }


def test_node_port_range_is_a_parameter():
    obj = service({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]})
    assert fields_of(obj) == ["spec.ports[0].nodePort"]
    assert fields_of(obj, node_port_range=(20000, 22767)) == []
    [(_, problem)] = errors_of(service({"type": "NodePort",
                                        "ports": [{"port": 80, "nodePort": 30000}]}),
                               node_port_range=(20000, 22767))
    assert "not in the valid range" in problem


def test_valid_text_tells_how_to_fix():
    _, [error] = service_from_object(service({"ports": [{"port": 80, "protocol": "tcp"}]}))
    assert error.valid == '"SCTP", "TCP", "UDP"'
    _, [error] = service_from_object(service({"ports": [{"port": 99999}]}))
    assert error.valid == "1-65535"


# ------------------------------------------------------------------ properties

invalid_ports = st.one_of(st.integers(max_value=0), st.integers(min_value=65536),
                          st.text(max_size=5), st.booleans(), st.floats(allow_nan=False))


@given(bad=invalid_ports, index=st.integers(min_value=0, max_value=3))
def test_an_invalid_port_never_passes_and_the_error_names_it(bad, index):
    ports = [{"name": f"p{i}", "port": 1000 + i} for i in range(4)]
    ports[index] = {"name": f"p{index}", "port": bad}
    svc, errors = service_from_object(service({"ports": ports}))
    assert svc is None
    assert [e.field for e in errors] == [f"spec.ports[{index}].port"]


@given(bad=st.one_of(st.integers(max_value=-1), st.integers(min_value=65536)))
def test_an_invalid_target_port_never_passes(bad):  # 0 means unset: defaults to port
    svc, errors = service_from_object(service({"ports": [{"port": 80, "targetPort": bad}]}))
    assert svc is None
    assert [e.field for e in errors] == ["spec.ports[0].targetPort"]


@given(port=st.integers(min_value=1, max_value=65535))
def test_every_port_in_range_passes(port):
    svc, errors = service_from_object(service({"ports": [{"port": port}]}))
    assert errors == []
    assert svc is not None and svc.ports[0].target_port == port


# ------------------------------------------------------- located, whole-file errors


def _reject(text: str, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_objects(parse_documents(text, "svc.yaml"), **kwargs)
    return info.value


def test_error_message_format_names_file_document_object_field_and_remedy():
    text = """apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: a, port: 80}, {name: b, port: 70000}]
"""
    error = _reject(text)
    assert [str(e) for e in error.errors] == [
        "svc.yaml:document 2 (Service shop/web): spec.ports[1].port: invalid value 70000: "
        "must be between 1 and 65535, inclusive (valid: 1-65535)"
    ]
    assert error.source == "svc.yaml"
    assert str(error).startswith("svc.yaml: rejected, 1 invalid field:\n  svc.yaml:document 2")


def test_one_invalid_object_rejects_the_whole_file_and_all_errors_are_listed():
    good = service()
    bad1 = service({"ports": [{"port": 0}]}, name="bad-one")
    bad2 = service({"clusterIP": "10.96.0.99", "type": "Nope"}, name="bad-two")
    text = "\n---\n".join(_yaml(o) for o in (good, bad1, bad2))
    error = _reject(text)
    assert [(e.document, e.name, e.field) for e in error.errors] == [
        (2, "default/bad-one", "spec.ports[0].port"),
        (3, "default/bad-two", "spec.type"),
    ]


def test_node_port_is_allocated_to_one_service_only():
    a = service({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}, name="a")
    b = service({"type": "NodePort", "clusterIP": "10.96.0.21",
                 "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30080}]}, name="b")
    [error] = _reject(_yaml(a) + "---\n" + _yaml(b)).errors
    assert (error.document, error.name, error.field) == (2, "default/b", "spec.ports[0].nodePort")
    assert "already allocated to Service default/a (document 1)" in error.problem


def test_cluster_ip_is_allocated_to_one_service_only():
    a, b = service(name="a"), service(name="b")
    [error] = _reject(_yaml(a) + "---\n" + _yaml(b)).errors
    assert (error.name, error.field) == ("default/b", "spec.clusterIPs[0]")
    assert "already allocated to Service default/a" in error.problem


def test_same_object_twice_is_an_error():
    a = service(name="a")
    [error] = _reject(_yaml(a) + "---\n" + _yaml(a)).errors
    assert (error.document, error.kind, error.name, error.field) == (
        2, "Service", "default/a", "metadata.name")
    assert "first defined in document 1" in error.problem


def test_same_name_in_other_namespace_is_another_object():
    a = service(name="a")
    b = copy.deepcopy(a)
    b["metadata"]["namespace"] = "other"
    b["spec"]["clusterIP"] = "10.96.0.21"
    objects = parse_objects(parse_documents(_yaml(a) + "---\n" + _yaml(b), "f"))
    assert len(objects.services) == 2


def _yaml(obj: dict[str, Any]) -> str:
    import yaml
    return yaml.safe_dump(obj)
