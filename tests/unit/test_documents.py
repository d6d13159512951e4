"""Splitting YAML into documents: kubectl Lists, separators, and what breaks them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbcore.errors import SourceError
from lbcore.k8s import Document, load_documents, parse_documents

DATA = Path(__file__).parent.parent / "data"


def test_kubectl_list_is_flattened_into_its_items():
    docs = load_documents(DATA / "walkthrough.yaml")
    assert [(d.index, d.item, d.kind) for d in docs] == [
        (1, 0, "Service"),
        (1, 1, "EndpointSlice"),
        (1, 2, "Node"),
        (1, 3, "Node"),
        (1, 4, "Node"),
    ]
    assert docs[0].file == str(DATA / "walkthrough.yaml")
    assert docs[0].obj["metadata"]["name"] == "serversvc"
    assert docs[2].where == "document 1 items[2]"


def test_documents_are_numbered_from_one_and_empty_ones_skipped():
    text = "---\n---\napiVersion: v1\nkind: Service\n---\n# just a comment\n---\nkind: Node\n"
    docs = parse_documents(text, "f.yaml")
    # A leading "---" opens document 1; it is empty, as is the comment-only document 3.
    assert [(d.index, d.kind, d.item) for d in docs] == [(2, "Service", None), (4, "Node", None)]
    assert docs[0].where == "document 2"


def test_empty_list_yields_nothing():
    assert parse_documents("apiVersion: v1\nkind: List\nitems: []\n", "f") == []


def test_typed_list_items_get_kind_and_api_version():
    text = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: a}
- apiVersion: v1
  kind: Service
  metadata: {name: b}
"""
    docs = parse_documents(text, "f")
    assert docs[0].obj["kind"] == "EndpointSlice"
    assert docs[0].obj["apiVersion"] == "discovery.k8s.io/v1"
    assert docs[1].obj["kind"] == "Service"  # an item that says what it is keeps it


def test_syntax_error_names_file_and_line():
    text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n"
    with pytest.raises(SourceError) as info:
        parse_documents(text, "svc.yaml")
    message = str(info.value)
    assert message.startswith("svc.yaml:5:")
    assert "YAML syntax error" in message


def test_syntax_error_in_later_document_has_its_line():
    text = "kind: Service\n---\nkind: Node\nmetadata: {name: a\n"
    with pytest.raises(SourceError, match=r"^f\.yaml:[45]:"):
        parse_documents(text, "f.yaml")


def test_duplicate_key_is_rejected_with_both_lines():
    text = "apiVersion: v1\nkind: Service\nspec:\n  clusterIP: 10.0.0.1\n  clusterIP: 10.0.0.2\n"
    with pytest.raises(SourceError) as info:
        parse_documents(text, "f.yaml")
    assert str(info.value).startswith("f.yaml:5:")
    assert "duplicate key 'clusterIP' (first given on line 4)" in str(info.value)


@pytest.mark.parametrize("text, what", [
    ("- a\n- b\n", "list"),
    ("just text\n", "string"),
    ("apiVersion: v1\nkind: List\nitems: [1]\n", "int"),
    ("apiVersion: v1\nkind: List\nitems: {a: 1}\n", "mapping"),
])
def test_non_objects_are_rejected(text, what):
    with pytest.raises(SourceError, match=f"^f:document 1.*{what}"):
        parse_documents(text, "f")


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_documents(tmp_path / "absent.yaml")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(SourceError, match="is a directory"):
        load_documents(tmp_path)


def test_load_reads_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n")
    docs = load_documents(path)
    assert docs == [Document(str(path), 1, {"apiVersion": "v1"}, None)]  # obj not compared
    assert docs[0].obj["metadata"] == {"name": "n"}
