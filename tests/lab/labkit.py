"""Helpers for lab tests: unique lab names, and looking at a lab from outside."""

from __future__ import annotations

import json
import uuid

from agent.lab.lab import Lab

CREATED: set[str] = set()
"""Every lab name a test session used, for the end-of-session leftover check."""


def new_lab_name() -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    CREATED.add(name)
    return name


def curl(lab: Lab, pod: str, url: str, namespace: str = "default") -> dict:
    """GET `url` from inside a pod; returns the http-echo server's JSON answer."""
    res = lab.exec(pod, ["curl", "-sS", "--max-time", "5", url], namespace=namespace)
    assert res.returncode == 0, f"curl {url} from {namespace}/{pod} failed: {res.stderr}"
    return json.loads(res.stdout)


def config_dump(lab: Lab, node: str) -> dict:
    status, body = lab.node_http(node, "http://127.0.0.1:15000/config_dump")
    assert status == 200, body
    return json.loads(body)
