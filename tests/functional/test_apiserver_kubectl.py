"""The lab API server against kubectl 1.32 (the machine's, a client we did not write).

A real server process on 127.0.0.1 with real TLS and a bearer token from the
kubeconfig it writes; every test works in a namespace of its own.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from pathlib import Path

import pytest
import yaml

from tests.functional.apikit import DATA, KUBECTL, ApiServerProc, manifest

pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl is not installed")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    srv = ApiServerProc(tmp_path_factory.mktemp("api"), "--bookmark-interval", "1").start()
    yield srv
    srv.stop()


@pytest.fixture
def ns(api: ApiServerProc, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    api.kubectl("create", "namespace", name)
    return name


def pod(name: str, ns: str, labels: dict[str, str] | None = None, node: str = "") -> dict:
    spec: dict = {
        "containers": [
            {"name": "app", "image": "img:1", "ports": [{"containerPort": 8080, "name": "http"}]}
        ]
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": spec,
    }


def set_ready(api: ApiServerProc, ns: str, name: str, ip: str) -> None:
    api.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {
                            "name": "app",
                            "ready": True,
                            "restartCount": 2,
                            "image": "img:1",
                            "imageID": "",
                            "state": {"running": {}},
                        }
                    ],
                }
            }
        ),
    )


def test_discovery_lists_every_kind_with_short_names(api: ApiServerProc) -> None:
    out = api.kubectl("api-resources", "-o", "wide").stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    for name, short in [
        ("pods", "po"),
        ("services", "svc"),
        ("namespaces", "ns"),
        ("endpoints", "ep"),
        ("customresourcedefinitions", "crd,crds"),
        ("nodes", "no"),
        ("configmaps", "cm"),
    ]:
        assert name in rows and short in rows[name].split(), rows.get(name)
    assert "endpointslices" in rows and "discovery.k8s.io/v1" in rows["endpointslices"]
    assert "tokenreviews" in rows and rows["tokenreviews"].split()[-1] == "create"
    versions = api.kubectl("api-versions").stdout.split()
    assert {
        "v1",
        "discovery.k8s.io/v1",
        "apiextensions.k8s.io/v1",
        "authentication.k8s.io/v1",
    } <= set(versions)
    server = json.loads(api.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["major"] == "1" and server["minor"] == "32"
    # kubectl 1.32 asks for aggregated discovery first and takes it (no per-group requests).
    log = api.kubectl("get", "ns", "-v=8", "--cache-dir", str(api.root / "fresh-cache")).stderr
    assert "as=APIGroupDiscoveryList" in log
    assert f"GET https://127.0.0.1:{api.port}/apis/discovery.k8s.io/v1 " not in log


def test_get_wide_yaml_json_jsonpath_and_all_namespaces(api: ApiServerProc, ns: str) -> None:
    api.kubectl("create", "-f", "-", input=manifest(pod("web", ns, node="node-a")))
    set_ready(api, ns, "web", "10.244.1.7")
    wide = api.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    cells = wide[1].split()
    assert cells[0] == "web" and cells[1] == "1/1" and cells[2] == "Running" and cells[3] == "2"
    assert cells[5:7] == ["10.244.1.7", "node-a"]
    everywhere = api.kubectl("get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert everywhere[0].startswith("NAMESPACE")
    assert any(line.split()[:2] == [ns, "web"] for line in everywhere[1:])
    as_yaml = yaml.safe_load(api.kubectl("get", "pod", "web", "-n", ns, "-o", "yaml").stdout)
    assert as_yaml["status"]["podIP"] == "10.244.1.7" and as_yaml["metadata"]["uid"]
    as_json = json.loads(api.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)
    assert as_json["kind"] == "List" and as_json["items"][0]["spec"]["nodeName"] == "node-a"
    path = api.kubectl("get", "pods", "-n", ns, "-o", "jsonpath={.items[*].status.podIP}").stdout
    assert path == "10.244.1.7"
    custom = api.kubectl(
        "get", "pods", "-n", ns, "--field-selector", "spec.nodeName=node-a", "-o", "name"
    ).stdout
    assert custom.split() == ["pod/web"]
    assert (
        api.kubectl(
            "get", "pods", "-n", ns, "--field-selector", "spec.nodeName=node-b", "-o", "name"
        ).stdout
        == ""
    )


def _read_line_with(proc, text: str, timeout: float = 20) -> str:
    """The next line of kubectl's output that holds `text` (reads the pipe unbuffered)."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while "\n" in proc.pending:
            line, proc.pending = proc.pending.split("\n", 1)
            if text in line:
                return line
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            proc.pending += chunk.decode()
    raise AssertionError(f"no line with {text!r} in kubectl's output (left: {proc.pending!r})")


def test_get_watch_streams_changes(api: ApiServerProc, ns: str) -> None:
    api.kubectl("create", "-f", "-", input=manifest(pod("first", ns)))
    watch = api.kubectl_popen("get", "pods", "-n", ns, "-w", "--show-labels")
    watch.pending = ""
    try:
        _read_line_with(watch, "first")
        api.kubectl("create", "-f", "-", input=manifest(pod("second", ns)))
        _read_line_with(watch, "second")
        api.kubectl("label", "pod", "first", "-n", ns, "stage=two")
        assert "stage=two" in _read_line_with(watch, "stage=two")
    finally:
        watch.kill()
        watch.communicate()


def test_client_side_apply_creates_then_updates_with_strategic_merge(
    api: ApiServerProc, ns: str
) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "admin", "port": 9000},
            ],
        },
    }
    out = api.kubectl("apply", "-f", "-", input=manifest(svc))
    assert "service/web created" in out.stdout
    # Another writer adds a label; apply's three-way strategic merge must keep it.
    api.kubectl("label", "service", "web", "-n", ns, "owner=ops")
    svc["spec"]["ports"] = [{"name": "http", "port": 80, "targetPort": 8081}]
    svc["metadata"]["labels"]["tier"] = "front"
    out = api.kubectl("apply", "-f", "-", "-v=6", input=manifest(svc))
    assert "service/web configured" in out.stdout
    patch = (
        rf"PATCH https://\S+/api/v1/namespaces/{ns}/services/web"
        r"\?fieldManager=kubectl-client-side-apply&fieldValidation=Strict 200"
    )
    assert re.search(patch, out.stderr)

    live = json.loads(api.kubectl("get", "svc", "web", "-n", ns, "-o", "json").stdout)
    assert [(p["name"], p["port"], p["targetPort"]) for p in live["spec"]["ports"]] == [
        ("http", 80, 8081)
    ]
    assert live["metadata"]["labels"] == {"app": "web", "owner": "ops", "tier": "front"}
    assert live["spec"]["clusterIP"].startswith("10.96.")
    assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]
    again = api.kubectl("apply", "-f", "-", input=manifest(svc))
    assert "service/web unchanged" in again.stdout


def test_apply_server_side_owns_removes_and_conflicts(api: ApiServerProc, ns: str) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "conf", "namespace": ns},
        "data": {"a": "1", "b": "2"},
    }
    assert (
        "serverside-applied"
        in api.kubectl("apply", "--server-side", "-f", "-", input=manifest(cm)).stdout
    )
    live = json.loads(
        api.kubectl("get", "cm", "conf", "-n", ns, "-o", "json", "--show-managed-fields").stdout
    )
    entry = live["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"]) == ("kubectl", "Apply")
    assert set(entry["fieldsV1"]["f:data"]) == {"f:a", "f:b"}
    cm["data"] = {"a": "1", "c": "3"}  # b is no longer applied: the server removes it
    api.kubectl("apply", "--server-side", "-f", "-", input=manifest(cm))
    assert json.loads(
        api.kubectl("get", "cm", "conf", "-n", ns, "-o", "jsonpath={.data}").stdout
    ) == {"a": "1", "c": "3"}
    api.kubectl("patch", "cm", "conf", "-n", ns, "--type=merge", "-p", '{"data":{"a":"other"}}')
    cm["data"]["a"] = "mine"
    refused = api.kubectl("apply", "--server-side", "-f", "-", input=manifest(cm), check=False)
    assert refused.returncode != 0
    assert (
        'Apply failed with 1 conflict: conflict with "kubectl-patch" using v1: .data.a'
        in refused.stderr
    )
    api.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest(cm))
    assert api.kubectl("get", "cm", "conf", "-n", ns, "-o", "jsonpath={.data.a}").stdout == "mine"


def test_label_annotate_and_remove(api: ApiServerProc, ns: str) -> None:
    api.kubectl("create", "-f", "-", input=manifest(pod("p", ns)))
    assert (
        "labeled" in api.kubectl("label", "pod", "p", "-n", ns, "dataplane=ambient", "-v=6").stdout
    )
    api.kubectl("annotate", "pod", "p", "-n", ns, "note=hello")
    overwritten = api.kubectl("label", "pod", "p", "-n", ns, "dataplane=none", check=False)
    assert overwritten.returncode != 0 and "already has a value" in overwritten.stderr
    api.kubectl("label", "pod", "p", "-n", ns, "dataplane=none", "--overwrite")
    meta = json.loads(api.kubectl("get", "pod", "p", "-n", ns, "-o", "json").stdout)["metadata"]
    assert meta["labels"]["dataplane"] == "none" and meta["annotations"]["note"] == "hello"
    api.kubectl("label", "pod", "p", "-n", ns, "dataplane-")
    api.kubectl("annotate", "pod", "p", "-n", ns, "note-")
    meta = json.loads(api.kubectl("get", "pod", "p", "-n", ns, "-o", "json").stdout)["metadata"]
    assert "dataplane" not in meta["labels"] and "note" not in (meta.get("annotations") or {})
    selected = api.kubectl(
        "get", "pods", "-n", ns, "-l", "app in (p,q),!dataplane", "-o", "name"
    ).stdout
    assert selected.split() == ["pod/p"]


def test_patch_merge_json_and_strategic(api: ApiServerProc, ns: str) -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": ns},
        "spec": {
            "selector": {"app": "s"},
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}],
        },
    }
    api.kubectl("create", "-f", "-", input=manifest(svc))
    api.kubectl(
        "patch", "svc", "s", "-n", ns, "--type", "merge", "-p", '{"metadata":{"labels":{"m":"1"}}}'
    )
    api.kubectl(
        "patch",
        "svc",
        "s",
        "-n",
        ns,
        "--type",
        "json",
        "-p",
        '[{"op":"test","path":"/metadata/labels/m","value":"1"},{"op":"add","path":"/metadata/labels/j","value":"2"}]',
    )
    failed = api.kubectl(
        "patch",
        "svc",
        "s",
        "-n",
        ns,
        "--type",
        "json",
        "-p",
        '[{"op":"test","path":"/metadata/labels/m","value":"9"}]',
        check=False,
    )
    assert (
        failed.returncode != 0
        and "The request is invalid" in failed.stderr
        and "/metadata/labels/m" in failed.stderr
    )
    # Strategic: the ports list merges by its key (port), and $patch: delete removes one item.
    api.kubectl(
        "patch",
        "svc",
        "s",
        "-n",
        ns,
        "--type",
        "strategic",
        "-p",
        '{"spec":{"ports":[{"port":82,"name":"c"},{"port":80,"$patch":"delete"}]}}',
    )
    live = json.loads(api.kubectl("get", "svc", "s", "-n", ns, "-o", "json").stdout)
    assert sorted(p["port"] for p in live["spec"]["ports"]) == [81, 82]
    assert live["metadata"]["labels"] == {"m": "1", "j": "2"}


def test_edit_through_an_editor_script(api: ApiServerProc, ns: str, tmp_path: Path) -> None:
    api.kubectl("create", "configmap", "conf", "-n", ns, "--from-literal=key=before")
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/key: before/key: after/' \"$1\"\n")
    editor.chmod(0o755)
    out = api.kubectl("edit", "cm", "conf", "-n", ns, env={"KUBE_EDITOR": str(editor)})
    assert "configmap/conf edited" in out.stdout
    assert (
        api.kubectl("get", "cm", "conf", "-n", ns, "-o", "jsonpath={.data.key}").stdout == "after"
    )


def test_delete_polls_until_404_and_wait(api: ApiServerProc, ns: str) -> None:
    api.kubectl("create", "-f", "-", input=manifest(pod("gone", ns), pod("ready", ns)))
    waiter = api.kubectl_popen(
        "wait", "--for=condition=Ready", "pod/ready", "-n", ns, "--timeout=30s"
    )
    set_ready(api, ns, "ready", "10.244.0.3")
    out, err = waiter.communicate(timeout=40)
    assert waiter.returncode == 0 and "condition met" in out, err
    deleted = api.kubectl("delete", "pod", "gone", "-n", ns, "-v=6")
    assert 'pod "gone" deleted' in deleted.stdout
    assert re.search(r"GET https://\S+/pods/gone 404 Not Found", deleted.stderr)
    missing = api.kubectl("get", "pod", "gone", "-n", ns, check=False)
    assert 'Error from server (NotFound): pods "gone" not found' in missing.stderr


def test_explain_uses_the_served_openapi(api: ApiServerProc) -> None:
    out = api.kubectl("explain", "pod.spec.containers.ports").stdout
    assert "ContainerPort" in out and "containerPort" in out


def test_crd_then_custom_resources_and_a_bad_one_refused(api: ApiServerProc) -> None:
    api.kubectl("apply", "-f", str(DATA / "crds.yaml"))
    api.kubectl("apply", "-f", str(DATA / "policies.yaml"))
    table = api.kubectl(
        "get", "authorizationpolicies.security.istio.io", "-n", "shop"
    ).stdout.splitlines()
    assert table[0].split() == ["NAME", "ACTION", "AGE"] and table[1].split()[:2] == [
        "db-from-web",
        "ALLOW",
    ]
    gtw = api.kubectl("get", "gtw", "-n", "shop").stdout.splitlines()
    assert gtw[0].split()[:2] == ["NAME", "CLASS"] and gtw[1].split()[:2] == ["edge", "slipstream"]
    route = json.loads(api.kubectl("get", "httproute", "api", "-n", "shop", "-o", "json").stdout)
    assert route["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1  # the schema's default
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    bad = api.kubectl("apply", "-f", str(DATA / "bad-policy.yaml"), check=False)
    assert bad.returncode != 0
    assert (
        'The AuthorizationPolicy "bad" is invalid: spec.rules[0].from[0].source.principals: '
        "Invalid value: "
        '"string": spec.rules[0].from[0].source.principals '
        'in body must be of type array: "string"'
    ) in bad.stderr
    unknown = manifest(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "typo", "namespace": "shop"},
            "spec": {"actoin": "DENY"},
        }
    )
    refused = api.kubectl("apply", "-f", "-", input=unknown, check=False)
    assert (
        refused.returncode != 0
        and 'strict decoding error: unknown field "spec.actoin"' in refused.stderr
    )
    enum = manifest(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "enum", "namespace": "shop"},
            "spec": {"action": "MAYBE"},
        }
    )
    refused = api.kubectl("apply", "-f", "-", input=enum, check=False)
    assert (
        'spec.action: Unsupported value: "MAYBE": supported '
        'values: "ALLOW", "DENY", "AUDIT", "CUSTOM"'
    ) in refused.stderr
    assert api.kubectl("get", "ap", "-n", "shop", "-o", "name").stdout.split() == [
        "authorizationpolicy.security.istio.io/db-from-web"
    ]


def test_errors_are_the_real_apis(api: ApiServerProc, ns: str) -> None:
    api.kubectl("create", "-f", "-", input=manifest(pod("dup", ns)))
    again = api.kubectl("create", "-f", "-", input=manifest(pod("dup", ns)), check=False)
    assert (
        'Error from server (AlreadyExists): error when creating "STDIN": pods "dup" already exists'
        in again.stderr
    )
    bad_name = manifest(pod("Bad_Name", ns))
    invalid = api.kubectl("create", "-f", "-", input=bad_name, check=False)
    assert (
        'The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in invalid.stderr
    )
    unknown_ns = api.kubectl(
        "create", "-f", "-", input=manifest(pod("x", "no-such-ns")), check=False
    )
    assert 'namespaces "no-such-ns" not found' in unknown_ns.stderr
    selector = api.kubectl("get", "pods", "-n", ns, "--field-selector", "spec.foo=1", check=False)
    assert "field label not supported: spec.foo" in selector.stderr
