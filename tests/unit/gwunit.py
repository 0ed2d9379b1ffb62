"""Shared by the gateway's unit tests: a request head as the engine reads it, and a config of
one route carrying one plugin."""

from __future__ import annotations

from typing import Any

from gateway.config import parse_config
from gateway.http.head import Head, HeadRules, read_head


def head(
    fields: list[tuple[bytes, bytes]],
    *,
    method: str = "GET",
    version: str = "1.1",
    target: bytes = b"/",
    scheme: str = "http",
    rules: HeadRules | None = None,
) -> Head:
    """What the engine's head reader makes of these (as a server hands it a parsed head)."""
    return read_head(
        method,
        version,
        target,
        fields,
        scheme=scheme,
        rules=rules or HeadRules(),
        max_headers=100,
        max_body=1000,
    )


def one_route(plugin: dict[str, Any]) -> Any:
    """A parsed config: one listener, one backend, route `r` to it with `plugin`."""
    return parse_config(
        {
            "listeners": [{"name": "web", "address": "127.0.0.1:8080"}],
            "backends": [{"name": "b", "endpoints": ["http://127.0.0.1:9"]}],
            "routes": [{"name": "r", "backendRefs": [{"name": "b"}], "plugins": [plugin]}],
        }
    )
