"""One peer cannot stall the agent: HTTP/2 attacks, carried out for real against an HBONE server.

The server is test_hbone's (the agent's accept loop, TLS with client certificates, the
inbound handler delivering to an echo app on loopback). The attacker is an HTTP/2 client
we did not write: the `h2` library where it can express the attack, hyperframe's frames
where it cannot, on a raw TLS socket with a mesh certificate of its own. Each test checks
the effect from outside (what the attacker received, what the app saw, the counters an
operator reads in /config_dump) and that an unrelated connection on the same server
completed an echo after the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from agent.hbone import client as hbone
from agent.hbone import codec, endpoint
from agent.hbone.limits import ConnectionLimits, HboneGuard, Limits, PeerLimits
from agent.identity import tls
from agent.identity.certs import SpiffeId
from tests.functional.test_hbone import (
    DB,
    TD,
    WEB,
    Server,
    authority,
    echo_once,
    mint,
    pipe,
)

ATTACKER = SpiffeId(TD, "shop", "attacker")


def make_server(tmp_path, **limits) -> Server:
    return Server(authority(tmp_path / "ca"), HboneGuard(Limits(**limits)))


@pytest.fixture
async def server(tmp_path):
    s = make_server(tmp_path)
    await s.start()
    yield s
    await s.stop()


@contextlib.asynccontextmanager
async def running(s: Server):
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


class Attacker:
    """A raw TLS connection to the server with the h2 library on top, blocking (run it in a
    thread: the server shares the test's event loop). Frames it receives are parsed with
    hyperframe, not h2, so the attacker can break the protocol and still read the answers."""

    def __init__(
        self,
        server: Server,
        ident: SpiffeId = ATTACKER,
        alpn: list[str] | None = None,
        rcvbuf: int | None = None,
        handshake_after: float = 0.0,
    ) -> None:
        cert, key = mint(server.auth, ident)
        ctx = tls.client_context(
            server.auth.roots.bundle_pem(),
            [cert],
            key,
            alpn=[tls.ALPN_H2] if alpn is None else alpn,
        )
        sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the TCP window stays that small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", server.port))
        time.sleep(handshake_after)  # a slow client: TCP first, TLS a while later
        self.tls = ctx.wrap_socket(sock, server_hostname=None)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                header_encoding="utf-8",
            )
        )
        self.decoder = hpack.Decoder()
        self._buf = b""

    def preface(self) -> Attacker:
        self.h2.initiate_connection()
        self.send()
        return self

    def send(self, raw: bytes = b"") -> None:
        self.tls.sendall(self.h2.data_to_send() + raw)

    def blast(self, raw: bytes = b"") -> None:
        """Send a flood. The server may close while it is still arriving: what it said before
        (its GOAWAY) is still there to read."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            self.send(raw)

    def connect(self, sid: int, port: int, end_stream: bool = False) -> None:
        self.h2.send_headers(
            sid,
            [(":method", "CONNECT"), (":authority", f"127.0.0.1:{port}")],
            end_stream=end_stream,
        )

    def frames(self):
        """Frames as they arrive, until the server closes the connection."""
        while True:
            while len(self._buf) >= 9:
                frm, length = Frame.parse_frame_header(memoryview(self._buf[:9]), strict=False)
                if len(self._buf) < 9 + length:
                    break
                frm.parse_body(memoryview(self._buf[9 : 9 + length]))
                self._buf = self._buf[9 + length :]
                yield frm
            try:
                chunk = self.tls.recv(1 << 16)
            except (ConnectionResetError, ssl.SSLError):
                return
            if not chunk:
                return
            self._buf += chunk

    def goaway(self) -> GoAwayFrame | None:
        """Read until the GOAWAY (or the end: None)."""
        return next((f for f in self.frames() if isinstance(f, GoAwayFrame)), None)

    def answers(self, n: int) -> dict[int, str]:
        """The first answer to each of `n` streams: `:status`, or `reset:<code>`."""
        got: dict[int, str] = {}
        for f in self.frames():
            if isinstance(f, HeadersFrame):
                status = dict(self.decoder.decode(f.data)).get(":status", "?")
                got.setdefault(f.stream_id, status)
            elif isinstance(f, RstStreamFrame):
                got.setdefault(f.stream_id, f"reset:{f.error_code}")
            if len(got) >= n:
                break
        return got

    def read_to_end(self) -> bytes:
        out = b""
        with contextlib.suppress(OSError):
            while chunk := self.tls.recv(1 << 16):
                out += chunk
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()


async def in_thread(fn):
    return await asyncio.wait_for(asyncio.to_thread(fn), 40)


class Bystander:
    """An unrelated client (another identity) with a tunnel to the app, open before the attack:
    `still_served` has it complete an echo afterwards, and opens a new connection too."""

    @classmethod
    async def open(cls, server: Server) -> Bystander:
        self = cls()
        self.conn = await server.connect()
        self.stream = await self.conn.open_stream(server.headers())
        self.out = pipe(self.stream)
        return self

    async def echo(self, payload: bytes) -> bytes:
        self.out.data.clear()
        self.stream.write(payload)
        while len(self.out.data) < len(payload):
            self.out.more.clear()
            await asyncio.wait_for(self.out.more.wait(), 10)
        return bytes(self.out.data)


async def bystander(server: Server) -> Bystander:
    return await Bystander.open(server)


async def still_served(server: Server, by: Bystander) -> None:
    assert by.conn.usable, "the bystander's connection is still open"
    assert await by.echo(b"still served") == b"still served"
    fresh = await server.connect()
    assert await echo_once(fresh, server, b"new ones too") == b"new ones too"


def hung_port() -> tuple[socket.socket, list[socket.socket]]:
    """A real app that never accepts: its listen queue is full, so the kernel drops further
    SYNs and a dial to it hangs until the server's connect timeout."""
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(app.getsockname())
        fillers.append(c)
    return app, fillers


def counters(server: Server) -> dict[str, int]:
    return server.guard.status()["counters"]  # type: ignore[return-value]


# ------------------------------------------------------------------ streams thrown away


async def test_rapid_reset_dials_nothing_and_gets_goaway(server):  # CVE-2023-44487
    good = await bystander(server)
    dials_before = server.dials

    def attack() -> GoAwayFrame | None:
        a = Attacker(server).preface()
        for i in range(3000):
            sid = 1 + 2 * i
            a.connect(sid, server.app_port)
            a.h2.reset_stream(sid)
        a.blast()
        try:
            return a.goaway()
        finally:
            a.close()

    goaway = await in_thread(attack)
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert b"reset before they were answered" in goaway.additional_data
    assert counters(server)["flood_resets"] == 1
    # Streams reset in the same read as their HEADERS never reach the app; at most the
    # few whose HEADERS and RST_STREAM straddled two reads were dialled, then cancelled.
    assert server.dials - dials_before < 100, server.dials
    await still_served(server, good)


async def test_a_reset_stream_cancels_its_dial(server):
    app, fillers = hung_port()
    try:
        good = await bystander(server)

        def open_streams(a: Attacker) -> None:
            for i in range(50):
                a.connect(1 + 2 * i, app.getsockname()[1])
            a.send()

        a = await in_thread(lambda: Attacker(server).preface())  # the handshake needs the loop
        await in_thread(lambda: open_streams(a))
        await wait_for(lambda: server.dials >= 50, "50 dials in flight")

        def reset_all() -> None:
            for i in range(50):
                a.h2.reset_stream(1 + 2 * i)
            a.send()

        await in_thread(reset_all)
        await wait_for(lambda: counters(server)["dials_cancelled"] == 50, "the dials cancelled")
        (conn,) = [c for c in server.conns if c.peer_identity == str(ATTACKER)]
        assert conn._tasks == {} and conn.streams == {}
        assert server.guard.held(str(ATTACKER)) == (1, 0)
        a.close()
        await still_served(server, good)
    finally:
        app.close()
        for c in fillers:
            c.close()


async def test_streams_past_the_pending_dial_limit_are_refused(tmp_path):
    limits = ConnectionLimits(max_pending_dials=20)
    app, fillers = hung_port()
    async with running(make_server(tmp_path, connection=limits)) as server:
        good = await bystander(server)

        def attack() -> dict[int, str]:
            a = Attacker(server).preface()
            for i in range(30):
                a.connect(1 + 2 * i, app.getsockname()[1])
            a.send()
            try:
                return a.answers(10)
            finally:
                a.close()

        answers = await in_thread(attack)
        assert sorted(answers) == [41 + 2 * i for i in range(10)]
        assert set(answers.values()) == {f"reset:{codec.REFUSED_STREAM}"}
        assert counters(server)["pending_dials_refused"] == 10
        assert server.dials == 20 + 1, "(+ the bystander's)"
        await still_served(server, good)
    app.close()
    for c in fillers:
        c.close()


async def test_made_you_reset_is_a_flood(server):  # CVE-2025-8671
    """The attacker makes the server reset its streams: DATA after it ended each one."""
    good = await bystander(server)
    dials_before = server.dials

    def attack() -> GoAwayFrame | None:
        a = Attacker(server).preface()
        raw = b""
        for i in range(2000):
            sid = 1 + 2 * i
            a.connect(sid, server.app_port, end_stream=True)
            raw += a.h2.data_to_send() + DataFrame(sid, b"x").serialize()
        a.blast(raw)
        try:
            return a.goaway()
        finally:
            a.close()

    goaway = await in_thread(attack)
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_resets"] == 1
    assert counters(server)["stream_errors"] > 0
    assert server.dials - dials_before < 100
    await still_served(server, good)


# ------------------------------------------------------------------ per identity


async def test_one_identity_holds_a_bounded_share(tmp_path):
    peers = PeerLimits(max_connections_per_identity=3, max_streams_per_identity=30)
    async with running(make_server(tmp_path, peers=peers)) as server:
        good = await bystander(server)
        attackers = [await in_thread(lambda: Attacker(server).preface()) for _ in range(3)]

        def open_many(a: Attacker) -> dict[int, str]:
            for i in range(20):
                a.connect(1 + 2 * i, server.app_port)
            a.send()
            return a.answers(20)

        answers = {}
        for n, a in enumerate(attackers):
            answers |= {
                (n, sid): v for sid, v in (await in_thread(lambda a=a: open_many(a))).items()
            }
        assert sorted(answers.values()).count("200") == 30
        assert sorted(answers.values()).count(f"reset:{codec.REFUSED_STREAM}") == 30
        assert counters(server)["identity_streams_refused"] == 30
        peer = next(p for p in server.guard.status()["peers"] if p["identity"] == str(ATTACKER))
        assert (peer["connections"], peer["streams"]) == (3, 30)
        assert len(server.app_peers) == 30 + 1, "the app saw the streams let in (+ bystander's)"

        def fourth() -> GoAwayFrame | None:
            a = Attacker(server).preface()
            try:
                return a.goaway()
            finally:
                a.close()

        goaway = await in_thread(fourth)
        assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
        assert b"holds 3 connections" in goaway.additional_data
        assert counters(server)["identity_connections_refused"] == 1
        await still_served(server, good)
        for a in attackers:
            a.close()
        await wait_for(lambda: server.guard.held(str(ATTACKER)) == (0, 0), "the slots freed")


# ------------------------------------------------------------------ frame floods


def flood(server: Server, raw: bytes) -> GoAwayFrame | None:
    a = Attacker(server).preface()
    try:
        a.blast(raw)
        return a.goaway()
    finally:
        a.close()


async def test_a_ping_flood_gets_goaway(server):  # CVE-2019-9512
    good = await bystander(server)
    goaway = await in_thread(lambda: flood(server, PingFrame(0, b"12345678").serialize() * 5000))
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_control_frames"] == 1
    await still_served(server, good)


async def test_a_settings_flood_gets_goaway(server):  # CVE-2019-9515
    good = await bystander(server)

    def attack() -> GoAwayFrame | None:
        a = Attacker(server).preface()
        for _ in range(3000):
            a.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        try:
            a.blast()
            return a.goaway()
        finally:
            a.close()

    goaway = await in_thread(attack)
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_control_frames"] == 1
    await still_served(server, good)


async def test_a_flood_from_a_peer_that_reads_nothing_is_cut_off(server):
    """Answers it never reads are bounded: the GOAWAY comes after the burst either way."""
    good = await bystander(server)
    a = await in_thread(lambda: Attacker(server).preface())
    try:
        await in_thread(lambda: a.blast(PingFrame(0, b"12345678").serialize() * 5000))
        # Open until the server has read the flood: closing with its PONGs unread sends a
        # reset, and a reset discards what the server had not read yet on a busy machine.
        await wait_for(lambda: counters(server)["flood_control_frames"] == 1, "the flood detected")
    finally:
        a.close()
    await still_served(server, good)


async def test_oversized_settings_get_goaway(server):  # CVE-2020-11080
    good = await bystander(server)
    settings = SettingsFrame(0)
    settings.settings = {0x100 + i: i for i in range(200)}  # unknown settings, ignored one by one
    goaway = await in_thread(lambda: flood(server, settings.serialize()))
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_settings_entries"] == 1
    await still_served(server, good)


async def test_endless_empty_continuations_get_goaway(server):  # CVE-2024-27316 family
    good = await bystander(server)
    headers = HeadersFrame(1)
    headers.data = hpack.Encoder().encode([(":method", "CONNECT")])
    raw = headers.serialize() + ContinuationFrame(1).serialize() * 10000
    goaway = await in_thread(lambda: flood(server, raw))
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert b"CONTINUATION" in goaway.additional_data
    assert counters(server)["flood_continuations"] == 1
    assert server.dials == 1, "only the bystander's"
    await still_served(server, good)


async def test_empty_data_frames_get_goaway(server):  # CVE-2019-9518
    good = await bystander(server)

    def attack() -> GoAwayFrame | None:
        a = Attacker(server).preface()
        a.connect(1, server.app_port)
        a.send()
        assert a.answers(1) == {1: "200"}
        try:
            a.blast(DataFrame(1).serialize() * 5000)
            return a.goaway()
        finally:
            a.close()

    goaway = await in_thread(attack)
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_control_frames"] == 1
    await still_served(server, good)


async def test_a_window_update_flood_gets_goaway(server):
    good = await bystander(server)
    raw = WindowUpdateFrame(0, 1).serialize() * 5000
    goaway = await in_thread(lambda: flood(server, raw))
    assert goaway is not None and goaway.error_code == codec.ENHANCE_YOUR_CALM
    assert counters(server)["flood_window_updates"] == 1
    await still_served(server, good)


# ------------------------------------------------------------------ malformed header blocks


MALFORMED = {
    "uppercase-name": [("x-Upper", "1")],
    "connection": [("connection", "keep-alive")],
    "keep-alive": [("keep-alive", "5")],
    "transfer-encoding": [("transfer-encoding", "chunked")],
    "upgrade": [("upgrade", "websocket")],
    "proxy-connection": [("proxy-connection", "close")],
    "te-gzip": [("te", "gzip")],
    "unknown-pseudo": [(":protocol", "websocket")],
    "value-with-lf": [("x-bad", "a\nb")],
}


@pytest.mark.parametrize("extra", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_header_blocks_are_reset_with_protocol_error(server, extra):
    good = await bystander(server)

    def attack() -> dict[int, str]:
        a = Attacker(server).preface()
        fields = [(":method", "CONNECT"), (":authority", f"127.0.0.1:{server.app_port}")]
        a.h2.send_headers(1, [*fields, *extra])
        a.connect(3, server.app_port)  # a good stream on the same connection
        a.send()
        try:
            return a.answers(2)
        finally:
            a.close()

    answers = await in_thread(attack)
    assert answers == {1: f"reset:{codec.PROTOCOL_ERROR}", 3: "200"}
    assert counters(server)["malformed_headers"] == 1
    assert server.dials == 2, "only the good streams dialled (+ the bystander's)"
    await still_served(server, good)


async def test_pseudo_headers_after_regular_ones_are_reset(server):
    def attack() -> dict[int, str]:
        a = Attacker(server).preface()
        a.h2.send_headers(
            1,
            [("forwarded", 'for="1.2.3.4:5"'), (":method", "CONNECT"),
             (":authority", f"127.0.0.1:{server.app_port}")],
        )  # fmt: skip
        a.send()
        try:
            return a.answers(1)
        finally:
            a.close()

    assert await in_thread(attack) == {1: f"reset:{codec.PROTOCOL_ERROR}"}
    assert server.dials == 0
    assert counters(server)["malformed_headers"] == 1


# ------------------------------------------------------------------ CONNECT targets


@pytest.mark.parametrize("port", [15001, 15006, 15008, 15000, 15020, 15021])
async def test_a_connect_to_a_mesh_port_is_refused_at_once(server, port):
    good = await bystander(server)

    def attack() -> dict[int, str]:
        a = Attacker(server).preface()
        a.connect(1, port)
        a.send()
        try:
            return a.answers(1)
        finally:
            a.close()

    assert await in_thread(attack) == {1: "400"}
    assert server.dials == 1, "only the bystander's stream dialled"
    await wait_for(lambda: server.records, "the access record")
    rec = server.records[-1]
    assert rec.outcome == "bad_request" and "mesh port" in rec.detail
    assert counters(server)["connect_targets_refused"] == 1
    await still_served(server, good)


# ------------------------------------------------------------------ connections that do nothing


QUICK = ConnectionLimits(
    preface_timeout=0.3, idle_timeout=0.5, keepalive_interval=0.3, keepalive_timeout=0.6
)


async def test_a_client_without_alpn_h2_is_refused(tmp_path):
    async with running(make_server(tmp_path)) as server:
        good = await bystander(server)
        for alpn in (["http/1.1"], []):

            def attack(alpn=alpn) -> bytes:
                a = Attacker(server, alpn=alpn)
                a.tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
                try:
                    return a.read_to_end()
                finally:
                    a.close()

            assert await in_thread(attack) == b"", "closed without a word of HTTP/2"
        assert counters(server)["alpn_refused"] == 2
        await still_served(server, good)


async def test_a_client_that_sends_nothing_is_closed_after_the_preface_timeout(tmp_path):
    async with running(make_server(tmp_path, connection=QUICK)) as server:
        good = await bystander(server)

        def attack() -> bytes:
            a = Attacker(server)  # the TLS handshake, then silence
            try:
                return a.read_to_end()
            finally:
                a.close()

        await in_thread(attack)  # returns: the server closed it
        assert counters(server)["preface_timeouts"] == 1
        await still_served(server, good)


async def test_the_preface_timeout_starts_after_a_slow_tls_handshake(tmp_path):
    """A client slow to start TLS still has the whole preface timeout after its handshake."""
    # (the margins are seconds, not tenths: a loaded machine may stall a thread that long)
    limits = ConnectionLimits(preface_timeout=3.0)
    async with running(make_server(tmp_path, connection=limits)) as server:

        def slow_client() -> dict[int, str]:
            a = Attacker(server, handshake_after=4.0)  # longer than the whole timeout
            time.sleep(0.3)  # within the timeout, counted from the handshake
            a.preface()
            a.connect(1, server.app_port)
            a.send()
            try:
                return a.answers(1)
            finally:
                a.close()

        assert await in_thread(slow_client) == {1: "200"}
        assert counters(server)["preface_timeouts"] == 0


async def test_a_connection_without_streams_is_closed_when_idle(tmp_path):
    async with running(make_server(tmp_path, connection=QUICK)) as server:

        def attack() -> GoAwayFrame | None:
            a = Attacker(server).preface()
            try:  # answer the server's keepalive PINGs, open no stream
                for f in a.frames():
                    if isinstance(f, PingFrame) and "ACK" not in f.flags:
                        a.send(PingFrame(0, f.opaque_data, flags=["ACK"]).serialize())
                    if isinstance(f, GoAwayFrame):
                        return f
                return None
            finally:
                a.close()

        goaway = await in_thread(attack)
        assert goaway is not None and goaway.error_code == codec.NO_ERROR
        assert b"no stream for 0.5 s" in goaway.additional_data
        assert counters(server)["idle_timeouts"] == 1
        assert counters(server)["keepalive_timeouts"] == 0, "it answered every PING"


async def test_a_peer_that_answers_no_ping_is_closed(tmp_path):
    async with running(make_server(tmp_path, connection=QUICK)) as server:
        good = await bystander(server)

        def attack() -> list[Frame]:
            a = Attacker(server).preface()
            a.connect(1, server.app_port)  # a tunnel, so the idle timeout does not apply
            a.send()
            try:
                return list(a.frames())
            finally:
                a.close()

        seen = await in_thread(attack)
        assert any(isinstance(f, PingFrame) for f in seen), "the server pinged"
        assert counters(server)["keepalive_timeouts"] == 1
        assert counters(server)["idle_timeouts"] == 0
        await still_served(server, good)


async def test_a_peer_that_reads_nothing_is_cut_off_and_its_buffers_stay_bounded(tmp_path):
    """CVE-2019-9517: the attacker opens its windows wide but reads nothing from TCP while the
    app answers; the server holds bounded buffers, then closes the connection."""
    slow = ConnectionLimits(keepalive_interval=30.0, keepalive_timeout=1.0)
    async with running(make_server(tmp_path, connection=slow)) as server:
        good = await bystander(server)
        a = await in_thread(lambda: Attacker(server, rcvbuf=4096).preface())

        def attack() -> None:
            a.send(WindowUpdateFrame(0, 2**30).serialize())
            chunk = DataFrame(1, b"z" * 16384)
            for sid in range(1, 13, 2):  # 6 tunnels, each sent 3.5 MiB: inside its 4 MiB window
                a.connect(sid, server.app_port)
                a.send(WindowUpdateFrame(sid, 2**30).serialize())
                chunk.stream_id = sid
                a.blast(chunk.serialize() * 224)

        await in_thread(attack)
        (conn,) = [c for c in server.conns if c.peer_identity == str(ATTACKER)]
        await wait_for(lambda: conn._write_paused or conn.closed, "the server's writes to back up")
        # Meanwhile: at most the write buffer's high-water mark plus one frame in TLS, and
        # per stream its own high-water mark plus one read from the app.
        assert conn.transport.get_write_buffer_size() <= (4 << 20) + (1 << 20)
        for stream in conn.streams.values():
            assert stream._out_len <= endpoint.SEND_HIGH_WATER + (1 << 18)
        await wait_for(lambda: counters(server)["write_stalls"] == 1, "the stalled peer cut off")
        await wait_for(lambda: conn.closed, "its connection closed")
        a.close()
        await still_served(server, good)


# ------------------------------------------------------------------ our client: keepalive


class SilentServer:
    """A TLS server with the destination's certificate that speaks the HTTP/2 handshake (h2)
    and then answers PINGs until told to play dead: it keeps the connection, reads nothing."""

    def __init__(self, server: Server) -> None:
        cert, key = mint(server.auth, DB)
        self.ctx = tls.server_context([cert], key, server.auth.roots.bundle_pem(), alpn=["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.pings = 0
        self.dead = False
        self.conns: list[ssl.SSLSocket] = []

    def serve_one(self) -> None:
        raw, _ = self.sock.accept()
        conn = self.ctx.wrap_socket(raw, server_side=True)
        self.conns.append(conn)
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        with contextlib.suppress(OSError):
            while not self.dead and (data := conn.recv(65536)):
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.PingReceived):
                        self.pings += 1
                conn.sendall(h2conn.data_to_send())

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


async def test_a_pooled_connection_whose_peer_stops_answering_is_closed(server):
    quick = HboneGuard(
        Limits(connection=ConnectionLimits(keepalive_interval=0.2, keepalive_timeout=0.5))
    )
    silent = SilentServer(server)
    thread = asyncio.ensure_future(asyncio.to_thread(silent.serve_one))
    try:
        pool = hbone.HbonePool()
        key = hbone.PoolKey("127.0.0.5", str(WEB), str(DB), ("127.0.0.1", silent.port))
        ctx = server.client_context()

        async def dial():
            return await hbone.connect(
                socket.socket, ("127.0.0.1", silent.port), ctx, str(DB), key, guard=quick
            )

        conn = await pool._connection(key, dial)
        await wait_for(lambda: silent.pings >= 3, "three keepalive PINGs answered")
        assert conn.usable and quick.counters["keepalive_timeouts"] == 0, "alive: kept"
        silent.dead = True
        await asyncio.wait_for(conn.lost, 10)
        assert quick.counters["keepalive_timeouts"] == 1
        assert not conn.usable and pool._pick(key) is None, "the pool does not choose it again"
    finally:
        silent.dead = True
        silent.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(thread, 5)


async def test_our_client_refuses_a_server_without_alpn_h2(server):
    cert, key = mint(server.auth, DB)
    ctx = tls.server_context([cert], key, server.auth.roots.bundle_pem(), alpn=["http/1.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def accept() -> None:
        raw, _ = listener.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(raw, server_side=True) as c:
            c.recv(100)

    thread = asyncio.ensure_future(asyncio.to_thread(accept))
    try:
        key_ = hbone.PoolKey("127.0.0.5", str(WEB), str(DB), listener.getsockname())
        with pytest.raises(hbone.TunnelError, match="ALPN h2"):
            await hbone.connect(
                socket.socket, listener.getsockname(), server.client_context(), str(DB), key_
            )
    finally:
        listener.close()
        await asyncio.wait_for(thread, 10)


# ------------------------------------------------------------------ helpers


async def wait_for(pred, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
