"""The parts every object shares: its kind and key, its metadata, the manifest as written.

`ObjectKey` names an object everywhere (store, lab, sources); `Resource` is the
base of every typed object in `objects` and `authz`: the envelope (apiVersion,
kind, `Meta`, the manifest as written) around the kind's spec, a model on
agent/common/schema.py. `Refusal` is why a source refused an object's newest
version (policies carry it: see `authz.refused_policy`). The models every kind
shares live here too: `Meta`, label maps, `LabelSelector`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.common.schema import Model, Str, parse

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")

MESH_API = "slipstream.dev/v1alpha1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
POLICY_APIS = (MESH_API, "security.istio.io/v1", "security.istio.io/v1beta1")
"""AuthorizationPolicy and PeerAuthentication: ours, or Istio's manifests as they are."""

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


OWN_GROUP = "slipstream.dev"
SHARED_KINDS = ("AuthorizationPolicy", "PeerAuthentication")
"""Kinds both Istio's group (security.istio.io) and ours define: to the API server an
Istio AuthorizationPolicy and ours of the same name are two objects, and the mesh
enforces both, so our group is part of their key."""


def key_group(api_version: Any, kind: str) -> str:
    """The group an ObjectKey keeps: ours, for the kinds Istio's group shares; else none."""
    group = api_version.partition("/")[0] if isinstance(api_version, str) else ""
    return group if group == OWN_GROUP and "/" in api_version and kind in SHARED_KINDS else ""


@dataclass(frozen=True, order=True)
class ObjectKey:
    kind: str
    namespace: str
    """Empty for cluster-scoped kinds."""
    name: str
    group: str = ""
    """Only where two groups share the kind (`key_group`)."""

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"

    @classmethod
    def parse(
        cls, kind: str, name: str, namespace: str = "default", api_version: str = ""
    ) -> ObjectKey:
        """From a kind as kubectl takes it (`authorizationpolicy.slipstream.dev` names
        ours) or with the object's apiVersion."""
        base, _, group = kind.partition(".")
        kind = canonical_kind(base)
        group = key_group(api_version or f"{group}/", kind)
        return cls(kind, "" if kind in CLUSTER_KINDS else namespace, name, group)


# ---------------------------------------------------------------- shared models


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(LABEL_NAME.match(name))


def _label_key(key: Any) -> Any:
    if isinstance(key, str) and not valid_label_key(key):
        raise ValueError("is not a valid label key")
    return key


def _quoted(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"value must be a string (quote it), not {type(value).__name__}")
    return value


def _label_value(value: Any) -> Any:
    value = _quoted(value)
    if not (LABEL_VALUE.match(value) and len(value) <= 63):
        raise ValueError(f"{value!r} is not a valid label value")
    return value


_STRING = WithJsonSchema({"type": "string"})
Quoted = Annotated[str, BeforeValidator(_quoted), _STRING]
"""A string where YAML makes numbers and booleans of what was meant as text: refused with
`quote it`, not read as text."""
LabelValue = Annotated[str, BeforeValidator(_label_value), _STRING]
Labels = dict[Annotated[Str, BeforeValidator(_label_key)], LabelValue]
"""Label keys and values as Kubernetes allows them."""
Annotations = dict[Str, Quoted]


class LabelSelector(Model):
    """`selector: {matchLabels: ...}` (equality only: matchExpressions is refused, as an
    unknown field, rather than ignored, which would widen the selection)."""

    match_labels: Labels = {}


class Meta(Model):
    """metadata: what the mesh reads of it. The rest (uid, resourceVersion, managedFields...)
    belongs to the API server and is ignored. Validated with the kind in the context
    (`parse_meta`): a Namespace's or Service's name is a DNS label, other names DNS
    subdomains; a cluster-scoped kind has no namespace, a namespaced one "default"."""

    model_config = ConfigDict(extra="ignore")

    name: Str
    namespace: Str = Field("", validate_default=True)
    labels: Labels = {}
    annotations: Annotations = {}

    @model_validator(mode="before")
    @classmethod
    def _namespace_default(cls, data: Any, info: ValidationInfo) -> Any:
        kind = (info.context or {}).get("kind")
        if isinstance(data, dict) and kind is not None:
            if kind in CLUSTER_KINDS:
                data = {**data, "namespace": ""}
            elif data.get("namespace") is None:
                data = {**data, "namespace": "default"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, name: str, info: ValidationInfo) -> str:
        kind = (info.context or {}).get("kind")
        pattern = DNS_LABEL if kind in ("Namespace", "Service") else DNS_SUBDOMAIN
        if not pattern.match(name):
            raise ValueError(f"{name!r} is not a valid name (lowercase letters, digits and '-')")
        return name

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str, info: ValidationInfo) -> str:
        kind = (info.context or {}).get("kind")
        if kind not in CLUSTER_KINDS and not DNS_LABEL.match(namespace):
            raise ValueError(f"{namespace!r} is not a valid namespace")
        return namespace


def stand_in_meta(name: str, namespace: str, annotations: Mapping[str, str] | None = None) -> Meta:
    """The metadata of what stands in for a document that did not validate: its name may
    be made up (`(unnamed: ...)`) and its namespace "" (the whole mesh), so it is not
    validated."""
    return Meta.model_construct(
        name=name, namespace=namespace, labels={}, annotations=dict(annotations or {})
    )


def selector_of(spec: Any) -> Mapping[str, str] | None:
    """matchLabels of a spec (as parsed: anything with `selector`); None: no selector, or an
    empty one, which selects every workload in scope."""
    sel: LabelSelector | None = getattr(spec, "selector", None)
    return (sel.match_labels or None) if sel is not None else None


class KindName(Model):
    """apiVersion and kind: what says how to read the rest."""

    model_config = ConfigDict(extra="ignore")

    api_version: Str
    kind: Str

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        if not re.match(r"^[A-Z][A-Za-z0-9]*$", kind):
            raise ValueError(f"{kind!r} is not a kind name")
        return kind


@dataclass(frozen=True)
class Resource:
    """Any object; `raw` is the manifest as written (plus live fields the lab adds)."""

    api_version: str
    kind: str
    meta: Meta
    raw: Mapping[str, Any]

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(
            self.kind, self.meta.namespace, self.meta.name, key_group(self.api_version, self.kind)
        )


@dataclass(frozen=True)
class Refusal:
    """Why the newest version of an object did not validate.

    Policies keep it in the store beside what enforces in its place, so that
    /config_dump and `slipstream policy check` show it, and the Kubernetes
    source can write it to the object's status (condition Accepted=False,
    reason Invalid, with this message)."""

    field: str
    """The field path that is wrong (`spec.rules[0].from`), or empty for the whole object."""
    reason: str
    where: str = ""
    """Where the refused version was read (`file:line (document n)`), when the source knows."""

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


def document_key(body: Any, kind: str, document: str) -> ObjectKey:
    """The key of a document of `kind` that may not validate: to find the version it
    replaces, and to key what stands in for it. The namespace is "" when it cannot be read
    (a policy's stand-in then covers the whole mesh); a name that cannot be read is made
    from `document`, which says which document this is (`file (document n)`)."""
    meta = body.get("metadata") if isinstance(body, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    if not (isinstance(name, str) and DNS_SUBDOMAIN.match(name)):
        name = f"(unnamed: {document or 'no name'})"
    group = key_group(body.get("apiVersion") if isinstance(body, dict) else None, kind)
    if kind in CLUSTER_KINDS:
        return ObjectKey(kind, "", name, group)
    ns = meta.get("namespace") or "default"
    if not (isinstance(ns, str) and DNS_LABEL.match(ns)):
        ns = ""
    return ObjectKey(kind, ns, name, group)


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


def parse_meta(body: Mapping[str, Any], kind: str) -> Meta:
    """The metadata of a document of `kind` (FieldError naming `metadata.<field>`)."""
    meta = body.get("metadata")
    return parse(Meta, {} if meta is None else meta, "metadata", {"kind": kind})
