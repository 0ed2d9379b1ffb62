"""The CRDs in deploy/crds/ are what the models generate, are structural as Kubernetes
requires, and make the lab's API server refuse a bad policy (422, naming the field) while
taking Istio's own manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.state import crds
from agent.state.objects import parse_object
from agent.tools import crds as crds_tool
from tests.unit.apiserver_helpers import Api

EXAMPLES = Path(__file__).parent / "data" / "istio_security_examples.yaml"


def test_the_checked_in_crds_are_what_the_models_generate(tmp_path):
    for name, text in crds.files().items():
        path = crds_tool.DEFAULT_DIR / name
        assert path.exists(), f"{name} is missing: run `make crds`"
        assert path.read_text() == text, f"{path} is stale: run `make crds`"
    assert crds_tool.main(["--check", str(crds_tool.DEFAULT_DIR)]) == 0
    (tmp_path / next(iter(crds.files()))).write_text("stale\n")
    assert crds_tool.main(["--check", str(tmp_path)]) == 1, "--check fails on a stale file"


def _walk(node: Any, path: str) -> list[str]:
    """What makes a schema node not structural (apiextensions' rules): every node typed
    (or int-or-string), no $ref, no anyOf/oneOf/allOf/not carrying types,
    additionalProperties only as a map's value schema, never beside properties or false."""
    bad = []
    if not isinstance(node, dict):
        return [f"{path}: not a mapping"]
    if "$ref" in node:
        bad.append(f"{path}: $ref")
    for junctor in ("anyOf", "oneOf", "allOf", "not"):
        if junctor in node:
            bad.append(f"{path}: {junctor}")
    typed = node.get("type") in ("object", "array", "string", "integer", "number", "boolean")
    untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if not typed and not untyped_ok:
        bad.append(f"{path}: no type")
    if "x-kubernetes-int-or-string" in node and "type" in node:
        bad.append(f"{path}: int-or-string with a type")
    if "default" in node or "nullable" in node:
        bad.append(f"{path}: default/nullable")
    extra = node.get("additionalProperties")
    if extra is not None:
        if not isinstance(extra, dict):
            bad.append(f"{path}: additionalProperties {extra!r}")
        elif node.get("properties"):
            bad.append(f"{path}: additionalProperties beside properties")
        else:
            bad += _walk(extra, f"{path}.additionalProperties")
    if node.get("type") == "array":
        if not isinstance(node.get("items"), dict):
            bad.append(f"{path}: array without items")
        else:
            bad += _walk(node["items"], f"{path}.items")
    for name, sub in (node.get("properties") or {}).items():
        bad += _walk(sub, f"{path}.{name}")
    for name in node.get("required", []):
        if name not in (node.get("properties") or {}):
            bad.append(f"{path}: requires undeclared {name}")
    return bad


@pytest.mark.parametrize("kind", sorted(crds.KINDS))
def test_the_schemas_are_structural(kind):
    crd = crds.crd(kind)
    versions = crd["spec"]["versions"]
    assert [(v["name"], v["served"], v["storage"]) for v in versions] == [
        ("v1", True, True),
        ("v1beta1", True, False),
    ]
    for v in versions:
        schema = v["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object"
        assert _walk(schema, "openAPIV3Schema") == []


def test_the_structural_check_catches_what_kubernetes_refuses():
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "b": {"type": "object", "properties": {"x": {"type": "string"}}},
            "c": {"type": "array"},
            "d": {"$ref": "#/x"},
        },
        "additionalProperties": False,
    }
    bad["properties"]["b"]["additionalProperties"] = False
    problems = _walk(bad, "s")
    for expected in ("s.a: anyOf", "s.b: additionalProperties", "s.c: array", "s.d: $ref", "s: "):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_every_field_istio_declares_is_declared_so_none_is_pruned():
    spec = crds.crd("AuthorizationPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    props = spec["properties"]["spec"]["properties"]
    assert set(props) == {"selector", "targetRef", "targetRefs", "action", "provider", "rules"}
    assert props["action"]["enum"] == ["ALLOW", "DENY", "AUDIT", "CUSTOM"]
    rule = props["rules"]["items"]["properties"]
    assert set(rule) == {"from", "to", "when"}
    source = rule["from"]["items"]["properties"]["source"]["properties"]
    assert {"principals", "notRemoteIpBlocks", "serviceAccounts", "trustDomains"} <= set(source)
    assert props["rules"]["maxItems"] == 512 and source["serviceAccounts"]["maxItems"] == 16


@pytest.fixture
def api() -> Api:
    api = Api()
    for text in crds.files().values():
        status, out = api(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(text)
        )
        assert status == 201, out
    return api


def _post(api: Api, body: dict[str, Any]) -> tuple[int, Any]:
    group_version = body["apiVersion"]
    plural = crds.KINDS[body["kind"]]["plural"]
    ns = body["metadata"].get("namespace", "default")
    return api("POST", f"/apis/{group_version}/namespaces/{ns}/{plural}", body)


SRC = "spec.rules[0].from[0].source"
BAD = [
    ({"action": "REJECT"}, "spec.action", "Unsupported value"),
    ({"rules": [{"from": [{"source": {"principals": "x"}}]}]}, f"{SRC}.principals", "type array"),
    ({"rules": [{"when": [{"values": ["a"]}]}]}, "spec.rules[0].when[0].key", "Required value"),
    (
        {"rules": [{"to": [{"operation": {"ports": [{"a": 1}]}}]}]},
        "spec.rules[0].to[0].operation.ports[0]",
        "",
    ),
    ({"selector": {"matchLabels": {"a": 1}}}, "spec.selector.matchLabels.a", "type string"),
    ({"rules": [{}] * 513}, "spec.rules", "Too many"),
    (
        {"rules": [{"from": [{"source": {"serviceAccounts": ["x" * 321]}}]}]},
        f"{SRC}.serviceAccounts[0]",
        "Too long",
    ),
]


@pytest.mark.parametrize(("spec", "field", "says"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_policy_is_refused_by_the_api_server_naming_the_field(api, spec, field, says):
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": spec,
    }
    status, out = _post(api, body)
    assert status == 422 and out["reason"] == "Invalid", out
    causes = out["details"]["causes"]
    assert causes[0]["field"] == field and says in causes[0]["message"], causes
    with pytest.raises(Exception) as exc:  # the agent refuses it too, naming the same field
        parse_object(body)
    assert getattr(exc.value, "field", "").startswith(field.split("[")[0]), exc.value


def test_istio_examples_are_accepted_by_the_api_server_and_by_the_agent(api):
    docs = list(yaml.safe_load_all(EXAMPLES.read_text()))
    assert len(docs) >= 8
    for ns in sorted({d["metadata"]["namespace"] for d in docs} - {"default"}):
        meta = {"name": ns}
        assert (
            api(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": meta},
            )[0]
            == 201
        )
    for body in docs:
        status, out = _post(api, body)
        assert status == 201, (body["metadata"], out)
        assert out["spec"] == body["spec"], "nothing pruned, nothing defaulted"
        parse_object(out)  # what the API server stored, the agent reads


def test_what_only_istios_webhook_refuses_passes_the_api_server_and_fails_closed_in_the_agent(
    api,
):
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "empty-from", "namespace": "default"},
        "spec": {"targetRefs": [{"kind": "Gateway", "name": "w"}], "rules": [{"from": []}]},
    }
    status, out = _post(api, body)
    assert status == 201 and out["spec"] == body["spec"], "kept whole, targetRefs not pruned"
    with pytest.raises(Exception) as exc:
        parse_object(out)
    assert getattr(exc.value, "field", "") == "spec.targetRefs"
