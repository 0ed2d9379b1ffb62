"""The lab's pure bookkeeping: names, addresses, placement, phases, and the hosts file."""

import pytest

from agent.common.errors import FieldError
from agent.lab import access, model
from agent.lab.model import LabSpec, LabState, NodeRecord, PodRecord


def state(nodes=("a", "b")):
    st = LabState("t", LabSpec("t", tuple(nodes)), 0.0)
    for i, n in enumerate(nodes, start=1):
        st.nodes[n] = NodeRecord(
            n, i, model.node_netns("t", n), model.node_ip(i), model.pod_cidr(i)
        )
    return st


def add_pod(st, ns, name, node, ip, labels=None):
    st.pods[f"{ns}/{name}"] = PodRecord(
        ns,
        name,
        node,
        ip,
        model.pod_netns("t", ns, name),
        model.host_veth(ns, name),
        "/nonexistent",
        0.0,
    )
    st.manifests[f"Pod {ns}/{name}"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "command": ["x"]}]},
    }


def test_names_cannot_collide_between_labs():
    # "_" is not allowed in any Kubernetes name, so these never meet.
    assert model.node_netns("a", "node-bridge") != model.bridge_netns("a-node")
    assert model.pod_netns("a", "b", "c") == "ss_a_pod_b_c"
    assert len(model.host_veth("some-namespace", "a-very-long-pod-name-indeed")) <= 15
    assert len(model.pod_netns("lab", "n" * 63, "p" * 253)) <= 200


def test_lab_names_are_checked():
    assert model.check_lab_name("demo-1") == "demo-1"
    for bad in ("Demo", "a_b", "x" * 25, ""):
        with pytest.raises(FieldError):
            model.check_lab_name(bad)


def test_addresses():
    assert model.node_ip(2) == "172.30.0.2"
    assert model.pod_cidr(3) == "10.244.3.0/24"
    assert model.pod_gateway(3) == "10.244.3.1"
    assert model.free_pod_host({"10.244.1.2", "10.244.1.3"}, 1) == 4
    assert model.free_pod_host({f"10.244.1.{h}" for h in range(2, 255)}, 1) is None
    assert model.free_service_ip(set()) == "10.96.0.10"
    assert model.free_service_ip({"10.96.0.10"}) == "10.96.0.11"


def test_spread_picks_the_emptiest_node_in_order():
    st = state(("a", "b", "c"))
    assert st.choose_node().name == "a"
    add_pod(st, "d", "p1", "a", "10.244.1.2")
    assert st.choose_node().name == "b"
    add_pod(st, "d", "p2", "b", "10.244.2.2")
    add_pod(st, "d", "p3", "c", "10.244.3.2")
    assert st.choose_node().name == "a"


@pytest.mark.parametrize(
    ("body", "errfield"),
    [
        (
            {
                "apiVersion": "v1",
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a"]},
            },
            "apiVersion",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": []},
            },
            "spec.nodes",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a", "a"]},
            },
            "spec.nodes[1]",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["A"]},
            },
            "spec.nodes[0]",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a"], "mesh": {"enabled": "yes"}},
            },
            "spec.mesh.enabled",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a"], "mesh": {"capture": "tproxy"}},
            },
            "spec.mesh.capture",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a"], "mesh": {"agentArgs": "--hbone-max-streams-per-identity"}},
            },
            "spec.mesh.agentArgs",
        ),
        (
            {
                "apiVersion": model.MESH_API,
                "kind": "Lab",
                "metadata": {"name": "x"},
                "spec": {"nodes": ["a"], "mesh": {"source": "files"}},
            },
            "spec.mesh.source",
        ),
    ],
)
def test_bad_lab_specs(body, errfield):
    with pytest.raises(FieldError) as exc:
        model.parse_lab_spec(body)
    assert exc.value.field == errfield


def test_agent_args_reach_every_agent_and_survive_the_state_file():
    spec = model.parse_lab_spec(
        {
            "apiVersion": model.MESH_API,
            "kind": "Lab",
            "metadata": {"name": "x"},
            "spec": {
                "nodes": ["a"],
                "mesh": {"agentArgs": ["--hbone-max-streams-per-identity", "5"]},
            },
        }
    )
    assert spec.agent_args == ("--hbone-max-streams-per-identity", "5")
    st = LabState("x", spec, 0.0)
    assert LabState.from_json(st.to_json()).spec == spec


def test_state_round_trips_through_json():
    st = state()
    add_pod(st, "shop", "web", "a", "10.244.1.2", {"app": "web"})
    st.live["Pod shop/web"] = {"podIP": "10.244.1.2", "nodeName": "a", "phase": "Running"}
    again = LabState.from_json(st.to_json())
    assert again == st
    obj = again.object(again.object_keys("Pod")[0])
    assert obj["status"]["podIP"] == "10.244.1.2" and obj["spec"]["nodeName"] == "a"
    assert obj["status"]["podIPs"] == [{"ip": "10.244.1.2"}]


@pytest.mark.parametrize(
    ("status", "alive", "phase"),
    [
        (None, False, "Pending"),
        ({"containers": [{"state": "running"}]}, True, "Running"),
        ({"containers": [{"state": "running"}]}, False, "Failed"),
        ({"containers": [{"state": "terminated", "exit_code": 0}]}, False, "Succeeded"),
        (
            {
                "containers": [
                    {"state": "terminated", "exit_code": 0},
                    {"state": "terminated", "exit_code": 2},
                ]
            },
            False,
            "Failed",
        ),
        ({"error": "cannot start", "containers": []}, False, "Failed"),
        (
            {"containers": [{"state": "waiting", "reason": "CrashLoopBackOff", "restarts": 3}]},
            True,
            "Running",
        ),
    ],
)
def test_pod_phase(status, alive, phase):
    assert model.pod_phase(status, alive)["phase"] == phase


def test_hosts_file_resolves_services_like_cluster_dns():
    st = state()
    add_pod(st, "shop", "web-1", "a", "10.244.1.2", {"app": "web"})
    add_pod(st, "shop", "web-2", "b", "10.244.2.2", {"app": "web"})
    add_pod(st, "other", "client", "a", "10.244.1.3")
    st.manifests["Service shop/web"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    st.live["Service shop/web"] = {"clusterIP": "10.96.0.10"}
    st.manifests["Service shop/web-pods"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-pods", "namespace": "shop"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    same_ns = model.hosts_file(st, st.pods["shop/web-1"])
    assert "10.96.0.10\tweb.shop.svc.cluster.local web.shop.svc web.shop web\n" in same_ns
    assert (
        "10.244.1.2\tweb-pods.shop.svc.cluster.local web-pods.shop.svc web-pods.shop web-pods\n"
        in same_ns
    )
    assert "10.244.2.2\tweb-pods.shop" in same_ns
    assert "10.244.1.2\tweb-1\n" in same_ns
    other = model.hosts_file(st, st.pods["other/client"])
    assert "web.shop web\n" not in other and "web.shop\n" in other


@pytest.mark.parametrize("source", ["kube", "file", None])
def test_components_read_the_api_unless_the_lab_says_file(source):
    mesh = {"source": source} if source else {}
    spec = model.parse_lab_spec(
        {
            "apiVersion": model.MESH_API,
            "kind": "Lab",
            "metadata": {"name": "x"},
            "spec": {"nodes": ["a"], "mesh": mesh},
        }
    )
    assert spec.source == (source or "kube")
    st = LabState("x", spec, 0.0)
    assert LabState.from_json(st.to_json()).spec == spec
    dirs = model.LabDirs("/run/slipstream/labs/x")
    flags = access.source_flags(st, dirs, "/k/config")
    if spec.source == "kube":
        assert flags == ["--source", "kube", "--kubeconfig", "/k/config"]
    else:
        assert flags == ["--source", f"file:{dirs.objects}"]
