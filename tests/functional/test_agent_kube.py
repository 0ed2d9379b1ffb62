"""The agent with `--source kube` against the lab API server: the same store as the file source
for the same objects, readiness (not synced, stale), refused objects, and the capture state
written back to its own node's pods only."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.sources.file import FileSource
from agent.sources.kube import agent_kinds
from agent.state import ObjectKey, StateStore, StateUpdater
from agent.state.authz import AuthorizationPolicy
from agent.state.objects import PodSpec
from tests.functional.apikit import DATA, ApiServerProc, free_port
from tests.functional.kubekit import call, open_source, post, wait_for

NODE = "node-a"

OBJECTS = [
    {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"slipstream.dev/dataplane-mode": "ambient"}},
    },
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}},
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "clusterIP": "10.96.0.20",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    },
    *[
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"app": "web"},
                "annotations": {"note": name},
            },
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": "default",
                "containers": [
                    {
                        "name": "app",
                        "image": "img",
                        "command": ["sleep", "1d"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            },
            "status": {
                "podIP": ip,
                "hostIP": "10.1.0.1",
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for name, ip in (("web-1", "10.0.0.11"), ("web-2", "10.0.0.12"))
    ],
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-frontend", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["td/ns/shop/sa/frontend"]}}]}],
        },
    },
    {
        "apiVersion": "slipstream.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": "shop"},
        "spec": {"mtls": {"mode": "STRICT"}},
    },
]


def create_all(api: ApiServerProc, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        plural = {
            "Namespace": "namespaces",
            "Service": "services",
            "Pod": "pods",
            "AuthorizationPolicy": "authorizationpolicies",
            "PeerAuthentication": "peerauthentications",
        }[obj["kind"]]
        ns = obj["metadata"].get("namespace")
        path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        body = {k: v for k, v in obj.items() if k != "status"}
        post(api, path, body)
        if "status" in obj:
            call(
                api,
                "PATCH",
                f"{path}/{obj['metadata']['name']}/status",
                {"status": obj["status"]},
                ctype="application/merge-patch+json",
            )


def comparable(obj: Any) -> Any:
    """An object as the mesh reads it: its type, metadata and typed fields (the manifest as
    stored differs by what the API server adds: uid, versions, timestamps, defaults; and the
    label it puts on every namespace)."""
    m = obj.meta
    meta = m.model_copy(
        update={"labels": {k: v for k, v in m.labels.items() if k != "kubernetes.io/metadata.name"}}
    )
    fields = {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if f.name not in ("raw", "meta")
    }
    spec = fields.get("spec")
    if isinstance(spec, PodSpec):
        # The API server fills in serviceAccountName and the deprecated serviceAccount
        # ("default"); the mesh reads the one account either way.
        fields["spec"] = spec.model_copy(
            update={"service_account_name": spec.account, "service_account": ""}
        )
    return (type(obj).__name__, meta, fields)


async def test_same_objects_give_the_same_store_as_the_file_source(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "all.yaml").write_text(yaml.safe_dump_all(OBJECTS))
    file_store = StateStore()
    drain = asyncio.Event()
    fs = FileSource(str(tmp_path / "files"), StateUpdater(file_store))
    tasks = [asyncio.create_task(fs.run(drain))]

    api = ApiServerProc(tmp_path / "api", "--preload", str(DATA / "crds.yaml")).start()
    try:
        create_all(api, OBJECTS)
        source, kube_store = await open_source(api.kubeconfig, agent_kinds(NODE))
        tasks.append(asyncio.create_task(source.run(drain)))
        await wait_for(lambda: kube_store.synced and file_store.synced)
        # Both must hold every object the files define, equal as the mesh reads them.
        file_objs = file_store.snapshot.objects
        kube_objs = kube_store.snapshot.objects
        assert len(file_objs) == len(OBJECTS)
        for key, obj in file_objs.items():
            assert key in kube_objs, f"{key} missing from the kube source's store"
            assert comparable(kube_objs[key]) == comparable(obj), key
        ap = kube_objs[ObjectKey("AuthorizationPolicy", "shop", "allow-frontend")]
        assert isinstance(ap, AuthorizationPolicy) and ap.refused is None
        # The same service, the same endpoints (here from the slice the server keeps).
        fb = file_store.snapshot.find_service("10.96.0.20", 80)
        kb = kube_store.snapshot.find_service("10.96.0.20", 80)
        assert kb is not None and fb is not None
        assert len(fb.endpoints) == 2
        assert sorted((e.ip, e.port, comparable(e.pod)) for e in kb.endpoints) == sorted(
            (e.ip, e.port, comparable(e.pod)) for e in fb.endpoints
        ), "the same endpoints, the same pods"
        # What the kube store has beyond the files is what the server adds by itself.
        extra = {k.kind for k in kube_objs.keys() - file_objs.keys()}
        assert extra <= {"Namespace", "Service", "EndpointSlice"}, extra
    finally:
        drain.set()
        await asyncio.gather(*tasks)
        api.stop()


async def test_a_policy_the_crd_accepts_but_the_mesh_refuses_fails_closed(tmp_path):
    api = ApiServerProc(tmp_path, "--preload", str(DATA / "crds.yaml")).start()
    drain = asyncio.Event()
    try:
        source, store = await open_source(api.kubeconfig, agent_kinds(NODE))
        task = asyncio.create_task(source.run(drain))
        await wait_for(lambda: store.synced)
        bad = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "odd", "namespace": "default"},
            # The schema takes any key; the mesh reads no such condition: refused, and the
            # policy fails closed in its namespace rather than being absent (open).
            "spec": {"rules": [{"when": [{"key": "request.bogus", "values": ["x"]}]}]},
        }
        status, _, body = api.request(
            "POST", "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies", bad
        )
        assert status == 201, body
        key = ObjectKey("AuthorizationPolicy", "default", "odd")
        ap = await wait_for(lambda: store.snapshot.get(key))
        assert isinstance(ap, AuthorizationPolicy) and ap.refused is not None and ap.fail_closed
        assert ap.refused.field == "spec.rules[0].when[0].key", ap.refused
        (err,) = source.status()["errors"]
        assert err.startswith("AuthorizationPolicy default/odd: spec.rules[0].when[0].key")
    finally:
        drain.set()
        if "task" in locals():
            await task
        api.stop()


# ---------------------------------------------------------------- the agent process


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class AgentProc:
    def __init__(self, root: Path, kubeconfig: str, *extra: str) -> None:
        self.admin, self.ready = free_port(), free_port()
        self.log = root / "agent.log"
        argv = [
            sys.executable, "-m", "agent", "agent",
            "--node", NODE,
            "--source", "kube",
            "--kubeconfig", kubeconfig,
            "--admin", f"127.0.0.1:{self.admin}",
            "--ready", f"127.0.0.1:{self.ready}",
            "--state-dir", str(root / "state"),
            "--netns-dir", str(root / "netns"),
            "--capture", "iptables",
            *extra,
        ]  # fmt: skip
        (root / "netns").mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def readiness(self) -> tuple[int, str]:
        return get(f"http://127.0.0.1:{self.ready}/healthz/ready")

    def dump(self) -> dict[str, Any]:
        return json.loads(get(f"http://127.0.0.1:{self.admin}/config_dump")[1])

    def wait(self, pred: Any, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := pred():
                    return value
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def api(tmp_path):
    srv = ApiServerProc(
        tmp_path / "api", "--preload", str(DATA / "crds.yaml"), "--bookmark-interval", "0.5"
    ).start()
    yield srv
    srv.stop()


def test_agent_process_ready_after_sync_and_stale_when_the_api_server_dies(api, tmp_path):
    post(api, "/api/v1/namespaces", OBJECTS[1])
    agent = AgentProc(tmp_path, api.kubeconfig, "--kube-pods", "node")
    try:
        agent.wait(lambda: agent.readiness()[0] == 200)
        dump = agent.dump()
        (src,) = dump["sources"]
        assert src["type"] == "kube" and src["synced"] is True
        kinds = {k["kind"]: k for k in src["kinds"]}
        assert kinds["pods"]["fieldSelector"] == f"spec.nodeName={NODE}"
        assert {"namespaces", "services", "endpointslices.discovery.k8s.io"} <= set(kinds)
        assert "authorizationpolicies.security.istio.io" in kinds
        api.stop(signal.SIGKILL)
        status, text = agent.wait(lambda: (r := agent.readiness())[1].count("stale since") and r)
        # Still ready: it keeps enforcing its last state, and says it is stale and since when.
        assert status == 200 and text.startswith("ready\n"), text
        assert "namespaces: stale since" in text and "pods: stale since" in text
        ns_names = {o["name"] for o in agent.dump().get("namespaces", [])} or None
        dump = agent.dump()
        (src,) = dump["sources"]
        assert all(k.get("stale") for k in src["kinds"]), src
        assert ns_names is None or "plain" in ns_names
    finally:
        agent.stop()


def test_agent_process_not_ready_until_synced(tmp_path):
    # A server address where nothing answers: never synced, and readiness says which kinds.
    port = free_port()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    agent = AgentProc(tmp_path, str(cfg))
    try:
        status, text = agent.wait(lambda: (r := agent.readiness())[1].count("not synced (") and r)
        assert status == 503 and text.startswith("not ready\n")
        assert "pods: not synced" in text and "namespaces: not synced" in text
    finally:
        agent.stop()


@pytest.mark.timeout(90)
def test_capture_state_written_back_only_to_its_nodes_pods(api, tmp_path):
    create_all(api, OBJECTS[:2])

    def pod(name: str, node: str, ns: str = "shop", ip: str = "", netns: str = "") -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["sleep"]}]},
        }
        if netns:
            body["metadata"]["annotations"] = {"slipstream.dev/netns": netns}
        post(api, f"/api/v1/namespaces/{ns}/pods", body)
        if ip:
            call(
                api,
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": {"podIP": ip, "phase": "Running"}},
                ctype="application/merge-patch+json",
            )

    pod("waiting", NODE)  # no IP yet: pending
    pod("broken", NODE, ip="10.0.0.31", netns=str(tmp_path / "netns" / "gone"))  # failed
    pod("elsewhere", "node-b")  # another node's: never touched, even when the agent sees it
    pod("elsewhere-2", "node-b", ip="10.0.0.32", netns="/nowhere")
    pod("outside", NODE, ns="plain", ip="10.0.0.33")  # not in the mesh: no annotation
    agent = AgentProc(tmp_path, api.kubeconfig, "--kube-pods", "all")

    def annotation(name: str, ns: str = "shop") -> str | None:
        got = call(api, "GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        return (got["metadata"].get("annotations") or {}).get("slipstream.dev/capture")

    try:
        agent.wait(lambda: annotation("waiting") == "pending" and annotation("broken") == "failed")
        events = call(api, "GET", "/api/v1/namespaces/shop/events")["items"]
        why = {(e["involvedObject"]["name"], e["reason"]): e for e in events}
        assert ("waiting", "CapturePending") in why and ("broken", "CaptureFailed") in why
        failed = why[("broken", "CaptureFailed")]
        assert failed["type"] == "Warning" and failed["message"], failed
        assert failed["source"]["host"] == NODE
        # The pending pod gets its IP and network namespace; the agent then tries it (and,
        # the namespace being gone, fails): the state follows, with a new Event.
        call(
            api,
            "PATCH",
            "/api/v1/namespaces/shop/pods/waiting",
            {"metadata": {"annotations": {"slipstream.dev/netns": "/nowhere"}}},
            ctype="application/merge-patch+json",
        )
        call(
            api,
            "PATCH",
            "/api/v1/namespaces/shop/pods/waiting/status",
            {"status": {"podIP": "10.0.0.34", "phase": "Running"}},
            ctype="application/merge-patch+json",
        )
        agent.wait(lambda: annotation("waiting") == "failed", timeout=40)
        events = call(api, "GET", "/api/v1/namespaces/shop/events")["items"]
        assert {e["reason"] for e in events if e["involvedObject"]["name"] == "waiting"} == {
            "CapturePending",
            "CaptureFailed",
        }
        # The agent held both other-node pods (--kube-pods all) and wrote nothing to them.
        dump = agent.dump()
        held = {p["name"] for p in dump.get("pods", [])} if "pods" in dump else None
        assert held is None or {"elsewhere", "elsewhere-2"} <= held
        assert annotation("elsewhere") is None and annotation("elsewhere-2") is None
        assert annotation("outside", "plain") is None
        events = call(api, "GET", "/api/v1/namespaces/shop/events")["items"]
        assert not [e for e in events if e["involvedObject"]["name"].startswith("elsewhere")]
    finally:
        agent.stop()
