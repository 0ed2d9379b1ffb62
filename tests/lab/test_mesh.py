"""The mTLS mesh across nodes, checked from outside: the bytes on the bridge, what apps see,
access-log identities, Services, PeerAuthentication, an HTTP/2 client we did not write,
certificate renewal under live traffic, and a root rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from agent.ca import credentials
from agent.common.manifest import load_text
from agent.identity.caclient import CAClient, CARefused
from agent.identity.certs import SpiffeId, ca_identity, generate_key, key_pem, make_csr
from agent.lab import model
from agent.lab.lab import Lab
from tests.lab.labkit import (
    SEND_MARKER,
    access_log,
    bridge_capture,
    config_dump,
    curl,
    seen,
    wait_until,
)

ECHO = '[slipstream, app, http-echo, --port, "8080"]'
TCP_ECHO = '[slipstream, app, tcp-echo, --port, "9000"]'
SLEEP = "[sleep, infinity]"


def pod(name: str, ns: str, node: str, command: str, sa: str = "default", labels: str = "") -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}, labels: {{name: {name}{labels}}}}}
        spec:
          nodeName: {node}
          serviceAccountName: {sa}
          restartPolicy: Never
          containers:
          - name: main
            command: {command}
        """)


def cluster(mesh_spec: str = "{}") -> str:
    return (
        f"apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {{name: mesh}}\n"
        f"spec: {{nodes: [n1, n2], mesh: {mesh_spec}}}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n"
        "  labels: {slipstream.dev/dataplane-mode: ambient}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n"
        + pod("client", "mesh", "n1", SLEEP, sa="client")
        + pod("server-1", "mesh", "n1", ECHO, sa="server", labels=", app: server")
        + pod("server-2", "mesh", "n2", ECHO, sa="server", labels=", app: server")
        + pod("tcp", "mesh", "n2", TCP_ECHO, sa="tcp")
        + pod("client", "plain", "n1", SLEEP)
        + pod("server", "plain", "n2", ECHO)
        + textwrap.dedent("""\
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: server, namespace: mesh}
            spec:
              selector: {app: server}
              ports: [{name: http, port: 80, targetPort: 8080}]
            """)
    )


def ip(lab: Lab, name: str, ns: str = "mesh") -> str:
    return lab.pod(name, ns).ip


def served(lab: Lab, name: str, ns: str) -> bool:
    return (
        lab.exec(
            "client",
            ["curl", "-s", "-o", "/dev/null", f"http://{ip(lab, name, ns)}:8080/"],
            namespace="plain",
        ).returncode
        == 0
    )


@pytest.fixture
def lab(make_lab) -> Lab:
    lab = make_lab(cluster())
    for name, ns in (("server-1", "mesh"), ("server-2", "mesh"), ("server", "plain")):
        wait_until(lambda n=name, s=ns: served(lab, n, s), 10, f"{ns}/{name} to serve")
    echo = ["python3", "-c", SEND_MARKER, ip(lab, "tcp"), "9000", "ready?"]
    wait_until(
        lambda: lab.exec("client", echo, namespace="mesh").returncode == 0, 10, "tcp to serve"
    )
    return lab


def test_traffic_between_enrolled_pods_crosses_the_bridge_encrypted(lab, tmp_path):
    with bridge_capture(lab, tmp_path / "bridge.pcap") as pcap:
        secret = f"SECRET-{uuid.uuid4().hex}"
        visible = f"VISIBLE-{uuid.uuid4().hex}"
        res = lab.exec(
            "client",
            ["python3", "-c", SEND_MARKER, ip(lab, "tcp"), "9000", secret],
            namespace="mesh",
        )
        assert res.stdout.strip() == secret, res.stderr
        assert curl(lab, "client", f"http://{ip(lab, 'server', 'plain')}:8080/{visible}", "plain")
        # The marker sent after the secret is on the wire, so the secret's packets are too.
        wait_until(lambda: visible.encode() in pcap.read_bytes(), 15, "the visible marker")
    raw = pcap.read_bytes()
    assert visible.encode() in raw, (
        "plaintext between unenrolled pods is visible on the wire (the check works)"
    )
    assert secret.encode() not in raw, (
        "a marker sent between enrolled pods must never appear on the wire"
    )
    assert len(seen(pcap, "tcp port 15008")) > 4, "the enrolled pods' bytes did cross, on 15008"
    assert seen(pcap, "tcp port 9000") == [], "no plaintext 9000 on the bridge"


def test_the_server_sees_the_client_and_the_destination_logs_both_identities(lab):
    since = time.time()
    answer = curl(lab, "client", f"http://{ip(lab, 'server-2')}:8080/", "mesh")
    assert answer["client"].split(":")[0] == ip(lab, "client")

    def inbound():
        return [
            r
            for r in access_log(lab, "n2", since)
            if r["direction"] == "inbound" and r["transport"] == "hbone"
        ]

    (rec,) = wait_until(inbound, 15, "the destination's access-log record")
    assert rec["src_identity"] == "spiffe://cluster.local/ns/mesh/sa/client"
    assert rec["dst_identity"] == "spiffe://cluster.local/ns/mesh/sa/server"
    assert rec["src_workload"] == "mesh/client" and rec["dst_workload"] == "mesh/server-2"
    (out,) = wait_until(
        lambda: [r for r in access_log(lab, "n1", since) if r["direction"] == "outbound"], 15, "out"
    )
    assert out["transport"] == "hbone" and out["dst_identity"] == rec["dst_identity"]


def test_workload_keys_stay_in_the_agents_memory(lab):
    curl(lab, "client", f"http://{ip(lab, 'server-2')}:8080/", "mesh")  # keys exist and are used
    key_files = []
    for root, _, files in os.walk(lab.dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                if b"PRIVATE KEY" in f.read() and "/ca/roots/" not in path:
                    key_files.append(path)
    # The lab API server's own TLS keys (its CA and serving key, as kube-apiserver keeps them):
    # 0600 in a 0700 directory that pods cannot see. No workload key is on disk.
    api_keys = {f"{lab.dir}/apiserver/certs/{n}" for n in ("ca.key", "apiserver.key")}
    assert set(key_files) <= api_keys, "only the CA's root key and the API server's are on disk"
    assert oct(os.stat(f"{lab.dir}/apiserver/certs").st_mode & 0o777) == "0o700"
    for proc in lab.status()["processes"]:
        if proc["kind"] == "agent":
            fd_dir = f"/proc/{proc['pid']}/fd"
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except FileNotFoundError:  # closed meanwhile
                    continue
                assert "memfd:" not in target, "no key memfd is left open"


def test_a_service_spreads_over_both_nodes_and_skips_a_killed_endpoint(lab):
    svc = lab.get("svc", "mesh")[0]["spec"]["clusterIP"]
    seen = [curl(lab, "client", f"http://{svc}:80/", "mesh")["pod"] for _ in range(12)]
    assert set(seen) == {"server-1", "server-2"}, seen
    # Kill server-2's app (the pod stays, so its endpoint stays in the Service).
    pid = lab.get("pod", "mesh")[
        [p["metadata"]["name"] for p in lab.get("pod", "mesh")].index("server-2")
    ]["status"]["containerStatuses"][0]["containerID"]
    pid = int(pid.removeprefix("lab://"))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not served(lab, "server-2", "mesh"), 15, "server-2 to be down")
    # Read right after the call that found it down: an ejection lasts 10 s, which a slow
    # machine could spend on a dozen calls.
    after, ejected = [], []
    for _ in range(12):
        after.append(curl(lab, "client", f"http://{svc}:80/", "mesh")["pod"])
        ejected = ejected or config_dump(lab, "n1")["ejectedEndpoints"]
    assert after == ["server-1"] * 12, "every connection still succeeds, on the live endpoint"
    assert [e["endpoint"] for e in ejected] == [f"{ip(lab, 'server-2')}:8080"]


def test_an_endpoint_that_does_not_answer_costs_one_connect_timeout(lab):
    svc = lab.get("svc", "mesh")[0]["spec"]["clusterIP"]
    # server-2's pod silently drops HBONE SYNs: connecting to it can only time out.
    drop = ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "15008", "-j", "DROP"]
    assert lab.exec("server-2", drop, namespace="mesh").returncode == 0
    answers, took = [], []
    for _ in range(2):  # round robin: one of the two goes to server-2 first
        start = time.monotonic()
        res = lab.exec("client", ["curl", "-sS", "-m", "20", f"http://{svc}:80/"], namespace="mesh")
        took.append(time.monotonic() - start)
        assert res.returncode == 0, res.stderr
        answers.append(json.loads(res.stdout)["pod"])
    assert answers == ["server-1", "server-1"]
    assert max(took) > 4, f"one call waited for the 5 s connect timeout first: {took}"


PA = """\
apiVersion: slipstream.dev/v1alpha1
kind: PeerAuthentication
metadata: {{name: default, namespace: mesh}}
spec:
  mtls: {{mode: {mode}}}
"""


def test_strict_refuses_plaintext_and_permissive_accepts_it(lab):
    url = f"http://{ip(lab, 'server-2')}:8080/"
    outside = f"http://{ip(lab, 'server', 'plain')}:8080/"
    assert curl(lab, "client", url, "plain"), "PERMISSIVE by default"
    assert curl(lab, "client", outside, "mesh")["pod"] == "server", (
        "PERMISSIVE: a mesh pod reaches a pod outside the mesh in plaintext"
    )
    lab.apply(load_text(PA.format(mode="STRICT"), "pa.yaml"))

    def refused() -> bool:
        return (
            lab.exec("client", ["curl", "-sS", "-m", "3", url], namespace="plain").returncode != 0
        )

    wait_until(refused, 15, "STRICT to refuse plaintext")
    since = time.time()
    assert refused()
    recs = wait_until(
        lambda: [r for r in access_log(lab, "n2", since) if r["outcome"] == "refused_plaintext"],
        15,
        "a refused_plaintext record",
    )
    assert "STRICT" in recs[0]["detail"]
    assert curl(lab, "client", url, "mesh")["pod"] == "server-2", (
        "mTLS from enrolled pods still works"
    )
    since = time.time()
    out = lab.exec("client", ["curl", "-sS", "-m", "3", outside], namespace="mesh")
    assert out.returncode != 0, "STRICT: no plaintext out of the mesh either"
    recs = wait_until(
        lambda: [r for r in access_log(lab, "n1", since) if r["outcome"] == "refused_plaintext"],
        15,
        "the source agent's refused_plaintext record",
    )
    assert "not in the mesh" in recs[0]["detail"] and "STRICT" in recs[0]["detail"]
    lab.apply(load_text(PA.format(mode="PERMISSIVE"), "pa.yaml"))
    wait_until(lambda: not refused(), 15, "PERMISSIVE to accept plaintext again")


NODE_CLIENT = """
const http2 = require('http2');
const fs = require('fs');
const [url, authority, dir] = process.argv.slice(2);
const client = http2.connect(url, {
  key: fs.readFileSync(dir + '/key.pem'), cert: fs.readFileSync(dir + '/cert.pem'),
  ca: fs.readFileSync(dir + '/bundle.pem'), checkServerIdentity: () => undefined,
});
client.on('error', (e) => { console.error('ERROR ' + e.message); process.exit(2); });
const req = client.request({':method': 'CONNECT', ':authority': authority});
req.on('response', (h) => {
  console.log('STATUS ' + h[':status']);
  console.log('PEER ' + client.socket.getPeerCertificate().subjectaltname);
  req.write('GET /interop HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
  req.end();
});
let body = '';
req.on('data', (d) => { body += d; });
req.on('end', () => { console.log('BODY ' + body.split('\\r\\n\\r\\n')[1]); client.close(); });
"""


def test_an_http2_client_we_did_not_write_opens_an_hbone_stream(lab, tmp_path):
    """Node.js's http2, with a certificate the lab's CA issued to node n1 for mesh/client."""
    with open(f"{lab.dirs.agent('n1')}/ca-token") as f:
        token = f.read().strip()
    with open(f"{lab.dirs.ca}/bundle.pem") as f:
        bundle = f.read()
    ident = SpiffeId("cluster.local", "mesh", "client")
    key = generate_key()

    async def sign():
        client = CAClient(("172.30.0.250", 15012), token, ca_identity("cluster.local"))
        return await client.sign(ident, make_csr(key, ident), 600, bundle)

    cert, _ = lab_call(lab, "n1", sign)
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "bundle.pem").write_text(bundle)
    (tmp_path / "client.js").write_text(NODE_CLIENT)
    target = ip(lab, "server-2")
    res = lab.exec(
        "client",
        [
            "node",
            str(tmp_path / "client.js"),
            f"https://{target}:15008",
            f"{target}:8080",
            str(tmp_path),
        ],
        namespace="plain",
    )
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    assert lines["STATUS"] == "200"
    assert lines["PEER"] == "URI:spiffe://cluster.local/ns/mesh/sa/server"
    body = json.loads(lines["BODY"])
    assert body["pod"] == "server-2" and body["path"] == "/interop"


def lab_call(lab: Lab, node: str, coro_fn):
    """Run a coroutine from inside a node's namespace (where the CA is reachable)."""
    from agent.common import netns

    return netns.call_in(model.node_netns(lab.name, node), lambda: asyncio.run(coro_fn()))


# Traffic scripts run in a pod until their stdin closes, printing `ok N` per success and
# `FAILED ...` per failure: the test waits for successes after each event it causes instead
# of counting what fits in a time window (a loaded machine fits less, and nothing is wrong).
LONG_CONNECTION = """
import select, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
n = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    s.sendall(b"ping %d\\n" % n)
    got = b""
    while not got.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("FAILED: connection closed after %d echoes" % n)
        got += chunk
    if got != b"ping %d\\n" % n:
        raise SystemExit("FAILED: echo %r" % got)
    n += 1
    print("ok", n, flush=True)
    time.sleep(0.2)
"""

NEW_CONNECTIONS = """
import select, socket, sys, time
n = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
        s.settimeout(20)
        s.sendall(b"hi\\n")
        got = b""
        while not got.endswith(b"\\n"):
            chunk = s.recv(10)
            if not chunk:
                break
            got += chunk
        s.close()
        if got != b"hi\\n":
            raise ValueError("echo %r" % got)
        n += 1
        print("ok", n, flush=True)
    except Exception as e:
        print("FAILED", repr(e), flush=True)
    time.sleep(0.1)
"""


class Traffic:
    """A traffic script (above) running in a pod; a thread tallies what it prints."""

    def __init__(self, lab: Lab, script: str, *args: str, pod: str = "client") -> None:
        self.proc = subprocess.Popen(
            lab.exec_argv(["python3", "-u", "-c", script, *args], pod, "mesh"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ok = 0
        self.failed: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ok "):
                self.ok += 1
            elif line.strip():
                self.failed.append(line.strip())

    def more(self, n: int, what: str) -> None:
        """Wait for `n` more successes; a failure, or the script ending, fails the test."""
        want = self.ok + n
        wait_until(lambda: self.ok >= want or self.failed or self.proc.poll() is not None, 60, what)
        assert not self.failed, (what, self.failed)
        assert self.ok >= want, (what, self.proc.returncode)

    def stop(self) -> str:
        """Close its stdin (it stops after the exchange in progress); its stderr."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return err


def serials(lab: Lab, node: str, identity: str) -> str | None:
    for c in config_dump(lab, node)["certificates"]:
        if c["identity"] == identity:
            return c["serial"]
    return None


@pytest.mark.timeout(180)
def test_certificates_renew_at_half_life_under_live_traffic(make_lab):
    lab = make_lab(cluster("{certificateTTL: 6s, bundleRefresh: 1s}"))
    tcp = ip(lab, "tcp")
    wait_until(
        lambda: (
            lab.exec(
                "client", ["python3", "-c", SEND_MARKER, tcp, "9000", "x"], namespace="mesh"
            ).returncode
            == 0
        ),
        10,
        "tcp echo",
    )
    client_id = "spiffe://cluster.local/ns/mesh/sa/client"
    wait_until(lambda: serials(lab, "n1", client_id), 15, "the client's certificate")
    seen = {serials(lab, "n1", client_id)}

    def renewed() -> str | None:
        serial = serials(lab, "n1", client_id)
        return serial if serial is not None and serial not in seen else None

    # One connection carries echoes before, between and after two renewals (at half-life of
    # 6 s): waited for after each renewal, not counted in a window.
    traffic = Traffic(lab, LONG_CONNECTION, tcp, "9000")
    try:
        traffic.more(3, "echoes before any renewal")
        for i in (1, 2):
            seen.add(wait_until(renewed, 30, f"renewal {i}"))
            traffic.more(3, f"echoes on the same connection after renewal {i}")
    finally:
        err = traffic.stop()
    assert traffic.proc.returncode == 0 and not traffic.failed, (traffic.failed, err)
    new = lab.exec("client", ["python3", "-c", SEND_MARKER, tcp, "9000", "after"], namespace="mesh")
    assert new.stdout.strip() == "after", "new connections use the renewed certificate"


def ca_roots(lab: Lab, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "agent", "ca", "roots", *args, "--root-dir", f"{lab.dirs.ca}/roots"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.timeout(180)
def test_a_root_rotation_fails_no_connection(make_lab):
    ttl = 4.0
    lab = make_lab(cluster(f"{{certificateTTL: {ttl:g}s, bundleRefresh: 1s}}"))
    tcp = ip(lab, "tcp")
    wait_until(
        lambda: (
            lab.exec(
                "client", ["python3", "-c", SEND_MARKER, tcp, "9000", "x"], namespace="mesh"
            ).returncode
            == 0
        ),
        10,
        "tcp echo",
    )
    old = ca_roots(lab, "list").split()[0]
    nodes = ("n1", "n2")

    def bundles(node: str) -> list[int]:
        """The root counts of the agent's trust-bundle updates, in order."""
        with open(lab.agent_log_path(node)) as f:
            recs = [json.loads(ln) for ln in f if "trust bundle updated" in ln]
        return [r["roots"] for r in recs if r.get("msg") == "trust bundle updated"]

    def issued_under(root: str) -> set[str]:
        with open(f"{lab.dirs.logs}/ca.log") as f:
            recs = [json.loads(ln) for ln in f if "certificate issued" in ln]
        return {r["serial"] for r in recs if r.get("root") == root}

    def in_use() -> list[dict]:
        return [c for n in nodes for c in config_dump(lab, n)["certificates"]]

    # New connections, one after another, through every step; after each step the test
    # waits for a few more to succeed, and at the end none may have failed.
    traffic = Traffic(lab, NEW_CONNECTIONS, tcp, "9000")
    try:
        traffic.more(3, "connections before the rotation")
        new = ca_roots(lab, "add").splitlines()[0]
        wait_until(
            lambda: all(2 in bundles(n) for n in nodes), 15, "every agent to trust both roots"
        )
        traffic.more(3, "connections with both roots trusted")
        old_certs = in_use()
        ca_roots(lab, "activate", new)
        # Every certificate in use renewed from the new root, and the old root's expired.
        old_expiry = max(dt.datetime.fromisoformat(c["notAfter"]).timestamp() for c in old_certs)
        wait_until(
            lambda: (
                all(c["serial"] in issued_under(new) for c in in_use()) and time.time() > old_expiry
            ),
            ttl * 4 + 15,
            "every certificate to come from the new root, the old ones expired",
        )
        traffic.more(3, "connections on certificates from the new root")
        updates = {n: len(bundles(n)) for n in nodes}
        ca_roots(lab, "retire", old)
        wait_until(
            lambda: all(1 in bundles(n)[updates[n] :] for n in nodes),
            15,
            "every agent to drop the retired root",
        )
        traffic.more(3, "connections after the old root is retired")
    finally:
        err = traffic.stop()
    assert traffic.failed == [], (traffic.failed, err)
    with open(f"{lab.dirs.logs}/ca.log") as f:
        issued = [json.loads(line) for line in f if "certificate issued" in line]
    assert issued[-1]["root"] == new
    roots = ca_roots(lab, "list")
    assert old not in roots and new in roots


def ca_token(*args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "agent", "ca", "token", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_a_node_credential_rotates_without_restarting_the_agent(make_lab):
    """A new credential written to the agent's token file is used from its next request on;
    the old one is revoked and refused; certificates keep being renewed and traffic flows."""
    lab = make_lab(cluster("{certificateTTL: 4s, bundleRefresh: 1s}"))
    client_id = "spiffe://cluster.local/ns/mesh/sa/client"
    wait_until(lambda: serials(lab, "n1", client_id), 10, "client's certificate")
    token_file = f"{lab.dirs.agent('n1')}/ca-token"
    with open(token_file) as f:
        old_token = f.read().strip()
    (old,) = [r for r in credentials.load_records(lab.dirs.credentials) if r.node == "n1"]
    agent_pid = next(p["pid"] for p in lab.status()["processes"] if p["name"] == "n1")

    out = ca_token("node", "n1", "--ttl", "1h", "--credentials", lab.dirs.credentials,
                   "--out", token_file)  # fmt: skip
    new_id = out.split()[1]
    assert ca_token("revoke", old.id, "--credentials", lab.dirs.credentials).startswith("revoked")
    revoked_at = time.time()

    def renewed_after_revocation() -> bool:
        for c in config_dump(lab, "n1")["certificates"]:
            if c["identity"] == client_id and c["notAfter"]:
                return c["lastError"] == "" and (
                    dt.datetime.fromisoformat(c["notAfter"]).timestamp() > revoked_at + 3.5
                )
        return False

    wait_until(renewed_after_revocation, 15, "a certificate signed with the new credential")
    issued = []
    with open(f"{lab.dirs.logs}/ca.log") as f:
        for line in f:
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("msg") == "certificate issued" and rec.get("node") == "n1":
                issued.append(rec["credential"])
    assert old.id in issued and new_id in issued
    assert issued.index(new_id) > len(issued) - 1 - issued[::-1].index(old.id)
    assert agent_pid == next(p["pid"] for p in lab.status()["processes"] if p["name"] == "n1")
    assert curl(lab, "client", f"http://{ip(lab, 'server-2')}:8080/", "mesh")["pod"] == "server-2"

    async def with_old_token():
        client = CAClient(("172.30.0.250", 15012), old_token, ca_identity("cluster.local"))
        ident = SpiffeId("cluster.local", "mesh", "client")
        with open(lab.dirs.bundle) as f:
            bundle = f.read()
        try:
            await client.sign(ident, make_csr(generate_key(), ident), 60, bundle)
        except CARefused as exc:
            return exc.status, exc.reason
        return 200, ""

    status, reason = lab_call(lab, "n1", with_old_token)
    assert status == 401 and f"credential {old.id} (node n1) was revoked" in reason
