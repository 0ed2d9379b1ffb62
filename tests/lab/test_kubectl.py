"""The lab as a cluster that kubectl talks to: the machine's kubectl against `lab kubeconfig`.

Across two nodes, checked from outside (the app's view of its client, the agents'
access log and config dump, the lab's namespaces): labelling a namespace enrolls
its running pods and unlabelling lets them go; an Istio `security.istio.io/v1`
AuthorizationPolicy applied with kubectl is enforced; a pod created with kubectl
is scheduled, run and reported (`get -w` streams it); `kubectl delete pod`
removes it and its agent lets it go; `lab get` and `kubectl get` agree; the API
server killed and restarted by the lab keeps every object.

kubectl is required: setup installs it (Debian's kubernetes-client) where none is
present, so these tests fail rather than skip when it is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time

import pytest

from agent.lab.lab import Lab
from agent.state.enrollment import ENROLLED
from tests.lab.labkit import access_log, config_dump, curl, wait_until, workload
from tests.required import program

ECHO = '[slipstream, app, http-echo, --port, "8080"]'
MANIFEST = textwrap.dedent(f"""\
    apiVersion: slipstream.dev/v1alpha1
    kind: Lab
    metadata: {{name: kctl}}
    spec: {{nodes: [n1, n2]}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {{name: shop}}
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {{name: client, namespace: shop}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
    spec:
      nodeName: n1
      serviceAccountName: client
      containers:
      - {{name: main, command: [sleep, infinity]}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: server, namespace: shop, labels: {{app: web}}}}
    spec:
      nodeName: n2
      containers:
      - {{name: echo, command: {ECHO}}}
    """)

DENY_CLIENT = textwrap.dedent("""\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-client, namespace: shop}
    spec:
      selector: {matchLabels: {app: web}}
      action: DENY
      rules:
      - from:
        - source: {principals: [cluster.local/ns/shop/sa/client]}
    """)


def kubectl_path() -> str:
    return program("kubectl", "kubernetes-client")


def kubectl(lab: Lab, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        [kubectl_path(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=45,
        env={**os.environ, "KUBECONFIG": lab.kubeconfig(), "HOME": lab.dir},
        check=False,
    )
    assert res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr}"
    return res.stdout


def pods_json(lab: Lab) -> dict[str, dict]:
    items = json.loads(kubectl(lab, "get", "pods", "-A", "-o", "json"))["items"]
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}


def server_ip(lab: Lab) -> str:
    return lab.pod("server", "shop").ip


def ask(lab: Lab) -> subprocess.CompletedProcess[str]:
    url = f"http://{server_ip(lab)}:8080/"
    return lab.exec("client", ["curl", "-sS", "--max-time", "5", url], namespace="shop")


@pytest.fixture
def lab(make_lab) -> Lab:
    kubectl_path()
    return make_lab(MANIFEST)


@pytest.mark.timeout(180)
def test_label_enrolls_policy_is_enforced_unlabel_unenrolls(lab: Lab) -> None:
    # `lab get` and `kubectl get` tell one story: the same pods, addresses, nodes, phases.
    seen = pods_json(lab)
    for p in lab.get("pod", None):
        key = f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        assert seen[key]["spec"]["nodeName"] == p["spec"]["nodeName"]
        assert seen[key]["status"]["podIP"] == p["status"]["podIP"]
        assert seen[key]["status"]["phase"] == p["status"]["phase"] == "Running"
    wide = kubectl(lab, "get", "pods", "-n", "shop", "-o", "wide")
    assert server_ip(lab) in wide and "n2" in wide

    # Not in the mesh yet: plain TCP, the app sees the client's own address.
    assert workload(lab, "n2", "shop", "server").get("state") != ENROLLED
    wait_until(lambda: ask(lab).returncode == 0, 20, "the server to listen")
    assert curl(lab, "client", f"http://{server_ip(lab)}:8080/", "shop")["client"].startswith(
        lab.pod("client", "shop").ip + ":"
    )

    kubectl(lab, "label", "namespace", "shop", "slipstream.dev/dataplane-mode=ambient")
    for node, pod in (("n1", "client"), ("n2", "server")):
        wait_until(
            lambda n=node, p=pod: workload(lab, n, "shop", p).get("state") == ENROLLED,
            10,
            f"{pod} enrolled by its agent after the label",
        )
    since = time.time()
    assert ask(lab).returncode == 0
    inbound = wait_until(
        lambda: [
            r
            for r in access_log(lab, "n2", since)
            if r["direction"] == "inbound" and r["src_workload"] == "shop/client"
        ],
        10,
        "the server's agent to log the client's connection",
    )
    assert inbound[0]["outcome"] != "denied"

    # Istio's own manifest, through kubectl: the server's agent now refuses the client.
    kubectl(lab, "apply", "-f", "-", stdin=DENY_CLIENT)
    wait_until(lambda: ask(lab).returncode != 0, 10, "the DENY policy to be enforced")
    since = time.time()
    assert ask(lab).returncode != 0
    wait_until(
        lambda: any(
            r["outcome"] == "denied"
            for r in access_log(lab, "n2", since)
            if r["src_workload"] == "shop/client"
        ),
        10,
        "the server's agent to log the denial",
    )

    kubectl(lab, "label", "namespace", "shop", "slipstream.dev/dataplane-mode-")
    for node, pod in (("n1", "client"), ("n2", "server")):
        wait_until(
            lambda n=node, p=pod: workload(lab, n, "shop", p).get("state") != ENROLLED,
            10,
            f"{pod} let go by its agent after the label went",
        )
    # Out of the mesh again: no policy, the app sees the client's own address once more.
    answer = wait_until(
        lambda: ask(lab).returncode == 0 and ask(lab), 10, "plain TCP to work again"
    )
    assert json.loads(answer.stdout)["client"].startswith(lab.pod("client", "shop").ip + ":")


@pytest.mark.timeout(180)
def test_a_pod_made_with_kubectl_is_scheduled_run_watched_and_deleted(lab: Lab) -> None:
    kubectl(lab, "label", "namespace", "shop", "slipstream.dev/dataplane-mode=ambient")
    watch = subprocess.Popen(
        [kubectl_path(), "get", "pods", "-n", "shop", "-w", "-o", "wide"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KUBECONFIG": lab.kubeconfig(), "HOME": lab.dir},
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()
        assert first.split()[:2] == ["NAME", "READY"], first
        # No nodeName: the lab schedules it (the node with the fewest pods: both have one,
        # so the first node).
        kubectl(
            lab,
            "apply",
            "-f",
            "-",
            stdin=textwrap.dedent(f"""\
                apiVersion: v1
                kind: Pod
                metadata: {{name: extra, namespace: shop, labels: {{app: web}}}}
                spec:
                  containers:
                  - {{name: echo, command: {ECHO}}}
                """),
        )
        running = wait_until(
            lambda: (
                (p := pods_json(lab).get("shop/extra"))
                and p["status"].get("phase") == "Running"
                and p
            ),
            20,
            "the kubectl pod to run",
        )
        assert running["spec"]["nodeName"] == "n1"
        ready = {c["type"]: c["status"] for c in running["status"]["conditions"]}
        assert ready["Ready"] == "True"
        ip = running["status"]["podIP"]
        assert ip == lab.pod("extra", "shop").ip
        # The watch streamed it: a line for "extra", at last Running with its address.
        while True:
            line = watch.stdout.readline()
            assert line, "kubectl get -w ended"
            if line.startswith("extra ") and "Running" in line and ip in line:
                break
        wait_until(
            lambda: workload(lab, "n1", "shop", "extra").get("state") == ENROLLED,
            10,
            "the agent to enroll the kubectl pod",
        )
        wait_until(
            lambda: (
                lab.exec("client", ["curl", "-sS", f"http://{ip}:8080/"], "shop").returncode == 0
            ),
            20,
            "the kubectl pod's server to listen",
        )
        assert curl(lab, "client", f"http://{ip}:8080/", "shop")["pod"] == "extra"

        netns = lab.pod("extra", "shop").netns
        kubectl(lab, "delete", "pod", "-n", "shop", "extra", "--wait=true")
        wait_until(
            lambda: all(p["name"] != "extra" for p in lab.status()["pods"]),
            20,
            "the lab to remove the pod",
        )
        assert not os.path.exists(f"/run/netns/{netns}")
        wait_until(
            lambda: all(w["name"] != "extra" for w in config_dump(lab, "n1")["workloads"]),
            10,
            "the agent to let the deleted pod go",
        )
        assert "extra" not in {p["metadata"]["name"] for p in lab.get("pod", "shop")}
    finally:
        watch.kill()
        watch.communicate()  # closes the pipe


@pytest.mark.timeout(180)
def test_the_api_server_restarted_keeps_every_object(lab: Lab) -> None:
    kubectl(lab, "create", "configmap", "-n", "shop", "kept", "--from-literal=a=1")
    before = json.loads(kubectl(lab, "get", "configmap", "-n", "shop", "kept", "-o", "json"))
    lab.stop_apiserver(kill=True)  # a crash: the lab's kubelet starts it again
    after = wait_until(
        lambda: _try_get(lab, "configmap", "-n", "shop", "kept"), 30, "the API server back"
    )
    assert after["data"] == {"a": "1"}
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert {p["metadata"]["name"] for p in lab.get("pod", "shop")} == {"client", "server"}
    kubectl(lab, "create", "configmap", "-n", "shop", "later")
    later = json.loads(kubectl(lab, "get", "configmap", "-n", "shop", "later", "-o", "json"))
    assert int(later["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    # The lab still follows the API after the restart: a label still enrolls.
    kubectl(lab, "label", "namespace", "shop", "slipstream.dev/dataplane-mode=ambient")
    wait_until(
        lambda: workload(lab, "n2", "shop", "server").get("state") == ENROLLED,
        20,
        "enrollment after the API server came back",
    )


def _try_get(lab: Lab, *args: str) -> dict | None:
    res = subprocess.run(
        [kubectl_path(), "get", *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KUBECONFIG": lab.kubeconfig(), "HOME": lab.dir},
        check=False,
    )
    return json.loads(res.stdout) if res.returncode == 0 else None


def test_a_killed_kubelet_is_started_again_by_the_next_lab_command(lab: Lab) -> None:
    (rec,) = [p for p in lab.status()["processes"] if p["kind"] == "kubelet"]
    os.kill(rec["pid"], signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{rec['pid']}/stat") or _zombie(rec["pid"]),
               10, "the kubelet to die")  # fmt: skip
    lab.kubeconfig()  # what a user runs before kubectl
    (again,) = [p for p in lab.status()["processes"] if p["kind"] == "kubelet"]
    assert again["pid"] != rec["pid"]
    kubectl(
        lab,
        "run",
        "after",
        "-n",
        "shop",
        "--image=none",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "infinity",
    )
    wait_until(
        lambda: (
            (_try_get(lab, "pod", "-n", "shop", "after") or {}).get("status", {}).get("phase")
            == "Running"
        ),
        30,
        "the pod made after the restart to run",
    )


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
