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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.common.errors import FieldError
from agent.common.schema import Bool, Model, Port, Str, invalid, parse

from . import endpointslice
from .authz import KIND as AUTHORIZATION_POLICY
from .authz import parse_authorization_policy, refused_policy
from .resource import (
    CLUSTER_KINDS,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    GATEWAY_API,
    MESH_API,
    NAMESPACED_KINDS,
    POLICY_APIS,
    KindName,
    Labels,
    LabelSelector,
    Meta,
    ObjectKey,
    Quoted,
    Refusal,
    Resource,
    canonical_kind,
    document_key,
    parse_meta,
    selector_of,
    stand_in_meta,
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

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


# ---------------------------------------------------------------- field types


def _port_number(value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be a port number")
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (1-65535)")
    return value


def _true_false(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {type(value).__name__}")
    return value


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 address") from exc
    return value


PortNumber = Annotated[Port, BeforeValidator(_port_number)]
TrueFalse = Annotated[Bool, BeforeValidator(_true_false)]
Protocol = Literal["TCP", "UDP", "SCTP"]


class _Read(Model):
    """Kubernetes' own kinds: the fields the mesh reads. The rest belongs to Kubernetes (an
    image, probes, the API server's defaults) and is ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- Pod


class ContainerPort(_Read):
    container_port: PortNumber
    name: Str = ""
    protocol: Protocol = "TCP"


class FieldRef(_Read):
    field_path: Str


class EnvSource(_Read):
    """Of the sources an env value may come from, the one the lab fills (fieldRef); a
    cluster's others (secretKeyRef, ...) are read as absent: nothing in the mesh uses
    them, and what the lab cannot run it refuses itself (lab.py `_check_runnable`)."""

    field_ref: FieldRef | None = None


class EnvVar(_Read):
    name: Str
    value: Quoted | None = None
    value_from: EnvSource | None = None

    @property
    def field_ref(self) -> str | None:
        """A Downward API path such as `status.podIP`, resolved where the pod runs."""
        ref = self.value_from.field_ref if self.value_from is not None else None
        return ref.field_path if ref is not None else None


class Capabilities(_Read):
    add: tuple[Str, ...] = ()


class SecurityContext(_Read):
    privileged: TrueFalse = False
    capabilities: Capabilities | None = None


class Container(_Read):
    name: Str
    args: tuple[Str, ...] = ()
    command: tuple[Str, ...] = ()
    """Empty for a pod that runs its image's entrypoint; the lab, which has no images,
    refuses that itself."""
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    security_context: SecurityContext | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not DNS_LABEL.match(name):
            raise ValueError(f"{name!r} is not a valid container name")
        return name

    @property
    def privileged(self) -> bool:
        """securityContext.privileged (the lab runs every container as root, whatever it says)."""
        return self.security_context is not None and self.security_context.privileged

    @property
    def capabilities_add(self) -> tuple[str, ...]:
        """securityContext.capabilities.add, upper case, without a CAP_ prefix."""
        sc = self.security_context
        if sc is None or sc.capabilities is None:
            return ()
        return tuple(a.upper().removeprefix("CAP_") for a in sc.capabilities.add)


class PodSpec(_Read):
    containers: tuple[Container, ...] = Field((), validate_default=True)
    node_name: Str = ""
    service_account_name: Str = ""
    service_account: Str = ""
    """The deprecated spelling of serviceAccountName, read where that is empty."""
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    host_network: TrueFalse = False

    @field_validator("containers")
    @classmethod
    def _containers(cls, containers: tuple[Container, ...]) -> tuple[Container, ...]:
        if not containers:
            raise ValueError("a Pod needs at least one container")
        names = [c.name for c in containers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate container name {dup[0]!r}")
        return containers

    @model_validator(mode="after")
    def _account(self) -> PodSpec:
        if not DNS_SUBDOMAIN.match(self.account):
            raise invalid(f"{self.account!r} is not a valid name", "serviceAccountName")
        return self

    @property
    def account(self) -> str:
        return self.service_account_name or self.service_account or "default"


class PodStatus(_Read):
    pod_ip: Str = Field("", alias="podIP")
    """Empty until the pod has a sandbox."""
    host_ip: Str = Field("", alias="hostIP")
    phase: Str = "Pending"

    @field_validator("pod_ip")
    @classmethod
    def _ip(cls, ip: str) -> str:
        return _ipv4(ip) if ip else ip


@dataclass(frozen=True)
class Namespace(Resource):
    pass


@dataclass(frozen=True)
class Pod(Resource):
    spec: PodSpec
    status: PodStatus

    @property
    def node_name(self) -> str:
        return self.spec.node_name

    @property
    def service_account(self) -> str:
        return self.spec.account

    @property
    def containers(self) -> tuple[Container, ...]:
        return self.spec.containers

    @property
    def restart_policy(self) -> str:
        return self.spec.restart_policy

    @property
    def ip(self) -> str:
        """status.podIP; empty until the pod has a sandbox."""
        return self.status.pod_ip

    @property
    def host_ip(self) -> str:
        return self.status.host_ip

    @property
    def phase(self) -> str:
        return self.status.phase

    def named_port(self, name: str) -> int | None:
        for c in self.spec.containers:
            for p in c.ports:
                if p.name == name:
                    return p.container_port
        return None


# ---------------------------------------------------------------- Service


def _target_port(value: Any) -> Any:
    if isinstance(value, str):
        if not DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a port name")
        return value
    return _port_number(value)


def _service_type(value: Any) -> Any:
    if value not in SERVICE_TYPES:
        raise ValueError(f"{value!r} is not supported (use one of {sorted(SERVICE_TYPES)})")
    return value


class ServicePort(_Read):
    port: PortNumber
    target_port: Annotated[
        int | str,
        BeforeValidator(_target_port),
        WithJsonSchema({"x-kubernetes-int-or-string": True}),
    ]
    """A number, or the name of a container port; the port itself when not given."""
    name: Str = ""
    protocol: Protocol = "TCP"

    @model_validator(mode="before")
    @classmethod
    def _target_is_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("targetPort") is None and "port" in data:
            return {**data, "targetPort": data["port"]}
        return data


class ServiceSpec(_Read):
    type: Annotated[str, BeforeValidator(_service_type), WithJsonSchema({"type": "string"})] = (
        "ClusterIP"
    )
    cluster_ip: Str = Field("", alias="clusterIP")
    """Empty until allocated; "None" for a headless Service."""
    ports: tuple[ServicePort, ...] = ()
    selector: Labels | None = None

    @field_validator("cluster_ip")
    @classmethod
    def _cluster_ip(cls, ip: str) -> str:
        return _ipv4(ip) if ip and ip != "None" else ip

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
        seen: set[tuple[int, str]] = set()
        for i, p in enumerate(ports):
            if (p.port, p.protocol) in seen:
                raise invalid(f"port {p.port}/{p.protocol} is listed twice", i, "port")
            seen.add((p.port, p.protocol))
        if len(ports) > 1 and not all(p.name for p in ports):
            raise ValueError("every port needs a name when a Service has more than one")
        return ports


@dataclass(frozen=True)
class Service(Resource):
    spec: ServiceSpec

    @property
    def selector(self) -> Mapping[str, str] | None:
        """None: no selector, so the lab manages no endpoints for it."""
        return self.spec.selector or None

    @property
    def cluster_ip(self) -> str:
        """Empty until allocated; "None" for a headless Service."""
        return self.spec.cluster_ip

    @property
    def ports(self) -> tuple[ServicePort, ...]:
        return self.spec.ports

    @property
    def type(self) -> str:
        return self.spec.type


# ---------------------------------------------------------------- PeerAuthentication


class MutualTLS(Model):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthenticationSpec(Model):
    """Istio's PeerAuthentication spec, less portLevelMtls (refused: no agent reads it, and
    ignoring it could leave a port in plaintext that its author meant STRICT)."""

    selector: LabelSelector | None = None
    """None (or no labels) applies to the whole namespace (or mesh, in the root namespace)."""
    mtls: MutualTLS | None = None


@dataclass(frozen=True)
class PeerAuthentication(Resource):
    """Whether a workload accepts plaintext besides mTLS (slipstream.dev/v1alpha1, or
    Istio's security.istio.io)."""

    spec: PeerAuthenticationSpec
    refused: Refusal | None = None
    """Set when the newest version did not validate; without `fail_closed` this is the last
    good version, which keeps deciding."""
    fail_closed: bool = False
    """No good version exists: STRICT for every workload in its scope, whatever any other
    PeerAuthentication says, until it is fixed or deleted."""

    @property
    def selector(self) -> Mapping[str, str] | None:
        """matchLabels; None applies to the whole namespace (or mesh, in the root namespace)."""
        return selector_of(self.spec)

    @property
    def mode(self) -> str:
        return self.spec.mtls.mode if self.spec.mtls is not None else "UNSET"


# ---------------------------------------------------------------- parsing


def parse_object(body: Any) -> Resource:
    """Validate one manifest document and return its typed object."""
    if not isinstance(body, dict):
        raise FieldError("", f"a manifest document must be a mapping, not {type(body).__name__}")
    head = parse(KindName, body)
    api_version, kind = head.api_version, head.kind
    meta = parse_meta(body, kind)
    if kind == "Pod" and api_version == "v1":
        return Pod(
            api_version, kind, meta, body, _spec(PodSpec, body), _spec(PodStatus, body, "status")
        )
    if kind == "Service" and api_version == "v1":
        return Service(api_version, kind, meta, body, _spec(ServiceSpec, body))
    if kind == "Namespace" and api_version == "v1":
        return Namespace(api_version, kind, meta, body)
    if kind == endpointslice.KIND and api_version == endpointslice.API_VERSION:
        return endpointslice.parse_endpoint_slice(api_version, meta, body)
    if kind in ("AuthorizationPolicy", "PeerAuthentication"):
        # A policy nobody reads would fail open: refuse one we do not understand.
        if api_version not in POLICY_APIS:
            raise FieldError(
                "apiVersion",
                f"{api_version!r} is not a {kind} version we read ({', '.join(POLICY_APIS)})",
            )
        if kind == "AuthorizationPolicy":
            return parse_authorization_policy(api_version, meta, body)
        spec = _spec(PeerAuthenticationSpec, body)
        return PeerAuthentication(api_version, kind, meta, body, spec)
    return Resource(api_version, kind, meta, body)


def _spec(model: type[Any], body: Mapping[str, Any], field: str = "spec") -> Any:
    value = body.get(field)
    return parse(model, {} if value is None else value, field)


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
    return ObjectKey.parse(
        body["kind"],
        meta["name"],
        ns if isinstance(ns, str) else "default",
        str(body.get("apiVersion", "")),
    )


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
        raw = spec.get("selector") if isinstance(spec, dict) else None
        selector = None if raw is None else parse(LabelSelector, raw, "spec.selector")
    except FieldError:
        selector = None  # cannot tell which workloads: all of the namespace
    api_version = body.get("apiVersion")
    return PeerAuthentication(
        api_version if isinstance(api_version, str) else "",
        "PeerAuthentication",
        stand_in_meta(key.name, key.namespace),
        body,
        PeerAuthenticationSpec.model_construct(
            selector=selector, mtls=MutualTLS.model_construct(mode="STRICT")
        ),
        refused=refusal,
        fail_closed=True,
    )


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes equality selector; an empty or missing one selects nothing here."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())  # type: ignore[union-attr]
