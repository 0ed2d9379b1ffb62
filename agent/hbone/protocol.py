"""HBONE requests and settings, without I/O.

A stream is opened with
    :method CONNECT   :authority <destination ip>:<port>
    forwarded: for="<client ip>:<port>"      traceparent / baggage (optional)
and answered 200 (then bytes both ways), 400 (bad request), 401 (denied by
policy) or 503 (the destination could not be reached). :scheme and :path must
be absent (RFC 9113 8.5). Wire-compatible with Istio's HBONE.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.common.constants import MESH_PORTS
from agent.common.errors import SlipstreamError, UnitError
from agent.common.units import parse_port

STREAM_WINDOW = 4 << 20
"""Per-stream receive window: large, so one bulk transfer is not starved."""
CONNECTION_WINDOW = 64 << 20
MAX_FRAME_SIZE = 1 << 20
MAX_CONCURRENT_STREAMS = 200
"""Streams a peer may open on one connection (ztunnel's and hyper's server value; our own
pool opens at most 100). Other bounds on a peer: limits.py."""
MAX_HEADER_LIST_SIZE = 16 << 10

OK, BAD_REQUEST, DENIED, UNAVAILABLE = 200, 400, 401, 503


class TunnelError(SlipstreamError):
    """An HBONE connection or stream failed; `status` is the HTTP status when there was one."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class BadRequest(TunnelError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, BAD_REQUEST)


@dataclass(frozen=True)
class ConnectRequest:
    destination: tuple[str, int]
    client: tuple[str, int] | None
    """What Forwarded `for=` claims is the client's address: the peer's word, not a fact.
    The destination believes only what the connection proves (agent/node/proxy/source.py)."""
    traceparent: str | None = None
    baggage: str | None = None
    forwarded: str | None = None
    """Every Forwarded header of the request, joined as one list (RFC 7239 section 4)."""


def _addr(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise BadRequest(f"{what} {value!r} is not ip:port")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise BadRequest(f"{what} {value!r}: {host!r} is not an IPv4 address") from exc
    try:
        # A peer's header: whatever it holds is a BadRequest, never a ValueError out of int().
        return str(ip), parse_port(port)
    except UnitError as exc:
        raise BadRequest(f"{what} {value!r}: {exc}") from exc


def parse_forwarded(value: str) -> tuple[str, int] | None:
    """The `for=` node of a Forwarded value (RFC 7239) when there is exactly one and it is an
    IPv4 ip:port, else None: a list of several (a chain of proxies) is ambiguous, and
    `unknown`, obfuscated names and IPv6 are not addresses we could check."""
    nodes = [
        node.strip()
        for element in value.split(",")
        for pair in element.split(";")
        for name, sep, node in [pair.partition("=")]
        if sep and name.strip().lower() == "for"
    ]
    if len(nodes) != 1:
        return None
    node = nodes[0]
    if len(node) >= 2 and node[0] == node[-1] == '"':
        node = node[1:-1]
    try:
        return _addr(node, "forwarded for")
    except BadRequest:
        return None


def parse_connect(headers: list[tuple[str, str]]) -> ConnectRequest:
    """Validate a request header block as an HBONE CONNECT; BadRequest says what is wrong."""
    pseudo: dict[str, str] = {}
    regular: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(":"):
            if name in pseudo:
                raise BadRequest(f"pseudo-header {name} appears twice")
            pseudo[name] = value
        else:
            regular[name.lower()] = value
    if pseudo.get(":method") != "CONNECT":
        raise BadRequest(f"method must be CONNECT, not {pseudo.get(':method')!r}")
    extra = set(pseudo) - {":method", ":authority"}
    if extra:
        raise BadRequest(f"CONNECT must not carry {', '.join(sorted(extra))}")
    authority = pseudo.get(":authority")
    if not authority:
        raise BadRequest("CONNECT without :authority")
    destination = _addr(authority, ":authority")
    # Several Forwarded fields are one list (RFC 7239 section 4), not "the last one wins".
    forwarded = ", ".join(v for n, v in headers if n.lower() == "forwarded") or None
    return ConnectRequest(
        destination,
        parse_forwarded(forwarded) if forwarded else None,
        regular.get("traceparent"),
        regular.get("baggage"),
        forwarded,
    )


def connect_headers(
    destination: tuple[str, int], client: tuple[str, int], traceparent: str | None = None
) -> list[tuple[str, str]]:
    headers = [
        (":method", "CONNECT"),
        (":authority", f"{destination[0]}:{destination[1]}"),
        ("forwarded", f'for="{client[0]}:{client[1]}"'),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent))
    return headers


def target_refusal(destination: tuple[str, int], pod_ip: str) -> str | None:
    """Why a CONNECT to `destination`, arriving at the pod with `pod_ip`, must be refused
    (400, before any dial), or None: HBONE reaches the pod's own app ports, nothing else."""
    where = f"{destination[0]}:{destination[1]}"
    if destination[0] != pod_ip:
        return f":authority {where} is not this pod ({pod_ip})"
    if destination[1] in MESH_PORTS:
        return (
            f":authority {where} is a mesh port "
            f"({MESH_PORTS.start}-{MESH_PORTS.stop - 1} are not the app's)"
        )
    return None
