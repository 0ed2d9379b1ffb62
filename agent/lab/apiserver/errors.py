"""Errors of the lab API server, each carrying the `Status` the real API answers with.

`ApiError` is what request handling raises; the HTTP layer turns it into a
`Status` body with the same code, reason, message and details (causes with
field paths) as kube-apiserver, so clients we did not write react as they do
against a real cluster (kubectl prints the message, client-go checks reasons).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.common.errors import SlipstreamError


class ApiServerError(SlipstreamError):
    """Root of every deliberate error of the lab API server package."""


@dataclass
class Cause:
    """One entry of `details.causes`: a field path (`spec.rules[0].from`) and what is wrong."""

    reason: str
    message: str
    field: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"reason": self.reason, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


@dataclass(eq=False)
class ApiError(ApiServerError):
    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    causes: list[Cause] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def status(self) -> dict[str, Any]:
        details = dict(self.details)
        if self.causes:
            details["causes"] = [c.to_json() for c in self.causes]
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            out["details"] = details
        return out


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if group:
        out["group"] = group
    if kind:
        out["kind"] = kind
    return out


def qualified(resource: str, group: str) -> str:
    """`pods`, `endpointslices.discovery.k8s.io`: how the real server names a resource."""
    return f"{resource}.{group}" if group else resource


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(message: str, *, name: str = "", group: str = "", resource: str = "") -> ApiError:
    return ApiError(403, "Forbidden", message, _details(name, group, resource))


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(resource, group)} "{name}" not found',
        _details(name, group, resource),
    )


def no_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def method_not_allowed(verb: str = "") -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def not_acceptable(what: str) -> ApiError:
    return ApiError(406, "NotAcceptable", f"only the following media types are accepted: {what}")


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(resource, group)} "{name}" already exists',
        _details(name, group, resource),
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}',
        _details(name, group, resource),
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Gone", message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: {message}")


def unsupported_media(accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def unprocessable(message: str) -> ApiError:
    """A patch that cannot be applied (a failed JSON-patch `test`, a missing path)."""
    return ApiError(422, "Invalid", message)


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid naming every field, formatted as apimachinery's NewInvalid."""
    shown = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
    body = shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"
    qkind = f"{kind}.{group}" if group else kind
    return ApiError(
        422,
        "Invalid",
        f'{qkind} "{name}" is invalid: {body}',
        _details(name, group, kind),
        causes,
    )


def too_many_requests(message: str) -> ApiError:
    err = ApiError(429, "TooManyRequests", message, {"retryAfterSeconds": 1})
    return err


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def rv_too_large(asked: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {asked}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


# Cause reasons (apimachinery field.ErrorType), and the helpers that phrase them the same way.
REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
DUPLICATE = "FieldValueDuplicate"


def show(value: Any) -> str:
    """A value as Go's `%#v`-ish rendering in field errors: strings quoted, numbers bare."""
    import json

    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)[:200]


def required(path: str, detail: str = "") -> Cause:
    return Cause(REQUIRED, "Required value" + (f": {detail}" if detail else ""), path)


def invalid_value(path: str, value: Any, detail: str) -> Cause:
    return Cause(INVALID, f"Invalid value: {show(value)}: {detail}", path)


def not_supported(path: str, value: Any, allowed: list[Any]) -> Cause:
    shown = ", ".join(show(v) for v in allowed)
    return Cause(
        NOT_SUPPORTED, f"Unsupported value: {show(value)}: supported values: {shown}", path
    )


def forbidden_field(path: str, detail: str) -> Cause:
    return Cause(FORBIDDEN, f"Forbidden: {detail}", path)


def duplicate(path: str, value: Any) -> Cause:
    return Cause(DUPLICATE, f"Duplicate value: {show(value)}", path)
