"""The three patch formats of PATCH: JSON merge patch, JSON patch, strategic merge patch.

- JSON merge patch (RFC 7386) is a dozen lines, written here.
- JSON patch (RFC 6902, `test` included) is python-json-patch (`jsonpatch`), a
  maintained implementation; failures answer 422 as the real server's do.
- Strategic merge patch has no Python implementation to reuse, so it is ours:
  it follows apimachinery's `strategicpatch` for what kubectl sends (`kubectl
  apply`'s computed patches, `label`, `annotate`, `edit`, `patch --type
  strategic`): lists merged by their merge key (`x-kubernetes-patch-merge-key`
  in the built-in schemas: containers by name, ports by containerPort, env,
  volumes, volumeMounts...), primitive lists merged as sets, `null` deletes,
  and the directives `$patch: replace|delete|merge`, `$retainKeys`,
  `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer

from . import errors as E
from .schema import Schema

MAX_JSON_PATCH_OPS = 10000
"""As kube-apiserver: a JSON patch with more operations is refused (413)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise E.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    if len(ops) > MAX_JSON_PATCH_OPS:
        raise E.too_large(
            "The allowed maximum operations in a JSON patch "
            f"is {MAX_JSON_PATCH_OPS}, got {len(ops)}"
        )
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise E.bad_request(f'json patch operation {i} is not an object with an "op"')
        if op["op"] not in ("add", "remove", "replace", "move", "copy", "test"):
            raise E.unprocessable(f"Unexpected kind: {op['op']}")
        if not isinstance(op.get("path"), str):
            raise E.unprocessable(f'json patch operation {i}: missing or invalid "path"')
    doc = copy.deepcopy(target)
    for op in ops:
        try:
            # One operation at a time, so a failure names its operation as evanphx/json-patch does.
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise E.unprocessable(f"testing value {op['path']} failed: test failed") from exc
        except (
            jsonpatch.JsonPatchException,
            jsonpointer.JsonPointerException,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:
            raise E.unprocessable(
                f"the json patch operation {op['op']} on {op['path']} could not be applied: {exc}"
            ) from exc
    return doc


# ------------------------------------------------------------------ strategic merge patch

_DIRECTIVE = "$patch"
_RETAIN = "$retainKeys"
_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def strategic_merge(original: Any, patch: Any, schema: Schema) -> Any:
    if not isinstance(patch, dict):
        raise E.bad_request("strategic merge patch: the patch must be a JSON object")
    result = _merge_map(
        copy.deepcopy(original) if isinstance(original, dict) else {}, patch, schema
    )
    return result if result is not None else {}


def _merge_map(
    orig: dict[str, Any], patch: dict[str, Any], schema: Schema
) -> dict[str, Any] | None:
    directive = patch.get(_DIRECTIVE)
    if directive == "delete":
        return None
    if directive == "replace":
        return _clean({k: v for k, v in patch.items() if k != _DIRECTIVE})
    if directive not in (None, "merge"):
        raise E.bad_request(f"Unknown patch type: {directive} in map: {json.dumps(patch)[:200]}")
    orders: dict[str, list[Any]] = {}
    retain = patch.get(_RETAIN)
    for key, value in patch.items():
        if key in (_DIRECTIVE, _RETAIN):
            continue
        if key.startswith(_ORDER):
            if not isinstance(value, list):
                raise E.bad_request(f"invalid {key}: must be a list")
            orders[key[len(_ORDER) :]] = value
            continue
        if key.startswith(_DELETE_PRIMITIVES):
            name = key[len(_DELETE_PRIMITIVES) :]
            if not isinstance(value, list):
                raise E.bad_request(f"invalid {key}: must be a list")
            current = orig.get(name)
            if isinstance(current, list):
                orig[name] = [v for v in current if v not in value]
            continue
        if value is None:
            orig.pop(key, None)
            continue
        child = schema.prop(key) or Schema({})
        if isinstance(value, dict):
            merged = _merge_map(orig[key] if isinstance(orig.get(key), dict) else {}, value, child)
            if merged is None:
                orig.pop(key, None)
            else:
                orig[key] = merged
        elif isinstance(value, list):
            orig[key] = _merge_list(orig.get(key), value, child)
        else:
            orig[key] = value
    if isinstance(retain, list):
        keep = {str(k) for k in retain}
        for key in list(orig):
            if key not in keep:
                del orig[key]
    for name, order in orders.items():
        if isinstance(orig.get(name), list):
            orig[name] = _reorder(orig[name], order, (schema.prop(name) or Schema({})).merge_key)
    return orig


def _merge_list(orig: Any, patch: list[Any], schema: Schema) -> list[Any]:
    if "merge" not in schema.patch_strategy.split(","):
        return (
            [_clean(v) for v in patch if not (isinstance(v, dict) and _DIRECTIVE in v)]
            if any(isinstance(v, dict) and v.get(_DIRECTIVE) == "replace" for v in patch)
            else _clean(patch)
        )
    current = list(orig) if isinstance(orig, list) else []
    key = schema.merge_key
    if any(isinstance(v, dict) and v.get(_DIRECTIVE) == "replace" for v in patch):
        return [_clean(v) for v in patch if not (isinstance(v, dict) and _DIRECTIVE in v)]
    if key is None:
        # A list of primitives merged as a set, keeping order.
        for v in patch:
            if isinstance(v, dict) and v.get(_DIRECTIVE) is not None:
                continue
            if v not in current:
                current.append(v)
        return current
    items = schema.items()
    for element in patch:
        if not isinstance(element, dict):
            raise E.bad_request(f"strategic merge patch: list element {element!r} is not an object")
        if key not in element:
            raise E.bad_request(
                f"map: {json.dumps(element)[:200]} does not contain declared merge key: {key}"
            )
        idx = next(
            (
                i
                for i, c in enumerate(current)
                if isinstance(c, dict) and c.get(key) == element[key]
            ),
            None,
        )
        if element.get(_DIRECTIVE) == "delete":
            if idx is not None:
                current.pop(idx)
            continue
        if idx is None:
            merged = _merge_map({}, element, items)
            if merged is not None:
                current.append(merged)
        else:
            merged = _merge_map(current[idx], element, items)
            if merged is None:
                current.pop(idx)
            else:
                current[idx] = merged
    return current


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(v: Any) -> Any:
        if key is not None and isinstance(v, dict):
            return json.dumps(v.get(key), sort_keys=True)
        return json.dumps(v, sort_keys=True)

    rank = {ident(v): i for i, v in enumerate(order)}
    listed = sorted((v for v in items if ident(v) in rank), key=lambda v: rank[ident(v)])
    rest = [v for v in items if ident(v) not in rank]
    return listed + rest


def _clean(value: Any) -> Any:
    """A value with every patch directive removed (what a replaced subtree stores)."""
    if isinstance(value, dict):
        return {
            k: _clean(v)
            for k, v in value.items()
            if not (k.startswith("$") and (k in (_DIRECTIVE, _RETAIN) or "/" in k))
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
