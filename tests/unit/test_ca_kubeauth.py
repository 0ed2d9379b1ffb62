"""Who a TokenReview answer says the CA's caller is (sans-IO), including answers a broken or
hostile API server could send: anything unclear is refused."""

from __future__ import annotations

from typing import Any

import pytest

from agent.ca.credentials import NODE, WORKLOAD, Unauthenticated
from agent.ca.kubeauth import EXTRA_NODE, EXTRA_POD, caller_of
from agent.state import StateStore, StateUpdater
from agent.state.objects import parse_object

NODES = ["kube-system/agent"]


def review(user: str = "system:serviceaccount:kube-system:agent", **extra: Any) -> dict:
    extra = {EXTRA_POD: ["agent-x"], EXTRA_NODE: ["n1"], **extra}
    return {"status": {"authenticated": True, "user": {"username": user, "extra": extra}}}


def snapshot(node: str):
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent-x", "namespace": "kube-system"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["x"]}]},
    }
    return StateUpdater(StateStore()).apply([parse_object(body)])


def test_node_and_workload_callers():
    c = caller_of(review(), NODES, snapshot("n1"))
    assert (c.kind, c.node, c.source) == (NODE, "n1", "kube")
    c = caller_of(review("system:serviceaccount:kube-system:other"), NODES, snapshot("n1"))
    assert (c.kind, c.namespace, c.service_account, c.pod) == (
        WORKLOAD,
        "kube-system",
        "other",
        "agent-x",
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (None, "no status"),
        ({"status": []}, "no status"),
        ({"status": {"authenticated": False, "error": "token has expired"}}, "token has expired"),
        ({"status": {"authenticated": "true"}}, "did not authenticate"),
        ({"status": {"authenticated": True}}, "nobody's"),
        (review("system:node:n1"), "not a service account's"),
        (review("system:serviceaccount:only-ns"), "is not a service account"),
        (review(**{EXTRA_POD: []}), "not bound to a pod"),
        (review(**{EXTRA_NODE: ["n1", "n2"]}), "not bound to a pod"),
        (review(**{EXTRA_NODE: "n1"}), "not bound to a pod"),
    ],
)
def test_unclear_answers_are_refused(answer, reason):
    with pytest.raises(Unauthenticated, match=reason):
        caller_of(answer, NODES, snapshot("n1"))


def test_the_bound_pod_must_be_where_the_token_says():
    with pytest.raises(Unauthenticated, match="runs on node n1, but it runs on n2"):
        caller_of(review(), NODES, snapshot("n2"))
    with pytest.raises(Unauthenticated, match="which is gone"):
        caller_of(review(), NODES, StateStore().snapshot)
