"""Plugins: what runs around the proxying, configured globally, per route or per consumer.

Each module parses its own `config` (raising FieldError with the path) and
implements `base.Plugin`. `PARSERS` and `CLASSES` register them by name;
`SCOPES` says where each may be configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import acl, cache, cors, jwt, keyauth, ratelimit
from .base import Plugin

PARSERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "cors": cors.parse,
    "key-auth": keyauth.parse,
    "jwt": jwt.parse,
    "acl": acl.parse,
    "rate-limit": ratelimit.parse,
    "cache": cache.parse,
}

CLASSES: dict[str, type[Plugin]] = {
    "cors": cors.Cors,
    "key-auth": keyauth.KeyAuth,
    "jwt": jwt.Jwt,
    "acl": acl.Acl,
    "rate-limit": ratelimit.RateLimit,
    "cache": cache.Cache,
}

SCOPES: dict[str, frozenset[str]] = {
    "cors": frozenset({"global", "route"}),
    "key-auth": frozenset({"global", "route"}),
    "jwt": frozenset({"global", "route"}),
    "acl": frozenset({"global", "route"}),
    "rate-limit": frozenset({"global", "route", "consumer"}),
    "cache": frozenset({"global", "route"}),
}
