"""Backends: the upstreams routes send to, how one endpoint is chosen, and health checks.

    backends: [{name, endpoints: [URL | {url, weight, identity}] | service: {namespace, name,
                port}, loadBalancer: round-robin | least-request
                | {hash: {header: NAME} | {cookie: NAME}}, connectTimeout,
                healthCheck: {active: {path, interval, timeout, healthyThreshold,
                unhealthyThreshold, statuses}, passive: {consecutiveFailures, ejection,
                maxEjection}}}]

A backend naming a `service` gets its endpoints from the cluster (gatewayapi.py
resolves them before the configuration is validated).
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cached_property
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.common.schema import Duration, Int, Model, Port, Str, invalid
from agent.identity.certs import IdentityError, SpiffeId

from ..http.upstream import UpstreamEndpoint
from ..plugins.models import LowerBytes, Name, OptionalStr


def parse_endpoint(url: str) -> UpstreamEndpoint:
    """An upstream from `http(s)://HOST[:PORT]`, or a ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{url!r} has an invalid port") from exc
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r}: no path or query here")
    return UpstreamEndpoint(parts.hostname, port, tls=parts.scheme == "https")


def _url(value: Any) -> Any:
    if isinstance(value, str):
        parse_endpoint(value)  # a URL written alone: its errors name the list entry
        return {"url": value}
    return value


class EndpointSpec(Model):
    url: Str
    weight: Annotated[Int, Field(ge=1, le=1000)] = 1
    identity: OptionalStr = None
    """The SPIFFE ID of an enrolled pod: the gateway reaches it over HBONE (mesh.py)."""

    @field_validator("url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parse_endpoint(value)
        return value

    @field_validator("identity")
    @classmethod
    def _spiffe(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SpiffeId.parse(value)
            except IdentityError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _plain_for_mesh(self) -> EndpointSpec:
        if self.identity is not None and self.url.startswith("https:"):
            raise invalid("a mesh endpoint is http:// (HBONE encrypts it)", "url")
        return self

    @cached_property
    def endpoint(self) -> UpstreamEndpoint:
        ep = parse_endpoint(self.url)
        return ep if self.identity is None else replace(ep, identity=self.identity)


class ServiceRef(Model):
    namespace: Str = "default"
    name: Str
    port: Port


_STATUS_RANGE = re.compile(r"([1-5]\d\d)(?:-([1-5]\d\d))?")


def _status_range(value: Any) -> Any:
    m = _STATUS_RANGE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a status or range (200-299)")
    return (int(m.group(1)), int(m.group(2) or m.group(1)))


class ActiveCheck(Model):
    path: Str = "/"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    healthy_threshold: Annotated[Int, Field(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[Int, Field(ge=1, le=100)] = 2
    statuses: tuple[Annotated[tuple[int, int], BeforeValidator(_status_range)], ...] = ((200, 399),)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("statuses")
    @classmethod
    def _default(cls, value: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        return value or ((200, 399),)


class PassiveCheck(Model):
    consecutive_failures: Annotated[Int, Field(ge=1, le=1000)] = 5
    """Connect failures, resets, timeouts and 5xx in a row that eject an endpoint."""
    ejection: Duration = 30.0
    """First ejection; the n-th lasts n times as long, up to max_ejection
    (agent/common/outlier.py)."""
    max_ejection: Duration = 300.0


class HealthCheck(Model):
    active: ActiveCheck | None = None
    passive: PassiveCheck = PassiveCheck()


class HashOn(Model):
    header: LowerBytes | None = None
    cookie: OptionalStr = None

    @model_validator(mode="after")
    def _one(self) -> HashOn:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("hash on exactly one of header or cookie")
        return self


class HashBalancer(Model):
    hash: HashOn


LB_POLICIES = ("round-robin", "least-request")


def _balancer(value: Any) -> Any:
    if isinstance(value, dict):
        return HashBalancer.model_validate(value, by_name=False)  # (errors keep their place)
    if value not in LB_POLICIES:
        raise ValueError(
            f"{value!r} is not round-robin, least-request or {{hash: {{header|cookie: NAME}}}}"
        )
    return value


class BackendSpec(Model):
    name: Name
    endpoints: tuple[Annotated[EndpointSpec, BeforeValidator(_url)], ...] = ()
    service: ServiceRef | None = None
    """The Service this backend's endpoints come from (resolved by the master, see
    gatewayapi.py); its enrolled pods' endpoints carry their SPIFFE IDs."""
    balancer: Annotated[Str | HashBalancer, BeforeValidator(_balancer)] = Field(
        default="round-robin", alias="loadBalancer"
    )
    connect_timeout: Duration = 5.0
    health_check: HealthCheck = HealthCheck()

    @model_validator(mode="after")
    def _some_endpoint(self) -> BackendSpec:
        if not self.endpoints and self.service is None:
            raise invalid("a backend needs endpoints or a service", "endpoints")
        return self

    @property
    def load_balancer(self) -> str:
        """round-robin, least-request or hash."""
        return "hash" if isinstance(self.balancer, HashBalancer) else self.balancer

    @property
    def hash_header(self) -> bytes | None:
        return self.balancer.hash.header if isinstance(self.balancer, HashBalancer) else None

    @property
    def hash_cookie(self) -> str | None:
        return self.balancer.hash.cookie if isinstance(self.balancer, HashBalancer) else None

    @property
    def active(self) -> ActiveCheck | None:
        return self.health_check.active

    @property
    def passive(self) -> PassiveCheck:
        return self.health_check.passive
