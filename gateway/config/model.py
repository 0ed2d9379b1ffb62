"""The gateway's whole configuration: its top-level fields and the rules across them.

`parse_config(body)` turns the YAML of `slipstream gateway -c FILE` into a
`GatewayConfig`, raising `FieldError` with the field's path as written
(`routes[0].timeouts.request: 'soon' is not a duration`); `load_config` adds the
file and line. The parts are defined in listeners.py, backends.py, routes.py and, for
consumers and plugins, gateway/plugins/models.py. Shape:

    admin: {address: 127.0.0.1:9901}
    workers: 2
    listeners: [...]                               # listeners.py
    backends: [...]                                # backends.py
    consumers: [{name, groups, apiKeys, jwtSubjects, plugins}]
    plugins: [{name, config}]                      # global scope
    routes: [...]                                  # routes.py
    accessLog: {format: json | text | off}
    requestId: {header: x-request-id, trustIncoming: true}

Rules across objects are checked here and name the field they blame: names given
twice, two listeners on one address, a backendRef to no backend, an API key of two
consumers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, TypeAdapter, field_validator, model_validator

from agent.common.errors import FieldError, ManifestError
from agent.common.manifest import load_file
from agent.common.schema import Bool, Int, Model, Str, invalid, parse

from ..errors import ConfigError
from ..plugins.models import Consumer, LowerBytes, PluginSpec, check_plugins, one_of
from .backends import BackendSpec
from .common import address_of
from .listeners import ListenerSpec
from .routes import RouteSpec


class Admin(Model):
    address: Annotated[tuple[str, int], address_of("127.0.0.1")] = ("127.0.0.1", 9901)


class AccessLog(Model):
    format: Annotated[Str, one_of(("json", "text", "off"), "json, text or off")] = "json"


class RequestId(Model):
    header: LowerBytes = b"x-request-id"
    trust_incoming: Bool = True


def _unique(items: tuple[Any, ...], what: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.name in seen:
            raise invalid(f"{what} {item.name!r} is defined twice", i, "name")
        seen.add(item.name)


_BACKENDS = TypeAdapter(tuple[BackendSpec, ...])


def _backends(value: Any) -> Any:
    """The list as written, as a mapping by name (the list's errors keep their index)."""
    if isinstance(value, Mapping) and all(isinstance(b, BackendSpec) for b in value.values()):
        return value  # made in code, by name (a mapping in YAML is not a list: refused below)
    backends = _BACKENDS.validate_python([] if value is None else value, by_name=False)
    _unique(backends, "backend")
    return {b.name: b for b in backends}


class GatewayConfig(Model):
    admin: Admin = Admin()
    workers: Annotated[Int, Field(ge=1, le=64)] = 1
    listeners: tuple[ListenerSpec, ...] = ()
    backends: Annotated[Mapping[str, BackendSpec], BeforeValidator(_backends)] = {}
    """By name."""
    routes: tuple[RouteSpec, ...] = ()
    """In the order written: it breaks ties of precedence (older first, as in Gateway API)."""
    consumers: tuple[Consumer, ...] = ()
    plugins: tuple[PluginSpec, ...] = ()
    access_log: AccessLog = AccessLog()
    request_id: RequestId = RequestId()

    @field_validator("listeners")
    @classmethod
    def _listeners(cls, value: tuple[ListenerSpec, ...]) -> tuple[ListenerSpec, ...]:
        if not value:
            raise ValueError("at least one listener is needed")
        _unique(value, "listener")
        seen: dict[tuple[str, int], str] = {}
        for i, li in enumerate(value):
            if li.address in seen:
                raise invalid(
                    f"{li.host}:{li.port} is already used by listener {seen[li.address]!r}",
                    i,
                    "address",
                )
            seen[li.address] = li.name
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: tuple[RouteSpec, ...]) -> tuple[RouteSpec, ...]:
        _unique(value, "route")
        return value

    @field_validator("consumers")
    @classmethod
    def _consumers(cls, value: tuple[Consumer, ...]) -> tuple[Consumer, ...]:
        _unique(value, "consumer")
        owner: dict[str, str] = {}
        for i, c in enumerate(value):
            for j, k in enumerate(c.api_keys):
                if k in owner:
                    raise invalid(f"this key also belongs to {owner[k]!r}", i, "apiKeys", j)
                owner[k] = c.name
        return value

    @field_validator("plugins")
    @classmethod
    def _global(cls, value: tuple[PluginSpec, ...]) -> tuple[PluginSpec, ...]:
        return check_plugins(value, "global")

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for i, route in enumerate(self.routes):
            for j, ref in enumerate(route.backends):
                if ref.name not in self.backends:
                    raise invalid(
                        f"no backend named {ref.name!r}", "routes", i, "backendRefs", j, "name"
                    )
        return self


def parse_config(body: Any) -> GatewayConfig:
    """The configuration in `body` (parsed YAML), or a FieldError naming the field."""
    if not isinstance(body, dict):
        raise FieldError("", "the configuration must be a mapping")
    return parse(GatewayConfig, body)


def load_config(path: str) -> GatewayConfig:
    """Read and validate a configuration file; ConfigError names file, line and field."""
    try:
        docs = load_file(path)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from exc
    if len(docs) != 1:
        raise ConfigError(f"{path}: expected one YAML document, found {len(docs)}")
    try:
        return parse_config(docs[0].body)
    except FieldError as exc:
        raise ConfigError(str(docs[0].error(exc))) from exc
