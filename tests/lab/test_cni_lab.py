"""The lab's nodes as a CNI runtime runs them (`spec.podNetwork: cni`): the reference
plugins (bridge, host-local, loopback) as each node's primary CNI, slipstream-cni chained
after them by the DaemonSet's own install step, and every pod's network made by running
that chain (agent/lab/cnirun.py).

Checked from outside: the node's conflist and the IPAM's store, the bridge the pods hang
on, the agent hearing of each pod from the CNI chain alone (no netns annotation), bytes
between enrolled pods encrypted on the wire and plaintext between others; with the agent
down a new pod waits (FailedCreatePodSandBox naming the agent's socket) and starts,
enrolled, once the agent is back; a primary that rewrites its file gets slipstream-cni
chained again; a deleted pod's address goes back to the IPAM and its agent forgets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from agent.cni.conflist import PLUGIN_TYPE
from agent.lab import cnirun, mesh, model
from agent.lab.lab import Lab
from agent.state.enrollment import ANNOTATION_NETNS
from tests.lab.labkit import (
    SEND_MARKER,
    bridge_capture,
    config_dump,
    curl,
    pod_manifest,
    seen,
    wait_until,
    workload,
)
from tests.lab.test_kubectl import kubectl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO = '[slipstream, app, http-echo, --port, "8080"]'
TCP_ECHO = '[slipstream, app, tcp-echo, --port, "9000"]'


def pod(name: str, ns: str, node: str, command: str) -> str:
    return pod_manifest(name, ns, node, command)


CLUSTER = (
    textwrap.dedent("""\
        apiVersion: slipstream.dev/v1alpha1
        kind: Lab
        metadata: {name: ignored}
        spec: {nodes: [n1, n2], podNetwork: cni}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: mesh, labels: {slipstream.dev/dataplane-mode: ambient}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: plain}
        """)
    + pod("server", "mesh", "n1", TCP_ECHO)
    + pod("client", "mesh", "n2", "[sleep, infinity]")
    + pod("web", "plain", "n1", ECHO)
    + pod("browser", "plain", "n2", "[sleep, infinity]")
)


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab(CLUSTER)


def node_cni(lab: Lab, node: str) -> cnirun.NodeCni:
    return cnirun.NodeCni.under(lab.dirs.cni(node), model.node_netns(lab.name, node))


def conflist(lab: Lab, node: str) -> dict:
    return cnirun.load_conflist(node_cni(lab, node).conf_dir)


def ipam_holds(lab: Lab, node: str) -> set[str]:
    store = os.path.join(node_cni(lab, node).ipam_dir, cnirun.NETWORK_NAME)
    return {n for n in os.listdir(store) if n[0].isdigit()}


def sandboxes(lab: Lab, node: str) -> set[str]:
    """The pods the node's agent heard of from slipstream-cni."""
    return {s["pod"] for s in config_dump(lab, node)["cniSandboxes"]}


def api_pod(lab: Lab, name: str, ns: str) -> dict:
    return json.loads(kubectl(lab, "get", "pod", "-n", ns, name, "-o", "json"))


def wait_running(lab: Lab, name: str, ns: str) -> None:
    wait_until(
        lambda: api_pod(lab, name, ns)["status"].get("phase") == "Running", 30, f"{ns}/{name}"
    )


def test_pods_get_their_network_from_the_chain_and_the_agent_hears_of_them_there(lab):
    for node in ("n1", "n2"):
        # The primary's plugins first, as the node's primary CNI wrote them; ours last,
        # put there by the same command the DaemonSet's cni-install container runs.
        assert [p["type"] for p in conflist(lab, node)["plugins"]] == [
            "bridge",
            "loopback",
            PLUGIN_TYPE,
        ]
        assert os.access(os.path.join(node_cni(lab, node).bin_dir, PLUGIN_TYPE), os.X_OK)
    with open(os.path.join(ROOT, "deploy/base/agent.yaml")) as f:
        deploy = list(yaml.safe_load_all(f))
    install = next(
        c
        for d in deploy
        if d and d["kind"] == "DaemonSet"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "cni-install"
    )["command"]
    ran = mesh.cni_install_argv(lab.dirs, "n1")
    assert ran[ran.index("cni") : ran.index("cni") + 2] == install[1:3]
    # All but the DaemonSet's own removal (the lab, not a DaemonSet, starts these agents).
    assert sorted(a for a in ran if a.startswith("--")) == sorted(
        a for a in install if a.startswith("--") and a != "--remove-with-daemonset"
    )
    for name, ns, node in (("server", "mesh", "n1"), ("web", "plain", "n1"),
                           ("client", "mesh", "n2")):  # fmt: skip
        rec = lab.pod(name, ns)
        # The address host-local handed out, reported through the API.
        assert rec.ip in ipam_holds(lab, node)
        assert api_pod(lab, name, ns)["status"]["podIP"] == rec.ip
        # The pod's veth is a port of the node's bridge cni0.
        link = subprocess.run(
            ["ip", "-n", model.node_netns(lab.name, node), "-j", "link", "show", rec.veth],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(link.stdout)[0]["master"] == cnirun.BRIDGE
        # No annotation told the agent where the pod lives: the CNI ADD did.
        annotations = api_pod(lab, name, ns)["metadata"].get("annotations") or {}
        assert ANNOTATION_NETNS not in annotations
    assert {"mesh/server", "plain/web"} <= sandboxes(lab, "n1")
    assert workload(lab, "n1", "mesh", "server")["state"] == "enrolled"
    assert workload(lab, "n1", "plain", "web")["state"] != "enrolled"


def test_enrolled_pods_talk_encrypted_on_the_wire_others_in_plaintext(lab, tmp_path):
    server, web = lab.pod("server", "mesh").ip, lab.pod("web", "plain").ip
    get = ["curl", "-s", "-o", "/dev/null", f"http://{web}:8080/"]
    wait_until(lambda: lab.exec("browser", get, namespace="plain").returncode == 0, 10, "web")
    with bridge_capture(lab, tmp_path / "bridge.pcap") as pcap:
        secret, visible = f"SECRET-{uuid.uuid4().hex}", f"VISIBLE-{uuid.uuid4().hex}"
        res = lab.exec(
            "client", ["python3", "-c", SEND_MARKER, server, "9000", secret], namespace="mesh"
        )
        assert res.stdout.strip() == secret, res.stderr
        assert curl(lab, "browser", f"http://{web}:8080/{visible}", "plain")
        wait_until(lambda: visible.encode() in pcap.read_bytes(), 15, "the visible marker")
    raw = pcap.read_bytes()
    assert visible.encode() in raw
    assert secret.encode() not in raw
    assert len(seen(pcap, "tcp port 15008")) > 4
    assert seen(pcap, "tcp port 9000") == []


def test_with_the_agent_down_a_new_pod_waits_and_starts_enrolled_once_it_is_back(lab):
    lab.stop_agent("n1")
    kubectl(lab, "apply", "-f", "-", stdin=pod("late", "mesh", "n1", TCP_ECHO))

    def refused() -> str:
        status = api_pod(lab, "late", "mesh").get("status") or {}
        return status.get("message", "") if status.get("reason") == "FailedCreatePodSandBox" else ""

    why = wait_until(refused, 30, "the pod to wait for its sandbox")
    # Fail closed, and the message says why: the agent's socket does not answer.
    assert mesh.cni_socket(lab.dirs, "n1") in why and PLUGIN_TYPE in why, why
    assert api_pod(lab, "late", "mesh")["status"]["phase"] == "Pending"
    assert not any(k == "mesh/late" for k in lab.load().pods)
    lab.start_agent("n1")
    wait_running(lab, "late", "mesh")  # once the agent is back
    assert workload(lab, "n1", "mesh", "late")["state"] == "enrolled"


def test_a_primary_that_rewrites_its_file_gets_slipstream_cni_chained_again(lab):
    node = node_cni(lab, "n2")
    cnirun.write_primary(node, model.pod_cidr(2), model.pod_gateway(2))
    assert not cnirun.chained(node.conf_dir)
    wait_until(lambda: cnirun.chained(node.conf_dir), 15, "the install step to chain again")
    kubectl(lab, "apply", "-f", "-", stdin=pod("after", "mesh", "n2", "[sleep, infinity]"))
    wait_running(lab, "after", "mesh")
    assert workload(lab, "n2", "mesh", "after")["state"] == "enrolled"


def test_a_deleted_pod_gives_its_address_back_and_its_agent_forgets_it(lab):
    ip = lab.pod("web", "plain").ip
    assert ip in ipam_holds(lab, "n1")
    kubectl(lab, "delete", "pod", "-n", "plain", "web", "--wait=true")
    wait_until(lambda: ip not in ipam_holds(lab, "n1"), 30, "host-local to release the address")
    wait_until(lambda: "plain/web" not in sandboxes(lab, "n1"), 15, "the agent to forget it")


def test_a_host_network_pod_runs_in_its_node_and_goes_without_taking_the_node(lab):
    """spec.hostNetwork: no namespace and no CNI ADD of its own, the node's address; never
    enrolled; deleting it stops its processes only (the node and its agent stay)."""
    node_ip = lab.load().nodes["n1"].ip
    kubectl(lab, "apply", "-f", "-", stdin=pod_manifest(
        "hostnet", "mesh", "n1", "[sh, -c, 'ip -4 -o addr show eth0; exec sleep infinity']",
        container_extra="",
    ).replace("  nodeName: n1", "  nodeName: n1\n  hostNetwork: true"))  # fmt: skip
    wait_running(lab, "hostnet", "mesh")
    assert api_pod(lab, "hostnet", "mesh")["status"]["podIP"] == node_ip
    (log,) = lab.log_paths("hostnet", "mesh")
    wait_until(lambda: node_ip in Path(log).read_text(), 10, "the pod to print its eth0")
    assert "mesh/hostnet" not in sandboxes(lab, "n1"), "no CNI ADD for the node's network"
    assert workload(lab, "n1", "mesh", "hostnet").get("state") != "enrolled"
    agent_pid = next(p["pid"] for p in lab.status()["processes"] if p["name"] == "n1"
                     and p["kind"] == "agent")  # fmt: skip
    kubectl(lab, "delete", "pod", "-n", "mesh", "hostnet", "--wait=true")
    wait_until(lambda: "mesh/hostnet" not in lab.load().pods, 30, "the pod to go")
    assert os.path.exists(f"/run/netns/{model.node_netns(lab.name, 'n1')}")
    os.kill(agent_pid, 0)  # the node's agent is still there
    assert workload(lab, "n1", "mesh", "server")["state"] == "enrolled"
