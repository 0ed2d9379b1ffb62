"""slipstream-cni's pure parts: the plugin stays standalone Python 3.8 of the standard library,
builds its request from the runtime's environment, and the agent's reply logic."""

import ast
import sys
from pathlib import Path

import pytest

from agent.cni import plugin
from agent.common.constants import CNI_SOCKET
from agent.node.cni import CniPods, CniRequest, Sandbox, answer
from agent.state.enrollment import ENROLLED, FAILED, NOT_ENROLLED, PENDING, WorkloadStatus
from agent.state.objects import ObjectKey

SOURCE = Path(plugin.__file__).read_text()


def test_the_plugin_is_python_3_8_of_the_standard_library_only():
    tree = ast.parse(SOURCE, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "no relative imports: it runs alone"
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert SOURCE.startswith("#!/usr/bin/env python3\n")
    assert plugin.DEFAULT_SOCKET == CNI_SOCKET, "the plugin's default is the agent's socket"


ENV = {
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/cni-1",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u",
}
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
    "ips": [{"address": "10.1.0.5/24", "interface": 0}, {"address": "fd00::5/64"}],
}


def test_the_request_carries_the_pod_and_its_addresses():
    body = plugin.request({"prevResult": PREV}, "ADD", ENV)
    assert body == {
        "command": "ADD",
        "containerID": "c1",
        "netns": "/var/run/netns/cni-1",
        "ifname": "eth0",
        "podNamespace": "shop",
        "podName": "web-1",
        "ips": ["10.1.0.5", "fd00::5"],
    }
    req = CniRequest.model_validate(body)
    assert req.key == ObjectKey("Pod", "shop", "web-1")
    assert Sandbox(req.container_id, req.netns, req.ips).ip == "10.1.0.5"


@pytest.mark.parametrize(
    ("env", "config", "code", "word"),
    [
        ({**ENV, "CNI_CONTAINERID": ""}, {"prevResult": PREV}, 4, "CNI_CONTAINERID"),
        ({**ENV, "CNI_NETNS": ""}, {"prevResult": PREV}, 4, "CNI_NETNS"),
        ({**ENV, "CNI_ARGS": "K8S_POD_NAME=x"}, {"prevResult": PREV}, 4, "K8S_POD_NAMESPACE"),
        (ENV, {}, 7, "prevResult"),
    ],
)
def test_what_cannot_be_asked_is_refused_naming_it(env, config, code, word):
    with pytest.raises(plugin.PluginError) as exc:
        plugin.request(config, "ADD", env)
    assert exc.value.code == code and word in exc.value.msg


def test_del_needs_only_the_container():
    body = plugin.request({}, "DEL", {"CNI_CONTAINERID": "c1"})
    assert body["command"] == "DEL" and body["containerID"] == "c1"


def status(state, netns="/run/netns/a", reason="why"):
    return WorkloadStatus("shop", "web-1", "10.1.0.5", state, reason, netns=netns)


def req(command="ADD", netns="/run/netns/a"):
    return CniRequest(command=command, container_id="c", netns=netns, pod_namespace="shop",
                      pod_name="web-1")  # fmt: skip


def test_replies():
    assert answer(req(), None) is None, "not in the agent's view: no decision yet"
    assert answer(req(), status(PENDING)) is None
    assert answer(req(), status(ENROLLED)) == (200, {"state": ENROLLED, "reason": "why"})
    assert answer(req(), status(NOT_ENROLLED, netns="")) == (
        200,
        {"state": NOT_ENROLLED, "reason": "why"},
    )
    code, body = answer(req(), status(FAILED, reason="bad netns"))
    assert code == 503 and "bad netns" in body["error"]
    # Enrolled, but in an older sandbox than this ADD's: wait for the new one.
    assert answer(req(netns="/run/netns/b"), status(ENROLLED)) is None
    assert answer(req("CHECK", netns="/run/netns/b"), status(ENROLLED))[0] == 409
    assert answer(req("CHECK"), status(ENROLLED))[0] == 200


def test_a_del_of_an_old_sandbox_keeps_the_new_one():
    pods, key = CniPods(), ObjectKey("Pod", "shop", "web-1")
    pods.add(key, Sandbox("new", "/run/netns/b", ("10.1.0.6",)))
    assert not pods.remove(key, "old")
    assert pods.get(key) is not None
    assert pods.remove(key, "new") and pods.get(key) is None
