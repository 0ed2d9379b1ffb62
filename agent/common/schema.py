"""One way to define a kind of object: a pydantic v2 model.

Every configuration and object kind (the gateway's configuration, Lab, Kubernetes
objects, AuthorizationPolicy, PeerAuthentication, ...) is one `Model` subclass, and from
it come the three things that used to be written by hand and separately:

- validation: `parse(Kind, body)` returns the typed object or raises a `FieldError`
  naming the field as the manifest spells it (`spec.rules[0].from[0].source.principals`),
  which the manifest loader turns into `file:line (object): field: reason`;
- the typed, immutable object the code reads (`frozen`, tuples for lists);
- the OpenAPI v3 schema a CRD carries (`openapi(Kind)`), structural as Kubernetes
  wants it: no `$ref`, no `anyOf` between types.

Conventions every model follows: field names in snake_case with the manifest's
camelCase as alias (`to_camel`), unknown fields refused, scalars strict (a port is
an integer, not the string "80": YAML quoting mistakes are errors, as kubectl makes
them), units through `Duration`/`Size`/`Port` (agent/common/units.py, the one parser
of each), and rules pydantic cannot say in a type in `field_validator`s that raise
`ValueError` with a message that reads after the field's name. A rule across fields
(a reference to an unknown name, a name given twice) is a `model_validator` that
raises `invalid(reason, *loc)`, naming the field it blames below the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from . import units
from .errors import FieldError, UnitError

__all__ = [
    "Bool",
    "Duration",
    "Int",
    "Model",
    "Port",
    "Size",
    "Str",
    "field_path",
    "from_unit",
    "invalid",
    "openapi",
    "parse",
]

Str = StrictStr
Int = StrictInt
Bool = StrictBool


class Model(BaseModel):
    """The base of every object kind (see the module docstring for the conventions)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        hide_input_in_errors=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # Kubernetes (and YAML's `key:` with nothing after it) writes an absent field as
        # null: a null field takes its default, and a required one is reported missing.
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data


def from_unit(parse: Any) -> Any:
    """A validator (for `BeforeValidator`) out of one of units.py's parsers: its UnitError
    becomes the ValueError pydantic reports at the field."""

    def check(value: Any) -> Any:
        try:
            return parse(value)
        except UnitError as exc:
            raise ValueError(str(exc)) from exc

    return check


Duration = Annotated[
    float,
    BeforeValidator(from_unit(units.parse_duration)),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$"}),
]
"""Seconds, written `500ms`, `30s`, `15m`, `24h`, `7d` or a number of seconds."""

Size = Annotated[
    int,
    BeforeValidator(from_unit(units.parse_size)),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
"""Bytes, written `512`, `64KiB`, `10MiB` (or KB, MB, GB)."""

Port = Annotated[StrictInt, Field(ge=1, le=65535)]
"""A TCP port, 1-65535."""


T = TypeVar("T", bound=BaseModel)


def invalid(reason: str, *loc: int | str, value: Any = None) -> ValidationError:
    """An error at `loc` below what a validator is validating (names as written:
    `invalid("no backend named 'x'", "backendRefs", 0, "name")`). Raised from a validator,
    pydantic places it under the validator's own location, so a rule checked across
    fields still names the one field it blames."""
    details = InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": reason}),
        loc=loc,
        input=value,
    )
    return ValidationError.from_exception_data("invalid", [details])


def parse(kind: type[T], body: Any, path: str = "", context: Any = None) -> T:
    """`body` (parsed YAML or JSON) as a `kind`, or a FieldError naming the first wrong
    field under `path` (the prefix where `body` sits in its document). `context` reaches
    the validators (`info.context`): what a kind's rules depend on beyond its fields."""
    try:
        # by alias only: a manifest spells fields as written (`maxBody`), and `max_body`
        # is an unknown field there, as it is to kubectl (code constructs by name)
        return kind.model_validate(body, by_name=False, context=context)
    except ValidationError as exc:
        field, reason = describe(exc)
        raise FieldError(join(path, field), reason) from exc


def join(path: str, field: str) -> str:
    if not path:
        return field
    if not field or field.startswith("["):
        return path + field
    return f"{path}.{field}"


def field_path(loc: tuple[int | str, ...], key: bool = False) -> str:
    """`('spec', 'ports', 0, 'port')` as `spec.ports[0].port`. `key`: the last part is a
    mapping's key (`metadata.labels.bad key!`, `spec.1`), never an index."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (key and i == len(loc) - 1):
            out = f"{out}[{part}]"
        else:
            out = join(out, str(part))
    return out


def describe(exc: ValidationError) -> tuple[str, str]:
    """The field and reason of the error a user should read first.

    Where a value matched none of a union's forms, pydantic reports one error per form,
    each with the form's name appended to the location; those are folded into one
    error at the union's field. (Errors of several fields of one object look alike by
    location: they are told apart by their kind, a field missing or unknown, and by
    their input, which for a union's forms is one value.)"""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    if loc and loc[-1] == "[key]":  # a mapping's key was refused: name the key itself
        return field_path(loc[:-1], key=True), reason(first)
    if first["type"] == "invalid_key":  # YAML keys need not be strings (`1: x`, `true: x`)
        return join(field_path(loc[:-1]), str(first.get("input"))), "unknown field"
    siblings = [e for e in errors if tuple(e["loc"])[: len(loc) - 1] == loc[:-1]]
    one_value = all(
        e["type"] not in ("missing", "extra_forbidden") and e.get("input") is first.get("input")
        for e in siblings
    )
    if len(siblings) > 1 and one_value and all(len(e["loc"]) == len(loc) for e in siblings):
        tags = [e["loc"][-1] for e in siblings]
        if all(_union_tag(t) for t in tags) and len(set(tags)) == len(tags):
            return field_path(loc[:-1]), f"{_shown(first)} is not one of the accepted forms"
    return field_path(loc), reason(first)


_TYPE_WORDS = {
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "string_type": "a string",
}
"""Errors of shape, said as the manifest's words: `must be a list, not str`."""


def _type_name(value: Any) -> str:
    names: dict[type, str] = {dict: "mapping", list: "list", str: "string"}
    return names.get(type(value), type(value).__name__)


_SCALAR_TAGS = frozenset({"int", "str", "bool", "float", "bytes", "none", "list", "dict", "tuple"})


def _union_tag(tag: int | str) -> bool:
    """Whether a location's last part names a union's form (`int`, `function-plain[...]`,
    a model's class name) rather than a field (camelCase: two fields wrong side by side
    are two errors, not one value matching no form)."""
    if isinstance(tag, int):
        return False
    return tag in _SCALAR_TAGS or tag[:1].isupper() or "[" in tag or "-" in tag


def _shown(err: Mapping[str, Any]) -> str:
    text = repr(err.get("input"))
    return text if len(text) <= 60 else text[:57] + "..."


def reason(err: Mapping[str, Any]) -> str:
    """One pydantic error as a phrase that reads after the field's name."""
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "literal_error":
        return f"{_shown(err)} is not one of {err['ctx']['expected']}"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, not {_type_name(err.get('input'))}"
    if kind == "assertion_error":
        return str(err["ctx"]["error"]).removeprefix("AssertionError: ") or "is not valid"
    msg = str(err["msg"])
    msg = msg.removeprefix("Input should be ").removeprefix("Value error, ")
    return f"{_shown(err)}: must be {msg}" if not msg.startswith(("Field", "Extra")) else msg


# ---------------------------------------------------------------- OpenAPI v3 for CRDs


def openapi(kind: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `kind` (by its aliases), as a CRD's
    `openAPIV3Schema` carries it: definitions inlined, `null` alternatives dropped
    (Kubernetes treats an absent field as null), titles removed. Also dropped: defaults
    (a model's default says what absence means; the API server would write it into the
    stored object, where e.g. `from: []` means something else) and `additionalProperties`
    beside `properties`, which Kubernetes forbids (unknown fields are pruned, or refused
    by kubectl's strict field validation; the model refuses them when it reads)."""
    schema = kind.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return _structural(schema, defs)


def _structural(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    for key in ("anyOf", "oneOf"):
        forms = [f for f in node.get(key, ()) if f.get("type") != "null"]
        if key not in node:
            continue
        rest = {k: v for k, v in node.items() if k != key}
        if len(forms) == 1:
            return _structural({**forms[0], **rest}, defs)
        if sorted(f.get("type", "") for f in forms) == ["integer", "string"]:
            return _structural({**rest, "x-kubernetes-int-or-string": True}, defs)
        raise TypeError(f"{forms!r}: a CRD schema cannot say one of these (not structural)")
    out = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key == "additionalProperties" and "properties" in node:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "array" and "prefixItems" in out:
        out.pop("prefixItems")
    return out
