"""Destinations, load balancing and outlier ejection."""

from agent.node.balancer import LB_ANNOTATION, Balancer, resolve
from agent.state import StateStore, StateUpdater, parse_object


def world(lb=None):
    objs = [
        parse_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"web-{i}", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "command": ["x"]}]},
                "status": {"podIP": f"10.244.{i}.2", "phase": "Running"},
            }
        )
        for i in (1, 2, 3)
    ]
    meta = {"name": "web", "namespace": "shop"}
    if lb:
        meta["annotations"] = {LB_ANNOTATION: lb}
    objs.append(
        parse_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta,
                "spec": {
                    "clusterIP": "10.96.0.10",
                    "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            }
        )
    )
    store = StateStore()
    StateUpdater(store).apply(objs)
    return store.snapshot


def ips(eps):
    return [e.ip for e in eps]


def test_resolve_service_pod_and_outside():
    snap = world()
    svc = resolve(snap, ("10.96.0.10", 80))
    assert svc.describe() == "service/shop/web" and len(svc.endpoints) == 3
    assert {e.port for e in svc.endpoints} == {8080}
    pod = resolve(snap, ("10.244.2.2", 9000))
    assert pod.describe() == "shop/web-2" and pod.endpoints[0].port == 9000
    outside = resolve(snap, ("192.0.2.1", 443))
    assert outside.describe() is None and outside.endpoints == ()


def test_round_robin_starts_at_the_next_endpoint_each_time():
    snap, lb = world(), Balancer()
    target = resolve(snap, ("10.96.0.10", 80))
    firsts = [lb.candidates(target, 0.0)[0].ip for _ in range(6)]
    assert firsts == ["10.244.1.2", "10.244.2.2", "10.244.3.2"] * 2
    assert ips(lb.candidates(target, 0.0)) == ["10.244.1.2", "10.244.2.2", "10.244.3.2"]


def test_least_connections_prefers_the_idlest():
    snap, lb = world("least-connections"), Balancer()
    target = resolve(snap, ("10.96.0.10", 80))
    lb.opened(("10.244.1.2", 8080))
    lb.opened(("10.244.1.2", 8080))
    lb.opened(("10.244.2.2", 8080))
    assert ips(lb.candidates(target, 0.0)) == ["10.244.3.2", "10.244.2.2", "10.244.1.2"]
    lb.closed(("10.244.1.2", 8080))
    lb.closed(("10.244.1.2", 8080))
    assert lb.candidates(target, 0.0)[0].ip == "10.244.1.2"


def test_consecutive_failures_eject_for_a_while_then_recover():
    snap, lb = world(), Balancer(consecutive_failures=3, base_ejection=10.0)
    target = resolve(snap, ("10.96.0.10", 80))
    bad = ("10.244.2.2", 8080)
    assert not lb.failed(bad, 100.0) and not lb.failed(bad, 100.0)
    assert lb.failed(bad, 100.0), "ejected at the third failure"
    for _ in range(3):
        assert "10.244.2.2" not in ips(lb.candidates(target, 105.0))
    assert "10.244.2.2" in ips(lb.candidates(target, 111.0)), "back after the ejection time"
    assert lb.status(105.0)[0]["endpoint"] == "10.244.2.2:8080"


def test_a_success_resets_the_failure_count():
    lb = Balancer(consecutive_failures=2)
    lb.failed(("a", 1), 0.0)
    lb.succeeded(("a", 1))
    assert not lb.failed(("a", 1), 0.0)


def test_when_everything_is_ejected_everything_is_tried():
    snap, lb = world(), Balancer(consecutive_failures=1)
    target = resolve(snap, ("10.96.0.10", 80))
    for ep in target.endpoints:
        lb.failed((ep.ip, ep.port), 0.0)
    assert len(lb.candidates(target, 1.0)) == 3
