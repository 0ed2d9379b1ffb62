"""Typed Kubernetes objects the mesh reads, parsed and validated in one place.

The lab, the agent's store and the gateway all read manifests through
`parse_object`, so a field means the same thing everywhere. Parsing raises
`FieldError` naming the field path; `manifest.Document.error` adds file and line.
Objects are immutable: the store shares them between snapshots.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import FieldError

MESH_API = "slipstream.dev/v1alpha1"
GATEWAY_API = "gateway.networking.k8s.io/v1"

# Kinds the mesh reads. Anything else is kept and served as-is (the lab and the
# store pass it on), so a manifest with a ConfigMap or ServiceAccount still loads.
NAMESPACED_KINDS = {
    "Pod",
    "Service",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Gateway",
    "HTTPRoute",
    "Deployment",
}
CLUSTER_KINDS = {"Namespace", "Lab", "GatewayClass"}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")


@dataclass(frozen=True, order=True)
class ObjectKey:
    kind: str
    namespace: str
    """Empty for cluster-scoped kinds."""
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind} {self.name}"
        )

    @classmethod
    def parse(cls, kind: str, name: str, namespace: str = "default") -> ObjectKey:
        kind = canonical_kind(kind)
        return cls(kind, "" if kind in CLUSTER_KINDS else namespace, name)


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Resource:
    """Any object; `raw` is the manifest as written (plus live fields the lab adds)."""

    api_version: str
    kind: str
    meta: Meta
    raw: Mapping[str, Any]

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.kind, self.meta.namespace, self.meta.name)


@dataclass(frozen=True)
class Namespace(Resource):
    pass


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str
    protocol: str


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None
    field_ref: str | None
    """A Downward API path such as `status.podIP`, resolved where the pod runs."""


@dataclass(frozen=True)
class Container:
    name: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[EnvVar, ...]
    ports: tuple[ContainerPort, ...]


@dataclass(frozen=True)
class Pod(Resource):
    node_name: str
    service_account: str
    containers: tuple[Container, ...]
    restart_policy: str
    ip: str
    """status.podIP; empty until the pod has a sandbox."""
    host_ip: str
    phase: str

    def named_port(self, name: str) -> int | None:
        for c in self.containers:
            for p in c.ports:
                if p.name == name:
                    return p.container_port
        return None


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    """A number, or the name of a container port."""
    name: str
    protocol: str


@dataclass(frozen=True)
class Service(Resource):
    selector: Mapping[str, str] | None
    """None: no selector, so the lab manages no endpoints for it."""
    cluster_ip: str
    """Empty until allocated; "None" for a headless Service."""
    ports: tuple[ServicePort, ...]
    type: str


MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True)
class PeerAuthentication(Resource):
    """Whether a workload accepts plaintext besides mTLS (slipstream.dev/v1alpha1)."""

    selector: Mapping[str, str] | None
    """matchLabels; None applies to the whole namespace (or mesh, in the root namespace)."""
    mode: str


FIELD_REFS = {
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.hostIP",
}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer"}
RESTART_POLICIES = {"Always", "OnFailure", "Never"}
PROTOCOLS = {"TCP", "UDP", "SCTP"}


# ---------------------------------------------------------------- field readers


def _need(cond: bool, field: str, reason: str) -> None:
    if not cond:
        raise FieldError(field, reason)


def _str(
    obj: Mapping[str, Any], key: str, path: str, *, required: bool = False, default: str = ""
) -> str:
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        _need(not required, where, "is required")
        return default
    _need(isinstance(value, str), where, f"must be a string, not {type(value).__name__}")
    return value


def _map(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        return {}
    _need(isinstance(value, dict), where, f"must be a mapping, not {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    _need(isinstance(value, list), f"{path}.{key}", f"must be a list, not {type(value).__name__}")
    return value


def _str_list(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _list(obj, key, path)
    for i, item in enumerate(items):
        _need(
            isinstance(item, str),
            f"{path}.{key}[{i}]",
            f"must be a string, not {type(item).__name__}",
        )
    return tuple(items)


def _port(value: Any, where: str) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool), where, "must be a port number")
    _need(1 <= value <= 65535, where, f"{value} is not a port number (1-65535)")
    return int(value)


def _string_map(obj: Mapping[str, Any], key: str, path: str, *, labels: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _map(obj, key, path).items():
        where = f"{path}.{key}.{k}"
        _need(
            isinstance(v, str), where, f"value must be a string (quote it), not {type(v).__name__}"
        )
        if labels:
            _need(_valid_label_key(str(k)), where, "is not a valid label key")
            _need(
                bool(_LABEL_VALUE.match(v)) and len(v) <= 63,
                where,
                f"{v!r} is not a valid label value",
            )
        out[str(k)] = v
    return out


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(_LABEL_NAME.match(name))


def canonical_kind(kind: str) -> str:
    """`pods`, `pod`, `po` and `Pod` all name the kind Pod (as kubectl accepts)."""
    aliases = {
        "po": "Pod",
        "pod": "Pod",
        "pods": "Pod",
        "svc": "Service",
        "service": "Service",
        "services": "Service",
        "ns": "Namespace",
        "namespace": "Namespace",
        "namespaces": "Namespace",
        "sa": "ServiceAccount",
        "serviceaccount": "ServiceAccount",
        "serviceaccounts": "ServiceAccount",
        "authorizationpolicy": "AuthorizationPolicy",
        "authorizationpolicies": "AuthorizationPolicy",
        "ap": "AuthorizationPolicy",
        "peerauthentication": "PeerAuthentication",
        "peerauthentications": "PeerAuthentication",
        "pa": "PeerAuthentication",
        "gateway": "Gateway",
        "gateways": "Gateway",
        "gtw": "Gateway",
        "httproute": "HTTPRoute",
        "httproutes": "HTTPRoute",
        "deploy": "Deployment",
        "deployment": "Deployment",
        "deployments": "Deployment",
        "ep": "Endpoints",
        "endpoints": "Endpoints",
        "cm": "ConfigMap",
        "configmap": "ConfigMap",
        "configmaps": "ConfigMap",
        "secret": "Secret",
        "secrets": "Secret",
    }
    return aliases.get(kind.lower(), kind)


# ---------------------------------------------------------------- parsing


def parse_meta(body: Mapping[str, Any], kind: str) -> Meta:
    meta = _map(body, "metadata", "")
    name = _str(meta, "name", "metadata", required=True)
    pattern = DNS_LABEL if kind in ("Namespace", "Service") else DNS_SUBDOMAIN
    _need(
        bool(pattern.match(name)),
        "metadata.name",
        f"{name!r} is not a valid name (lowercase letters, digits and '-')",
    )
    if kind in CLUSTER_KINDS:
        namespace = ""
    else:
        namespace = _str(meta, "namespace", "metadata", default="default")
        _need(
            bool(DNS_LABEL.match(namespace)),
            "metadata.namespace",
            f"{namespace!r} is not a valid namespace",
        )
    return Meta(
        name=name,
        namespace=namespace,
        labels=_string_map(meta, "labels", "metadata", labels=True),
        annotations=_string_map(meta, "annotations", "metadata", labels=False),
    )


def parse_object(body: Any) -> Resource:
    """Validate one manifest document and return its typed object."""
    _need(
        isinstance(body, dict),
        "",
        f"a manifest document must be a mapping, not {type(body).__name__}",
    )
    api_version = _str(body, "apiVersion", "", required=True)
    kind = _str(body, "kind", "", required=True)
    _need(bool(re.match(r"^[A-Z][A-Za-z0-9]*$", kind)), "kind", f"{kind!r} is not a kind name")
    meta = parse_meta(body, kind)
    if kind == "Pod" and api_version == "v1":
        return _parse_pod(api_version, meta, body)
    if kind == "Service" and api_version == "v1":
        return _parse_service(api_version, meta, body)
    if kind == "Namespace" and api_version == "v1":
        return Namespace(api_version, kind, meta, body)
    if kind == "PeerAuthentication" and api_version == MESH_API:
        return _parse_peer_authentication(api_version, meta, body)
    return Resource(api_version, kind, meta, body)


def _known_fields(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise FieldError(where, f"unknown field (known: {', '.join(sorted(allowed))})")


def _selector(spec: Mapping[str, Any]) -> dict[str, str] | None:
    sel = _map(spec, "selector", "spec")
    if not sel:
        return None
    _known_fields(sel, {"matchLabels"}, "spec.selector")
    return _string_map(sel, "matchLabels", "spec.selector", labels=True) or None


def _parse_peer_authentication(
    api_version: str, meta: Meta, body: Mapping[str, Any]
) -> PeerAuthentication:
    spec = _map(body, "spec", "")
    _known_fields(spec, {"selector", "mtls"}, "spec")
    mtls = _map(spec, "mtls", "spec")
    _known_fields(mtls, {"mode"}, "spec.mtls")
    mode = _str(mtls, "mode", "spec.mtls", default="UNSET")
    _need(mode in MTLS_MODES, "spec.mtls.mode", f"{mode!r} is not one of {', '.join(MTLS_MODES)}")
    return PeerAuthentication(api_version, "PeerAuthentication", meta, body, _selector(spec), mode)


def _parse_env(c: Mapping[str, Any], path: str) -> tuple[EnvVar, ...]:
    out = []
    for i, e in enumerate(_list(c, "env", path)):
        where = f"{path}.env[{i}]"
        _need(isinstance(e, dict), where, "must be a mapping with name and value")
        name = _str(e, "name", where, required=True)
        value_from = _map(e, "valueFrom", where)
        if value_from:
            ref = _map(value_from, "fieldRef", f"{where}.valueFrom")
            _need(bool(ref), f"{where}.valueFrom", "only fieldRef is supported in the lab")
            fp = _str(ref, "fieldPath", f"{where}.valueFrom.fieldRef", required=True)
            _need(
                fp in FIELD_REFS,
                f"{where}.valueFrom.fieldRef.fieldPath",
                f"{fp!r} is not one of {sorted(FIELD_REFS)}",
            )
            out.append(EnvVar(name, None, fp))
        else:
            value = e.get("value", "")
            _need(
                isinstance(value, str),
                f"{where}.value",
                f"must be a string (quote it), not {type(value).__name__}",
            )
            out.append(EnvVar(name, value, None))
    return tuple(out)


def _parse_container(c: Any, path: str) -> Container:
    _need(isinstance(c, dict), path, "must be a mapping")
    name = _str(c, "name", path, required=True)
    _need(bool(DNS_LABEL.match(name)), f"{path}.name", f"{name!r} is not a valid container name")
    command = _str_list(c, "command", path)
    args = _str_list(c, "args", path)
    _need(
        bool(command) or bool(args),
        f"{path}.command",
        "is required: lab pods have no image, so the command to run must be given",
    )
    ports = []
    for j, p in enumerate(_list(c, "ports", path)):
        where = f"{path}.ports[{j}]"
        _need(isinstance(p, dict), where, "must be a mapping")
        protocol = _str(p, "protocol", where, default="TCP")
        _need(
            protocol in PROTOCOLS,
            f"{where}.protocol",
            f"{protocol!r} is not one of {sorted(PROTOCOLS)}",
        )
        ports.append(
            ContainerPort(
                _port(p.get("containerPort"), f"{where}.containerPort"),
                _str(p, "name", where),
                protocol,
            )
        )
    return Container(name, command, args, _parse_env(c, path), tuple(ports))


def _parse_pod(api_version: str, meta: Meta, body: Mapping[str, Any]) -> Pod:
    spec = _map(body, "spec", "")
    status = _map(body, "status", "")
    raw_containers = _list(spec, "containers", "spec")
    _need(bool(raw_containers), "spec.containers", "a Pod needs at least one container")
    containers = tuple(
        _parse_container(c, f"spec.containers[{i}]") for i, c in enumerate(raw_containers)
    )
    names = [c.name for c in containers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FieldError("spec.containers", f"duplicate container name {dup[0]!r}")
    restart = _str(spec, "restartPolicy", "spec", default="Always")
    _need(
        restart in RESTART_POLICIES,
        "spec.restartPolicy",
        f"{restart!r} is not one of {sorted(RESTART_POLICIES)}",
    )
    sa = _str(spec, "serviceAccountName", "spec", default="") or _str(
        spec, "serviceAccount", "spec", default="default"
    )
    _need(bool(DNS_SUBDOMAIN.match(sa)), "spec.serviceAccountName", f"{sa!r} is not a valid name")
    ip = _str(status, "podIP", "status")
    if ip:
        _ipv4(ip, "status.podIP")
    return Pod(
        api_version,
        "Pod",
        meta,
        body,
        node_name=_str(spec, "nodeName", "spec"),
        service_account=sa,
        containers=containers,
        restart_policy=restart,
        ip=ip,
        host_ip=_str(status, "hostIP", "status"),
        phase=_str(status, "phase", "status", default="Pending"),
    )


def _parse_service(api_version: str, meta: Meta, body: Mapping[str, Any]) -> Service:
    spec = _map(body, "spec", "")
    stype = _str(spec, "type", "spec", default="ClusterIP")
    _need(
        stype in SERVICE_TYPES,
        "spec.type",
        f"{stype!r} is not supported (use one of {sorted(SERVICE_TYPES)})",
    )
    cluster_ip = _str(spec, "clusterIP", "spec")
    if cluster_ip and cluster_ip != "None":
        addr = _ipv4(cluster_ip, "spec.clusterIP")
        _need(
            addr in SERVICE_CIDR,
            "spec.clusterIP",
            f"{cluster_ip} is outside the service range {SERVICE_CIDR}",
        )
    ports = []
    seen: set[tuple[int, str]] = set()
    for i, p in enumerate(_list(spec, "ports", "spec")):
        where = f"spec.ports[{i}]"
        _need(isinstance(p, dict), where, "must be a mapping")
        port = _port(p.get("port"), f"{where}.port")
        target = p.get("targetPort", port)
        if isinstance(target, str):
            _need(
                bool(DNS_LABEL.match(target)),
                f"{where}.targetPort",
                f"{target!r} is not a port name",
            )
        else:
            target = _port(target, f"{where}.targetPort")
        protocol = _str(p, "protocol", where, default="TCP")
        _need(
            protocol in PROTOCOLS,
            f"{where}.protocol",
            f"{protocol!r} is not one of {sorted(PROTOCOLS)}",
        )
        _need(
            (port, protocol) not in seen, f"{where}.port", f"port {port}/{protocol} is listed twice"
        )
        seen.add((port, protocol))
        ports.append(ServicePort(port, target, _str(p, "name", where), protocol))
    _need(
        len(ports) < 2 or all(p.name for p in ports),
        "spec.ports",
        "every port needs a name when a Service has more than one",
    )
    selector = _string_map(spec, "selector", "spec", labels=True) if "selector" in spec else None
    return Service(
        api_version, "Service", meta, body, selector or None, cluster_ip, tuple(ports), stype
    )


def _ipv4(value: str, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise FieldError(where, f"{value!r} is not an IPv4 address") from exc


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes equality selector; an empty or missing one selects nothing here."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())  # type: ignore[union-attr]
