"""One peer cannot stall a node's agent: HTTP/2 attacks from a pod, against a real agent.

An attacker pod (outside the mesh, root, as containers often are) holds a mesh identity's
certificate, signed by the lab's CA for node n1 as an agent would have it, and talks HTTP/2
straight to an enrolled pod's :15008 on n2 with an HTTP/2 client we did not write (h2, and
hyperframe's frames where h2 will not break the protocol). Each test checks the effect
from outside: what the attacker received, the connections the app saw (its own log), and
the agent's counters and per-identity table in /config_dump; and that a bystander's
connection through the same agent, open during the attack, still completes an echo.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.common.manifest import load_text
from agent.hbone.limits import ConnectionLimits
from agent.identity.caclient import CAClient
from agent.identity.certs import SpiffeId, ca_identity, generate_key, key_pem, make_csr
from agent.lab import model
from agent.lab.lab import Lab
from tests.lab.labkit import CREATED, access_log, config_dump, new_lab_name, wait_until

PY = sys.executable
"""The interpreter with h2 installed; pods see the same filesystem."""
STREAM_CAP, CONNECTION_CAP = 40, 3


def pod(name: str, ns: str, node: str, command: str, sa: str = "default") -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}}}
        spec:
          nodeName: {node}
          serviceAccountName: {sa}
          restartPolicy: Never
          containers:
          - name: main
            command: {command}
        """)


MANIFEST = (
    textwrap.dedent(f"""\
        apiVersion: slipstream.dev/v1alpha1
        kind: Lab
        metadata: {{name: attacks}}
        spec:
          nodes: [n1, n2]
          mesh:
            agentArgs: [--hbone-max-streams-per-identity, "{STREAM_CAP}",
                        --hbone-max-connections-per-identity, "{CONNECTION_CAP}"]
        ---
        apiVersion: v1
        kind: Namespace
        metadata:
          name: mesh
          labels: {{slipstream.dev/dataplane-mode: ambient}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {{name: plain}}
        """)
    + pod("tcp", "mesh", "n2", '[slipstream, app, tcp-echo, --port, "9000"]', sa="tcp")
    + pod("client", "mesh", "n1", "[sleep, infinity]", sa="client")
    # Its service account on n1 is what lets n1's credential get the attacker's identity.
    + pod("attacker", "mesh", "n1", "[sleep, infinity]", sa="attacker")
    + pod("attacker", "plain", "n1", "[sleep, infinity]")
)

ATTACK = r"""
import json, socket, ssl, sys, time
import h2.config, h2.connection, hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame)

mode, host, certs = sys.argv[1:4]
args = sys.argv[4:]


class Conn:
    def __init__(self, alpn=("h2",), preface=True):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(certs + "/bundle.pem")
        ctx.load_cert_chain(certs + "/cert.pem", certs + "/key.pem")
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        self.tls = ctx.wrap_socket(socket.create_connection((host, 15008), timeout=30))
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False,
            normalize_outbound_headers=False, header_encoding="utf-8"))
        self.decoder = hpack.Decoder()
        self.buf = b""
        if preface:
            self.h2.initiate_connection()
            self.send()

    def send(self, raw=b""):
        try:
            self.tls.sendall(self.h2.data_to_send() + raw)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            pass  # closed by the agent while the flood was arriving: its GOAWAY came first

    def connect(self, sid, port, extra=()):
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", f"{host}:{port}"),
                                   *extra])

    def frames(self):
        while True:
            while len(self.buf) >= 9:
                frm, n = Frame.parse_frame_header(memoryview(self.buf[:9]), strict=False)
                if len(self.buf) < 9 + n:
                    break
                frm.parse_body(memoryview(self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
                yield frm
            try:
                chunk = self.tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return
            if not chunk:
                return
            self.buf += chunk

    def goaway(self):
        for f in self.frames():
            if isinstance(f, GoAwayFrame):
                return {"goaway": f.error_code, "debug": f.additional_data.decode()}
        return {"goaway": None}

    def answers(self, n):
        got = {}
        for f in self.frames():
            if isinstance(f, HeadersFrame):
                got.setdefault(f.stream_id, dict(self.decoder.decode(f.data)).get(":status"))
            elif isinstance(f, RstStreamFrame):
                got.setdefault(f.stream_id, f"reset:{f.error_code}")
            if len(got) >= n:
                break
        return got


def say(**kw):
    print(json.dumps(kw), flush=True)


if mode == "rapid-reset":
    c = Conn()
    for i in range(int(args[1])):
        c.connect(1 + 2 * i, int(args[0]))
        c.h2.reset_stream(1 + 2 * i)
    c.send()
    say(**c.goaway())
elif mode == "continuation":
    c = Conn()
    h = HeadersFrame(1)
    h.data = hpack.Encoder().encode([(":method", "CONNECT")])
    c.send(h.serialize() + ContinuationFrame(1).serialize() * 10000)
    say(**c.goaway())
elif mode == "ping":
    c = Conn()
    c.send(PingFrame(0, b"12345678").serialize() * 5000)
    say(**c.goaway())
elif mode == "settings":
    c = Conn()
    c.send(SettingsFrame(0, settings={3: 100}).serialize() * 5000)
    say(**c.goaway())
elif mode == "hold":
    port, conns, streams = map(int, args)
    held, answers = [], []
    for _ in range(conns):
        c = Conn()
        for i in range(streams):
            c.connect(1 + 2 * i, port)
        c.send()
        answers += list(c.answers(streams).values())
        held.append(c)
    say(answers=answers)
    extra = Conn()
    say(**extra.goaway())
    sys.stdin.readline()
elif mode == "targets":
    c = Conn()
    for i, port in enumerate(args):
        c.connect(1 + 2 * i, int(port))
    c.send()
    got = c.answers(len(args))
    say(answers={port: got.get(1 + 2 * i) for i, port in enumerate(args)})
elif mode == "malformed":
    c = Conn()
    c.connect(1, int(args[0]), [("X-Upper", "1")])
    c.connect(3, int(args[0]), [("connection", "keep-alive")])
    c.send()
    say(answers=c.answers(2))
elif mode == "silent":
    c = Conn(preface=False)  # the handshake, then not a byte: read until the agent closes
    try:
        while c.tls.recv(100):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    say(closed=True)
elif mode == "alpn":
    c = Conn(alpn=("http/1.1",), preface=False)
    c.tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
    data = b""
    try:
        while chunk := c.tls.recv(100):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    say(received=len(data))
"""

BYSTANDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
def echo(word):
    s.sendall(word + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            raise SystemExit("closed")
        got += chunk
    print(got.decode().strip(), flush=True)
echo(b"before")
sys.stdin.readline()
echo(b"after")
"""


@dataclass
class Arena:
    lab: Lab
    certs: str
    """The attacker's certificate, key, trust bundle and script."""


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> Iterator[Arena]:
    """One lab for every attack here (the counters are compared before and after each)."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")  # conftest fails the run under make test
    lab = Lab(new_lab_name())
    CREATED.add(lab.name)
    try:
        lab.up(load_text(MANIFEST, "<hbone attacks>"))
        wait_until(lambda: echo_once(lab), 15, "the tcp echo through the mesh")
        yield Arena(lab, credentials(lab, tmp_path_factory.mktemp("attacker")))
    finally:
        lab.down()


@pytest.fixture
def lab(arena: Arena) -> Lab:
    return arena.lab


def tcp_ip(lab: Lab) -> str:
    return lab.pod("tcp", "mesh").ip


def echo_once(lab: Lab) -> bool:
    script = "import socket,sys; s=socket.create_connection((sys.argv[1], 9000), timeout=5); "
    script += "s.sendall(b'x\\n'); assert s.recv(10) == b'x\\n'"
    return lab.exec("client", [PY, "-c", script, tcp_ip(lab)], namespace="mesh").returncode == 0


def credentials(lab: Lab, where) -> str:
    """mesh/attacker's certificate, as n1's agent would get it from the CA."""
    from agent.common import netns

    with open(f"{lab.dirs.agent('n1')}/ca-token") as f:
        token = f.read().strip()
    with open(f"{lab.dirs.ca}/bundle.pem") as f:
        bundle = f.read()
    ident = SpiffeId("cluster.local", "mesh", "attacker")
    key = generate_key()

    async def sign():
        client = CAClient(("172.30.0.250", 15012), token, ca_identity("cluster.local"))
        return await client.sign(ident, make_csr(key, ident), 600, bundle)

    cert, _ = netns.call_in(model.node_netns(lab.name, "n1"), lambda: asyncio.run(sign()))
    (where / "key.pem").write_bytes(key_pem(key))
    (where / "cert.pem").write_text(cert)
    (where / "bundle.pem").write_text(bundle)
    (where / "attack.py").write_text(ATTACK)
    return str(where)


def attack_argv(arena: Arena, mode: str, *args: str) -> list[str]:
    script = f"{arena.certs}/attack.py"
    argv = [PY, script, mode, tcp_ip(arena.lab), arena.certs, *args]
    return arena.lab.exec_argv(argv, "attacker", "plain")


def attack(arena: Arena, mode: str, *args: str) -> dict:
    res = subprocess.run(
        attack_argv(arena, mode, *args), capture_output=True, text=True, timeout=50, check=False
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


class Bystander:
    """mesh/client's connection to the tcp echo, through both agents, open during an attack."""

    def __init__(self, lab: Lab) -> None:
        self.proc = subprocess.Popen(
            lab.exec_argv([PY, "-c", BYSTANDER, tcp_ip(lab), "9000"], "client", "mesh"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "before", self.proc.stderr

    def still_served(self, lab: Lab) -> None:
        out, err = self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0 and out.strip() == "after", err
        assert echo_once(lab), "a new connection through the same agent is served too"


@pytest.fixture
def bystander(lab) -> Iterator[Bystander]:
    b = Bystander(lab)
    yield b
    if b.proc.poll() is None:
        b.proc.kill()
        b.proc.communicate()


def counters(lab: Lab) -> dict[str, int]:
    return config_dump(lab, "n2")["hboneLimits"]["counters"]


def app_accepted(lab: Lab, ip: str) -> int:
    """Connections the tcp echo app accepted from `ip` (it logs every one)."""
    total = 0
    for path in lab.log_paths("tcp", "mesh"):
        with open(path) as f:
            total += sum(1 for line in f if "accepted " + ip + ":" in line)
    return total


def attacker_ip(lab: Lab) -> str:
    return lab.pod("attacker", "plain").ip


# ------------------------------------------------------------------ the attacks


def test_rapid_reset_dials_nothing_and_gets_goaway(arena, lab, bystander):  # CVE-2023-44487
    before, dialled = counters(lab), app_accepted(lab, attacker_ip(lab))
    got = attack(arena, "rapid-reset", "9000", "5000")
    assert got["goaway"] == 0xB and "reset before they were answered" in got["debug"]
    after = counters(lab)
    assert after["flood_resets"] == before["flood_resets"] + 1
    # 5,000 had each dialled the app; now a stream reset in the read that opened it never
    # reaches it, and the rest were cut off by the reset budget.
    assert app_accepted(lab, attacker_ip(lab)) - dialled < 100
    bystander.still_served(lab)


@pytest.mark.parametrize(
    ("mode", "counter"),
    [
        ("continuation", "flood_continuations"),  # CVE-2024-27316 family
        ("ping", "flood_control_frames"),  # CVE-2019-9512
        ("settings", "flood_control_frames"),  # CVE-2019-9515
    ],
)
def test_frame_floods_get_goaway(arena, lab, bystander, mode, counter):
    before = counters(lab)
    got = attack(arena, mode)
    assert got["goaway"] == 0xB, got
    assert counters(lab)[counter] == before[counter] + 1
    bystander.still_served(lab)


def test_one_identity_holds_a_bounded_share_of_the_agent(arena, lab, bystander):
    before = counters(lab)
    proc = subprocess.Popen(
        attack_argv(arena, "hold", "9000", str(CONNECTION_CAP), "20"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        answers = json.loads(proc.stdout.readline())["answers"]
        assert answers.count("200") == STREAM_CAP
        assert answers.count("reset:7") == 3 * 20 - STREAM_CAP, "REFUSED_STREAM beyond the cap"
        fourth = json.loads(proc.stdout.readline())
        assert fourth["goaway"] == 0xB and f"holds {CONNECTION_CAP} connections" in fourth["debug"]
        peers = config_dump(lab, "n2")["hboneLimits"]["peers"]
        held = next(
            p for p in peers if p["identity"] == "spiffe://cluster.local/ns/mesh/sa/attacker"
        )
        assert (held["connections"], held["streams"]) == (CONNECTION_CAP, STREAM_CAP)
        after = counters(lab)
        assert after["identity_streams_refused"] - before["identity_streams_refused"] == 20
        assert after["identity_connections_refused"] == before["identity_connections_refused"] + 1
        bystander.still_served(lab)
    finally:
        proc.communicate("\n", timeout=30)

    def released() -> bool:
        peers = config_dump(lab, "n2")["hboneLimits"]["peers"]
        return all(not p["identity"].endswith("/sa/attacker") for p in peers)

    wait_until(released, 10, "the attacker's slots to be freed")


def test_a_connect_to_the_pods_mesh_ports_is_refused_at_once(arena, lab, bystander):
    """It used to hang unanswered for the 5 s connect timeout, then 503."""
    since = time.time()
    before = counters(lab)
    ports = ["15001", "15006", "15008", "15000", "15020", "15021"]
    got = attack(arena, "targets", *ports)
    assert got["answers"] == dict.fromkeys(ports, "400")
    assert counters(lab)["connect_targets_refused"] == before["connect_targets_refused"] + 6

    def records() -> list[dict]:
        return [
            r
            for r in access_log(lab, "n2", since)
            if r["outcome"] == "bad_request" and "mesh port" in r["detail"]
        ]

    assert len(wait_until(records, 15, "the refusals in the access log")) == 6
    bystander.still_served(lab)


def test_malformed_header_blocks_are_reset(arena, lab, bystander):
    before, dialled = counters(lab), app_accepted(lab, attacker_ip(lab))
    got = attack(arena, "malformed", "9000")
    assert got["answers"] == {"1": "reset:1", "3": "reset:1"}, "PROTOCOL_ERROR, stream by stream"
    assert counters(lab)["malformed_headers"] == before["malformed_headers"] + 2
    assert app_accepted(lab, attacker_ip(lab)) == dialled
    bystander.still_served(lab)


def test_a_tls_connection_that_sends_nothing_is_closed(arena, lab, bystander):
    before = counters(lab)
    got = attack(arena, "silent")
    assert got["closed"], got
    assert counters(lab)["preface_timeouts"] == before["preface_timeouts"] + 1
    bystander.still_served(lab)


def test_a_client_without_alpn_h2_is_refused(arena, lab, bystander):
    before = counters(lab)
    assert attack(arena, "alpn") == {"received": 0}
    assert counters(lab)["alpn_refused"] == before["alpn_refused"] + 1
    bystander.still_served(lab)


@pytest.mark.timeout(150)
def test_a_pooled_connection_to_a_frozen_agent_is_dropped(lab):
    """n2's agent stops answering (SIGSTOP: a hung node); n1's pooled connection to it used to
    stay in the pool unnoticed. Keepalive PINGs find it dead and the pool lets it go."""

    def pooled_to_tcp() -> list[dict]:
        return [e for e in config_dump(lab, "n1")["hbone"] if e["dst"] == f"{tcp_ip(lab)}:15008"]

    by = Bystander(lab)  # a tunnel through the pooled connection, as traffic in flight
    assert pooled_to_tcp(), "the connection is in n1's pool"
    before = config_dump(lab, "n1")["hboneLimits"]["counters"]["keepalive_timeouts"]
    pid = next(
        p["pid"] for p in lab.status()["processes"] if p["kind"] == "agent" and p["name"] == "n2"
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        limits = ConnectionLimits()
        wait_until(
            lambda: (
                config_dump(lab, "n1")["hboneLimits"]["counters"]["keepalive_timeouts"] > before
            ),
            limits.keepalive_interval + limits.keepalive_timeout + 20,
            "n1 to find the connection dead",
        )
        wait_until(lambda: not pooled_to_tcp(), 10, "the dead connection to leave the pool")
    finally:
        os.kill(pid, signal.SIGCONT)
        by.proc.kill()
        by.proc.communicate()
    wait_until(lambda: echo_once(lab), 15, "a new connection once n2's agent is back")
