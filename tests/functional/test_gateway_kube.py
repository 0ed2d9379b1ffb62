"""The gateway with `--source kube`: its HTTPRoutes, Services and endpoints from the lab API
server, changes applied as they are made there."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.functional.apikit import DATA, ApiServerProc
from tests.functional.gwkit import GatewayProc, start_echo, stop
from tests.functional.kubekit import call, post


@pytest.fixture
def api(tmp_path):
    srv = ApiServerProc(tmp_path / "api", "--preload", str(DATA / "crds.yaml")).start()
    yield srv
    srv.stop()


def fetch(gw: GatewayProc, host: str, path: str) -> tuple[int, dict[str, Any] | None]:
    req = urllib.request.Request(gw.url(path), headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def until(pred: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)
    return value


def test_httproute_and_service_from_the_api(api, tmp_path):
    echo = start_echo(tmp_path, "web")
    try:
        post(api, "/api/v1/namespaces", {"metadata": {"name": "shop"}})
        post(api, "/api/v1/namespaces", {"metadata": {"name": "edge"}})
        post(
            api,
            "/api/v1/namespaces/shop/pods",
            {
                "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {
                    "nodeName": "n1",
                    "containers": [
                        {
                            "name": "c",
                            "image": "i",
                            "command": ["x"],
                            "ports": [{"name": "http", "containerPort": echo.port}],
                        }
                    ],
                },
            },
        )
        call(
            api,
            "PATCH",
            "/api/v1/namespaces/shop/pods/web/status",
            {
                "status": {
                    "podIP": "127.0.0.1",
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
            ctype="application/merge-patch+json",
        )
        post(
            api,
            "/api/v1/namespaces/shop/services",
            {
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            },
        )
        post(
            api,
            "/apis/gateway.networking.k8s.io/v1/namespaces/edge/gateways",
            {
                "metadata": {"name": "edge", "namespace": "edge"},
                "spec": {
                    "gatewayClassName": "slipstream",
                    "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
                },
            },
        )
        route = {
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"name": "edge", "namespace": "edge"}],
                "hostnames": ["shop.example"],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/store"}}],
                        "backendRefs": [{"name": "web", "port": 80}],
                    }
                ],
            },
        }
        post(api, "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes", route)
        gw = GatewayProc(
            tmp_path, extra_args=("--source", "kube", "--kubeconfig", api.kubeconfig)
        ).start({})
        try:
            _, body = until(lambda: (r := fetch(gw, "shop.example", "/store/a"))[0] == 200 and r)
            assert body is not None and body["server"] == "web" and body["target"] == "/store/a"
            src = gw.live_config()["gatewayApi"]["source"]
            assert src["type"] == "kube" and src["synced"] is True
            # A change in the API reaches the gateway: the route now takes /shop instead.
            call(
                api,
                "PATCH",
                "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/shop",
                {"spec": {"rules": [{**route["spec"]["rules"][0], "matches": [
                    {"path": {"type": "PathPrefix", "value": "/shop"}}
                ]}]}},
                ctype="application/merge-patch+json",
            )  # fmt: skip
            until(lambda: fetch(gw, "shop.example", "/shop/b")[0] == 200)
            assert fetch(gw, "shop.example", "/store/a")[0] == 404
        finally:
            gw.stop()
    finally:
        stop(echo.proc)
