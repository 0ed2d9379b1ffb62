"""Small workloads for lab pods and the demo: `slipstream app http-echo|tcp-echo|client`.

They stand in for container images. Each reports what it saw of the network
(the peer address the server accepted, the pod that answered), which is how
tests and the demo check the mesh from the application's side.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    app = sub.add_parser(
        "app", parents=parents, help="small workloads for lab pods (echo servers, a client)"
    )
    cmds = app.add_subparsers(dest="app", metavar="APP", required=True)

    p = cmds.add_parser("http-echo", help="HTTP server answering with what it saw, as JSON")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=lambda a: http_echo(a.port))

    p = cmds.add_parser("tcp-echo", help="TCP echo server that logs every peer")
    p.add_argument("--port", type=int, default=9000)
    p.set_defaults(func=lambda a: tcp_echo(a.port))

    p = cmds.add_parser("client", help="call a URL in a loop and print one line per call")
    p.add_argument("--url", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--count", type=int, default=0, help="stop after this many calls (0: never)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument(
        "--start-after",
        type=float,
        default=0.0,
        help="seconds to wait before the first call (lets servers start)",
    )
    p.set_defaults(func=lambda a: client(a.url, a.interval, a.count, a.timeout, a.start_after))


def _say(line: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    sys.stdout.flush()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        local = self.connection.getsockname()
        doc: dict[str, Any] = {
            "pod": os.environ.get("HOSTNAME", socket.gethostname()),
            "namespace": os.environ.get("POD_NAMESPACE", ""),
            "client": peer,
            "server": f"{local[0]}:{local[1]}",
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode(errors="replace"),
        }
        out = (json.dumps(doc) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
        _say(f"{self.command} {self.path} from {peer}")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def http_echo(port: int) -> int:
    server = ThreadingHTTPServer(("0.0.0.0", port), _EchoHandler)
    server.daemon_threads = True
    _say(f"http-echo listening on :{port}")
    server.serve_forever()
    return 0


class _TcpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        _say(f"accepted {peer}")
        total = 0
        while data := self.request.recv(65536):
            self.request.sendall(data)
            total += len(data)
        _say(f"closed {peer} bytes={total}")


class _ThreadingTcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def tcp_echo(port: int) -> int:
    with _ThreadingTcp(("0.0.0.0", port), _TcpEcho) as server:
        _say(f"tcp-echo listening on :{port}")
        server.serve_forever()
    return 0


def client(url: str, interval: float, count: int, timeout: float, start_after: float = 0.0) -> int:
    n = 0
    stop = threading.Event()
    stop.wait(start_after)
    while not stop.is_set():
        n += 1
        start = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                doc = json.loads(resp.read() or b"{}")
            ms = (time.monotonic() - start) * 1000
            _say(
                f"{resp.status} from pod={doc.get('pod', '?')} server={doc.get('server', '?')} "
                f"saw-client={doc.get('client', '?')} {ms:.1f}ms"
            )
        except (OSError, urllib.error.URLError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            _say(f"error calling {url}: {reason}")
        if count and n >= count:
            break
        stop.wait(interval)
    return 0
