"""Typed Kubernetes objects the mesh reads, parsed and validated in one place.

The lab, the agent's store and the gateway all read manifests through
`parse_object`, so a field means the same thing everywhere. Parsing raises
`FieldError` naming the field path; `manifest.Document.error` adds file and line.
Sources keep `refused_version` of a document that does not validate: the last
good version, and for a policy without one a stand-in that fails closed.
Objects are immutable: the store shares them between snapshots.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.common.errors import FieldError

from . import endpointslice
from .authz import KIND as AUTHORIZATION_POLICY
from .authz import parse_authorization_policy, refused_policy
from .fields import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ipv4,
    known_fields,
    listing,
    mapping,
    match_labels,
    need,
    port_number,
    string,
    string_map,
    strings,
)
from .resource import (
    CLUSTER_KINDS,
    GATEWAY_API,
    MESH_API,
    NAMESPACED_KINDS,
    POLICY_APIS,
    Meta,
    ObjectKey,
    Refusal,
    Resource,
    canonical_kind,
    document_key,
    parse_meta,
)

__all__ = [
    "CLUSTER_KINDS",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "GATEWAY_API",
    "MESH_API",
    "NAMESPACED_KINDS",
    "POLICY_APIS",
    "Meta",
    "ObjectKey",
    "Refusal",
    "Resource",
    "canonical_kind",
    "parse_meta",
]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")


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
    privileged: bool = False
    """securityContext.privileged (the lab runs every container as root, whatever it says)."""
    capabilities_add: tuple[str, ...] = ()
    """securityContext.capabilities.add, upper case, without a CAP_ prefix."""


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
    refused: Refusal | None = None
    """Set when the newest version did not validate; without `fail_closed` this is the last
    good version, which keeps deciding."""
    fail_closed: bool = False
    """No good version exists: STRICT for every workload in its scope, whatever any other
    PeerAuthentication says, until it is fixed or deleted."""


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


# ---------------------------------------------------------------- parsing


def parse_object(body: Any) -> Resource:
    """Validate one manifest document and return its typed object."""
    need(
        isinstance(body, dict),
        "",
        f"a manifest document must be a mapping, not {type(body).__name__}",
    )
    api_version = string(body, "apiVersion", "", required=True)
    kind = string(body, "kind", "", required=True)
    need(bool(re.match(r"^[A-Z][A-Za-z0-9]*$", kind)), "kind", f"{kind!r} is not a kind name")
    meta = parse_meta(body, kind)
    if kind == "Pod" and api_version == "v1":
        return _parse_pod(api_version, meta, body)
    if kind == "Service" and api_version == "v1":
        return _parse_service(api_version, meta, body)
    if kind == "Namespace" and api_version == "v1":
        return Namespace(api_version, kind, meta, body)
    if kind == endpointslice.KIND and api_version == endpointslice.API_VERSION:
        return endpointslice.parse_endpoint_slice(api_version, meta, body)
    if kind in ("AuthorizationPolicy", "PeerAuthentication"):
        # A policy nobody reads would fail open: refuse one we do not understand.
        need(
            api_version in POLICY_APIS,
            "apiVersion",
            f"{api_version!r} is not a {kind} version we read ({', '.join(POLICY_APIS)})",
        )
        if kind == "AuthorizationPolicy":
            return parse_authorization_policy(api_version, meta, body)
        return _parse_peer_authentication(api_version, meta, body)
    return Resource(api_version, kind, meta, body)


POLICY_KINDS = (AUTHORIZATION_POLICY, "PeerAuthentication")
"""Kinds whose refused versions fail closed: absent, they would open what they close."""


def refused_key(body: Any, document: str) -> ObjectKey | None:
    """The key of a document that did not validate, if one can be told: what it replaces.
    A policy always has one (see `document_key`); anything else needs a kind and a name."""
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        return None
    if body["kind"] in POLICY_KINDS:
        return document_key(body, body["kind"], document)
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    ns = meta.get("namespace", "default")
    return ObjectKey.parse(body["kind"], meta["name"], ns if isinstance(ns, str) else "default")


def refused_version(
    body: Any, error: FieldError, previous: Resource | None, where: str = "", document: str = ""
) -> Resource | None:
    """What a source keeps for a document that did not validate, given the version it had
    (`previous`, or None): that version; for a policy, with the refusal noted, or without
    one a stand-in that fails closed in the policy's scope. None: nothing to keep.
    `where` locates the error; `document` names the document (for `refused_key`)."""
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind == AUTHORIZATION_POLICY:
        return refused_policy(body, error, previous, where, document)
    if kind == "PeerAuthentication":
        return _refused_peer_authentication(body, error, previous, where, document)
    return previous


def _refused_peer_authentication(
    body: dict[str, Any], error: FieldError, previous: Resource | None, where: str, document: str
) -> PeerAuthentication:
    refusal = Refusal(error.field, error.reason, where)
    if isinstance(previous, PeerAuthentication) and not previous.fail_closed:
        return replace(previous, refused=refusal)
    key = document_key(body, "PeerAuthentication", document or where)
    spec = body.get("spec")
    try:
        need(spec is None or isinstance(spec, dict), "spec", "is not a mapping")
        selector = match_labels(spec or {})
    except FieldError:
        selector = None  # cannot tell which workloads: all of the namespace
    api_version = body.get("apiVersion")
    return PeerAuthentication(
        api_version if isinstance(api_version, str) else "",
        "PeerAuthentication",
        Meta(key.name, key.namespace, {}, {}),
        body,
        selector,
        "STRICT",
        refused=refusal,
        fail_closed=True,
    )


def _parse_peer_authentication(
    api_version: str, meta: Meta, body: Mapping[str, Any]
) -> PeerAuthentication:
    spec = mapping(body, "spec", "")
    known_fields(spec, {"selector", "mtls"}, "spec")
    mtls = mapping(spec, "mtls", "spec")
    known_fields(mtls, {"mode"}, "spec.mtls")
    mode = string(mtls, "mode", "spec.mtls", default="UNSET")
    need(mode in MTLS_MODES, "spec.mtls.mode", f"{mode!r} is not one of {', '.join(MTLS_MODES)}")
    return PeerAuthentication(
        api_version, "PeerAuthentication", meta, body, match_labels(spec), mode
    )


def _parse_env(c: Mapping[str, Any], path: str) -> tuple[EnvVar, ...]:
    out = []
    for i, e in enumerate(listing(c, "env", path)):
        where = f"{path}.env[{i}]"
        need(isinstance(e, dict), where, "must be a mapping with name and value")
        name = string(e, "name", where, required=True)
        value_from = mapping(e, "valueFrom", where)
        if value_from:
            ref = mapping(value_from, "fieldRef", f"{where}.valueFrom")
            need(bool(ref), f"{where}.valueFrom", "only fieldRef is supported in the lab")
            fp = string(ref, "fieldPath", f"{where}.valueFrom.fieldRef", required=True)
            need(
                fp in FIELD_REFS,
                f"{where}.valueFrom.fieldRef.fieldPath",
                f"{fp!r} is not one of {sorted(FIELD_REFS)}",
            )
            out.append(EnvVar(name, None, fp))
        else:
            value = e.get("value", "")
            need(
                isinstance(value, str),
                f"{where}.value",
                f"must be a string (quote it), not {type(value).__name__}",
            )
            out.append(EnvVar(name, value, None))
    return tuple(out)


def _parse_container(c: Any, path: str) -> Container:
    need(isinstance(c, dict), path, "must be a mapping")
    name = string(c, "name", path, required=True)
    need(bool(DNS_LABEL.match(name)), f"{path}.name", f"{name!r} is not a valid container name")
    command = strings(c, "command", path)
    args = strings(c, "args", path)
    need(
        bool(command) or bool(args),
        f"{path}.command",
        "is required: lab pods have no image, so the command to run must be given",
    )
    ports = []
    for j, p in enumerate(listing(c, "ports", path)):
        where = f"{path}.ports[{j}]"
        need(isinstance(p, dict), where, "must be a mapping")
        protocol = string(p, "protocol", where, default="TCP")
        need(
            protocol in PROTOCOLS,
            f"{where}.protocol",
            f"{protocol!r} is not one of {sorted(PROTOCOLS)}",
        )
        ports.append(
            ContainerPort(
                port_number(p.get("containerPort"), f"{where}.containerPort"),
                string(p, "name", where),
                protocol,
            )
        )
    security = mapping(c, "securityContext", path)
    privileged = security.get("privileged", False)
    need(
        isinstance(privileged, bool),
        f"{path}.securityContext.privileged",
        f"must be true or false, not {type(privileged).__name__}",
    )
    caps = mapping(security, "capabilities", f"{path}.securityContext")
    add = strings(caps, "add", f"{path}.securityContext.capabilities")
    return Container(
        name,
        command,
        args,
        _parse_env(c, path),
        tuple(ports),
        privileged,
        tuple(a.upper().removeprefix("CAP_") for a in add),
    )


def _parse_pod(api_version: str, meta: Meta, body: Mapping[str, Any]) -> Pod:
    spec = mapping(body, "spec", "")
    status = mapping(body, "status", "")
    raw_containers = listing(spec, "containers", "spec")
    need(bool(raw_containers), "spec.containers", "a Pod needs at least one container")
    containers = tuple(
        _parse_container(c, f"spec.containers[{i}]") for i, c in enumerate(raw_containers)
    )
    names = [c.name for c in containers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FieldError("spec.containers", f"duplicate container name {dup[0]!r}")
    restart = string(spec, "restartPolicy", "spec", default="Always")
    need(
        restart in RESTART_POLICIES,
        "spec.restartPolicy",
        f"{restart!r} is not one of {sorted(RESTART_POLICIES)}",
    )
    sa = string(spec, "serviceAccountName", "spec", default="") or string(
        spec, "serviceAccount", "spec", default="default"
    )
    need(bool(DNS_SUBDOMAIN.match(sa)), "spec.serviceAccountName", f"{sa!r} is not a valid name")
    ip = string(status, "podIP", "status")
    if ip:
        ipv4(ip, "status.podIP")
    return Pod(
        api_version,
        "Pod",
        meta,
        body,
        node_name=string(spec, "nodeName", "spec"),
        service_account=sa,
        containers=containers,
        restart_policy=restart,
        ip=ip,
        host_ip=string(status, "hostIP", "status"),
        phase=string(status, "phase", "status", default="Pending"),
    )


def _parse_service(api_version: str, meta: Meta, body: Mapping[str, Any]) -> Service:
    spec = mapping(body, "spec", "")
    stype = string(spec, "type", "spec", default="ClusterIP")
    need(
        stype in SERVICE_TYPES,
        "spec.type",
        f"{stype!r} is not supported (use one of {sorted(SERVICE_TYPES)})",
    )
    cluster_ip = string(spec, "clusterIP", "spec")
    if cluster_ip and cluster_ip != "None":
        addr = ipv4(cluster_ip, "spec.clusterIP")
        need(
            addr in SERVICE_CIDR,
            "spec.clusterIP",
            f"{cluster_ip} is outside the service range {SERVICE_CIDR}",
        )
    ports = []
    seen: set[tuple[int, str]] = set()
    for i, p in enumerate(listing(spec, "ports", "spec")):
        where = f"spec.ports[{i}]"
        need(isinstance(p, dict), where, "must be a mapping")
        port = port_number(p.get("port"), f"{where}.port")
        target = p.get("targetPort", port)
        if isinstance(target, str):
            need(
                bool(DNS_LABEL.match(target)),
                f"{where}.targetPort",
                f"{target!r} is not a port name",
            )
        else:
            target = port_number(target, f"{where}.targetPort")
        protocol = string(p, "protocol", where, default="TCP")
        need(
            protocol in PROTOCOLS,
            f"{where}.protocol",
            f"{protocol!r} is not one of {sorted(PROTOCOLS)}",
        )
        need(
            (port, protocol) not in seen, f"{where}.port", f"port {port}/{protocol} is listed twice"
        )
        seen.add((port, protocol))
        ports.append(ServicePort(port, target, string(p, "name", where), protocol))
    need(
        len(ports) < 2 or all(p.name for p in ports),
        "spec.ports",
        "every port needs a name when a Service has more than one",
    )
    selector = string_map(spec, "selector", "spec", labels=True) if "selector" in spec else None
    return Service(
        api_version, "Service", meta, body, selector or None, cluster_ip, tuple(ports), stype
    )


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes equality selector; an empty or missing one selects nothing here."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())  # type: ignore[union-attr]
