"""Label and field selectors, parsed as apimachinery does (`labels.Parse`, `fields.ParseSelector`).

Label selectors take the whole grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
`k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`, comma-separated and all required.
Field selectors take `=`, `==` and `!=` over the fields each kind supports
(`metadata.name`, `metadata.namespace`, and e.g. `spec.nodeName`, `status.phase`
for pods); any other field is refused with 400, as the real server does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors as E
from .names import label_value_problem, qualified_name_problem

MAX_SELECTOR = 4096
"""Bytes; a longer selector is refused (the whole request line is bounded anyway)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            n = int(str(value))
        except ValueError:
            return False
        return n > int(self.values[0]) if self.op == "gt" else n < int(self.values[0])


_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|>|<|[^\s!=,()<>]+)")


def parse_labels(text: str) -> tuple[Requirement, ...]:
    """A label selector; raises 400 BadRequest naming the problem."""
    if len(text) > MAX_SELECTOR:
        raise E.bad_request(f"label selector longer than {MAX_SELECTOR} bytes")
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise E.bad_request(f"unable to parse requirement: unexpected {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Requirement] = []
    i = 0

    def fail(why: str) -> E.ApiError:
        return E.bad_request(f"unable to parse requirement: {why}")

    def key_ok(key: str) -> str:
        problem = qualified_name_problem(key)
        if problem:
            raise fail(f'key: Invalid value: "{key}": {problem}')
        return key

    def value_ok(value: str) -> str:
        problem = label_value_problem(value)
        if problem:
            raise fail(f'values[0][{key}]: Invalid value: "{value}": {problem}')
        return value

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            if i + 1 >= len(tokens):
                raise fail("missing key after '!'")
            reqs.append(Requirement(key_ok(tokens[i + 1]), "!"))
            i += 2
        else:
            if tok in (",", "(", ")", "=", "==", "!=", ">", "<"):
                raise fail(f"found '{tok}', expected: identifier")
            key = key_ok(tok)
            i += 1
            if i >= len(tokens) or tokens[i] == ",":
                reqs.append(Requirement(key, "exists"))
            else:
                op = tokens[i]
                i += 1
                if op in ("=", "==", "!="):
                    value = ""
                    if i < len(tokens) and tokens[i] not in (",",):
                        value = tokens[i]
                        i += 1
                    reqs.append(Requirement(key, "=" if op != "!=" else "!=", (value_ok(value),)))
                elif op in (">", "<"):
                    if i >= len(tokens) or not re.fullmatch(r"-?\d+", tokens[i]):
                        raise fail(f"for '{op}' operator, the value must be an integer")
                    reqs.append(Requirement(key, "gt" if op == ">" else "lt", (tokens[i],)))
                    i += 1
                elif op in ("in", "notin"):
                    if i >= len(tokens) or tokens[i] != "(":
                        raise fail(f"found '{tokens[i] if i < len(tokens) else ''}', expected: '('")
                    i += 1
                    values: list[str] = []
                    while i < len(tokens) and tokens[i] != ")":
                        if tokens[i] != ",":
                            values.append(value_ok(tokens[i]))
                        i += 1
                    if i >= len(tokens):
                        raise fail("found '', expected: ')'")
                    i += 1
                    if not values and op == "in":
                        raise fail("for 'in', 'notin' operators, values set can't be empty")
                    reqs.append(Requirement(key, op, tuple(values)))
                else:
                    raise fail(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")
        if i < len(tokens):
            if tokens[i] != ",":
                raise fail(f"found '{tokens[i]}', expected: ',' or 'end of string'")
            i += 1
            if i >= len(tokens):
                raise fail("found '', expected: identifier after ','")
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], obj: dict[str, Any]) -> bool:
    if not reqs:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# ------------------------------------------------------------------ fields


def _get(obj: Any, *path: str) -> str:
    for p in path:
        if not isinstance(obj, dict):
            return ""
        obj = obj.get(p)
    if obj is None:
        return ""
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return str(obj)


Getter = Callable[[dict[str, Any]], str]


def _f(path: str) -> tuple[str, Getter]:
    parts = path.split(".")
    return path, lambda o: _get(o, *parts)


COMMON: dict[str, Getter] = dict([_f("metadata.name"), _f("metadata.namespace")])
FIELDS: dict[str, dict[str, Getter]] = {
    "pods": dict(
        _f(p)
        for p in (
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        )
    ),
    "events": dict(
        _f(p)
        for p in (
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        )
    ),
    "secrets": dict([_f("type")]),
    "nodes": dict([_f("spec.unschedulable")]),
    "namespaces": dict([_f("status.phase")]),
    "endpointslices.discovery.k8s.io": {},
}
# A cluster-scoped kind's metadata.namespace is always "".


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str
    get: Getter

    def matches(self, obj: dict[str, Any]) -> bool:
        return (self.get(obj) == self.value) == (self.op == "=")


def _split_unescaped(text: str, sep: str) -> list[str]:
    out, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if c == sep:
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    return out


def _unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            if text[i + 1] not in "\\,=":
                raise E.bad_request(f"invalid field selector: invalid escape sequence: {text}")
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def parse_fields(text: str, store_key: str) -> tuple[FieldRequirement, ...]:
    if len(text) > MAX_SELECTOR:
        raise E.bad_request(f"field selector longer than {MAX_SELECTOR} bytes")
    supported = {**COMMON, **FIELDS.get(store_key, {})}
    reqs = []
    for part in _split_unescaped(text, ","):
        if not part.strip():
            continue
        m = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)(.*)", part, re.S)
        if not m:
            raise E.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = m.group(1).strip(), m.group(2), _unescape(m.group(3))
        getter = supported.get(name)
        if getter is None:
            raise E.bad_request(f"field label not supported: {name}")
        reqs.append(FieldRequirement(name, "!=" if op == "!=" else "=", value, getter))
    return tuple(reqs)


def fields_match(reqs: tuple[FieldRequirement, ...], obj: dict[str, Any]) -> bool:
    return all(r.matches(obj) for r in reqs)


def exact_field(reqs: tuple[FieldRequirement, ...], name: str) -> str | None:
    """The value an `=` requirement pins `name` to (lists by metadata.name can skip a scan)."""
    for r in reqs:
        if r.field == name and r.op == "=":
            return r.value
    return None
