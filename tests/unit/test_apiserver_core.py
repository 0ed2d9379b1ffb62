"""The lab API server's request handling, in process (sans-IO): the real API's answers.

Transcript-style tables: a request, and the status, reason and message (or
field) the real kube-apiserver answers it with.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.lab.apiserver.core import NAMESPACE_CLEANUP_DELAY, ApiCore, Response
from tests.unit.apiserver_helpers import Api, events, pod

PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
def api() -> Api:
    return Api()


BAD: list[tuple[str, str, Any, dict[str, str], int, str, str]] = [
    # method, path, body, options, code, reason, what the message says
    (
        "GET",
        "/api/v1/namespaces/default/pods/nope",
        None,
        {},
        404,
        "NotFound",
        'pods "nope" not found',
    ),
    (
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x",
        None,
        {},
        404,
        "NotFound",
        'endpointslices.discovery.k8s.io "x" not found',
    ),
    (
        "GET",
        "/api/v1/widgets",
        None,
        {},
        404,
        "NotFound",
        "the server could not find the requested resource",
    ),
    (
        "GET",
        "/apis/nope.example.com/v1/things",
        None,
        {},
        404,
        "NotFound",
        "the server could not find",
    ),
    ("PUT", PODS, {}, {}, 405, "MethodNotAllowed", "does not allow this method"),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews/x", {}, {}, 405, "MethodNotAllowed", ""),
    ("GET", "/apis/authentication.k8s.io/v1/tokenreviews", None, {}, 405, "MethodNotAllowed", ""),
    ("POST", PODS, b"{not json", {}, 400, "BadRequest", "json parse error"),
    ("POST", PODS, [1, 2], {}, 400, "BadRequest", "must be a JSON object"),
    (
        "POST",
        PODS,
        pod("x"),
        {"ctype": "text/plain"},
        415,
        "UnsupportedMediaType",
        "application/json",
    ),
    (
        "PATCH",
        PODS + "/x",
        {},
        {"ctype": "application/json"},
        415,
        "UnsupportedMediaType",
        "application/merge-patch+json",
    ),
    (
        "GET",
        PODS,
        None,
        {"accept": "application/vnd.kubernetes.protobuf"},
        406,
        "NotAcceptable",
        "application/json",
    ),
    (
        "POST",
        PODS,
        {**pod("x"), "kind": "Service"},
        {},
        400,
        "BadRequest",
        "cannot be handled as a Service",
    ),
    (
        "POST",
        PODS,
        {**pod("x"), "apiVersion": "v2"},
        {},
        400,
        "BadRequest",
        "does not match the expected API version",
    ),
    (
        "POST",
        PODS,
        {**pod("x"), "metadata": {"name": "x", "namespace": "other"}},
        {},
        400,
        "BadRequest",
        "namespace of the provided object does not match",
    ),
    (
        "POST",
        PODS,
        {**pod("x"), "metadata": {"name": "x", "resourceVersion": "5"}},
        {},
        400,
        "BadRequest",
        "resourceVersion should not be set",
    ),
    (
        "POST",
        "/api/v1/namespaces/nowhere/pods",
        pod("x"),
        {},
        404,
        "NotFound",
        'namespaces "nowhere" not found',
    ),
    (
        "POST",
        PODS,
        {**pod("x"), "metadata": {}},
        {},
        422,
        "Invalid",
        "metadata.name: Required value",
    ),
    (
        "POST",
        PODS,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": []}},
        {},
        422,
        "Invalid",
        "spec.containers: Required value",
    ),
    (
        "POST",
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x", "labels": {"a b": "c"}},
            "spec": {"containers": [{"name": "c"}]},
        },
        {},
        422,
        "Invalid",
        'metadata.labels: Invalid value: "a b"',
    ),
    (
        "POST",
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]},
        },
        {},
        422,
        "Invalid",
        'spec.containers[0].ports[0].containerPort in body must be of type integer: "string"',
    ),
    (
        "POST",
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "bogus": 1}]},
        },
        {"fieldValidation": "Strict"},
        400,
        "BadRequest",
        'strict decoding error: unknown field "spec.containers[0].bogus"',
    ),
    (
        "POST",
        PODS,
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","name":"y"},"spec":{"containers":[{"name":"c"}]}}',
        {"fieldValidation": "Strict"},
        400,
        "BadRequest",
        'duplicate field "name"',
    ),
    (
        "POST",
        PODS,
        pod("x"),
        {"fieldValidation": "Loose"},
        400,
        "BadRequest",
        "fieldValidation must be one of",
    ),
    (
        "GET",
        PODS,
        None,
        {"labelSelector": "a in (b"},
        400,
        "BadRequest",
        "unable to parse requirement",
    ),
    (
        "GET",
        PODS,
        None,
        {"labelSelector": "a=b c"},
        400,
        "BadRequest",
        "unable to parse requirement",
    ),
    (
        "GET",
        PODS,
        None,
        {"fieldSelector": "spec.foo=1"},
        400,
        "BadRequest",
        "field label not supported: spec.foo",
    ),
    ("GET", PODS, None, {"limit": "ten"}, 400, "BadRequest", "invalid limit"),
    ("GET", PODS, None, {"continue": "%%%"}, 400, "BadRequest", "continue key is not valid"),
    (
        "GET",
        PODS,
        None,
        {"resourceVersion": "abc"},
        400,
        "BadRequest",
        "is not a valid resource version",
    ),
    ("GET", PODS, None, {"resourceVersion": "99999"}, 504, "Timeout", "Too large resource version"),
    (
        "GET",
        PODS,
        None,
        {"resourceVersionMatch": "Exact"},
        422,
        "Invalid",
        "resourceVersionMatch is forbidden unless resourceVersion is provided",
    ),
    (
        "GET",
        PODS,
        None,
        {"watch": "1", "sendInitialEvents": "true"},
        422,
        "Invalid",
        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
    ),
    (
        "GET",
        PODS,
        None,
        {"watch": "1", "resourceVersionMatch": "NotOlderThan", "resourceVersion": "1"},
        422,
        "Invalid",
        "resourceVersionMatch is forbidden for watch",
    ),
    (
        "GET",
        PODS,
        None,
        {"watch": "1", "timeoutSeconds": "-1"},
        400,
        "BadRequest",
        "timeoutSeconds",
    ),
    (
        "DELETE",
        PODS + "/x",
        None,
        {"propagationPolicy": "Sideways"},
        422,
        "Invalid",
        'Unsupported value: "Sideways"',
    ),
    (
        "POST",
        PODS,
        b"a: &a [1]\nb: *a\n",
        {"ctype": "application/yaml"},
        400,
        "BadRequest",
        "aliases are not allowed",
    ),
    ("POST", PODS, b"[" * 5000 + b"]" * 5000, {}, 400, "BadRequest", "nested more than"),
    ("POST", PODS, b" " * (3 * 1024 * 1024 + 1), {}, 413, "RequestEntityTooLarge", "limit is"),
    ("POST", PODS, b'{"a": NaN}', {}, 400, "BadRequest", "json parse error"),
    (
        "POST",
        PODS,
        b"k8s\x00\x0a\x05\x0a\x01\x76",
        {"ctype": "application/vnd.kubernetes.protobuf"},
        400,
        "BadRequest",
        "protobuf body cannot be decoded",
    ),
    ("GET", PODS, None, {"token": ""}, 401, "Unauthorized", "Unauthorized"),
    ("GET", PODS, None, {"token": "ss-not-a-token"}, 401, "Unauthorized", "Unauthorized"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "opts", "code", "reason", "says"),
    BAD,
    ids=[f"{b[4]}-{i}" for i, b in enumerate(BAD)],
)
def test_bad_requests_get_the_real_status(
    api: Api,
    method: str,
    path: str,
    body: Any,
    opts: dict[str, str],
    code: int,
    reason: str,
    says: str,
) -> None:
    before = api.core.store.rv
    status, out = api(method, path, body, **opts)
    assert (status, out["kind"], out["reason"], out["code"]) == (code, "Status", reason, code), out
    assert says in out["message"]
    assert api.core.store.rv == before  # a refused request writes nothing


def test_invalid_names_every_field_with_causes(api: Api) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "Web_1"},
        "spec": {"ports": [{"port": 70000, "protocol": "XTP"}, {"port": 80}], "type": "Magic"},
    }
    status, out = api("POST", "/api/v1/namespaces/default/services", bad)
    assert (
        status == 422 and out["details"]["kind"] == "Service" and out["details"]["name"] == "Web_1"
    )
    fields = [c["field"] for c in out["details"]["causes"]]
    assert fields[0] == "metadata.name"
    assert out["message"].startswith(
        'Service "Web_1" is invalid: [metadata.name: Invalid value: "Web_1": a DNS-1035 label'
    )


def test_conflict_on_a_stale_resource_version_and_no_op_updates(api: Api) -> None:
    status, created = api("POST", PODS, pod("p"))
    assert status == 201
    stale = dict(created, metadata=dict(created["metadata"], labels={"a": "1"}))
    status, updated = api("PUT", PODS + "/p", stale)
    assert status == 200 and updated["metadata"]["labels"] == {"a": "1"}
    status, out = api("PUT", PODS + "/p", stale)
    assert (status, out["reason"]) == (409, "Conflict")
    assert out["message"] == (
        'Operation cannot be fulfilled on pods "p": the '
        "object has been modified; please apply your changes "
        "to the latest version and try again"
    )
    # An update that changes nothing keeps the version (as the real server).
    status, same = api("PUT", PODS + "/p", updated)
    assert (
        status == 200
        and same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    )
    # The pod's spec is fixed once created, but for images.
    changed = json.loads(json.dumps(updated))
    changed["spec"]["restartPolicy"] = "Never"
    status, out = api("PUT", PODS + "/p", changed)
    assert status == 422 and "pod updates may not change fields" in out["message"]


def test_status_subresource_writes_only_status(api: Api) -> None:
    api("POST", PODS, pod("p"))
    status, out = api(
        "PATCH",
        PODS + "/p/status",
        {"metadata": {"labels": {"sneaky": "1"}}, "status": {"phase": "Running"}},
        ctype="application/merge-patch+json",
    )
    assert (
        status == 200
        and out["status"]["phase"] == "Running"
        and "sneaky" not in (out["metadata"].get("labels") or {})
    )
    status, out = api(
        "PATCH", PODS + "/p", {"status": {"phase": "Failed"}}, ctype="application/merge-patch+json"
    )
    assert status == 200 and out["status"]["phase"] == "Running"


def test_watch_selector_transitions_and_history(api: Api) -> None:
    api("POST", PODS, pod("a", {"app": "web"}))
    w = api.watch(PODS, labelSelector="app=web", resourceVersion=str(api.core.store.rv))
    api(
        "PATCH",
        PODS + "/a",
        {"metadata": {"labels": {"app": "db"}}},
        ctype="application/merge-patch+json",
    )
    api(
        "PATCH",
        PODS + "/a",
        {"metadata": {"labels": {"app": "web"}}},
        ctype="application/merge-patch+json",
    )
    api("POST", PODS, pod("b", {"app": "db"}))
    api("DELETE", PODS + "/a")
    assert events(w.watcher.take()) == [("DELETED", "a"), ("ADDED", "a"), ("DELETED", "a")]
    w.close()


def test_watch_from_rv_zero_and_unset_lists_then_streams(api: Api) -> None:
    api("POST", PODS, pod("a"))
    for rv in ("", "0"):
        w = api.watch(PODS, resourceVersion=rv) if rv else api.watch(PODS)
        assert events(w.initial) == [("ADDED", "a")]
        w.close()


def test_watch_too_old_is_an_error_event_with_410() -> None:
    api = Api(history_size=3)
    for i in range(6):
        api("POST", PODS, pod(f"p{i}"))
    w = api.watch(PODS, resourceVersion="1")
    ev = json.loads(w.initial[0])
    assert (
        ev["type"] == "ERROR"
        and ev["object"]["code"] == 410
        and ev["object"]["reason"] == "Expired"
    )
    assert ev["object"]["message"].startswith("too old resource version: 1 (")
    assert w.timeout == 0 and not api.core.watchers


def test_watch_queue_is_bounded_and_watches_are_counted() -> None:
    api = Api(watch_queue_bytes=4096, max_watchers=2)
    slow = api.watch(PODS, resourceVersion=str(api.core.store.rv))
    reader = api.watch(PODS)
    status, out = api("GET", PODS, watch="1")
    assert (status, out["reason"]) == (429, "TooManyRequests")
    for i in range(20):
        api("POST", PODS, pod(f"p{i}"))
        reader.watcher.take()  # this client keeps up
    assert slow.watcher.closed and slow.watcher.size == 0
    assert len(api.core.watchers) == 1
    # The server still answers everyone else.
    assert api("GET", PODS, limit="1")[0] == 200


def test_bookmark_carries_the_current_version(api: Api) -> None:
    w = api.watch(PODS, allowWatchBookmarks="true", resourceVersion=str(api.core.store.rv))
    api("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    mark = json.loads(w.bookmark())
    assert mark["type"] == "BOOKMARK" and mark["object"]["kind"] == "Pod"
    assert int(mark["object"]["metadata"]["resourceVersion"]) == api.core.store.rv


def test_list_exact_version_is_a_snapshot(api: Api) -> None:
    api("POST", PODS, pod("a"))
    rv = str(api.core.store.rv)
    api("POST", PODS, pod("b"))
    api("DELETE", PODS + "/a")
    status, out = api("GET", PODS, resourceVersion=rv, resourceVersionMatch="Exact")
    assert status == 200 and [p["metadata"]["name"] for p in out["items"]] == ["a"]
    assert out["metadata"]["resourceVersion"] == rv


def test_strategic_merge_patch_directives(api: Api) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "finalizers": ["a/x"]},
        "spec": {
            "selector": {"app": "s"},
            "ports": [
                {"name": "a", "port": 80},
                {"name": "b", "port": 81},
                {"name": "c", "port": 82},
            ],
        },
    }
    api("POST", "/api/v1/namespaces/default/services", svc)
    patch = {
        "metadata": {"finalizers": ["a/y"], "$deleteFromPrimitiveList/finalizers": ["a/x"]},
        "spec": {
            "$setElementOrder/ports": [{"port": 82}, {"port": 80}, {"port": 83}],
            "ports": [
                {"port": 81, "$patch": "delete"},
                {"port": 83, "name": "d"},
                {"port": 80, "targetPort": 8080},
            ],
            "selector": {"$patch": "replace", "app": "new"},
        },
    }
    status, out = api(
        "PATCH",
        "/api/v1/namespaces/default/services/s",
        patch,
        ctype="application/strategic-merge-patch+json",
    )
    assert status == 200, out
    assert [(p["port"], p.get("targetPort")) for p in out["spec"]["ports"]] == [
        (82, 82),
        (80, 8080),
        (83, 83),
    ]
    assert out["spec"]["selector"] == {"app": "new"}
    assert out["metadata"]["finalizers"] == ["a/y"]
    assert not any(k.startswith("$") for k in json.dumps(out).split('"') if k)
    # $retainKeys keeps only the listed keys of a map.
    retain = {"spec": {"selector": {"$retainKeys": ["app"], "tier": "x"}}}
    status, out = api(
        "PATCH",
        "/api/v1/namespaces/default/services/s",
        retain,
        ctype="application/strategic-merge-patch+json",
    )
    assert status == 200 and out["spec"]["selector"] == {"app": "new"}


def test_strategic_merge_is_refused_for_custom_resources(api: Api) -> None:
    install_crds(api)
    api(
        "POST",
        "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p"},
            "spec": {},
        },
    )
    status, out = api(
        "PATCH",
        "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies/p",
        {"spec": {}},
        ctype="application/strategic-merge-patch+json",
    )
    assert (status, out["reason"]) == (415, "UnsupportedMediaType")


def install_crds(api: Api) -> None:
    import yaml

    from tests.functional.apikit import DATA

    for doc in yaml.safe_load_all((DATA / "crds.yaml").read_text()):
        status, out = api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        assert status == 201, out


def test_crd_registration_updates_discovery_and_openapi(api: Api) -> None:
    status, out = api("GET", "/apis/security.istio.io/v1")
    assert status == 404
    install_crds(api)
    status, out = api("GET", "/apis/security.istio.io/v1")
    assert status == 200 and {r["name"] for r in out["resources"]} == {
        "authorizationpolicies",
        "authorizationpolicies/status",
        "peerauthentications",
    }
    status, out = api(
        "GET",
        "/apis",
        accept="application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    )
    groups = {g["metadata"]["name"]: g for g in out["items"]}
    assert out["kind"] == "APIGroupDiscoveryList" and "gateway.networking.k8s.io" in groups
    status, index = api("GET", "/openapi/v3")
    assert "apis/security.istio.io/v1" in index["paths"]
    status, doc = api("GET", "/openapi/v3/apis/security.istio.io/v1")
    schema = doc["components"]["schemas"]["io.istio.security.v1.AuthorizationPolicy"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "security.istio.io", "version": "v1", "kind": "AuthorizationPolicy"}
    ]
    patch = doc["paths"][
        "/apis/security.istio.io/v1/namespaces/{namespace}/authorizationpolicies/{name}"
    ]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    # Deleting the CRD removes its objects and its API.
    api(
        "POST",
        "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p"},
        },
    )
    assert (
        api(
            "DELETE",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/authorizationpolicies.security.istio.io",
        )[0]
        == 200
    )
    assert (
        api("GET", "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies")[0] == 404
    )
    assert api.core.store.count("authorizationpolicies.security.istio.io") == 0


CR_CASES = [
    (
        {"action": "NOPE"},
        "spec.action",
        'Unsupported value: "NOPE": supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"',
    ),
    (
        {"rules": [{"from": [{"source": {"principals": "x"}}]}]},
        "spec.rules[0].from[0].source.principals",
        (
            'Invalid value: "string": spec.rules[0].from[0].source.principals '
            'in body must be of type array: "string"'
        ),
    ),
    ({"rules": [{"when": [{"values": ["a"]}]}]}, "spec.rules[0].when[0].key", "Required value"),
    (
        {"rules": [{"to": [{"operation": {"ports": ["123456"]}}]}]},
        "spec.rules[0].to[0].operation.ports[0]",
        "Too long: may not be more than 5 bytes",
    ),
    (
        {"selector": {"matchLabels": {"a": 1}}},
        "spec.selector.matchLabels.a",
        'in body must be of type string: "integer"',
    ),
    ({"rules": "all"}, "spec.rules", 'must be of type array: "string"'),
]


@pytest.mark.parametrize(("spec", "field", "says"), CR_CASES)
def test_custom_resources_are_validated_against_their_schema(
    api: Api, spec: dict[str, Any], field: str, says: str
) -> None:
    install_crds(api)
    obj = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    }
    status, out = api(
        "POST", "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies", obj
    )
    assert status == 422 and out["reason"] == "Invalid"
    assert (
        out["details"]["group"] == "security.istio.io"
        and out["details"]["kind"] == "AuthorizationPolicy"
    )
    assert [c["field"] for c in out["details"]["causes"]] == [field]
    assert says in out["details"]["causes"][0]["message"]
    assert out["message"].startswith(
        f'AuthorizationPolicy.security.istio.io "p" is invalid: {field}: '
    )


def test_custom_resources_prune_warn_and_default(api: Api) -> None:
    install_crds(api)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"rules": [{"backendRefs": [{"name": "web", "extra": 1}]}], "unknown": True},
    }
    resp = api.raw(
        "POST",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
        route,
        fieldValidation="Warn",
    )
    assert isinstance(resp, Response) and resp.status == 201
    warnings = [v for k, v in resp.headers if k == "Warning"]
    assert '299 - "unknown field \\"spec.rules[0].backendRefs[0].extra\\""' in warnings or any(
        "spec.unknown" in w for w in warnings
    )
    out = json.loads(resp.body)
    assert "unknown" not in out["spec"] and "extra" not in out["spec"]["rules"][0]["backendRefs"][0]
    assert out["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1
    assert out["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    gtw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g"},
        "spec": {
            "gatewayClassName": "x",
            "listeners": [{"name": "a", "port": 0, "protocol": "HTTP"}],
            "preserved": None,
        },
    }
    status, out = api(
        "POST",
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
        gtw,
        fieldValidation="Ignore",
    )
    assert status == 422 and out["details"]["causes"][0]["field"] == "spec.listeners[0].port"
    assert "should be greater than or equal to 1" in out["details"]["causes"][0]["message"]


def test_tables_for_kubectl_get(api: Api) -> None:
    api("POST", PODS, pod("web", nodeName="n1"))
    api(
        "PATCH",
        PODS + "/web/status",
        {"status": {"podIP": "10.0.0.9", "phase": "Running"}},
        ctype="application/merge-patch+json",
    )
    _, table = api(
        "GET",
        PODS,
        accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        includeObject="Object",
    )
    assert table["kind"] == "Table"
    cols = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert cols[:7] == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("IP", 1),
        ("Node", 1),
    ]
    row = table["rows"][0]
    assert row["cells"][:3] == ["web", "0/1", "Running"] and row["cells"][5:7] == ["10.0.0.9", "n1"]
    assert row["object"]["metadata"]["name"] == "web"
    _, table = api(
        "GET", "/api/v1/configmaps", accept="application/json;as=Table;v=v1;g=meta.k8s.io"
    )
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    _status, table = api(
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Created At"]


def test_endpoint_slices_follow_selectors_and_readiness(api: Api) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "h", "port": 80, "targetPort": "http"}],
        },
    }
    api("POST", "/api/v1/namespaces/default/services", svc)
    api("POST", PODS, pod("w1", {"app": "web"}, nodeName="node-a"))
    api("POST", PODS, pod("w2", {"app": "web"}))
    api("POST", PODS, pod("other", {"app": "db"}))
    api(
        "PATCH",
        PODS + "/w1/status",
        {"status": {"podIP": "10.244.1.2", "conditions": [{"type": "Ready", "status": "True"}]}},
        ctype="application/merge-patch+json",
    )
    api(
        "PATCH",
        PODS + "/w2/status",
        {"status": {"podIP": "10.244.1.3"}},
        ctype="application/merge-patch+json",
    )
    _status, out = api(
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        labelSelector="kubernetes.io/service-name=web",
    )
    (sl,) = out["items"]
    assert sl["addressType"] == "IPv4" and sl["ports"] == [
        {"port": 8080, "protocol": "TCP", "name": "h"}
    ]
    eps = {e["targetRef"]["name"]: e for e in sl["endpoints"]}
    assert set(eps) == {"w1", "w2"}
    assert (
        eps["w1"]["addresses"] == ["10.244.1.2"]
        and eps["w1"]["conditions"]["ready"] is True
        and eps["w1"]["nodeName"] == "node-a"
    )
    assert eps["w2"]["conditions"]["ready"] is False and eps["w1"]["targetRef"]["uid"]
    assert sl["metadata"]["ownerReferences"][0]["kind"] == "Service"
    api(
        "PATCH",
        PODS + "/w1",
        {"metadata": {"labels": {"app": "db"}}},
        ctype="application/merge-patch+json",
    )
    _, out = api("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
    assert [e["targetRef"]["name"] for e in out["items"][0]["endpoints"]] == ["w2"]
    _, ep = api("GET", "/api/v1/namespaces/default/endpoints/web")
    assert ep["subsets"][0]["notReadyAddresses"][0]["ip"] == "10.244.1.3"
    # Deleting the Service takes its slice (garbage collection through ownerReferences).
    api("DELETE", "/api/v1/namespaces/default/services/web")
    assert api.core.store.count("endpointslices.discovery.k8s.io") == 0


def test_namespace_deletion_takes_its_objects_and_finalizers_hold() -> None:
    now = [1000.0]
    core = ApiCore(clock=lambda: now[0])
    api = Api(core)
    api("POST", "/api/v1/namespaces", {"metadata": {"name": "gone"}})
    api("POST", "/api/v1/namespaces/gone/configmaps", {"metadata": {"name": "c"}})
    api(
        "POST",
        "/api/v1/namespaces/gone/configmaps",
        {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}},
    )
    status, ns = api("DELETE", "/api/v1/namespaces/gone")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    # Its objects outlive it a moment (the namespace controller's lag), as `kubectl delete
    # -k` of an install that holds its namespace relies on; new ones are refused at once.
    assert api("GET", "/api/v1/namespaces/gone/configmaps/c")[0] == 200
    status, out = api("POST", "/api/v1/namespaces/gone/configmaps", {"metadata": {"name": "new"}})
    assert status == 403 and "being terminated" in out["message"]
    now[0] += NAMESPACE_CLEANUP_DELAY
    assert api("GET", "/api/v1/namespaces/gone/configmaps/c")[0] == 404
    status, held = api("GET", "/api/v1/namespaces/gone/configmaps/held")
    assert held["metadata"]["deletionTimestamp"]
    status, out = api("POST", "/api/v1/namespaces/gone/configmaps", {"metadata": {"name": "late"}})
    assert status == 403 and "being terminated" in out["message"]
    api(
        "PATCH",
        "/api/v1/namespaces/gone/configmaps/held",
        {"metadata": {"finalizers": None}},
        ctype="application/merge-patch+json",
    )
    assert api("GET", "/api/v1/namespaces/gone/configmaps/held")[0] == 404
    assert api("GET", "/api/v1/namespaces/gone")[0] == 404


def test_orphan_propagation_keeps_dependents(api: Api) -> None:
    _, owner = api("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    api(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": "dep", "ownerReferences": [ref]}},
    )
    api("DELETE", "/api/v1/namespaces/default/configmaps/owner", propagationPolicy="Orphan")
    status, dep = api("GET", "/api/v1/namespaces/default/configmaps/dep")
    assert status == 200 and "ownerReferences" not in dep["metadata"]


def test_server_side_apply_semantics(api: Api) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"a": "1"}},
        "data": {"x": "1", "y": "2"},
    }
    path = "/api/v1/namespaces/default/configmaps/c"
    ssa = "application/apply-patch+yaml"
    status, out = api("PATCH", path, cm, ctype=ssa)
    assert status == 422 and "fieldManager: Required value" in out["message"]
    status, out = api("PATCH", path, cm, ctype=ssa, fieldManager="one")
    assert status == 201 and out["data"] == {"x": "1", "y": "2"}
    status, out = api(
        "PATCH",
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"y": "other"},
        },
        ctype=ssa,
        fieldManager="two",
    )
    assert status == 409 and out["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "one" using v1',
            "field": ".data.y",
        }
    ]
    # Same value: shared ownership, no conflict; then "one" drops y but "two" still owns it.
    status, out = api(
        "PATCH",
        path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"y": "2"}},
        ctype=ssa,
        fieldManager="two",
    )
    assert status == 200
    status, out = api(
        "PATCH",
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"a": "1"}},
            "data": {"x": "1"},
        },
        ctype=ssa,
        fieldManager="one",
    )
    assert status == 200 and out["data"] == {"x": "1", "y": "2"}
    status, out = api(
        "PATCH",
        path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        ctype=ssa,
        fieldManager="one",
    )
    assert status == 200 and out["data"] == {"y": "2"} and "labels" not in out["metadata"]
    status, out = api(
        "PATCH", path, {"data": {}}, ctype="application/merge-patch+json", force="true"
    )
    assert status == 422 and "force: Forbidden" in out["message"]
    managers = (
        {(m["manager"], m["operation"]) for m in out.get("metadata", {}).get("managedFields", [])}
        if status == 200
        else None
    )
    assert managers is None


def test_rbac_rules_and_forbidden_messages(api: Api) -> None:
    core = api.core
    token = core.mint_token("alice", ["devs"])
    api(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "metadata": {"name": "pod-status"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["only-this"],
                    "verbs": ["get"],
                },
            ],
        },
    )
    api(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": "devs"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "pod-status",
            },
            "subjects": [
                {"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )
    api("POST", PODS, pod("p"))
    assert (
        api(
            "PATCH",
            PODS + "/p/status",
            {"status": {"phase": "Running"}},
            ctype="application/merge-patch+json",
            token=token,
        )[0]
        == 200
    )
    status, out = api(
        "PATCH",
        PODS + "/p",
        {"metadata": {"labels": {"x": "1"}}},
        ctype="application/merge-patch+json",
        token=token,
    )
    assert status == 403 and out["message"] == (
        'pods "p" is forbidden: User "alice" cannot patch '
        'resource "pods" in API group "" in the namespace '
        '"default"'
    )
    api("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "only-this"}})
    assert api("GET", "/api/v1/namespaces/default/configmaps/only-this", token=token)[0] == 200
    assert api("GET", "/api/v1/namespaces/default/configmaps", token=token)[0] == 403
    assert (
        api("GET", "/api", token=token)[0] == 200
    )  # discovery is open to every authenticated user
    status, out = api("GET", "/api/v1/nodes", token=token)
    assert out["message"].endswith("at the cluster scope")


def test_tokens_expire_and_die_with_what_they_are_bound_to() -> None:
    now = [1000.0]
    core = ApiCore(clock=lambda: now[0])
    api = Api(core)
    api("POST", "/api/v1/nodes", {"metadata": {"name": "node-a"}})
    api("POST", PODS, {**pod("agent"), "spec": {**pod("agent")["spec"], "nodeName": "node-a"}})
    token = core.mint_service_account_token("default", "default", pod="agent", ttl=600)

    def review() -> dict[str, Any]:
        status, out = api(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        assert status == 201
        return out["status"]

    ok = review()
    assert ok["authenticated"] and ok["user"]["extra"][
        "authentication.kubernetes.io/node-name"
    ] == ["node-a"]
    assert core.authenticate(token) is not None
    now[0] += 601
    assert review() == {"authenticated": False, "error": "token has expired"}
    assert api("GET", PODS, token=token)[0] == 401
    now[0] -= 601
    _status, _sa = api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
    api("DELETE", "/api/v1/namespaces/default/serviceaccounts/default")
    assert "has been deleted" in review()["error"]


def test_state_file_restart_keeps_objects_tokens_and_versions(tmp_path) -> None:
    from agent.lab.apiserver.persist import StateFile

    path = str(tmp_path / "state.json")
    core = ApiCore(state=StateFile(path))
    api = Api(core)
    api("POST", PODS, pod("a"))
    api("POST", PODS, pod("b"))
    api("DELETE", PODS + "/a")
    rv = core.store.rv
    # A crash mid-write leaves a cut line: it is ignored, and what came before is kept.
    assert core.state is not None
    core.state.close()
    with open(path + ".journal", "a") as f:
        f.write('{"rv": 99999, "type": "ADDED", "ke')
    again = ApiCore(state=StateFile(path))
    api2 = Api(again)
    assert again.store.rv == rv
    assert api2("GET", PODS + "/b", token=api.token)[0] == 200  # the old admin token still works
    assert api2("GET", PODS + "/a")[0] == 404
    _status, c = api2("POST", PODS, pod("c"))
    assert int(c["metadata"]["resourceVersion"]) > rv
    w = api2.raw("GET", PODS, watch="1", resourceVersion="2")
    assert json.loads(w.initial[0])["object"]["code"] == 410  # type: ignore[union-attr]
    again.close()


def test_protobuf_bodies_decode_as_kubectl_sends_them(api: Api) -> None:
    # kubectl create configmap c --from-literal=k=v (recorded with -v=9, as bytes).
    def ld(num: int, data: bytes) -> bytes:
        return bytes([num << 3 | 2, len(data)]) + data

    meta = ld(1, b"c") + ld(3, b"")
    entry = ld(1, b"k") + ld(2, b"v")
    cm = ld(1, meta) + ld(2, entry)
    envelope = ld(1, ld(1, b"v1") + ld(2, b"ConfigMap")) + ld(2, cm) + ld(3, b"") + ld(4, b"")
    status, out = api(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        b"k8s\x00" + envelope,
        ctype="application/vnd.kubernetes.protobuf",
    )
    assert status == 201 and out["metadata"]["name"] == "c" and out["data"] == {"k": "v"}


def test_lone_surrogates_never_break_an_answer(api: Api) -> None:
    # Found by fuzz_apiserver: a `\ud800` escape echoed in an error (or stored) broke encoding.
    body = b'{"apiVersion":"v1","kind":"\\ud800","metadata":{"name":"x"}}'
    status, out = api("POST", "/api/v1/namespaces/default/configmaps", body)
    assert status == 400 and "\ufffd" in out["message"]
    body = (
        b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"s"},"data":{"k":"a\\udc00b"}}'
    )
    status, out = api("POST", "/api/v1/namespaces/default/configmaps", body)
    assert status == 201 and out["data"] == {"k": "a\ufffdb"}
    status, listed = api("GET", "/api/v1/namespaces/default/configmaps")
    assert status == 200 and listed["items"][0]["data"]["k"] == "a\ufffdb"


def test_delete_collection_takes_only_the_selected(api: Api) -> None:
    for name, app in (("a", "web"), ("b", "web"), ("c", "db")):
        api("POST", PODS, pod(name, {"app": app}))
    status, out = api("DELETE", PODS, labelSelector="app=web")
    assert status == 200 and [p["metadata"]["name"] for p in out["items"]] == ["a", "b"]
    _, left = api("GET", PODS)
    assert [p["metadata"]["name"] for p in left["items"]] == ["c"]


def test_the_kubernetes_service_points_at_the_server() -> None:
    api = Api(server_address="172.30.0.254:6443")
    _, svc = api("GET", "/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == "10.96.0.1" and svc["spec"]["ports"][0]["port"] == 443
    _, sl = api("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
    assert sl["endpoints"][0]["addresses"] == ["172.30.0.254"] and sl["ports"][0]["port"] == 6443
    _, ep = api("GET", "/api/v1/namespaces/default/endpoints/kubernetes")
    assert ep["subsets"][0]["addresses"] == [{"ip": "172.30.0.254"}]
    status, out = api(
        "POST",
        "/api/v1/namespaces/default/services",
        {"metadata": {"name": "next"}, "spec": {"ports": [{"port": 80}]}},
    )
    assert status == 201 and out["spec"]["clusterIP"] == "10.96.0.2"
    status, out = api("DELETE", "/api/v1/namespaces/default")
    assert status == 403 and "may not be deleted" in out["message"]
