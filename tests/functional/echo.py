"""An echo upstream for gateway tests: answers with what it received, as JSON.

    python -m tests.functional.echo --port P --name NAME

Every answer carries the server's name and a sequence number (so a cache hit
shows the number of the response it replays). Request headers steer it:
`x-echo-status` (answer status), `x-echo-delay` (seconds before the head),
`x-echo-header: Name: Value` (repeatable; added to the answer), `x-echo-drop`
(close the connection without answering). `/ws` is a WebSocket echo.
aiohttp, not the gateway's own HTTP code, so the two check each other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

from aiohttp import WSMsgType, web


def app(name: str) -> web.Application:
    seq = itertools.count(1)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def echo(request: web.Request) -> web.StreamResponse:
        n = next(seq)
        if "x-echo-drop" in request.headers:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        delay = float(request.headers.get("x-echo-delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        body = await request.read()
        resp = web.json_response(
            {
                "server": name,
                "n": n,
                "method": request.method,
                "target": request.raw_path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode("latin-1"),
            },
            status=int(request.headers.get("x-echo-status", "200")),
        )
        for spec in request.headers.getall("x-echo-header", []):
            k, _, v = spec.partition(":")
            resp.headers.add(k.strip(), v.strip())
        return resp

    a = web.Application()
    a.router.add_get("/ws", ws)
    a.router.add_route("*", "/{tail:.*}", echo)
    return a


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="echo")
    args = p.parse_args()
    web.run_app(app(args.name), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
