"""The HTTP engine's exception branch, apart from the gateway's so the engine stands alone.

The engine (this package) is shared by the gateway and, later, the waypoint: it
imports nothing of the application that hosts it. Its errors still derive from
`SlipstreamError`, the root every Slipstream package's errors share.
"""

from __future__ import annotations

from agent.common.errors import SlipstreamError


class HttpEngineError(SlipstreamError):
    """Root of every deliberate error of the HTTP engine."""


class HttpError(HttpEngineError):
    """A request cannot be served as asked; `status` is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpstreamError(HttpEngineError):
    """An upstream could not be reached or broke off; `kind` is connect, timeout or reset."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
