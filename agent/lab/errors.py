"""The lab's exception branch."""

from __future__ import annotations

from agent.common.errors import SlipstreamError


class LabError(SlipstreamError):
    """The lab could not do what was asked; what it built has been rolled back."""
