"""Which pods can undo their own capture: the warning /config_dump and `lab status` show."""

import pytest

from agent.state.enrollment import capture_warning
from agent.state.objects import parse_object


def pod(*security: dict) -> object:
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "containers": [
                    {"name": f"c{i}", "command": ["x"], "securityContext": sc}
                    for i, sc in enumerate(security)
                ]
            },
        }
    )


@pytest.mark.parametrize(
    ("security", "named"),
    [
        ({"privileged": True}, "c0 (privileged)"),
        ({"capabilities": {"add": ["NET_ADMIN"]}}, "c0 (NET_ADMIN)"),
        ({"capabilities": {"add": ["CAP_SYS_ADMIN"]}}, "c0 (SYS_ADMIN)"),
        ({"capabilities": {"add": ["all"]}}, "c0 (ALL)"),
        (
            {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}},
            "c0 (privileged, NET_ADMIN)",
        ),
    ],
)
def test_containers_that_can_remove_capture_are_named(security, named):
    warning = capture_warning(pod({}, security))
    assert named.replace("c0", "c1") in warning and "c0" not in warning
    assert "bypass capture" in warning


@pytest.mark.parametrize(
    "security",
    [
        {},
        {"privileged": False},
        {"capabilities": {"add": ["NET_RAW", "NET_BIND_SERVICE"], "drop": ["ALL"]}},
        {"capabilities": {"drop": ["NET_ADMIN"]}},
    ],
)
def test_ordinary_containers_carry_no_warning(security):
    assert capture_warning(pod(security)) == ""


def test_a_host_network_pod_is_never_enrolled():
    """Its namespace is the node's (the agent's own): not a pod's to capture, as in Istio."""
    from agent.state.enrollment import decide

    ns = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"slipstream.dev/dataplane-mode": "ambient"}},
        }
    )
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": "x"}]},
    }
    d = decide(parse_object(body), ns)
    assert not d.enroll and "hostNetwork" in d.reason
    body["spec"]["hostNetwork"] = False
    assert decide(parse_object(body), ns).enroll
