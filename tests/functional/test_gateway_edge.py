"""The gateway's edge: hot reload, refused configs, TLS per host, WebSocket, and bad clients.

Bad input is sent as raw bytes on a socket: each case must get its 4xx (or a
closed connection) and the gateway must keep serving everybody else.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import sys
import time

import aiohttp
import pytest
import websockets

from .cakit import free_port
from .gwkit import GatewayProc, raw_exchange, self_signed, start_echo, stop


@pytest.fixture(scope="module")
def echoes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-edge")
    a, b = start_echo(tmp, "a"), start_echo(tmp, "b")
    yield a, b
    stop(a.proc)
    stop(b.proc)


def simple(echo, *, workers=2, listener=None, tag="one") -> dict:
    config = {
        "workers": workers,
        "backends": [{"name": "up", "endpoints": [echo.url]}],
        "routes": [
            {
                "name": "all",
                "backendRefs": [{"name": "up"}],
                "filters": [
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"set": [{"name": "x-tag", "value": tag}]},
                    }
                ],
            }
        ],
    }
    if listener is not None:
        config["listeners"] = [listener]
    return config


@pytest.fixture
def gw(tmp_path):
    g = GatewayProc(tmp_path)
    yield g
    g.stop()


async def test_reload_under_load_loses_no_request_and_keeps_connections(echoes, gw):
    a, b = echoes
    gw.start(simple(a))
    failures: list[str] = []
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def client() -> None:
            while not done.is_set():
                try:
                    async with s.get(gw.url("/x")) as r:
                        body = await r.json()
                        if r.status != 200:
                            failures.append(f"{r.status}")
                        seen.append((r.headers["x-tag"], body["server"]))
                except (aiohttp.ClientError, ValueError) as exc:
                    failures.append(repr(exc))

        async def answered_by(tag: str) -> None:  # traffic flowed under this config
            while not any(t == tag for t, _ in seen):
                await asyncio.sleep(0.02)

        # a slow request in flight across the reloads
        slow = asyncio.ensure_future(s.get(gw.url("/slow"), headers={"x-echo-delay": "2.5"}))
        clients = [asyncio.ensure_future(client()) for _ in range(16)]
        await asyncio.wait_for(answered_by("one"), 30)
        for i, echo in enumerate([b, a, b]):
            await asyncio.to_thread(gw.apply, simple(echo, tag=f"v{i + 2}"))
            await asyncio.wait_for(answered_by(f"v{i + 2}"), 30)
        done.set()
        await asyncio.gather(*clients)
        slow_resp = await slow
        assert slow_resp.status == 200
        slow_resp.release()
        async with s.get(gw.url("/after")) as r:  # what serves now, on a kept connection
            assert (r.headers["x-tag"], (await r.json())["server"]) == ("v4", "b")
    assert not failures, failures[:5]
    assert {("one", "a"), ("v2", "b"), ("v3", "a"), ("v4", "b")} <= set(seen)


def read_response(f) -> tuple[bytes, dict[bytes, bytes]]:
    status = f.readline()
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    f.read(int(headers.get(b"content-length", b"0")))
    return status, headers


def test_an_idle_keep_alive_connection_survives_a_reload_and_sees_the_new_config(echoes, gw):
    a, b = echoes
    gw.start(simple(a, workers=1))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = read_response(f)
        assert status.startswith(b"HTTP/1.1 200") and headers[b"x-tag"] == b"one"
        gw.apply(simple(b, workers=1, tag="two"))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = read_response(f)
        assert status.startswith(b"HTTP/1.1 200") and headers[b"x-tag"] == b"two"


async def test_invalid_config_is_refused_with_file_line_field_and_old_one_keeps_serving(echoes, gw):
    a, _ = echoes
    gw.start(simple(a))
    bad = json.loads(json.dumps(simple(a)))
    bad["routes"][0]["backendRefs"] = [{"name": "missing"}]
    live = gw.apply(bad, expect_ok=False)
    err = live["lastError"]
    assert re.search(re.escape(str(gw.config_path)) + r":\d+ ", err), err  # file:line
    assert "routes[0].backendRefs[0].name" in err and "missing" in err
    async with aiohttp.ClientSession() as s, s.get(gw.url("/")) as r:
        assert r.status == 200 and r.headers["x-tag"] == "one"
    live = gw.apply("routes: [this is: not yaml", expect_ok=False)
    assert str(gw.config_path) in live["lastError"]
    assert live["config"]["routes"][0]["name"] == "all"  # /config still shows what serves
    assert gw.get_admin("/healthz")[0] == 200 and gw.get_admin("/ready")[0] == 200
    fixed = gw.apply(simple(a, tag="fixed"))
    assert fixed["lastError"] is None
    async with aiohttp.ClientSession() as s, s.get(gw.url("/")) as r:
        assert r.headers["x-tag"] == "fixed"


def test_a_gateway_with_an_invalid_config_does_not_start(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("listeners:\n- name: web\n  address: 127.0.0.1:80800\nroutes: []\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent", "gateway", "-c", str(path), "--admin",
         f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0
    assert "gateway.yaml:3 " in r.stderr and "listeners[0].address" in r.stderr


async def test_tls_termination_picks_the_certificate_by_sni(echoes, gw, tmp_path):
    a, _ = echoes
    ca, ka = self_signed(tmp_path, "a.test")
    cb, kb = self_signed(tmp_path, "b.test")
    listener = {
        "name": "tls",
        "address": f"127.0.0.1:{gw.port}",
        "tls": {"certificates": [{"hosts": ["a.test"], "cert": ca, "key": ka},
                                 {"hosts": ["b.test", "*.b.test"], "cert": cb, "key": kb}]},
    }  # fmt: skip
    gw.start(simple(a, listener=listener))
    for host, cafile in (("a.test", ca), ("b.test", cb), ("x.b.test", cb)):
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = host != "x.b.test"  # the b.test cert names b.test only
        url = f"https://127.0.0.1:{gw.port}/"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.get(url, server_hostname=host, headers={"Host": host}) as r,
        ):
            assert r.status == 200
            body = await r.json()
            assert body["headers"]["x-forwarded-proto"] == "https"
    # a name with no certificate fails the handshake rather than showing another host's
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", gw.port)) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="a.test.evil")


async def test_websocket_passes_through(echoes, gw):
    a, _ = echoes
    gw.start(simple(a))
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
        for i in range(3):
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"a:hello {i}"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"


LIMITED = {
    "maxUri": 256,
    "maxHeaderBytes": "2KiB",
    "maxHeaders": 20,
    "maxBody": "1KiB",
    "headerTimeout": "1s",
    "idleTimeout": "5s",
}


@pytest.mark.parametrize(
    ("case", "data", "expect"),
    [
        ("garbage request line", b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b" 400 "),
        ("no HTTP version", b"GET /\r\n\r\n", b" 400 "),
        ("bad header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", b" 400 "),
        ("long URI", b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b" 414 "),
        ("big header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n",
         b" 431 "),
        ("many headers", b"GET / HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", b" 431 "),
        ("declared big body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
         b" 413 "),
        ("chunked big body", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n",
         b" 413 "),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", b" 400 "),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b" 400 "),
        ("bad Host", b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", b" 400 "),
        ("smuggling: CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b" 400 "),
    ],
)  # fmt: skip
def test_bad_requests_get_4xx_and_others_keep_being_served(echoes, gw, case, data, expect):
    a, _ = echoes
    listener = {"name": "web", "address": f"127.0.0.1:{gw.port}", "limits": LIMITED}
    gw.start(simple(a, workers=1, listener=listener))
    answer = raw_exchange(gw.port, data)
    assert answer.startswith(b"HTTP/1.1") and expect in answer.split(b"\r\n")[0], (case, answer)
    assert b"connection: close" in answer.lower()
    ok = raw_exchange(gw.port, b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok


def test_slow_clients_are_cut_off_without_slowing_others(echoes, gw):
    a, _ = echoes
    listener = {"name": "web", "address": f"127.0.0.1:{gw.port}", "limits": LIMITED}
    gw.start(simple(a, workers=1, listener=listener))
    slow = []
    for _ in range(50):  # slowloris: many connections, each dribbling a header
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        slow.append(s)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            ok = raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 ")
            for s in slow:
                s.sendall(b"a")  # still trickling: only the deadline can stop it
        for s in slow:
            s.settimeout(30)  # the header deadline answers long before; this bounds a hang
        answers = []
        for s in slow:
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except (TimeoutError, ConnectionResetError):
                pass
            answers.append(data)
        assert all(d.startswith(b"HTTP/1.1 408 ") for d in answers), answers[:3]
    finally:
        for s in slow:
            s.close()
