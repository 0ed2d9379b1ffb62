"""The kube source against the lab's real API server process (real TLS, real client):
list, watch, bookmarks, resumption, 410s, restarts, and servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import pytest
from aiohttp import web

from agent.sources.kube import NAMESPACES, SERVICES, KubeSource, agent_kinds, pods
from agent.state import ObjectKey, StateStore
from tests.functional.apikit import DATA, ApiServerProc
from tests.functional.kubekit import (
    Proxy,
    call,
    hostile_server,
    kubeconfig_via,
    open_source,
    post,
    wait_for,
)


@pytest.fixture
def api(tmp_path):
    srv = ApiServerProc(
        tmp_path,
        "--preload",
        str(DATA / "crds.yaml"),
        "--history",
        "30",
        "--bookmark-interval",
        "0.5",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
async def proxied(api, tmp_path):
    proxy = await Proxy(api.port).start()
    yield proxy, kubeconfig_via(api, proxy.port, tmp_path / "via-proxy.kubeconfig")
    await proxy.close()


class Running:
    def __init__(self, source: KubeSource, store: StateStore) -> None:
        self.source, self.store = source, store
        self.drain = asyncio.Event()
        self.task = asyncio.create_task(source.run(self.drain))

    async def synced(self) -> None:
        await wait_for(lambda: self.store.synced or self.task.done())
        if self.task.done():
            self.task.result()

    async def stop(self) -> None:
        self.drain.set()
        await asyncio.wait_for(self.task, 5)

    def kind(self, name: str) -> Any:
        return next(r.state for r in self.source.reflectors if r.state.spec.name == name)


@pytest.fixture
async def run():
    started: list[Running] = []

    async def start(kubeconfig: str, kinds, **kw: Any) -> Running:
        src, store = await open_source(kubeconfig, kinds, **kw)
        r = Running(src, store)
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, node: str, namespace: str = "default", ip: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "img", "command": ["sleep", "1d"]}],
        },
    }
    if ip:
        body["status"] = {"podIP": ip, "phase": "Running"}
    return body


def labels(store: StateStore, name: str) -> dict[str, str] | None:
    """A namespace's labels, less the one the API server adds to every namespace."""
    n = store.snapshot.namespace(name)
    if n is None:
        return None
    return {k: v for k, v in n.meta.labels.items() if k != "kubernetes.io/metadata.name"}


def ns_events(r: Running) -> int:
    return int(r.kind("namespaces").events)


async def test_initial_list_then_adds_updates_deletes(api, run):
    post(api, "/api/v1/namespaces", ns("before", team="a"))
    r = await run(api.kubeconfig, [NAMESPACES])
    await r.synced()
    assert labels(r.store, "before") == {"team": "a"}
    assert r.source.readiness() == "" and r.source.status()["synced"] is True

    post(api, "/api/v1/namespaces", ns("extra", team="x"))
    await wait_for(lambda: labels(r.store, "extra") == {"team": "x"})
    call(
        api,
        "PATCH",
        "/api/v1/namespaces/extra",
        {"metadata": {"labels": {"team": "y"}}},
        ctype="application/merge-patch+json",
    )
    await wait_for(lambda: labels(r.store, "extra") == {"team": "y"})
    call(api, "DELETE", "/api/v1/namespaces/extra")
    # The lab server finalizes a namespace; it is gone from the store once deleted there.
    await wait_for(lambda: r.store.snapshot.get(ObjectKey("Namespace", "", "extra")) is None)
    assert labels(r.store, "before") == {"team": "a"}
    assert r.kind("namespaces").lists == 1, "no relist was needed"


async def test_agent_reads_only_its_nodes_pods(api, run):
    post(api, "/api/v1/namespaces/default/pods", pod("mine", "node-a"))
    post(api, "/api/v1/namespaces/default/pods", pod("theirs", "node-b"))
    r = await run(api.kubeconfig, [pods("node-a")])
    await r.synced()
    post(api, "/api/v1/namespaces/default/pods", pod("mine-2", "node-a"))
    post(api, "/api/v1/namespaces/default/pods", pod("theirs-2", "node-b"))
    await wait_for(lambda: r.store.snapshot.get(ObjectKey("Pod", "default", "mine-2")))
    names = sorted(p.meta.name for p in r.store.snapshot.pods())
    assert names == ["mine", "mine-2"]


async def test_watch_dropped_mid_stream_resumes_without_missing_or_repeating(api, proxied, run):
    proxy, kubeconfig = proxied
    post(api, "/api/v1/namespaces", ns("n0"))
    r = await run(kubeconfig, [NAMESPACES])
    await r.synced()
    post(api, "/api/v1/namespaces", ns("n1"))
    await wait_for(lambda: labels(r.store, "n1") is not None)
    seen = ns_events(r)
    # Drop the watch, refuse reconnection, and change things while it is down.
    proxy.mode = "refuse"
    proxy.cut()
    await wait_for(lambda: r.kind("namespaces").down_since is not None)
    assert "namespaces: stale since" in r.source.readiness()
    assert labels(r.store, "n1") == {}, "the last state is kept while the watch is down"
    post(api, "/api/v1/namespaces", ns("n2"))
    call(
        api,
        "PATCH",
        "/api/v1/namespaces/n1",
        {"metadata": {"labels": {"v": "2"}}},
        ctype="application/merge-patch+json",
    )
    proxy.mode = "pass"
    await wait_for(lambda: labels(r.store, "n2") == {} and labels(r.store, "n1") == {"v": "2"})
    await wait_for(lambda: r.source.readiness() == "")
    st = r.kind("namespaces")
    assert st.lists == 1 and st.relists == 0, "resumed from its version, not relisted"
    assert ns_events(r) - seen == 2, "exactly the two changes made while down, once each"


async def test_version_too_old_relists(api, proxied, run):
    proxy, kubeconfig = proxied
    for i in range(3):
        post(api, "/api/v1/namespaces", ns(f"old-{i}"))
    r = await run(kubeconfig, [NAMESPACES])
    await r.synced()
    proxy.mode = "refuse"
    proxy.cut()
    await wait_for(lambda: r.kind("namespaces").down_since is not None)
    # More changes than the server remembers (--history 30): the version expires.
    call(api, "DELETE", "/api/v1/namespaces/old-0")
    for i in range(40):
        post(api, "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"c{i}"}})
    post(api, "/api/v1/namespaces", ns("fresh", v="1"))
    proxy.mode = "pass"
    await wait_for(lambda: labels(r.store, "fresh") == {"v": "1"})
    await wait_for(lambda: r.store.snapshot.get(ObjectKey("Namespace", "", "old-0")) is None)
    st = r.kind("namespaces")
    assert st.relists >= 1 and st.lists >= 2
    assert labels(r.store, "old-1") == {}, "what the relist still lists stays"
    await wait_for(lambda: r.source.readiness() == "")


async def test_api_server_restarted(api, run):
    post(api, "/api/v1/namespaces", ns("kept", v="1"))
    r = await run(api.kubeconfig, [NAMESPACES])
    await r.synced()
    api.stop(signal.SIGKILL)
    await wait_for(lambda: r.kind("namespaces").down_since is not None)
    assert labels(r.store, "kept") == {"v": "1"}
    assert "namespaces: stale since" in r.source.readiness()
    api.start()
    post(api, "/api/v1/namespaces", ns("after", v="2"))
    await wait_for(lambda: labels(r.store, "after") == {"v": "2"}, timeout=20)
    await wait_for(lambda: r.source.readiness() == "")
    assert labels(r.store, "kept") == {"v": "1"}


async def test_garbage_huge_and_hanging_servers_keep_the_last_state(api, proxied, run):
    proxy, kubeconfig = proxied
    post(api, "/api/v1/namespaces", ns("good", v="1"))
    r = await run(kubeconfig, [NAMESPACES])
    await r.synced()
    asked: list[str] = []

    async def hostile(request: web.Request) -> web.StreamResponse:
        asked.append(request.query.get("watch", "list"))
        mode = hostile.mode  # type: ignore[attr-defined]
        if mode == "garbage":
            return web.Response(body=b"\x00not json{{{", content_type="application/json")
        if mode == "not-a-list":
            return web.json_response({"kind": "Status", "items": "nope", "metadata": 7})
        if mode == "huge":
            resp = web.StreamResponse()
            await resp.prepare(request)
            chunk = b'{"type":"ADDED","object":{"metadata":{"name":"' + b"x" * 65536
            for _ in range(200):  # 13 MB without a newline: more than an event may be
                await resp.write(chunk)
            return resp
        await asyncio.sleep(3600)  # hang
        return web.Response()

    runner, port = await hostile_server(api, hostile)
    try:
        for mode in ("garbage", "not-a-list", "huge", "hang"):
            hostile.mode = mode  # type: ignore[attr-defined]
            proxy.target = port
            before = len(asked)
            proxy.cut()
            await wait_for(lambda b=before: len(asked) > b + 1, timeout=15)
            st = r.kind("namespaces")
            assert st.down_since is not None, mode
            assert st.error, mode
            assert labels(r.store, "good") == {"v": "1"}, f"{mode}: the last state stays"
            assert "namespaces: stale since" in r.source.readiness(), mode
            assert r.store.synced
        # Meanwhile the real server moved on; pointed back, the source catches up.
        post(api, "/api/v1/namespaces", ns("later", v="2"))
        proxy.target = api.port
        proxy.cut()
        await wait_for(lambda: labels(r.store, "later") == {"v": "2"}, timeout=15)
        await wait_for(lambda: r.source.readiness() == "")
    finally:
        await runner.cleanup()


async def test_not_synced_until_every_kind_is_listed(api, proxied, run):
    proxy, kubeconfig = proxied
    proxy.mode = "hang"
    r = await run(kubeconfig, [NAMESPACES, SERVICES])
    await wait_for(lambda: r.kind("namespaces").error)
    assert not r.store.synced
    text = r.source.readiness()
    assert "namespaces: not synced" in text and "services: not synced" in text
    assert "no answer" in text
    proxy.mode = "pass"
    proxy.cut()
    await r.synced()
    assert r.source.readiness() == ""


async def test_410_as_an_http_status_relists(api, proxied, run):
    """Some servers answer a too-old watch with HTTP 410 rather than an ERROR event."""
    proxy, kubeconfig = proxied
    post(api, "/api/v1/namespaces", ns("a"))
    r = await run(kubeconfig, [NAMESPACES])
    await r.synced()
    calls: list[str] = []

    async def gone(request: web.Request) -> web.StreamResponse:
        calls.append(request.query.get("watch", "list"))
        if request.query.get("watch"):
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
            return web.json_response(
                {**status, "reason": "Expired", "message": "too old"}, status=410
            )
        # The list goes to the real server (through a second hop of the proxy).
        return web.Response(status=503)

    runner, port = await hostile_server(api, gone)
    try:
        proxy.target = port
        proxy.cut()
        await wait_for(lambda: "list" in calls, timeout=15)
        assert r.kind("namespaces").relists >= 1
        post(api, "/api/v1/namespaces", ns("b"))
        proxy.target = api.port
        proxy.cut()
        await wait_for(lambda: labels(r.store, "b") == {}, timeout=15)
        assert labels(r.store, "a") == {}
    finally:
        await runner.cleanup()


async def test_agent_kinds_with_policies_and_a_missing_crd(tmp_path, run):
    """Without a CRD the kind is empty and synced (nobody can create one); once the CRD is
    created its objects arrive."""
    srv = ApiServerProc(tmp_path, "--bookmark-interval", "0.5").start()
    try:
        r = await run(srv.kubeconfig, agent_kinds("node-a"))
        await r.synced()
        status = {k["kind"]: k for k in r.source.status()["kinds"]}
        assert status["authorizationpolicies.security.istio.io"].get("served") is False
        crds = [
            d for d in _yaml_docs(DATA / "crds.yaml") if d["spec"]["group"] == "security.istio.io"
        ]
        for crd in crds:
            post(srv, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        deny = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-all", "namespace": "default"},
            "spec": {"action": "DENY", "rules": [{}]},
        }

        def created() -> bool:
            status, _, _ = srv.request(
                "POST", "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies", deny
            )
            return status in (201, 409)

        await wait_for(created, timeout=10)
        key = ObjectKey("AuthorizationPolicy", "default", "deny-all")
        await wait_for(lambda: r.store.snapshot.get(key), timeout=20)
    finally:
        srv.stop()


async def test_istios_policy_and_ours_of_the_same_name_are_two_objects(api, run):
    """Both held (and so both enforced); deleting one leaves the other."""
    r = await run(api.kubeconfig, agent_kinds("node-a"))
    await r.synced()
    keys = {}
    for api_version, action in (
        ("security.istio.io/v1", "DENY"),
        ("slipstream.dev/v1alpha1", "ALLOW"),
    ):
        body = {
            "apiVersion": api_version,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"action": action, "rules": [{}]},
        }
        post(api, f"/apis/{api_version}/namespaces/default/authorizationpolicies", body)
        keys[api_version] = ObjectKey.parse("AuthorizationPolicy", "p", "default", api_version)
    assert len(set(keys.values())) == 2
    await wait_for(lambda: all(r.store.snapshot.get(k) for k in keys.values()))
    call(api, "DELETE", "/apis/slipstream.dev/v1alpha1/namespaces/default/authorizationpolicies/p")
    await wait_for(lambda: r.store.snapshot.get(keys["slipstream.dev/v1alpha1"]) is None)
    kept = r.store.snapshot.get(keys["security.istio.io/v1"])
    assert kept is not None and kept.raw["spec"]["action"] == "DENY"


def _yaml_docs(path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("mode", ["garbage", "not-a-list", "huge", "no-version", "slow-drip"])
async def test_a_first_list_that_is_broken_leaves_it_not_synced(api, run, tmp_path, mode):
    async def hostile(request: web.Request) -> web.StreamResponse:
        if mode == "garbage":
            return web.Response(body=b"<html>proxy error</html>", content_type="text/html")
        if mode == "not-a-list":
            return web.json_response({"kind": "NamespaceList", "items": {}, "metadata": {}})
        if mode == "no-version":
            return web.json_response({"kind": "NamespaceList", "items": [], "metadata": {}})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if mode == "huge":  # 20 MiB of a list that never ends: over the 16 MiB bound
            await resp.write(b'{"kind":"NamespaceList","items":[')
            item = b'{"metadata":{"name":"' + b"n" * 1000 + b'"}},'
            with contextlib.suppress(ConnectionError):
                for _ in range(20 * 1024):
                    await resp.write(item)
        else:  # a byte a second: the page must come within the request time
            with contextlib.suppress(ConnectionError):
                for _ in range(3600):
                    await resp.write(b" ")
                    await asyncio.sleep(1)
        return resp

    runner, port = await hostile_server(api, hostile)
    try:
        r = await run(kubeconfig_via(api, port, tmp_path / "hostile.kubeconfig"), [NAMESPACES])
        await wait_for(lambda: r.kind("namespaces").lists == 0 and r.kind("namespaces").error)
        text = r.source.readiness()
        assert text.startswith("namespaces: not synced (") and "namespaces" in text[24:], text
        assert not r.store.synced and r.store.snapshot.objects == {}
        expected = {
            "garbage": "not a JSON object",
            "not-a-list": "not a list",
            "huge": "over 16777216 bytes",
            "no-version": "no metadata.resourceVersion",
            "slow-drip": "no answer in time",
        }[mode]
        assert expected in r.kind("namespaces").error, r.kind("namespaces").error
    finally:
        await runner.cleanup()


async def test_in_cluster_credentials(api, tmp_path):
    """No kubeconfig: the service-account token and CA in the standard layout and
    KUBERNETES_SERVICE_HOST/PORT, as in a pod; the token is re-read when it rotates."""
    from agent.lab.apiserver.launch import request_token
    from agent.sources.kubeclient import ApiStatusError, KubeClient, KubeError, load_credentials

    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_text((api.certs / "ca.crt").read_text())
    (sa_dir / "token").write_text(request_token(api.url, api.ca, api.token, "default", "default"))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    creds = await load_credentials(None, environ=env, service_account_dir=str(sa_dir))
    assert "in-cluster" in creds.describe and creds.token_file == str(sa_dir / "token")
    client = KubeClient(creds)
    try:
        # The server knows who is asking (RBAC then refuses the default account): the
        # request went over TLS checked against ca.crt, with the file's token.
        with pytest.raises(ApiStatusError) as err:
            await client.call("GET", "/api/v1/namespaces/default")
        assert err.value.code == 403
        assert 'User "system:serviceaccount:default:default"' in err.value.message
        # A rotated token is used at once (here a bad one: 401).
        (sa_dir / "token").write_text("not-a-valid-token-at-all")
        with pytest.raises(ApiStatusError) as err:
            await client.call("GET", "/api/v1/namespaces/default")
        assert err.value.code == 401
    finally:
        await client.close()
    with pytest.raises(KubeError, match="no Kubernetes credentials"):
        await load_credentials(None, environ={}, service_account_dir=str(tmp_path / "none"))


async def test_a_closed_client_answers_with_a_kube_error(api):
    """Parts of a component share its client; one still running when another closed it gets
    the error every caller handles, not the HTTP session's own."""
    from agent.sources.kubeclient import KubeClient, KubeError

    client = await KubeClient.open(api.kubeconfig)
    assert (await client.call("GET", "/api/v1/namespaces"))["kind"] == "NamespaceList"
    await client.close()
    with pytest.raises(KubeError, match="the client is closed"):
        await client.call("GET", "/api/v1/namespaces")
