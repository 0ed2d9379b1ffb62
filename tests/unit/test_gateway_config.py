"""The gateway's configuration (gateway/config, gateway/plugins/models.py): every error branch
names the field as written, and a file's error names its file and line.

Each row changes one field of a good configuration and says which field the error must
name and what it must say: every validator, every unit, every reference across objects.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.common.errors import FieldError
from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from gateway.plugins import jwt as jwt_plugin
from gateway.plugins.models import JWT_ALGORITHMS, KeyAuthConfig

GOOD: dict[str, Any] = {
    "admin": {"address": "127.0.0.1:9901"},
    "workers": 1,
    "listeners": [
        {"name": "web", "address": "127.0.0.1:8080"},
        {"name": "tls", "address": 8443,
         "tls": {"certificates": [{"hosts": ["a.test"], "cert": "a.pem", "key": "a.key"}]}},
    ],
    "backends": [
        {"name": "b", "endpoints": ["http://127.0.0.1:9001",
                                    {"url": "http://127.0.0.1:9002", "weight": 2}]},
        {"name": "svc", "service": {"namespace": "shop", "name": "web", "port": 80}},
    ],
    "consumers": [{"name": "alice", "apiKeys": ["alice-key-1"], "groups": ["staff"]},
                  {"name": "bob", "apiKeys": ["bob-key-12"]}],
    "plugins": [{"name": "key-auth", "config": {}}],
    "routes": [
        {"name": "api", "hostnames": ["api.test"],
         "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
         "backendRefs": [{"name": "b"}]},
        {"name": "other", "backendRefs": [{"name": "b"}]},
    ],
    "accessLog": {"format": "json"},
    "requestId": {"header": "x-request-id", "trustIncoming": True},
}  # fmt: skip

L0, B0, R0, C0 = ("listeners", 0), ("backends", 0), ("routes", 0), ("consumers", 0)
P0 = ("plugins", 0)


def _with(body: Any, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def plugin(name: str, config: Any) -> list[dict[str, Any]]:
    return [{"name": name, "config": config}]


def route(**fields: Any) -> dict[str, Any]:
    return {"name": "api", "backendRefs": [{"name": "b"}], **fields}


def redirect_route(filters: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"name": "api", "filters": filters, **fields}


CASES = [
    # ------------------------------------------------------------ top level
    ((), "just text", "", "the configuration must be a mapping"),
    (("listenerz",), [], "listenerz", "unknown field"),
    (("listeners",), [], "listeners", "at least one listener is needed"),
    (("workers",), 0, "workers", "0: must be greater than or equal to 1"),
    (("workers",), 65, "workers", "65: must be less than or equal to 64"),
    (("workers",), "2", "workers", "'2': must be a valid integer"),
    (("admin", "address"), "127.0.0.1:http", "admin.address", "no valid port"),
    (("admin", "port"), 9901, "admin.port", "unknown field"),
    (("accessLog", "format"), "xml", "accessLog.format", "'xml' is not json, text or off"),
    (("requestId", "trustIncoming"), "yes", "requestId.trustIncoming", "must be a valid boolean"),
    (("requestId", "header"), 5, "requestId.header", "must be a string"),
    # ------------------------------------------------------------ listeners
    (("listeners", 1, "name"), "web", "listeners[1].name", "listener 'web' is defined twice"),
    (("listeners", 1, "address"), "127.0.0.1:8080", "listeners[1].address",
     "127.0.0.1:8080 is already used by listener 'web'"),
    ((*L0, "name"), "Web!", "listeners[0].name", "'Web!' is not a name"),
    ((*L0, "name"), None, "listeners[0].name", "is required"),
    ((*L0, "address"), "127.0.0.1:80800", "listeners[0].address", "no valid port"),
    (("listeners", 1, "tls", "certificates"), [], "listeners[1].tls.certificates",
     "TLS needs a certificate"),
    (("listeners", 1, "tls"), {}, "listeners[1].tls.certificates", "TLS needs a certificate"),
    (("listeners", 1, "tls", "certificates", 0, "hosts"), ["a.test", "bad host"],
     "listeners[1].tls.certificates[0].hosts[1]", "'bad host' is not a host name"),
    (("listeners", 1, "tls", "certificates", 0), {"cert": "a.pem"},
     "listeners[1].tls.certificates[0].key", "is required"),
    ((*L0, "limits"), {"maxBody": "big"}, "listeners[0].limits.maxBody", "'big' is not a size"),
    ((*L0, "limits"), {"maxUri": -1}, "listeners[0].limits.maxUri", "must not be negative"),
    ((*L0, "limits"), {"maxHeaderBytes": "1 parsec"}, "listeners[0].limits.maxHeaderBytes",
     "is not a size"),
    ((*L0, "limits"), {"maxHeaders": 0}, "listeners[0].limits.maxHeaders",
     "must be greater than or equal to 1"),
    ((*L0, "limits"), {"headerTimeout": "soon"}, "listeners[0].limits.headerTimeout",
     "'soon' is not a duration"),
    ((*L0, "limits"), {"idleTimeout": -5}, "listeners[0].limits.idleTimeout",
     "must not be negative"),
    ((*L0, "limits"), {"bodyTimeout": "5s"}, "listeners[0].limits.bodyTimeout", "unknown field"),
    ((*L0, "http"), {"mergeSlashes": "yes"}, "listeners[0].http.mergeSlashes",
     "must be a valid boolean"),
    ((*L0, "http"), {"escapedSlashes": "ignore"}, "listeners[0].http.escapedSlashes",
     "'ignore' is not one of"),
    ((*L0, "http"), {"pathParameters": "drop"}, "listeners[0].http.pathParameters",
     "'drop' is not one of"),
    ((*L0, "http"), {"headersWithUnderscores": "keep"},
     "listeners[0].http.headersWithUnderscores", "'keep' is not one of"),
    # ------------------------------------------------------------ backends
    (("backends",), {"b": {"endpoints": ["http://x"]}}, "backends", "must be a list, not mapping"),
    (("backends", 1, "name"), "b", "backends[1].name", "backend 'b' is defined twice"),
    ((*B0, "name"), "B", "backends[0].name", "'B' is not a name"),
    ((*B0, "endpoints"), [], "backends[0].endpoints", "a backend needs endpoints or a service"),
    ((*B0, "endpoints"), ["ftp://x"], "backends[0].endpoints[0]",
     "the scheme must be http or https"),
    ((*B0, "endpoints"), ["http://"], "backends[0].endpoints[0]", "has no host"),
    ((*B0, "endpoints"), ["http://x:99999"], "backends[0].endpoints[0]", "has an invalid port"),
    ((*B0, "endpoints"), ["http://x/api"], "backends[0].endpoints[0]", "no path or query here"),
    ((*B0, "endpoints"), [5], "backends[0].endpoints[0]", "must be a mapping, not int"),
    ((*B0, "endpoints"), [{"url": "http://x?q=1"}], "backends[0].endpoints[0].url",
     "no path or query here"),
    ((*B0, "endpoints"), [{"url": "http://x", "weight": 0}], "backends[0].endpoints[0].weight",
     "must be greater than or equal to 1"),
    ((*B0, "endpoints"), [{"url": "http://x", "identity": "alice"}],
     "backends[0].endpoints[0].identity", "alice"),
    ((*B0, "endpoints"), [{"url": "https://x", "identity": "spiffe://td/ns/a/sa/b"}],
     "backends[0].endpoints[0].url", "a mesh endpoint is http://"),
    ((*B0, "endpoints"), [{"weight": 1}], "backends[0].endpoints[0].url", "is required"),
    (("backends", 1, "service"), {"name": "web"}, "backends[1].service.port", "is required"),
    (("backends", 1, "service"), {"name": "web", "port": 70000}, "backends[1].service.port",
     "70000: must be less than or equal to 65535"),
    ((*B0, "loadBalancer"), "random", "backends[0].loadBalancer",
     "'random' is not round-robin, least-request"),
    ((*B0, "loadBalancer"), "hash", "backends[0].loadBalancer", "'hash' is not round-robin"),
    ((*B0, "loadBalancer"), {"hash": {"header": "x", "cookie": "y"}},
     "backends[0].loadBalancer.hash", "hash on exactly one of header or cookie"),
    ((*B0, "loadBalancer"), {"hash": {}}, "backends[0].loadBalancer.hash",
     "hash on exactly one of header or cookie"),
    ((*B0, "loadBalancer"), {"hash": {"query": "q"}}, "backends[0].loadBalancer.hash.query",
     "unknown field"),
    ((*B0, "loadBalancer"), {"ring": {}}, "backends[0].loadBalancer.hash", "is required"),
    ((*B0, "loadBalancer"), {"hash": {"header": "x"}, "ring": {}}, "backends[0].loadBalancer.ring",
     "unknown field"),
    ((*B0, "connectTimeout"), "soon", "backends[0].connectTimeout", "'soon' is not a duration"),
    ((*B0, "healthCheck"), {"active": {"path": "health"}}, "backends[0].healthCheck.active.path",
     "must start with /"),
    ((*B0, "healthCheck"), {"active": {"statuses": ["2xx"]}},
     "backends[0].healthCheck.active.statuses[0]", "'2xx' is not a status or range"),
    ((*B0, "healthCheck"), {"active": {"interval": "often"}},
     "backends[0].healthCheck.active.interval", "is not a duration"),
    ((*B0, "healthCheck"), {"active": {"timeout": "1 fortnight"}},
     "backends[0].healthCheck.active.timeout", "is not a duration"),
    ((*B0, "healthCheck"), {"active": {"healthyThreshold": 0}},
     "backends[0].healthCheck.active.healthyThreshold", "greater than or equal to 1"),
    ((*B0, "healthCheck"), {"active": {"unhealthyThreshold": 101}},
     "backends[0].healthCheck.active.unhealthyThreshold", "less than or equal to 100"),
    ((*B0, "healthCheck"), {"passive": {"consecutiveFailures": 0}},
     "backends[0].healthCheck.passive.consecutiveFailures", "greater than or equal to 1"),
    ((*B0, "healthCheck"), {"passive": {"ejection": "soon"}},
     "backends[0].healthCheck.passive.ejection", "is not a duration"),
    ((*B0, "healthCheck"), {"passive": {"maxEjection": "x"}},
     "backends[0].healthCheck.passive.maxEjection", "is not a duration"),
    ((*B0, "healthCheck"), {"outlier": {}}, "backends[0].healthCheck.outlier", "unknown field"),
    # ------------------------------------------------------------ routes
    (("routes", 1, "name"), "api", "routes[1].name", "route 'api' is defined twice"),
    ((*R0, "name"), "-api", "routes[0].name", "'-api' is not a name"),
    ((*R0, "hostnames"), ["ok.test", "not a host"], "routes[0].hostnames[1]",
     "'not a host' is not a host name"),
    ((*R0, "upgrades"), ["websocket", "h2c"], "routes[0].upgrades[1]",
     "'h2c' cannot be passed through (only websocket)"),
    ((*R0, "matches"), [{"path": {"type": "Prefix"}}], "routes[0].matches[0].path.type",
     "'Prefix' is not one of Exact, PathPrefix, RegularExpression"),
    ((*R0, "matches"), [{"path": {"value": "api"}}], "routes[0].matches[0].path.value",
     "'api' must start with /"),
    ((*R0, "matches"), [{"path": {"type": "RegularExpression", "value": "/("}}],
     "routes[0].matches[0].path.value", "is not a valid regular expression"),
    ((*R0, "matches"), [{"method": "get"}], "routes[0].matches[0].method",
     "'get' is not an HTTP method (upper case)"),
    ((*R0, "matches"), [{"headers": [{"name": "x", "value": "1", "type": "Prefix"}]}],
     "routes[0].matches[0].headers[0].type", "'Prefix' is not Exact or RegularExpression"),
    ((*R0, "matches"), [{"headers": [{"name": "x", "value": "[",
                                      "type": "RegularExpression"}]}],
     "routes[0].matches[0].headers[0].value", "is not a valid regular expression"),
    ((*R0, "matches"), [{"queryParams": [{"value": "1"}]}],
     "routes[0].matches[0].queryParams[0].name", "is required"),
    ((*R0, "matches"), [{"query": []}], "routes[0].matches[0].query", "unknown field"),
    ((*R0, "backendRefs"), [{"name": "missing"}], "routes[0].backendRefs[0].name",
     "no backend named 'missing'"),
    ((*R0, "backendRefs"), [], "routes[0].backendRefs",
     "a route needs backendRefs (or a RequestRedirect filter)"),
    ((*R0, "backendRefs"), [{"name": "b", "weight": 0}], "routes[0].backendRefs",
     "at least one backendRef needs a weight above 0"),
    ((*R0, "backendRefs"), [{"name": "b", "weight": -1}], "routes[0].backendRefs[0].weight",
     "greater than or equal to 0"),
    ((*R0, "timeouts"), {"request": "soon"}, "routes[0].timeouts.request",
     "'soon' is not a duration"),
    ((*R0, "timeouts"), {"request": "5s", "backendRequest": "10s"},
     "routes[0].timeouts.backendRequest", "must not be longer than timeouts.request"),
    ((*R0, "retry"), {"attempts": 11}, "routes[0].retry.attempts", "less than or equal to 10"),
    ((*R0, "retry"), {"on": ["connect-failure", "reset"]}, "routes[0].retry.on[1]",
     "'reset' is not connect-failure or a 5xx status"),
    ((*R0, "retry"), {"on": [404]}, "routes[0].retry.on[0]", "404 is not connect-failure"),
    ((*R0, "retry"), {"methods": [5]}, "routes[0].retry.methods[0]", "must be a string, not int"),
    # filters
    (("routes", 0), route(filters=[{"type": "Mirror"}]), "routes[0].filters[0].type",
     "'Mirror' is not one of RequestHeaderModifier"),
    (("routes", 0), route(filters=[{"type": "RequestHeaderModifier"}] * 2),
     "routes[0].filters[1].type", "RequestHeaderModifier is given twice"),
    (("routes", 0), route(filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier":
                                    {"set": [{"name": "bad name", "value": "v"}]}}]),
     "routes[0].filters[0].requestHeaderModifier.set[0].name", "'bad name' is not a header name"),
    (("routes", 0), route(filters=[{"type": "ResponseHeaderModifier", "responseHeaderModifier":
                                    {"add": [{"name": "x", "value": "a\r\nb: c"}]}}]),
     "routes[0].filters[0].responseHeaderModifier.add[0].value", "must be one line"),
    (("routes", 0), route(filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier":
                                    {"set": [{"name": "x", "value": "\u2603"}]}}]),
     "routes[0].filters[0].requestHeaderModifier.set[0].value", "must be Latin-1"),
    (("routes", 0), route(filters=[{"type": "RequestHeaderModifier",
                                    "requestHeaderModifier": {"remove": [1]}}]),
     "routes[0].filters[0].requestHeaderModifier.remove[0]", "must be a string"),
    (("routes", 0), route(filters=[{"type": "RequestHeaderModifier",
                                    "urlRewrite": {"hostname": "x"}}]),
     "routes[0].filters[0].urlRewrite", "unknown field for a RequestHeaderModifier filter"),
    (("routes", 0), redirect_route([{"type": "RequestRedirect"}, {"type": "URLRewrite"}]),
     "routes[0].filters", "RequestRedirect and URLRewrite cannot be used together"),
    (("routes", 0), redirect_route([{"type": "RequestRedirect",
                                     "requestRedirect": {"scheme": "ftp"}}]),
     "routes[0].filters[0].requestRedirect.scheme", "must be http or https"),
    (("routes", 0), redirect_route([{"type": "RequestRedirect",
                                     "requestRedirect": {"statusCode": 305}}]),
     "routes[0].filters[0].requestRedirect.statusCode", "305 is not a redirect status"),
    (("routes", 0), redirect_route([{"type": "RequestRedirect",
                                     "requestRedirect": {"port": 0}}]),
     "routes[0].filters[0].requestRedirect.port", "greater than or equal to 1"),
    (("routes", 0), redirect_route([{"type": "RequestRedirect",
                                     "requestRedirect": {"path": {"type": "Replace"}}}]),
     "routes[0].filters[0].requestRedirect.path.type",
     "'Replace' is not ReplaceFullPath or ReplacePrefixMatch"),
    (("routes", 0), route(filters=[{"type": "URLRewrite", "urlRewrite":
                                    {"path": {"type": "ReplacePrefixMatch"}}}]),
     "routes[0].filters[0].urlRewrite.path.replacePrefixMatch", "is required"),
    (("routes", 0), route(filters=[{"type": "URLRewrite", "urlRewrite": {"path": {
        "type": "ReplaceFullPath", "replaceFullPath": "v2"}}}]),
     "routes[0].filters[0].urlRewrite.path.replaceFullPath", "must start with /"),
    (("routes", 0), route(matches=[{"path": {"type": "Exact", "value": "/a"}}],
                          filters=[{"type": "URLRewrite", "urlRewrite": {"path": {
                              "type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]),
     "routes[0].filters[0].urlRewrite.path",
     "ReplacePrefixMatch needs every match of the route to be a PathPrefix"),
    # ------------------------------------------------------------ plugins (every scope)
    (("plugins",), plugin("oauth", {}), "plugins[0].name", "unknown plugin 'oauth' (known: "),
    (("plugins",), [{"config": {}}], "plugins[0].name", "is required"),
    (("plugins",), plugin("key-auth", {}) * 2, "plugins[1].name",
     "key-auth is configured twice here"),
    (("plugins",), plugin("key-auth", "on"), "plugins[0].config", "must be a mapping, not string"),
    (("consumers", 0, "plugins"), plugin("cors", {"allowOrigins": ["*"]}),
     "consumers[0].plugins[0].name", "cors cannot be set per consumer"),
    ((*R0, "plugins"), plugin("key-auth", {"hideCredentials": "yes"}),
     "routes[0].plugins[0].config.hideCredentials", "must be a valid boolean"),
    ((*R0, "plugins"), plugin("key-auth", {"header": ["x"]}),
     "routes[0].plugins[0].config.header", "must be a string"),
    (("plugins",), plugin("cors", {}), "plugins[0].config.allowOrigins", "is required"),
    (("plugins",), plugin("cors", {"allowOrigins": []}), "plugins[0].config.allowOrigins",
     "list the origins allowed (or *)"),
    (("plugins",), plugin("cors", {"allowOrigins": ["app.test"]}),
     "plugins[0].config.allowOrigins[0]", "'app.test' is not an origin"),
    (("plugins",), plugin("cors", {"allowOrigins": ["*"], "allowCredentials": True}),
     "plugins[0].config.allowCredentials", "cannot be true with allowOrigins: [*]"),
    (("plugins",), plugin("cors", {"allowOrigins": ["*"], "maxAge": "long"}),
     "plugins[0].config.maxAge", "'long' is not a duration"),
    (("plugins",), plugin("jwt", {}), "plugins[0].config",
     "give exactly one of jwksUrl or jwksFile"),
    (("plugins",), plugin("jwt", {"jwksUrl": "http://x", "jwksFile": "/k"}), "plugins[0].config",
     "give exactly one of jwksUrl or jwksFile"),
    (("plugins",), plugin("jwt", {"jwksUrl": "ftp://x"}), "plugins[0].config.jwksUrl",
     "must be an http(s) URL"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "algorithms": ["ES256", "HS256"]}),
     "plugins[0].config.algorithms[1]", "'HS256' is not allowed (public-key algorithms only"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "algorithms": ["none"]}),
     "plugins[0].config.algorithms[0]", "'none' is not allowed"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "leeway": "a bit"}),
     "plugins[0].config.leeway", "is not a duration"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "refreshInterval": "x"}),
     "plugins[0].config.refreshInterval", "is not a duration"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "minRefreshInterval": "x"}),
     "plugins[0].config.minRefreshInterval", "is not a duration"),
    (("plugins",), plugin("jwt", {"jwksFile": "/k", "requireExp": "no"}),
     "plugins[0].config.requireExp", "must be a valid boolean"),
    (("plugins",), plugin("acl", {}), "plugins[0].config", "give allow or deny groups"),
    (("plugins",), plugin("acl", {"allow": "staff"}), "plugins[0].config.allow",
     "must be a valid frozenset"),
    (("plugins",), plugin("rate-limit", {"window": "1s"}), "plugins[0].config.limit",
     "is required"),
    (("plugins",), plugin("rate-limit", {"limit": 5}), "plugins[0].config.window", "is required"),
    (("plugins",), plugin("rate-limit", {"limit": 0, "window": "1s"}), "plugins[0].config.limit",
     "greater than or equal to 1"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "0ms"}),
     "plugins[0].config.window", "must be at least 1ms"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "soon"}),
     "plugins[0].config.window", "'soon' is not a duration"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "by": "user"}),
     "plugins[0].config.by", "'user' is not one of consumer, ip, route, header"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "by": "header"}),
     "plugins[0].config.header", "give header exactly when by: header"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "header": "x-user"}),
     "plugins[0].config.header", "give header exactly when by: header"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "algorithm": "leaky"}),
     "plugins[0].config.algorithm", "'leaky' is not one of sliding-window, token-bucket"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "store": "memcached"}),
     "plugins[0].config.store", "'memcached' is not local or redis"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "redis": {}}),
     "plugins[0].config.redis", "only with store: redis"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "store": "redis",
                                         "redis": {"url": "http://r"}}),
     "plugins[0].config.redis.url", "must be a redis:// URL"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "store": "redis",
                                         "redis": {"failure": "maybe"}}),
     "plugins[0].config.redis.failure", "'maybe' is not open or closed"),
    (("plugins",), plugin("rate-limit", {"limit": 5, "window": "1s", "store": "redis",
                                         "redis": {"timeout": "x"}}),
     "plugins[0].config.redis.timeout", "is not a duration"),
    (("consumers", 0, "plugins"), plugin("rate-limit", {"limit": "5", "window": "1s"}),
     "consumers[0].plugins[0].config.limit", "'5': must be a valid integer"),
    (("plugins",), plugin("cache", {"ttl": "a while"}), "plugins[0].config.ttl",
     "is not a duration"),
    (("plugins",), plugin("cache", {"maxEntries": 0}), "plugins[0].config.maxEntries",
     "greater than or equal to 1"),
    (("plugins",), plugin("cache", {"maxBytes": "lots"}), "plugins[0].config.maxBytes",
     "'lots' is not a size"),
    (("plugins",), plugin("cache", {"maxBody": "1 TB"}), "plugins[0].config.maxBody",
     "is not a size"),
    (("plugins",), plugin("cache", {"statuses": [200, 500]}), "plugins[0].config.statuses[1]",
     "500 is not a cacheable status"),
    (("plugins",), plugin("cache", {"methods": ["GET", "POST"]}), "plugins[0].config.methods",
     "only GET and HEAD responses are cached"),
    (("plugins",), plugin("cache", {"requestCookies": "share"}),
     "plugins[0].config.requestCookies", "'share' is not private or ignore"),
    (("plugins",), plugin("cache", {"varyHeaders": [1]}), "plugins[0].config.varyHeaders[0]",
     "must be a string"),
    # ------------------------------------------------------------ consumers
    (("consumers", 1, "name"), "alice", "consumers[1].name", "consumer 'alice' is defined twice"),
    ((*C0, "name"), "Alice", "consumers[0].name", "'Alice' is not a name"),
    ((*C0, "apiKeys"), ["short"], "consumers[0].apiKeys[0]",
     "an API key needs at least 8 characters"),
    (("consumers", 1, "apiKeys"), ["bob-key-12", "alice-key-1"], "consumers[1].apiKeys[1]",
     "this key also belongs to 'alice'"),
    ((*C0, "groups"), "staff", "consumers[0].groups", "must be a valid frozenset"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "reason"), CASES)
def test_bad_fields_are_named(path, value, field, reason):
    body = _with(GOOD, path, value) if path else value
    with pytest.raises(FieldError) as err:
        parse_config(body)
    assert err.value.field == field, str(err.value)
    assert reason in err.value.reason, err.value.reason


def test_the_good_config_parses_into_the_typed_objects():
    config = parse_config(GOOD)
    web, tls = config.listeners
    assert (web.host, web.port, tls.port) == ("127.0.0.1", 8080, 8443)
    assert tls.certificates[0].hosts == ("a.test",) and web.certificates == ()
    assert config.backends["b"].endpoints[1].weight == 2
    assert config.backends["svc"].service is not None
    assert config.routes[0].backends[0].name == "b" and config.routes[0].retry.attempts == 2
    assert [c.name for c in config.consumers] == ["alice", "bob"]
    assert config.admin.address == ("127.0.0.1", 9901)
    assert config.request_id.header == b"x-request-id"
    assert isinstance(config.plugins[0].config, KeyAuthConfig)


def test_a_plugin_without_config_gets_its_models_defaults():
    config = parse_config(_with(GOOD, ("plugins",), [{"name": "key-auth"}]))
    assert config.plugins[0].config == KeyAuthConfig()
    assert config.plugins[0].config.header == b"apikey"


def test_the_jwt_models_algorithms_are_the_ones_the_plugin_verifies():
    assert set(JWT_ALGORITHMS) == set(jwt_plugin.ALGORITHMS)


BAD_FILE = """\
listeners:
- name: web
  address: 127.0.0.1:8080
backends:
- name: b
  endpoints: [http://127.0.0.1:9001]
routes:
- name: api
  backendRefs:
  - name: b
  timeouts:
    request: soon
"""


def test_an_error_in_a_file_names_its_file_line_and_field(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(BAD_FILE)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}:12 "), text
    assert text.endswith("routes[0].timeouts.request: 'soon' is not a duration (like 500ms, "
                         "30s, 15m, 24h or 7d)"), text  # fmt: skip
    path.write_text(BAD_FILE.replace("  - name: b\n", "  - name: c\n").replace("soon", "5s"))
    with pytest.raises(ConfigError, match=r":10 .*routes\[0\]\.backendRefs\[0\]\.name: no backend"):
        load_config(str(path))
    path.write_text(BAD_FILE.replace("soon", "5s"))
    assert load_config(str(path)).routes[0].timeouts.request == 5.0
