"""The gateway's configuration: typed, validated, with every error naming its field.

`parse_config(body)` turns the YAML of `slipstream gateway -c FILE` into a
`GatewayConfig`, raising `FieldError` with the field's path; `load_config`
adds the file and line. Gateway API objects (Gateway, HTTPRoute) are turned
into the same routes and backends by `gatewayapi.py`, so the rest of the
gateway sees one model. Plugins parse their own `config` (see plugins/).

Shape (names as in the Gateway API where it has them):

    admin: {address: 127.0.0.1:9901}
    workers: 2
    listeners: [{name, address: 0.0.0.0:8080, tls: {certificates: [{hosts, cert, key}]},
                 limits: {maxBody, maxHeaderBytes, maxHeaders, maxUri, headerTimeout, idleTimeout},
                 http: {mergeSlashes: true, escapedSlashes: reject | keep | decode,
                        pathParameters: reject | strip | keep,
                        headersWithUnderscores: drop | reject | allow}}]
    backends: [{name, endpoints: [URL | {url, weight, identity}] | service: {namespace, name,
                port}, loadBalancer: round-robin |
                least-request | {hash: {header: NAME} | {cookie: NAME}}, connectTimeout,
                healthCheck: {active: {...}, passive: {...}}}]
    consumers: [{name, groups, apiKeys, jwtSubjects, plugins}]
    plugins: [{name, config}]                      # global scope
    routes: [{name, hostnames, matches: [{path: {type, value}, method, headers, queryParams}],
              filters: [...], backendRefs: [{name, weight}], timeouts: {request, backendRequest},
              retry: {attempts, on, methods}, upgrades: [websocket], plugins: [...]}]
    accessLog: {format: json | text}
    requestId: {header: x-request-id, trustIncoming: true}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from agent.common.errors import FieldError, ManifestError
from agent.common.manifest import load_file
from agent.identity.certs import IdentityError, SpiffeId
from agent.state.fields import (
    address,
    boolean,
    duration,
    integer,
    known_fields,
    listing,
    mapping,
    need,
    opt,
    size,
    string,
    strings,
)

from ..errors import ConfigError
from ..http.head import UNDERSCORE_ACTIONS, HeadRules
from ..http.server import Limits
from ..http.upstream import UpstreamEndpoint
from ..http.uri import ESCAPED_SLASHES, PATH_PARAMETERS, PathRules
from ..plugins import PARSERS, SCOPES
from ..plugins.base import Consumer, PluginSpec

# ---------------------------------------------------------------- readers
# (the generic ones, of every manifest and configuration: agent/state/fields.py)


def entries(obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The mappings of a list field, each with its path."""
    out = []
    for i, item in enumerate(listing(obj, key, path)):
        where = f"{path}.{key}[{i}]" if path else f"{key}[{i}]"
        need(isinstance(item, dict), where, "must be a mapping")
        out.append((where, item))
    return out


def unique_names(items: list[tuple[str, Mapping[str, Any]]], what: str) -> None:
    seen: dict[str, str] = {}
    for where, item in items:
        name = item.get("name")
        if isinstance(name, str) and name in seen:
            raise FieldError(f"{where}.name", f"{what} {name!r} is defined twice")
        if isinstance(name, str):
            seen[name] = where


NAME = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,62}[a-z0-9])?$")


def name_of(item: Mapping[str, Any], where: str) -> str:
    n = string(item, "name", where, required=True)
    need(bool(NAME.match(n)), f"{where}.name", f"{n!r} is not a name (a-z, 0-9, '-', '.', '_')")
    return n


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class TlsCertificate:
    hosts: tuple[str, ...]
    """Exact names or `*.example.com`; the first certificate is the default."""
    cert: str
    key: str


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    host: str
    port: int
    tls: tuple[TlsCertificate, ...] = ()
    limits: Limits = field(default_factory=Limits)
    rules: HeadRules = field(default_factory=HeadRules)
    """How request targets and heads are normalized (see gateway/http/head.py, uri.py)."""


@dataclass(frozen=True)
class ActiveCheck:
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    statuses: tuple[tuple[int, int], ...] = ((200, 399),)


@dataclass(frozen=True)
class PassiveCheck:
    consecutive_failures: int = 5
    """Connect failures, resets, timeouts and 5xx in a row that eject an endpoint."""
    ejection: float = 30.0
    """First ejection; the n-th lasts n times as long, up to max_ejection
    (agent/common/outlier.py)."""
    max_ejection: float = 300.0


@dataclass(frozen=True)
class EndpointSpec:
    endpoint: UpstreamEndpoint
    weight: int = 1


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    port: int


@dataclass(frozen=True)
class BackendSpec:
    name: str
    endpoints: tuple[EndpointSpec, ...]
    load_balancer: str = "round-robin"
    hash_header: bytes | None = None
    hash_cookie: str | None = None
    connect_timeout: float = 5.0
    active: ActiveCheck | None = None
    passive: PassiveCheck = PassiveCheck()
    service: ServiceRef | None = None
    """The Service this backend's endpoints come from (resolved by the master, see
    gatewayapi.py); its enrolled pods' endpoints carry their SPIFFE IDs."""


PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")


@dataclass(frozen=True)
class PathMatch:
    type: str = "PathPrefix"
    value: str = "/"
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True)
class ValueMatch:
    """A header (name lower-case) or query parameter to match."""

    name: str
    value: str
    type: str = "Exact"
    regex: re.Pattern[str] | None = None

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(actual) is not None
        return actual == self.value


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch = PathMatch()
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[tuple[bytes, bytes], ...] = ()
    add: tuple[tuple[bytes, bytes], ...] = ()
    remove: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class PathModifier:
    type: str
    """ReplaceFullPath or ReplacePrefixMatch."""
    value: str


@dataclass(frozen=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathModifier | None = None
    status: int = 302


@dataclass(frozen=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True)
class Filters:
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


@dataclass(frozen=True)
class BackendRef:
    name: str
    weight: int = 1


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True)
class Retry:
    attempts: int = 2
    """Tries in all, the first included. Without a retry block: 2, on connect failure only
    (nothing reached the upstream, so it is always safe)."""
    on_connect_failure: bool = True
    statuses: frozenset[int] = frozenset()
    methods: frozenset[str] = IDEMPOTENT
    """Requests that may be sent twice. A connect failure is retried for any method: nothing
    reached the upstream."""


@dataclass(frozen=True)
class RouteSpec:
    name: str
    hostnames: tuple[str, ...] = ()
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    filters: Filters = Filters()
    backends: tuple[BackendRef, ...] = ()
    request_timeout: float = 30.0
    backend_timeout: float = 15.0
    retry: Retry = Retry()
    plugins: tuple[PluginSpec, ...] = ()
    order: int = 0
    """Position among all routes: breaks precedence ties (older first, as in Gateway API)."""
    upgrades: frozenset[str] = frozenset({"websocket"})
    """Protocols a request may switch to on this route; any other Upgrade is not forwarded
    (the request is answered as plain HTTP and its connection closed)."""


@dataclass(frozen=True)
class GatewayConfig:
    listeners: tuple[ListenerSpec, ...]
    backends: Mapping[str, BackendSpec]
    routes: tuple[RouteSpec, ...]
    consumers: tuple[Consumer, ...] = ()
    plugins: tuple[PluginSpec, ...] = ()
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    workers: int = 1
    access_log: str = "json"
    request_id_header: bytes = b"x-request-id"
    trust_request_id: bool = True
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The configuration as written, for /config."""


# ---------------------------------------------------------------- parsing


def parse_config(body: Any) -> GatewayConfig:
    need(isinstance(body, dict), "", "the configuration must be a mapping")
    known_fields(
        body,
        {
            "admin",
            "workers",
            "listeners",
            "backends",
            "routes",
            "consumers",
            "plugins",
            "accessLog",
            "requestId",
        },
        "",
    )
    admin = mapping(body, "admin", "")
    known_fields(admin, {"address"}, "admin")
    listeners = entries(body, "listeners", "")
    need(bool(listeners), "listeners", "at least one listener is needed")
    unique_names(listeners, "listener")
    backends_raw = entries(body, "backends", "")
    unique_names(backends_raw, "backend")
    backends = {b.name: b for b in (_backend(item, where) for where, item in backends_raw)}
    routes_raw = entries(body, "routes", "")
    unique_names(routes_raw, "route")
    routes = tuple(_route(item, where, i, backends) for i, (where, item) in enumerate(routes_raw))
    consumers_raw = entries(body, "consumers", "")
    unique_names(consumers_raw, "consumer")
    consumers = tuple(_consumer(item, where) for where, item in consumers_raw)
    _unique_keys(consumers)
    access = mapping(body, "accessLog", "")
    known_fields(access, {"format"}, "accessLog")
    fmt = string(access, "format", "accessLog", default="json")
    need(fmt in ("json", "text", "off"), "accessLog.format", f"{fmt!r} is not json, text or off")
    rid = mapping(body, "requestId", "")
    known_fields(rid, {"header", "trustIncoming"}, "requestId")
    config = GatewayConfig(
        listeners=tuple(_listener(item, where) for where, item in listeners),
        backends=backends,
        routes=routes,
        consumers=consumers,
        plugins=_plugins(body, "plugins", "", scope="global"),
        admin=opt(
            admin, "address", "admin", lambda v, w: address(v, w, "127.0.0.1"), ("127.0.0.1", 9901)
        ),
        workers=opt(body, "workers", "", lambda v, w: integer(v, w, 1, 64), 1),
        access_log=fmt,
        request_id_header=string(rid, "header", "requestId", default="x-request-id")
        .lower()
        .encode(),
        trust_request_id=opt(rid, "trustIncoming", "requestId", boolean, True),
        raw=body,
    )
    _check_listeners(config.listeners)
    return config


def _check_listeners(listeners: tuple[ListenerSpec, ...]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for i, li in enumerate(listeners):
        if (li.host, li.port) in seen:
            raise FieldError(
                f"listeners[{i}].address",
                f"{li.host}:{li.port} is already used by listener {seen[(li.host, li.port)]!r}",
            )
        seen[(li.host, li.port)] = li.name


def _listener(item: Mapping[str, Any], where: str) -> ListenerSpec:
    known_fields(item, {"name", "address", "tls", "limits", "http"}, where)
    host, port = address(item.get("address", 8080), f"{where}.address")
    tls = mapping(item, "tls", where)
    known_fields(tls, {"certificates"}, f"{where}.tls")
    rules = _head_rules(mapping(item, "http", where), f"{where}.http")
    certs = []
    for cwhere, c in entries(tls, "certificates", f"{where}.tls"):
        known_fields(c, {"hosts", "cert", "key"}, cwhere)
        hosts = strings(c, "hosts", cwhere)
        for j, h in enumerate(hosts):
            need(_valid_hostname(h), f"{cwhere}.hosts[{j}]", f"{h!r} is not a host name")
        certs.append(
            TlsCertificate(
                hosts,
                string(c, "cert", cwhere, required=True),
                string(c, "key", cwhere, required=True),
            )
        )
    need(not tls or bool(certs), f"{where}.tls.certificates", "TLS needs a certificate")
    lim = mapping(item, "limits", where)
    lw = f"{where}.limits"
    known_fields(
        lim,
        {"maxBody", "maxHeaderBytes", "maxHeaders", "maxUri", "headerTimeout", "idleTimeout"},
        lw,
    )
    d = Limits()
    limits = Limits(
        max_uri=opt(lim, "maxUri", lw, size, d.max_uri),
        max_header_bytes=opt(lim, "maxHeaderBytes", lw, size, d.max_header_bytes),
        max_headers=opt(
            lim, "maxHeaders", lw, lambda v, w: integer(v, w, 1, 10_000), d.max_headers
        ),
        max_body=opt(lim, "maxBody", lw, size, d.max_body),
        header_timeout=opt(lim, "headerTimeout", lw, duration, d.header_timeout),
        idle_timeout=opt(lim, "idleTimeout", lw, duration, d.idle_timeout),
    )
    return ListenerSpec(name_of(item, where), host, port, tuple(certs), limits, rules)


def _head_rules(obj: Mapping[str, Any], where: str) -> HeadRules:
    known_fields(
        obj, {"mergeSlashes", "escapedSlashes", "pathParameters", "headersWithUnderscores"}, where
    )
    escaped = string(obj, "escapedSlashes", where, default="reject")
    need(
        escaped in ESCAPED_SLASHES,
        f"{where}.escapedSlashes",
        f"{escaped!r} is not one of {', '.join(ESCAPED_SLASHES)}",
    )
    params = string(obj, "pathParameters", where, default="reject")
    need(
        params in PATH_PARAMETERS,
        f"{where}.pathParameters",
        f"{params!r} is not one of {', '.join(PATH_PARAMETERS)}",
    )
    underscores = string(obj, "headersWithUnderscores", where, default="drop")
    need(
        underscores in UNDERSCORE_ACTIONS,
        f"{where}.headersWithUnderscores",
        f"{underscores!r} is not one of {', '.join(UNDERSCORE_ACTIONS)}",
    )
    return HeadRules(
        PathRules(opt(obj, "mergeSlashes", where, boolean, True), escaped, params), underscores
    )


_HOSTNAME = re.compile(
    r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)


def _valid_hostname(h: str) -> bool:
    return bool(_HOSTNAME.match(h)) and len(h) <= 253


def parse_endpoint(url: str, where: str) -> UpstreamEndpoint:
    parts = urlsplit(url)
    need(parts.scheme in ("http", "https"), where, f"{url!r}: the scheme must be http or https")
    need(bool(parts.hostname), where, f"{url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FieldError(where, f"{url!r} has an invalid port") from exc
    need(parts.path in ("", "/") and not parts.query, where, f"{url!r}: no path or query here")
    return UpstreamEndpoint(parts.hostname or "", port, tls=parts.scheme == "https")


LB_POLICIES = ("round-robin", "least-request", "hash")


def _backend(item: Mapping[str, Any], where: str) -> BackendSpec:
    known_fields(
        item,
        {"name", "endpoints", "service", "loadBalancer", "connectTimeout", "healthCheck"},
        where,
    )
    eps = []
    for i, e in enumerate(listing(item, "endpoints", where)):
        ew = f"{where}.endpoints[{i}]"
        if isinstance(e, str):
            eps.append(EndpointSpec(parse_endpoint(e, ew)))
            continue
        need(isinstance(e, dict), ew, "must be a URL or {url, weight, identity}")
        known_fields(e, {"url", "weight", "identity"}, ew)
        endpoint = parse_endpoint(string(e, "url", ew, required=True), f"{ew}.url")
        identity = string(e, "identity", ew) or None
        if identity is not None:
            try:
                SpiffeId.parse(identity)
            except IdentityError as exc:
                raise FieldError(f"{ew}.identity", str(exc)) from exc
            need(not endpoint.tls, f"{ew}.url", "a mesh endpoint is http:// (HBONE encrypts it)")
            endpoint = replace(endpoint, identity=identity)
        eps.append(
            EndpointSpec(endpoint, opt(e, "weight", ew, lambda v, w: integer(v, w, 1, 1000), 1))
        )
    service = _service_ref(mapping(item, "service", where), f"{where}.service")
    need(
        bool(eps) or service is not None,
        f"{where}.endpoints",
        "a backend needs endpoints or a service",
    )
    lb = item.get("loadBalancer", "round-robin")
    hash_header: bytes | None = None
    hash_cookie: str | None = None
    lw = f"{where}.loadBalancer"
    if isinstance(lb, dict):
        known_fields(lb, {"hash"}, lw)
        h = mapping(lb, "hash", lw)
        known_fields(h, {"header", "cookie"}, f"{lw}.hash")
        need(len(h) == 1, f"{lw}.hash", "hash on exactly one of header or cookie")
        if "header" in h:
            hash_header = string(h, "header", f"{lw}.hash", required=True).lower().encode()
        else:
            hash_cookie = string(h, "cookie", f"{lw}.hash", required=True)
        lb = "hash"
    need(
        lb in LB_POLICIES,
        lw,
        f"{lb!r} is not round-robin, least-request or {{hash: {{header|cookie: NAME}}}}",
    )
    hc = mapping(item, "healthCheck", where)
    hw = f"{where}.healthCheck"
    known_fields(hc, {"active", "passive"}, hw)
    return BackendSpec(
        name=name_of(item, where),
        endpoints=tuple(eps),
        load_balancer=str(lb),
        hash_header=hash_header,
        hash_cookie=hash_cookie,
        connect_timeout=opt(item, "connectTimeout", where, duration, 5.0),
        active=_active(mapping(hc, "active", hw), f"{hw}.active") if "active" in hc else None,
        passive=_passive(mapping(hc, "passive", hw), f"{hw}.passive"),
        service=service,
    )


def _service_ref(obj: Mapping[str, Any], where: str) -> ServiceRef | None:
    if not obj:
        return None
    known_fields(obj, {"namespace", "name", "port"}, where)
    need("port" in obj, f"{where}.port", "is required")
    return ServiceRef(
        namespace=string(obj, "namespace", where, default="default"),
        name=string(obj, "name", where, required=True),
        port=integer(obj["port"], f"{where}.port", 1, 65535),
    )


def _active(a: Mapping[str, Any], where: str) -> ActiveCheck:
    known_fields(
        a,
        {"path", "interval", "timeout", "healthyThreshold", "unhealthyThreshold", "statuses"},
        where,
    )
    d = ActiveCheck()
    path = string(a, "path", where, default=d.path)
    need(path.startswith("/"), f"{where}.path", "must start with /")
    statuses = []
    for i, s in enumerate(strings(a, "statuses", where)):
        m = re.fullmatch(r"([1-5]\d\d)(?:-([1-5]\d\d))?", s)
        need(m is not None, f"{where}.statuses[{i}]", f"{s!r} is not a status or range (200-299)")
        assert m is not None
        statuses.append((int(m.group(1)), int(m.group(2) or m.group(1))))
    return ActiveCheck(
        path=path,
        interval=opt(a, "interval", where, duration, d.interval),
        timeout=opt(a, "timeout", where, duration, d.timeout),
        healthy_threshold=opt(a, "healthyThreshold", where, lambda v, w: integer(v, w, 1, 100), 2),
        unhealthy_threshold=opt(
            a, "unhealthyThreshold", where, lambda v, w: integer(v, w, 1, 100), 2
        ),
        statuses=tuple(statuses) or d.statuses,
    )


def _passive(p: Mapping[str, Any], where: str) -> PassiveCheck:
    known_fields(p, {"consecutiveFailures", "ejection", "maxEjection"}, where)
    d = PassiveCheck()
    return PassiveCheck(
        consecutive_failures=opt(
            p,
            "consecutiveFailures",
            where,
            lambda v, w: integer(v, w, 1, 1000),
            d.consecutive_failures,
        ),
        ejection=opt(p, "ejection", where, duration, d.ejection),
        max_ejection=opt(p, "maxEjection", where, duration, d.max_ejection),
    )


def _regex(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise FieldError(where, f"{value!r} is not a valid regular expression: {exc}") from exc


def _match(item: Mapping[str, Any], where: str) -> RouteMatch:
    known_fields(item, {"path", "method", "headers", "queryParams"}, where)
    p = mapping(item, "path", where)
    known_fields(p, {"type", "value"}, f"{where}.path")
    ptype = string(p, "type", f"{where}.path", default="PathPrefix")
    need(
        ptype in PATH_TYPES,
        f"{where}.path.type",
        f"{ptype!r} is not one of {', '.join(PATH_TYPES)}",
    )
    pvalue = string(p, "value", f"{where}.path", default="/")
    if ptype != "RegularExpression":
        need(pvalue.startswith("/"), f"{where}.path.value", f"{pvalue!r} must start with /")
    path = PathMatch(
        ptype,
        pvalue,
        _regex(pvalue, f"{where}.path.value") if ptype == "RegularExpression" else None,
    )
    method = item.get("method")
    if method is not None:
        need(
            isinstance(method, str) and bool(re.fullmatch(r"[A-Z]+", method)),
            f"{where}.method",
            f"{method!r} is not an HTTP method (upper case)",
        )
    return RouteMatch(
        path,
        method,
        _value_matches(item, "headers", where, header=True),
        _value_matches(item, "queryParams", where, header=False),
    )


def _value_matches(
    item: Mapping[str, Any], key: str, where: str, *, header: bool
) -> tuple[ValueMatch, ...]:
    out = []
    for w, m in entries(item, key, where):
        known_fields(m, {"name", "value", "type"}, w)
        name = string(m, "name", w, required=True)
        value = string(m, "value", w, required=True)
        mtype = string(m, "type", w, default="Exact")
        need(mtype in VALUE_TYPES, f"{w}.type", f"{mtype!r} is not Exact or RegularExpression")
        out.append(
            ValueMatch(
                name.lower() if header else name,
                value,
                mtype,
                _regex(value, f"{w}.value") if mtype == "RegularExpression" else None,
            )
        )
    return tuple(out)


def _header_pairs(obj: Mapping[str, Any], key: str, where: str) -> tuple[tuple[bytes, bytes], ...]:
    out = []
    for w, h in entries(obj, key, where):
        known_fields(h, {"name", "value"}, w)
        name = string(h, "name", w, required=True)
        need(
            bool(re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name)),
            f"{w}.name",
            f"{name!r} is not a header name",
        )
        value = string(h, "value", w, required=True)
        need("\r" not in value and "\n" not in value, f"{w}.value", "must be one line")
        out.append((name.lower().encode(), value.encode("latin-1")))
    return tuple(out)


def _header_modifier(obj: Mapping[str, Any], where: str) -> HeaderModifier:
    known_fields(obj, {"set", "add", "remove"}, where)
    return HeaderModifier(
        _header_pairs(obj, "set", where),
        _header_pairs(obj, "add", where),
        tuple(n.lower().encode() for n in strings(obj, "remove", where)),
    )


def _path_modifier(obj: Mapping[str, Any], where: str) -> PathModifier | None:
    if not obj:
        return None
    known_fields(obj, {"type", "replaceFullPath", "replacePrefixMatch"}, where)
    ptype = string(obj, "type", where, required=True)
    need(
        ptype in ("ReplaceFullPath", "ReplacePrefixMatch"),
        f"{where}.type",
        f"{ptype!r} is not ReplaceFullPath or ReplacePrefixMatch",
    )
    key = "replaceFullPath" if ptype == "ReplaceFullPath" else "replacePrefixMatch"
    value = string(obj, key, where, required=True)
    need(value.startswith("/"), f"{where}.{key}", "must start with /")
    return PathModifier(ptype, value)


FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")


def _filters(route: Mapping[str, Any], where: str, matches: tuple[RouteMatch, ...]) -> Filters:
    found: dict[str, Any] = {}
    for w, f in entries(route, "filters", where):
        ftype = string(f, "type", w, required=True)
        need(
            ftype in FILTER_TYPES, f"{w}.type", f"{ftype!r} is not one of {', '.join(FILTER_TYPES)}"
        )
        key = ftype[0].lower() + ftype[1:] if ftype != "URLRewrite" else "urlRewrite"
        known_fields(f, {"type", key}, w)
        need(ftype not in found, f"{w}.type", f"{ftype} is given twice")
        body = mapping(f, key, w)
        kw = f"{w}.{key}"
        if ftype in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            found[ftype] = _header_modifier(body, kw)
        elif ftype == "RequestRedirect":
            known_fields(body, {"scheme", "hostname", "port", "path", "statusCode"}, kw)
            scheme = string(body, "scheme", kw) or None
            need(scheme in (None, "http", "https"), f"{kw}.scheme", "must be http or https")
            status = opt(body, "statusCode", kw, lambda v, w2: integer(v, w2, 301, 308), 302)
            need(
                status in (301, 302, 303, 307, 308),
                f"{kw}.statusCode",
                f"{status} is not a redirect status",
            )
            found[ftype] = Redirect(
                scheme=scheme,
                hostname=string(body, "hostname", kw) or None,
                port=opt(body, "port", kw, lambda v, w2: integer(v, w2, 1, 65535), None),
                path=_path_modifier(mapping(body, "path", kw), f"{kw}.path"),
                status=status,
            )
        else:
            known_fields(body, {"hostname", "path"}, kw)
            found[ftype] = Rewrite(
                hostname=string(body, "hostname", kw) or None,
                path=_path_modifier(mapping(body, "path", kw), f"{kw}.path"),
            )
        for mod in (found.get("RequestRedirect"), found.get("URLRewrite")):
            path = getattr(mod, "path", None)
            if path is not None and path.type == "ReplacePrefixMatch":
                need(
                    all(m.path.type == "PathPrefix" for m in matches),
                    f"{kw}.path",
                    "ReplacePrefixMatch needs every match of the route to be a PathPrefix",
                )
    need(
        not ("RequestRedirect" in found and "URLRewrite" in found),
        f"{where}.filters",
        "RequestRedirect and URLRewrite cannot be used together",
    )
    return Filters(
        found.get("RequestHeaderModifier"),
        found.get("ResponseHeaderModifier"),
        found.get("RequestRedirect"),
        found.get("URLRewrite"),
    )


RETRY_ON = ("connect-failure", "reset", "timeout")


def _retry(obj: Mapping[str, Any], where: str) -> Retry:
    if not obj:
        return Retry()
    known_fields(obj, {"attempts", "on", "methods"}, where)
    statuses = set()
    on_connect = False
    for i, v in enumerate(listing(obj, "on", where)):
        w = f"{where}.on[{i}]"
        if v == "connect-failure":
            on_connect = True
        elif (isinstance(v, int) and 500 <= v <= 599) or (
            isinstance(v, str) and v.isdigit() and 500 <= int(v) <= 599
        ):
            statuses.add(int(v))
        else:
            need(False, w, f"{v!r} is not connect-failure or a 5xx status")
    methods = strings(obj, "methods", where)
    return Retry(
        attempts=opt(obj, "attempts", where, lambda v, w: integer(v, w, 1, 10), 2),
        on_connect_failure=on_connect if "on" in obj else True,
        statuses=frozenset(statuses) if "on" in obj else frozenset({502, 503, 504}),
        methods=frozenset(m.upper() for m in methods) if methods else IDEMPOTENT,
    )


def _route(
    item: Mapping[str, Any], where: str, order: int, backends: Mapping[str, BackendSpec]
) -> RouteSpec:
    known_fields(
        item,
        {
            "name",
            "hostnames",
            "matches",
            "filters",
            "backendRefs",
            "timeouts",
            "retry",
            "plugins",
            "upgrades",
        },
        where,
    )
    hostnames = strings(item, "hostnames", where)
    upgrades = strings(item, "upgrades", where) if "upgrades" in item else ("websocket",)
    for i, u in enumerate(upgrades):
        need(
            u.lower() == "websocket",
            f"{where}.upgrades[{i}]",
            f"{u!r} cannot be passed through (only websocket)",
        )
    for i, h in enumerate(hostnames):
        need(_valid_hostname(h.lower()), f"{where}.hostnames[{i}]", f"{h!r} is not a host name")
    matches = tuple(_match(m, w) for w, m in entries(item, "matches", where)) or (RouteMatch(),)
    filters = _filters(item, where, matches)
    refs = []
    for w, r in entries(item, "backendRefs", where):
        known_fields(r, {"name", "weight"}, w)
        name = string(r, "name", w, required=True)
        need(name in backends, f"{w}.name", f"no backend named {name!r}")
        refs.append(
            BackendRef(name, opt(r, "weight", w, lambda v, w2: integer(v, w2, 0, 1_000_000), 1))
        )
    need(
        bool(refs) or filters.redirect is not None,
        f"{where}.backendRefs",
        "a route needs backendRefs (or a RequestRedirect filter)",
    )
    need(
        not refs or any(r.weight for r in refs),
        f"{where}.backendRefs",
        "at least one backendRef needs a weight above 0",
    )
    t = mapping(item, "timeouts", where)
    known_fields(t, {"request", "backendRequest"}, f"{where}.timeouts")
    request_timeout = opt(t, "request", f"{where}.timeouts", duration, 30.0)
    backend_timeout = opt(
        t, "backendRequest", f"{where}.timeouts", duration, min(15.0, request_timeout)
    )
    need(
        backend_timeout <= request_timeout,
        f"{where}.timeouts.backendRequest",
        "must not be longer than timeouts.request",
    )
    return RouteSpec(
        name=name_of(item, where),
        hostnames=tuple(h.lower() for h in hostnames),
        matches=matches,
        filters=filters,
        backends=tuple(refs),
        request_timeout=request_timeout,
        backend_timeout=backend_timeout,
        retry=_retry(mapping(item, "retry", where), f"{where}.retry"),
        plugins=_plugins(item, "plugins", where, scope="route"),
        order=order,
        upgrades=frozenset(u.lower() for u in upgrades),
    )


def _consumer(item: Mapping[str, Any], where: str) -> Consumer:
    known_fields(item, {"name", "groups", "apiKeys", "jwtSubjects", "plugins"}, where)
    keys = strings(item, "apiKeys", where)
    for i, k in enumerate(keys):
        need(len(k) >= 8, f"{where}.apiKeys[{i}]", "an API key needs at least 8 characters")
    return Consumer(
        name=name_of(item, where),
        groups=frozenset(strings(item, "groups", where)),
        api_keys=keys,
        jwt_subjects=strings(item, "jwtSubjects", where),
        plugins=_plugins(item, "plugins", where, scope="consumer"),
    )


def _unique_keys(consumers: tuple[Consumer, ...]) -> None:
    owner: dict[str, str] = {}
    for i, c in enumerate(consumers):
        for j, k in enumerate(c.api_keys):
            if k in owner:
                raise FieldError(
                    f"consumers[{i}].apiKeys[{j}]", f"this key also belongs to {owner[k]!r}"
                )
            owner[k] = c.name


def _plugins(obj: Mapping[str, Any], key: str, path: str, *, scope: str) -> tuple[PluginSpec, ...]:
    out = []
    seen = set()
    for w, p in entries(obj, key, path):
        known_fields(p, {"name", "config"}, w)
        name = string(p, "name", w, required=True)
        need(
            name in PARSERS,
            f"{w}.name",
            f"unknown plugin {name!r} (known: {', '.join(sorted(PARSERS))})",
        )
        need(scope in SCOPES[name], f"{w}.name", f"{name} cannot be set per {scope}")
        need(name not in seen, f"{w}.name", f"{name} is configured twice here")
        seen.add(name)
        cfg = p.get("config") or {}
        need(isinstance(cfg, dict), f"{w}.config", "must be a mapping")
        out.append(PluginSpec(name, PARSERS[name](cfg, f"{w}.config"), w))
    return tuple(out)


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
