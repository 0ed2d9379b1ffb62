"""Fuzz target: the lab API server's request handling (the sans-IO core, `ApiCore.handle`).

The fuzzer picks a verb, a path among every kind of route (with fuzzed names),
query parameters (selectors, limits, continue tokens, versions, watch options,
fieldValidation, patch options), a content type and a body: raw bytes, or
JSON/YAML/patch documents built from its bytes, aimed at objects that exist.
It must hold that: `handle` never raises and never answers 500; every JSON
answer parses, and every error is a Status naming its code; a refused request
writes nothing (the store's version and the seeded objects are unchanged); and
no watch is left registered once closed.
"""

from __future__ import annotations

import json
import sys

import atheris

from tests.fuzz.harness import interpreted, main

interpreted("agent")

with atheris.instrument_imports():
    from agent.lab.apiserver.core import ApiCore, Request, Response, WatchStream

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
PATHS = [
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/{n}",
    "/api/v1/namespaces/default/pods/{n}/status",
    "/api/v1/namespaces/default/services/{n}",
    "/api/v1/namespaces/default/configmaps/{n}",
    "/api/v1/namespaces/default/serviceaccounts/default/token",
    "/api/v1/namespaces/{n}",
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/nodes/{n}",
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
    "/apis/authentication.k8s.io/v1/tokenreviews",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}",
    "/apis/example.com/v1/namespaces/default/widgets/{n}",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles/{n}",
    "/{n}",
    "/openapi/v3/{n}",
    "/apis/{n}",
]
CTYPES = [
    "application/json",
    "application/yaml",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/vnd.kubernetes.protobuf",
    "text/plain",
]
QUERY = [
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
    "watch",
    "allowWatchBookmarks",
    "sendInitialEvents",
    "timeoutSeconds",
    "fieldValidation",
    "fieldManager",
    "force",
    "dryRun",
    "propagationPolicy",
    "includeObject",
]
ACCEPTS = [
    "",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
    "application/yaml",
    "*/*",
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
]
SEED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
}
SEED_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                    "any": {"x-kubernetes-preserve-unknown-fields": True},
                                    "port": {"x-kubernetes-int-or-string": True},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def fresh() -> tuple[ApiCore, str]:
    core = ApiCore(history_size=50, watch_queue_bytes=64 * 1024, max_watchers=8)
    token = core.mint_token("admin", ["system:masters"])
    for path, body in (
        ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", SEED_CRD),
        ("/api/v1/namespaces/default/pods", SEED_POD),
        (
            "/api/v1/namespaces/default/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "p"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
            },
        ),
        (
            "/apis/example.com/v1/namespaces/default/widgets",
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "p"},
                "spec": {"size": 2},
            },
        ),
    ):
        resp = core.handle(
            Request(
                "POST",
                path,
                {},
                {"content-type": "application/json"},
                json.dumps(body).encode(),
                token,
            )
        )
        assert isinstance(resp, Response) and resp.status == 201, resp
    return core, token


CORE, TOKEN = fresh()


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 4 else 4)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(8)
    if kind == 1:
        return fdp.ConsumeInt(4)
    if kind == 2:
        return fdp.ConsumeBool()
    if kind == 3:
        return None
    if kind == 4:
        return fdp.PickValueInList(
            ["p", "web", "$patch", "delete", "replace", "/spec/x", "add", "test", "v1"]
        )
    if kind in (5, 6):
        keys = [
            "apiVersion",
            "kind",
            "metadata",
            "name",
            "labels",
            "spec",
            "containers",
            "ports",
            "status",
            "op",
            "path",
            "value",
            "from",
            "$patch",
            "$retainKeys",
            "$setElementOrder/ports",
            "$deleteFromPrimitiveList/finalizers",
            "finalizers",
            "size",
            "tags",
            "port",
            "selector",
        ]
        return {
            fdp.PickValueInList(keys): _value(fdp, depth + 1)
            for _ in range(fdp.ConsumeIntInRange(0, 4))
        }
    return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]


def fuzz_one(data: bytes) -> None:
    global CORE, TOKEN
    fdp = atheris.FuzzedDataProvider(data)
    name = fdp.PickValueInList(
        ["p", "default", "q", "widgets.example.com", fdp.ConsumeUnicodeNoSurrogates(6)]
    )
    path = fdp.PickValueInList(PATHS).replace("{n}", name)
    method = fdp.PickValueInList(METHODS)
    query = {
        fdp.PickValueInList(QUERY): [fdp.ConsumeUnicodeNoSurrogates(12)]
        for _ in range(fdp.ConsumeIntInRange(0, 4))
    }
    ctype = fdp.PickValueInList(CTYPES)
    if fdp.ConsumeBool():
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    else:
        body = json.dumps(_value(fdp)).encode()
    accept = fdp.PickValueInList(ACCEPTS)
    headers = {"content-type": ctype, "accept": accept, "user-agent": "fuzz/1"}
    before = CORE.store.rv
    seeded = json.dumps(CORE.store.get("pods", "default", "p"), sort_keys=True)
    out = CORE.handle(Request(method, path, query, headers, body, TOKEN))
    if isinstance(out, WatchStream):
        out.watcher.take()
        out.close()
        assert out.watcher not in CORE.watchers
        return
    assert out.status != 500, (method, path, query, ctype, body, out.body)
    if out.content_type.startswith("application/json"):
        doc = json.loads(out.body)
        if out.status >= 400:
            assert doc["kind"] == "Status" and doc["code"] == out.status, doc
    if out.status >= 400:
        assert CORE.store.rv == before, (method, path, out.body)
        assert json.dumps(CORE.store.get("pods", "default", "p"), sort_keys=True) == seeded
    if CORE.store.rv > 400:  # keep each run small: start again from the seeds
        CORE, TOKEN = fresh()


SEEDS = [
    b"\x00" * 16,
    b"\x01\x02\x03strategic\x00"
    + json.dumps({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}).encode(),
    b"\x05\x01\x03" + b'[{"op":"test","path":"/metadata/labels/app","value":"web"}]',
]

if __name__ == "__main__":
    main(fuzz_one, SEEDS)
    sys.exit(0)
