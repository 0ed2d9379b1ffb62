"""`slipstream policy check` as a process, on manifests given with -f: refused policies decide
as on the agents (a new one fails closed, naming policy and field; an invalid update leaves
the last good version deciding), and the exit status says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TD = "cluster.local"

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec: {serviceAccountName: web, containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop}
spec: {serviceAccountName: api, containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.1.8}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.2.9}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: shop, labels: {app: cache}}
spec: {containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.2.10}
"""

GOOD = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {serviceAccounts: [web]}}]
"""

# The same policy with `from: []`: read as "no from", it would let every source in.
INVALID = GOOD.replace("[{source: {serviceAccounts: [web]}}]", "[]")


def policy_check(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent", "policy", "check", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_new_invalid_policy_denies_its_scope_naming_policy_and_field(tmp_path):
    pods = write(tmp_path, "pods.yaml", PODS)
    bad = write(tmp_path, "policy.yaml", INVALID)
    for client, extra in (("shop/web-1", []), ("shop/api-1", []), ("shop/web-1", ["--plaintext"])):
        res = policy_check("-f", pods, "-f", bad, "--from", client, "--to", "shop/db:5432", *extra)
        assert res.returncode == 3, res.stdout + res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].startswith(f"DENY  {client} ")
        assert lines[1] == (
            "  denied: policy shop/db-from-web is invalid: spec.rules[0].from: must not be empty"
            " (it would read as any source): remove it, or list at least one"
        )
        assert (
            "policies that apply to shop/db: shop/db-from-web (refused, fails closed)" in res.stdout
        )
        assert f"refused: {bad}:8 (document 1, AuthorizationPolicy shop/db-from-web)" in res.stdout
        assert "authorization policy refused" in res.stderr, "the agents' log line"
        assert "policy=shop/db-from-web field=spec.rules[0].from" in res.stderr
    outside = policy_check("-f", pods, "-f", bad, "--from", "shop/api-1", "--to", "shop/cache:80")
    assert outside.returncode == 0, outside.stdout
    assert "allowed: no ALLOW policy applies" in outside.stdout


def test_an_invalid_update_leaves_the_last_good_version_deciding(tmp_path):
    pods = write(tmp_path, "pods.yaml", PODS)
    good = write(tmp_path, "current.yaml", GOOD)
    bad = write(tmp_path, "change.yaml", INVALID)
    web = policy_check(
        "-f", pods, "-f", good, "-f", bad, "--from", "shop/web-1", "--to", "shop/db:5432"
    )
    assert web.returncode == 0, web.stdout + web.stderr
    assert web.stdout.splitlines()[1] == "  allowed by ALLOW policy shop/db-from-web rule 0"
    assert "shop/db-from-web (ALLOW, last good version; newest refused)" in web.stdout
    assert f"refused: {bad}:8 (document 1, AuthorizationPolicy shop/db-from-web)" in web.stdout
    for client, extra in (("shop/api-1", []), ("shop/web-1", ["--plaintext"])):
        res = policy_check(
            "-f", pods, "-f", good, "-f", bad, "--from", client, "--to", "shop/db:5432", *extra,
            "-o", "json",
        )  # fmt: skip
        assert res.returncode == 3, res.stdout + res.stderr
        out = json.loads(res.stdout)
        assert out["decision"] == "deny"
        assert out["reason"] == "denied: no rule of the ALLOW policies shop/db-from-web matches"
        assert out["rejectedObjects"] == [
            f"{bad}:8 (document 1, AuthorizationPolicy shop/db-from-web): spec.rules[0].from: must"
            " not be empty (it would read as any source): remove it, or list at least one"
        ]
    # In the other order the invalid version came first and the valid one replaced it.
    fixed = policy_check(
        "-f", pods, "-f", bad, "-f", good, "--from", "shop/api-1", "--to", "shop/db:5432"
    )
    assert fixed.returncode == 3
    assert "policies that apply to shop/db: shop/db-from-web (ALLOW)\n" in fixed.stdout


def test_a_refused_peer_authentication_denies_plaintext(tmp_path):
    pods = write(tmp_path, "pods.yaml", PODS)
    pa = write(
        tmp_path,
        "pa.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: Strict}}\n",
    )
    res = policy_check(
        "-f", pods, "-f", pa, "--from", "shop/web-1", "--to", "shop/cache:80", "--plaintext"
    )
    assert res.returncode == 3, res.stdout + res.stderr
    assert "plaintext refused: shop requires mTLS (PeerAuthentication STRICT)" in res.stdout
    mtls = policy_check("-f", pods, "-f", pa, "--from", "shop/web-1", "--to", "shop/cache:80")
    assert mtls.returncode == 0, mtls.stdout
