"""The gateway as a mesh workload: into an enrolled Service over HBONE, under its own identity.

The gateway runs as a lab pod in a namespace outside the mesh, with the mesh
credentials the lab hands pods annotated for them. Its routes come from its
YAML file (a backend naming a Service) and from a Gateway API HTTPRoute in
the lab's manifests. The destination's agent sees the gateway's SPIFFE ID,
so an AuthorizationPolicy allowing only that principal admits the gateway's
requests and refuses a direct caller.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import yaml

from agent.common.manifest import load_text
from agent.lab.lab import Lab
from tests.lab.labkit import access_log, wait_until

GATEWAY_ID = "spiffe://cluster.local/ns/edge/sa/gateway"

CLUSTER = textwrap.dedent("""\
    apiVersion: slipstream.dev/v1alpha1
    kind: Lab
    metadata: {name: gwmesh}
    spec: {nodes: [n1, n2]}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {slipstream.dev/dataplane-mode: ambient}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: edge}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: web, namespace: shop, labels: {app: web}}
    spec:
      nodeName: n2
      serviceAccountName: web
      containers:
      - {name: http, command: [slipstream, app, http-echo, --port, "8080"]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: other, namespace: shop}
    spec:
      nodeName: n1
      serviceAccountName: other
      containers: [{name: main, command: [sleep, infinity]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client, namespace: edge}
    spec:
      nodeName: n1
      containers: [{name: main, command: [sleep, infinity]}]
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: gateway, namespace: edge}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRoleBinding
    metadata: {name: edge-gateway}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: slipstream-gateway}
    subjects: [{kind: ServiceAccount, name: gateway, namespace: edge}]
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: gateway
      namespace: edge
      annotations: {slipstream.dev/mesh-credentials: "true"}
    spec:
      nodeName: n1
      serviceAccountName: gateway
      containers:
      - name: gateway
        command: [slipstream, gateway, -c, "CONFIG", --admin, "0.0.0.0:9901",
                  --log-format, json]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: edge, namespace: edge}
    spec:
      gatewayClassName: slipstream
      listeners: [{name: http, port: 8080, protocol: HTTP}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: shop, namespace: shop}
    spec:
      parentRefs: [{name: edge, namespace: edge}]
      hostnames: [shop.example]
      rules:
      - matches: [{path: {type: PathPrefix, value: /store}}]
        filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
        backendRefs: [{name: web, port: 80}]
    """)

ONLY_GATEWAY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "web-from-gateway", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/edge/sa/gateway"]}}]}],
    },
}


def via_gateway(lab: Lab, host: str, path: str) -> tuple[int, str]:
    gw = lab.pod("gateway", "edge").ip
    res = lab.exec(
        "client",
        ["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-H", f"Host: {host}",
         f"http://{gw}:8080{path}"],
        namespace="edge",
    )  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def direct(lab: Lab) -> bool:
    res = lab.exec("other", ["curl", "-sS", "-m", "3", "http://web.shop:80/"], namespace="shop")
    return res.returncode == 0


@pytest.fixture
def lab(make_lab, tmp_path) -> Lab:
    config = {
        "workers": 1,
        "listeners": [{"name": "web", "address": "0.0.0.0:8080"}],
        "backends": [{"name": "web", "service": {"namespace": "shop", "name": "web", "port": 80}}],
        "routes": [{"name": "yaml-web", "hostnames": ["yaml.example"],
                    "backendRefs": [{"name": "web"}]}],
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    lab = make_lab(CLUSTER.replace("CONFIG", str(path)))
    try:
        wait_until(lambda: via_gateway(lab, "yaml.example", "/")[0] == 200, 20, "the gateway")
    except AssertionError as exc:
        log = os.path.join(lab.pod("gateway", "edge").dir, "gateway.log")
        with open(log) as f:
            raise AssertionError(f"{exc}; the gateway's log:\n{f.read()[-3000:]}") from None
    return lab


def test_gateway_reaches_an_enrolled_service_over_hbone_with_its_own_identity(lab):
    status, body = via_gateway(lab, "yaml.example", "/hello")
    assert status == 200, body
    echo = json.loads(body)
    assert echo["pod"] == "web" and echo["path"] == "/hello"
    # the app sees the gateway pod's address, delivered by web's agent from the HBONE stream
    assert echo["client"].split(":")[0] == lab.pod("gateway", "edge").ip
    # the HTTPRoute from the manifests: host, prefix rewrite, Service backend
    status, body = via_gateway(lab, "shop.example", "/store/cart")
    assert status == 200, body
    assert json.loads(body)["path"] == "/cart"
    assert via_gateway(lab, "shop.example", "/elsewhere")[0] == 404
    # web's agent logs a connection when it closes; the gateway keeps its upstream connections
    # alive, so stop it (its pooled HBONE streams end) and read what web's agent saw.
    # Chosen by the address they came from, not by what is asserted: every connection from
    # the gateway pod reached web over HBONE, proving the gateway's own identity.
    gateway_ip = lab.pod("gateway", "edge").ip
    lab.delete("Pod", "gateway", "edge")
    recs = wait_until(
        lambda: [
            r
            for r in access_log(lab, "n2")  # (pooled: opened before this test's first call)
            if r["direction"] == "inbound" and r["src"].rpartition(":")[0] == gateway_ip
        ],
        10,
        "web's agent to log the gateway's connections",
    )
    assert all(r["transport"] == "hbone" for r in recs), recs
    assert all(r.get("src_identity") == GATEWAY_ID for r in recs), recs
    assert all(r["dst_identity"].endswith("/ns/shop/sa/web") for r in recs), recs


def test_a_policy_allowing_only_the_gateway_admits_it_and_refuses_a_direct_caller(lab):
    assert direct(lab)
    lab.apply(load_text(json.dumps(ONLY_GATEWAY), "policy.yaml"))
    wait_until(lambda: not direct(lab), 15, "the policy to refuse shop/other")
    for _ in range(5):
        status, body = via_gateway(lab, "yaml.example", "/")
        assert status == 200, body


# ------------------------------------------------------------------ an attacker pod

ATTACK = r'''
"""Runs as an attacker's container: root, a container's capabilities, annotated for mesh
credentials, in a namespace outside the mesh. It tries to get another workload's identity
with whatever it can find, and to reach the shop with what it got. Prints one JSON report."""
import asyncio, ctypes, glob, json, os, re, socket, ssl, stat, sys

import h2.config, h2.connection, h2.events

from agent.ca.authority import ca_identity
from agent.identity.caclient import CAClient, CARefused, CAUnavailable
from agent.identity.certs import SpiffeId, cert_pem, generate_key, key_pem, make_csr

web_ip, agent_pid = sys.argv[1], int(sys.argv[2])
targets = [SpiffeId.parse(t) for t in sys.argv[3:]]
env = {k: v for k, v in os.environ.items() if k.startswith("SLIPSTREAM")}
own_id = SpiffeId.parse(env["SLIPSTREAM_IDENTITY"])
host, port = env["SLIPSTREAM_CA"].split(":")
bundle = open(env["SLIPSTREAM_CA_ROOT"]).read()
own = open(env["SLIPSTREAM_CA_TOKEN_FILE"]).read().strip()
report = {"own_identity": str(own_id), "with_own": {}, "files": [], "candidates": [],
          "stolen": [], "escapes": {}, "pids": [], "hbone": None, "plaintext": None}


async def sign(token, ident):
    key = generate_key()
    client = CAClient((host, int(port)), token, ca_identity(own_id.trust_domain))
    try:
        cert, _ = await client.sign(ident, make_csr(key, ident), 600, bundle)
        return 200, "", cert, key
    except CARefused as exc:
        return exc.status, exc.reason, None, None


# 1. its own credential, for every identity it wants
own_cert = None
for ident in [own_id, *targets]:
    status, reason, cert, key = asyncio.run(sign(own, ident))
    report["with_own"][str(ident)] = [status, reason]
    if ident == own_id and cert:
        own_cert, own_key = cert, key

# 2. the ways out of its sandbox a root container tries first
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, fn):
    try:
        fn()
        report["escapes"][name] = "succeeded"
    except OSError as exc:
        report["escapes"][name] = exc.strerror or str(exc)
def check(rc):
    if rc != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("umount the lab directory", lambda: check(libc.umount2(b"/run/slipstream/lab", 2)))
attempt("mount the machine's /proc", lambda: check(libc.mount(b"proc", b"/mnt", b"proc", 0, None)))
def enter_node():
    for path in glob.glob("/run/netns/*_node_*"):
        fd = os.open(path, os.O_RDONLY)
        check(libc.setns(fd, 0x40000000))
    if not glob.glob("/run/netns/*_node_*"):
        raise OSError(2, "no node namespace to be seen")
attempt("enter a node's network namespace", enter_node)
def read_disk():
    for dev in glob.glob("/sys/class/block/*/dev"):
        major, minor = map(int, open(dev).read().split(":"))
        node = f"/tmp/attack-{os.getpid()}-{major}-{minor}"
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
        try:
            with open(node, "rb") as f:
                f.read(512)
        finally:
            os.unlink(node)
attempt("read the node's disk through a device node", read_disk)
attempt("signal the node's agent", lambda: os.kill(agent_pid, 0))
attempt("write the Slipstream code the agents run",
        lambda: open(os.path.join(os.path.dirname(__import__("agent").__file__), "x"), "w"))

# 3. every token-like string it can read: files under /run (the lab's among them, if it can
#    see them), the environment and command lines of every process it can see, and their roots
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found = set()
def harvest(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return
    report["files"].append(path)
    found.update(m.decode() for m in re.findall(rb"[A-Za-z0-9_-]{43}", data))
for top in ["/run", "/var/run", *glob.glob("/proc/[0-9]*/root/run")]:
    for root, dirs, files in os.walk(top):
        if "/netns" in root:
            continue
        for name in files:
            harvest(os.path.join(root, name))
for pid in report["pids"]:
    for part in ("environ", "cmdline"):
        harvest(f"/proc/{pid}/{part}")
found.update(re.findall(r"[A-Za-z0-9_-]{43}", json.dumps(env)))
found.discard(own)
report["candidates"] = sorted(found)
for token in sorted(found):
    for ident in targets:
        status, reason, _, _ = asyncio.run(sign(token, ident))
        if status == 200:
            report["stolen"].append([str(ident), token])

# 4. into the shop with the identity it did get: HBONE to web, and plaintext
if own_cert:
    ctx = ssl.create_default_context(cadata=bundle)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    with open("/tmp/attack-own.pem", "w") as f:
        f.write(key_pem(own_key).decode() + own_cert)
    ctx.load_cert_chain("/tmp/attack-own.pem")
    os.unlink("/tmp/attack-own.pem")
    with socket.create_connection((web_ip, 15008), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", f"{web_ip}:8080")])
        tls.sendall(conn.data_to_send())
        while report["hbone"] is None:
            data = tls.recv(65536)
            if not data:
                report["hbone"] = "closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    report["hbone"] = dict(ev.headers)[b":status"].decode()
            tls.sendall(conn.data_to_send())
try:
    with socket.create_connection((web_ip, 8080), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        report["plaintext"] = s.recv(100).decode(errors="replace") or "closed"
except OSError as exc:
    report["plaintext"] = exc.strerror or type(exc).__name__
print("ATTACK " + json.dumps(report), flush=True)
'''

ATTACKER = """\
apiVersion: v1
kind: Namespace
metadata: {name: rogue}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: attacker, namespace: rogue}
---
apiVersion: v1
kind: Pod
metadata:
  name: attacker
  namespace: rogue
  annotations: {slipstream.dev/mesh-credentials: "true"}
spec:
  nodeName: n1
  serviceAccountName: attacker
  restartPolicy: Never
  containers:
  - name: main
    command: [python3, "SCRIPT", "WEB_IP", "AGENT_PID", "spiffe://cluster.local/ns/edge/sa/gateway",
              "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/other"]
"""


@pytest.mark.timeout(240)
def test_an_attacker_pod_with_mesh_credentials_gets_only_its_own_identity(lab, tmp_path):
    """The pod runs next to the gateway (node n1), as root, with its own mesh credential. It
    cannot get the gateway's identity, nor any other, with its credential or with anything it
    finds on the machine; a principals-only policy keeps it out of the shop; the gateway is
    served throughout."""
    lab.apply(load_text(json.dumps(ONLY_GATEWAY), "policy.yaml"))
    wait_until(lambda: not direct(lab), 15, "the policy to refuse shop/other")
    script = tmp_path / "attack.py"
    script.write_text(ATTACK)
    web_ip = lab.pod("web", "shop").ip
    agent = next(p for p in lab.status()["processes"] if p["name"] == "n1")
    manifest = ATTACKER.replace("SCRIPT", str(script)).replace("WEB_IP", web_ip)
    lab.apply(load_text(manifest.replace("AGENT_PID", str(agent["pid"])), "attacker.yaml"))
    (log,) = lab.log_paths("attacker", "rogue")

    def report() -> dict | None:
        with open(log) as f:
            lines = [line for line in f if line.startswith("ATTACK ")]
        return json.loads(lines[0][len("ATTACK ") :]) if lines else None

    try:
        got = wait_until(report, 150, "the attacker's report")
    except AssertionError:
        with open(log) as f:
            raise AssertionError(f"no report; the attacker's log:\n{f.read()[-3000:]}") from None
    own = "spiffe://cluster.local/ns/rogue/sa/attacker"
    # Its credential works, for its own identity only (the CA still checks its pod runs).
    assert got["own_identity"] == own and got["with_own"][own] == [200, ""]
    for ident in (GATEWAY_ID, "spiffe://cluster.local/ns/shop/sa/web",
                  "spiffe://cluster.local/ns/shop/sa/other"):  # fmt: skip
        status, reason = got["with_own"][ident]
        assert status == 403 and "is service account rogue/attacker's" in reason, (ident, reason)
    # Nothing it could read on the machine is a credential for anything else.
    assert got["stolen"] == [], got["stolen"]
    for holder in (f"{lab.dirs.agent('n1')}/ca-token", f"{lab.dirs.agent('n2')}/ca-token",
                   f"{lab.pod('gateway', 'edge').dir}/mesh/token"):  # fmt: skip
        with open(holder) as f:
            assert f.read().strip() not in got["candidates"], f"the attacker read {holder}"
    seen = [p for p in got["files"] if p.startswith("/run/slipstream")]
    assert seen and all(
        p.startswith((lab.objects_dir, f"{lab.pod('attacker', 'rogue').dir}/mesh/")) for p in seen
    ), seen
    assert got["pids"] and max(got["pids"]) < 10, "it sees only its own pod's processes"
    # Every way out of its sandbox was closed.
    assert got["escapes"] == {
        "umount the lab directory": "Operation not permitted",
        "mount the machine's /proc": "Operation not permitted",
        "enter a node's network namespace": "Operation not permitted",
        "signal the node's agent": "No such process",
        "read the node's disk through a device node": "Permission denied",
        "write the Slipstream code the agents run": "Read-only file system",
    }, got["escapes"]
    # In the shop, the policy refuses it, over HBONE with its own identity and in plaintext.
    assert got["hbone"] == "401", got["hbone"]
    assert got["plaintext"] in ("closed", "Connection reset by peer"), got["plaintext"]
    denied = wait_until(
        lambda: [r for r in access_log(lab, "n2") if r.get("src_identity") == own],
        10,
        "web's agent to log the attacker",
    )
    assert all(r["authz"]["decision"] == "deny" for r in denied), denied
    # From outside: the CA issued the attacker's credential its own identity and nothing else.
    issued = []
    with open(f"{lab.dirs.logs}/ca.log") as f:
        for line in f:
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("msg") == "certificate issued" and rec.get("kind") == "workload":
                issued.append((rec["credential"].split("-")[1], rec["identity"]))
    assert ("rogue", own) in issued
    assert {i for c, i in issued if c == "rogue"} == {own}
    # The gateway keeps its own identity and is served throughout.
    for _ in range(3):
        status, body = via_gateway(lab, "yaml.example", "/")
        assert status == 200, body
