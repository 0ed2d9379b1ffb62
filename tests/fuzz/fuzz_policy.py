"""Fuzz target: the AuthorizationPolicy parser and validator, its fail-closed stand-in, and
the decisions of what they produce.

The fuzz bytes drive a FuzzedDataProvider that builds a manifest: nested mappings, lists
and scalars, shaped like a policy often enough to get deep (keys and values come from the
policy's own vocabulary, or are arbitrary). Invariants:

- `parse_object` returns an AuthorizationPolicy or raises FieldError naming a field of
  the document (spec..., metadata..., apiVersion); never any other exception;
- a refused document's stand-in (`refused_version`) never raises, and denies a workload in
  its scope, naming the policy; given a last good version, that version is kept;
- deciding with what was parsed never raises, and neither does /config_dump's status.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import atheris

from agent.common.errors import FieldError
from agent.policy.authz import Authorizer, PolicyPeer
from agent.state import Snapshot, parse_object
from agent.state.authz import AuthorizationPolicy
from agent.state.objects import Meta, Pod, PodSpec, PodStatus, refused_version
from tests.fuzz import harness

KEYS = [
    "selector", "matchLabels", "action", "rules", "from", "to", "when", "source", "operation",
    "principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
    "serviceAccounts", "notServiceAccounts", "trustDomains", "notTrustDomains",
    "requestPrincipals", "remoteIpBlocks", "ports", "notPorts", "methods", "paths", "hosts",
    "key", "values", "notValues", "provider", "targetRefs", "name", "namespace", "annotations",
]  # fmt: skip
STRINGS = [
    "ALLOW", "DENY", "AUDIT", "CUSTOM", "*", "**", "", "a*b", "*web", "shop*",
    "cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web",
    "shop/web", "/web", "a/b/c", "cluster.local", "10.0.0.0/8", "10.0.0.7/24", "10.0.0.0/33",
    "10.0.0.0/024", "::1", "fe80::1%eth0", "fe80::1%eth0/64", "2001:db8::/32", "1.2.3.4",
    "80", "0", "65535", "65536", "+80", "-1", "٣", "source.ip", "source.namespace",
    "source.principal", "source.serviceAccount", "source.trustDomain", "destination.ip",
    "destination.port", "destination.labels[app]", "remote.ip", "request.headers[x]",
    "request.headers", "request.auth.claims[]", "experimental.envoy.filters.a[b]",
    "/a/{*}/b/{**}", "/a/{**}/{*}", "GET", "true", "false", "1", "yes", "app", "db",
]  # fmt: skip
API_VERSIONS = ["security.istio.io/v1", "security.istio.io/v1beta1", "slipstream.dev/v1alpha1"]
ANNOTATIONS = ["slipstream.dev/dry-run", "istio.io/dry-run"]
ROOTS = ("spec", "metadata", "apiVersion", "kind")
PEER_IPS = ["10.244.1.5", "10.0.0.9", "192.168.1.1", "::1", "2001:db8::5"]
PRINCIPALS = [None, "cluster.local/ns/shop/sa/web", "td/ns/a/sa/b", "odd", "a/ns//sa/"]

logging.disable(logging.CRITICAL)  # refusals are logged; here they are the point


def rarely(fdp: atheris.FuzzedDataProvider, odds: int) -> bool:
    """True about once in `odds + 1`; False once the bytes run out, so that short inputs
    build the common, well-formed shape."""
    return fdp.ConsumeIntInRange(0, odds) == odds


def text(fdp: atheris.FuzzedDataProvider) -> str:
    if rarely(fdp, 3):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    return STRINGS[fdp.ConsumeIntInRange(0, len(STRINGS) - 1)]


def key(fdp: atheris.FuzzedDataProvider) -> Any:
    """A mapping key: mostly the policy's own, sometimes any string, and sometimes a
    number, boolean or null (YAML keys need not be strings)."""
    if rarely(fdp, 9):
        return (None, True, 7, 2.5, -1)[fdp.ConsumeIntInRange(0, 4)]
    if rarely(fdp, 5):
        return text(fdp)
    return KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]


def value(fdp: atheris.FuzzedDataProvider, depth: int) -> Any:
    """Anything YAML or JSON could hold, nested up to a few levels."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 5 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**40), 2**40)
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else float("nan")
    if kind in (4, 5):
        return text(fdp)
    if kind in (6, 7):
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {key(fdp): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def strings(fdp: atheris.FuzzedDataProvider) -> Any:
    if rarely(fdp, 7):
        return value(fdp, 3)
    return [text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]


def fields(fdp: atheris.FuzzedDataProvider, names: list[str]) -> dict[str, Any]:
    return {
        names[fdp.ConsumeIntInRange(0, len(names) - 1)]: strings(fdp)
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def rule(fdp: atheris.FuzzedDataProvider) -> Any:
    """Mostly rule-shaped, sometimes anything at all."""
    if rarely(fdp, 9):
        return value(fdp, 2)
    out: dict[str, Any] = {}
    if fdp.ConsumeBool():
        out["from"] = [
            {"source": fields(fdp, KEYS[9:21])} for _ in range(fdp.ConsumeIntInRange(0, 2))
        ]
    if fdp.ConsumeBool():
        out["to"] = [
            {"operation": fields(fdp, KEYS[21:26])} for _ in range(fdp.ConsumeIntInRange(0, 2))
        ]
    if fdp.ConsumeBool():
        out["when"] = [
            {"key": text(fdp), **fields(fdp, ["values", "notValues"])}
            for _ in range(fdp.ConsumeIntInRange(0, 2))
        ]
    if rarely(fdp, 7):
        out[key(fdp)] = value(fdp, 2)
    return out


def document(fdp: atheris.FuzzedDataProvider) -> dict[str, Any]:
    spec: Any
    if rarely(fdp, 5):
        spec = value(fdp, 0)
    else:
        spec = {}
        if fdp.ConsumeBool():
            spec["action"] = (
                text(fdp)
                if rarely(fdp, 5)
                else ("ALLOW", "DENY", "AUDIT")[fdp.ConsumeIntInRange(0, 2)]
            )
        if fdp.ConsumeBool():
            spec["selector"] = (
                {"matchLabels": {key(fdp): text(fdp)}} if fdp.ConsumeBool() else value(fdp, 2)
            )
        if not rarely(fdp, 4):
            spec["rules"] = [rule(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        if rarely(fdp, 9):
            spec[key(fdp)] = value(fdp, 2)
    meta: Any = {"name": text(fdp) if rarely(fdp, 5) else "p"}
    if fdp.ConsumeBool():
        meta["namespace"] = text(fdp) if rarely(fdp, 3) else "shop"
    if fdp.ConsumeBool():
        meta["annotations"] = {
            ANNOTATIONS[fdp.ConsumeIntInRange(0, 1)]: text(fdp) for _ in range(2)
        }
    if rarely(fdp, 19):
        meta = value(fdp, 2)
    api = text(fdp) if rarely(fdp, 9) else API_VERSIONS[fdp.ConsumeIntInRange(0, 2)]
    return {"apiVersion": api, "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def target(policy: AuthorizationPolicy) -> Pod:
    """A workload in the policy's scope: its namespace, the labels its selector wants."""
    meta = Meta.model_construct(
        name="dst",
        namespace=policy.meta.namespace or "anywhere",
        labels=dict(policy.selector or {}),
        annotations={},
    )
    spec = PodSpec.model_construct(node_name="n1", service_account="default", containers=())
    status = PodStatus.model_validate({"podIP": "10.244.2.9", "phase": "Running"})
    return Pod("v1", "Pod", meta, {}, spec, status)


def decide_all(policy: AuthorizationPolicy, fdp: atheris.FuzzedDataProvider) -> list[bool]:
    pod = target(policy)
    snap = Snapshot.build(1, {policy.key: policy, pod.key: pod})
    authz = Authorizer()
    out = []
    for ip in PEER_IPS:
        principal = PRINCIPALS[fdp.ConsumeIntInRange(0, len(PRINCIPALS) - 1)]
        if rarely(fdp, 4):
            principal = text(fdp)
        peer = PolicyPeer(ip, principal, pod.ip, fdp.ConsumeIntInRange(0, 65535))
        d = authz.decide(snap, pod, peer)
        json.dumps(d.as_dict())
        out.append(d.allow)
        if policy.fail_closed and not policy.dry_run:
            assert not d.allow and d.policy == policy.ref, d
            assert d.reason.startswith(f"denied: policy {policy.ref} is invalid: "), d.reason
    json.dumps(authz.status(snap), default=str)
    return out


GOOD = parse_object(
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]},
    }
)


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    body = document(fdp)
    try:
        obj = parse_object(body)
    except FieldError as exc:
        assert exc.field.split(".")[0].split("[")[0] in ROOTS, (exc.field, exc.reason)
        assert exc.reason, exc
        stand_in = refused_version(body, exc, None, "fuzz:1")
        assert isinstance(stand_in, AuthorizationPolicy) and stand_in.fail_closed
        assert stand_in.refused is not None and stand_in.refused.field == exc.field
        decide_all(stand_in, fdp)
        kept = refused_version(body, exc, GOOD, "fuzz:1")
        assert isinstance(kept, AuthorizationPolicy) and kept.rules == GOOD.rules  # type: ignore[attr-defined]
        assert not kept.fail_closed and kept.refused is not None
        return
    assert isinstance(obj, AuthorizationPolicy), obj
    decide_all(obj, fdp)


SEEDS = [
    b"",
    b"\x01" * 64,
    bytes(range(256)),
    b"\x05\x03\x02\x01\x00\x07" * 20,
]

if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
    sys.exit(0)
