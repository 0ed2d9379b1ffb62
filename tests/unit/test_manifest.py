"""Reading manifests: documents, positions, and errors that name file and line."""

import pytest

from agent.common.errors import FieldError, ManifestError
from agent.common.manifest import load_file, load_text, parse_field_path

TWO_DOCS = """\
# a comment
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
spec:
  containers:
  - name: app
    command: [sleep, "1"]
---
---
apiVersion: v1
kind: Service
metadata: {name: web}
"""


def test_documents_keep_their_index_and_first_line():
    docs = load_text(TWO_DOCS, "m.yaml")
    assert [(d.index, d.line) for d in docs] == [(1, 2), (3, 13)]
    assert docs[0].body["metadata"]["name"] == "web"
    assert docs[0].describe() == "Pod shop/web"
    assert docs[1].describe() == "Service web"


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("spec.containers[0].command", 10),
        ("spec.containers[0].name", 9),
        ("spec.containers[0].image", 9),  # missing field: its nearest existing parent
        ("metadata.namespace", 6),
        ("", 2),
    ],
)
def test_field_errors_point_at_the_line(field, line):
    doc = load_text(TWO_DOCS, "m.yaml")[0]
    err = doc.error(FieldError(field, "is wrong"))
    assert err.line == line
    assert str(err).startswith(f"m.yaml:{line} (document 1, Pod shop/web):")


def test_invalid_yaml_names_file_and_line():
    with pytest.raises(ManifestError) as exc:
        load_text("a: 1\nb: [1, 2\nc: 3\n", "broken.yaml")
    assert exc.value.source == "broken.yaml"
    assert exc.value.line == 3
    assert "not valid YAML" in str(exc.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_file(binary)


def test_json_manifests_load_too():
    docs = load_text(
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}', "x.json"
    )
    assert docs[0].describe() == "Namespace x"


def test_field_paths():
    assert parse_field_path("spec.containers[0].ports[12].name") == (
        "spec",
        "containers",
        0,
        "ports",
        12,
        "name",
    )
    assert parse_field_path("") == ()
