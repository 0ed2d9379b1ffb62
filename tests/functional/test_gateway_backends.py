"""Gateway backends: consistent hashing, least-request, passive ejection and active probes.

Real echo servers and nginx behind one gateway worker (balancing state is per
worker); the admin API's /backends shows what the gateway thinks of each endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from .cakit import free_port
from .gwkit import GatewayProc, start_echo, start_nginx, stop


@pytest.fixture(scope="module")
def echoes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-backends")
    a, b = start_echo(tmp, "a"), start_echo(tmp, "b")
    yield tmp, a, b
    stop(a.proc)
    stop(b.proc)


@pytest.fixture
def gw(tmp_path):
    g = GatewayProc(tmp_path)
    yield g
    g.stop()


def one_route(backend: dict, **route) -> dict:
    return {
        "workers": 1,
        "backends": [backend],
        "routes": [{"name": "r", "backendRefs": [{"name": backend["name"]}], **route}],
    }


async def server_of(s: aiohttp.ClientSession, gw: GatewayProc, headers=None) -> tuple[int, str]:
    async with s.get(gw.url("/"), headers=headers or {}) as r:
        body = await r.read()
        return r.status, json.loads(body)["server"] if r.status == 200 else ""


def endpoint_status(gw: GatewayProc) -> dict[str, dict]:
    workers = json.loads(gw.get_admin("/backends")[1])["workers"]
    return {e["endpoint"]: e for e in workers[0]["backends"][0]["endpoints"]}


@pytest.mark.parametrize("on", ["header", "cookie"])
async def test_consistent_hash_keeps_each_key_on_one_endpoint(echoes, gw, on):
    _, a, b = echoes
    lb = {"hash": {"header": "x-user"}} if on == "header" else {"hash": {"cookie": "session"}}
    gw.start(one_route({"name": "up", "endpoints": [a.url, b.url], "loadBalancer": lb}))
    seen: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            for u in range(30):
                h = {"x-user": f"u{u}"} if on == "header" else {"Cookie": f"x=1; session=s{u}"}
                status, server = await server_of(s, gw, h)
                assert status == 200
                seen.setdefault(str(u), set()).add(server)
    assert all(len(servers) == 1 for servers in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {"a", "b"}  # and the keys spread


async def test_least_request_avoids_the_busy_endpoint(echoes, gw):
    _, a, b = echoes
    gw.start(one_route({"name": "up", "endpoints": [a.url, b.url],
                        "loadBalancer": "least-request"}))  # fmt: skip
    async with aiohttp.ClientSession() as s:
        # The slow request is held by its upstream until the quick ones are done, and they
        # start once the gateway shows it in flight: nothing here depends on how fast they run.
        slow = asyncio.ensure_future(server_of(s, gw, {"x-echo-delay": "8"}))
        deadline = time.monotonic() + 15
        while not any(e["active"] for e in endpoint_status(gw).values()):
            assert time.monotonic() < deadline and not slow.done(), "the slow request in flight"
            await asyncio.sleep(0.05)
        quick = [(await server_of(s, gw))[1] for _ in range(8)]
        assert not slow.done(), "the slow request was still in flight for every quick one"
        busy = (await slow)[1]
    assert busy in ("a", "b")
    assert set(quick) == {"b" if busy == "a" else "a"}, (busy, quick)


async def test_passive_ejection_and_recovery(echoes, gw, tmp_path):
    _, a, _ = echoes
    port, nginx = start_nginx(tmp_path, "failing\n", status=503)
    try:
        failing = f"127.0.0.1:{port}"
        gw.start(one_route(
            {"name": "up", "endpoints": [a.url, f"http://{failing}"],
             "healthCheck": {"passive": {"consecutiveFailures": 2, "ejection": "5s"}}},
            retry={"attempts": 1},
        ))  # fmt: skip
        async with aiohttp.ClientSession() as s:
            first = [(await server_of(s, gw))[0] for _ in range(4)]
            assert first.count(503) == 2  # round robin: the failing endpoint twice, then out
            assert endpoint_status(gw)[failing]["ejected"]
            assert [(await server_of(s, gw))[0] for _ in range(10)] == [200] * 10
            # (all ten within the ejection: else the failing endpoint would have had a turn)
            assert endpoint_status(gw)[failing]["ejected"], "ejection too short for this machine"
            deadline = time.monotonic() + 30
            while endpoint_status(gw)[failing]["ejected"]:  # the ejection ends...
                assert time.monotonic() < deadline, "the ejection did not end"
                await asyncio.sleep(0.1)
            again = [(await server_of(s, gw))[0] for _ in range(4)]  # ...and it is tried again
            assert 503 in again
    finally:
        stop(nginx)


async def test_active_probes_take_a_dead_endpoint_out_and_back(echoes, gw):
    tmp, a, _ = echoes
    port = free_port()
    gw.start(one_route(
        {"name": "up", "endpoints": [a.url, f"http://127.0.0.1:{port}"],
         "healthCheck": {"active": {"path": "/health", "interval": "200ms", "timeout": "200ms",
                                    "unhealthyThreshold": 1, "healthyThreshold": 1}}},
        retry={"attempts": 1},
    ))  # fmt: skip
    dead = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while endpoint_status(gw)[dead]["healthy"]:
        assert time.monotonic() < deadline, "the probe did not mark the endpoint down"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as s:
        assert [(await server_of(s, gw))[1] for _ in range(6)] == ["a"] * 6
        revived = start_echo(tmp, "revived", port)
        try:
            deadline = time.monotonic() + 20
            while not endpoint_status(gw)[dead]["healthy"]:
                assert time.monotonic() < deadline, "the probe did not bring it back"
                await asyncio.sleep(0.1)
            assert {(await server_of(s, gw))[1] for _ in range(6)} == {"a", "revived"}
        finally:
            stop(revived.proc)
