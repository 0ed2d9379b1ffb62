"""Refused policies fail closed, on real agents across two nodes.

A policy that gets past `lab apply`'s validation (here: sent straight to the API server,
whose CRD schema lets it through, as anything a webhook did not see would arrive) and does
not validate:
a new one denies every connection in its scope and nothing outside it, `from: []` included
(read as "no from", it would let a plaintext client in); an invalid update leaves the last
good version enforcing. /config_dump, the agent's log and `slipstream policy check` name the
policy and the field.
"""

from __future__ import annotations

import json
import time

import pytest

from agent.lab.lab import Lab
from tests.lab.labkit import access_log, config_dump, wait_until
from tests.lab.test_authz import SLEEP, TD, apply, pod, policy_check

HTTP = '- {name: http, command: [slipstream, app, http-echo, --port, "8080"]}\n'

CLUSTER = (
    "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: authz-closed}\n"
    "spec: {nodes: [n1, n2]}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n"
    "  labels: {slipstream.dev/dataplane-mode: ambient}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n"
    + pod("web", "mesh", "n1", "web", SLEEP)
    + pod("api", "mesh", "n1", "api", SLEEP)
    + pod("db", "mesh", "n2", "db", HTTP, ", app: db")
    + pod("cache", "mesh", "n2", "cache", HTTP, ", app: cache")
    + pod("legacy", "plain", "n1", "default", SLEEP)
)

NAME = "db-only"
WHERE = f"AuthorizationPolicy mesh/{NAME}"
"""Where the agents say the refused object came from (their kube source's name for it)."""


def body(rules: list) -> dict:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": NAME, "namespace": "mesh"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "rules": rules},
    }


WEB_ONLY = [{"from": [{"source": {"serviceAccounts": ["web"]}}]}]
EMPTY_FROM = [{"from": []}]
FIELD = "spec.rules[0].from"


def reaches(lab: Lab, client: str, server: str, ns: str = "mesh") -> bool:
    url = f"http://{lab.pod(server, 'mesh').ip}:8080/"
    return lab.exec(client, ["curl", "-sS", "-m", "3", url], namespace=ns).returncode == 0


def past_the_lab(lab: Lab, obj: dict) -> None:
    """Straight to the API server, past `lab apply`'s checks (its schema accepts it)."""
    lab.api().apply(obj)


def entry(lab: Lab, node: str) -> dict:
    found = [
        p for p in config_dump(lab, node)["authorizationPolicies"] if p["name"] == f"mesh/{NAME}"
    ]
    return found[0] if found else {}


def agent_log(lab: Lab, node: str, msg: str) -> list[dict]:
    with open(lab.agent_log_path(node)) as f:
        return [r for line in f if msg in line and (r := json.loads(line))["msg"] == msg]


@pytest.fixture
def lab(make_lab) -> Lab:
    lab = make_lab(CLUSTER)
    wait_until(
        lambda: reaches(lab, "web", "db") and reaches(lab, "web", "cache"), 15, "the servers"
    )
    return lab


@pytest.mark.timeout(150)
def test_a_new_invalid_policy_denies_its_scope_and_nothing_outside_it(lab):
    assert reaches(lab, "legacy", "db", "plain"), "plaintext reaches db before any policy"
    since = time.time()
    past_the_lab(lab, body(EMPTY_FROM))
    wait_until(lambda: not reaches(lab, "web", "db"), 10, "the refused policy to deny web")
    assert not reaches(lab, "api", "db")
    assert not reaches(lab, "legacy", "db", "plain"), "from: [] must not let plaintext in"
    assert reaches(lab, "web", "cache") and reaches(lab, "legacy", "cache", "plain"), (
        "outside its selector nothing changes"
    )
    reason = f"denied: policy mesh/{NAME} is invalid: {FIELD}: must not be empty"
    denied = wait_until(
        lambda: [
            r
            for r in access_log(lab, "n2", since)
            if r["direction"] == "inbound"
            and r.get("authz", {}).get("decision") == "deny"
            and r["src_workload"] in ("mesh/web", "plain/legacy")
        ],
        15,
        "the denials in n2's access log",
    )
    assert {r["transport"] for r in denied} == {"hbone", "plaintext"}
    assert all(r["authz"]["reason"].startswith(reason) for r in denied), denied
    assert all(r["authz"]["policy"] == f"mesh/{NAME}" for r in denied)
    # Reported: /config_dump on both agents, the agent's log, `policy check`.
    for node in ("n1", "n2"):
        e = wait_until(lambda n=node: entry(lab, n), 15, f"{node} to list the policy")
        assert e["state"] == "refused: denies every connection in its scope"
        assert (e["field"], e["scope"]) == (FIELD, "selected pods")
        assert e["error"].startswith(f"{FIELD}: must not be empty") and e["source"] == WHERE
    (obj,) = [o for o in config_dump(lab, "n2")["objects"] if o["name"] == NAME]
    assert obj["refused"]["enforcing"] == "fail-closed stand-in"
    (logged,) = wait_until(lambda: agent_log(lab, "n2", "authorization policy refused"), 15, "log")
    assert (logged["policy"], logged["field"]) == (f"mesh/{NAME}", FIELD)
    assert logged["level"] == "error" and logged["source"] == WHERE
    res = policy_check(lab, "--from", "mesh/web", "--to", "mesh/db:8080")
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.splitlines()[1].startswith(f"  {reason}")
    # Deleting it lifts the deny.
    api = lab.api()
    api.delete(api.type_of("security.istio.io/v1", "AuthorizationPolicy"), NAME, "mesh")
    wait_until(lambda: reaches(lab, "web", "db"), 10, "the deny to go when the policy goes")
    assert reaches(lab, "legacy", "db", "plain")


@pytest.mark.timeout(150)
def test_an_invalid_update_keeps_the_last_good_version_enforcing(lab):
    apply(lab, json.dumps(body(WEB_ONLY)))
    wait_until(lambda: not reaches(lab, "api", "db"), 10, "the ALLOW policy")
    past_the_lab(lab, body(EMPTY_FROM))
    for node in ("n1", "n2"):
        wait_until(
            lambda n=node: entry(lab, n).get("field") == FIELD, 10, f"{node} to refuse the update"
        )
        e = entry(lab, node)
        assert e["state"] == "newest version refused: the last good version enforces"
        assert e["lastGood"]["spec"]["rules"] == WEB_ONLY
    assert reaches(lab, "web", "db"), "the last good version still lets web in"
    assert not reaches(lab, "api", "db"), "and still keeps api out"
    assert not reaches(lab, "legacy", "db", "plain"), "and plaintext"
    (logged,) = agent_log(lab, "n2", "authorization policy refused")
    assert (logged["policy"], logged["field"]) == (f"mesh/{NAME}", FIELD)
    assert logged["effect"] == "newest version refused: the last good version enforces"
    # `policy check` reads the refused file, and the last good version from db's agent.
    web = policy_check(lab, "--from", "mesh/web", "--to", "mesh/db:8080")
    assert web.returncode == 0, web.stdout + web.stderr
    assert web.stdout.startswith(f"ALLOW  mesh/web ({TD}/ns/mesh/sa/web, ")
    assert f"allowed by ALLOW policy mesh/{NAME} rule 0" in web.stdout
    assert f"mesh/{NAME} (ALLOW, last good version; newest refused)" in web.stdout
    api = policy_check(lab, "--from", "mesh/api", "--to", "mesh/db:8080")
    assert api.returncode == 3, api.stdout + api.stderr
    # A valid version again replaces it.
    fixed = [{"from": [{"source": {"serviceAccounts": ["api"]}}]}]
    past_the_lab(lab, body(fixed))
    wait_until(lambda: reaches(lab, "api", "db"), 10, "the fixed version to let api in")
    assert not reaches(lab, "web", "db")
    assert wait_until(lambda: entry(lab, "n2").get("state") == "enforced", 15, "state")
