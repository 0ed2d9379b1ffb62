"""AuthorizationPolicy: every field and not-form, actions, order, scope, L7 fields, dry run."""

from __future__ import annotations

import logging

import pytest

from agent.common.errors import FieldError, SlipstreamError
from agent.policy.authz import Authorizer, PolicyPeer
from agent.state import Snapshot, parse_object
from agent.state.authz import AuthorizationPolicy
from agent.state.objects import Pod
from agent.tools.policy_check import check, read_objects

TD = "cluster.local"
WEB = f"{TD}/ns/shop/sa/web"
API = f"{TD}/ns/shop/sa/api"
EVIL = f"{TD}/ns/evil/sa/web"


def pod(name: str = "db", ns: str = "shop", labels: dict | None = None) -> Pod:
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
            "spec": {"containers": [{"name": "c", "command": ["x"]}]},
            "status": {"podIP": "10.244.2.9", "phase": "Running"},
        }
    )
    assert isinstance(obj, Pod)
    return obj


def policy(
    rules: list | None = None,
    *,
    action: str = "ALLOW",
    name: str = "p",
    ns: str = "shop",
    selector: dict | None = None,
    dry_run: bool = False,
) -> AuthorizationPolicy:
    spec: dict = {"action": action}
    if rules is not None:
        spec["rules"] = rules
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    meta: dict = {"name": name, "namespace": ns}
    if dry_run:
        meta["annotations"] = {"slipstream.dev/dry-run": "true"}
    obj = parse_object(
        {
            "apiVersion": "slipstream.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": meta,
            "spec": spec,
        }
    )
    assert isinstance(obj, AuthorizationPolicy)
    return obj


def decide(policies, principal=WEB, src="10.244.1.5", port=5432, dst=None, root=None):
    target = dst or pod()
    snap = Snapshot.build(1, {p.key: p for p in [*policies, target]})
    authz = Authorizer(root) if root else Authorizer()
    return authz.decide(snap, target, PolicyPeer(src, principal, "10.244.2.9", port))


def source(**fields) -> list:
    return [{"from": [{"source": fields}]}]


# Each case: one ALLOW rule, then peers (principal, source ip, port) and whether each gets in.
FIELD_CASES = [
    ("principal exact", source(principals=[WEB]), [(WEB, 1), (API, 0), (None, 0)]),
    (
        "principal prefix",
        source(principals=[f"{TD}/ns/shop/*"]),
        [(WEB, 1), (API, 1), (EVIL, 0), (None, 0)],
    ),
    ("principal suffix", source(principals=["*/sa/web"]), [(WEB, 1), (EVIL, 1), (API, 0)]),
    ("principal any", source(principals=["*"]), [(WEB, 1), (EVIL, 1), (None, 0)]),
    ("notPrincipals", source(notPrincipals=[WEB]), [(API, 1), (WEB, 0), (None, 0)]),
    ("namespaces", source(namespaces=["shop"]), [(WEB, 1), (EVIL, 0), (None, 0)]),
    ("namespace prefix", source(namespaces=["sh*"]), [(WEB, 1), (EVIL, 0)]),
    ("notNamespaces", source(notNamespaces=["evil"]), [(WEB, 1), (EVIL, 0), (None, 0)]),
    ("ipBlocks", source(ipBlocks=["10.244.1.0/24"]), [(WEB, 1), (None, 1)]),
    ("ipBlocks miss", source(ipBlocks=["10.244.3.0/24"]), [(WEB, 0), (None, 0)]),
    ("ipBlocks single address", source(ipBlocks=["10.244.1.5"]), [(WEB, 1)]),
    ("notIpBlocks", source(notIpBlocks=["10.244.1.0/24"]), [(WEB, 0), (None, 0)]),
    ("notIpBlocks miss", source(notIpBlocks=["10.0.0.0/16"]), [(WEB, 1), (None, 1)]),
    ("ports", [{"to": [{"operation": {"ports": ["5432"]}}]}], [(WEB, 1), (None, 1)]),
    ("ports miss", [{"to": [{"operation": {"ports": [80, "8080"]}}]}], [(WEB, 0)]),
    ("notPorts", [{"to": [{"operation": {"notPorts": [5432]}}]}], [(WEB, 0)]),
    ("notPorts miss", [{"to": [{"operation": {"notPorts": [22]}}]}], [(WEB, 1)]),
]

WHEN_CASES = [
    ({"key": "source.ip", "values": ["10.244.1.0/24"]}, [(WEB, 1), (None, 1)]),
    ({"key": "source.ip", "notValues": ["10.244.1.5"]}, [(WEB, 0)]),
    ({"key": "source.namespace", "values": ["shop"]}, [(WEB, 1), (EVIL, 0), (None, 0)]),
    ({"key": "source.namespace", "notValues": ["evil"]}, [(WEB, 1), (EVIL, 0), (None, 0)]),
    ({"key": "source.principal", "values": [WEB]}, [(WEB, 1), (API, 0), (None, 0)]),
    ({"key": "source.principal", "notValues": ["*/sa/web"]}, [(API, 1), (WEB, 0)]),
    ({"key": "destination.ip", "values": ["10.244.2.0/24"]}, [(WEB, 1)]),
    ({"key": "destination.ip", "notValues": ["10.244.2.9"]}, [(WEB, 0)]),
    ({"key": "destination.port", "values": ["5432"]}, [(WEB, 1)]),
    ({"key": "destination.port", "notValues": ["5432"]}, [(WEB, 0)]),
]


@pytest.mark.parametrize(
    ("rules", "peers"), [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES]
)
def test_each_field_and_its_not_form(rules, peers):
    for principal, allowed in peers:
        d = decide([policy(rules)], principal)
        assert d.allow is bool(allowed), (principal, d.reason)
        if allowed:
            assert (d.policy, d.rule) == ("shop/p", 0)


@pytest.mark.parametrize(
    ("cond", "peers"), WHEN_CASES, ids=[c[0]["key"] + str(i) for i, c in enumerate(WHEN_CASES)]
)
def test_when_conditions(cond, peers):
    for principal, allowed in peers:
        assert decide([policy([{"when": [cond]}])], principal).allow is bool(allowed), principal


def test_within_a_rule_everything_must_match_and_rules_are_alternatives():
    both = [{"from": [{"source": {"principals": [WEB]}}], "to": [{"operation": {"ports": [5432]}}]}]
    assert decide([policy(both)], WEB, port=5432).allow
    assert not decide([policy(both)], WEB, port=8080).allow
    assert not decide([policy(both)], API, port=5432).allow
    either = [{"from": [{"source": {"principals": [WEB]}}, {"source": {"principals": [API]}}]}]
    assert decide([policy(either)], API).allow
    two_rules = [*source(principals=[WEB]), *source(ipBlocks=["10.9.0.0/16"])]
    d = decide([policy(two_rules)], API, src="10.9.1.1")
    assert d.allow and d.rule == 1


def test_evaluation_order():
    allow_web = policy(source(principals=[WEB]), name="allow-web")
    deny_web = policy(source(principals=[WEB]), action="DENY", name="deny-web")
    deny_other = policy(source(principals=[EVIL]), action="DENY", name="deny-evil")
    d = decide([])
    assert d.allow and d.policy is None and "no ALLOW policy" in d.reason
    d = decide([allow_web, deny_web])
    assert not d.allow and d.policy == "shop/deny-web", "a matching DENY beats a matching ALLOW"
    assert decide([deny_other]).allow, "no DENY matches and no ALLOW applies"
    d = decide([allow_web, deny_other], API)
    assert not d.allow and "shop/allow-web" in d.reason, "ALLOW applies but matches nothing"
    assert decide([allow_web, deny_other], WEB).policy == "shop/allow-web"


def test_empty_rules():
    assert not decide([policy(None)]).allow, "ALLOW without rules: allow nothing"
    assert not decide([policy([])]).allow
    assert decide([policy([{}])]).allow, "one empty rule: allow everything"
    assert not decide([policy([{}], action="DENY")]).allow
    assert decide([policy(None, action="AUDIT")]).allow
    for rules in (None, []):
        # Istio's validation refuses a DENY without rules (it would never match).
        with pytest.raises(FieldError) as exc:
            policy(rules, action="DENY")
        assert exc.value.field == "spec.rules" and "rules: [{}]" in exc.value.reason


def test_audit_reports_and_decides_nothing():
    audit = policy(source(principals=[WEB]), action="AUDIT", name="watch")
    d = decide([audit], WEB)
    assert d.allow and d.audit == ("shop/watch[0]",)
    assert decide([audit], API).audit == ()


def test_plaintext_and_not_forms_depend_on_the_action():
    # DENY: "all but shop" also denies a source with no identity.
    deny = policy(source(notNamespaces=["shop"]), action="DENY")
    assert not decide([deny], None).allow
    assert decide([deny], WEB).allow
    # ALLOW: a rule about identity never lets plaintext in.
    allow = policy(source(notNamespaces=["evil"]))
    assert not decide([allow], None).allow
    deny_positive = policy(source(namespaces=["evil"]), action="DENY")
    assert decide([deny_positive], None).allow, "a positive condition cannot match plaintext"


def test_scope_root_namespace_namespace_and_selector():
    mesh_wide = policy(None, ns="slipstream-system", name="deny-all")
    assert not decide([mesh_wide], dst=pod(ns="other")).allow
    root_selected = policy(None, ns="slipstream-system", selector={"app": "db"})
    assert not decide([root_selected], dst=pod(ns="other")).allow
    assert decide([root_selected], dst=pod("web", ns="other")).allow
    other_ns = policy(None, ns="billing")
    assert decide([other_ns]).allow, "a namespace's policy stays in its namespace"
    selected = policy(None, selector={"app": "db"})
    assert not decide([selected]).allow
    assert decide([selected], dst=pod("cache")).allow
    custom_root = policy(None, ns="mesh-root")
    assert decide([custom_root], dst=pod(ns="other")).allow
    assert not decide([custom_root], dst=pod(ns="other"), root="mesh-root").allow


def test_http_fields_in_allow_match_nothing_and_in_deny_are_dropped(caplog):
    caplog.set_level(logging.WARNING, logger="agent.policy")
    allow = policy(
        [
            {
                "from": [{"source": {"principals": [WEB]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            },
            {"from": [{"source": {"principals": [API]}}]},
        ],
        name="allow-get",
    )
    assert not decide([allow], WEB).allow, "the rule with methods matches nothing"
    assert decide([allow], API).allow, "the policy's other rules still apply"
    deny = policy(
        [
            {
                "from": [{"source": {"principals": [WEB]}}],
                "to": [{"operation": {"paths": ["/admin"]}}],
            }
        ],
        action="DENY",
        name="deny-admin",
    )
    assert not decide([deny], WEB).allow, "DENY without its path: denies all of web"
    assert decide([deny], API).allow
    deny_l7_only = policy(source(requestPrincipals=["*"]), action="DENY", name="deny-jwt")
    assert not decide([deny_l7_only], API).allow, "nothing left but an empty source: deny all"
    when_l7 = policy([{"when": [{"key": "request.headers[x-id]", "values": ["1"]}]}])
    assert not decide([when_l7], WEB).allow
    warned = {
        r.__dict__["policy"]: r.__dict__["fields"] for r in caplog.records if "fields" in r.__dict__
    }
    assert warned["shop/allow-get"] == ["spec.rules[0].to[0].operation.methods"]
    assert warned["shop/deny-admin"] == ["spec.rules[0].to[0].operation.paths"]
    authz = Authorizer()
    snap = Snapshot.build(1, {p.key: p for p in (allow, deny)})
    status = {s["name"]: s for s in authz.status(snap)}
    assert "matches nothing" in status["shop/allow-get"]["warnings"][0]
    assert "the rest of the rule applies" in status["shop/deny-admin"]["warnings"][0]


def test_dry_run_reports_and_changes_nothing():
    trial = policy(source(principals=[WEB]), action="DENY", name="trial", dry_run=True)
    d = decide([trial], WEB)
    assert d.allow and d.policy is None
    assert d.dry_run is not None and not d.dry_run.allow and d.dry_run.policy == "shop/trial"
    assert d.as_dict()["dryRun"]["decision"] == "deny"
    allow = policy(source(principals=[API]), name="allow-api")
    d = decide([allow, trial], API)
    assert d.allow and d.dry_run is not None and d.dry_run.allow
    assert decide([allow]).dry_run is None


def test_the_first_matching_rule_in_order_is_reported():
    # allow-a's rule is generic (ipBlocks), allow-b's is indexed by principal: order still wins.
    a = policy(source(ipBlocks=["10.0.0.0/8"]), name="allow-a")
    b = policy(source(principals=[WEB]), name="allow-b")
    assert decide([a, b], WEB).policy == "shop/allow-a"
    assert decide([b], WEB).policy == "shop/allow-b"
    first = policy(source(principals=[WEB]), name="allow-0")
    assert decide([first, a], WEB).policy == "shop/allow-0", "policies go by namespace/name"


def test_policies_are_recompiled_only_when_they_change():
    authz = Authorizer()
    target = pod()
    deny = policy(None, action="ALLOW")
    snap1 = Snapshot.build(1, {deny.key: deny, target.key: target})
    assert not authz.decide(snap1, target, PolicyPeer("10.244.1.5", WEB, "10.244.2.9", 1)).allow
    generation = authz.generation
    snap2 = Snapshot.build(2, {deny.key: deny, target.key: target})
    authz.refresh(snap2)
    assert authz.generation == generation, "same policies: nothing recompiled"
    snap3 = Snapshot.build(3, {target.key: target})
    assert authz.refresh(snap3) and authz.generation == generation + 1
    assert authz.decide(snap3, target, PolicyPeer("10.244.1.5", WEB, "10.244.2.9", 1)).allow


def rule_with(**parts) -> dict:
    return {"rules": [parts]}


def op(**fields) -> dict:
    return rule_with(to=[{"operation": fields}])


def cond(**fields) -> dict:
    return rule_with(when=[fields])


# What Istio refuses (pkg/config/validation ValidateAuthorizationPolicy, pkg/config/security,
# the CRD's limits), and our few deliberate refusals; each names its field.
BAD = [
    ({"action": "REJECT"}, "spec.action", "'REJECT' is not one of ALLOW, DENY, AUDIT"),
    ({"action": "CUSTOM", "provider": {"name": "x"}}, "spec.action", "CUSTOM"),
    ({"provider": {"name": "x"}}, "spec.provider", "only for action CUSTOM"),
    ({"targetRefs": [{"kind": "Gateway", "name": "w"}]}, "spec.targetRefs", "waypoint"),
    ({"targetRef": {"kind": "Service", "name": "w"}}, "spec.targetRef", "waypoint"),
    ({"action": "DENY"}, "spec.rules", "DENY policy without rules"),
    ({"action": "DENY", "rules": []}, "spec.rules", "DENY policy without rules"),
    ({"rules": [{}] * 513}, "spec.rules", "more than 512"),
    ({"rules": [None]}, "spec.rules[0]", "must be a mapping"),
    # Empty lists: refused where they would widen a rule.
    (rule_with(**{"from": []}), "spec.rules[0].from", "must not be empty"),
    (rule_with(to=[]), "spec.rules[0].to", "must not be empty"),
    (rule_with(**{"from": [{}]}), "spec.rules[0].from[0].source", "is empty"),
    (rule_with(**{"from": [{"source": None}]}), "spec.rules[0].from[0].source", "is empty"),
    (rule_with(**{"from": [None]}), "spec.rules[0].from[0]", "must be a mapping"),
    (
        {"rules": source(principals=[])},
        "spec.rules[0].from[0].source.principals",
        "is empty",
    ),
    ({"rules": source(namespaces=[])}, "spec.rules[0].from[0].source.namespaces", "is empty"),
    (
        {"rules": source(ipBlocks=[], notIpBlocks=[])},
        "spec.rules[0].from[0].source.ipBlocks",
        "is empty",
    ),
    ({"rules": source(notPrincipals=[])}, "spec.rules[0].from[0].source.notPrincipals", "is empty"),
    (
        {"rules": source(serviceAccounts=[])},
        "spec.rules[0].from[0].source.serviceAccounts",
        "is empty",
    ),
    (
        {"rules": source(requestPrincipals=[])},
        "spec.rules[0].from[0].source.requestPrincipals",
        "is empty",
    ),
    (op(ports=[]), "spec.rules[0].to[0].operation.ports", "is empty"),
    (op(notPorts=[], methods=[]), "spec.rules[0].to[0].operation.notPorts", "is empty"),
    (op(), "spec.rules[0].to[0].operation", "is empty"),
    (cond(key="source.ip", values=[]), "spec.rules[0].when[0].values", "needs values or notValues"),
    (cond(key="source.ip", notValues=[]), "spec.rules[0].when[0].notValues", "needs values"),
    (
        cond(key="source.ip", values=[], notValues=[]),
        "spec.rules[0].when[0].values",
        "needs values",
    ),
    ({"rules": [{"when": [{"key": "source.ip"}]}]}, "spec.rules[0].when[0]", "needs values"),
    # Values.
    (
        {"rules": source(ipBlocks=["10.0.0.300/24"])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "is not an IP address or CIDR block",
    ),
    (
        {"rules": source(ipBlocks=["10.0.0.0/33"])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "is not an IP address",
    ),
    (
        {"rules": source(ipBlocks=["10.0.0.0/024"])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "is not an IP address",
    ),
    (
        {"rules": source(ipBlocks=["10.0.0.0/255.0.0.0"])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "is not an IP address",
    ),
    (
        {"rules": source(ipBlocks=["fe80::1%eth0/64"])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "is not an IP address",
    ),
    (
        {"rules": source(ipBlocks=[""])},
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "must not be empty",
    ),
    (
        {"rules": source(remoteIpBlocks=["nope"])},
        "spec.rules[0].from[0].source.remoteIpBlocks[0]",
        "is not an IP address",
    ),
    (op(ports=[70000]), "spec.rules[0].to[0].operation.ports[0]", "70000 is not a port number"),
    (op(ports=["http"]), "spec.rules[0].to[0].operation.ports[0]", "'http' is not a port number"),
    (op(ports=["+80"]), "spec.rules[0].to[0].operation.ports[0]", "'+80' is not a port number"),
    (op(ports=["-1"]), "spec.rules[0].to[0].operation.ports[0]", "is not a port number"),
    (op(notPorts=[True]), "spec.rules[0].to[0].operation.notPorts[0]", "is not a port number"),
    (op(methods=[""]), "spec.rules[0].to[0].operation.methods[0]", "must not be empty"),
    (
        op(paths=["/a/{**}/b/{*}"]),
        "spec.rules[0].to[0].operation.paths[0]",
        "{**} must be the last",
    ),
    (op(paths=["/a/{x}"]), "spec.rules[0].to[0].operation.paths[0]", "outside a template"),
    ({"rules": source(principal=[WEB])}, "spec.rules[0].from[0].source.principal", "unknown field"),
    ({"rulez": []}, "spec.rulez", "unknown field"),
    # YAML keys need not be strings: found by fuzzing, they crashed the parser (TypeError).
    ({1: "x", "z": "y", "rules": [{}]}, "spec.1", "unknown field"),
    ({None: "x", "other": 1, "action": "ALLOW"}, "spec.None", "unknown field"),
    (
        {"rules": [{True: [], "x": [], "from": [{"source": {"namespaces": ["a"]}}]}]},
        "spec.rules[0].True",
        "unknown field",
    ),
    (
        {"rules": [{"from": [{"source": {"namespaces": ["a"], 2.5: [], "b": 1}}]}]},
        "spec.rules[0].from[0].source.2.5",
        "unknown field",
    ),
    (
        {"rules": source(principals=[f"spiffe://{WEB}"])},
        "spec.rules[0].from[0].source.principals[0]",
        "without spiffe://",
    ),
    (
        {"rules": source(principals=["cluster.local/*/sa/web"])},
        "spec.rules[0].from[0].source.principals[0]",
        "wildcard may only stand at one end",
    ),
    (
        {"rules": source(namespaces=["**"])},
        "spec.rules[0].from[0].source.namespaces[0]",
        "wildcard",
    ),
    # serviceAccounts: Istio's CheckServiceAccount and the rule that excludes principals.
    (
        {"rules": source(serviceAccounts=["web"], principals=[WEB])},
        "spec.rules[0].from[0].source.serviceAccounts",
        "cannot be set with principals",
    ),
    (
        {"rules": source(notServiceAccounts=["web"], namespaces=["shop"])},
        "spec.rules[0].from[0].source.notServiceAccounts",
        "cannot be set with namespaces",
    ),
    (
        {"rules": source(serviceAccounts=["web*"])},
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "no wildcard",
    ),
    (
        {"rules": source(serviceAccounts=["a/b/c"])},
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "is not SERVICEACCOUNT",
    ),
    (
        {"rules": source(serviceAccounts=["/web"])},
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "is not SERVICEACCOUNT",
    ),
    (
        {"rules": source(serviceAccounts=["shop/"])},
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "is not SERVICEACCOUNT",
    ),
    (
        {"rules": source(serviceAccounts=["x" * 321])},
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "longer than 320",
    ),
    (
        {"rules": source(serviceAccounts=[f"s{i}" for i in range(17)])},
        "spec.rules[0].from[0].source.serviceAccounts",
        "more than 16",
    ),
    (
        {"rules": source(trustDomains=["a/b"])},
        "spec.rules[0].from[0].source.trustDomains[0]",
        "has no '/'",
    ),
    (
        {"rules": source(trustDomains=["a*b"])},
        "spec.rules[0].from[0].source.trustDomains[0]",
        "wildcard",
    ),
    # Condition keys.
    (
        cond(key="source.user", values=["x"]),
        "spec.rules[0].when[0].key",
        "'source.user' is not a condition key",
    ),
    (cond(key="remote.port", values=["1"]), "spec.rules[0].when[0].key", "is not a condition key"),
    (cond(key="", values=["x"]), "spec.rules[0].when[0].key", "must not be empty"),
    (
        cond(key="destination.namespace", values=["x"]),
        "spec.rules[0].when[0].key",
        "metadata.namespace",
    ),
    (
        cond(key="destination.labels[app]", values=["x"]),
        "spec.rules[0].when[0].key",
        "the selector",
    ),
    (cond(key="destination.user", values=["x"]), "spec.rules[0].when[0].key", "v1alpha1"),
    (
        cond(key="request.headers", values=["x"]),
        "spec.rules[0].when[0].key",
        "request.headers[x-user]",
    ),
    (cond(key="request.auth.claims[]", values=["x"]), "spec.rules[0].when[0].key", "must name"),
    (
        cond(key="destination.port", values=["99999"]),
        "spec.rules[0].when[0].values[0]",
        "not a port number",
    ),
    (
        cond(key="source.serviceAccount", values=["a/*"]),
        "spec.rules[0].when[0].values[0]",
        "no wildcard",
    ),
    (cond(key="remote.ip", notValues=["1.2.3"]), "spec.rules[0].when[0].notValues[0]", "not an IP"),
]


@pytest.mark.parametrize(
    ("spec", "field", "reason"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD]
)
def test_invalid_policies_name_the_field(spec, field, reason):
    with pytest.raises(FieldError) as exc:
        parse_object(
            {
                "apiVersion": "slipstream.dev/v1alpha1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "bad", "namespace": "shop"},
                "spec": spec,
            }
        )
    assert exc.value.field == field and reason in exc.value.reason, str(exc.value)


def test_bad_dry_run_annotation_and_unknown_api_version():
    body = {
        "apiVersion": "slipstream.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "annotations": {"slipstream.dev/dry-run": "yes"}},
    }
    with pytest.raises(FieldError) as exc:
        parse_object(body)
    assert exc.value.field == "metadata.annotations.slipstream.dev/dry-run"
    with pytest.raises(FieldError) as exc:
        parse_object({**body, "apiVersion": "slipstream.dev/v1", "metadata": {"name": "p"}})
    assert exc.value.field == "apiVersion"
    istio = parse_object({**body, "apiVersion": "security.istio.io/v1", "metadata": {"name": "p"}})
    assert isinstance(istio, AuthorizationPolicy), "Istio's own manifests are read as they are"


# ---------------------------------------------------------------- slipstream policy check


WEB_AND_DB = """
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec: {serviceAccountName: web, containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, command: [x]}]}
status: {podIP: 10.244.2.9}
"""

CHECK_OBJECTS = (
    WEB_AND_DB
    + """---
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
    to: [{operation: {ports: ["5432"]}}]
---
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {action: MAYBE, selector: {matchLabels: {app: cache}}}
"""
)


def test_policy_check_names_the_deciding_policy_and_rule(tmp_path):
    (tmp_path / "objects.yaml").write_text(CHECK_OBJECTS)
    objects, rejected = read_objects([str(tmp_path)])
    assert len(rejected) == 1 and "spec.action" in rejected[0] and "broken" in rejected[0]
    r = check(objects, "shop/web-1", "shop/db:5432", rejected=rejected)
    assert r.decision.allow and (r.decision.policy, r.decision.rule) == ("shop/db-from-web", 0)
    assert (r.principal, r.source_ip) == ("cluster.local/ns/shop/sa/web", "10.244.1.7")
    assert r.applicable == ["shop/db-from-web (ALLOW)"]
    assert "ALLOW  shop/web-1" in r.text() and "refused: " in r.text()
    assert not check(objects, "shop/web-1", "shop/db:22").decision.allow
    as_sa = check(objects, "shop/web", "shop/db:5432")
    assert as_sa.decision.allow and as_sa.source_ip == "0.0.0.0", "a service account, no pod"
    plain = check(objects, "shop/web-1", "shop/db:5432", plaintext=True)
    assert not plain.decision.allow and plain.principal is None
    assert plain.as_dict()["decision"] == "deny"


@pytest.mark.parametrize(
    ("source", "dest", "message"),
    [
        ("shop/web-1", "shop/nope:80", "no pod shop/nope"),
        ("shop/web-1", "shop/db", "expected NAMESPACE/POD:PORT"),
        ("shop/web-1", "shop/db:99999", "expected NAMESPACE/POD:PORT"),
        ("web-1", "shop/db:80", "--from 'web-1': expected NAMESPACE/NAME"),
    ],
)
def test_policy_check_explains_bad_questions(tmp_path, source, dest, message):
    (tmp_path / "objects.yaml").write_text(CHECK_OBJECTS)
    objects, _ = read_objects([str(tmp_path)])
    with pytest.raises(SlipstreamError) as exc:
        check(objects, source, dest)
    assert message in str(exc.value)


# What Istio accepts is accepted (each would be refused, and so fail closed, if it were not).
GOOD = [
    ("serviceAccounts", {"rules": source(serviceAccounts=["web", "billing/api"])}),
    ("notServiceAccounts", {"rules": source(notServiceAccounts=["web"], ipBlocks=["10.0.0.0/8"])}),
    ("trustDomains", {"rules": source(trustDomains=["cluster.local", "*.example.org", "*"])}),
    ("host bits", {"rules": source(ipBlocks=["10.0.0.7/24"], notIpBlocks=["10.9.9.9/8"])}),
    ("IPv6", {"rules": source(ipBlocks=["2001:db8::1/32", "fe80::1%eth0"])}),
    ("port 0 and numbers", {"rules": [{"to": [{"operation": {"ports": ["0", 80, "00443"]}}]}]}),
    ("an empty list beside a value", {"rules": source(principals=[], namespaces=["shop"])}),
    (
        "values empty, notValues not",
        {"rules": [{"when": [{"key": "source.ip", "values": [], "notValues": ["10.0.0.1"]}]}]},
    ),
    ("empty when", {"rules": [{"from": [{"source": {"namespaces": ["a"]}}], "when": []}]}),
    (
        "HTTP-only operation",
        {"rules": [{"to": [{"operation": {"ports": [], "methods": ["GET"]}}]}]},
    ),
    ("path templates", {"rules": [{"to": [{"operation": {"paths": ["/a/{*}/b/{**}"]}}]}]}),
    ("request.headers", {"rules": [{"when": [{"key": "request.headers[x-id]", "values": ["1"]}]}]}),
    (
        "experimental",
        {"rules": [{"when": [{"key": "experimental.envoy.filters.a.b[c]", "values": ["1"]}]}]},
    ),
    ("remote.ip", {"rules": [{"when": [{"key": "remote.ip", "values": ["10.0.0.0/8"]}]}]}),
    (
        "source.serviceAccount",
        {"rules": [{"when": [{"key": "source.serviceAccount", "values": ["web", "a/b"]}]}]},
    ),
    (
        "source.trustDomain",
        {"rules": [{"when": [{"key": "source.trustDomain", "notValues": ["td*"]}]}]},
    ),
    ("AUDIT without rules", {"action": "AUDIT"}),
    ("an empty selector", {"selector": {"matchLabels": {}}, "rules": [{}]}),
    ("DENY with one empty rule", {"action": "DENY", "rules": [{}]}),
    ("512 rules", {"rules": [{}] * 512}),
]


@pytest.mark.parametrize("spec", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_what_istio_accepts_is_accepted(spec):
    for api in ("security.istio.io/v1", "security.istio.io/v1beta1", "slipstream.dev/v1alpha1"):
        body = {
            "apiVersion": api,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p"},
            "spec": spec,
        }
        assert isinstance(parse_object(body), AuthorizationPolicy)


def test_service_accounts_host_bits_and_their_warnings():
    p = policy(source(serviceAccounts=["web", "billing/api"]), ns="shop")
    assert p.rules[0].sources[0].service_accounts == (("shop", "web"), ("billing", "api"))
    assert decide([p], WEB).allow and decide([p], f"{TD}/ns/billing/sa/api").allow
    assert decide([p], "other.td/ns/shop/sa/web").allow, "any trust domain, as in Istio"
    assert not decide([p], API).allow and not decide([p], None).allow
    masked = policy(source(ipBlocks=["10.244.1.77/24"]))
    assert str(masked.rules[0].sources[0].ip_blocks[0]) == "10.244.1.0/24"
    assert masked.warnings == (
        "spec.rules[0].from[0].source.ipBlocks[0]: '10.244.1.77/24' has host bits set:"
        " read as 10.244.1.0/24",
    )
    assert decide([masked], WEB, src="10.244.1.200").allow
    assert not decide([masked], WEB, src="10.244.2.1").allow
    status = Authorizer().status(Snapshot.build(1, {masked.key: masked}))
    assert "host bits" in status[0]["warnings"][0]


def _annotated(annotations: dict) -> AuthorizationPolicy:
    obj = parse_object(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "trial", "namespace": "shop", "annotations": annotations},
            "spec": {"action": "DENY", "rules": [{}]},
        }
    )
    assert isinstance(obj, AuthorizationPolicy)
    return obj


@pytest.mark.parametrize(
    ("annotations", "dry"),
    [
        ({"istio.io/dry-run": "true"}, True),
        ({"istio.io/dry-run": "True"}, True),
        ({"istio.io/dry-run": "1"}, True),
        ({"istio.io/dry-run": "t"}, True),
        ({"istio.io/dry-run": "false"}, False),
        ({"istio.io/dry-run": "0"}, False),
        ({"istio.io/dry-run": ""}, False),
        ({"istio.io/dry-run": "yes"}, False),  # not a boolean to Istio: enforced, with a warning
        ({"slipstream.dev/dry-run": "true"}, True),
        ({"slipstream.dev/dry-run": "true", "istio.io/dry-run": "1"}, True),
        ({"slipstream.dev/dry-run": "false", "istio.io/dry-run": "false"}, False),
    ],
)
def test_dry_run_annotations(annotations, dry):
    p = _annotated(annotations)
    assert p.dry_run is dry
    d = decide([p], WEB)
    assert d.allow is dry, "a dry-run DENY decides nothing; an enforced one denies"
    if dry:
        assert d.dry_run is not None and not d.dry_run.allow
    assert bool(p.warnings) is (annotations.get("istio.io/dry-run") == "yes")


def test_dry_run_annotations_that_disagree_are_refused():
    with pytest.raises(FieldError) as exc:
        _annotated({"slipstream.dev/dry-run": "true", "istio.io/dry-run": "false"})
    assert exc.value.field == "metadata.annotations" and "disagree" in exc.value.reason


SAME_NAME_IN_BOTH_GROUPS = (
    WEB_AND_DB
    + """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
---
apiVersion: slipstream.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
"""
)


@pytest.mark.parametrize("order", ["istio first", "ours first"])
def test_istios_policy_and_ours_of_the_same_name_are_both_enforced(tmp_path, order):
    """To the API server they are two objects; neither may hide the other (a DENY hidden by
    an ALLOW of the same name would open what it closes)."""
    docs = SAME_NAME_IN_BOTH_GROUPS.split("---\n")
    if order == "ours first":
        docs[2], docs[3] = docs[3], docs[2]
    (tmp_path / "objects.yaml").write_text("---\n".join(docs))
    objects, rejected = read_objects([str(tmp_path)])
    assert rejected == []
    keys = {str(o.key) for o in objects if o.kind == "AuthorizationPolicy"}
    assert keys == {
        "AuthorizationPolicy shop/db",
        "AuthorizationPolicy.slipstream.dev shop/db",
    }
    r = check(objects, "shop/web-1", "shop/db:5432")
    assert not r.decision.allow and "DENY" in r.decision.reason, r.text()
