"""The gateway as a mesh workload: into an enrolled Service over HBONE, under its own identity.

The gateway runs as a lab pod in a namespace outside the mesh, with the mesh
credentials the lab hands pods annotated for them. Its routes come from its
YAML file (a backend naming a Service) and from a Gateway API HTTPRoute in
the lab's manifests. The destination's agent sees the gateway's SPIFFE ID,
so an AuthorizationPolicy allowing only that principal admits the gateway's
requests and refuses a direct caller.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import yaml

from agent.lab.lab import Lab
from agent.manifest import load_text
from tests.lab.labkit import access_log, wait_until

GATEWAY_ID = "spiffe://cluster.local/ns/edge/sa/gateway"

CLUSTER = textwrap.dedent("""\
    apiVersion: slipstream.dev/v1alpha1
    kind: Lab
    metadata: {name: gwmesh}
    spec: {nodes: [n1, n2]}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop, labels: {slipstream.dev/dataplane-mode: ambient}}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: edge}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: web, namespace: shop, labels: {app: web}}
    spec:
      nodeName: n2
      serviceAccountName: web
      containers:
      - {name: http, command: [slipstream, app, http-echo, --port, "8080"]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: other, namespace: shop}
    spec:
      nodeName: n1
      serviceAccountName: other
      containers: [{name: main, command: [sleep, infinity]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client, namespace: edge}
    spec:
      nodeName: n1
      containers: [{name: main, command: [sleep, infinity]}]
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: gateway
      namespace: edge
      annotations: {slipstream.dev/mesh-credentials: "true"}
    spec:
      nodeName: n1
      serviceAccountName: gateway
      containers:
      - name: gateway
        command: [slipstream, gateway, -c, "CONFIG", --admin, "0.0.0.0:9901",
                  --log-format, json]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: edge, namespace: edge}
    spec:
      gatewayClassName: slipstream
      listeners: [{name: http, port: 8080, protocol: HTTP}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: shop, namespace: shop}
    spec:
      parentRefs: [{name: edge, namespace: edge}]
      hostnames: [shop.example]
      rules:
      - matches: [{path: {type: PathPrefix, value: /store}}]
        filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
        backendRefs: [{name: web, port: 80}]
    """)

ONLY_GATEWAY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "web-from-gateway", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/edge/sa/gateway"]}}]}],
    },
}


def via_gateway(lab: Lab, host: str, path: str) -> tuple[int, str]:
    gw = lab.pod("gateway", "edge").ip
    res = lab.exec(
        "client",
        ["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-H", f"Host: {host}",
         f"http://{gw}:8080{path}"],
        namespace="edge",
    )  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def direct(lab: Lab) -> bool:
    res = lab.exec("other", ["curl", "-sS", "-m", "3", "http://web.shop:80/"], namespace="shop")
    return res.returncode == 0


@pytest.fixture
def lab(make_lab, tmp_path) -> Lab:
    config = {
        "workers": 1,
        "listeners": [{"name": "web", "address": "0.0.0.0:8080"}],
        "backends": [{"name": "web", "service": {"namespace": "shop", "name": "web", "port": 80}}],
        "routes": [{"name": "yaml-web", "hostnames": ["yaml.example"],
                    "backendRefs": [{"name": "web"}]}],
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    lab = make_lab(CLUSTER.replace("CONFIG", str(path)))
    try:
        wait_until(lambda: via_gateway(lab, "yaml.example", "/")[0] == 200, 20, "the gateway")
    except AssertionError as exc:
        log = os.path.join(lab.pod("gateway", "edge").dir, "gateway.log")
        with open(log) as f:
            raise AssertionError(f"{exc}; the gateway's log:\n{f.read()[-3000:]}") from None
    return lab


def test_gateway_reaches_an_enrolled_service_over_hbone_with_its_own_identity(lab):
    status, body = via_gateway(lab, "yaml.example", "/hello")
    assert status == 200, body
    echo = json.loads(body)
    assert echo["pod"] == "web" and echo["path"] == "/hello"
    # the app sees the gateway pod's address, delivered by web's agent from the HBONE stream
    assert echo["client"].split(":")[0] == lab.pod("gateway", "edge").ip
    # the HTTPRoute from the manifests: host, prefix rewrite, Service backend
    status, body = via_gateway(lab, "shop.example", "/store/cart")
    assert status == 200, body
    assert json.loads(body)["path"] == "/cart"
    assert via_gateway(lab, "shop.example", "/elsewhere")[0] == 404
    # web's agent logs a connection when it closes; the gateway keeps its upstream connections
    # alive, so stop it (its pooled HBONE streams end) and read what web's agent saw.
    lab.delete("Pod", "gateway", "edge")
    recs = wait_until(
        lambda: [
            r
            for r in access_log(lab, "n2")  # (pooled: opened before this test's first call)
            if r["direction"] == "inbound" and r.get("src_identity") == GATEWAY_ID
        ],
        10,
        "web's agent to log the gateway's connections",
    )
    assert all(r["transport"] == "hbone" for r in recs)
    assert all(r["dst_identity"].endswith("/ns/shop/sa/web") for r in recs)


def test_a_policy_allowing_only_the_gateway_admits_it_and_refuses_a_direct_caller(lab):
    assert direct(lab)
    lab.apply(load_text(json.dumps(ONLY_GATEWAY), "policy.yaml"))
    wait_until(lambda: not direct(lab), 5, "the policy to refuse shop/other")
    for _ in range(5):
        status, body = via_gateway(lab, "yaml.example", "/")
        assert status == 200, body
