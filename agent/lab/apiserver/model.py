"""What the server serves: resource types (built-in and from CRDs) and their registry.

One `ResourceType` per (group, version, resource). Objects are stored per
(group, resource) whatever version they came through (`ResourceType.store_key`),
as the real server stores one version and converts: our CRD versions differ only
in `apiVersion`, which is rewritten on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()
    schema_ref: str | None = None
    """Name of the built-in kind's schema in kubernetes-validate's definitions."""
    crd: CrdVersion | None = None
    list_kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> str:
        """`pods`, `endpointslices.discovery.k8s.io`: one storage per group and resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    format: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CrdVersion:
    """What one served version of a CRD contributes: its schema and printer columns."""

    crd_name: str
    schema: dict[str, Any] = field(hash=False, compare=False)
    columns: tuple[PrinterColumn, ...] = ()
    storage_version: str = ""


def _core(kind: str, plural: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType(
        "",
        "v1",
        kind,
        plural,
        kind.lower(),
        namespaced,
        schema_ref=f"io.k8s.api.core.v1.{kind}",
        **kw,
    )


BUILTINS: tuple[ResourceType, ...] = (
    _core("Namespace", "namespaces", False, short_names=("ns",), subresources=("status",)),
    _core(
        "Pod",
        "pods",
        True,
        short_names=("po",),
        categories=("all",),
        subresources=("status", "binding"),
    ),
    _core(
        "Service",
        "services",
        True,
        short_names=("svc",),
        categories=("all",),
        subresources=("status",),
    ),
    _core("ServiceAccount", "serviceaccounts", True, short_names=("sa",), subresources=("token",)),
    _core("Node", "nodes", False, short_names=("no",), subresources=("status",)),
    _core("Secret", "secrets", True),
    _core("ConfigMap", "configmaps", True, short_names=("cm",)),
    _core("Event", "events", True, short_names=("ev",)),
    _core("Endpoints", "endpoints", True, short_names=("ep",)),
    ResourceType(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        True,
        schema_ref="io.k8s.api.discovery.v1.EndpointSlice",
    ),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        False,
        verbs=("create",),
        schema_ref="io.k8s.api.authentication.v1.TokenReview",
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        subresources=("status",),
        schema_ref="io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    ),
    *(
        ResourceType(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
            plural,
            kind.lower(),
            namespaced,
            schema_ref=f"io.k8s.api.rbac.v1.{kind}",
        )
        for kind, plural, namespaced in (
            ("Role", "roles", True),
            ("RoleBinding", "rolebindings", True),
            ("ClusterRole", "clusterroles", False),
            ("ClusterRoleBinding", "clusterrolebindings", False),
        )
    ),
)

WORKLOADS: tuple[ResourceType, ...] = (
    *(
        ResourceType(
            "apps",
            "v1",
            kind,
            plural,
            kind.lower(),
            True,
            short_names=short,
            categories=("all",),
            subresources=subresources,
            schema_ref=f"io.k8s.api.apps.v1.{kind}",
        )
        for kind, plural, short, subresources in (
            ("DaemonSet", "daemonsets", ("ds",), ("status",)),
            ("Deployment", "deployments", ("deploy",), ("status", "scale")),
            ("ReplicaSet", "replicasets", ("rs",), ("status", "scale")),
        )
    ),
    ResourceType(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        True,
        short_names=("pdb",),
        subresources=("status",),
        schema_ref="io.k8s.api.policy.v1.PodDisruptionBudget",
    ),
)
"""What `deploy/` is made of beyond the kinds above: stored, validated and served (the
controllers that act on them are controllers.py's)."""

CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"


class Registry:
    """Every served resource type; CRDs come and go as their objects do."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._by_crd: dict[str, list[ResourceType]] = {}
        for rt in (*BUILTINS, *WORKLOADS):
            self._types[(rt.group, rt.version, rt.plural)] = rt
        self.generation = 0
        """Bumped on every change, so discovery documents can be cached by it."""

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        return None

    def by_store_key(self, key: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.store_key == key]

    def groups(self) -> dict[str, list[str]]:
        """group -> versions, preferred (storage, else first) first; "" is the core group."""
        out: dict[str, list[str]] = {}
        for rt in self._types.values():
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                if rt.crd and rt.crd.storage_version == rt.version:
                    versions.insert(0, rt.version)
                else:
                    versions.append(rt.version)
        return out

    def builtin_key(self, key: str) -> bool:
        return any(rt.store_key == key for rt in BUILTINS)

    def set_crd(self, name: str, types: list[ResourceType]) -> None:
        self.remove_crd(name)
        for rt in types:
            self._types[(rt.group, rt.version, rt.plural)] = rt
        self._by_crd[name] = types
        self.generation += 1

    def remove_crd(self, name: str) -> None:
        for rt in self._by_crd.pop(name, []):
            self._types.pop((rt.group, rt.version, rt.plural), None)
        self.generation += 1
