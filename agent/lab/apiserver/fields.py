"""Managed fields and server-side apply, as far as `kubectl apply --server-side` needs.

Field sets are kept as sets of paths whose elements are FieldsV1 keys
(`f:spec`, `k:{"name":"web"}` for an item of a map-list, `v:"x"` for a set
item, `.` for an item itself) and stored in `metadata.managedFields` in the
FieldsV1 trie form the real server writes. What this follows from
structured-merge-diff, and what it leaves out:

- Apply: the applied configuration is merged into the live object (maps
  recursively, map-lists by their keys, sets as sets, atomic lists and
  scalars replaced); fields the manager applied before and omits now are
  removed unless another manager owns them; a field applied with a value
  other than the live one, owned by another manager, is a conflict (409,
  with the real message and `FieldManagerConflict` causes) unless `force`,
  which moves ownership to the applier.
- Update (create, update, patch): the writing manager (fieldManager, else
  the User-Agent's product) gains the fields whose value it changed, and
  every other manager loses them.
- Left out: conversion of field sets between versions (our CRD versions
  share one schema), the "reset" of fields a strategy wipes, and ordering
  of map-list items beyond "live order, new items appended".
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import errors as E
from .schema import Schema

Path = tuple[str, ...]
_MISSING = object()

_META_OWNED = {"labels", "annotations", "finalizers", "ownerReferences"}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def field_paths(obj: Any, schema: Schema, *, status: bool | None = None) -> set[Path]:
    """The leaf paths of an object. status: True only status, False without it, None all."""
    out: set[Path] = set()
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        if k in ("apiVersion", "kind"):
            continue
        if status is not None and (k == "status") != status:
            continue
        if k == "metadata":
            if status or not isinstance(v, dict):
                continue
            for mk, mv in v.items():
                if mk in _META_OWNED:
                    child = (schema.prop("metadata") or Schema({})).prop(mk) or Schema({})
                    _walk(mv, child, ("f:metadata", f"f:{mk}"), out)
            continue
        _walk(v, schema.prop(k) or Schema({}), (f"f:{k}",), out)
    return out


def _walk(value: Any, schema: Schema, path: Path, out: set[Path]) -> None:
    if isinstance(value, dict) and value and schema.map_type != "atomic":
        for k, v in value.items():
            _walk(v, schema.prop(k) or Schema({}), (*path, f"f:{k}"), out)
        return
    if isinstance(value, list) and value:
        lt = schema.list_type
        keys = schema.map_keys
        if lt == "map" and keys:
            items = schema.items()
            for el in value:
                if not isinstance(el, dict):
                    out.add(path)
                    return
                ident = f"k:{_key({k: el[k] for k in keys if k in el})}"
                out.add((*path, ident, "."))
                for k, v in el.items():
                    _walk(v, items.prop(k) or Schema({}), (*path, ident, f"f:{k}"), out)
            return
        if lt == "set":
            for el in value:
                out.add((*path, f"v:{_key(el)}"))
            return
    out.add(path)


def value_at(obj: Any, path: Path) -> Any:
    cur = obj
    for el in path:
        if el == ".":
            return cur
        kind, _, rest = el.partition(":")
        if kind == "f":
            if not isinstance(cur, dict) or rest not in cur:
                return _MISSING
            cur = cur[rest]
        elif kind == "k":
            want = json.loads(rest)
            if not isinstance(cur, list):
                return _MISSING
            cur = next(
                (
                    x
                    for x in cur
                    if isinstance(x, dict) and all(x.get(k) == v for k, v in want.items())
                ),
                _MISSING,
            )
            if cur is _MISSING:
                return cur
        elif kind == "v":
            want = json.loads(rest)
            if not isinstance(cur, list) or want not in cur:
                return _MISSING
            cur = want
        else:
            return _MISSING
    return cur


def to_trie(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for p in sorted(paths):
        node = root
        for el in p:
            node = node.setdefault(el, {})
    return root


def from_trie(trie: Any, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(trie, dict):
        return out
    for k, v in trie.items():
        if not isinstance(k, str):
            continue
        if isinstance(v, dict) and v:
            out |= from_trie(v, (*prefix, k))
        else:
            out.add((*prefix, k))
    return out


def render(path: Path) -> str:
    """`.spec.containers[name="web"].image`, as structured-merge-diff prints a path."""
    out = ""
    for el in path:
        kind, _, rest = el.partition(":")
        if el == ".":
            continue
        if kind == "f":
            out += f".{rest}"
        elif kind == "k":
            keys = json.loads(rest)
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v":
            out += f"[={rest}]"
    return out


# ------------------------------------------------------------------ managed fields entries


class Managed:
    """One object's `metadata.managedFields`, by (manager, operation, subresource)."""

    def __init__(self, entries: Any) -> None:
        self.entries: dict[tuple[str, str, str], tuple[dict[str, Any], set[Path]]] = {}
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict):
                continue
            key = (
                str(e.get("manager", "")),
                str(e.get("operation", "")),
                str(e.get("subresource", "")),
            )
            self.entries[key] = (e, from_trie(e.get("fieldsV1")))

    def owners(
        self, path: Path, exclude: tuple[str, str, str] | None = None
    ) -> list[tuple[str, str, str]]:
        return [k for k, (_, s) in self.entries.items() if k != exclude and path in s]

    def owns_under(self, prefix: Path, exclude: tuple[str, str, str]) -> bool:
        n = len(prefix)
        return any(p[:n] == prefix for k, (_, s) in self.entries.items() if k != exclude for p in s)

    def put(self, key: tuple[str, str, str], paths: set[Path], api_version: str, now: str) -> None:
        if not paths:
            self.entries.pop(key, None)
            return
        entry = {
            "manager": key[0],
            "operation": key[1],
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_trie(paths),
        }
        if key[2]:
            entry["subresource"] = key[2]
        self.entries[key] = (entry, paths)

    def drop(self, paths: set[Path], keep: tuple[str, str, str] | None = None) -> None:
        for key in list(self.entries):
            if key == keep:
                continue
            entry, owned = self.entries[key]
            rest = owned - paths
            if rest != owned:
                self.entries[key] = (dict(entry, fieldsV1=to_trie(rest)), rest)
                if not rest:
                    del self.entries[key]

    def to_json(self) -> list[dict[str, Any]]:
        return [e for e, _ in self.entries.values()]


def track_update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    schema: Schema,
    manager: str,
    api_version: str,
    now: str,
    subresource: str = "",
    status_apart: bool = False,
) -> None:
    """Record in `new` that `manager` owns what it changed from `old` (in place).

    status_apart: the kind has a status subresource, so writes to the main
    resource never own status fields (the real server resets them)."""
    meta = new.setdefault("metadata", {})
    managed = Managed(
        (old or {}).get("metadata", {}).get("managedFields") if old else meta.get("managedFields")
    )
    status = True if subresource == "status" else (False if status_apart else None)
    new_paths = field_paths(new, schema, status=status)
    old_paths = field_paths(old, schema, status=status) if old else set()
    changed = {p for p in new_paths if old is None or value_at(old, p) != value_at(new, p)}
    removed = old_paths - new_paths
    key = (manager, "Update", subresource)
    mine = (managed.entries.get(key, ({}, set()))[1] | changed) - removed
    managed.drop(changed | removed, keep=key)
    if changed or key in managed.entries:
        managed.put(key, mine & new_paths, api_version, now)
    meta["managedFields"] = managed.to_json()
    if not meta["managedFields"]:
        del meta["managedFields"]


def server_side_apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    schema: Schema,
    manager: str,
    force: bool,
    api_version: str,
    now: str,
    subresource: str = "",
    status_apart: bool = False,
) -> dict[str, Any]:
    """The object after `manager` applies `applied`; raises 409 on conflicts unless `force`."""
    status = True if subresource == "status" else (False if status_apart else None)
    managed = Managed((live or {}).get("metadata", {}).get("managedFields"))
    key = (manager, "Apply", subresource)
    applied_paths = field_paths(applied, schema, status=status)
    conflicts: dict[Path, list[str]] = {}
    if live is not None:
        for p in applied_paths:
            if p[-1] == ".":
                continue
            if value_at(live, p) == value_at(applied, p):
                continue
            others = [k for k in managed.owners(p, exclude=key) if k[0] != manager]
            if others:
                conflicts[p] = [o[0] for o in others]
    if conflicts and not force:
        raise _conflict_error(conflicts, api_version)
    result = _merge(copy.deepcopy(live) if live else {}, applied, schema, top=True)
    previous = managed.entries.get(key, ({}, set()))[1]
    for p in sorted(previous - applied_paths, key=len, reverse=True):
        target = p[:-1] if p[-1] == "." else p
        if managed.owns_under(target, exclude=key):
            continue  # another manager still owns it (or something under it)
        _remove(result, target)
    if force:
        managed.drop(set(conflicts), keep=key)
    managed.put(key, applied_paths, api_version, now)
    result.setdefault("metadata", {})["managedFields"] = managed.to_json()
    return result


def _conflict_error(conflicts: dict[Path, list[str]], api_version: str) -> E.ApiError:
    causes = []
    by_manager: dict[str, list[str]] = {}
    for path, managers in sorted(conflicts.items()):
        for m in managers:
            by_manager.setdefault(m, []).append(render(path))
            causes.append(
                E.Cause(
                    "FieldManagerConflict", f'conflict with "{m}" using {api_version}', render(path)
                )
            )
    n = len(causes)
    if n == 1:
        ((m, paths),) = by_manager.items()
        message = (
            f'Apply failed with 1 conflict: conflict with "{m}" using {api_version}: {paths[0]}'
        )
    else:
        parts = [
            f'conflicts with "{m}" using {api_version}:\n' + "\n".join(f"- {p}" for p in paths)
            for m, paths in by_manager.items()
        ]
        message = f"Apply failed with {n} conflicts: " + "\n".join(parts)
    return E.ApiError(409, "Conflict", message, {}, causes)


def _merge(live: Any, applied: Any, schema: Schema, top: bool = False) -> Any:
    if isinstance(applied, dict) and isinstance(live, dict) and schema.map_type != "atomic":
        out = dict(live)
        for k, v in applied.items():
            if k == "metadata" and top:
                meta = dict(out.get("metadata") or {})
                for mk, mv in (v or {}).items():
                    if mk == "managedFields":
                        continue
                    child = (schema.prop("metadata") or Schema({})).prop(mk) or Schema({})
                    meta[mk] = _merge(meta.get(mk), mv, child)
                out["metadata"] = meta
            else:
                out[k] = _merge(out.get(k), v, schema.prop(k) or Schema({}))
        return out
    if isinstance(applied, list) and isinstance(live, list):
        lt, keys = schema.list_type, schema.map_keys
        if lt == "map" and keys:
            out_list = list(live)
            items = schema.items()
            for el in applied:
                if not isinstance(el, dict):
                    return copy.deepcopy(applied)
                idx = next(
                    (
                        i
                        for i, x in enumerate(out_list)
                        if isinstance(x, dict) and all(x.get(k) == el.get(k) for k in keys)
                    ),
                    None,
                )
                if idx is None:
                    out_list.append(copy.deepcopy(el))
                else:
                    out_list[idx] = _merge(out_list[idx], el, items)
            return out_list
        if lt == "set":
            return list(live) + [v for v in applied if v not in live]
    return copy.deepcopy(applied)


def _remove(obj: Any, path: Path) -> None:
    """Remove the field at `path`, then any map it leaves empty (as typed objects omit them)."""
    _remove_one(obj, path)
    for n in range(len(path) - 1, 0, -1):
        parent = value_at(obj, path[:n])
        if isinstance(parent, dict) and not parent and path[n - 1].startswith("f:"):
            _remove_one(obj, path[:n])
        else:
            break


def _remove_one(obj: Any, path: Path) -> None:
    if not path:
        return
    parent = value_at(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    kind, _, rest = last.partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k" and isinstance(parent, list):
        want = json.loads(rest)
        parent[:] = [
            x
            for x in parent
            if not (isinstance(x, dict) and all(x.get(k) == v for k, v in want.items()))
        ]
    elif kind == "v" and isinstance(parent, list):
        want = json.loads(rest)
        parent[:] = [x for x in parent if x != want]
