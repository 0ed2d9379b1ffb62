"""The parts every object shares: its kind and key, its metadata, the manifest as written.

`ObjectKey` names an object everywhere (store, lab, sources); `Resource` is the
base of every typed object in `objects` and `authz`; `Refusal` is why a source
refused an object's newest version (policies carry it: see `authz.refused_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .fields import DNS_LABEL, DNS_SUBDOMAIN, mapping, need, string, string_map

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
    if kind in CLUSTER_KINDS:
        return ObjectKey(kind, "", name)
    ns = meta.get("namespace") or "default"
    if not (isinstance(ns, str) and DNS_LABEL.match(ns)):
        ns = ""
    return ObjectKey(kind, ns, name)


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
    meta = mapping(body, "metadata", "")
    name = string(meta, "name", "metadata", required=True)
    pattern = DNS_LABEL if kind in ("Namespace", "Service") else DNS_SUBDOMAIN
    need(
        bool(pattern.match(name)),
        "metadata.name",
        f"{name!r} is not a valid name (lowercase letters, digits and '-')",
    )
    if kind in CLUSTER_KINDS:
        namespace = ""
    else:
        namespace = string(meta, "namespace", "metadata", default="default")
        need(
            bool(DNS_LABEL.match(namespace)),
            "metadata.namespace",
            f"{namespace!r} is not a valid namespace",
        )
    return Meta(
        name=name,
        namespace=namespace,
        labels=string_map(meta, "labels", "metadata", labels=True),
        annotations=string_map(meta, "annotations", "metadata", labels=False),
    )
