"""The one exception root of the `gateway` package, and its branches.

`GatewayError` derives from the agent's `SlipstreamError` so the `slipstream`
command prints it as a message. Configuration errors name the file, line and
field, and say that the previous configuration keeps serving.
"""

from __future__ import annotations

from agent.errors import SlipstreamError


class GatewayError(SlipstreamError):
    """Root of every deliberate error in the gateway package."""


class ConfigError(GatewayError):
    """A configuration cannot be used; the message names file, line and field."""


class HttpError(GatewayError):
    """A request cannot be served as asked; `status` is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpstreamError(GatewayError):
    """An upstream could not be reached or broke off; `kind` is connect, timeout or reset."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
