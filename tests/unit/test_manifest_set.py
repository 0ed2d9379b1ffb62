"""A directory's manifests, file by file: diffs, ownership, and last-good versions on errors."""

from agent.common.errors import ManifestError
from agent.common.manifest import load_text
from agent.sources.manifest_set import ManifestSet
from agent.state import ObjectKey


def ns_doc(name, labels=""):
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n"


def keys(objs):
    return sorted(str(o.key) for o in objs)


def test_new_changed_and_removed_objects():
    s = ManifestSet()
    c = s.update_file("a.yaml", load_text(ns_doc("x") + "---\n" + ns_doc("y"), "a.yaml"))
    assert keys(c.upserts) == ["Namespace x", "Namespace y"] and c.deletes == []
    c = s.update_file("a.yaml", load_text(ns_doc("x", "team: a"), "a.yaml"))
    assert keys(c.upserts) == ["Namespace x"]
    assert c.deletes == [ObjectKey("Namespace", "", "y")]
    c = s.update_file("a.yaml", load_text(ns_doc("x", "team: a"), "a.yaml"))
    assert not c  # nothing changed
    c = s.remove_file("a.yaml")
    assert c.deletes == [ObjectKey("Namespace", "", "x")]


def test_unparsable_file_keeps_everything_it_had():
    s = ManifestSet()
    s.update_file("a.yaml", load_text(ns_doc("x"), "a.yaml"))
    err = ManifestError("a.yaml", "not valid YAML", line=3)
    c = s.update_file("a.yaml", err)
    assert not c
    assert s.errors() == [err]
    assert keys(s.all_objects()) == ["Namespace x"]


def test_invalid_object_keeps_its_last_good_version_and_others_apply():
    s = ManifestSet()
    s.update_file("a.yaml", load_text(ns_doc("x", "v: '1'") + "---\n" + ns_doc("y"), "a.yaml"))
    bad_x = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {v: [1]}\n"
    c = s.update_file("a.yaml", load_text(bad_x + "---\n" + ns_doc("y", "v: '2'"), "a.yaml"))
    assert keys(c.upserts) == ["Namespace y"] and c.deletes == []
    (err,) = s.errors()
    assert err.field == "metadata.labels.v" and err.line == 5 and err.obj == "Namespace x"
    x = next(o for o in s.all_objects() if o.meta.name == "x")
    assert x.meta.labels == {"v": "1"}


def test_an_object_in_two_files_survives_removal_from_one():
    s = ManifestSet()
    s.update_file("a.yaml", load_text(ns_doc("x", "from: a"), "a.yaml"))
    c = s.update_file("b.yaml", load_text(ns_doc("x", "from: b"), "b.yaml"))
    assert c.upserts[0].meta.labels == {"from": "b"}
    c = s.remove_file("b.yaml")
    assert c.deletes == [] and c.upserts[0].meta.labels == {"from": "a"}
    c = s.remove_file("a.yaml")
    assert c.deletes == [ObjectKey("Namespace", "", "x")]


POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {namespaces: [shop], 1: x, z: y}}]}]}
"""


def test_a_key_that_is_not_a_string_is_refused_and_the_policy_fails_closed():
    # Found by tests/fuzz/fuzz_policy.py: sorting the unknown keys raised TypeError, which
    # would have stopped the file source.
    s = ManifestSet()
    s.update_file("p.yaml", load_text(POLICY, "p.yaml"))
    (err,) = s.errors()
    assert err.field == "spec.rules[0].from[0].source.1" and "unknown field" in err.reason
    (p,) = s.all_objects()
    assert p.fail_closed and p.refused.field == err.field


def test_a_parser_bug_refuses_the_document_instead_of_stopping_the_source(monkeypatch, caplog):
    import agent.sources.manifest_set as manifest_set

    def broken(body):
        raise RuntimeError("a bug")

    monkeypatch.setattr(manifest_set, "parse_object", broken)
    s = ManifestSet()
    s.update_file("p.yaml", load_text(POLICY + "---\n" + ns_doc("x"), "p.yaml"))
    assert [e.reason for e in s.errors()] == ["could not be validated (RuntimeError: a bug)"] * 2
    (p,) = s.all_objects()
    assert p.key == ObjectKey("AuthorizationPolicy", "shop", "p") and p.fail_closed
    assert "validating a document failed unexpectedly" in caplog.text
