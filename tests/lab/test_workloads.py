"""DaemonSets and Deployments on the lab, through kubectl as on a cluster: the lab's
controller manager (agent/lab/workloads.py) makes their pods and its kubelet runs them.

One pod per node for a DaemonSet; `kubectl rollout status` follows both kinds to the end;
a changed template rolls a Deployment onto a new ReplicaSet and scales the old one to 0;
scaling follows `spec.replicas`; deleting the owners deletes what they own. And
`kubectl apply -k deploy/` is accepted whole: every object of the install stored, its
controllers' pods made.
"""

from __future__ import annotations

import json
import os

import pytest

from agent.lab.lab import Lab
from tests.lab.labkit import wait_until
from tests.lab.test_kubectl import kubectl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO = '[slipstream, app, http-echo, --port, "8080"]'
APPS = f"""\
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: echo, namespace: apps}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      containers: [{{name: c, image: unused, command: {ECHO}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: apps}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: c, image: unused, command: {ECHO}}}]
"""


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab(
        "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: x}\n"
        "spec: {nodes: [n1, n2], podNetwork: cni}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n"
    )


def pods(lab: Lab, ns: str = "apps") -> list[dict]:
    return json.loads(kubectl(lab, "get", "pods", "-n", ns, "-o", "json"))["items"]


def test_daemonsets_and_deployments_run_roll_scale_and_go(lab):
    kubectl(lab, "apply", "-f", "-", stdin=APPS)
    kubectl(lab, "rollout", "status", "daemonset/echo", "-n", "apps", "--timeout=60s")
    kubectl(lab, "rollout", "status", "deployment/web", "-n", "apps", "--timeout=60s")
    echo = [p for p in pods(lab) if p["metadata"]["labels"].get("app") == "echo"]
    assert sorted(p["spec"]["nodeName"] for p in echo) == ["n1", "n2"], "one per node"
    assert all(p["status"]["phase"] == "Running" for p in pods(lab))
    assert all(p["metadata"]["ownerReferences"][0]["controller"] for p in pods(lab))
    table = kubectl(lab, "get", "daemonset", "echo", "-n", "apps")
    assert table.split("\n")[1].split()[:6] == ["echo", "2", "2", "2", "2", "2"], table
    # A new template: a new ReplicaSet takes over, the old one is scaled to 0.
    kubectl(lab, "set", "env", "deployment/web", "-n", "apps", "COLOUR=blue")
    kubectl(lab, "rollout", "status", "deployment/web", "-n", "apps", "--timeout=60s")
    sets = json.loads(kubectl(lab, "get", "rs", "-n", "apps", "-o", "json"))["items"]
    assert sorted(rs["spec"]["replicas"] for rs in sets) == [0, 3], sets
    new = next(rs for rs in sets if rs["spec"]["replicas"] == 3)
    web = wait_until(
        lambda: (
            [
                p
                for p in pods(lab)
                if p["metadata"]["labels"].get("app") == "web"
                and "deletionTimestamp" not in p["metadata"]
            ]
            if len([p for p in pods(lab) if p["metadata"]["labels"].get("app") == "web"]) == 3
            else None
        ),
        30,
        "the old pods to go",
    )
    tag = new["metadata"]["labels"]["pod-template-hash"]
    assert all(p["metadata"]["labels"]["pod-template-hash"] == tag for p in web)
    assert all(
        {"name": "COLOUR", "value": "blue"} in p["spec"]["containers"][0]["env"] for p in web
    )
    kubectl(lab, "scale", "deployment/web", "-n", "apps", "--replicas=1")
    wait_until(
        lambda: len([p for p in pods(lab) if p["metadata"]["labels"].get("app") == "web"]) == 1,
        30,
        "scaled to 1",
    )
    # Deleting the owners deletes what they own (background cascading deletion).
    kubectl(lab, "delete", "daemonset/echo", "deployment/web", "-n", "apps")
    wait_until(lambda: pods(lab) == [], 30, "the owned pods to go")
    assert json.loads(kubectl(lab, "get", "rs", "-n", "apps", "-o", "json"))["items"] == []


def test_the_install_is_accepted_whole_and_its_controllers_make_pods(lab):
    out = kubectl(lab, "apply", "-k", os.path.join(ROOT, "deploy"))
    for made in ("daemonset.apps/slipstream-agent", "deployment.apps/slipstream-ca",
                 "deployment.apps/slipstream-gateway",
                 "poddisruptionbudget.policy/slipstream-gateway"):  # fmt: skip
        assert made in out, out

    def agents() -> list[dict]:
        return [
            p
            for p in pods(lab, "slipstream-system")
            if p["metadata"]["labels"].get("app.kubernetes.io/name") == "slipstream-agent"
        ]

    wait_until(lambda: len(agents()) == 2, 30, "the agent DaemonSet's pods")
    assert sorted(p["spec"]["nodeName"] for p in agents()) == ["n1", "n2"]
    kubectl(lab, "delete", "-k", os.path.join(ROOT, "deploy"), "--wait=true")
    wait_until(lambda: pods(lab, "slipstream-system") == [], 30, "the install's pods to go")
