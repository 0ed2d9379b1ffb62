"""ACL: lets consumers in or keeps them out by group (after authentication).

`deny` wins over `allow`; with an `allow` list, a consumer must be in one of
its groups. A request with no authenticated consumer gets 401: put an auth
plugin (key-auth, jwt) before relying on an ACL.
"""

from __future__ import annotations

from ..http.message import Response
from .base import PHASE_ACL, Context, Plugin, Shared
from .models import AclConfig


class Acl(Plugin):
    name = "acl"
    phase = PHASE_ACL

    def __init__(self, config: AclConfig, shared: Shared, scope: str) -> None:
        self.config = config

    async def request(self, ctx: Context) -> Response | None:
        consumer = ctx.consumer
        if consumer is None:
            ctx.notes["acl"] = "no-consumer"
            return Response.text(401, "authentication required")
        if consumer.groups & self.config.deny or (
            self.config.allow and not consumer.groups & self.config.allow
        ):
            ctx.notes["acl"] = "denied"
            return Response.text(403, f"consumer {consumer.name} may not use this route")
        return None
