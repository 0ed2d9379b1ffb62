"""HTTP messages as the engine passes them around: header fields, requests, responses.

Header names are kept lower-case (HTTP/1.1 names are case-insensitive and
HTTP/2 requires lower case), values as received. Bodies of requests are
buffered (bounded by the listener's limit) so a request can be retried;
responses from upstreams stream through the proxy instead (see proxy.py).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, urlencode

REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Fields that describe one hop, not the message: never forwarded as they are (RFC 9110 7.6.1)."""


class Headers:
    """Header fields in order; names lower-case; lookups by lower-case name."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.items: list[tuple[bytes, bytes]] = list(items)

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        for n, v in self.items:
            if n == name:
                return v
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.items if n == name]

    def add(self, name: bytes, value: bytes) -> None:
        self.items.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        self.remove(name)
        self.items.append((name, value))

    def remove(self, name: bytes) -> None:
        for n, _ in self.items:
            if n == name:
                self.items = [(n, v) for n, v in self.items if n != name]
                return

    def __contains__(self, name: bytes) -> bool:
        for n, _ in self.items:  # noqa: SIM110 (a loop: any() with a generator costs twice as much)
            if n == name:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def copy(self) -> Headers:
        return Headers(self.items)

    def tokens(self, name: bytes) -> builtins.set[bytes]:
        """Comma-separated tokens of all fields `name`, lower-case (Connection, Cache-Control)."""
        out: builtins.set[bytes] = builtins.set()
        for v in self.get_all(name):
            out.update(t.strip().lower() for t in v.split(b",") if t.strip())
        return out

    def encode(self) -> bytes:
        return b"".join([n + b": " + v + b"\r\n" for n, v in self.items])

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


class Request:
    """One request as the gateway received it (normalized, see head.py), plus what the pipeline
    learned about it."""

    __slots__ = (
        "_query",
        "authority",
        "body",
        "client",
        "consumer",
        "headers",
        "host",
        "id",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "received",
        "route",
        "scheme",
        "sni",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: bytes = b"",
        *,
        version: str = "1.1",
        client: tuple[str, int] = ("0.0.0.0", 0),
        scheme: str = "http",
        sni: str | None = None,
        keep_alive: bool = True,
        upgrade: str = "",
        authority: bytes = b"",
        host: str = "",
    ) -> None:
        self.method = method
        self.path = path
        """Normalized (uri.py); what routing matched and what is forwarded."""
        self.query_string = query
        self._query: list[tuple[str, str]] | None = None
        self.headers = headers
        self.body = body
        self.version = version
        self.client = client
        self.scheme = scheme
        self.sni = sni
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        """The protocol the client asked to switch to (lower case), '' for none; the pipeline
        clears it when the route does not allow it."""
        self.authority = authority
        """The Host, normalized: lower case, no trailing dot, no default port (b'' if none)."""
        self.host = host
        """The authority without its port: what routes match."""
        self.id = ""
        self.route: object = None
        """The matched route (a routing.Route), once routed."""
        self.consumer: object = None
        """The authenticated consumer (a config.Consumer), once authenticated."""
        self.received = time.monotonic()

    @property
    def target(self) -> bytes:
        t = self.path.encode("latin-1")
        return t + b"?" + self.query_string.encode("latin-1") if self.query_string else t

    @property
    def query(self) -> list[tuple[str, str]]:
        if self._query is None:
            self._query = parse_qsl(self.query_string, keep_blank_values=True)
        return self._query

    def query_values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def query_value(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def set_query(self, pairs: list[tuple[str, str]]) -> None:
        self._query = pairs
        self.query_string = urlencode(pairs)


class Response:
    """A response the gateway makes itself (errors, redirects, cache hits, preflights)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else Headers()
        self.body = body

    @classmethod
    def text(cls, status: int, message: str, headers: Headers | None = None) -> Response:
        h = headers if headers is not None else Headers()
        h.set(b"content-type", b"text/plain; charset=utf-8")
        return cls(status, h, message.encode() + b"\n")


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    return b"HTTP/" + version + b" %d " % status + REASONS.get(status, b"Unknown") + b"\r\n"
