"""Every bound on what one HBONE peer may hold or make this agent do: defaults, and the tally.

One peer must not stall the node. The catalogue this answers is the HTTP/2
denial-of-service CVEs: Netflix's 2019 set (ping flood CVE-2019-9512, resource
loop 9513, reset flood 9514, settings flood 9515, zero-length headers 9516,
internal data buffering 9517, empty frames 9518), Rapid Reset (CVE-2023-44487),
the CONTINUATION floods of April 2024 (CVE-2024-27316 and friends), oversized
SETTINGS (CVE-2020-11080) and MadeYouReset (CVE-2025-8671). Where a peer project
chose a number we take it and say whose it is.

Three layers enforce them:
- `FrameLimits`: the codec (sans-IO: frame counts, and token buckets on the
  time its caller passes in). A flood is a connection error ENHANCE_YOUR_CALM.
- `ConnectionLimits`: one connection's endpoint (timers, dials in flight).
- `PeerLimits`: the whole agent, per peer identity (`HboneGuard`, one per node).

Every limit that triggers is counted in `HboneGuard.counters` (shown in
/config_dump under `hboneLimits`) and logged.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FrameLimits:
    max_continuations: int = 8
    """CONTINUATION frames after one HEADERS (nghttp2's default). The byte limit alone let
    endless empty CONTINUATION frames through (CVE-2024-27316 family)."""
    max_settings_entries: int = 32
    """Entries in one SETTINGS frame (nghttp2's default; CVE-2020-11080)."""
    control_burst: int = 1000
    control_rate: float = 100.0
    """Token bucket (frames, frames/s) for frames that make us answer or carry nothing: PING,
    SETTINGS, PRIORITY, RST_STREAM or HEADERS on a stream already gone, empty DATA or
    CONTINUATION that ends nothing, unknown frame types (CVE-2019-9512, 9513, 9515, 9518).
    A well-behaved peer sends a few a minute (keepalive PINGs every 10 s)."""
    reset_burst: int = 1000
    reset_rate: float = 33.0
    """Token bucket (streams, streams/s) for streams that cost work and were thrown away:
    reset by the peer before we answered them, refused, or reset by us because the peer
    broke the rules on them (Rapid Reset CVE-2023-44487, MadeYouReset CVE-2025-8671,
    9514). nghttp2's defaults. Resets of tunnels that were answered are normal traffic
    (apps close connections with RST) and are not counted."""
    window_update_allowance: int = 100
    window_updates_per_data_frame: int = 10
    """WINDOW_UPDATE frames may number at most allowance + ratio x DATA frames we sent
    (Envoy's max_inbound_window_update_frames_per_data_frame_sent is 10): a peer credits
    data we sent it, so more means a flood (each one on stream 0 wakes every waiting stream)."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_pending_dials: int = 100
    """Streams of one connection whose dial to the app is still in flight; more are refused
    (REFUSED_STREAM). As many as our own client opens per connection (the pool's 100)."""
    preface_timeout: float = 10.0
    """Seconds after the TLS handshake for the client's preface and SETTINGS (a connection that
    sent nothing was kept for ever)."""
    idle_timeout: float = 600.0
    """Seconds a server connection may carry no stream before it is closed (GOAWAY). Longer
    than the pools' own release (ours 60 s, ztunnel's 5 min), so they close first."""
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 20.0
    """After `interval` seconds with nothing received, send a PING; no answer within `timeout`
    and the connection is closed, as is one whose peer has read nothing we sent for `timeout`
    (ztunnel pings every 10 s and waits 20 s). Pooled connections to a dead node went unseen."""


@dataclass(frozen=True)
class PeerLimits:
    max_connections_per_identity: int = 256
    max_streams_per_identity: int = 1024
    """Inbound HBONE connections and open streams one peer SPIFFE identity may hold on this
    agent, across all its pods (`--hbone-max-connections-per-identity`,
    `--hbone-max-streams-per-identity`). Beyond them a connection gets GOAWAY
    ENHANCE_YOUR_CALM and a stream REFUSED_STREAM. One identity had held 4,000 tunnels."""


@dataclass(frozen=True)
class Limits:
    frames: FrameLimits = field(default_factory=FrameLimits)
    connection: ConnectionLimits = field(default_factory=ConnectionLimits)
    peers: PeerLimits = field(default_factory=PeerLimits)


COUNTERS = (
    "alpn_refused",
    "bad_requests",
    "concurrent_streams_refused",
    "connect_targets_refused",
    "dials_cancelled",
    "flood_continuations",
    "flood_control_frames",
    "flood_resets",
    "flood_settings_entries",
    "flood_window_updates",
    "identity_connections_refused",
    "identity_streams_refused",
    "idle_timeouts",
    "keepalive_timeouts",
    "malformed_headers",
    "pending_dials_refused",
    "preface_timeouts",
    "protocol_errors",
    "stream_errors",
    "write_stalls",
)
"""What `HboneGuard.counters` counts; each is listed (at 0) so an operator sees them all."""


class HboneGuard:
    """One per agent: what each peer identity holds, and how often each limit triggered.

    Written only from the event loop; the admin endpoint reads `status()`.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.counters: collections.Counter[str] = collections.Counter()
        self._connections: collections.Counter[str] = collections.Counter()
        self._streams: collections.Counter[str] = collections.Counter()

    def hit(self, counter: str) -> None:
        assert counter in COUNTERS, counter
        self.counters[counter] += 1

    def admit_connection(self, identity: str) -> bool:
        """Take one of `identity`'s connection slots, if it has one left (the caller counts
        and logs a refusal)."""
        if self._connections[identity] >= self.limits.peers.max_connections_per_identity:
            return False
        self._connections[identity] += 1
        return True

    def release_connection(self, identity: str) -> None:
        self._release(self._connections, identity)

    def admit_stream(self, identity: str) -> bool:
        if self._streams[identity] >= self.limits.peers.max_streams_per_identity:
            return False
        self._streams[identity] += 1
        return True

    def release_stream(self, identity: str) -> None:
        self._release(self._streams, identity)

    @staticmethod
    def _release(table: collections.Counter[str], identity: str) -> None:
        table[identity] -= 1
        if table[identity] <= 0:
            del table[identity]

    def held(self, identity: str) -> tuple[int, int]:
        """(connections, streams) that `identity` holds on this agent now."""
        return self._connections[identity], self._streams[identity]

    def status(self) -> dict[str, object]:
        peers = sorted(set(self._connections) | set(self._streams))
        return {
            "limits": asdict(self.limits),
            "counters": {name: self.counters[name] for name in COUNTERS},
            "peers": [
                {
                    "identity": p,
                    "connections": self._connections[p],
                    "streams": self._streams[p],
                }
                for p in peers
            ],
        }
