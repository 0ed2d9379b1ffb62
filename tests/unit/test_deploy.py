"""deploy/: rendered by kubectl's kustomize, every object valid against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: unknown fields refused), every command one the installed
`slipstream` accepts, and the k3s overlay changing only the CNI paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from agent.cli import build_parser
from agent.common.units import parse_duration
from agent.node.app import AgentConfig
from agent.state import crds
from gateway.config.model import parse_config
from tests.required import program

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.32.0"


def kubectl() -> str:
    return program("kubectl", "kubernetes-client")


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(DEPLOY)


def test_every_object_is_valid_kubernetes(base):
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    kinds = sorted(d["kind"] for d in base)
    assert kinds.count("CustomResourceDefinition") == len(crds.files())
    for doc in base:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc}")
    # The validator is strict: a misspelt field of the DaemonSet is refused, naming it.
    (ds,) = [d for d in base if d["kind"] == "DaemonSet"]
    bad = {**ds, "spec": {**ds["spec"], "updateStrategyy": {}}}
    with pytest.raises(ValidationError, match="updateStrategyy"):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    assert {d["metadata"].get("namespace") for d in base if d["kind"] in (
        "Deployment", "DaemonSet", "Service", "ServiceAccount", "ConfigMap")} == {
        "slipstream-system"}  # fmt: skip


def test_the_crds_kustomization_lists_every_generated_crd():
    doc = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())
    assert sorted(doc["resources"]) == sorted(crds.files())


def _containers(base: list[dict]) -> dict[str, dict]:
    out = {}
    for d in base:
        if d["kind"] in ("Deployment", "DaemonSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                out[f"{d['metadata']['name']}/{c['name']}"] = c
    return out


def test_every_command_is_one_slipstream_accepts(base):
    containers = _containers(base)
    assert set(containers) == {
        "slipstream-agent/agent",
        "slipstream-agent/cni-install",
        "slipstream-ca/ca",
        "slipstream-gateway/gateway",
    }
    parser = build_parser()
    for name, c in containers.items():
        argv = [a.replace("$(NODE_NAME)", "node-1") for a in c["command"]]
        assert argv[0] == "slipstream", name
        args = parser.parse_args(argv[1:])
        assert callable(getattr(args, "func", None)), name
    agent = containers["slipstream-agent/agent"]["command"]
    assert agent[agent.index("--source") + 1] == "kube"
    assert "--cni-socket" in agent
    # The preStop drain: a command too, and over before the grace period ends.
    hook = containers["slipstream-agent/agent"]["lifecycle"]["preStop"]["exec"]["command"]
    args = parser.parse_args(hook[1:])
    assert hook[:2] == ["slipstream", "drain"] and args.func.__name__ == "_drain"
    ds = next(d for d in base if d["kind"] == "DaemonSet")
    grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert parse_duration(args.wait) + AgentConfig.drain_deadline < grace


def test_the_gateway_config_is_valid(base):
    (cm,) = [d for d in base if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
             "slipstream-gateway"]  # fmt: skip
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
    assert [lst.name for lst in config.listeners] == ["web"]


def test_the_agent_runs_unprivileged_with_named_capabilities(base):
    (ds,) = [d for d in base if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["serviceAccountName"] == "slipstream-agent"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["capabilities"]["drop"] == ["ALL"], c["name"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert agent["readinessProbe"]["httpGet"]["port"] == 15021
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/sys/fs/bpf", "/var/run/netns", "/var/run/slipstream", "/lib/modules"} <= mounts


def test_the_k3s_overlay_changes_only_the_cni_paths(base):
    k3s = render(DEPLOY / "overlays" / "k3s")
    assert len(k3s) == len(base)
    (ds,) = [d for d in k3s if d["kind"] == "DaemonSet"]
    paths = {v["name"]: v.get("hostPath", {}).get("path") for v in
             ds["spec"]["template"]["spec"]["volumes"]}  # fmt: skip
    assert paths["cni-bin"] == "/var/lib/rancher/k3s/data/cni"
    assert paths["cni-conf"] == "/var/lib/rancher/k3s/agent/etc/cni/net.d"
    (orig,) = [d for d in base if d["kind"] == "DaemonSet"]
    for name in ("cni-bin", "cni-conf"):
        for d in (ds, orig):
            d["spec"]["template"]["spec"]["volumes"] = [
                v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] != name
            ]
    assert ds == orig
    assert [d for d in k3s if d["kind"] != "DaemonSet"] == [
        d for d in base if d["kind"] != "DaemonSet"
    ]
