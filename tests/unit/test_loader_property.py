"""The loader, property-based: every valid input is accepted and converts; every input
with one invalid thing in it is rejected as a whole, and the error names the file, the
document, the object, the exact field path and the value.

The inputs are YAML text parsed by the real loader (``parse_documents`` +
``parse_objects``, what ``load_file`` runs); see ``k8s_strategies`` for the objects and
the mutations.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from k8s_strategies import MUTATIONS, cluster_docs, cluster_ips, display_name

from lbcore.errors import ValidationError
from lbcore.expand import expand
from lbcore.k8s import parse_documents, parse_objects
from lbcore.k8s.rules import special_ip_problems
from lbcore.model import NodeInfo, ServiceKey

FILE = "objects.yaml"
# A few seconds per test; LBCORE_PROPERTY_EXAMPLES=500 for a long local hunt.
EXAMPLES = int(os.environ.get("LBCORE_PROPERTY_EXAMPLES", "0")) or None
PROPERTY = settings(max_examples=EXAMPLES or 60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PER_MUTATION = settings(PROPERTY, max_examples=EXAMPLES or 12)


def load(docs: list[dict]) -> object:
    return parse_objects(parse_documents(yaml.safe_dump_all(docs), FILE))


@PROPERTY
@given(docs=cluster_docs())
def test_valid_objects_are_accepted_and_convert(docs):
    objects = load(docs)
    services = [d for d in docs if d["kind"] == "Service"]
    assert set(objects.services) == {
        ServiceKey(d["metadata"]["namespace"], d["metadata"]["name"]) for d in services}
    for doc in services:
        svc = objects.services[ServiceKey(doc["metadata"]["namespace"], doc["metadata"]["name"])]
        assert [p.port for p in svc.ports] == [p["port"] for p in doc["spec"]["ports"]]
        assert svc.cluster_ips == tuple(str(ipaddress.ip_address(ip)) for ip in cluster_ips(doc))
        assert svc.external_ips == tuple(doc["spec"].get("externalIPs", ()))
    assert sum(len(s) for s in objects.slices.values()) == sum(
        d["kind"] == "EndpointSlice" for d in docs)
    assert set(objects.nodes) == {d["metadata"]["name"] for d in docs if d["kind"] == "Node"}
    # and what a driver would be handed holds no special address anywhere
    state = expand(objects, NodeInfo("node-0", ("172.18.0.2",)))
    for fe in state.frontends:
        assert not special_ip_problems(fe.ip), fe
        assert all(not special_ip_problems(b.ip) for b in fe.backends), fe


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@PER_MUTATION
@given(docs=cluster_docs(), data=st.data())
def test_one_invalid_field_rejects_the_file_and_the_error_names_it(name, docs, data):
    expect = MUTATIONS[name](data, docs)
    note(f"{name}: {expect}")
    with pytest.raises(ValidationError) as info:
        load(docs)
    error = info.value
    at_field = [e for e in error.errors if (e.document, e.field) == (expect.document, expect.field)]
    assert at_field, f"no error at document {expect.document} {expect.field}: {error}"
    e = at_field[0]
    assert (e.file, e.kind, e.name) == (FILE, expect.kind, expect.name), e
    if expect.shown is not None:
        assert any(expect.shown in x.problem for x in at_field), (expect.shown, str(e))
    where = f"({expect.kind} {expect.name})" if expect.name else f"({expect.kind})"
    if not expect.kind:
        where = f"({expect.name})"
    assert f"{FILE}:document {expect.document} {where}: {expect.field}: " in str(error)
    assert str(error).startswith(f"{FILE}: rejected, ")


CROSS_OBJECT = {"node_port_taken_by_another_service", "cluster_ip_taken_by_another_service"}


@PROPERTY
@given(names=st.lists(st.sampled_from(sorted(set(MUTATIONS) - CROSS_OBJECT)), min_size=2,
                      max_size=3), data=st.data())
def test_every_invalid_object_of_a_file_is_reported_not_just_the_first(names, data):
    docs, expects = [], []
    for name in names:  # each mutation in its own group of objects, one file
        group = data.draw(cluster_docs(max_services=1))
        expect = MUTATIONS[name](data, group)
        expects.append(replace(expect, document=expect.document + len(docs)))
        docs += group
    with pytest.raises(ValidationError) as info:
        load(docs)
    reported = {(e.document, e.field, e.name) for e in info.value.errors}
    for expect in expects:
        assert (expect.document, expect.field, expect.name) in reported, (expect, reported)


def test_display_names_used_by_the_strategies_match_the_loader():
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Web"},
           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}
    with pytest.raises(ValidationError) as info:
        load([doc])
    [e] = info.value.errors
    assert e.name == display_name(doc) == "default/Web"
