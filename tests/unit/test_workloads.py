"""The lab's controller manager, decided from objects (agent/lab/workloads.py): DaemonSets,
Deployments, ReplicaSets and the garbage collector."""

from __future__ import annotations

import copy

from agent.lab.workloads import (
    CANNOT_RUN,
    REVISION_HASH,
    TEMPLATE_HASH,
    controller_uid,
    plan,
    template_hash,
)

NODES = ["n1", "n2"]


def template(version: str = "1") -> dict:
    return {
        "metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [{"name": "c", "command": ["sleep", version]}]},
    }


def ds(uid: str = "ds-1", version: str = "1", max_unavailable: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "sys", "uid": uid, "generation": 2},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": template(version),
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": max_unavailable},
            },
        },
    }


def pod(name: str, owner: dict, *, node: str = "", labels: dict | None = None, ready: bool = True,
        phase: str = "Running", reason: str = "") -> dict:  # fmt: skip
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}
    if reason:
        status["reason"] = reason
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels or {},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner["kind"],
                                 "name": owner["metadata"]["name"],
                                 "uid": owner["metadata"]["uid"], "controller": True}],
        },
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }  # fmt: skip


def ds_pods(owner: dict, version: str = "1", ready: bool = True) -> list[dict]:
    h = template_hash(template(version))
    return [pod(f"agent-{n}", owner, node=n, labels={REVISION_HASH: h}, ready=ready) for n in NODES]


def test_a_daemonset_gets_one_pod_per_node_owned_and_labelled():
    d = ds()
    out = plan([d], [], [], [], NODES)
    assert sorted(p["spec"]["nodeName"] for p in out.create) == NODES
    for p in out.create:
        assert controller_uid(p) == "ds-1"
        assert p["metadata"]["generateName"] == "agent-" and p["metadata"]["namespace"] == "sys"
        assert p["metadata"]["labels"] == {"app": "a", REVISION_HASH: template_hash(template())}
        assert p["spec"]["containers"] == template()["spec"]["containers"]
    assert out.delete == []
    ((kind, ns, name, status),) = out.status
    assert (kind, ns, name) == ("DaemonSet", "sys", "agent")
    assert status["desiredNumberScheduled"] == 2 and status["numberReady"] == 0
    assert status["observedGeneration"] == 2


def test_a_daemonset_at_rest_does_nothing_and_reports_ready():
    d = ds()
    out = plan([d], [], [], ds_pods(d), NODES)
    assert out.create == [] and out.delete == []
    status = out.status[0][3]
    assert status["numberReady"] == status["updatedNumberScheduled"] == 2


def test_a_new_template_replaces_pods_within_max_unavailable():
    d = ds(version="2")
    out = plan([d], [], [], ds_pods(d, version="1"), NODES)
    assert len(out.delete) == 1, "one node at a time (maxUnavailable 1)"
    out = plan([ds(version="2", max_unavailable=2)], [], [], ds_pods(d, version="1"), NODES)
    assert len(out.delete) == 2
    # A node already without a ready pod uses up the budget: nothing more goes down.
    pods = ds_pods(d, version="1")
    pods[0]["status"]["conditions"][0]["status"] = "False"
    out = plan([d], [], [], pods, NODES)
    assert [name for *_, name in out.delete] == ["agent-n1"], "only the unready one"
    # OnDelete: the user replaces pods.
    on_delete = copy.deepcopy(d)
    on_delete["spec"]["updateStrategy"] = {"type": "OnDelete"}
    assert plan([on_delete], [], [], ds_pods(d, version="1"), NODES).delete == []


def test_pods_on_gone_nodes_and_pods_of_gone_owners_are_deleted():
    d = ds()
    stray = pod("agent-n3", d, node="n3", labels={REVISION_HASH: template_hash(template())})
    out = plan([d], [], [], [*ds_pods(d), stray], NODES)
    assert out.delete == [("v1", "Pod", "sys", "agent-n3")]
    out = plan([], [], [], ds_pods(d), NODES)
    assert sorted(n for *_, n in out.delete) == ["agent-n1", "agent-n2"]
    mine = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mine", "namespace": "sys"}}
    assert plan([], [], [], [mine], NODES).delete == [], "pods no controller owns stay"


def test_a_pod_the_lab_cannot_run_is_reported_not_replaced_in_a_loop():
    d = ds()
    pods = [pod(f"agent-{n}", d, node=n, phase="Failed", reason=CANNOT_RUN, ready=False)
            for n in NODES]  # fmt: skip
    assert plan([d], [], [], pods, NODES).create == []
    crashed = [pod(f"agent-{n}", d, node=n, phase="Failed", ready=False) for n in NODES]
    assert len(plan([d], [], [], crashed, NODES).create) == 2


def deployment(uid: str = "dep-1", version: str = "1", replicas: int = 2) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": uid, "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "a"}},
            "template": template(version),
        },
    }


def rs_of(dep: dict, version: str, replicas: int, uid: str) -> dict:
    out = plan([], [deployment(version=version)], [], [], NODES)
    (rs,) = out.create
    rs["metadata"]["uid"] = uid
    rs["spec"]["replicas"] = replicas
    rs["metadata"]["ownerReferences"][0]["uid"] = dep["metadata"]["uid"]
    return rs


def test_a_deployment_owns_one_replicaset_per_template():
    dep = deployment()
    (rs,) = plan([], [dep], [], [], NODES).create
    h = template_hash(template())
    assert rs["kind"] == "ReplicaSet" and rs["metadata"]["name"] == f"web-{h}"
    assert controller_uid(rs) == "dep-1" and rs["spec"]["replicas"] == 2
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "a", TEMPLATE_HASH: h}
    assert rs["spec"]["template"]["metadata"]["labels"][TEMPLATE_HASH] == h


def test_a_replicaset_keeps_its_replicas():
    dep = deployment()
    rs = rs_of(dep, "1", 3, "rs-1")
    out = plan([], [dep], [rs], [pod("p1", rs)], NODES)
    pods_made = [b for b in out.create if b["kind"] == "Pod"]
    assert len(pods_made) == 2 and all(controller_uid(p) == "rs-1" for p in pods_made)
    assert ("shop", rs["metadata"]["name"], 2) in out.scale, "back to the Deployment's 2"
    many = [pod(f"p{i}", rs, ready=i != 2) for i in range(4)]
    out = plan([], [dep], [rs], many, NODES)
    assert out.delete[0] == ("v1", "Pod", "shop", "p2"), "one too many: the unready goes first"
    standalone = copy.deepcopy(rs)
    del standalone["metadata"]["ownerReferences"]
    out = plan([], [], [standalone], many, NODES)
    assert out.delete == [("v1", "Pod", "shop", "p2")], "one too many: the unready goes first"


def test_a_new_template_rolls_out_and_scales_the_old_set_down_once_the_new_is_ready():
    dep = deployment(version="2")
    old = rs_of(dep, "1", 2, "rs-old")
    new = rs_of(dep, "2", 2, "rs-new")
    old_pods = [pod(f"o{i}", old) for i in range(2)]
    out = plan([], [dep], [old, new], [*old_pods, pod("n0", new, ready=False)], NODES)
    assert (("shop", old["metadata"]["name"], 0)) not in out.scale, "new pods not ready yet"
    status = next(s for k, *_, s in out.status if k == "Deployment")
    assert status["updatedReplicas"] == 1 and status["replicas"] == 3
    out = plan([], [dep], [old, new], [*old_pods, pod("n0", new), pod("n1", new)], NODES)
    assert ("shop", old["metadata"]["name"], 0) in out.scale


def test_a_replicaset_without_its_deployment_is_deleted():
    dep = deployment()
    rs = rs_of(dep, "1", 2, "rs-1")
    out = plan([], [], [rs], [], NODES)
    assert out.delete == [("apps/v1", "ReplicaSet", "shop", rs["metadata"]["name"])]
