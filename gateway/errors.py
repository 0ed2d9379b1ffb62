"""The one exception root of the gateway app, and its branches.

`GatewayError` derives from `SlipstreamError` so the `slipstream` command prints
it as a message. Configuration errors name the file, line and field, and say
that the previous configuration keeps serving. The HTTP engine's errors
(`HttpError`, `UpstreamError`) are the engine's own: gateway/http/errors.py.
"""

from __future__ import annotations

from agent.common.errors import SlipstreamError


class GatewayError(SlipstreamError):
    """Root of every deliberate error in the gateway package."""


class ConfigError(GatewayError):
    """A configuration cannot be used; the message names file, line and field."""
