"""Connections arriving at an enrolled pod: captured plaintext (15006) and HBONE (15008).

Both end at the app, from the original client's address (bound transparently
inside the pod), so the app sees the real client IP: for HBONE, the address the
connection proves (source.py), which policy sees too. Plaintext is accepted in
PERMISSIVE mode and refused in STRICT mode. An HBONE stream must name this
pod's own address as its :authority, and authorization policy must allow its
client; it is answered 200 once the app accepted the connection, 400 for a
bad request, 401 when policy denies it, 503 when the app did not accept.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agent.hbone.endpoint import H2Stream
from agent.hbone.protocol import (
    BAD_REQUEST,
    DENIED,
    OK,
    UNAVAILABLE,
    ConnectRequest,
    target_refusal,
)
from agent.hbone.server import HboneServerConnection
from agent.hbone.stream import End
from agent.policy.authz import Decision, PolicyPeer
from agent.policy.peerauth import STRICT, mode_for, plaintext_refusal
from agent.state.objects import Pod

from .accesslog import FlowRecord
from .context import MeshContext
from .outbound import DialFailed, addr
from .source import hbone_source
from .splice import Splice

log = logging.getLogger("agent.proxy")

Dial = Callable[[Splice, End, tuple[str, int], str], Awaitable[None]]
"""Connect to the app at an address from a client address, and splice (see connect_plain)."""
Authorize = Callable[[Splice, PolicyPeer], Decision]
"""Decide by policy, note it in the record, and keep watching the connection if allowed."""


def plaintext_refused(mesh: MeshContext, pod: Pod) -> str | None:
    if mesh.certs is None:
        return None  # no mesh identities on this agent: nothing but plaintext exists
    snap = mesh.snapshot()
    if mode_for(snap, pod, pod.meta.namespace, mesh.root_namespace) == STRICT:
        return plaintext_refusal(pod.meta.namespace)
    return None


def authorize(mesh: MeshContext, pod: Pod, splice: Splice, peer: PolicyPeer) -> Decision:
    """Decide for a connection to `pod` (as the store has it now: its labels pick the
    policies) and note the decision in the connection's record."""
    snap = mesh.snapshot()
    current = snap.get(pod.key)
    decision = mesh.authz.decide(snap, current if isinstance(current, Pod) else pod, peer)
    splice.record.authz = decision.as_dict()
    return decision


class HboneInbound:
    """Serves the CONNECT streams of one pod's 15008 listener."""

    def __init__(
        self,
        pod: Pod,
        mesh: MeshContext,
        dial: Dial,
        new_splice: Callable[[FlowRecord], Splice],
        authorize: Authorize,
    ) -> None:
        self.pod = pod
        self.mesh = mesh
        self.dial = dial
        self.new_splice = new_splice
        self.authorize = authorize

    async def handle(
        self, stream: H2Stream, request: ConnectRequest, conn: HboneServerConnection
    ) -> None:
        peer = conn.transport.get_extra_info("peername") if conn.transport else None
        if not peer:
            conn.respond(stream, BAD_REQUEST)  # the connection is already gone
            return
        # The app and policy see what the connection proves, never the peer's Forwarded word.
        source = hbone_source((peer[0], peer[1]), request)
        client = source.addr
        record = FlowRecord(
            direction="inbound",
            src=addr(client),
            dst=addr(request.destination),
            node=self.mesh.node,
            transport="hbone",
            src_identity=conn.peer_identity,
            dst_identity=str(self.mesh.identity(self.pod)),
            src_claim=source.ignored,
            traceparent=request.traceparent,
        )
        snap = self.mesh.snapshot()
        src_pod = snap.find_pod(client[0])
        record.src_workload = f"{src_pod.meta.namespace}/{src_pod.meta.name}" if src_pod else None
        record.dst_workload = f"{self.pod.meta.namespace}/{self.pod.meta.name}"
        record.upstream = addr(request.destination)
        splice = self.new_splice(record)
        stream.attach(splice)
        splice.client = stream

        def refuse(status: int, outcome: str, detail: str) -> None:
            splice.record.finish(outcome, detail)  # before the answer closes the stream
            conn.respond(stream, status)
            splice.abort(outcome, detail)

        where = target_refusal(request.destination, self.pod.ip)
        if where:
            conn.note("connect_targets_refused", where)
            refuse(BAD_REQUEST, "bad_request", where)
            return
        peer = PolicyPeer.from_spiffe(client[0], conn.peer_identity, *request.destination)
        decision = self.authorize(splice, peer)
        if not decision.allow:
            refuse(DENIED, "denied", decision.reason)
            return
        try:
            await self.dial(splice, stream, request.destination, client[0])
        except DialFailed as exc:
            refuse(UNAVAILABLE, exc.outcome, exc.detail)
            return
        conn.respond(stream, OK)
