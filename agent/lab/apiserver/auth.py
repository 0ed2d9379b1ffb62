"""Who is asking (bearer tokens) and what they may do (RBAC), plus TokenReview.

Tokens are random opaque strings; the server keeps only their SHA-256, with
the user, groups and `extra` they stand for, an expiry, audiences and what
they are bound to. A service-account token bound to a pod (as a projected
token of a real kubelet is) stops working when that pod or its service
account is deleted or replaced (uid check), and after its expiry; a node's
token stops with its Node object. TokenReview answers exactly these checks,
so the mesh CA can authorize an agent by its token.

Authorization is RBAC over the objects of rbac.authorization.k8s.io/v1
(Role, ClusterRole, RoleBinding, ClusterRoleBinding: verbs, apiGroups,
resources with subresources, resourceNames, nonResourceURLs, and subjects
User, Group, ServiceAccount). Built in, as kube-apiserver's bootstrap policy:
group `system:masters` may do everything, and every authenticated user may
read discovery, /version and /openapi. Not enforced: aggregated ClusterRoles,
field- and label-selector authorization, impersonation, admission plugins
other than the few the core applies (namespace lifecycle).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .store import Store

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
"""The default audience of the tokens this server mints, as kube-apiserver's issuer."""

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = self.extra
        return out


@dataclass
class TokenRecord:
    digest: str
    user: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)
    expires: float | None = None
    audiences: list[str] = field(default_factory=lambda: [API_AUDIENCE])
    bound: dict[str, str] | None = None
    """{"kind": "Pod"|"Secret"|"Node", "namespace", "name", "uid"} the token dies with."""
    service_account: dict[str, str] | None = None
    """{"namespace", "name", "uid"} for service-account tokens."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """Every token the server accepts, by digest. `mint` returns the only plaintext copy."""

    def __init__(self) -> None:
        self.records: dict[str, TokenRecord] = {}

    def mint(
        self,
        user: str,
        groups: list[str],
        *,
        ttl: float | None = None,
        extra: dict[str, list[str]] | None = None,
        audiences: list[str] | None = None,
        bound: dict[str, str] | None = None,
        service_account: dict[str, str] | None = None,
        uid: str = "",
        now: float | None = None,
    ) -> tuple[str, TokenRecord]:
        token = "ss-" + secrets.token_urlsafe(32)
        rec = TokenRecord(
            digest(token),
            user,
            uid,
            sorted(set(groups) | {AUTHENTICATED}),
            extra or {},
            None if ttl is None else (now or time.time()) + ttl,
            audiences or [API_AUDIENCE],
            bound,
            service_account,
        )
        self.records[rec.digest] = rec
        return token, rec

    def review(
        self, token: str, store: Store, audiences: list[str] | None = None, now: float | None = None
    ) -> tuple[UserInfo | None, list[str], str]:
        """(user, audiences, error): the user when the token is valid now, else a reason."""
        rec = self.records.get(digest(token)) if token else None
        if rec is None:
            return None, [], "invalid bearer token"
        if rec.expires is not None and (now or time.time()) >= rec.expires:
            return None, [], "token has expired"
        wanted = audiences or [API_AUDIENCE]
        common = [a for a in wanted if a in rec.audiences]
        if not common:
            return (
                None,
                [],
                f"token audiences {rec.audiences} is invalid for the target audiences {wanted}",
            )
        sa = rec.service_account
        if sa is not None:
            live = store.get("serviceaccounts", sa["namespace"], sa["name"])
            if live is None or (sa.get("uid") and live["metadata"].get("uid") != sa["uid"]):
                return None, [], f"service account {sa['namespace']}/{sa['name']} has been deleted"
        b = rec.bound
        if b is not None:
            store_key = {"Pod": "pods", "Secret": "secrets", "Node": "nodes"}.get(b["kind"], "")
            live = store.get(store_key, b.get("namespace", ""), b["name"])
            what = f'{b["kind"].lower()} "{b["name"]}"'
            if live is None:
                return None, [], f"{what} not found"
            if b.get("uid") and live["metadata"].get("uid") != b["uid"]:
                return None, [], f"{what} has been deleted (uid {b['uid']} is gone)"
            if live["metadata"].get("deletionTimestamp"):
                return None, [], f"{what} is being deleted"
        return UserInfo(rec.user, rec.uid, tuple(rec.groups), rec.extra), common, ""


# ------------------------------------------------------------------ RBAC


@dataclass(frozen=True)
class Attributes:
    user: UserInfo
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    """Set for non-resource requests (/version, /api...)."""


DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")


def _subject_matches(subject: Any, user: UserInfo, binding_ns: str) -> bool:
    if not isinstance(subject, dict):
        return False
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.name == f"system:serviceaccount:{ns}:{name}"
    return False


def _rule_allows(rule: Any, a: Attributes) -> bool:
    if not isinstance(rule, dict):
        return False
    verbs = rule.get("verbs") or []
    if "*" not in verbs and a.verb not in verbs:
        return False
    if a.path:
        urls = rule.get("nonResourceURLs") or []
        return any(
            u == a.path or u == "*" or (u.endswith("*") and a.path.startswith(u[:-1])) for u in urls
        )
    groups = rule.get("apiGroups") or []
    if "*" not in groups and a.group not in groups:
        return False
    resources = rule.get("resources") or []
    full = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    if not any(
        r in ("*", full)
        or (a.subresource and r == f"*/{a.subresource}")
        or (not a.subresource and r == a.resource)
        or (a.subresource and r == f"{a.resource}/*")
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or a.name in names


def authorize(a: Attributes, store: Store) -> bool:
    if MASTERS in a.user.groups:
        return True
    if a.path and a.verb == "get" and a.path.startswith(DISCOVERY_PREFIXES):
        return AUTHENTICATED in a.user.groups
    for b in store.items("clusterrolebindings.rbac.authorization.k8s.io"):
        if any(_subject_matches(s, a.user, "") for s in b.get("subjects") or []):
            role = _role(store, b.get("roleRef"), "")
            if role and any(_rule_allows(r, a) for r in role.get("rules") or []):
                return True
    if a.namespace and not a.path:
        for b in store.items("rolebindings.rbac.authorization.k8s.io", a.namespace):
            if any(_subject_matches(s, a.user, a.namespace) for s in b.get("subjects") or []):
                role = _role(store, b.get("roleRef"), a.namespace)
                if role and any(_rule_allows(r, a) for r in role.get("rules") or []):
                    return True
    return False


def _role(store: Store, ref: Any, ns: str) -> dict[str, Any] | None:
    if not isinstance(ref, dict):
        return None
    if ref.get("kind") == "ClusterRole":
        return store.get("clusterroles.rbac.authorization.k8s.io", "", str(ref.get("name")))
    if ref.get("kind") == "Role" and ns:
        return store.get("roles.rbac.authorization.k8s.io", ns, str(ref.get("name")))
    return None


def forbidden_message(a: Attributes) -> str:
    if a.path:
        return f'forbidden: User "{a.user.name}" cannot {a.verb} path "{a.path}"'
    res = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    head = f'{a.resource} "{a.name}" is forbidden' if a.name else f"{a.resource} is forbidden"
    where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return (
        f'{head}: User "{a.user.name}" cannot {a.verb} resource "{res}" in API group '
        f'"{a.group}" {where}'
    )
