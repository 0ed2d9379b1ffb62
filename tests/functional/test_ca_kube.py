"""The CA with `--source kube`: a node is who its agent's pod-bound service-account token says,
checked by a TokenReview against the lab API server; every refusal says why."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.identity.caclient import CARefused
from agent.identity.certs import SpiffeId, generate_key, load_certs, make_csr, spiffe_ids_of
from agent.lab.apiserver import auth
from agent.lab.apiserver.launch import request_token
from tests.functional.apikit import ApiServerProc
from tests.functional.cakit import TD, RunningCA, free_port
from tests.functional.kubekit import call, post

WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")
AGENT_NS, AGENT_SA = "slipstream-system", "slipstream-agent"


def pod(name: str, ns: str, sa: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "c", "image": "i", "command": ["x"]}],
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ca-kube")
    api = ApiServerProc(root / "api").start()
    for ns in (AGENT_NS, "shop"):
        post(api, "/api/v1/namespaces", {"metadata": {"name": ns}})
    for ns, sa in ((AGENT_NS, AGENT_SA), ("shop", "web"), ("shop", "db")):
        post(api, f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": sa}})
    for node in ("n1", "n2"):
        post(api, "/api/v1/nodes", {"metadata": {"name": node}})
        post(
            api,
            f"/api/v1/namespaces/{AGENT_NS}/pods",
            pod(f"agent-{node}", AGENT_NS, AGENT_SA, node),
        )
    post(api, "/api/v1/namespaces/shop/pods", pod("web", "shop", "web", "n1"))
    post(api, "/api/v1/namespaces/shop/pods", pod("db", "shop", "db", "n2"))
    port = free_port()
    log = root / "ca.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "ca", "serve",
                "--root-dir", str(root / "roots"),
                "--source", "kube",
                "--kubeconfig", api.kubeconfig,
                "--node-service-account", f"{AGENT_NS}/{AGENT_SA}",
                "--listen", f"127.0.0.1:{port}",
                "--log-format", "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    ca = RunningCA(root, port, proc)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        try:
            if ca.request("GET", "/healthz/ready").status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    yield api, ca
    ca.stop()
    api.stop()


def token(api: ApiServerProc, ns: str, sa: str, pod: str | None = None) -> str:
    return request_token(api.url, api.ca, api.token, ns, sa, pod=pod)


def sign(ca: RunningCA, tok: str, identity: SpiffeId) -> list[str]:
    client = ca.client(lambda: tok)
    cert_pem, _ = asyncio.run(
        client.sign(identity, make_csr(generate_key(), identity), 600, ca.bundle())
    )
    (cert,) = load_certs(cert_pem)
    return spiffe_ids_of(cert)


def refused(ca: RunningCA, tok: str, identity: SpiffeId) -> tuple[int, str]:
    with pytest.raises(CARefused) as exc:
        sign(ca, tok, identity)
    return exc.value.status, str(exc.value)


def test_the_agents_bound_token_gets_its_nodes_identities(cluster):
    api, ca = cluster
    assert sign(ca, token(api, AGENT_NS, AGENT_SA, "agent-n1"), WEB) == [str(WEB)]
    assert sign(ca, token(api, AGENT_NS, AGENT_SA, "agent-n2"), DB) == [str(DB)]
    issued = [e for e in ca.log() if e["msg"] == "certificate issued"]
    assert issued[-1]["node"] == "n2"


def test_another_nodes_token_is_refused_with_the_reason(cluster):
    api, ca = cluster
    status, why = refused(ca, token(api, AGENT_NS, AGENT_SA, "agent-n2"), WEB)
    assert status == 403 and "node n2 runs no pod with service account web" in why


def test_an_unbound_token_is_refused(cluster):
    api, ca = cluster
    status, why = refused(ca, token(api, AGENT_NS, AGENT_SA), WEB)
    assert status == 401 and "not bound to a pod" in why


def test_a_token_of_another_service_account_gets_only_its_own_identity(cluster):
    api, ca = cluster
    db = token(api, "shop", "db", "db")
    status, why = refused(ca, db, WEB)
    assert status == 403 and "service account shop/db's: it gets only that identity" in why
    # It is not a node: the node's other pods stay out of reach, its own identity is fine.
    assert sign(ca, db, DB) == [str(DB)]


def test_a_user_token_is_refused(cluster):
    api, ca = cluster
    status, why = refused(ca, api.token, WEB)
    assert status == 401 and "lab-admin's, not a service account's" in why


def test_a_token_whose_pod_is_gone_is_refused(cluster):
    api, ca = cluster
    post(api, f"/api/v1/namespaces/{AGENT_NS}/pods", pod("agent-tmp", AGENT_NS, AGENT_SA, "n1"))
    tok = token(api, AGENT_NS, AGENT_SA, "agent-tmp")
    assert sign(ca, tok, WEB) == [str(WEB)]
    call(api, "DELETE", f"/api/v1/namespaces/{AGENT_NS}/pods/agent-tmp?gracePeriodSeconds=0")
    deadline = time.monotonic() + 10
    while True:  # until the deletion has gone through (a graceful delete marks it first)
        status, why = refused(ca, tok, WEB)
        if "agent-tmp" in why and "not found" in why:
            break
        assert time.monotonic() < deadline, why
        time.sleep(0.1)
    assert status == 401


def test_an_expired_token_is_refused(cluster):
    api, ca = cluster
    tok = token(api, AGENT_NS, AGENT_SA, "agent-n1")
    assert sign(ca, tok, WEB) == [str(WEB)]
    # Let the API server's record of the token expire: stop it, move the expiry into the
    # past in its state file, start it again (tokens are kept by digest across restarts).
    api.stop(signal.SIGTERM)
    state = json.loads(Path(api.state).read_text())
    (rec,) = [t for t in state["tokens"] if t["digest"] == auth.digest(tok)]
    rec["expires"] = time.time() - 10
    Path(api.state).write_text(json.dumps(state))
    api.start()
    status, why = refused(ca, tok, WEB)
    assert status == 401 and "token has expired" in why
