"""The model base every object kind builds on: errors name the field as the manifest spells
it, units go through the one parser, and the OpenAPI schema is structural."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import field_validator, model_validator

from agent.common.errors import FieldError
from agent.common.schema import (
    Bool,
    Duration,
    Int,
    Model,
    Port,
    Size,
    Str,
    invalid,
    openapi,
    parse,
)


class Target(Model):
    port: Port
    host_name: Str = ""


class Spec(Model):
    targets: tuple[Target, ...] = ()
    timeout: Duration = 5.0
    max_body: Size = 1024
    enabled: Bool = True
    weight: Int | Str | None = None


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"targets": [{"port": 70000}]}, "spec.targets[0].port", "70000: must be less than"),
        ({"targets": [{"port": "80"}]}, "spec.targets[0].port", "'80': must be a valid integer"),
        ({"targets": [{}]}, "spec.targets[0].port", "is required"),
        ({"targets": [{"port": 1, "hostname": "x"}]}, "spec.targets[0].hostname", "unknown field"),
        ({"timeout": "soon"}, "spec.timeout", "'soon' is not a duration"),
        ({"maxBody": "big"}, "spec.maxBody", "'big' is not a size"),
        ({"enabled": "yes"}, "spec.enabled", "'yes': must be a valid boolean"),
        ({"weight": 1.5}, "spec.weight", "1.5 is not one of the accepted forms"),
        # two wrong fields of one object are not a union's forms: the first is named
        ({"targets": [{"hostName": 1}]}, "spec.targets[0].port", "is required"),
        ({"timeout": "soon", "maxBody": "big"}, "spec.timeout", "'soon' is not a duration"),
        # fields are spelled as written: the Python name is an unknown field
        ({"max_body": 10}, "spec.max_body", "unknown field"),
    ],
)
def test_errors_name_the_field_as_written(body, field, reason):
    with pytest.raises(FieldError) as err:
        parse(Spec, body, "spec")
    assert err.value.field == field
    assert err.value.reason.startswith(reason), err.value.reason


def test_aliases_units_and_immutability():
    spec = parse(Spec, {"targets": [{"port": 80, "hostName": "a"}], "timeout": "250ms"})
    assert spec.targets == (Target(port=80, host_name="a"),)
    assert spec.timeout == 0.25 and spec.max_body == 1024
    with pytest.raises(Exception, match="frozen"):
        spec.timeout = 1  # type: ignore[misc]


def test_the_openapi_schema_is_structural():
    schema = openapi(Spec)
    text = repr(schema)
    assert "$ref" not in text and "'title'" not in text and "'null'" not in text
    target = schema["properties"]["targets"]["items"]
    assert target["properties"]["port"] == {"type": "integer", "minimum": 1, "maximum": 65535}
    assert target["required"] == ["port"] and "additionalProperties" not in target
    assert "default" not in repr(schema), "the API server would write defaults into objects"
    assert "hostName" in target["properties"] and "maxBody" in schema["properties"]
    assert schema["properties"]["timeout"]["x-kubernetes-int-or-string"] is True


class Pair(Model):
    targets: tuple[Target, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> Pair:
        seen: set[int] = set()
        for i, t in enumerate(self.targets):
            if t.port in seen:
                raise invalid(f"port {t.port} is given twice", "targets", i, "port")
            seen.add(t.port)
        return self


class Holder(Model):
    pairs: tuple[Pair, ...] = ()


def test_a_rule_across_fields_names_the_field_it_blames():
    with pytest.raises(FieldError) as err:
        parse(Holder, {"pairs": [{}, {"targets": [{"port": 1}, {"port": 2}, {"port": 1}]}]}, "spec")
    assert err.value.field == "spec.pairs[1].targets[2].port"
    assert err.value.reason == "port 1 is given twice"


class Labelled(Model):
    labels: dict[Str, Str] = {}
    spec: Spec | None = None


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"labels": "x"}, "labels", "must be a mapping, not string"),
        ({"spec": {"targets": "x"}}, "spec.targets", "must be a list, not string"),
        ({"spec": {"targets": [None]}}, "spec.targets[0]", "must be a mapping, not NoneType"),
        ({"labels": {"a": 1}}, "labels.a", "must be a string, not int"),
        ({1: "x"}, "1", "unknown field"),
        ({"labels": {1: "x"}}, "labels.1", "must be a string, not int"),
        ({"spec": {"targets": [{"port": None}]}}, "spec.targets[0].port", "is required"),
    ],
)
def test_shapes_keys_and_nulls_read_as_the_manifest_says(body, field, reason):
    with pytest.raises(FieldError) as err:
        parse(Labelled, body)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_null_is_an_absent_field():
    assert parse(Labelled, {"labels": None, "spec": {"timeout": None}}) == Labelled(spec=Spec())


class Listed(Model):
    mode: Literal["A", "B"] = "A"
    ports: tuple[Port, ...] = ()

    @field_validator("ports")
    @classmethod
    def _once(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        for i, p in enumerate(ports):
            if p in ports[:i]:
                raise invalid(f"port {p} is listed twice", i)
        return ports


def test_a_rule_across_items_names_the_item_and_literals_list_their_choices():
    with pytest.raises(FieldError) as err:
        parse(Listed, {"ports": [1, 2, 1]}, "spec")
    assert (err.value.field, err.value.reason) == ("spec.ports[2]", "port 1 is listed twice")
    with pytest.raises(FieldError) as err:
        parse(Listed, {"mode": "C"}, "spec")
    assert (err.value.field, err.value.reason) == ("spec.mode", "'C' is not one of 'A' or 'B'")


def test_two_wrong_fields_side_by_side_are_not_a_union():
    with pytest.raises(FieldError) as err:
        parse(Spec, {"timeout": "soon", "enabled": "yes"}, "spec")
    assert err.value.field == "spec.timeout"
