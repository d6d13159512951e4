"""IncrementalLoader: the same result and the same errors as load_file, but only the
documents that changed are parsed again and unchanged objects keep their identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbcore.clock import FakeClock
from lbcore.errors import SourceError, ValidationError
from lbcore.k8s import load_file
from lbcore.k8s.incremental import IncrementalLoader, cut_documents
from lbcore.model import ServiceKey
from lbcore.tracker import ChangeTracker

DATA = Path(__file__).parent.parent / "data"


def service(name: str, ip: str, node_port: int | None = None) -> str:
    ports = f"[{{port: 80, protocol: TCP, nodePort: {node_port}}}]" if node_port else \
        "[{port: 80, protocol: TCP}]"
    kind = "NodePort" if node_port else "ClusterIP"
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n"
            f"spec:\n  type: {kind}\n  clusterIP: {ip}\n  ports: {ports}\n")


def slice_(name: str, *ips: str) -> str:
    eps = ", ".join(f"{{addresses: [{ip}], conditions: {{ready: true}}}}" for ip in ips)
    return ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata:\n  name: {name}-abcde\n  namespace: ns\n"
            f"  labels: {{kubernetes.io/service-name: {name}}}\n"
            f"addressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints: [{eps}]\n")


def objects_file(n: int, *, probe: str = "10.0.0.1") -> list[str]:
    docs = []
    for i in range(n):
        docs += [service(f"s{i}", f"10.96.0.{i + 1}"), slice_(f"s{i}", "10.0.1.1", "10.0.1.2")]
    docs += [service("probe", "10.96.1.1", 30080), slice_("probe", probe)]
    return docs


def write(path: Path, docs: list[str]) -> None:
    path.write_text("".join(f"---\n{d}" for d in docs))


def assert_same_error(loader: IncrementalLoader, path: Path, kind: type[Exception]) -> str:
    with pytest.raises(kind) as expected:
        load_file(path)
    with pytest.raises(kind) as got:
        loader(path)
    assert str(got.value) == str(expected.value)
    return str(got.value)


def test_cut_is_before_every_document_marker():
    data = b"# lead\na: 1\n---\nb: 2\n--- {c: 3}\n----not\n ---\n---\r\nd: 4\n---"
    assert cut_documents(data) == [b"# lead\na: 1\n", b"---\nb: 2\n",
                                   b"--- {c: 3}\n----not\n ---\n", b"---\r\nd: 4\n", b"---"]
    assert cut_documents(b"---\na: 1\n---\n") == [b"---\na: 1\n", b"---\n"]
    assert cut_documents(b"") == [b""]


@pytest.mark.parametrize("name", ["walkthrough.yaml", "many-kinds.yaml"])
def test_reads_what_load_file_reads(name):
    assert IncrementalLoader()(DATA / name) == load_file(DATA / name)


@pytest.mark.parametrize("text", [
    "",
    "# only a comment\n",
    "---\n---\n",  # empty documents count in the numbering
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    # a kubectl List, a typed list, an inline document after the marker
    "apiVersion: v1\nkind: List\nitems:\n- " + service("a", "10.96.0.1").replace("\n", "\n  ")
    + "\n--- {apiVersion: v1, kind: ServiceList, items: [{metadata: {name: b, namespace: ns},"
      " spec: {clusterIP: 10.96.0.2, ports: [{port: 81}]}}]}\n",
    "%YAML 1.1\n---\n" + service("a", "10.96.0.1"),  # a directive: read whole
    "\r\n".join(("---\n" + service("a", "10.96.0.1")).split("\n")),  # CRLF
])
def test_shapes_read_as_load_file_reads_them(tmp_path, text):
    path = tmp_path / "svc.yaml"
    path.write_text(text, newline="")
    assert IncrementalLoader()(path) == load_file(path)


def test_one_edit_parses_one_document_and_keeps_every_other_object(tmp_path):
    path = tmp_path / "svc.yaml"
    write(path, objects_file(50))
    loader = IncrementalLoader()
    tracker = ChangeTracker(FakeClock())
    before = loader(path)
    assert loader.last_parsed == 102
    tracker.update(before)

    write(path, objects_file(50, probe="10.0.0.2"))  # one endpoint changed
    after = loader(path)
    assert loader.last_parsed == 1
    assert after == load_file(path)
    probe = ServiceKey("ns", "probe")
    assert after.slices[probe] != before.slices[probe]
    for key, svc in before.services.items():
        assert after.services[key] is svc
        if key != probe:
            assert after.slices[key] is before.slices[key]
    assert tracker.update(after) == {probe}

    assert loader(path) is after and loader.last_parsed == 0  # the same bytes again


def test_a_document_inserted_in_front_renumbers_the_rest(tmp_path):
    path = tmp_path / "svc.yaml"
    docs = objects_file(3)
    write(path, docs)
    loader = IncrementalLoader()
    loader(path)
    bad = docs[-1].replace("10.0.0.1", "10.0.0.300")
    write(path, [service("new", "10.96.2.1"), *docs[:-1], bad])
    message = assert_same_error(loader, path, ValidationError)
    assert f"{path}:document 9 (EndpointSlice ns/probe-abcde): endpoints[0].addresses[0]" \
        in message


def test_an_invalid_edit_is_rejected_whole_and_the_last_good_read_stays(tmp_path):
    path = tmp_path / "svc.yaml"
    docs = objects_file(3)
    write(path, docs)
    loader = IncrementalLoader()
    good = loader(path)
    # a port out of range, and a second service taking the probe's nodePort
    write(path, [docs[0].replace("port: 80", "port: 70000"), *docs[1:],
                 service("thief", "10.96.3.3", 30080)])
    message = assert_same_error(loader, path, ValidationError)
    assert "document 1 (Service ns/s0): spec.ports[0].port" in message
    assert "provided port is already allocated to Service ns/probe" in message
    write(path, docs)  # back to the good file: nothing re-parsed, the very same objects
    assert loader(path) is good and loader.last_parsed == 0


def test_a_duplicate_document_is_reported_as_load_file_reports_it(tmp_path):
    path = tmp_path / "svc.yaml"
    docs = objects_file(2)
    write(path, docs)
    loader = IncrementalLoader()
    loader(path)
    write(path, [*docs, docs[2]])
    assert "duplicate Service 'ns/s1', first defined in document 3" in assert_same_error(
        loader, path, ValidationError)


@pytest.mark.parametrize("tail", [
    "---\nkind: Service\n  bad: indentation\n",
    "---\nmetadata: {name: a}\nmetadata: {name: b}\n",  # duplicate key: line numbers
    "---\n- a list\n",
])
def test_structural_errors_are_worded_with_the_whole_files_lines(tmp_path, tail):
    path = tmp_path / "svc.yaml"
    write(path, objects_file(2))
    loader = IncrementalLoader()
    loader(path)
    path.write_text(path.read_text() + tail)
    assert_same_error(loader, path, SourceError)


def test_bytes_that_are_not_utf8_and_a_missing_file(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_bytes(b"---\n" + service("a", "10.96.0.1").encode() + b"# \xff\n")
    assert_same_error(IncrementalLoader(), path, SourceError)
    assert_same_error(IncrementalLoader(), tmp_path / "nope.yaml", SourceError)


def test_node_port_range_is_part_of_what_is_cached(tmp_path):
    path = tmp_path / "svc.yaml"
    write(path, objects_file(1))
    loader = IncrementalLoader()
    loader(path)
    with pytest.raises(ValidationError, match="nodePort"):
        loader(path, node_port_range=(31000, 31999))


def node(name: str, ip: str) -> str:
    return (f"apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"
            f"status:\n  addresses: [{{type: InternalIP, address: {ip}}}]\n")


def test_a_sequence_of_edits_reads_as_load_file_reads_each_version(tmp_path):
    """Every kind of edit, one after the other, each compared with a whole read: the
    same objects in the same order, or the same error; good reads keep identities."""
    path = tmp_path / "svc.yaml"
    base = [*objects_file(4), node("n1", "172.18.0.2")]
    s = {i: base[2 * i] for i in range(4)}
    versions = [
        base,
        base[:3] + base[4:],  # a slice removed
        [service("a-first", "10.96.9.9"), *base],  # a service added in front (re-sorted)
        [*base[:8], base[8].replace("30080", "30081"), *base[9:]],  # the nodePort moved
        # two services swap their cluster IPs in one edit: no conflict
        [s[1].replace("10.96.0.2", "10.96.0.1"), s[0].replace("10.96.0.1", "10.96.0.2"),
         *base[1:2], *base[3:]],
        [*base, service("thief", "10.96.0.3")],  # an IP taken twice: rejected
        [*base[:-1], node("n1", "172.18.0.9"), node("n2", "172.18.0.3")],  # nodes
        [*base, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"],  # ignored kind
        [base[1].replace("s0-abcde", "s0-zzzzz"), *base],  # a second slice for s0
        list(reversed(base)),  # the same objects in another order
        [*base, base[0]],  # a duplicate
        base,
    ]
    loader = IncrementalLoader()
    previous = None
    for number, docs in enumerate(versions):
        write(path, docs)
        try:
            want = load_file(path)
        except ValidationError as exc:
            with pytest.raises(ValidationError) as got:
                loader(path)
            assert str(got.value) == str(exc), number
            continue
        objects = loader(path)
        assert objects == want, number
        for mapping in ("services", "slices", "nodes"):
            assert list(getattr(objects, mapping)) == list(getattr(want, mapping)), number
        if previous is not None:
            for key, svc in objects.services.items():
                if previous.services.get(key) == svc:
                    assert previous.services[key] is svc, (number, key)
        previous = objects


def test_document_numbers_after_a_leading_comment_and_empty_documents(tmp_path):
    path = tmp_path / "svc.yaml"
    bad = service("a", "10.96.0.1").replace("port: 80", "port: 0")
    path.write_text(f"# generated\n---\n---\n{service('b', '10.96.0.2')}---\n{bad}")
    assert "document 3 (Service ns/a)" in assert_same_error(IncrementalLoader(), path,
                                                            ValidationError)
