"""API keys: a key in a header or a query parameter names the consumer it belongs to.

Keys come from `consumers[].apiKeys`; the plugin says where to look. A missing
key is 401 with `WWW-Authenticate`; an unknown key is 401 too (no hint that a
consumer exists); a key given twice (two header fields, two query parameters,
or both) is 401: the gateway and the upstream must not read different keys.
With `hideCredentials` the key is not passed upstream.
"""

from __future__ import annotations

import hmac

from ..http.message import Headers, Response
from .base import PHASE_AUTH, Context, Plugin, Shared
from .models import KeyAuthConfig


class KeyAuth(Plugin):
    name = "key-auth"
    phase = PHASE_AUTH
    authenticates = True

    def __init__(self, config: KeyAuthConfig, shared: Shared, scope: str) -> None:
        self.config = config
        self.keys = shared.by_key

    async def request(self, ctx: Context) -> Response | None:
        req = ctx.request
        given = [v.decode("latin-1").strip() for v in req.headers.get_all(self.config.header)]
        if self.config.query is not None and req.query_string:
            given += req.query_values(self.config.query)
        if len(given) > 1:
            ctx.notes["auth"] = "key-invalid"
            return _unauthorized("more than one API key")
        key = given[0] if given else None
        if not key:
            ctx.notes["auth"] = "key-missing"
            return _unauthorized("no API key")
        consumer = self.keys.get(key)
        # Dictionary lookup first, then a constant-time compare of the one candidate.
        if consumer is None or not any(hmac.compare_digest(key, k) for k in consumer.api_keys):
            ctx.notes["auth"] = "key-invalid"
            return _unauthorized("invalid API key")
        ctx.consumer = consumer
        ctx.principal = consumer.name
        ctx.notes["auth"] = "key"
        if self.config.hide_credentials:
            assert ctx.upstream_headers is not None
            ctx.upstream_headers.remove(self.config.header)
            if (
                self.config.query is not None
                and req.query_string
                and req.query_value(self.config.query) is not None
            ):
                req.set_query([(k, v) for k, v in req.query if k != self.config.query])
        return None


def _unauthorized(message: str) -> Response:
    h = Headers([(b"www-authenticate", b'Key realm="slipstream"')])
    return Response.text(401, message, h)
