"""Frontend expansion: kube-proxy's semantics, as tables of frontends and backends."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbcore.expand import expand, frontend_order, node_addresses
from lbcore.k8s import load_file
from lbcore.model import (
    Backend,
    ClusterObjects,
    Condition,
    DesiredState,
    Endpoint,
    EndpointSlice,
    FrontendAddress,
    FrontendType,
    Node,
    NodeInfo,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
    SkippedService,
    SlicePort,
)

DATA = Path(__file__).parent.parent / "data"
NODE_A = NodeInfo("node-a", ("192.168.1.10",))
READY = Condition.READY
TERMINATING = Condition.TERMINATING


def table(state: DesiredState, service: str | None = None) -> list[tuple[str, ...]]:
    """One row per frontend: service port, type, address, backends, external backends.
    A terminating backend is marked ``~``."""
    def backends(bs: tuple[Backend, ...]) -> str:
        return " ".join(str(FrontendAddress(b.ip, b.port, "x")).removesuffix("/x")
                        + ("~" if b.condition is TERMINATING else "") for b in bs)
    return [(fe.service_port, fe.type.value, str(fe.address), backends(fe.backends),
             backends(fe.external_backends))
            for fe in state if service is None or str(fe.service) == service]


@pytest.fixture(scope="module")
def many() -> ClusterObjects:
    return load_file(DATA / "many-kinds.yaml")


@pytest.fixture(scope="module")
def state(many: ClusterObjects) -> DesiredState:
    return expand(many, NODE_A)


# ------------------------------------------------------------------ walkthrough


def test_walkthrough():
    objects = load_file(DATA / "walkthrough.yaml")
    state = expand(objects, NodeInfo("worker", ("172.18.0.3",)))
    both = "10.0.1.145:80 10.0.2.17:80"
    assert table(state) == [
        ("default/serversvc", "ClusterIP", "10.96.10.10:80/TCP", both, both),
        ("default/serversvc", "NodePort", "172.18.0.2:32000/TCP", both, both),
        ("default/serversvc", "NodePort", "172.18.0.3:32000/TCP", both, both),
        ("default/serversvc", "NodePort", "172.18.0.4:32000/TCP", both, both),
    ]
    assert state.skipped == ()
    fe = state.frontends[0]
    assert fe.backends == (Backend("10.0.1.145", 80, READY, "worker"),
                           Backend("10.0.2.17", 80, READY, "worker2"))
    assert state.node == NodeInfo("worker", ("172.18.0.3",))


# ---------------------------------------------------------- the many-kinds file


def test_named_target_port_resolves_through_slice_port_name_and_protocol(state):
    both = "10.244.0.5:1053 10.244.1.7:1053"
    assert table(state, "kube-system/kube-dns") == [
        ("kube-system/kube-dns:dns", "ClusterIP", "10.96.0.10:53/UDP", both, both),
        ("kube-system/kube-dns:dns-tcp", "ClusterIP", "10.96.0.10:53/TCP", both, both),
    ]
    assert [b.zone for b in state.frontends_of(ServiceKey("kube-system", "kube-dns"))[0]
            .backends] == ["zone-a", "zone-b"]


def test_dual_stack_merges_slices_per_family_and_prefers_ready_duplicates(state):
    v4 = "10.244.0.10:8080 10.244.1.11:8080 10.244.1.12:8080"
    assert table(state, "shop/web") == [
        ("shop/web:http", "ClusterIP", "10.96.0.20:80/TCP", v4, v4),
        ("shop/web:http", "ClusterIP", "[fd00:10:96::20]:80/TCP",
         "[fd00:244::10]:8080", "[fd00:244::10]:8080"),
    ]


def test_traffic_policies_local_on_the_node_with_an_endpoint(state):
    local, everyone = "10.244.0.30:8080", "10.244.0.30:8080 10.244.1.30:8080"
    assert table(state, "default/local-np") == [
        # iTP Local: in-cluster clients of the ClusterIP reach this node's endpoints only.
        ("default/local-np", "ClusterIP", "10.96.0.30:80/TCP", local, local),
        # eTP Local: outside clients reach local endpoints; pods are short-circuited to all.
        ("default/local-np", "NodePort", "192.168.1.10:30080/TCP", everyone, local),
        ("default/local-np", "NodePort", "192.168.1.11:30080/TCP", everyone, local),
    ]
    flags = [(fe.type, fe.internal_traffic_local, fe.external_traffic_local)
             for fe in state.frontends_of(ServiceKey("default", "local-np"))]
    assert flags == [(FrontendType.CLUSTER_IP, True, False),
                     (FrontendType.NODE_PORT, False, True),
                     (FrontendType.NODE_PORT, False, True)]


def test_traffic_policies_local_on_a_node_without_endpoints(many):
    state = expand(many, NodeInfo("node-c", ("192.168.1.12",)))
    everyone = "10.244.0.30:8080 10.244.1.30:8080"
    rows = table(state, "default/local-np")
    assert rows[0] == ("default/local-np", "ClusterIP", "10.96.0.30:80/TCP", "", "")
    assert rows[1:] == [("default/local-np", "NodePort", f"{ip}:30080/TCP", everyone, "")
                        for ip in ("192.168.1.10", "192.168.1.11", "192.168.1.12")]


def test_terminating_endpoints_serve_only_when_none_is_ready(state):
    # 10.244.1.41 is terminating but no longer serving: never used.
    assert table(state, "default/drain") == [
        ("default/drain", "ClusterIP", "10.96.0.40:443/TCP", "10.244.1.40:8443~",
         "10.244.1.40:8443~")]
    [fe] = state.frontends_of(ServiceKey("default", "drain"))
    assert fe.backends[0].state == "terminating"


def test_load_balancer(state):
    assert table(state, "default/lb") == [
        ("default/lb:https", "ClusterIP", "10.96.0.60:443/TCP", "", ""),
        ("default/lb:https", "NodePort", "192.168.1.10:31000/TCP", "", ""),
        ("default/lb:https", "NodePort", "192.168.1.11:31000/TCP", "", ""),
        # 203.0.113.11 is ipMode Proxy: not a VIP of this node.
        ("default/lb:https", "LoadBalancer", "203.0.113.10:443/TCP", "", ""),
    ]
    ranges = [fe.source_ranges for fe in state.frontends_of(ServiceKey("default", "lb"))]
    assert ranges == [(), (), (), ("198.51.100.0/24", "203.0.113.128/25")]


def test_external_ips(state):
    assert [row[1:3] for row in table(state, "default/ext")] == [
        ("ClusterIP", "10.96.0.70:8080/TCP"), ("ExternalIP", "192.0.2.50:8080/TCP")]


def test_session_affinity_and_annotations_are_carried(state):
    timeouts = {str(fe.service): fe.session_affinity_timeout for fe in state}
    assert timeouts["default/sticky"] == 600
    assert timeouts["default/sticky-default"] == 10800
    assert timeouts["default/drain"] is None
    web = state.frontends_of(ServiceKey("shop", "web"))
    assert all(fe.annotations == {"lbcore.io/lb-algorithm": "maglev"} for fe in web)


def test_services_without_endpoints_still_get_frontends(state):
    assert table(state, "default/sticky") == [
        ("default/sticky", "ClusterIP", "10.96.0.50:80/TCP", "", "")]


def test_headless_and_external_name_are_skipped_with_a_reason(state):
    assert state.skipped == (
        SkippedService(ServiceKey("default", "ext-name"),
                       "ExternalName service (DNS CNAME to db.example.com.): no load balancing"),
        SkippedService(ServiceKey("default", "headless"),
                       "headless service (clusterIP None): no load balancing"),
    )
    assert not state.frontends_of(ServiceKey("default", "headless"))


def test_frontends_are_in_a_deterministic_order(many, state):
    assert list(state.frontends) == sorted(state.frontends, key=frontend_order)
    shuffled = ClusterObjects(
        services=MappingProxyType(dict(reversed(list(many.services.items())))),
        slices=MappingProxyType({k: tuple(reversed(v)) for k, v in many.slices.items()}),
        nodes=MappingProxyType(dict(reversed(list(many.nodes.items())))),
    )
    assert expand(shuffled, NODE_A) == state


# ------------------------------------------------------------- built in code

KEY = ServiceKey("default", "svc")


def svc(**kwargs) -> Service:
    fields = {"key": KEY, "type": ServiceType.CLUSTER_IP, "cluster_ips": ("10.96.0.1",),
              "ip_families": (4,), "ports": (ServicePort("", "TCP", 80, 8080),)}
    fields.update(kwargs)
    return Service(**fields)


def ep(ip: str, node: str | None = "node-b", *, ready: bool = True, serving: bool | None = None,
       terminating: bool = False) -> Endpoint:
    return Endpoint((ip,), ready, ready if serving is None else serving, terminating, node)


def eps(*endpoints: Endpoint, name: str = "svc-1", ports: tuple[SlicePort, ...] | None = None,
        address_type: str = "IPv4") -> EndpointSlice:
    if ports is None:
        ports = (SlicePort("", "TCP", 8080),)
    return EndpointSlice("default", name, KEY, address_type, ports, endpoints)


def objects(*services: Service, slices: tuple[EndpointSlice, ...] = (),
            nodes: tuple[Node, ...] = ()) -> ClusterObjects:
    return ClusterObjects(MappingProxyType({s.key: s for s in services}),
                          MappingProxyType({KEY: slices}) if slices else MappingProxyType({}),
                          MappingProxyType({n.name: n for n in nodes}))


def test_local_policy_falls_back_to_local_terminating_endpoints():
    service = svc(type=ServiceType.NODE_PORT, external_traffic_local=True,
                  ports=(ServicePort("", "TCP", 80, 8080, 30080),))
    state = expand(objects(service, slices=(eps(
        ep("10.0.0.1", "node-a", ready=False, serving=True, terminating=True),
        ep("10.0.0.2", "node-b"),
    ),)), NODE_A)
    node_port = state.frontends[1]
    assert node_port.type is FrontendType.NODE_PORT
    assert node_port.backends == (Backend("10.0.0.2", 8080, READY, "node-b"),)
    assert node_port.external_backends == (Backend("10.0.0.1", 8080, TERMINATING, "node-a"),)


def test_cluster_wide_ready_endpoints_win_over_local_terminating_for_cluster_policy():
    state = expand(objects(svc(), slices=(eps(
        ep("10.0.0.1", "node-a", ready=False, serving=True, terminating=True),
        ep("10.0.0.2", "node-b"),
    ),)), NODE_A)
    assert [b.ip for b in state.frontends[0].backends] == ["10.0.0.2"]


def test_numeric_target_port_is_the_fallback_for_a_slice_without_ports():
    state = expand(objects(svc(), slices=(eps(ep("10.0.0.1"), ports=()),)), NODE_A)
    assert [(b.ip, b.port) for b in state.frontends[0].backends] == [("10.0.0.1", 8080)]


def test_slice_port_wins_over_numeric_target_port():
    state = expand(objects(svc(), slices=(eps(ep("10.0.0.1"),
                                              ports=(SlicePort("", "TCP", 9090),)),)), NODE_A)
    assert [b.port for b in state.frontends[0].backends] == [9090]


@pytest.mark.parametrize("port, slice_ports", [
    (ServicePort("web", "TCP", 80, "http"), ()),  # a name needs a slice port to resolve
    (ServicePort("web", "TCP", 80, 8080), (SlicePort("other", "TCP", 8080),)),
    (ServicePort("web", "TCP", 80, 8080), (SlicePort("web", "UDP", 8080),)),
])
def test_unresolvable_backend_port_gives_no_backends(port, slice_ports):
    state = expand(objects(svc(ports=(port,)), slices=(eps(ep("10.0.0.1"),
                                                           ports=slice_ports),)), NODE_A)
    assert [fe.backends for fe in state] == [()]


def test_only_the_first_address_of_an_endpoint_is_used():
    endpoint = Endpoint(("10.0.0.1", "10.0.0.9"), True, True, False, "node-b")
    state = expand(objects(svc(), slices=(eps(endpoint),)), NODE_A)
    assert [b.ip for b in state.frontends[0].backends] == ["10.0.0.1"]


def test_same_endpoint_in_two_slices_counts_once():
    state = expand(objects(svc(), slices=(eps(ep("10.0.0.1"), name="a"),
                                          eps(ep("10.0.0.1"), ep("10.0.0.2"), name="b"))),
                   NODE_A)
    assert [b.ip for b in state.frontends[0].backends] == ["10.0.0.1", "10.0.0.2"]


def test_backends_follow_the_frontend_family_and_fqdn_slices_are_ignored():
    service = svc(cluster_ips=("10.96.0.1", "fd00::1"), ip_families=(4, 6))
    state = expand(objects(service, slices=(
        eps(ep("10.0.0.1"), name="v4"),
        eps(ep("fd00:244::1"), name="v6", address_type="IPv6"),
        eps(Endpoint(("db.example.com",), True, True, False), name="fqdn", address_type="FQDN"),
    )), NODE_A)
    assert [(fe.ip, [b.ip for b in fe.backends]) for fe in state] == [
        ("10.96.0.1", ["10.0.0.1"]), ("fd00::1", ["fd00:244::1"])]


def test_node_ports_open_on_every_node_address_of_the_service_families():
    nodes = (Node("node-a", ("192.168.1.10", "fd00:1::a")), Node("node-b", ("192.168.1.11",)))
    v4_only = svc(type=ServiceType.NODE_PORT, ports=(ServicePort("", "TCP", 80, 80, 30080),))
    state = expand(objects(v4_only, nodes=nodes), NodeInfo("node-a", ("10.1.1.1",)))
    assert [str(fe.address) for fe in state if fe.type is FrontendType.NODE_PORT] == [
        "10.1.1.1:30080/TCP", "192.168.1.10:30080/TCP", "192.168.1.11:30080/TCP"]
    dual = svc(type=ServiceType.NODE_PORT, cluster_ips=("10.96.0.1", "fd00::1"),
               ip_families=(4, 6), ports=(ServicePort("", "TCP", 80, 80, 30080),))
    state = expand(objects(dual, nodes=nodes), NODE_A)
    assert [str(fe.address) for fe in state if fe.type is FrontendType.NODE_PORT] == [
        "192.168.1.10:30080/TCP", "192.168.1.11:30080/TCP", "[fd00:1::a]:30080/TCP"]
    assert node_addresses(objects(dual, nodes=nodes), NODE_A) == (
        "192.168.1.10", "192.168.1.11", "fd00:1::a")


def test_node_port_service_without_allocated_node_port_is_reported():
    state = expand(objects(svc(type=ServiceType.NODE_PORT)), NODE_A)
    assert [fe.type for fe in state] == [FrontendType.CLUSTER_IP]
    assert state.skipped == (SkippedService(KEY, "port 80/TCP: no nodePort allocated"),)


def test_external_ip_of_a_family_the_service_lacks_is_reported():
    state = expand(objects(svc(external_ips=("2001:db8::5", "192.0.2.5"))), NODE_A)
    assert [fe.ip for fe in state] == ["10.96.0.1", "192.0.2.5"]
    assert state.skipped == (SkippedService(
        KEY, "externalIP 2001:db8::5 is IPv6 but the service has no IPv6 cluster IP",
        FrontendAddress("2001:db8::5", 80, "TCP")),)


def test_source_ranges_of_another_family_do_not_open_a_load_balancer_ip():
    service = svc(type=ServiceType.LOAD_BALANCER, cluster_ips=("10.96.0.1", "fd00::1"),
                  ip_families=(4, 6), load_balancer_ips=("203.0.113.1", "2001:db8::1"),
                  load_balancer_source_ranges=("198.51.100.0/24",))
    state = expand(objects(service), NODE_A)
    lbs = [fe for fe in state if fe.type is FrontendType.LOAD_BALANCER]
    assert [(fe.ip, fe.source_ranges) for fe in lbs] == [("203.0.113.1", ("198.51.100.0/24",))]
    assert [s.frontend for s in state.skipped] == [FrontendAddress("2001:db8::1", 80, "TCP")]


def test_load_balancer_ips_are_ignored_unless_type_load_balancer():
    state = expand(objects(svc(load_balancer_ips=("203.0.113.1",))), NODE_A)
    assert [fe.type for fe in state] == [FrontendType.CLUSTER_IP]


@pytest.mark.parametrize("labels, proxy_name, reason", [
    ({}, None, None),
    ({"service.kubernetes.io/service-proxy-name": "other"}, None, "served by another proxy"),
    ({"service.kubernetes.io/service-proxy-name": "other"}, "lbcore", "another proxy"),
    ({"service.kubernetes.io/service-proxy-name": "lbcore"}, "lbcore", None),
    ({}, "lbcore", "not labelled service.kubernetes.io/service-proxy-name=lbcore"),
    ({"service.kubernetes.io/headless": ""}, None, "labelled service.kubernetes.io/headless"),
])
def test_service_selection_by_label(labels, proxy_name, reason):
    state = expand(objects(svc(labels=MappingProxyType(labels))), NODE_A,
                   service_proxy_name=proxy_name)
    if reason is None:
        assert len(state) == 1 and state.skipped == ()
    else:
        assert len(state) == 0
        [skipped] = state.skipped
        assert reason in skipped.reason


def test_service_without_cluster_ip_is_skipped():
    state = expand(objects(svc(cluster_ips=(), ip_families=())), NODE_A)
    assert state.skipped == (SkippedService(KEY, "no clusterIP allocated"),)


# ------------------------------------------------------------------ properties

conditions = st.tuples(st.booleans(), st.booleans(), st.booleans())


@given(st.lists(conditions, min_size=0, max_size=8), st.booleans())
def test_backends_are_ready_ones_else_serving_terminating_never_not_serving(conds, local):
    endpoints = tuple(Endpoint((f"10.0.0.{i + 1}",), r, s, t, "node-a" if i % 2 else "node-b")
                      for i, (r, s, t) in enumerate(conds))
    service = svc(internal_traffic_local=local)
    [fe] = expand(objects(service, slices=(eps(*endpoints),)), NODE_A).frontends
    pool = [e for e in endpoints if not local or e.node_name == "node-a"]
    chosen = {b.ip for b in fe.backends}
    ready = {e.addresses[0] for e in pool if e.ready}
    fallback = {e.addresses[0] for e in pool if e.serving and e.terminating}
    assert chosen == (ready or fallback)
    assert all(b.condition is (READY if ready else TERMINATING) for b in fe.backends)
    assert fe.external_backends == fe.backends
