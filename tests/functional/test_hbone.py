"""HBONE on loopback with real TLS and CA-issued certificates, via the agent's own inbound handler.

The server side is what an agent runs on a pod's 15008 (accept loop, TLS with client
certificates, HTTP/2 CONNECT, the inbound handler delivering to the app); the app is an
echo server. Nothing is mocked but the pod's namespace (loopback stands in for it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import os
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import pytest

from agent.ca.authority import Authority, RootStore
from agent.hbone import client as hbone
from agent.hbone.limits import HboneGuard
from agent.hbone.protocol import TunnelError, connect_headers
from agent.hbone.server import HboneServerConnection, accept_loop
from agent.identity import tls
from agent.identity.certs import SpiffeId, generate_key
from agent.node.proxy.accesslog import FlowRecord, emit
from agent.node.proxy.context import MeshContext
from agent.node.proxy.inbound import HboneInbound, authorize
from agent.node.proxy.outbound import connect_plain
from agent.node.proxy.splice import Splice
from agent.state import StateStore, StateUpdater, parse_object

TD = "cluster.local"
WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")
APP_CLIENT = ("127.0.0.5", 40000)
"""The address the client connects from and names in Forwarded; the app must see it."""


def client_socket() -> socket.socket:
    """The client's HBONE socket, from APP_CLIENT's address (loopback: any 127/8 is ours)."""
    sock = socket.socket()
    sock.bind((APP_CLIENT[0], 0))
    return sock


def authority(path) -> Authority:
    roots = RootStore(str(path))
    roots.load()
    return Authority(roots, TD, dt.timedelta(days=1))


def mint(auth: Authority, ident: SpiffeId | str, now: dt.datetime | None = None, ttl: float = 3600):
    """A certificate and key for any URI (even a bad one), as a CA would issue it."""
    from agent.identity.certs import issue

    key = generate_key()
    now = now or dt.datetime.now(dt.UTC)
    root = auth.roots.active
    cert = issue(
        issuer_key=root.key,
        issuer_cert=root.cert,
        public_key=key.public_key(),
        uri=str(ident),
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(seconds=ttl),
    )
    return cert, key


class Collector:
    """A splice end the test reads from: collects bytes, notes EOF."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.Event()
        self.closed = False
        self.more = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.more.set()

    def write_eof(self) -> None:
        self.eof.set()

    def close(self) -> None:
        self.closed = True

    def reset(self) -> None:
        self.closed = True
        self.eof.set()

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def pipe(stream) -> Collector:
    """Wire a client stream to a Collector; writes go to stream.write."""
    out = Collector()
    splice = Splice(FlowRecord("test", "", "", "test"), lambda s: None)
    splice.client = out
    stream.attach(splice)
    splice.attach_upstream(stream)
    return out


class Server:
    """An HBONE server for pod `shop/db` at 127.0.0.1, delivering to an echo app."""

    def __init__(self, auth: Authority, guard: HboneGuard | None = None) -> None:
        self.auth = auth
        self.guard = guard or HboneGuard()
        """The agent's limits and counters (its /config_dump `hboneLimits`)."""
        self.dials = 0
        """Connections the server set out to open to the app."""
        self.app_peers: list[tuple[str, int]] = []
        self.records: list[FlowRecord] = []
        self.conns: list = []
        """Every HBONE connection, both sides, closed at stop."""

    async def start(self) -> None:
        async def echo(reader, writer):
            self.app_peers.append(writer.get_extra_info("peername"))
            while data := await reader.read(1 << 20):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            writer.close()

        self.app = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.app_port = self.app.sockets[0].getsockname()[1]
        pod = parse_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {
                    "serviceAccountName": "db",
                    "containers": [{"name": "c", "command": ["x"]}],
                },
                "status": {"podIP": "127.0.0.1", "phase": "Running"},
            }
        )
        store = StateStore()
        self.updater = StateUpdater(store)
        self.updater.apply([pod])
        mesh = MeshContext("n1", lambda: store.snapshot, trust_domain=TD)

        def new_splice(record: FlowRecord) -> Splice:
            return Splice(record, lambda s: (self.records.append(s.record), emit(s.record)))

        async def dial(splice, client, dst, client_ip):
            self.dials += 1
            await connect_plain(splice, client, socket.socket, dst, 2.0, bind=client_ip)

        self.inbound = HboneInbound(
            pod, mesh, dial, new_splice, functools.partial(authorize, mesh, pod)
        )
        cert, key = mint(self.auth, DB)
        self.ctx = tls.server_context([cert], key, self.auth.roots.bundle_pem(), alpn=[tls.ALPN_H2])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

        async def context() -> ssl.SSLContext:
            return self.ctx

        def factory() -> HboneServerConnection:
            conn = HboneServerConnection(self.inbound.handle, TD, self.guard)
            self.conns.append(conn)
            return conn

        self.task = asyncio.create_task(accept_loop(self.listener, context, factory))

    async def stop(self) -> None:
        self.task.cancel()
        for conn in self.conns:
            conn.abort("test over")
        self.listener.close()
        self.app.close()
        await self.app.wait_closed()
        await asyncio.sleep(0.05)

    def client_context(self, ident=WEB, auth: Authority | None = None, **kw) -> ssl.SSLContext:
        cert, key = mint(auth or self.auth, ident, **kw)
        return tls.client_context(self.auth.roots.bundle_pem(), [cert], key, alpn=[tls.ALPN_H2])

    async def connect(self, ctx: ssl.SSLContext | None = None, expected: SpiffeId = DB):
        key = hbone.PoolKey("127.0.0.5", str(WEB), str(expected), ("127.0.0.1", self.port))
        conn = await hbone.connect(
            client_socket,
            ("127.0.0.1", self.port),
            ctx or self.client_context(),
            str(expected),
            key,
        )
        self.conns.append(conn)
        return conn

    def headers(self, port: int | None = None, host: str = "127.0.0.1"):
        return connect_headers((host, port or self.app_port), APP_CLIENT)


@pytest.fixture
async def server(tmp_path):
    s = Server(authority(tmp_path / "ca"))
    await s.start()
    yield s
    await s.stop()


async def echo_once(conn, server, payload: bytes) -> bytes:
    stream = await conn.open_stream(server.headers())
    out = pipe(stream)
    stream.write(payload)
    stream.write_eof()
    await asyncio.wait_for(out.eof.wait(), 10)
    return bytes(out.data)


async def test_a_stream_reaches_the_app_as_the_real_client(server, caplog):
    caplog.set_level(logging.INFO, logger="access")
    conn = await server.connect()
    assert await echo_once(conn, server, b"hello mesh") == b"hello mesh"
    assert server.app_peers[-1][0] == APP_CLIENT[0], "the app sees the client's own address"
    (rec,) = await wait_records(server, 1)
    assert (rec.src_identity, rec.dst_identity) == (f"spiffe://{WEB.principal}", str(DB))
    assert rec.transport == "hbone" and rec.outcome == "ok" and rec.bytes_sent == 10
    assert any(
        r.__dict__.get("src_identity") == str(WEB) for r in caplog.records if r.name == "access"
    )


async def test_a_traceparent_on_the_connect_reaches_the_access_record(server):
    pool = hbone.HbonePool()
    key = hbone.PoolKey("127.0.0.5", str(WEB), str(DB), ("127.0.0.1", server.port))
    ctx = server.client_context()

    async def dial():
        conn = await hbone.connect(socket.socket, ("127.0.0.1", server.port), ctx, str(DB), key)
        server.conns.append(conn)
        return conn

    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = connect_headers(("127.0.0.1", server.app_port), APP_CLIENT, traceparent=trace)
    stream = await pool.stream(key, headers, dial)
    out = pipe(stream)
    stream.write(b"traced")
    stream.write_eof()
    await asyncio.wait_for(out.eof.wait(), 10)
    assert [r.traceparent for r in await wait_records(server, 1)] == [trace]


async def test_many_streams_share_one_pooled_connection(server):
    pool = hbone.HbonePool(max_streams=100)
    key = hbone.PoolKey("127.0.0.5", str(WEB), str(DB), ("127.0.0.1", server.port))
    dials = 0
    ctx = server.client_context()

    async def dial():
        nonlocal dials
        dials += 1
        conn = await hbone.connect(socket.socket, ("127.0.0.1", server.port), ctx, str(DB), key)
        server.conns.append(conn)
        return conn

    async def one(i: int) -> bytes:
        stream = await pool.stream(key, server.headers(), dial)
        out = pipe(stream)
        stream.write(b"x%d" % i)
        stream.write_eof()
        await asyncio.wait_for(out.eof.wait(), 10)
        return bytes(out.data)

    answers = await asyncio.gather(*(one(i) for i in range(40)))
    assert answers == [b"x%d" % i for i in range(40)]
    assert dials == 1
    assert pool.status()[0]["connections"] == 1


async def test_the_pool_caps_streams_per_connection_and_closes_idle_ones(server):
    # (an idle timeout long enough that no stall of a loaded machine passes it before the
    # first sweep below, which must keep the connection)
    pool = hbone.HbonePool(max_streams=2, idle_timeout=3.0)
    key = hbone.PoolKey("127.0.0.5", str(WEB), str(DB), ("127.0.0.1", server.port))
    dialed: list = []
    ctx = server.client_context()

    async def dial():
        conn = await hbone.connect(socket.socket, ("127.0.0.1", server.port), ctx, str(DB), key)
        server.conns.append(conn)
        dialed.append(conn)
        return conn

    streams = [await pool.stream(key, server.headers(), dial) for _ in range(5)]
    outs = [pipe(s) for s in streams]
    assert len(dialed) == 3, "5 open streams at 2 per connection need 3 connections"
    assert [len(c.streams) for c in dialed] == [2, 2, 1]
    for s, out in zip(streams, outs, strict=True):
        s.write(b"bye")
        s.write_eof()
        await asyncio.wait_for(out.eof.wait(), 10)
    pool.close_idle()
    assert len(pool.status()) == 1, "not idle for long enough yet: kept"
    # Polled: the idle time passes, then the next sweep closes them (however late it runs).
    deadline = time.monotonic() + 10
    while pool.status() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pool.close_idle()
    assert pool.status() == []
    assert all(not c.usable for c in dialed), "idle connections are closed"
    again = await pool.stream(key, server.headers(), dial)
    assert len(dialed) == 4, "a new stream after the idle close dials afresh"
    again.reset()


async def test_bulk_transfer_both_ways_respects_flow_control(server):
    conn = await server.connect()
    stream = await conn.open_stream(server.headers())
    out = pipe(stream)
    payload = os.urandom(32 << 20)
    for i in range(0, len(payload), 1 << 20):
        stream.write(payload[i : i + (1 << 20)])
        await asyncio.sleep(0)
    stream.write_eof()
    await asyncio.wait_for(out.eof.wait(), 60)
    assert hashlib.sha256(out.data).digest() == hashlib.sha256(payload).digest()


async def test_unreachable_app_is_503_and_wrong_authority_is_400(server):
    conn = await server.connect()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(TunnelError) as exc:
        await conn.open_stream(server.headers(port))
    assert exc.value.status == 503
    with pytest.raises(TunnelError) as exc:
        await conn.open_stream(server.headers(host="127.0.0.2"))
    assert exc.value.status == 400
    records = await wait_records(server, 2)
    assert [r.outcome for r in records] == ["upstream_refused", "bad_request"]
    assert await echo_once(conn, server, b"still fine") == b"still fine", (
        "the connection keeps serving"
    )


async def test_a_stream_policy_denies_gets_401_and_the_connection_serves_on(server):
    only_api = parse_object(
        {
            "apiVersion": "slipstream.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "only-api", "namespace": "shop"},
            "spec": {"rules": [{"from": [{"source": {"principals": [f"{TD}/ns/shop/sa/api"]}}]}]},
        }
    )
    server.updater.apply([only_api])
    conn = await server.connect()  # as shop/web
    with pytest.raises(TunnelError) as exc:
        await conn.open_stream(server.headers())
    assert exc.value.status == 401
    (rec,) = await wait_records(server, 1)
    assert rec.outcome == "denied" and "shop/only-api" in rec.detail
    assert rec.authz is not None and rec.authz["decision"] == "deny"
    assert server.app_peers == [], "the app never saw the denied connection"
    server.updater.apply(deletes=[only_api.key])
    assert await echo_once(conn, server, b"allowed now") == b"allowed now"
    assert server.records[-1].authz == {
        "decision": "allow",
        "policy": None,
        "rule": None,
        "reason": "allowed: no ALLOW policy applies",
    }


def ip_policy(action: str, field: str, cidr: str) -> object:
    """An AuthorizationPolicy on shop/db deciding by the client's IP (`ipBlocks` or
    `source.ip`)."""
    rule: dict = (
        {"from": [{"source": {"ipBlocks": [cidr]}}]}
        if field == "ipBlocks"
        else {"when": [{"key": "source.ip", "values": [cidr]}]}
    )
    return parse_object(
        {
            "apiVersion": "slipstream.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": f"by-ip-{action.lower()}", "namespace": "shop"},
            "spec": {"action": action, "rules": [rule]},
        }
    )


async def wait_records(server, n: int) -> list[FlowRecord]:
    """The server's access records once there are `n` (each is written when its stream ends)."""
    deadline = time.monotonic() + 15
    while len(server.records) < n:
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited for {n} access records, have {len(server.records)}")
        await asyncio.sleep(0.01)
    return server.records


CLAIMS = [
    'for="127.0.0.1:80"',
    'for="127.0.0.1:{app}"',  # the destination pod's own address (loopback stands in for it)
    'for="10.244.1.3:80"',
    'for="169.254.169.254:80"',
    'for="[::1]:80"',
    'for="[::ffff:127.0.0.9]:80"',
    "for=unknown",
    'for="127.0.0.9:80", for="127.0.0.5:1"',
    "for=127.0.0.9:\u00b2",
]


@pytest.mark.parametrize("claim", CLAIMS)
async def test_a_forwarded_claim_of_another_address_is_ignored(server, claim):
    """The client connects from 127.0.0.5 and claims anything else: the app sees 127.0.0.5,
    the record says what was claimed, and the stream is served (a claim is not an error)."""
    conn = await server.connect()
    headers = [
        (":method", "CONNECT"),
        (":authority", f"127.0.0.1:{server.app_port}"),
        ("forwarded", claim.format(app=server.app_port)),
    ]
    stream = await conn.open_stream(headers)
    out = pipe(stream)
    stream.write(b"hi")
    stream.write_eof()
    await asyncio.wait_for(out.eof.wait(), 10)
    assert bytes(out.data) == b"hi"
    assert server.app_peers[-1][0] == APP_CLIENT[0]
    (rec,) = await wait_records(server, 1)
    assert rec.src.split(":")[0] == APP_CLIENT[0] and rec.outcome == "ok"
    assert rec.src_claim is not None and "ignored" in rec.src_claim


@pytest.mark.parametrize("field", ["ipBlocks", "source.ip"])
async def test_ip_rules_decide_on_the_address_the_connection_proves(server, field):
    """A DENY of the real address holds whatever the client claims; an ALLOW of a claimed
    address lets nobody in on the claim's word."""
    conn = await server.connect()  # from 127.0.0.5

    def claiming(ip: str) -> list[tuple[str, str]]:
        return connect_headers(("127.0.0.1", server.app_port), (ip, 40000))

    deny = ip_policy("DENY", field, "127.0.0.5/32")
    server.updater.apply([deny])
    for ip in ("127.0.0.9", "127.0.0.1", "10.244.1.3"):
        with pytest.raises(TunnelError) as exc:
            await conn.open_stream(claiming(ip))
        assert exc.value.status == 401, ip
    server.updater.apply([ip_policy("ALLOW", field, "127.0.0.9/32")], deletes=[deny.key])
    with pytest.raises(TunnelError) as exc:
        await conn.open_stream(claiming("127.0.0.9"))
    assert exc.value.status == 401
    records = await wait_records(server, 4)
    assert all(r.outcome == "denied" and r.src.startswith("127.0.0.5:") for r in records)
    assert server.app_peers == []
    # Positive control: the proven address itself is allowed by an ALLOW of it.
    server.updater.apply([ip_policy("ALLOW", field, "127.0.0.5/32")])
    assert await echo_once(conn, server, b"proven") == b"proven"


@pytest.mark.parametrize("case", ["other CA", "other trust domain", "expired", "not a workload ID"])
async def test_bad_client_certificates_are_refused(server, tmp_path, case):
    if case == "other CA":
        ctx = server.client_context(auth=authority(tmp_path / "other"))
    elif case == "other trust domain":
        ctx = server.client_context(SpiffeId("evil.example", "shop", "web"))
    elif case == "expired":
        ctx = server.client_context(now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), ttl=60)
    else:
        ctx = server.client_context("spiffe://cluster.local/something/else")
    with pytest.raises(TunnelError):
        conn = await server.connect(ctx)
        await conn.open_stream(server.headers())
    conn = await server.connect()
    assert await echo_once(conn, server, b"ok") == b"ok", "the listener keeps serving others"


async def test_plain_tcp_and_tls_without_client_certificate_are_refused(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    ctx = tls.client_context(server.auth.roots.bundle_pem(), alpn=[tls.ALPN_H2])
    with pytest.raises(TunnelError):
        conn = await server.connect(ctx)
        await conn.open_stream(server.headers())
    conn = await server.connect()
    assert await echo_once(conn, server, b"ok") == b"ok"


async def test_the_client_refuses_a_server_with_another_identity(server):
    with pytest.raises(TunnelError, match="presented"):
        await server.connect(expected=SpiffeId(TD, "shop", "payments"))


# ------------------------------------------------------ malformed HTTP/2, from a raw client


def raw_client(server: Server) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    tls_sock = server.client_context().wrap_socket(sock, server_hostname=None)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            header_encoding="utf-8",
        )
    )
    conn.initiate_connection()
    tls_sock.sendall(conn.data_to_send())
    return tls_sock, conn


def status_of(
    tls_sock: ssl.SSLSocket, conn: h2.connection.H2Connection, stream_id: int
) -> str | None:
    """The stream's :status, `reset:<code>` if the server reset it, `goaway` or None (EOF)."""
    while True:
        data = tls_sock.recv(65536)
        if not data:
            return None
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return dict(event.headers)[":status"]
            if isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                return f"reset:{event.error_code}"
            if isinstance(event, h2.events.ConnectionTerminated):
                return "goaway"
        tls_sock.sendall(conn.data_to_send())


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(":method", "CONNECT")], "reset:1"),
        (
            [
                (":method", "GET"),
                (":authority", "127.0.0.1:1"),
                (":scheme", "https"),
                (":path", "/"),
            ],
            "400",
        ),
        ([(":method", "CONNECT"), (":authority", "127.0.0.1:1"), (":path", "/")], "reset:1"),
        ([(":method", "CONNECT"), (":authority", "not-an-address")], "400"),
        ([(":method", "CONNECT"), (":authority", "127.0.0.1:99999")], "400"),
    ],
    ids=["no-authority", "GET", "path", "bad-authority", "bad-port"],
)
async def test_bad_connect_requests_get_400(server, headers, status):
    """Malformed HTTP/2 (RFC 9113 8.5: CONNECT has :authority and no :path) is a stream
    error PROTOCOL_ERROR; a well-formed request HBONE cannot serve is 400."""

    def run() -> str | None:
        tls_sock, conn = raw_client(server)
        conn.send_headers(1, headers, end_stream=False)
        tls_sock.sendall(conn.data_to_send())
        try:
            return status_of(tls_sock, conn, 1)
        finally:
            tls_sock.close()

    assert await asyncio.to_thread(run) == status
    assert server.dials == 0
    conn = await server.connect()
    assert await echo_once(conn, server, b"ok") == b"ok"


@pytest.mark.parametrize("case", ["garbage after preface", "huge header block"])
async def test_protocol_violations_close_only_that_connection(server, case):
    good = await server.connect()

    def run() -> bytes:
        tls_sock, conn = raw_client(server)
        if case == "garbage after preface":
            tls_sock.sendall(b"\x00\x00\x04\xff\x00\x00\x00\x00\x00garbage-garbage-garbage")
        else:
            conn.send_headers(
                1,
                [(":method", "CONNECT"), (":authority", "127.0.0.1:1")]
                + [(f"x-pad-{i}", "v" * 1000) for i in range(100)],
            )
            tls_sock.sendall(conn.data_to_send())
        received = b""
        try:
            while chunk := tls_sock.recv(65536):
                received += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        tls_sock.close()
        return received

    await asyncio.wait_for(asyncio.to_thread(run), 15)  # returns: the server closed it
    assert await echo_once(good, server, b"unharmed") == b"unharmed"
    fresh = await server.connect()
    assert await echo_once(fresh, server, b"ok") == b"ok"
