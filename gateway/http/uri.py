"""Request targets and Host, normalized once, before anything looks at them (pure).

The gateway routes, authorizes, caches and forwards on one form of each request's
path and authority, the one this module makes; upstreams that normalize again
(nginx, any framework) then see the same resource the gateway decided about.

Path (RFC 3986 §6.2.2 and §5.2.4, as Envoy's `normalize_path` + `merge_slashes`):
- a fragment is dropped; the target must be origin-form (`/...`), absolute-form
  (`http://host/...`, which becomes origin-form with its authority as Host) or `*`
  (OPTIONS only); CONNECT's authority-form is refused;
- percent-encoded unreserved characters are decoded (`%61` is `a`, `%2e` is `.`),
  every other escape is kept with upper-case hex; characters RFC 3986 does not
  allow in a path (`"<>[]^`{|}`) are percent-encoded; a malformed escape or an
  encoded NUL is refused;
- `%2F`, `%5C` and a raw backslash: refused by default (an upstream may read them
  as separators: nothing can say which resource they name); `keep` forwards them
  encoded, inside their segment; `decode` turns them into `/` first;
- path parameters (`;` in a segment, `/admin;x`) are refused by default: servlet
  containers (Tomcat, Jetty, Spring) cut them off and serve `/admin`, nginx serves
  `/admin;x`, so nothing can say which resource they name (Istio #27409). `strip`
  removes them before anything else (the upstream gets the path without them);
  `keep` keeps them as part of their segment, but still refuses a dot segment
  with parameters (`..;/`);
- dot segments are resolved (after decoding, so `%2e%2e` counts), never above the
  root; repeated slashes are merged unless the listener says otherwise.

Host (RFC 9110 §7.2, RFC 3986 §3.2.2): lower case, one trailing dot dropped, the
scheme's default port dropped; a port that is not a number up to 65535, an
escape, a user part or a character outside a host name is refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from .errors import HttpError

ESCAPED_SLASHES: Final = ("reject", "keep", "decode")
"""What `%2F`, `%5C` and `\\` in a path mean: refused (400), kept encoded, or `/`."""

PATH_PARAMETERS: Final = ("reject", "strip", "keep")
"""What `;params` in a path segment mean: refused (400), removed, or part of the segment."""

DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_PATH_OK: Final = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
"""Characters that stand for themselves in a normalized path (pchar and `/`)."""
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_HOST_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class PathRules:
    """How a listener normalizes paths (Envoy: merge_slashes, path_with_escaped_slashes_action)."""

    merge_slashes: bool = True
    escaped_slashes: str = "reject"
    parameters: str = "reject"


@dataclass(frozen=True)
class Target:
    """A request target in the one form the gateway routes on and forwards."""

    path: str
    """Normalized, origin-form: starts with `/` (or is `*`)."""
    query: str
    """As received (without `?`); '' when there is none."""
    authority: bytes | None
    """From an absolute-form target, normalized; None for origin-form."""


def bad(reason: str) -> HttpError:
    return HttpError(400, reason)


def parse_target(raw: bytes, method: str, scheme: str, rules: PathRules) -> Target:
    """The normalized target of a request line (bytes as llhttp accepted them: no spaces or
    control characters), or HttpError 400/405."""
    target = raw.partition(b"#")[0]
    if method == "CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    if target == b"*":
        if method != "OPTIONS":
            raise bad("the asterisk-form target is only for OPTIONS")
        return Target("*", "", None)
    authority: bytes | None = None
    if not target.startswith(b"/"):
        scheme_end = target.find(b"://")
        if scheme_end <= 0:
            raise bad("request target is neither a path nor an absolute URI")
        their_scheme = target[:scheme_end].decode("latin-1").lower()
        if their_scheme not in DEFAULT_PORTS:
            raise bad(f"request target scheme {their_scheme!r} is not http or https")
        if their_scheme != scheme:
            raise bad(f"an {their_scheme} request target on an {scheme} connection")
        rest = target[scheme_end + 3 :]
        end = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        authority = normalize_authority(rest[:end], scheme)
        target = rest[end:]
        if not target.startswith(b"/"):
            target = b"/" + target
    path, _, query = target.partition(b"?")
    return Target(normalize_path(path, rules), query.decode("latin-1"), authority)


def normalize_path(raw: bytes, rules: PathRules) -> str:
    """The path in its one normalized form (see the module docstring), or HttpError 400."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise bad("malformed percent-encoding in the path")
            byte = int(raw[i + 1 : i + 3], 16)
            i += 3
            if byte in _UNRESERVED:
                out.append(byte)
            elif byte == 0:
                raise bad("an encoded NUL (%00) in the path")
            elif byte in (0x2F, 0x5C):
                _escaped_slash(out, byte, rules)
            else:
                out += b"%%%02X" % byte
            continue
        i += 1
        if c in _PATH_OK:
            out.append(c)
        elif c == 0x5C:  # a raw backslash: some servers take it for '/'
            _escaped_slash(out, c, rules)
        elif 0x20 < c < 0x7F:
            out += b"%%%02X" % c
        else:
            raise bad("a control or non-ASCII character in the path")
    return _resolve(out.decode("ascii"), rules)


def _escaped_slash(out: bytearray, byte: int, rules: PathRules) -> None:
    action = rules.escaped_slashes
    if action == "decode":
        out.append(0x2F)
    elif action == "keep":
        out += b"%%%02X" % byte
    else:
        name = "%2F" if byte == 0x2F else "a backslash"
        raise bad(f"{name} in the path (the listener refuses escaped slashes)")


def _resolve(path: str, rules: PathRules) -> str:
    """Path parameters as the rules say; remove dot segments (RFC 3986 §5.2.4) and, if the
    rules say so, empty segments."""
    if not path.startswith("/"):
        path = "/" + path
    merge = rules.merge_slashes
    params = ";" in path
    if params and rules.parameters == "reject":
        raise bad("path parameters (';') in the path")
    if not params and "/." not in path and (not merge or "//" not in path):
        return path  # (the common case: nothing to do)
    segments = path.split("/")[1:]
    if params and rules.parameters == "strip":
        segments = [seg.partition(";")[0] for seg in segments]
    last = len(segments) - 1
    out: list[str] = []
    for k, seg in enumerate(segments):
        if seg == "." or seg == "..":
            if seg == ".." and out:
                out.pop()
            if k == last:
                out.append("")  # '/a/..' is '/', '/a/.' is '/a/'
            continue
        if seg.startswith(".") and seg.partition(";")[0] in (".", ".."):
            raise bad(f"a dot segment with parameters ({seg!r}) in the path")
        if not seg and merge and k != last:
            continue
        out.append(seg)
    return "/" + "/".join(out)


def normalize_authority(raw: bytes, scheme: str) -> bytes:
    """`host[:port]` in one form: lower case, no trailing dot, no default port; or 400."""
    host, port = split_authority(raw, scheme)
    if port == DEFAULT_PORTS.get(scheme):
        return host
    return host + b":%d" % port


def split_authority(raw: bytes, scheme: str) -> tuple[bytes, int]:
    """(host, port) of a Host value or URI authority, normalized; the port defaults by scheme."""
    if b"@" in raw:
        raise bad("a user name in the authority")
    text = raw.lower()
    port_text = b""
    if text.startswith(b"["):
        close = text.find(b"]")
        if close < 0:
            raise bad("an unclosed IPv6 literal in Host")
        literal, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(b":"):
            raise bad("junk after an IPv6 literal in Host")
        port_text = rest[1:]
        if b"%" in literal:
            raise bad("a zone identifier in an IPv6 literal in Host")
        try:
            address = ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError as exc:
            raise bad("an invalid IPv6 literal in Host") from exc
        host = b"[" + address.compressed.encode() + b"]"
    else:
        name, sep, port_text = text.rpartition(b":")
        if not sep:
            name, port_text = text, b""
        if name.endswith(b"."):
            name = name[:-1]
        if not _valid_name(name):
            raise bad("an invalid host name")
        host = name
    if not port_text:
        default = DEFAULT_PORTS.get(scheme, 0)
        return host, default
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise bad("an invalid port in Host")
    return host, int(port_text)


def _valid_name(name: bytes) -> bool:
    if not name or len(name) > 253:
        return False
    for label in name.split(b"."):
        if not label or len(label) > 63:
            return False
        for c in label:
            if c not in _HOST_CHARS:
                return False
    return True
