"""The lab API server against the official `kubernetes` Python client and lightkube.

Real server processes on 127.0.0.1 with real TLS; the clients load the
kubeconfig the server wrote. Watches, bookmarks, resourceVersion semantics,
410s, pagination, optimistic concurrency, TokenReview and RBAC, and the
state file across restarts.
"""

from __future__ import annotations

import json
import signal
import threading
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.functional.apikit import DATA, ApiServerProc


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    srv = ApiServerProc(tmp_path_factory.mktemp("api"), "--bookmark-interval", "1").start()
    yield srv
    srv.stop()


@pytest.fixture
def small(tmp_path):
    """A server that remembers only 20 events, so old versions expire quickly."""
    srv = ApiServerProc(tmp_path, "--history", "20").start()
    yield srv
    srv.stop()


def core(srv: ApiServerProc) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=srv.kubeconfig))


def new_ns(v1: client.CoreV1Api, name: str) -> str:
    v1.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def pod(name: str, labels: dict[str, str] | None = None, node: str = "") -> dict:
    spec: dict = {"containers": [{"name": "app", "image": "img"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def test_crud_and_optimistic_concurrency(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "crud")
    created = v1.create_namespaced_config_map(ns, {"metadata": {"name": "c"}, "data": {"k": "1"}})
    assert created.metadata.uid and int(created.metadata.resource_version) > 0
    assert created.metadata.creation_timestamp is not None
    got = v1.read_namespaced_config_map("c", ns)
    got.data["k"] = "2"
    updated = v1.replace_namespaced_config_map("c", ns, got)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    # A write from the old version loses: 409 Conflict, and the stored object is untouched.
    created.data["k"] = "stale"
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_config_map("c", ns, created)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    assert v1.read_namespaced_config_map("c", ns).data == {"k": "2"}
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "c"}})
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    gen = v1.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}})
    assert gen.metadata.name.startswith("gen-") and len(gen.metadata.name) == 9
    patched = v1.patch_namespaced_config_map("c", ns, {"metadata": {"labels": {"x": "y"}}})
    assert patched.metadata.labels == {"x": "y"}
    v1.delete_namespaced_config_map("c", ns)
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_config_map("c", ns)
    assert err.value.status == 404
    # Preconditions of DeleteOptions are checked.
    with pytest.raises(ApiException) as err:
        v1.delete_namespaced_config_map(
            gen.metadata.name,
            ns,
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="other")),
        )
    assert (
        err.value.status == 409
        and "Precondition failed: UID in precondition: other"
        in json.loads(err.value.body)["message"]
    )


def test_list_selectors(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "selectors")
    for name, labels, node in [
        ("a", {"app": "web", "tier": "fe"}, "n1"),
        ("b", {"app": "db"}, "n2"),
        ("c", {"app": "web"}, "n2"),
    ]:
        v1.create_namespaced_pod(ns, pod(name, labels, node))
    v1.patch_namespaced_pod_status("c", ns, {"status": {"phase": "Running"}})

    def names(**kw) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod(ns, **kw).items]

    assert names(label_selector="app=web") == ["a", "c"]
    assert names(label_selector="app in (web,db),tier notin (fe)") == ["b", "c"]
    assert names(label_selector="!tier") == ["b", "c"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="app!=web") == ["b"]
    assert names(field_selector="spec.nodeName=n2") == ["b", "c"]
    assert names(field_selector="spec.nodeName=n2,status.phase=Running") == ["c"]
    assert names(field_selector="metadata.name!=a") == ["b", "c"]
    everywhere = v1.list_pod_for_all_namespaces(
        field_selector=f"metadata.namespace={ns},spec.nodeName=n1"
    )
    assert [p.metadata.name for p in everywhere.items] == ["a"]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod(ns, label_selector="app in (web")
    assert (
        err.value.status == 400
        and "unable to parse requirement" in json.loads(err.value.body)["message"]
    )


def test_pagination_is_a_consistent_snapshot(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "pages")
    for i in range(7):
        v1.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}})
    first = v1.list_namespaced_config_map(ns, limit=3)
    assert [c.metadata.name for c in first.items] == ["cm-0", "cm-1", "cm-2"]
    assert first.metadata.remaining_item_count == 4
    # Changes after the first page do not show in the next pages: they belong to a later version.
    v1.delete_namespaced_config_map("cm-4", ns)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "cm-9"}})
    seen = [c.metadata.name for c in first.items]
    token = first.metadata._continue
    while token:
        page = v1.list_namespaced_config_map(ns, limit=3, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    assert seen == [f"cm-{i}" for i in range(7)]
    assert "cm-9" in [c.metadata.name for c in v1.list_namespaced_config_map(ns).items]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_config_map(ns, limit=3, _continue="not-a-token")
    assert err.value.status == 400


def test_expired_continue_is_410(small: ApiServerProc) -> None:
    v1 = core(small)
    ns = new_ns(v1, "expire")
    for i in range(4):
        v1.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}})
    first = v1.list_namespaced_config_map(ns, limit=2)
    for i in range(25):  # more writes than the server remembers
        v1.patch_namespaced_config_map("cm-0", ns, {"data": {"n": str(i)}})
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_config_map(ns, limit=2, _continue=first.metadata._continue)
    status = json.loads(err.value.body)
    assert err.value.status == 410 and status["reason"] == "Expired"
    assert "continue parameter is too old" in status["message"] and status["metadata"]["continue"]


def test_watch_sends_bookmarks(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "bookmarks")
    rv = v1.list_namespaced_pod(ns).metadata.resource_version
    w = watch.Watch()
    for ev in w.stream(
        v1.list_namespaced_pod,
        ns,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=20,
    ):
        if ev["type"] == "BOOKMARK":
            assert int(ev["raw_object"]["metadata"]["resourceVersion"]) >= int(rv)
            w.stop()
            break
    else:
        pytest.fail("no BOOKMARK within the watch")


def test_watch_from_a_version_delivers_exactly_the_later_events(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "fromrv")
    v1.create_namespaced_pod(ns, pod("p1"))
    mark = v1.list_namespaced_pod(ns).metadata.resource_version
    v1.create_namespaced_pod(ns, pod("p2"))
    v1.patch_namespaced_pod("p1", ns, {"metadata": {"labels": {"x": "1"}}})
    v1.delete_namespaced_pod("p2", ns)
    events = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_pod, ns, resource_version=mark, timeout_seconds=20):
        events.append((ev["type"], ev["object"].metadata.name))
        if len(events) == 3:
            w.stop()
    assert events == [("ADDED", "p2"), ("MODIFIED", "p1"), ("DELETED", "p2")]
    # Without a version (or "0"), a watch starts with the current state as ADDED events.
    w = watch.Watch()
    first = next(iter(w.stream(v1.list_namespaced_pod, ns, timeout_seconds=20)))
    w.stop()
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "p1")


def test_watch_too_old_version_is_410(small: ApiServerProc) -> None:
    v1 = core(small)
    ns = new_ns(v1, "old")
    rv = v1.list_namespaced_config_map(ns).metadata.resource_version
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "c"}})
    for i in range(25):
        v1.patch_namespaced_config_map("c", ns, {"data": {"n": str(i)}})
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(
            v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10
        ):
            pass
    assert (
        err.value.status == 410
        and "Expired" in err.value.reason
        and "too old resource version" in err.value.reason
    )


def test_watch_dropped_midstream_resumes_without_missing_or_repeating(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "resume")
    start = v1.list_namespaced_config_map(ns).metadata.resource_version
    names = [f"cm-{i:02d}" for i in range(40)]

    def writer() -> None:
        for n in names:
            status, _, body = api.request(
                "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": n}}
            )
            assert status == 201, body

    t = threading.Thread(target=writer)
    t.start()
    seen: list[str] = []
    last = start
    try:
        # Drop the stream after every 7 events and resume from the last version seen.
        while len(seen) < len(names):
            w = watch.Watch()
            stream = w.stream(
                v1.list_namespaced_config_map, ns, resource_version=last, timeout_seconds=20
            )
            for got, ev in enumerate(stream, 1):
                assert ev["type"] == "ADDED"
                seen.append(ev["object"].metadata.name)
                last = ev["object"].metadata.resource_version
                if got == 7 or len(seen) == len(names):
                    w.stop()
                    break
    finally:
        t.join()
    assert seen == names


def test_send_initial_events_ends_with_the_annotated_bookmark(api: ApiServerProc) -> None:
    v1 = core(api)
    ns = new_ns(v1, "initial")
    v1.create_namespaced_pod(ns, pod("p"))
    path = (
        f"/api/v1/namespaces/{ns}/pods?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5"
    )
    req = urllib.request.Request(api.url + path, headers={"Authorization": f"Bearer {api.token}"})
    with urllib.request.urlopen(req, context=api.context(), timeout=20) as resp:
        first = json.loads(resp.readline())
        second = json.loads(resp.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "p")
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # Asked without what the real server requires, it is refused, never ignored.
    status, _, body = api.request(
        "GET", f"/api/v1/namespaces/{ns}/pods?watch=1&sendInitialEvents=true"
    )
    assert status == 422 and "resourceVersionMatch" in json.loads(body)["message"]


def test_token_review_of_bound_service_account_tokens(api: ApiServerProc) -> None:
    c = config.new_client_from_config(config_file=api.kubeconfig)
    v1, authn = client.CoreV1Api(c), client.AuthenticationV1Api(c)
    ns = new_ns(v1, "tokens")
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "agent"}})
    p = v1.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "agent-x"},
            "spec": {
                "serviceAccountName": "agent",
                "nodeName": "node-a",
                "containers": [{"name": "a", "image": "i"}],
            },
        },
    )
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=["slipstream-ca"],
            expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name="agent-x"
            ),
        )
    )
    token = v1.create_namespaced_service_account_token("agent", ns, req).status.token

    def review(tok: str, audiences: list[str]) -> client.V1TokenReviewStatus:
        return authn.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=tok, audiences=audiences))
        ).status

    ok = review(token, ["slipstream-ca"])
    assert ok.authenticated and ok.user.username == f"system:serviceaccount:{ns}:agent"
    assert f"system:serviceaccounts:{ns}" in ok.user.groups
    assert ok.user.extra["authentication.kubernetes.io/pod-name"] == ["agent-x"]
    assert ok.user.extra["authentication.kubernetes.io/pod-uid"] == [p.metadata.uid]
    assert ok.user.extra["authentication.kubernetes.io/node-name"] == ["node-a"]
    wrong_audience = review(token, ["someone-else"])
    assert not wrong_audience.authenticated and "audiences" in wrong_audience.error
    assert not review("ss-made-up", ["slipstream-ca"]).authenticated
    v1.delete_namespaced_pod("agent-x", ns)
    dead = review(token, ["slipstream-ca"])
    assert not dead.authenticated and 'pod "agent-x" not found' in dead.error


def test_rbac_restricts_a_service_account(api: ApiServerProc) -> None:
    c = config.new_client_from_config(config_file=api.kubeconfig)
    v1, rbac = client.CoreV1Api(c), client.RbacAuthorizationV1Api(c)
    ns = new_ns(v1, "rbac")
    new_ns(v1, "rbac-other")
    v1.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "pods-read"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pods-read",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    token = v1.create_namespaced_service_account_token(
        "reader",
        ns,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert, cfg.api_key = api.url, api.ca, {"authorization": f"Bearer {token}"}
    limited = client.CoreV1Api(client.ApiClient(cfg))
    assert limited.list_namespaced_pod(ns).items == []
    with pytest.raises(ApiException) as err:
        limited.list_namespaced_pod("rbac-other")
    body = json.loads(err.value.body)
    assert err.value.status == 403 and body["message"] == (
        f'pods is forbidden: User "system:serviceaccount:{ns}:reader" '
        'cannot list resource "pods" in API group "" in '
        'the namespace "rbac-other"'
    )
    with pytest.raises(ApiException) as err:
        limited.create_namespaced_pod(ns, pod("nope"))
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        limited.list_namespaced_secret(ns)
    assert err.value.status == 403
    cfg2 = client.Configuration()
    cfg2.host, cfg2.ssl_ca_cert, cfg2.api_key = api.url, api.ca, {"authorization": "Bearer wrong"}
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(client.ApiClient(cfg2)).list_namespaced_pod(ns)
    assert err.value.status == 401


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_state_and_versions_survive_a_restart(tmp_path, sig: int) -> None:
    srv = ApiServerProc(tmp_path).start()
    try:
        v1 = core(srv)
        ns = new_ns(v1, "keep")
        made = v1.create_namespaced_config_map(ns, {"metadata": {"name": "c"}, "data": {"k": "v"}})
        before = int(v1.list_namespaced_config_map(ns).metadata.resource_version)
        srv.stop(sig)
        srv.start()
        v1 = core(srv)
        kept = v1.read_namespaced_config_map("c", ns)
        assert kept.data == {"k": "v"} and kept.metadata.uid == made.metadata.uid
        after = v1.create_namespaced_config_map(ns, {"metadata": {"name": "d"}})
        assert int(after.metadata.resource_version) > before
        # A watch from before the restart resumes: exactly the events after that version.
        w = watch.Watch()
        events = []
        for ev in w.stream(
            v1.list_namespaced_config_map, ns, resource_version=str(before), timeout_seconds=10
        ):
            events.append((ev["type"], ev["object"].metadata.name))
            w.stop()
        assert events == [("ADDED", "d")]
    finally:
        srv.stop()


def test_lightkube_lists_watches_and_applies(api: ApiServerProc) -> None:
    from lightkube import Client, KubeConfig
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ConfigMap, Namespace

    kc = KubeConfig.from_file(api.kubeconfig)
    lk = Client(kc)
    lk.create(Namespace(metadata=ObjectMeta(name="lightkube")))
    lk.create(
        ConfigMap(
            metadata=ObjectMeta(name="a", namespace="lightkube", labels={"k": "v"}), data={"x": "1"}
        )
    )
    assert [
        c.metadata.name for c in lk.list(ConfigMap, namespace="lightkube", labels={"k": "v"})
    ] == ["a"]
    applied = lk.apply(
        ConfigMap(metadata=ObjectMeta(name="b", namespace="lightkube"), data={"y": "2"}),
        field_manager="lk",
    )
    assert applied.data == {"y": "2"}
    rv = applied.metadata.resourceVersion
    lk.patch(ConfigMap, "a", {"data": {"x": "2"}}, namespace="lightkube")
    for op, obj in lk.watch(ConfigMap, namespace="lightkube", resource_version=rv):
        assert (op, obj.metadata.name, obj.data) == ("MODIFIED", "a", {"x": "2"})
        break


def test_preload_and_static_tokens(tmp_path) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('node-token-123,system:node:node-a,uid-a,"system:nodes"\n')
    srv = ApiServerProc(
        tmp_path,
        "--preload", str(DATA / "crds.yaml"), "--preload", str(DATA / "policies.yaml"),
        "--token-auth-file", str(tokens),
    )  # fmt: skip
    srv.start()
    try:
        status, _, body = srv.request(
            "GET", "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/db-from-web"
        )
        assert status == 200 and json.loads(body)["spec"]["action"] == "ALLOW"
        # The static token authenticates; RBAC gives it nothing until a binding says so.
        status, _, body = srv.request("GET", "/api/v1/nodes", auth="node-token-123")
        assert (
            status == 403 and 'User "system:node:node-a" cannot list' in json.loads(body)["message"]
        )
        binding = {
            "metadata": {"name": "nodes-read"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "r",
            },
            "subjects": [{"kind": "Group", "name": "system:nodes"}],
        }
        role = {
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
        }
        for path, body_ in (("clusterroles", role), ("clusterrolebindings", binding)):
            assert (
                srv.request("POST", f"/apis/rbac.authorization.k8s.io/v1/{path}", body_)[0] == 201
            )
        assert srv.request("GET", "/api/v1/nodes", auth="node-token-123")[0] == 200
    finally:
        srv.stop()


def test_launch_api_for_the_lab(tmp_path) -> None:
    """What `lab up` will call: spawn, wait_ready, request_token (TokenRequest, bound to a pod)."""
    from agent.lab.apiserver import launch
    from agent.lab.apiserver.server import Listen
    from tests.functional.apikit import free_port

    port = free_port()
    opts = launch.Options(
        state=str(tmp_path / "state.json"),
        listens=[Listen("127.0.0.1", port)],
        cert_dir=str(tmp_path / "certs"),
        preload=[str(DATA / "crds.yaml")],
    )
    proc = launch.spawn(opts, str(tmp_path / "api.log"))
    try:
        url, ca = f"https://127.0.0.1:{port}", str(tmp_path / "certs" / "ca.crt")
        launch.wait_ready(url, ca, timeout=30, proc=proc)
        admin = (tmp_path / "certs" / "admin.token").read_text().strip()
        cfg = client.Configuration()
        cfg.host, cfg.ssl_ca_cert, cfg.api_key = url, ca, {"authorization": f"Bearer {admin}"}
        v1 = client.CoreV1Api(client.ApiClient(cfg))
        v1.create_namespaced_pod("default", pod("agent-node-a", node="node-a"))
        token = launch.request_token(url, ca, admin, "default", "default", pod="agent-node-a")
        authn = client.AuthenticationV1Api(client.ApiClient(cfg))
        review = authn.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        ).status
        assert (
            review.authenticated and review.user.username == "system:serviceaccount:default:default"
        )
        with pytest.raises(launch.ApiServerError, match="not found"):
            launch.request_token(url, ca, admin, "default", "nobody")
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0
