"""PeerAuthentication: validation, and which mode applies (workload > namespace > mesh)."""

import pytest

from agent.common.errors import FieldError
from agent.policy.peerauth import PERMISSIVE, STRICT, mode_for
from agent.state import StateStore, StateUpdater, parse_object


def pa(name, ns, mode, selector=None):
    spec = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return parse_object(
        {
            "apiVersion": "slipstream.dev/v1alpha1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


POD = parse_object(
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "command": ["x"]}]},
    }
)


@pytest.mark.parametrize(
    ("policies", "mode"),
    [
        ([], PERMISSIVE),
        ([pa("mesh", "slipstream-system", "STRICT")], STRICT),
        ([pa("mesh", "slipstream-system", "STRICT"), pa("ns", "shop", "PERMISSIVE")], PERMISSIVE),
        ([pa("ns", "shop", "STRICT"), pa("wl", "shop", "PERMISSIVE", {"app": "web"})], PERMISSIVE),
        ([pa("ns", "shop", "STRICT"), pa("wl", "shop", "PERMISSIVE", {"app": "other"})], STRICT),
        ([pa("mesh", "slipstream-system", "STRICT"), pa("ns", "shop", "UNSET")], STRICT),
        ([pa("ns", "shop", "DISABLE")], PERMISSIVE),
        ([pa("elsewhere", "other", "STRICT")], PERMISSIVE),
    ],
    ids=[
        "none",
        "mesh",
        "ns-over-mesh",
        "workload-over-ns",
        "selector-miss",
        "unset-inherits",
        "disable",
        "other-ns",
    ],
)
def test_mode(policies, mode):
    store = StateStore()
    StateUpdater(store).apply(policies)
    assert mode_for(store.snapshot, POD, "shop") == mode


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"mtls": {"mode": "STRICTER"}}, "spec.mtls.mode"),
        ({"mtls": {"mode": "STRICT"}, "portLevel": {}}, "spec.portLevel"),
        ({"mtls": {"mod": "STRICT"}}, "spec.mtls.mod"),
        ({"selector": {"app": "x"}}, "spec.selector.app"),
    ],
)
def test_invalid_peer_authentication_is_refused_naming_the_field(spec, field):
    with pytest.raises(FieldError) as exc:
        parse_object(
            {
                "apiVersion": "slipstream.dev/v1alpha1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "x", "namespace": "shop"},
                "spec": spec,
            }
        )
    assert exc.value.field == field
