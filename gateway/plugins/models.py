"""The plugins' configuration: one pydantic model per plugin, and where each may be set.

A plugin entry is `{name, config}`; `PluginSpec` validates `config` with the model its
`name` picks (`MODELS`), so an error reads `routes[0].plugins[1].config.window: 'soon'
is not a duration`. `SCOPES` says where each plugin may be configured (global, per
route, per consumer); the holder of a plugin list checks it (`check_plugins`).

These models are the typed objects the plugins read. They live apart from the plugins,
in a module mypyc does not compile (it cannot compile pydantic classes). A model keeps its
fields in the instance's `__dict__`, so the compiled plugins read them as they read any
Python object's attribute (measured: ~30 ns more per read than a native attribute, some
tens of reads per request against tens of microseconds of work). This module is
under gateway/plugins, not gateway/config, because the configuration imports the plugins
(import-linter's layers), never the reverse: `Consumer` and `PluginSpec` are here for the
same reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.common import units
from agent.common.schema import Bool, Duration, Int, Model, Size, Str, from_unit, invalid

# ---------------------------------------------------------------- field types (shared with
# gateway/config)


def _lower_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower().encode("latin-1")
    if isinstance(value, bytes):
        return value.lower()
    raise ValueError(f"{value!r}: must be a string")


def _upper(value: str) -> str:
    return value.upper()


LowerBytes = Annotated[bytes, BeforeValidator(_lower_bytes)]
"""A header name as written, compared as lower-case bytes (the form requests carry)."""
Upper = Annotated[Str, AfterValidator(_upper)]
"""An HTTP method, compared in upper case."""


def _nonempty(value: str | None) -> str | None:
    return value or None


OptionalStr = Annotated[Str | None, AfterValidator(_nonempty)]
"""A string where `""` means not given."""


Seconds = Annotated[int, BeforeValidator(from_unit(lambda value: int(units.parse_duration(value))))]
"""A duration in whole seconds (`10m` is 600), for headers that carry seconds."""

# ---------------------------------------------------------------- the plugins' models


DEFAULT_CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_ORIGIN = re.compile(r"https?://(\*\.)?[a-z0-9.-]+(:\d+)?")


def _origin(value: str) -> str:
    if value != "*" and not _ORIGIN.fullmatch(value):
        raise ValueError(f"{value!r} is not an origin like https://app.example.com")
    return value


def _lower(value: str) -> str:
    return value.lower()


class CorsConfig(Model):
    allow_origins: tuple[Annotated[Str, AfterValidator(_origin)], ...]
    allow_methods: tuple[Upper, ...] = DEFAULT_CORS_METHODS
    allow_headers: tuple[Annotated[Str, AfterValidator(_lower)], ...] = ()
    """Lower-case; empty allows whatever the preflight asks for."""
    expose_headers: tuple[Str, ...] = ()
    allow_credentials: Bool = False
    max_age: Seconds = 600

    @field_validator("allow_origins")
    @classmethod
    def _some_origin(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list the origins allowed (or *)")
        return value

    @field_validator("allow_methods")
    @classmethod
    def _default_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return value or DEFAULT_CORS_METHODS

    @model_validator(mode="after")
    def _credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise invalid(
                "cannot be true with allowOrigins: [*] (browsers refuse it)", "allowCredentials"
            )
        return self


class KeyAuthConfig(Model):
    header: LowerBytes = b"apikey"
    query: OptionalStr = "apikey"
    """None: keys are not read from the query."""
    hide_credentials: Bool = True


JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
"""Public-key algorithms only (plugins/jwt.py verifies them)."""


def _jwt_algorithm(value: str) -> str:
    if value not in JWT_ALGORITHMS:
        raise ValueError(
            f"{value!r} is not allowed (public-key algorithms only: {', '.join(JWT_ALGORITHMS)})"
        )
    return value


class JwtConfig(Model):
    jwks_url: OptionalStr = None
    jwks_file: OptionalStr = None
    issuer: OptionalStr = None
    audiences: tuple[Str, ...] = ()
    algorithms: tuple[Annotated[Str, AfterValidator(_jwt_algorithm)], ...] = ("RS256", "ES256")
    leeway: Duration = 30.0
    require_exp: Bool = True
    refresh_interval: Duration = 300.0
    min_refresh_interval: Duration = 30.0
    """At most this often on an unknown `kid`; unless given, 30s or refreshInterval if that
    is shorter."""
    header: LowerBytes = b"authorization"
    consumer_claim: Str = "sub"

    @field_validator("jwks_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _default_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return value or ("RS256", "ES256")

    @model_validator(mode="after")
    def _one_source(self) -> JwtConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwksUrl or jwksFile")
        if "min_refresh_interval" not in self.model_fields_set:
            # (a default that depends on another field; frozen models are set this way)
            object.__setattr__(self, "min_refresh_interval", min(30.0, self.refresh_interval))
        return self


class AclConfig(Model):
    allow: frozenset[Str] = frozenset()
    deny: frozenset[Str] = frozenset()

    @model_validator(mode="after")
    def _some_group(self) -> AclConfig:
        if not (self.allow or self.deny):
            raise ValueError("give allow or deny groups")
        return self


RATE_LIMIT_BY = ("consumer", "ip", "route", "header")
RATE_LIMIT_ALGORITHMS = ("sliding-window", "token-bucket")


class RedisSettings(Model):
    url: Str = "redis://127.0.0.1:6379/0"
    timeout: Duration = 0.1
    failure: Str = "open"
    """open: a request passes when Redis cannot be asked; closed: it gets 503."""

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith("redis://"):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("failure")
    @classmethod
    def _failure(cls, value: str) -> str:
        if value not in ("open", "closed"):
            raise ValueError(f"{value!r} is not open or closed")
        return value


def one_of(choices: Sequence[str], said: str = "") -> Any:
    """A validator of a string that must be one of `choices` (`said`: how to list them)."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not {said or 'one of ' + ', '.join(choices)}")
        return value

    return AfterValidator(check)


class RateLimitConfig(Model):
    limit: Annotated[Int, Field(ge=1, le=10**9)]
    window: Duration
    by: Annotated[Str, one_of(RATE_LIMIT_BY)] = "consumer"
    header: LowerBytes | None = None
    algorithm: Annotated[Str, one_of(RATE_LIMIT_ALGORITHMS)] = "sliding-window"
    store: Annotated[Str, one_of(("local", "redis"), "local or redis")] = "local"
    redis: RedisSettings = RedisSettings()

    @field_validator("window")
    @classmethod
    def _at_least_1ms(cls, value: float) -> float:
        if value < 0.001:
            raise ValueError("must be at least 1ms")
        return value

    @field_validator("header", mode="before")
    @classmethod
    def _empty_header(cls, value: Any) -> Any:
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitConfig:
        if (self.by == "header") != (self.header is not None):
            raise invalid("give header exactly when by: header", "header")
        if "redis" in self.model_fields_set and self.store != "redis":
            raise invalid("only with store: redis", "redis")
        return self


CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses a response cache may store (RFC 9110 §15.1's heuristically cacheable ones)."""


def _cacheable(value: int) -> int:
    if value not in CACHEABLE:
        raise ValueError(f"{value!r} is not a cacheable status ({sorted(CACHEABLE)})")
    return value


def _cached_methods(value: frozenset[str]) -> frozenset[str]:
    if not value <= {"GET", "HEAD"}:
        raise ValueError("only GET and HEAD responses are cached")
    return value or frozenset({"GET", "HEAD"})


class CacheConfig(Model):
    ttl: Duration = 60.0
    max_entries: Annotated[Int, Field(ge=1, le=10**7)] = 10_000
    max_bytes: Size = 64 << 20
    max_body: Size = 1 << 20
    methods: Annotated[frozenset[Upper], AfterValidator(_cached_methods)] = frozenset(
        {"GET", "HEAD"}
    )
    statuses: frozenset[Annotated[Int, AfterValidator(_cacheable)]] = frozenset({200, 301, 404})
    vary_query: tuple[Str, ...] | None = None
    """None: every query parameter is part of the key."""
    vary_headers: tuple[LowerBytes, ...] = ()
    request_cookies: Annotated[Str, one_of(("private", "ignore"), "private or ignore")] = "private"
    """private: a request with a Cookie counts as credentialed (plugins/cache.py); ignore:
    cookies play no part (for sites whose cookies never change an answer)."""

    @field_validator("statuses")
    @classmethod
    def _default_statuses(cls, value: frozenset[int]) -> frozenset[int]:
        return value or frozenset({200, 301, 404})


PluginConfig = CorsConfig | KeyAuthConfig | JwtConfig | AclConfig | RateLimitConfig | CacheConfig

MODELS: dict[str, type[PluginConfig]] = {
    "cors": CorsConfig,
    "key-auth": KeyAuthConfig,
    "jwt": JwtConfig,
    "acl": AclConfig,
    "rate-limit": RateLimitConfig,
    "cache": CacheConfig,
}

SCOPES: dict[str, frozenset[str]] = {
    "cors": frozenset({"global", "route"}),
    "key-auth": frozenset({"global", "route"}),
    "jwt": frozenset({"global", "route"}),
    "acl": frozenset({"global", "route"}),
    "rate-limit": frozenset({"global", "route", "consumer"}),
    "cache": frozenset({"global", "route"}),
}

Scope = Literal["global", "route", "consumer"]


class PluginSpec(Model):
    """One plugin configured in one scope (global, a route, a consumer)."""

    name: Str
    config: Any = Field(default=None, validate_default=True)
    """The plugin's own typed configuration (one of MODELS, chosen by `name`); not
    given, the model's defaults."""

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown plugin {value!r} (known: {', '.join(sorted(MODELS))})")
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name")
        if name is None:
            return value  # the name is wrong: that error is the one to read
        model = MODELS[name]
        if isinstance(value, model):
            return value
        # (a ValidationError raised here keeps its locations, below `config`)
        return model.model_validate({} if value is None else value, by_name=False)


def check_plugins(specs: tuple[PluginSpec, ...], scope: Scope) -> tuple[PluginSpec, ...]:
    """The rules of a plugin list in `scope`: each plugin allowed there, and at most once."""
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if scope not in SCOPES[spec.name]:
            raise invalid(f"{spec.name} cannot be set per {scope}", i, "name")
        if spec.name in seen:
            raise invalid(f"{spec.name} is configured twice here", i, "name")
        seen.add(spec.name)
    return specs


def _api_key(value: str) -> str:
    if len(value) < 8:
        raise ValueError("an API key needs at least 8 characters")
    return value


NAME = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,62}[a-z0-9])?$")


def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r} is not a name (a-z, 0-9, '-', '.', '_')")
    return value


Name = Annotated[Str, AfterValidator(_name)]
"""The name of a listener, backend, route or consumer."""


class Consumer(Model):
    """Who a request's credentials prove is asking (key-auth, jwt), with their own plugins."""

    name: Name
    groups: frozenset[Str] = frozenset()
    api_keys: tuple[Annotated[Str, AfterValidator(_api_key)], ...] = ()
    jwt_subjects: tuple[Str, ...] = ()
    plugins: tuple[PluginSpec, ...] = ()

    @field_validator("plugins")
    @classmethod
    def _scope(cls, value: tuple[PluginSpec, ...]) -> tuple[PluginSpec, ...]:
        return check_plugins(value, "consumer")
