"""L4 authorization across nodes: ALLOW by service account, DENY over ALLOW, live changes
that close open connections, and a bad policy that changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from agent.common.manifest import load_text
from agent.lab.errors import LabError
from agent.lab.lab import Lab
from tests.lab.labkit import access_log, config_dump, wait_until

HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello\\n")
assert s.recv(100) == b"hello\\n"
print("open", flush=True)
s.settimeout(30)
try:
    while s.recv(100):
        pass
    print("closed", flush=True)
except OSError as e:
    print("closed", type(e).__name__, flush=True)
"""


def pod(name: str, ns: str, node: str, sa: str, containers: str, labels: str = "") -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}, labels: {{name: {name}{labels}}}}}
        spec:
          nodeName: {node}
          serviceAccountName: {sa}
          containers:
        """) + textwrap.indent(containers, "  ")


SLEEP = "- {name: main, command: [sleep, infinity]}\n"
DB = (
    '- {name: http, command: [slipstream, app, http-echo, --port, "8080"]}\n'
    '- {name: tcp, command: [slipstream, app, tcp-echo, --port, "9000"]}\n'
)

CLUSTER = (
    "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: authz}\n"
    "spec: {nodes: [n1, n2]}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n"
    "  labels: {slipstream.dev/dataplane-mode: ambient}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n"
    + pod("web", "mesh", "n1", "web", SLEEP)
    + pod("api", "mesh", "n1", "api", SLEEP)
    + pod("db", "mesh", "n2", "db", DB, ", app: db")
    + pod("legacy", "plain", "n1", "default", SLEEP)
)


def policy(name: str, action: str, principals: list[str], ports: list[int] | None = None) -> str:
    rule: dict = {"from": [{"source": {"principals": principals}}]}
    if ports:
        rule["to"] = [{"operation": {"ports": [str(p) for p in ports]}}]
    body = {
        "apiVersion": "slipstream.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "mesh"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "action": action, "rules": [rule]},
    }
    return json.dumps(body)


TD = "cluster.local"
WEB = f"{TD}/ns/mesh/sa/web"
API = f"{TD}/ns/mesh/sa/api"


def policy_check(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "agent", "policy", "check", "--name", lab.name, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def get(lab: Lab, client: str, ns: str = "mesh") -> subprocess.CompletedProcess:
    url = f"http://{lab.pod('db', 'mesh').ip}:8080/"
    return lab.exec(client, ["curl", "-sS", "-m", "3", url], namespace=ns)


def allowed(lab: Lab, client: str, ns: str = "mesh") -> bool:
    return get(lab, client, ns).returncode == 0


def apply(lab: Lab, *docs: str) -> None:
    lab.apply(load_text("\n---\n".join(docs), "policy.yaml"))


def decisions(lab: Lab, since: float, src_workload: str) -> list[dict]:
    return [
        r
        for r in access_log(lab, "n2", since)
        if r["direction"] == "inbound" and r["src_workload"] == src_workload and r.get("authz")
    ]


@pytest.fixture
def lab(make_lab) -> Lab:
    lab = make_lab(CLUSTER)
    wait_until(lambda: allowed(lab, "web") and allowed(lab, "api"), 10, "db to serve")
    return lab


def test_an_allow_for_one_service_account_lets_it_in_and_keeps_others_out(lab):
    since = time.time()
    apply(lab, policy("db-from-web", "ALLOW", [WEB]))
    wait_until(lambda: not allowed(lab, "api"), 15, "the ALLOW policy to keep api out")
    since = time.time()  # (a call in flight while the policy landed was closed by it)
    assert not allowed(lab, "api")
    assert allowed(lab, "web"), "web is allowed across nodes"
    assert not allowed(lab, "legacy", "plain"), "plaintext has no principal: kept out"
    web = wait_until(lambda: decisions(lab, since, "mesh/web"), 15, "web's record")[-1]
    assert web["outcome"] == "ok" and web["src_identity"].endswith("/sa/web")
    assert web["authz"] == {
        "decision": "allow",
        "policy": "mesh/db-from-web",
        "rule": 0,
        "reason": "allowed by ALLOW policy mesh/db-from-web rule 0",
    }
    api = wait_until(lambda: decisions(lab, since, "mesh/api"), 15, "api's record")[-1]
    assert api["outcome"] == "denied" and api["authz"]["decision"] == "deny"
    assert "mesh/db-from-web" in api["detail"]
    legacy = wait_until(lambda: decisions(lab, since, "plain/legacy"), 15, "legacy's record")[-1]
    assert legacy["transport"] == "plaintext" and legacy["outcome"] == "denied"
    out = [r for r in access_log(lab, "n1", since) if r["src_workload"] == "mesh/api"]
    assert [r["outcome"] for r in out] == ["denied"], json.dumps(out)
    # `slipstream policy check` reads the lab and tells the same story.
    for client, status, verdict in (("web", 0, "ALLOW"), ("api", 3, "DENY")):
        res = policy_check(lab, "--from", f"mesh/{client}", "--to", "mesh/db:8080")
        assert res.returncode == status, res.stderr
        assert res.stdout.startswith(f"{verdict}  mesh/{client} ({TD}/ns/mesh/sa/{client}, ")
        assert "mesh/db-from-web" in res.stdout


def test_a_deny_beats_an_allow(lab):
    since = time.time()
    apply(
        lab,
        policy("db-from-all", "ALLOW", [WEB, API]),
        policy("no-web-on-8080", "DENY", [WEB], ports=[8080]),
    )
    wait_until(lambda: not allowed(lab, "web"), 15, "the DENY to apply")
    assert allowed(lab, "api")
    web = wait_until(lambda: decisions(lab, since, "mesh/web"), 15, "web's record")[-1]
    assert (web["authz"]["policy"], web["authz"]["rule"]) == ("mesh/no-web-on-8080", 0)


def hold(lab: Lab, client: str, db: str) -> subprocess.Popen | None:
    """A connection from `client` to db's TCP echo, held open; None if it did not open (the
    echo container may start after the HTTP one the fixture waited for)."""
    proc = subprocess.Popen(
        lab.exec_argv(["python3", "-c", HOLD, db, "9000"], client, "mesh"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() == "open":
        return proc
    proc.kill()
    proc.communicate()
    return None


def test_a_live_change_closes_a_now_denied_open_connection(lab):
    db = lab.pod("db", "mesh").ip
    holders: dict[str, subprocess.Popen] = {}
    try:
        opened = time.time()
        for client in ("web", "api"):
            holders[client] = wait_until(lambda c=client: hold(lab, c, db), 30, f"{client} to open")
        since = time.time()
        apply(lab, policy("no-web", "DENY", [WEB]))
        out, _ = holders["web"].communicate(timeout=60)
        closed_after = time.time() - since
        assert out.startswith("closed"), out
        assert holders["api"].poll() is None, "api's connection is still allowed and open"
        rec = wait_until(
            lambda: [r for r in decisions(lab, opened - 1, "mesh/web") if r["outcome"] == "denied"],
            15,
            "the closed connection's record",
        )[-1]
        assert rec["detail"].startswith("policy changed: denied by DENY policy mesh/no-web")
        # Closed by the policy change, not by the holder's own 30 s read timeout.
        assert "timeout" not in out.lower(), f"closed {closed_after:.2f} s after the apply: {out}"
    finally:
        for proc in holders.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_a_bad_policy_leaves_the_previous_enforcement_in_place(lab):
    apply(lab, policy("db-from-web", "ALLOW", [WEB]))
    wait_until(lambda: not allowed(lab, "api"), 15, "the ALLOW policy")
    bad = policy("db-from-web", "ALLOW", [API]).replace('"rules"', '"rules_"')
    with pytest.raises(LabError) as exc:
        apply(lab, bad)
    assert "spec.rules_" in str(exc.value), "the lab refuses it, naming the field"
    # The agents' own guard: a version the API server's schema lets through (to it an
    # ipBlock is any string), sent straight to the API as any client may.
    body = json.loads(policy("db-from-web", "ALLOW", [API]))
    body["spec"]["rules"][0]["from"][0]["source"]["ipBlocks"] = ["10.244.0.0/33"]
    lab.api().apply(body)

    def rejected() -> list[str]:
        errors = config_dump(lab, "n2")["sources"][0]["errors"]
        return [e for e in errors if "ipBlocks[0]" in e]

    (error,) = wait_until(rejected, 15, "n2 to reject the bad policy")
    assert "db-from-web" in error, error
    assert allowed(lab, "web") and not allowed(lab, "api"), "the last good policy still rules"
    policies = {p["name"]: p for p in config_dump(lab, "n2")["authorizationPolicies"]}
    assert policies["mesh/db-from-web"]["action"] == "ALLOW"


def test_istios_policy_and_ours_of_one_name_are_both_enforced_and_deleted_apart(lab):
    """Two objects to the API server, so two policies on the agents (an ALLOW of ours must not
    hide Istio's DENY); `lab delete` asks which one when both exist."""
    deny = json.loads(policy("db", "DENY", [WEB]))
    deny["apiVersion"] = "security.istio.io/v1"
    apply(lab, json.dumps(deny), policy("db", "ALLOW", [WEB, API]))
    wait_until(lambda: not allowed(lab, "web"), 15, "Istio's DENY beside our ALLOW")
    assert allowed(lab, "api")
    with pytest.raises(LabError, match=r"exists in 2 groups: say authorizationpolicy\."):
        lab.delete("AuthorizationPolicy", "db", "mesh")
    lab.delete("authorizationpolicy.security.istio.io", "db", "mesh")
    wait_until(lambda: allowed(lab, "web"), 15, "the DENY gone, our ALLOW still there")
    lab.delete("AuthorizationPolicy", "db", "mesh")  # one left: no need to say which
    assert lab.get("authorizationpolicy.slipstream.dev", "mesh") == []
