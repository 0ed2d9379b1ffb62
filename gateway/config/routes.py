"""Routes: which requests go where, with filters, timeouts, retries and plugins.

Names as in the Gateway API's HTTPRoute where it has them:

    routes: [{name, hostnames, matches: [{path: {type, value}, method, headers, queryParams}],
              filters: [{type, requestHeaderModifier | responseHeaderModifier
                         | requestRedirect | urlRewrite}],
              backendRefs: [{name, weight}], timeouts: {request, backendRequest},
              retry: {attempts, on, methods}, upgrades: [websocket], plugins: [...]}]

That a backendRef names a backend that exists is checked by the whole configuration
(model.py). `filters` is read on every request as one `Filters` (which filter of each
kind a route has), built when the route is validated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from agent.common.schema import Duration, Int, Model, Port, Str, invalid

from ..plugins.models import (
    LowerBytes,
    Name,
    OptionalStr,
    PluginSpec,
    Upper,
    check_plugins,
    one_of,
)
from .common import RouteHostname, regex

PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")

# ---------------------------------------------------------------- matches


class PathMatch(Model):
    type: Annotated[Str, one_of(PATH_TYPES)] = "PathPrefix"
    value: Str = "/"

    @model_validator(mode="after")
    def _valid(self) -> PathMatch:
        if self.type == "RegularExpression":
            try:
                self.__dict__["regex"] = regex(self.value)
            except ValueError as exc:
                raise invalid(str(exc), "value") from exc
        elif not self.value.startswith("/"):
            raise invalid(f"{self.value!r} must start with /", "value")
        return self

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        """The compiled RegularExpression (compiled, and checked, when validated)."""
        return re.compile(self.value) if self.type == "RegularExpression" else None


class ValueMatch(Model):
    """A query parameter to match (a header: `HeaderMatch`)."""

    name: Str
    value: Str
    type: Annotated[Str, one_of(VALUE_TYPES, "Exact or RegularExpression")] = "Exact"

    @model_validator(mode="after")
    def _valid(self) -> ValueMatch:
        if self.type == "RegularExpression":
            try:
                self.__dict__["regex"] = regex(self.value)
            except ValueError as exc:
                raise invalid(str(exc), "value") from exc
        return self

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        return re.compile(self.value) if self.type == "RegularExpression" else None

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        pattern = self.regex
        if pattern is not None:
            return pattern.fullmatch(actual) is not None
        return actual == self.value


class HeaderMatch(ValueMatch):
    """A header to match: its name compared in lower case."""

    @field_validator("name")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


def _method(value: str) -> str:
    if not re.fullmatch(r"[A-Z]+", value):
        raise ValueError(f"{value!r} is not an HTTP method (upper case)")
    return value


class RouteMatch(Model):
    path: PathMatch = PathMatch()
    method: Annotated[Str, AfterValidator(_method)] | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[ValueMatch, ...] = Field(default=(), alias="queryParams")


# ---------------------------------------------------------------- filters

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HeaderValue(Model):
    name: Str
    value: Str

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a header name")
        return value

    @field_validator("value")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must be one line")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ValueError("must be Latin-1 text (what an HTTP/1.1 field carries)") from exc
        return value


def _pair(value: Any) -> Any:
    h = HeaderValue.model_validate(value, by_name=False)  # (errors keep their place)
    return (h.name.lower().encode(), h.value.encode("latin-1"))


HeaderPair = Annotated[tuple[bytes, bytes], BeforeValidator(_pair)]
"""`{name, value}`, as the (lower-case name, value) a request's headers hold."""


class HeaderModifier(Model):
    set: tuple[HeaderPair, ...] = ()
    add: tuple[HeaderPair, ...] = ()
    remove: tuple[LowerBytes, ...] = ()


class PathModifier(Model):
    type: Annotated[
        Str,
        one_of(("ReplaceFullPath", "ReplacePrefixMatch"), "ReplaceFullPath or ReplacePrefixMatch"),
    ]
    replace_full_path: Str | None = None
    replace_prefix_match: Str | None = None

    @model_validator(mode="after")
    def _value(self) -> PathModifier:
        full = self.type == "ReplaceFullPath"
        key = "replaceFullPath" if full else "replacePrefixMatch"
        value = self.replace_full_path if full else self.replace_prefix_match
        if value is None:
            raise invalid("is required", key)
        if not value.startswith("/"):
            raise invalid("must start with /", key)
        return self

    @property
    def value(self) -> str:
        full = self.type == "ReplaceFullPath"
        return (self.replace_full_path if full else self.replace_prefix_match) or ""


REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def _redirect_status(value: int) -> int:
    if value not in REDIRECT_STATUSES:
        raise ValueError(f"{value} is not a redirect status")
    return value


def _scheme(value: str | None) -> str | None:
    if value not in (None, "http", "https"):
        raise ValueError("must be http or https")
    return value


class Redirect(Model):
    scheme: Annotated[OptionalStr, AfterValidator(_scheme)] = None
    hostname: OptionalStr = None
    port: Port | None = None
    path: PathModifier | None = None
    status: Annotated[Int, AfterValidator(_redirect_status)] = Field(
        default=302, alias="statusCode"
    )


class Rewrite(Model):
    hostname: OptionalStr = None
    path: PathModifier | None = None


FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")
_BODIES = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
}


class Filter(Model):
    """One entry of `filters`: its type, and the settings of that type (camelCase key)."""

    type: Annotated[Str, one_of(FILTER_TYPES)]
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: Redirect | None = None
    url_rewrite: Rewrite | None = None

    @model_validator(mode="after")
    def _one_body(self) -> Filter:
        mine = _BODIES[self.type]
        for field in _BODIES.values():
            if field != mine and getattr(self, field) is not None:
                alias = type(self).model_fields[field].alias or field
                raise invalid(f"unknown field for a {self.type} filter", alias)
        return self

    @property
    def body(self) -> HeaderModifier | Redirect | Rewrite:
        found = getattr(self, _BODIES[self.type])
        if found is not None:
            return found
        return {"RequestRedirect": Redirect, "URLRewrite": Rewrite}.get(self.type, HeaderModifier)()


@dataclass(frozen=True)
class Filters:
    """A route's filters by kind, as the pipeline reads them on every request."""

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


# ---------------------------------------------------------------- the rest of a route


class BackendRef(Model):
    name: Str
    weight: Annotated[Int, Field(ge=0, le=1_000_000)] = 1


class Timeouts(Model):
    request: Duration = 30.0
    backend_request: Duration = 15.0
    """Each try's; unless given, 15s or `request` if that is shorter."""

    @model_validator(mode="after")
    def _within(self) -> Timeouts:
        if "backend_request" not in self.model_fields_set:
            # (a default that depends on another field; frozen models are set this way)
            object.__setattr__(self, "backend_request", min(15.0, self.request))
        elif self.backend_request > self.request:
            raise invalid("must not be longer than timeouts.request", "backendRequest")
        return self


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def _retry_on(value: Any) -> Any:
    if value == "connect-failure":
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599:
        return value
    raise ValueError(f"{value!r} is not connect-failure or a 5xx status")


class Retry(Model):
    attempts: Annotated[Int, Field(ge=1, le=10)] = 2
    """Tries in all, the first included. Without a retry block: 2, on connect failure only
    (nothing reached the upstream, so it is always safe)."""
    on: tuple[Annotated[Literal["connect-failure"] | int, BeforeValidator(_retry_on)], ...] = (
        "connect-failure",
        502,
        503,
        504,
    )
    methods: frozenset[Upper] = IDEMPOTENT
    """Requests that may be sent twice. A connect failure is retried for any method: nothing
    reached the upstream."""

    @field_validator("methods")
    @classmethod
    def _default(cls, value: frozenset[str]) -> frozenset[str]:
        return value or IDEMPOTENT

    @cached_property
    def on_connect_failure(self) -> bool:
        return "connect-failure" in self.on

    @cached_property
    def statuses(self) -> frozenset[int]:
        return frozenset(s for s in self.on if isinstance(s, int))


NO_RETRY_BLOCK = Retry(on=("connect-failure",))


def _upgrade(value: str) -> str:
    if value.lower() != "websocket":
        raise ValueError(f"{value!r} cannot be passed through (only websocket)")
    return value.lower()


class RouteSpec(Model):
    name: Name
    hostnames: tuple[RouteHostname, ...] = ()
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    filter_list: tuple[Filter, ...] = Field(default=(), alias="filters")
    backends: tuple[BackendRef, ...] = Field(default=(), alias="backendRefs")
    timeouts: Timeouts = Timeouts()
    retry: Retry = NO_RETRY_BLOCK
    plugins: tuple[PluginSpec, ...] = ()
    upgrades: frozenset[Annotated[Str, AfterValidator(_upgrade)]] = frozenset({"websocket"})
    """Protocols a request may switch to on this route; any other Upgrade is not forwarded
    (the request is answered as plain HTTP and its connection closed)."""

    @field_validator("matches")
    @classmethod
    def _match_all(cls, value: tuple[RouteMatch, ...]) -> tuple[RouteMatch, ...]:
        return value or (RouteMatch(),)

    @field_validator("retry", mode="before")
    @classmethod
    def _empty_retry(cls, value: Any) -> Any:
        return NO_RETRY_BLOCK if value == {} else value

    @field_validator("plugins")
    @classmethod
    def _scope(cls, value: tuple[PluginSpec, ...]) -> tuple[PluginSpec, ...]:
        return check_plugins(value, "route")

    @model_validator(mode="after")
    def _consistent(self) -> RouteSpec:
        seen: dict[str, int] = {}
        for i, f in enumerate(self.filter_list):
            if f.type in seen:
                raise invalid(f"{f.type} is given twice", "filters", i, "type")
            seen[f.type] = i
            path = getattr(f.body, "path", None)
            prefix = path is not None and path.type == "ReplacePrefixMatch"
            if prefix and not all(m.path.type == "PathPrefix" for m in self.matches):
                body = type(f).model_fields[_BODIES[f.type]].alias or ""
                raise invalid(
                    "ReplacePrefixMatch needs every match of the route to be a PathPrefix",
                    "filters",
                    i,
                    body,
                    "path",
                )
        if "RequestRedirect" in seen and "URLRewrite" in seen:
            raise invalid("RequestRedirect and URLRewrite cannot be used together", "filters")
        if not self.backends and self.filters.redirect is None:
            raise invalid("a route needs backendRefs (or a RequestRedirect filter)", "backendRefs")
        if self.backends and not any(r.weight for r in self.backends):
            raise invalid("at least one backendRef needs a weight above 0", "backendRefs")
        return self

    @cached_property
    def filters(self) -> Filters:
        by_type = {f.type: f.body for f in self.filter_list}
        return Filters(
            by_type.get("RequestHeaderModifier"),  # type: ignore[arg-type]
            by_type.get("ResponseHeaderModifier"),  # type: ignore[arg-type]
            by_type.get("RequestRedirect"),  # type: ignore[arg-type]
            by_type.get("URLRewrite"),  # type: ignore[arg-type]
        )
