"""Fuzz target: the gateway's configuration models (gateway/config, gateway/plugins/models.py).

The fuzz bytes pick fields of a good configuration (every kind: listeners, backends, routes
with filters and retries, consumers, plugins of every kind) and replace them with anything
YAML could hold. HTTPRoutes from the cluster reach these models too (gatewayapi.py), and
the master keeps serving only if a refusal is a FieldError. Invariants:

- `parse_config` returns a GatewayConfig or raises FieldError; never any other exception;
- the error's field is a path the document positions (`Document.error` never raises);
- what parsed can be read the way the request path reads it (filters, limits, endpoints).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import atheris

from agent.common.errors import FieldError
from agent.common.manifest import Document
from gateway.config import parse_config
from tests.fuzz import harness

GOOD: dict[str, Any] = {
    "admin": {"address": "127.0.0.1:9901"},
    "listeners": [{"name": "web", "address": 8080, "limits": {"maxBody": "1MiB"},
                   "http": {"escapedSlashes": "keep"},
                   "tls": {"certificates": [{"hosts": ["a.test"], "cert": "c", "key": "k"}]}}],
    "backends": [{"name": "b", "endpoints": ["http://127.0.0.1:9", {"url": "http://x:1"}],
                  "loadBalancer": {"hash": {"header": "x-user"}},
                  "healthCheck": {"active": {"statuses": ["200-299"]},
                                  "passive": {"ejection": "5s"}}}],
    "consumers": [{"name": "alice", "apiKeys": ["alice-key-1"],
                   "plugins": [{"name": "rate-limit", "config": {"limit": 5, "window": "1s"}}]}],
    "plugins": [{"name": "cors", "config": {"allowOrigins": ["https://a.test"]}},
                {"name": "jwt", "config": {"jwksFile": "/k", "algorithms": ["ES256"]}}],
    "routes": [{"name": "r", "hostnames": ["a.test"],
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                             "headers": [{"name": "x", "value": "1"}]}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                    "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                            {"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}],
                "backendRefs": [{"name": "b", "weight": 2}],
                "timeouts": {"request": "10s"}, "retry": {"on": [503]},
                "plugins": [{"name": "cache", "config": {"statuses": [200]}},
                            {"name": "acl", "config": {"allow": ["staff"]}},
                            {"name": "key-auth", "config": {"header": "x-key"}}]}],
    "accessLog": {"format": "text"},
    "requestId": {"header": "x-rid"},
}  # fmt: skip
STRINGS = [
    "", "x", "web", "b", "/", "/api", "*", "a.test", "*.a.test", "A.TEST", "soon", "10s",
    "0ms", "1MiB", "big", "http://127.0.0.1:9", "https://x", "ftp://x", "http://x/p",
    "spiffe://td/ns/a/sa/b", "Exact", "PathPrefix", "RegularExpression", "(", "[a-z]+",
    "RequestRedirect", "URLRewrite", "ReplaceFullPath", "ReplacePrefixMatch", "GET", "get",
    "websocket", "h2c", "connect-failure", "503", "redis", "redis://r", "header", "open",
    "\r\n", "\u2603", "127.0.0.1:99999", "8080", "round-robin", "least-request", "hash",
]  # fmt: skip

logging.disable(logging.CRITICAL)


def value(fdp: atheris.FuzzedDataProvider, depth: int) -> Any:
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**40), 2**40)
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else float("nan")
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if kind == 5:
        return STRINGS[fdp.ConsumeIntInRange(0, len(STRINGS) - 1)]
    if kind in (6, 7):
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    keys: list[Any] = ["name", "type", "value", "config", 1, None, "path", "url"]
    return {
        keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]: value(fdp, depth + 1)
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += places(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += places(v, (*path, i))
    return out


PLACES = places(GOOD)[1:]


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    body = copy.deepcopy(GOOD)
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        path = PLACES[fdp.ConsumeIntInRange(0, len(PLACES) - 1)]
        node: Any = body
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value(fdp, 0)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this place
    try:
        config = parse_config(body)
    except FieldError as exc:
        Document("gateway.yaml", 1, 1, body, {}).error(exc)
        return
    for r in config.routes:
        _ = (r.filters, r.retry.statuses, r.retry.on_connect_failure, r.timeouts.backend_request)
        for m in r.matches:
            _ = (m.path.regex, [h.matches("x") for h in m.headers])
    for li in config.listeners:
        _ = (li.server_limits, li.head_rules, li.certificates, li.host, li.port)
    for b in config.backends.values():
        _ = ([e.endpoint for e in b.endpoints], b.load_balancer, b.hash_header, b.passive)


SEEDS = [b"", b"\x00" * 8, bytes(range(64))]

if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
