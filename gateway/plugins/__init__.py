"""Plugins: what runs around the proxying, configured globally, per route or per consumer.

Each plugin's configuration is a model in `models.py` (with `MODELS`, by name, and
`SCOPES`, where each may be configured); each module here implements `base.Plugin`
and is built from its typed config. `CLASSES` registers them by name.
"""

from __future__ import annotations

from . import acl, cache, cors, jwt, keyauth, ratelimit
from .base import Plugin

CLASSES: dict[str, type[Plugin]] = {
    "cors": cors.Cors,
    "key-auth": keyauth.KeyAuth,
    "jwt": jwt.Jwt,
    "acl": acl.Acl,
    "rate-limit": ratelimit.RateLimit,
    "cache": cache.Cache,
}
