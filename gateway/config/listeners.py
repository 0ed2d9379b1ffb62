"""Listeners: where the gateway accepts connections, with TLS, limits and head rules.

    listeners: [{name, address: 0.0.0.0:8080, tls: {certificates: [{hosts, cert, key}]},
                 limits: {maxBody, maxHeaderBytes, maxHeaders, maxUri, headerTimeout, idleTimeout},
                 http: {mergeSlashes: true, escapedSlashes: reject | keep | decode,
                        pathParameters: reject | strip | keep,
                        headersWithUnderscores: drop | reject | allow}}]

`server_limits` and `head_rules` are what the HTTP engine (gateway/http, compiled,
shared with the waypoint) takes: its own dataclasses, read on every request.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated

from pydantic import Field, field_validator

from agent.common.schema import Bool, Duration, Int, Model, Size, Str

from ..http.head import UNDERSCORE_ACTIONS, HeadRules
from ..http.server import Limits
from ..http.uri import ESCAPED_SLASHES, PATH_PARAMETERS, PathRules
from ..plugins.models import Name, one_of
from .common import Hostname, address_of


class TlsCertificate(Model):
    hosts: tuple[Hostname, ...] = ()
    """Exact names or `*.example.com`; the first certificate is the default."""
    cert: Str
    key: Str


class ListenerTls(Model):
    certificates: tuple[TlsCertificate, ...] = Field(default=(), validate_default=True)

    @field_validator("certificates")
    @classmethod
    def _some(cls, value: tuple[TlsCertificate, ...]) -> tuple[TlsCertificate, ...]:
        if not value:
            raise ValueError("TLS needs a certificate")
        return value


_LIMITS = Limits()


class ListenerLimits(Model):
    max_uri: Size = _LIMITS.max_uri
    max_header_bytes: Size = _LIMITS.max_header_bytes
    max_headers: Annotated[Int, Field(ge=1, le=10_000)] = _LIMITS.max_headers
    max_body: Size = _LIMITS.max_body
    header_timeout: Duration = _LIMITS.header_timeout
    idle_timeout: Duration = _LIMITS.idle_timeout


class HttpRules(Model):
    merge_slashes: Bool = True
    escaped_slashes: Annotated[Str, one_of(ESCAPED_SLASHES)] = "reject"
    path_parameters: Annotated[Str, one_of(PATH_PARAMETERS)] = "reject"
    headers_with_underscores: Annotated[Str, one_of(UNDERSCORE_ACTIONS)] = "drop"


class ListenerSpec(Model):
    name: Name
    address: Annotated[tuple[str, int], address_of("0.0.0.0")] = ("0.0.0.0", 8080)
    tls: ListenerTls | None = None
    limits: ListenerLimits = ListenerLimits()
    http: HttpRules = HttpRules()

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def certificates(self) -> tuple[TlsCertificate, ...]:
        return self.tls.certificates if self.tls is not None else ()

    @cached_property
    def server_limits(self) -> Limits:
        lim = self.limits
        return Limits(
            max_uri=lim.max_uri,
            max_header_bytes=lim.max_header_bytes,
            max_headers=lim.max_headers,
            max_body=lim.max_body,
            header_timeout=lim.header_timeout,
            idle_timeout=lim.idle_timeout,
        )

    @cached_property
    def head_rules(self) -> HeadRules:
        h = self.http
        paths = PathRules(h.merge_slashes, h.escaped_slashes, h.path_parameters)
        return HeadRules(paths, h.headers_with_underscores)
