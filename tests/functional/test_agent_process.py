"""The agent as a real process: admin and readiness endpoints, JSON logs, clean SIGTERM."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: '{team}'}}\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "ns.yaml").write_text(NS.format(name="shop", team="a"))
    admin, ready = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "agent",
            "--node",
            "n1",
            "--source",
            f"file:{tmp_path / 'objects'}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--ready",
            f"127.0.0.1:{ready}",
            "--log-format",
            "json",
            "--state-dir",
            str(tmp_path / "state"),
            # This file tests the control-plane side; capture has its own lab tests.
            # iptables mode loads nothing until a pod enrolls, so no eBPF compile here.
            "--capture",
            "iptables",
            "--root-namespace",
            "mesh-root",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 40  # (starting a Python process on a loaded machine)
    while True:
        try:
            if get(f"http://127.0.0.1:{ready}/healthz/ready")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "agent never became ready"
        time.sleep(0.05)
    yield proc, f"http://127.0.0.1:{admin}", tmp_path / "objects"
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


POLICIES = """
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: mesh-root}
spec: {}
---
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}
"""


def test_config_dump_shows_policies_their_scope_and_what_l4_makes_of_them(agent):
    proc, admin, objects = agent
    (objects / "policies.yaml").write_text(POLICIES)

    def policies():
        return {
            p["name"]: p
            for p in json.loads(get(f"{admin}/config_dump")[1])["authorizationPolicies"]
        }

    deadline = time.monotonic() + 20
    while len(policies()) < 3:
        assert time.monotonic() < deadline, "policies never showed up"
        time.sleep(0.05)
    found = policies()
    assert found["mesh-root/deny-all"]["scope"] == "mesh", "--root-namespace is honoured"
    assert found["shop/no-admin"]["scope"] == "namespace"
    (warning,) = found["shop/no-admin"]["warnings"]
    assert warning.startswith("spec.rules[0].to[0].operation.paths: needs HTTP")
    # A refused policy is listed, failing closed, with its error (see test_authz_fail_closed).
    broken = found["shop/broken"]
    assert broken["state"] == "refused: denies every connection in its scope"
    assert broken["field"] == "spec.rules[0].from[0].source.ipBlocks[0]"
    assert "policies.yaml:" in broken["source"]
    errors = json.loads(get(f"{admin}/config_dump")[1])["sources"][0]["errors"]
    assert any("policies.yaml" in e and "ipBlocks[0]" in e for e in errors), errors
    assert proc.poll() is None


def test_config_dump_follows_the_directory(agent):
    _, admin, objects = agent
    dump = json.loads(get(f"{admin}/config_dump")[1])
    assert dump["node"] == "n1" and dump["ready"] is True
    assert {"name": "shop", "labels": {"team": "a"}, "annotations": {}} in dump["namespaces"]
    (objects / "ns.yaml").write_text(NS.format(name="shop", team="b"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dump = json.loads(get(f"{admin}/config_dump")[1])
        if dump["namespaces"][0]["labels"] == {"team": "b"}:
            break
        time.sleep(0.02)
    assert dump["namespaces"][0]["labels"] == {"team": "b"}


def test_logging_level_can_change_at_run_time(agent):
    _, admin, _ = agent
    assert json.loads(get(f"{admin}/logging")[1]) == {"level": "info"}
    req = urllib.request.Request(f"{admin}/logging?level=debug", method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        assert json.loads(r.read()) == {"level": "debug"}
    status, body = get(f"{admin}/logging?level=loud")
    assert status == 400 and "unknown log level" in body


def test_sigterm_stops_cleanly_with_json_logs(agent):
    proc, _, _ = agent
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines()]
    msgs = [(entry["level"], entry["msg"]) for entry in lines]
    assert ("info", "agent starting") in msgs
    assert ("info", "draining") in msgs
    assert msgs[-1] == ("info", "agent stopped")
    assert all({"time", "level", "scope", "msg"} <= entry.keys() for entry in lines)


def test_missing_source_directory_is_a_clear_error(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "agent",
            "--node",
            "n1",
            "--source",
            f"file:{tmp_path / 'nope'}",
            "--admin",
            f"127.0.0.1:{free_port()}",
            "--ready",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 1
    assert f"manifest directory {tmp_path / 'nope'} does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_source_argument(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "agent", "agent", "--node", "n1", "--source", "kube:x"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 1 and "expected file:DIR" in res.stderr


def test_config_dump_shows_the_hbone_limits_and_what_triggered_them(agent):
    _, admin, _ = agent
    limits = json.loads(get(f"{admin}/config_dump")[1])["hboneLimits"]
    assert limits["limits"]["peers"] == {
        "max_connections_per_identity": 256,
        "max_streams_per_identity": 1024,
    }
    assert limits["limits"]["frames"]["max_continuations"] == 8
    assert limits["counters"]["flood_resets"] == 0 and limits["counters"]["alpn_refused"] == 0
    assert limits["peers"] == []


def test_a_limit_below_one_is_a_clear_error(tmp_path):
    (tmp_path / "objects").mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "agent", "agent", "--node", "n1",
         "--source", f"file:{tmp_path / 'objects'}", "--hbone-max-streams-per-identity", "0"],
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip
    assert res.returncode == 1
    assert "--hbone-max-streams-per-identity must be at least 1, not 0" in res.stderr


def test_a_bad_flag_is_a_message_not_a_traceback():
    """`--admin` used to reach int() unchecked: a ValueError traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "agent", "--node", "n", "--source", "file:/nonexistent",
         "--admin", "127.0.0.1:admin"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "slipstream agent: '127.0.0.1:admin' is not an address" in result.stderr
    assert "Traceback" not in result.stderr
