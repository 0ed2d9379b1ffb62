"""The one exception root of Slipstream, and the branches every package shares.

Every error any package raises on purpose derives from `SlipstreamError` (each
package has its own branch of it: `IdentityError`, `TunnelError`, `GatewayError`,
`LabError`...), so the command line can print it as a message instead of a
traceback. Branches carry the context a user needs to fix the input: the file,
the line, the object and the field.
"""

from __future__ import annotations


class SlipstreamError(Exception):
    """Root of every deliberate error in Slipstream."""


class FieldError(SlipstreamError):
    """A field of one object is wrong. `field` is a path like `spec.ports[0].port`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class ManifestError(SlipstreamError):
    """A manifest file cannot be used: names the file, line, document and object."""

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        line: int | None = None,
        document: int | None = None,
        obj: str | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.document = document
        self.obj = obj
        self.field = field
        self.reason = reason
        where = source if line is None else f"{source}:{line}"
        parts = [where]
        if document is not None:
            parts.append(f"document {document}")
        if obj:
            parts.append(obj)
        head = " ".join(parts[:1]) + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")
        body = f"{field}: {reason}" if field else reason
        super().__init__(f"{head}: {body}")


class UnitError(SlipstreamError):
    """A value is not written in its unit: an address, a duration or a size (see units.py)."""


class NetnsError(SlipstreamError):
    """A network-namespace operation failed."""
