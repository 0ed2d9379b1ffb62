"""What the engine decides from a request head alone, before any body byte is read (pure).

`read_head` turns what llhttp parsed (method, version, target, fields) into the
`Request` everything after it sees, or refuses it with an `HttpError`:

- HTTP/1.0 and 1.1 only (505; a request line without a version is 400); at
  most `max_headers` fields (431);
- the target and Host normalized once (uri.py); an absolute-form target's
  authority becomes the Host, and a Host header that disagrees with it is 400;
  HTTP/1.1 needs exactly one Host;
- fields that must appear once (`Host`, `Authorization`, `Proxy-Authorization`,
  `Expect`) appear once (400): a proxy that reads the first and an upstream
  that reads the last must never disagree about who is asking;
- field values lose trailing whitespace (RFC 9110 §5.5; llhttp keeps it);
- names with `_` are dropped (default, as nginx does), refused or kept: some
  upstream frameworks read `X_Forwarded_Host` as `X-Forwarded-Host`;
- hop-by-hop fields, and every field that `Connection` names, are removed here
  (RFC 9110 §7.6.1), so routing and plugins see what is forwarded;
- `Transfer-Encoding` in HTTP/1.0 is refused (RFC 9112 §6.1: faulty framing);
- `Expect: 100-continue` is noted (HTTP/1.1 only) and removed; any other
  expectation is 417;
- an upgrade (`Connection: upgrade` + `Upgrade`) is noted as the protocol asked
  for; the route decides whether it passes, and a connection that asked is
  closed after its answer unless it switched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .errors import HttpError
from .message import HOP_BY_HOP, Headers, Request
from .uri import PathRules, normalize_authority, parse_target, split_authority

UNDERSCORE_ACTIONS: Final = ("drop", "reject", "allow")

SINGLETONS: Final = frozenset({b"host", b"authorization", b"proxy-authorization", b"expect"})
"""Fields a request may carry once."""

_REMOVED: Final = HOP_BY_HOP | {b"http2-settings", b"expect"}
"""Fields that describe this hop only; `upgrade` is kept in Request.upgrade."""


@dataclass(frozen=True)
class HeadRules:
    """A listener's choices about request heads."""

    paths: PathRules = field(default_factory=PathRules)
    underscores: str = "drop"
    """Header names containing `_`: drop (the field is removed), reject (400) or allow."""


@dataclass
class Head:
    request: Request
    expect_continue: bool
    has_body: bool


def read_head(
    method: str,
    version: str,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    *,
    scheme: str,
    rules: HeadRules,
    max_headers: int,
    max_body: int,
) -> Head:
    """The request (without its body) a head stands for."""
    if version not in ("1.1", "1.0"):
        if version == "0.9":  # (llhttp's reading of a request line without a version)
            raise HttpError(400, "no HTTP version in the request line")
        raise HttpError(505, f"HTTP/{version} is not supported")
    if len(fields) > max_headers:
        raise HttpError(431, "too many request headers")
    seen: set[bytes] = set()
    connection: set[bytes] = set()
    host: bytes | None = None
    upgrade_to = b""
    expect = b""
    has_body = False
    kept: list[tuple[bytes, bytes]] = []
    for name, raw_value in fields:
        value = raw_value.rstrip(b" \t")
        if name in SINGLETONS:
            if name in seen:
                raise HttpError(400, f"repeated {name.decode()} header")
            seen.add(name)
        if b"_" in name:
            if rules.underscores == "reject":
                raise HttpError(400, f"header name with an underscore: {name.decode('latin-1')}")
            if rules.underscores == "drop":
                continue
        if name == b"host":
            host = value
            continue
        if name == b"connection":
            connection.update(t.strip().lower() for t in value.split(b",") if t.strip())
        elif name == b"upgrade":
            upgrade_to = value.lower()
        elif name == b"expect":
            expect = value.lower()
        elif name == b"content-length":
            if value.isdigit() and int(value) > max_body:
                raise HttpError(413, f"request body larger than {max_body} bytes")
            has_body = value != b"0"
            continue  # (the engine frames the body it forwards itself)
        elif name == b"transfer-encoding":
            if version == "1.0":
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            has_body = True
        if name in _REMOVED:
            continue
        kept.append((name, value))
    if connection:
        kept = [(n, v) for n, v in kept if n not in connection]
    parsed = parse_target(target, method, scheme, rules.paths)
    authority = b""
    if host is not None:
        authority = normalize_authority(host, scheme)
    elif version == "1.1":
        raise HttpError(400, "missing Host header")
    if parsed.authority is not None:
        if host is not None and authority != parsed.authority:
            raise HttpError(400, "the Host header does not match the request target")
        authority = parsed.authority
    if authority:
        kept.append((b"host", authority))
    expect_continue = False
    if expect and version == "1.1":  # (HTTP/1.0 clients never wait for a 100)
        if expect != b"100-continue":
            raise HttpError(417, "only Expect: 100-continue is understood")
        expect_continue = True
    protocol = ""
    if upgrade_to and b"upgrade" in connection:  # (llhttp's rule too: it stops parsing there)
        protocol = upgrade_to.decode("latin-1")
    request = Request(
        method,
        parsed.path,
        parsed.query,
        Headers(kept),
        version=version,
        scheme=scheme,
        authority=authority,
        host=split_authority(authority, scheme)[0].decode() if authority else "",
        upgrade=protocol,
    )
    return Head(request, expect_continue, has_body)
