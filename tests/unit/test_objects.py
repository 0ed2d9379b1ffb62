"""Validation of the objects the mesh reads: good inputs parse, bad ones name their field."""

import copy

import pytest

from agent.common.errors import FieldError
from agent.state.objects import ObjectKey, Pod, Resource, Service, canonical_kind, parse_object

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "serviceAccountName": "web-sa",
        "containers": [
            {
                "name": "app",
                "command": ["slipstream", "app", "http-echo"],
                "args": ["--port", "8080"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [
                    {"name": "GREETING", "value": "hi"},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
            }
        ],
    },
}

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
}


def test_pod_parses_with_defaults():
    pod = parse_object(POD)
    assert isinstance(pod, Pod)
    assert pod.key == ObjectKey("Pod", "shop", "web")
    assert pod.service_account == "web-sa"
    assert pod.restart_policy == "Always"
    assert pod.phase == "Pending" and pod.ip == ""
    assert pod.named_port("http") == 8080
    c = pod.containers[0]
    assert c.command + c.args == ("slipstream", "app", "http-echo", "--port", "8080")
    assert [(e.name, e.value, e.field_ref) for e in c.env] == [
        ("GREETING", "hi", None),
        ("MY_IP", None, "status.podIP"),
    ]


def test_container_security_context_is_read():
    body = _with(
        POD,
        ("spec", "containers", 0, "securityContext"),
        {"privileged": True, "capabilities": {"add": ["cap_net_admin", "NET_RAW"]}},
    )
    c = parse_object(body).containers[0]
    assert c.privileged and c.capabilities_add == ("NET_ADMIN", "NET_RAW")
    assert not parse_object(POD).containers[0].privileged


def test_service_parses_named_target_port():
    svc = parse_object(SERVICE)
    assert isinstance(svc, Service)
    assert svc.ports[0].port == 80 and svc.ports[0].target_port == "http"
    assert svc.selector == {"app": "web"} and svc.cluster_ip == ""


def test_unknown_kinds_are_kept_generic():
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "p", "namespace": "shop"},
            "data": {"a": "b"},
        }
    )
    assert type(obj) is Resource
    assert obj.key == ObjectKey("ConfigMap", "shop", "p")


def test_namespace_is_cluster_scoped():
    ns = parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    assert ns.key == ObjectKey("Namespace", "", "shop")


def _with(base, path, value):
    body = copy.deepcopy(base)
    node = body
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


_DELETE = object()

BAD = [
    (POD, ("kind",), _DELETE, "kind", "is required"),
    (POD, ("metadata", "name"), "Web_1", "metadata.name", "not a valid name"),
    (POD, ("metadata", "namespace"), "Shop", "metadata.namespace", "not a valid namespace"),
    (POD, ("metadata", "labels"), {"app": True}, "metadata.labels.app", "must be a string"),
    (POD, ("metadata", "labels"), {"bad key!": "x"}, "metadata.labels.bad key!", "label key"),
    (POD, ("spec", "containers"), [], "spec.containers", "at least one container"),
    (
        POD,
        ("spec", "containers", 0, "command"),
        "sleep 1",
        "spec.containers[0].command",
        "must be a list",
    ),
    (
        POD,
        ("spec", "containers", 0, "command"),
        ["sleep", 1],
        "spec.containers[0].command[1]",
        "string",
    ),
    (
        POD,
        ("spec", "containers", 0, "ports", 0, "containerPort"),
        0,
        "spec.containers[0].ports[0].containerPort",
        "not a port number",
    ),
    (POD, ("spec", "restartPolicy"), "Sometimes", "spec.restartPolicy", "is not one of"),
    (
        POD,
        ("spec", "containers", 0, "securityContext"),
        {"privileged": "yes"},
        "spec.containers[0].securityContext.privileged",
        "must be true or false",
    ),
    (
        POD,
        ("spec", "containers", 0, "securityContext"),
        {"capabilities": {"add": "NET_ADMIN"}},
        "spec.containers[0].securityContext.capabilities.add",
        "must be a list",
    ),
    (SERVICE, ("spec", "ports", 0, "port"), 70000, "spec.ports[0].port", "not a port number"),
    (
        SERVICE,
        ("spec", "ports", 0, "targetPort"),
        "Not_A_Name",
        "spec.ports[0].targetPort",
        "port name",
    ),
    (SERVICE, ("spec", "clusterIP"), "10.96.1", "spec.clusterIP", "not an IPv4 address"),
    (SERVICE, ("spec", "type"), "ExternalName", "spec.type", "not supported"),
    (
        SERVICE,
        ("spec", "ports"),
        [{"port": 80}, {"port": 80}],
        "spec.ports[1].port",
        "listed twice",
    ),
]


@pytest.mark.parametrize(
    ("base", "path", "value", "field", "reason"),
    BAD,
    ids=[f"{b['kind']}:{f}" for b, _, _, f, _ in BAD],
)
def test_bad_fields_are_named(base, path, value, field, reason):
    with pytest.raises(FieldError) as exc:
        parse_object(_with(base, path, value))
    assert exc.value.field == field
    assert reason in exc.value.reason


def test_not_a_mapping():
    with pytest.raises(FieldError, match="must be a mapping"):
        parse_object(["a", "list"])


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("po", "Pod"),
        ("svc", "Service"),
        ("ns", "Namespace"),
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("Pod", "Pod"),
        ("Widget", "Widget"),
    ],
)
def test_kind_aliases(alias, kind):
    assert canonical_kind(alias) == kind


def test_a_real_clusters_objects_are_read_as_they_are():
    """What only the lab cannot run is the lab's to refuse (tests/unit/test_lab_checks.py):
    the mesh reads pods that run their image's entrypoint, take env from Secrets or any
    Downward API field, and Services from any range."""
    pod = copy.deepcopy(POD)
    c = pod["spec"]["containers"][0]
    c.pop("command", None)
    c.pop("args", None)
    c["image"] = "registry.example/shop/web:1.2"
    c["env"] = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
    ]
    parsed = parse_object(pod)
    assert isinstance(parsed, Pod) and parsed.containers[0].command == ()
    svc = copy.deepcopy(SERVICE)
    svc["spec"]["clusterIP"] = "172.20.0.10"
    parsed = parse_object(svc)
    assert isinstance(parsed, Service) and parsed.cluster_ip == "172.20.0.10"
