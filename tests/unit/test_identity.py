"""SPIFFE IDs and node authorization."""

import pytest

from agent.ca.authority import authorize
from agent.ca.credentials import NODE, Caller
from agent.identity.certs import IdentityError, SpiffeId
from agent.state import StateStore, StateUpdater, parse_object


def test_spiffe_id_round_trip():
    ident = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
    assert ident == SpiffeId("cluster.local", "shop", "web")
    assert str(ident) == "spiffe://cluster.local/ns/shop/sa/web"
    assert ident.principal == "cluster.local/ns/shop/sa/web"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local/ns/shop",
        "https://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/Shop/sa/web",
        "spiffe://x/ns/a/sa/b/c",
        "spiffe:///ns/a/sa/b",
    ],
)
def test_bad_spiffe_ids(uri):
    with pytest.raises(IdentityError):
        SpiffeId.parse(uri)


def pod(name, node, sa, phase="Running"):
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": sa,
                "containers": [{"name": "c", "command": ["x"]}],
            },
            "status": {"podIP": "10.0.0.1", "phase": phase},
        }
    )


@pytest.mark.parametrize(
    ("node", "sa", "td", "allowed"),
    [
        ("n1", "web", "cluster.local", True),
        ("n2", "web", "cluster.local", False),
        ("n1", "db", "cluster.local", False),
        ("n1", "web", "other.local", False),
        ("n1", "done", "cluster.local", False),
    ],
)
def test_a_node_gets_only_identities_of_its_running_pods(node, sa, td, allowed):
    store = StateStore()
    StateUpdater(store).apply(
        [pod("web", "n1", "web"), pod("db", "n2", "db"), pod("old", "n1", "done", "Succeeded")]
    )
    caller = Caller("c1", NODE, node=node)
    why = authorize(store.snapshot, caller, SpiffeId(td, "shop", sa), "cluster.local")
    assert (why is None) == allowed, why
