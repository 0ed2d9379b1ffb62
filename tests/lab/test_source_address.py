"""The client address comes from the connection, not the peer's word: a workload holding a
mesh identity (outside capture, as the edge gateway runs) speaks HBONE itself with the `h2`
library and claims other addresses in `Forwarded: for=`. Checked from outside: the address
the app reports, the destination agent's access log, and ipBlocks / source.ip policies."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from agent.common import netns
from agent.common.manifest import load_text
from agent.identity.caclient import CAClient
from agent.identity.certs import SpiffeId, ca_identity, generate_key, key_pem, make_csr
from agent.lab import model
from agent.lab.lab import Lab
from tests.lab.labkit import access_log, curl, new_lab_name, pod_manifest, wait_until

HERE = Path(__file__).parent
TD = "cluster.local"


def pod(name: str, ns: str, node: str, sa: str, command: str) -> str:
    return pod_manifest(name, ns, node, command, sa=sa)


SLEEP = "[sleep, infinity]"
CLUSTER = (
    "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: source}\n"
    "spec: {nodes: [n1, n2]}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n"
    "  labels: {slipstream.dev/dataplane-mode: ambient}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: edge}\n"
    + pod("client", "mesh", "n1", "client", SLEEP)
    + pod("server", "mesh", "n2", "server", '[slipstream, app, http-echo, --port, "8080"]')
    + pod("attacker", "edge", "n1", "attacker", SLEEP)
)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(new_lab_name())
    try:
        lab.up(load_text(CLUSTER, "<test manifest>"))
        wait_until(lambda: client_allowed(lab), 15, "the server to serve")
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def certs(lab, tmp_path_factory) -> Path:
    """A certificate for edge/attacker's own identity, as the CA signs it for its node."""
    out = tmp_path_factory.mktemp("attacker")
    token = Path(f"{lab.dirs.agent('n1')}/ca-token").read_text().strip()
    bundle = Path(f"{lab.dirs.ca}/bundle.pem").read_text()
    ident = SpiffeId(TD, "edge", "attacker")
    key = generate_key()

    async def sign():
        client = CAClient((model.ca_address().split(":")[0], 15012), token, ca_identity(TD))
        return await client.sign(ident, make_csr(key, ident), 600, bundle)

    cert, _ = netns.call_in(model.node_netns(lab.name, "n1"), lambda: asyncio.run(sign()))
    (out / "key.pem").write_bytes(key_pem(key))
    (out / "cert.pem").write_text(cert)
    (out / "bundle.pem").write_text(bundle)
    return out


def ip(lab: Lab, name: str, ns: str = "mesh") -> str:
    return lab.pod(name, ns).ip


def claims(lab: Lab, certs: Path, cases: dict[str, list[str]]) -> dict[str, dict]:
    """Run the attacker's HBONE client in edge/attacker; per case: status and what the app saw."""
    argv = [
        sys.executable,
        str(HERE / "hbone_claims.py"),
        str(certs),
        ip(lab, "server"),
        "8080",
        json.dumps([{"name": n, "forwarded": f} for n, f in cases.items()]),
    ]
    res = lab.exec("attacker", argv, namespace="edge")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def attacker_records(lab: Lab, since: float, count: int) -> list[dict]:
    def found() -> list[dict]:
        recs = [
            r
            for r in access_log(lab, "n2", since)
            if r["direction"] == "inbound"
            and r["src_identity"] == f"spiffe://{TD}/ns/edge/sa/attacker"
        ]
        return recs if len(recs) >= count else []

    return wait_until(found, 15, f"{count} access records of the attacker's streams")


def test_claims_of_other_addresses_never_reach_the_app_or_the_log(lab, certs):
    me, other, server = ip(lab, "attacker", "edge"), ip(lab, "client"), ip(lab, "server")
    node_gw = model.pod_gateway(2)
    cases = {
        "loopback": ['for="127.0.0.1:80"'],
        "loopback-other": ["for=127.0.0.53:53"],
        "other-pod": [f'for="{other}:8080"'],
        "destination-itself": [f'for="{server}:8080"'],
        "node-gateway": [f'for="{node_gw}:80"'],
        "control-plane": [f'for="{model.ca_address().split(":")[0]}:15012"'],
        "link-local": ['for="169.254.169.254:80"'],
        "ipv6-loopback": ['for="[::1]:80"'],
        "ipv4-mapped": [f'for="[::ffff:{other}]:80"'],
        "unknown": ["for=unknown"],
        "no-port": [f"for={other}"],
        "bad-port": [f"for={other}:\u00b2"],
        "empty": ["for="],
        "chain": [f'for="{other}:1", for="{me}:2"'],
        "two-fields": [f'for="{me}:4711"', 'for="127.0.0.1:80"'],
        "by-only": [f"by={other}"],
    }
    since = time.time()
    got = claims(lab, certs, {**cases, "own-address": [f'for="{me}:4711"']})
    for name, result in got.items():
        assert result["status"] == 200, (name, result)
        assert result["client"].split(":")[0] == me, f"{name}: the app saw {result['client']}"
    records = attacker_records(lab, since, len(got))
    by_src_claim = [r for r in records if r["src_claim"]]
    assert all(r["src"].split(":")[0] == me for r in records), records
    assert len(by_src_claim) == len(cases), "every claim of another address is named as ignored"
    assert all("ignored" in r["src_claim"] for r in by_src_claim)
    (own,) = [r for r in records if not r["src_claim"]]
    assert own["src"] == f"{me}:4711", "a claim of its own address gives the app's port"
    assert own["src_workload"] == "edge/attacker"


def ip_policy(name: str, action: str, field: str, cidr: str) -> str:
    rule: dict = (
        {"from": [{"source": {"ipBlocks": [cidr]}}]}
        if field == "ipBlocks"
        else {"when": [{"key": "source.ip", "values": [cidr]}]}
    )
    return json.dumps(
        {
            "apiVersion": "slipstream.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "mesh"},
            "spec": {
                "selector": {"matchLabels": {"app": "server"}},
                "action": action,
                "rules": [rule],
            },
        }
    )


def client_allowed(lab: Lab) -> bool:
    url = f"http://{ip(lab, 'server')}:8080/"
    return lab.exec("client", ["curl", "-sS", "-m", "3", url], namespace="mesh").returncode == 0


@pytest.mark.parametrize("field", ["ipBlocks", "source.ip"])
def test_ip_rules_decide_on_the_address_the_connection_proves(lab, certs, field):
    me, other, server = ip(lab, "attacker", "edge"), ip(lab, "client"), ip(lab, "server")
    lies = {
        "loopback": ['for="127.0.0.1:80"'],
        "other-pod": [f'for="{other}:8080"'],
        "destination-itself": [f'for="{server}:8080"'],
        "node-gateway": [f'for="{model.pod_gateway(2)}:80"'],
    }
    # A DENY of the attacker's own address holds whatever it claims.
    lab.apply(load_text(ip_policy("no-attacker", "DENY", field, f"{me}/32"), "deny.yaml"))
    wait_until(lambda: claims(lab, certs, {"probe": []})["probe"]["status"] == 401, 15, "DENY")
    got = claims(lab, certs, lies)
    assert {n: r["status"] for n, r in got.items()} == dict.fromkeys(lies, 401), got
    assert client_allowed(lab), "the DENY names only the attacker's address"
    lab.delete("authorizationpolicy", "no-attacker", "mesh")
    # An ALLOW of another pod's address lets that pod in, never the attacker on its word.
    lab.apply(load_text(ip_policy("only-client", "ALLOW", field, f"{other}/32"), "allow.yaml"))
    try:
        wait_until(lambda: claims(lab, certs, {"probe": []})["probe"]["status"] == 401, 15, "ALLOW")
        got = claims(lab, certs, {"other-pod": lies["other-pod"]})
        assert got["other-pod"]["status"] == 401
        answer = curl(lab, "client", f"http://{server}:8080/", "mesh")
        assert answer["client"].split(":")[0] == other, "positive control: the real pod gets in"
    finally:
        lab.delete("authorizationpolicy", "only-client", "mesh")
