"""The store: one writer, immutable snapshots, indexes by pod IP, node and service address."""

import asyncio

from agent.state import ObjectKey, StateStore, StateUpdater, parse_object


def pod(name, ip, node, labels=None, ns="shop", phase="Running", ports=None):
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "command": ["x"], "ports": ports or []}],
            },
            "status": {"podIP": ip, "phase": phase},
        }
    )


def service(name, ip, selector, ports, ns="shop"):
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": selector, "ports": ports},
        }
    )


def make():
    store = StateStore()
    return store, StateUpdater(store)


def test_indexes_by_ip_and_node():
    store, up = make()
    up.apply(
        [pod("a", "10.244.1.2", "n1"), pod("b", "10.244.1.3", "n1"), pod("c", "10.244.2.2", "n2")]
    )
    snap = store.snapshot
    assert snap.find_pod("10.244.2.2").meta.name == "c"
    assert snap.find_pod("10.244.9.9") is None
    assert [p.meta.name for p in snap.pods_on_node("n1")] == ["a", "b"]
    assert snap.pods_on_node("n3") == ()


def test_service_endpoints_follow_selector_and_named_ports():
    store, up = make()
    http = [{"name": "http", "containerPort": 8080}]
    up.apply(
        [
            pod("web-1", "10.244.1.2", "n1", {"app": "web"}, ports=http),
            pod(
                "web-2",
                "10.244.2.2",
                "n2",
                {"app": "web"},
                ports=[{"name": "http", "containerPort": 9090}],
            ),
            pod("web-3", "10.244.2.3", "n2", {"app": "web"}),  # no port named http: not an endpoint
            pod("db", "10.244.1.3", "n1", {"app": "db"}),
            pod("other-ns", "10.244.1.4", "n1", {"app": "web"}, ns="else", ports=http),
            pod("done", "10.244.1.5", "n1", {"app": "web"}, phase="Succeeded", ports=http),
            service(
                "web",
                "10.96.0.10",
                {"app": "web"},
                [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "raw", "port": 81, "targetPort": 7000},
                ],
            ),
        ]
    )
    snap = store.snapshot
    b = snap.find_service("10.96.0.10", 80)
    assert sorted((e.pod.meta.name, e.ip, e.port) for e in b.endpoints) == [
        ("web-1", "10.244.1.2", 8080),
        ("web-2", "10.244.2.2", 9090),
    ]
    raw = snap.find_service("10.96.0.10", 81)
    assert sorted(e.port for e in raw.endpoints) == [7000, 7000, 7000]
    assert snap.find_service("10.96.0.10", 82) is None
    assert snap.find_pod("10.244.1.5") is None  # a finished pod gives its IP back


def test_updates_and_deletes_replace_the_snapshot_atomically():
    store, up = make()
    up.apply([pod("a", "10.244.1.2", "n1", {"v": "1"})])
    before = store.snapshot
    up.apply([pod("a", "10.244.1.2", "n1", {"v": "2"})])
    assert before.find_pod("10.244.1.2").meta.labels == {"v": "1"}  # readers keep their view
    assert store.snapshot.find_pod("10.244.1.2").meta.labels == {"v": "2"}
    assert store.snapshot.version == before.version + 1
    up.apply(deletes=[ObjectKey("Pod", "shop", "a")])
    assert store.snapshot.find_pod("10.244.1.2") is None
    assert store.snapshot.pods() == ()


def test_listeners_see_old_and_new():
    store, up = make()
    seen = []
    store.subscribe(lambda old, new: seen.append((old.version, new.version)))
    up.apply([pod("a", "10.244.1.2", "n1")])
    up.apply([pod("b", "10.244.1.3", "n1")])
    assert seen == [(0, 1), (1, 2)]


async def test_wait_for_version_wakes_on_change():
    store, up = make()
    waiter = asyncio.create_task(store.wait_for_version(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    up.apply([pod("a", "10.244.1.2", "n1")])
    snap = await asyncio.wait_for(waiter, 1)
    assert snap.version == 1
