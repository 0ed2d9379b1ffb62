"""Which client address the destination believes for an HBONE stream (pure).

The address is what the connection proves: the TCP peer of the HBONE
connection. Agents open HBONE from inside the source pod's own namespace, so
that is the source pod's address (the gateway's own, for the gateway), and a
mesh identity cannot choose it. `Forwarded: for=` is only the peer's word: we
take its port, and only when its address is the proven one. Any other claim
(loopback, another pod, the destination itself, a list of several, IPv6 or
malformed) is ignored, not refused, and noted in the access record. One
address feeds both the app (the transparent bind) and policy (`ipBlocks`,
`source.ip`).

No identity may forward another workload's address: ztunnel's inbound trusted
Forwarded from the destination's own waypoint until istio/ztunnel#908 dropped
it, and now takes the connection's source only. A waypoint or gateway that
reaches a pod is the source that pod's policy and app see.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.hbone.protocol import ConnectRequest

CLAIM_LOGGED = 200
"""Characters of an ignored Forwarded value kept in the access record."""


@dataclass(frozen=True)
class ClientSource:
    addr: tuple[str, int]
    """The client address the app and policy see."""
    ignored: str | None = None
    """The Forwarded claim we did not believe, and why, for the access record."""


def hbone_source(peer: tuple[str, int], request: ConnectRequest) -> ClientSource:
    """The client of a stream that arrived on a connection from `peer` (its TCP peer)."""
    claim = request.client
    if claim is not None and claim[0] == peer[0]:
        return ClientSource(claim)  # the connection proves the address; the port is the app's own
    if request.forwarded is None:
        return ClientSource(peer)
    raw = request.forwarded[:CLAIM_LOGGED]
    why = "not one IPv4 ip:port" if claim is None else f"not the connection's address {peer[0]}"
    return ClientSource(peer, f"Forwarded {raw!r} ignored: {why}")
