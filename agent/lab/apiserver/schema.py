"""Schemas: the built-in kinds' (kubernetes-validate's copy of the real OpenAPI) and CRDs'.

One navigator (`Schema`) walks both, so every schema-driven step is written
once: pruning unknown fields (what `fieldValidation=Strict|Warn|Ignore` reports),
defaults, the patch strategy and merge keys of lists (strategic merge patch),
their list types (server-side apply) and the value checks, which a maintained
JSON-schema library (`jsonschema`) performs: draft 2020-12 over the built-ins'
definitions, draft 4 (what Kubernetes' OpenAPI v3 schemas are) over CRDs'.

Where the server knows no schema (a field under `x-kubernetes-preserve-unknown-fields`,
a `RawExtension`) anything is kept, as the real server does.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from collections.abc import Iterator
from typing import Any

import jsonschema

from . import errors as E

SCHEMA_VERSION = "v1.32.0-local"
"""kubernetes-validate's schemas of Kubernetes 1.32, the kubectl on these machines."""

ANY: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def definitions() -> dict[str, Any]:
    """name -> schema of every built-in type (`io.k8s.api.core.v1.Pod`...)."""
    files = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    doc = json.loads((files / SCHEMA_VERSION / "_definitions.json").read_text())
    defs: dict[str, Any] = doc["$defs"]
    return defs


def field_path(parts: Any) -> str:
    """("spec", "rules", 0, "from") -> `spec.rules[0].from`, as Kubernetes names fields."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


class Schema:
    """A node of a schema, with `$ref`s into the built-in definitions resolved on the way."""

    __slots__ = ("node",)

    def __init__(self, node: dict[str, Any]) -> None:
        defs = definitions()
        while "$ref" in node:
            # Only the built-in definitions have references (CRD schemas may not: refused).
            ref = node["$ref"]
            target = defs.get(ref.rpartition("/")[2]) if isinstance(ref, str) else None
            node = target if isinstance(target, dict) and ref.startswith("#/$defs/") else ANY
        self.node = node

    @classmethod
    def builtin(cls, ref: str) -> Schema:
        return cls(definitions()[ref])

    @property
    def preserves(self) -> bool:
        n = self.node
        if n.get("x-kubernetes-preserve-unknown-fields"):
            return True
        return "properties" not in n and "additionalProperties" not in n and "items" not in n

    def prop(self, key: str) -> Schema | None:
        """The schema of field `key`, ANY when unknown fields are kept, None when unknown."""
        n = self.node
        props = n.get("properties")
        if props is not None and key in props:
            return Schema(props[key])
        extra = n.get("additionalProperties")
        if isinstance(extra, dict):
            return Schema(extra)
        if extra is True or self.preserves:
            return Schema(ANY)
        return None

    def items(self) -> Schema:
        it = self.node.get("items")
        return Schema(it) if isinstance(it, dict) else Schema(ANY)

    @property
    def patch_strategy(self) -> str:
        return str(self.node.get("x-kubernetes-patch-strategy", ""))

    @property
    def merge_key(self) -> str | None:
        key = self.node.get("x-kubernetes-patch-merge-key")
        return key if isinstance(key, str) else None

    @property
    def list_type(self) -> str:
        """`atomic`, `set` or `map` (server-side apply); lists with a merge key are maps."""
        lt = self.node.get("x-kubernetes-list-type")
        if isinstance(lt, str):
            return lt
        return "map" if self.merge_key else "atomic"

    @property
    def map_keys(self) -> list[str]:
        keys = self.node.get("x-kubernetes-list-map-keys")
        if isinstance(keys, list) and keys:
            return [str(k) for k in keys]
        return [self.merge_key] if self.merge_key else []

    @property
    def map_type(self) -> str:
        return str(self.node.get("x-kubernetes-map-type", "granular"))

    @property
    def is_object(self) -> bool:
        t = self.node.get("type")
        return t == "object" or (isinstance(t, list) and "object" in t)


# ------------------------------------------------------------------ pruning


def prune(obj: Any, schema: Schema, path: tuple[str | int, ...] = ()) -> list[str]:
    """Drop fields the schema does not know, in place; return their paths (`spec.foo`)."""
    unknown: list[str] = []
    _prune(obj, schema, path, unknown)
    return unknown


def _prune(obj: Any, schema: Schema, path: tuple[str | int, ...], unknown: list[str]) -> None:
    if isinstance(obj, dict):
        if schema.preserves and "properties" not in schema.node:
            return
        for key in list(obj):
            child = schema.prop(key)
            if child is None:
                if schema.node.get("x-kubernetes-preserve-unknown-fields"):
                    continue
                unknown.append(field_path((*path, key)))
                del obj[key]
            else:
                _prune(obj[key], child, (*path, key), unknown)
        if schema.node.get("x-kubernetes-embedded-resource"):
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                _prune(meta, Schema.builtin(OBJECT_META), (*path, "metadata"), unknown)
    elif isinstance(obj, list) and "items" in schema.node:
        items = schema.items()
        for i, item in enumerate(obj):
            _prune(item, items, (*path, i), unknown)


def apply_defaults(obj: Any, schema: Schema) -> None:
    """Fill `default`s of absent fields under present objects, in place (CRD schemas)."""
    if isinstance(obj, dict):
        for key, sub in (schema.node.get("properties") or {}).items():
            if key not in obj and isinstance(sub, dict) and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
        for key, value in obj.items():
            child = schema.prop(key)
            if child is not None and child.node is not ANY:
                apply_defaults(value, child)
    elif isinstance(obj, list) and isinstance(schema.node.get("items"), dict):
        items = schema.items()
        for item in obj:
            apply_defaults(item, items)


# ------------------------------------------------------------------ value checks


@functools.cache
def builtin_validator(ref: str) -> jsonschema.protocols.Validator:
    root = {"$defs": definitions(), "$ref": f"#/$defs/{ref}"}
    cls = jsonschema.Draft202012Validator
    return cls(root, format_checker=None)


def crd_validator(openapi_schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return jsonschema.Draft4Validator(to_json_schema(openapi_schema))


_SKIP = {"nullable", "format", "description", "example", "externalDocs", "title", "default"}


def to_json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as plain JSON Schema draft 4, with Kubernetes' extensions."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SKIP or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties", "definitions") and isinstance(value, dict):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [to_json_schema(v) for v in value]
        elif key in ("items", "not", "additionalProperties", "additionalItems"):
            out[key] = (
                [to_json_schema(v) for v in value]
                if isinstance(value, list)
                else to_json_schema(value)
            )
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def check(validator: jsonschema.protocols.Validator, obj: Any) -> list[E.Cause]:
    """Every violation as the real server phrases it (kube-openapi's validation messages)."""
    causes: list[E.Cause] = []
    for err in _leaves(validator.iter_errors(obj)):
        causes.append(_cause(err))
        if len(causes) >= 50:
            break
    causes.sort(key=lambda c: c.field)
    return causes


def _leaves(errs: Any) -> Iterator[jsonschema.ValidationError]:
    for err in errs:
        if err.validator in ("oneOf", "anyOf") and err.context:
            # Kubernetes reports the branch closest to the value, not the combinator.
            types = [e for e in err.context if e.validator == "type"]
            if err.context and len(types) == len(err.context):
                yield err
                continue
            best = jsonschema.exceptions.best_match(err.context)
            yield best if best is not None else err
        elif err.validator in ("allOf", "$ref") and err.context:
            yield from _leaves(err.context)
        else:
            yield err


def _cause(err: jsonschema.ValidationError) -> E.Cause:
    parts = list(err.absolute_path)
    path = field_path(parts)
    v, value, expected = err.validator, err.instance, err.validator_value
    where = path or "<root>"
    if v == "required":
        missing = [k for k in expected if isinstance(value, dict) and k not in value]
        return E.required(field_path([*parts, missing[0] if missing else "?"]))
    if v == "type" or (v in ("oneOf", "anyOf") and err.context):
        if v == "type":
            wanted = expected if isinstance(expected, str) else [t for t in expected if t != "null"]
        else:
            wanted = [e.validator_value for e in err.context]
        if isinstance(wanted, list):
            wanted = wanted[0] if len(wanted) == 1 else " or ".join(str(w) for w in wanted)
        got = _json_type(value)
        return E.Cause(
            E.TYPE_INVALID,
            f'Invalid value: "{got}": {where} in body must be of type {wanted}: "{got}"',
            path,
        )
    if v == "enum":
        return E.not_supported(path, value, [x for x in expected if x is not None])
    if v == "maxLength":
        return E.Cause(E.TOO_LONG, f"Too long: may not be more than {expected} bytes", path)
    if v == "maxItems":
        n = len(value) if isinstance(value, list) else 0
        return E.Cause(E.TOO_MANY, f"Too many: {n}: must have at most {expected} items", path)
    if v == "maxProperties":
        n = len(value) if isinstance(value, dict) else 0
        return E.Cause(E.TOO_MANY, f"Too many: {n}: must have at most {expected} items", path)
    phrases = {
        "pattern": f"should match '{expected}'",
        "minLength": f"should be at least {expected} chars long",
        "minItems": f"should have at least {expected} items",
        "minProperties": f"should have at least {expected} properties",
        "minimum": f"should be greater than or equal to {expected}",
        "maximum": f"should be less than or equal to {expected}",
        "exclusiveMinimum": f"should be greater than {expected}",
        "exclusiveMaximum": f"should be less than {expected}",
        "multipleOf": f"should be a multiple of {expected}",
        "uniqueItems": "shouldn't contain duplicates",
        "oneOf": "must validate one and only one schema (oneOf)",
        "anyOf": "must validate at least one schema (anyOf)",
        "not": "must not validate the schema (not)",
        "additionalProperties": "must not have additional properties",
    }
    detail = phrases.get(str(v), err.message)
    return E.invalid_value(path, value, f"{where} in body {detail}")


# ------------------------------------------------------------------ CRD schemas


def structural_problems(node: Any, path: str) -> list[E.Cause]:
    """What makes a CRD schema non-structural, as far as pruning and defaults depend on it."""
    out: list[E.Cause] = []
    _structural(node, path, out, root=True)
    return out[:20]


def _structural(node: Any, path: str, out: list[E.Cause], *, root: bool = False) -> None:
    if not isinstance(node, dict):
        out.append(E.invalid_value(path, node, "must be an object"))
        return
    untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if root and node.get("type") != "object":
        out.append(
            E.Cause(E.REQUIRED, 'Required value: must be "object" at the root', path + ".type")
        )
    elif "type" not in node and not untyped_ok:
        out.append(E.required(path + ".type", "must not be empty for specified object fields"))
    t = node.get("type")
    if t is not None and t not in ("object", "array", "string", "integer", "number", "boolean"):
        out.append(
            E.not_supported(
                path + ".type", t, ["array", "boolean", "integer", "number", "object", "string"]
            )
        )
    for name, sub in (node.get("properties") or {}).items():
        _structural(sub, f"{path}.properties[{name}]", out)
    items = node.get("items")
    if isinstance(items, dict):
        _structural(items, path + ".items", out)
    elif t == "array":
        out.append(E.required(path + ".items", "must be specified"))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        if node.get("properties"):
            out.append(
                E.forbidden_field(
                    path + ".additionalProperties",
                    "additionalProperties and properties are mutual exclusive",
                )
            )
        _structural(extra, path + ".additionalProperties", out)
