"""One access-log record per proxied connection, written when it closes.

Records go to the `access` logger, so they share the agent's log stream and
format (`--log-format json` gives one JSON object per line, with `scope: access`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

log = logging.getLogger("access")


@dataclass
class FlowRecord:
    direction: str
    """outbound (captured leaving a pod) or inbound (captured arriving at one)."""
    src: str
    """Client address as ip:port: what the connection proves (for HBONE, see proxy/source.py)."""
    dst: str
    """The original destination as ip:port."""
    node: str
    src_workload: str | None = None
    """namespace/pod of the client, when the store knows the address."""
    dst_workload: str | None = None
    """namespace/pod of the destination, or service/namespace/name for a cluster IP."""
    upstream: str | None = None
    """Where the agent actually connected (differs from dst for a Service)."""
    transport: str = ""
    """hbone or plaintext."""
    src_identity: str | None = None
    """SPIFFE ID of the client workload (from its certificate, on the inbound side)."""
    dst_identity: str | None = None
    """SPIFFE ID of the destination workload."""
    src_claim: str | None = None
    """An HBONE peer's Forwarded claim of another client address, ignored, and why."""
    traceparent: str | None = None
    authz: dict[str, object] | None = None
    """The destination's authorization decision: decision, policy, rule, reason (audit, dryRun)."""
    bytes_sent: int = 0
    """Client to server."""
    bytes_received: int = 0
    """Server to client."""
    outcome: str = "open"
    """ok, or why it ended: upstream_refused, upstream_timeout, upstream_unreachable,
    client_reset, upstream_reset, refused_plaintext, denied (by authorization policy, also when a
    changed policy closes an open connection), no_certificate, hbone_error,
    bad_request, unenrolled, agent_stopping."""
    detail: str = ""
    start_time: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    _start: float = field(default_factory=time.monotonic, repr=False)

    def finish(self, outcome: str, detail: str = "") -> None:
        if self.outcome == "open":
            self.outcome = outcome
            self.detail = detail
        self.duration_ms = round((time.monotonic() - self._start) * 1000, 3)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("_start")
        return d


def emit(record: FlowRecord) -> None:
    log.info("connection closed", extra=record.as_dict())
