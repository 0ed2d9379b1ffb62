"""The kube source's sans-IO parts: one kind's Reflection, the backoff, and EndpointSlices in
the store (endpoints from slices, with readiness, when a Service has them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.common.errors import FieldError
from agent.sources.kube import LAST_APPLIED, NAMESPACES, Backoff, Expired, Reflection
from agent.sources.kubeclient import KubeError
from agent.state import ObjectKey, StateStore, StateUpdater
from agent.state.objects import parse_object


def ns(name: str, rv: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": rv, "labels": labels},
    }


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def test_list_then_events_then_relist_diff():
    r = Reflection(NAMESPACES)
    d = r.listed([ns("a", "1"), ns("b", "2")], "5")
    assert [o["metadata"]["name"] for o in d.upserts] == ["a", "b"] and not d.deletes
    assert r.resource_version == "5" and r.synced
    d = r.event(line("MODIFIED", ns("a", "6", x="1")))
    assert d.upserts[0]["metadata"]["labels"] == {"x": "1"} and r.resource_version == "6"
    d = r.event(line("MODIFIED", ns("a", "6", x="1")))
    assert not d, "a repeated event (same resourceVersion) changes nothing"
    d = r.event(line("DELETED", ns("b", "7")))
    assert d.deletes == [("", "b")]
    assert not r.event(line("DELETED", ns("b", "7"))), "deleting the absent changes nothing"
    d = r.event(line("BOOKMARK", {"kind": "Namespace", "metadata": {"resourceVersion": "9"}}))
    assert not d and r.resource_version == "9"
    # A relist: what is gone is deleted, what is unchanged is not re-sent.
    d = r.listed([ns("a", "6", x="1"), ns("c", "10")], "11")
    assert [o["metadata"]["name"] for o in d.upserts] == ["c"] and d.deletes == []
    d = r.listed([ns("c", "10")], "12")
    assert d.deletes == [("", "a")] and not d.upserts
    assert r.lists == 3


def test_410_error_event_is_expired_other_errors_are_not():
    r = Reflection(NAMESPACES)
    r.listed([], "1")
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    with pytest.raises(Expired, match="410 Expired"):
        r.event(line("ERROR", gone))
    with pytest.raises(KubeError) as err:
        r.event(line("ERROR", {**gone, "code": 500, "reason": "InternalError"}))
    assert not isinstance(err.value, Expired)
    r.expired()
    assert r.resource_version == "" and r.relists == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "ADDED"}',
        b'{"type": "ADDED", "object": []}',
        b'{"type": "SURPRISE", "object": {"metadata": {"name": "x", "resourceVersion": "3"}}}',
        b'{"type": "ADDED", "object": {"metadata": {"name": "x"}}}',
        b'{"type": "ADDED", "object": {"metadata": {"resourceVersion": "3"}}}',
        b'{"type": "ADDED", "object": {"metadata": {"name": 7, "resourceVersion": "3"}}}',
        # found by fuzz_kube_watch: metadata that is not a mapping crashed the reflector
        b'{"type": "ADDED", "object": {"metadata": "x"}}',
        b'{"type": "BOOKMARK", "object": {"metadata": ["x"]}}',
        b'{"type": "DELETED", "object": {"metadata": null}}',
    ],
)
def test_malformed_events_change_nothing(raw):
    r = Reflection(NAMESPACES)
    r.listed([ns("a", "1")], "2")
    with pytest.raises(KubeError):
        r.event(raw)
    assert r.resource_version == "2" and list(r.objects) == [("", "a")]


def test_object_count_is_bounded():
    r = Reflection(NAMESPACES, max_objects=2)
    r.listed([ns("a", "1"), ns("b", "2")], "3")
    with pytest.raises(KubeError, match="more than 2"):
        r.event(line("ADDED", ns("c", "4")))
    r.event(line("MODIFIED", ns("a", "5")))  # an update of a known one is fine
    with pytest.raises(KubeError, match="more than 2"):
        r.listed([ns("a", "1"), ns("b", "2"), ns("c", "3")], "6")
    assert sorted(r.objects) == [("", "a"), ("", "b")] and r.resource_version == "5"


def test_bytes_held_are_bounded():
    r = Reflection(NAMESPACES, max_bytes=1000)
    r.listed([ns("a", "1")], "2", size=400)
    assert r.weight == 400
    big = ns("b", "3")
    big["metadata"]["labels"] = {"pad": "x" * 700}
    with pytest.raises(KubeError, match="more than 1000 bytes"):
        r.event(line("ADDED", big))
    assert list(r.objects) == [("", "a")] and r.weight == 400
    # Replacing an object counts its new size instead of the old one; deleting frees it.
    small = line("MODIFIED", ns("a", "4", v="1"))
    r.event(small)
    assert r.weight == len(small)
    r.event(line("DELETED", ns("a", "5")))
    assert r.weight == 0 and not r.objects
    r.event(line("ADDED", big))
    with pytest.raises(KubeError, match="more than 1000 bytes"):
        r.listed([ns("c", "1")], "9", size=1001)
    assert list(r.objects) == [("", "b")], "a refused list keeps what was held"


def test_list_without_version_is_refused():
    with pytest.raises(KubeError, match="resourceVersion"):
        Reflection(NAMESPACES).listed([], "")


def test_managed_fields_and_last_applied_are_not_kept():
    body = ns("a", "1")
    body["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    body["metadata"]["annotations"] = {LAST_APPLIED: "{...}", "keep": "me"}
    r = Reflection(NAMESPACES)
    (kept,) = r.listed([body], "2").upserts
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"keep": "me"}


def test_backoff_grows_with_jitter_and_resets():
    values = iter([0.0, 1.0, 0.5] * 20)
    b = Backoff(base=1.0, cap=8.0, rng=lambda: next(values))
    delays = [b.next() for _ in range(6)]
    # Equal jitter: each delay is between half and all of min(cap, base * 2^n).
    for n, d in enumerate(delays):
        full = min(8.0, 2.0**n)
        assert full / 2 <= d <= full
    assert delays[:2] == [0.5, 2.0] and delays[4:] == [8.0, 6.0], "capped at 8"
    b.reset()
    assert b.next() <= 1.0


# ---------------------------------------------------------------- EndpointSlices


def pod(name: str, ip: str, node: str = "n1", sa: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [
                {"name": "c", "command": ["x"], "ports": [{"name": "http", "containerPort": 8080}]}
            ],
        },
        "status": {"podIP": ip, "phase": "Running"},
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "clusterIP": "10.96.0.10",
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
}


def endpoint(name: str, ip: str, ready: bool | None = True, node: str = "n1") -> dict[str, Any]:
    ep: dict[str, Any] = {
        "addresses": [ip],
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": name, "uid": "u"},
        "zone": "a",  # a field the mesh does not read: ignored, not refused
    }
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    return ep


def slice_(*eps: dict[str, Any], port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": list(eps),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def build(*bodies: dict[str, Any]):
    store = StateStore()
    return StateUpdater(store).apply([parse_object(b) for b in bodies])


def test_service_endpoints_come_from_its_slices_when_present():
    # Without slices: the selector's pods (the file source's way).
    snap = build(SERVICE, pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    assert sorted(e.ip for e in snap.find_service("10.96.0.10", 80).endpoints) == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    # With a slice: its ready endpoints only, each the pod the store holds; one whose pod
    # the store does not hold (another node's) is left out: its identity is unknown.
    snap = build(
        SERVICE,
        pod("a", "10.0.0.1"),
        pod("b", "10.0.0.2"),
        slice_(
            endpoint("a", "10.0.0.1"),
            endpoint("b", "10.0.0.2", ready=False),
            endpoint("far", "10.0.1.7", ready=None, node="n2"),
            port=8080,
        ),
    )
    eps = snap.find_service("10.96.0.10", 80).endpoints
    assert [(e.ip, e.port) for e in eps] == [("10.0.0.1", 8080)]
    assert eps[0].pod.service_account == "web" and eps[0].pod.containers
    held = build(SERVICE, pod("a", "10.0.0.1"), pod("far", "10.0.1.7"), slice_(
        endpoint("a", "10.0.0.1"), endpoint("far", "10.0.1.7", ready=None, node="n2"), port=8080
    ))  # fmt: skip
    assert [e.ip for e in held.find_service("10.96.0.10", 80).endpoints] == [
        "10.0.0.1",
        "10.0.1.7",
    ]
    assert snap.get(ObjectKey("EndpointSlice", "shop", "web-abc")) is not None


def test_slice_port_matches_by_name_and_an_empty_slice_means_no_endpoints():
    other = slice_(endpoint("a", "10.0.0.1"))
    other["ports"][0]["name"] = "metrics"
    snap = build(SERVICE, pod("a", "10.0.0.1"), other)
    assert snap.find_service("10.96.0.10", 80).endpoints == ()
    empty = slice_()
    snap = build(SERVICE, pod("a", "10.0.0.1"), empty)
    assert snap.find_service("10.96.0.10", 80).endpoints == ()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"addressType": "IPv5"}, "addressType"),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses"),
        ({"endpoints": [{"addresses": ["1.2.3.4"], "conditions": {"ready": "yes"}}]}, "ready"),
        ({"ports": [{"name": "http", "port": 70000}]}, "ports[0].port"),
        ({"addressType": None}, "addressType"),
    ],
)
def test_bad_slices_are_refused_naming_the_field(change, field):
    body = {**slice_(endpoint("a", "10.0.0.1")), **change}
    with pytest.raises(FieldError) as err:
        parse_object(body)
    assert field in err.value.field
