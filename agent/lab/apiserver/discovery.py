"""Discovery and OpenAPI documents, built from the registry (and rebuilt when a CRD changes).

- `/api`, `/apis` (APIGroupList, or aggregated discovery
  `apidiscovery.k8s.io/v2` APIGroupDiscoveryList when the client asks for it,
  as kubectl 1.32 does first), `/apis/<group>`, and the resource lists.
- `/openapi/v3` (the index) and `/openapi/v3/<api|apis/group>/<version>`: the
  built-in kinds' schemas are kubernetes-validate's copy of the real ones,
  turned back into OpenAPI 3.0 (refs into components, nullable types made
  plain); custom resources get their CRD's schema. Every PATCH operation
  lists the `fieldValidation` parameter, so kubectl leaves validation to
  the server (`fieldValidation=Strict`) as it does against a real cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .model import Registry, ResourceType
from .schema import definitions

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-slipstream-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "n/a (python)",
    "compiler": "cpython",
    "platform": "linux/amd64",
}

_META_V1 = "io.k8s.apimachinery.pkg.apis.meta.v1."
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def _sub_verbs(rt: ResourceType, sub: str) -> list[str]:
    return ["create"] if sub == "token" else ["get", "patch", "update"]


def _sub_kind(rt: ResourceType, sub: str) -> tuple[str, str, str]:
    if sub == "token":
        return ("authentication.k8s.io", "v1", "TokenRequest")
    return (rt.group, rt.version, rt.kind)


def resource_list(reg: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in reg.all() if rt.group == group and rt.version == version]
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda r: r.plural):
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entry["storageVersionHash"] = hashlib.sha256(rt.store_key.encode()).digest()[:8].hex()
        resources.append(entry)
        for sub in rt.subresources:
            g, v, k = _sub_kind(rt, sub)
            sub_entry: dict[str, Any] = {
                "name": f"{rt.plural}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": k,
                "verbs": _sub_verbs(rt, sub),
            }
            if g != rt.group:
                sub_entry["group"], sub_entry["version"] = g, v
            resources.append(sub_entry)
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }


def _group_entry(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def api_group_list(reg: Registry) -> dict[str, Any]:
    groups = reg.groups()
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(g, groups[g]) for g in sorted(groups) if g],
    }


def api_group(reg: Registry, group: str) -> dict[str, Any] | None:
    versions = reg.groups().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def aggregated(reg: Registry, core: bool) -> dict[str, Any]:
    """APIGroupDiscoveryList for `/api` (core) or `/apis` (every other group)."""
    groups = reg.groups()
    items = []
    for g in sorted(groups):
        if (g == "") != core:
            continue
        versions = []
        for v in groups[g]:
            resources = []
            for rt in sorted(
                (r for r in reg.all() if r.group == g and r.version == v), key=lambda r: r.plural
            ):
                entry: dict[str, Any] = {
                    "resource": rt.plural,
                    "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
                    "scope": "Namespaced" if rt.namespaced else "Cluster",
                    "singularResource": rt.singular,
                    "verbs": list(rt.verbs),
                }
                if rt.short_names:
                    entry["shortNames"] = list(rt.short_names)
                if rt.categories:
                    entry["categories"] = list(rt.categories)
                if rt.subresources:
                    entry["subresources"] = [
                        {
                            "subresource": sub,
                            "responseKind": dict(
                                zip(("group", "version", "kind"), _sub_kind(rt, sub), strict=True)
                            ),
                            "verbs": _sub_verbs(rt, sub),
                        }
                        for sub in rt.subresources
                    ]
                resources.append(entry)
            versions.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": g, "creationTimestamp": None}, "versions": versions})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


# ------------------------------------------------------------------ OpenAPI v3


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _to_openapi3(node: Any, top_kind: bool = False) -> Any:
    """kubernetes-validate's JSON Schema (nullable types, $defs refs) back to OpenAPI 3.0."""
    if isinstance(node, list):
        return [_to_openapi3(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = "#/components/schemas/" + v.rpartition("/")[2]
        elif k == "type" and isinstance(v, list):
            types = [t for t in v if t != "null"]
            out[k] = types[0] if len(types) == 1 else types
        elif k == "enum" and isinstance(v, list):
            out[k] = [x for x in v if x is not None]
        elif k == "properties" and isinstance(v, dict):
            out[k] = {
                name: _to_openapi3(
                    {
                        kk: vv
                        for kk, vv in sub.items()
                        if not (top_kind and name in ("apiVersion", "kind") and kk == "enum")
                    }
                    if isinstance(sub, dict)
                    else sub
                )
                for name, sub in v.items()
            }
        else:
            out[k] = _to_openapi3(v)
    return out


def _builtin_schemas(refs: list[str]) -> dict[str, Any]:
    defs = definitions()
    seen: dict[str, Any] = {}
    todo = list(refs)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen[name] = None
        stack: list[Any] = [defs[name]]
        while stack:
            n = stack.pop()
            if isinstance(n, dict):
                r = n.get("$ref")
                if isinstance(r, str):
                    todo.append(r.rpartition("/")[2])
                stack.extend(n.values())
            elif isinstance(n, list):
                stack.extend(n)
    out = {}
    for name in sorted(seen):
        schema = _to_openapi3(defs[name], top_kind="x-kubernetes-group-version-kind" in defs[name])
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
            schema = {
                "description": schema.get("description", "IntOrString"),
                "type": "string",
                "format": "int-or-string",
            }
        elif name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
            schema = {"description": schema.get("description", "Quantity"), "type": "string"}
        out[name] = schema
    return out


_META = [
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
]


def _crd_schema_name(rt: ResourceType) -> str:
    rev = ".".join(reversed(rt.group.split(".")))
    return f"{rev}.{rt.version}.{rt.kind}"


def _crd_schema(rt: ResourceType) -> dict[str, Any]:
    assert rt.crd is not None
    s = copy.deepcopy(rt.crd.schema)
    props = s.setdefault("properties", {})
    props["apiVersion"] = {
        "type": "string",
        "description": (
            "APIVersion defines the versioned schema of this representation of an object."
        ),
    }
    props["kind"] = {
        "type": "string",
        "description": (
            "Kind is a string value representing the REST resource this object represents."
        ),
    }
    props["metadata"] = {
        "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    }
    s["x-kubernetes-group-version-kind"] = [
        {"group": rt.group, "version": rt.version, "kind": rt.kind}
    ]
    return s


def _param(name: str, where: str = "query", required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": {"type": "string"},
        "uniqueItems": True,
    }


def _op(
    rt: ResourceType,
    action: str,
    op_id: str,
    schema_name: str,
    *,
    write: bool = False,
    patch: bool = False,
) -> dict[str, Any]:
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    params = [_param("pretty")]
    if write:
        params += [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
    if patch:
        params.append(_param("force"))
    op: dict[str, Any] = {
        "operationId": op_id,
        "parameters": params,
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                },
            }
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    }
    if patch:
        op["requestBody"] = {
            "content": {
                t: {
                    "schema": {
                        "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
                    }
                }
                for t in (
                    "application/apply-patch+yaml",
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                )
            },
            "required": True,
        }
    elif write:
        op["requestBody"] = {
            "content": {"*/*": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
            "required": True,
        }
    return op


def _paths(rt: ResourceType, schema_name: str) -> dict[str, Any]:
    base = rt.group_prefix
    coll = (
        f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    )
    item = f"{coll}/{{name}}"
    name = rt.kind
    out: dict[str, Any] = {}
    if rt.verbs == ("create",):
        out[coll] = {"post": _op(rt, "post", f"create{name}", schema_name, write=True)}
        return out
    out[coll] = {
        "get": _op(rt, "list", f"list{name}", schema_name),
        "post": _op(rt, "post", f"create{name}", schema_name, write=True),
    }
    out[item] = {
        "get": _op(rt, "get", f"read{name}", schema_name),
        "put": _op(rt, "put", f"replace{name}", schema_name, write=True),
        "patch": _op(rt, "patch", f"patch{name}", schema_name, write=True, patch=True),
        "delete": _op(rt, "delete", f"delete{name}", schema_name),
        "parameters": [_param("name", "path", True)]
        + ([_param("namespace", "path", True)] if rt.namespaced else []),
    }
    if rt.namespaced:
        out[coll]["parameters"] = [_param("namespace", "path", True)]
        out[f"{base}/{rt.plural}"] = {
            "get": _op(rt, "list", f"list{name}ForAllNamespaces", schema_name)
        }
    for sub in rt.subresources:
        if sub == "status":
            out[f"{item}/status"] = {
                "get": _op(rt, "get", f"read{name}Status", schema_name),
                "put": _op(rt, "put", f"replace{name}Status", schema_name, write=True),
                "patch": _op(
                    rt, "patch", f"patch{name}Status", schema_name, write=True, patch=True
                ),
            }
    return out


def openapi_gv(reg: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in reg.all() if rt.group == group and rt.version == version]
    if not types:
        return None
    refs = [*_META, _META_V1 + "Patch"]
    paths: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for rt in types:
        if rt.crd is not None:
            name = _crd_schema_name(rt)
            extra[name] = _crd_schema(rt)
            extra[name + "List"] = {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                    "metadata": {
                        "allOf": [{"$ref": "#/components/schemas/" + _META_V1 + "ListMeta"}]
                    },
                },
                "x-kubernetes-group-version-kind": [
                    {"group": rt.group, "version": rt.version, "kind": rt.kind + "List"}
                ],
            }
        else:
            assert rt.schema_ref is not None
            name = rt.schema_ref
            refs += [name, name + "List"]
        paths.update(_paths(rt, name))
    schemas = _builtin_schemas(refs)
    schemas.setdefault(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
        {
            "type": "object",
            "description": (
                "Patch is provided to give a concrete name and "
                "type to the Kubernetes PATCH request body."
            ),
        },
    )
    schemas.update(extra)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                }
            },
        },
    }


def openapi_index(reg: Registry, hashes: dict[str, str]) -> dict[str, Any]:
    out = {}
    for g, versions in sorted(reg.groups().items()):
        for v in versions:
            p = _gv_path(g, v)
            out[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={hashes.get(p, '')}"}
    return {"paths": out}


class OpenApiCache:
    """Serialized OpenAPI documents by group-version, rebuilt when the registry changes."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self._generation = -1
        self._docs: dict[str, bytes] = {}
        self._hashes: dict[str, str] = {}

    def _refresh(self) -> None:
        if self._generation == self.reg.generation:
            return
        self._docs.clear()
        self._hashes.clear()
        for g, versions in self.reg.groups().items():
            for v in versions:
                doc = openapi_gv(self.reg, g, v)
                if doc is None:
                    continue
                body = json.dumps(doc, separators=(",", ":")).encode()
                p = _gv_path(g, v)
                self._docs[p] = body
                self._hashes[p] = hashlib.sha512(body).hexdigest().upper()[:128]
        self._generation = self.reg.generation

    def index(self) -> bytes:
        self._refresh()
        return json.dumps(openapi_index(self.reg, self._hashes)).encode()

    def document(self, path: str) -> bytes | None:
        self._refresh()
        return self._docs.get(path)
