"""A policy that does not validate never opens access: new ones fail closed in their scope,
invalid updates keep the last good version, and both are reported (status, log, store).

Objects go through `ManifestSet`, as the file source and `slipstream policy check` read them,
then the agents' own `Authorizer`.
"""

from __future__ import annotations

import json
import logging

import pytest

from agent.common.manifest import load_text
from agent.policy.authz import Authorizer, Decision, PolicyPeer
from agent.policy.peerauth import PERMISSIVE, STRICT, mode_for
from agent.sources.manifest_set import ManifestSet
from agent.state import Snapshot
from agent.state.authz import AuthorizationPolicy
from agent.state.dump import snapshot_json
from agent.state.objects import ObjectKey, PeerAuthentication, Pod

TD = "cluster.local"
WEB = f"{TD}/ns/shop/sa/web"
API = f"{TD}/ns/shop/sa/api"


def pod(name: str, ns: str, labels: str, ip: str) -> str:
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n"
        f"spec: {{containers: [{{name: c, command: [x]}}]}}\nstatus: {{podIP: {ip}}}\n"
    )


PODS = "---\n".join(
    [
        pod("db", "shop", "{app: db}", "10.244.2.9"),
        pod("cache", "shop", "{app: cache}", "10.244.2.10"),
        pod("ledger", "billing", "{app: db}", "10.244.2.11"),
    ]
)


def ap(spec: str, name: str = "p", ns: str = "shop", meta: str = "") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}{meta}}}\nspec: {spec}\n"
    )


GOOD = "{selector: {matchLabels: {app: db}}, rules: [{from: [{source: {principals: [WEB]}}]}]}"
GOOD = GOOD.replace("WEB", WEB)
"""db lets web in, and only web."""


class Agent:
    """What an agent holds: a file source's view of a directory, and its Authorizer."""

    def __init__(self) -> None:
        self.files = ManifestSet()
        self.files.update_file("pods.yaml", load_text(PODS, "pods.yaml"))
        self.authz = Authorizer()
        self.version = 0

    def write(self, name: str, text: str) -> None:
        self.files.update_file(name, load_text(text, name))

    def remove(self, name: str) -> None:
        self.files.remove_file(name)

    def snapshot(self) -> Snapshot:
        self.version += 1
        return Snapshot.build(self.version, {o.key: o for o in self.files.all_objects()})

    def decide(self, dst: str, principal: str | None = WEB, port: int = 5432) -> Decision:
        snap = self.snapshot()
        target = next(p for p in snap.pods() if f"{p.meta.namespace}/{p.meta.name}" == dst)
        return self.authz.decide(snap, target, PolicyPeer("10.244.1.5", principal, target.ip, port))

    def policy(self, ref: str) -> AuthorizationPolicy:
        ns, name = ref.split("/")
        obj = self.snapshot().get(ObjectKey("AuthorizationPolicy", ns, name))
        assert isinstance(obj, AuthorizationPolicy)
        return obj

    def status(self) -> dict[str, dict]:
        return {e["name"]: e for e in self.authz.status(self.snapshot())}


@pytest.fixture
def agent() -> Agent:
    return Agent()


def allowed(agent: Agent, dst: str, principal: str | None = WEB) -> bool:
    return agent.decide(dst, principal).allow


# ---------------------------------------------------------------- empty lists


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ("[{from: []}]", "spec.rules[0].from"),
        ("[{to: []}]", "spec.rules[0].to"),
        ("[{from: [{source: {principals: []}}]}]", "spec.rules[0].from[0].source.principals"),
        ("[{from: [{source: {ipBlocks: []}}]}]", "spec.rules[0].from[0].source.ipBlocks"),
        ("[{from: [{source: {notPrincipals: []}}]}]", "spec.rules[0].from[0].source.notPrincipals"),
        ("[{from: [{source: {namespaces: []}}]}]", "spec.rules[0].from[0].source.namespaces"),
        ("[{to: [{operation: {ports: []}}]}]", "spec.rules[0].to[0].operation.ports"),
        ("[{when: [{key: source.ip, values: []}]}]", "spec.rules[0].when[0].values"),
        ("[{when: [{key: source.principal, notValues: []}]}]", "spec.rules[0].when[0].notValues"),
    ],
)
def test_an_empty_list_never_lets_a_plaintext_source_in(agent, rules, field):
    # Read as "no such field", each of these ALLOW rules would admit any source, plaintext too.
    agent.write("p.yaml", ap(f"{{selector: {{matchLabels: {{app: db}}}}, rules: {rules}}}"))
    for principal in (None, WEB):
        d = agent.decide("shop/db", principal)
        assert not d.allow and d.policy == "shop/p", d.reason
        assert d.reason.startswith(f"denied: policy shop/p is invalid: {field}: ")
    assert allowed(agent, "shop/cache", None), "outside its selector nothing changes"


# ---------------------------------------------------------------- new invalid policies


def test_a_new_invalid_policy_denies_in_its_scope_and_nowhere_else(agent):
    agent.write("p.yaml", ap("{selector: {matchLabels: {app: db}}, action: REJECT}"))
    d = agent.decide("shop/db")
    assert (d.allow, d.policy, d.rule) == (False, "shop/p", None)
    assert d.reason == (
        "denied: policy shop/p is invalid: spec.action: 'REJECT' is not one of ALLOW, DENY, AUDIT"
    )
    assert not allowed(agent, "shop/db", None)
    assert allowed(agent, "shop/cache"), "another workload of the namespace"
    assert allowed(agent, "billing/ledger"), "the same labels in another namespace"


def test_it_is_asked_before_any_other_policy(agent):
    agent.write("allow.yaml", ap("{rules: [{}]}", name="allow-all"))
    assert allowed(agent, "shop/db")
    agent.write("p.yaml", ap("{rules: [{from: []}]}", name="broken"))
    d = agent.decide("shop/db")
    assert not d.allow and d.policy == "shop/broken"


@pytest.mark.parametrize(
    "spec",
    [
        "{selector: {matchLabels: {app: [db]}}, rules: [{from: []}]}",
        "{selector: {matchExpressions: []}, rules: [{}]}",
        "{selector: 7}",
        "not-a-mapping",
    ],
)
def test_an_unreadable_selector_fails_closed_for_the_whole_namespace(agent, spec):
    agent.write("p.yaml", ap(spec))
    assert not allowed(agent, "shop/db") and not allowed(agent, "shop/cache")
    assert allowed(agent, "billing/ledger")
    (warning,) = agent.policy("shop/p").warnings
    assert warning.startswith("spec.selector: cannot be read")


def test_in_the_root_namespace_it_fails_closed_for_the_mesh(agent):
    agent.write(
        "p.yaml", ap("{selector: {matchLabels: {app: [db]}}, rules: 3}", ns="slipstream-system")
    )
    for dst in ("shop/db", "shop/cache", "billing/ledger"):
        assert agent.decide(dst).policy == "slipstream-system/p"
    agent.write(
        "p.yaml", ap("{selector: {matchLabels: {app: db}}, rules: 3}", ns="slipstream-system")
    )
    assert not allowed(agent, "shop/db") and not allowed(agent, "billing/ledger")
    assert allowed(agent, "shop/cache"), "a readable selector still narrows it, in every namespace"


@pytest.mark.parametrize("namespace", ["5", "[shop]", "Not_A_Namespace"])
def test_an_unreadable_namespace_fails_closed_for_the_mesh(agent, namespace):
    agent.write("p.yaml", ap("{rules: [{from: []}]}", ns=namespace))
    for dst in ("shop/db", "shop/cache", "billing/ledger"):
        d = agent.decide(dst)
        assert not d.allow and d.policy == "(any namespace)/p", d.reason
    assert agent.status()["(any namespace)/p"]["scope"] == "mesh (namespace unreadable)"


def test_a_policy_without_a_name_still_fails_closed_in_its_namespace(agent):
    agent.write(
        "p.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {namespace: shop}\nspec: {rules: [{}]}\n",
    )
    d = agent.decide("shop/db")
    assert not d.allow and "metadata.name" in d.reason
    assert d.policy == "shop/(unnamed: p.yaml (document 1))"
    assert allowed(agent, "billing/ledger")
    # Another edit of the same document is the same object (keyed by which document it is).
    agent.write(
        "p.yaml",
        "# edited\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {namespace: shop}\nspec: {rules: [{from: []}]}\n",
    )
    assert [o.key.name for o in agent.files.all_objects() if o.kind == "AuthorizationPolicy"] == [
        "(unnamed: p.yaml (document 1))"
    ]
    agent.remove("p.yaml")
    assert allowed(agent, "shop/db")


def test_an_unknown_api_version_of_a_policy_fails_closed(agent):
    agent.write(
        "p.yaml", ap("{rules: [{}]}").replace("security.istio.io/v1", "security.istio.io/v2")
    )
    d = agent.decide("shop/cache")
    assert not d.allow and "apiVersion" in d.reason


def test_deleting_it_lifts_the_deny_and_fixing_it_applies_the_fix(agent):
    agent.write("p.yaml", ap("{selector: {matchLabels: {app: db}}, rules: [{from: []}]}"))
    assert not allowed(agent, "shop/db")
    agent.remove("p.yaml")
    assert allowed(agent, "shop/db")
    assert "shop/p" not in agent.status()
    agent.write("p.yaml", ap("{selector: {matchLabels: {app: db}}, rules: [{from: []}]}"))
    assert not allowed(agent, "shop/db")
    agent.write("p.yaml", ap(GOOD))
    d = agent.decide("shop/db")
    assert d.allow and (d.policy, d.rule) == ("shop/p", 0)
    assert not allowed(agent, "shop/db", API) and not allowed(agent, "shop/db", None)
    assert agent.policy("shop/p").refused is None
    assert agent.status()["shop/p"]["state"] == "enforced"


def test_a_still_invalid_update_of_a_refused_policy_reports_the_new_error(agent):
    agent.write("p.yaml", ap("{rules: [{from: []}]}"))
    agent.write("p.yaml", ap("{selector: {matchLabels: {app: db}}, rules: [{to: []}]}"))
    d = agent.decide("shop/db")
    assert not d.allow and "spec.rules[0].to:" in d.reason
    assert allowed(agent, "shop/cache"), "the newest version's scope"


def test_a_refused_dry_run_policy_fails_closed_only_in_the_dry_run(agent):
    meta = ', annotations: {"istio.io/dry-run": "true"}'
    agent.write("p.yaml", ap("{action: DENY}", meta=meta))
    d = agent.decide("shop/db")
    assert d.allow and d.dry_run is not None and not d.dry_run.allow
    assert d.dry_run.reason.startswith("denied: policy shop/p is invalid: spec.rules: ")


# ---------------------------------------------------------------- invalid updates


def test_an_invalid_update_keeps_the_last_good_version(agent):
    agent.write("p.yaml", ap(GOOD))
    assert allowed(agent, "shop/db") and not allowed(agent, "shop/db", API)
    agent.write("p.yaml", ap("{selector: {matchLabels: {app: db}}, rules: [{from: []}]}"))
    d = agent.decide("shop/db")
    assert d.allow and (d.policy, d.rule) == ("shop/p", 0), "the last good version decides"
    assert not allowed(agent, "shop/db", API) and not allowed(agent, "shop/db", None)
    assert allowed(agent, "shop/cache")
    p = agent.policy("shop/p")
    assert p.refused is not None and not p.fail_closed
    assert (p.refused.field, p.refused.where) == ("spec.rules[0].from", "p.yaml:4 (document 1)")


def test_an_update_in_another_file_is_an_update(agent):
    agent.write("a.yaml", ap(GOOD))
    agent.write("b.yaml", ap("{rules: [{from: []}]}"))
    assert agent.decide("shop/db").policy == "shop/p" and allowed(agent, "shop/db")
    assert allowed(agent, "shop/cache"), "the last good version's scope"
    agent.remove("a.yaml")
    assert allowed(agent, "shop/db"), "b.yaml still defines it: the last good version stays"


# ---------------------------------------------------------------- reported loudly


def test_status_log_and_store_name_the_policy_and_the_field(agent, caplog):
    caplog.set_level(logging.WARNING, logger="agent.policy")
    agent.write(
        "new.yaml", ap("{selector: {matchLabels: {app: db}}, rules: [{from: []}]}", name="new")
    )
    agent.write("upd.yaml", ap(GOOD, name="upd"))
    agent.decide("shop/db")
    agent.write("upd.yaml", ap("{rules: [{to: [{operation: {ports: [http]}}]}]}", name="upd"))
    agent.decide("shop/db")
    agent.decide("shop/db")  # the same snapshot contents again: logged once per change
    status = agent.status()
    assert status["shop/new"]["state"] == "refused: denies every connection in its scope"
    assert status["shop/new"]["field"] == "spec.rules[0].from"
    assert status["shop/new"]["error"].startswith("spec.rules[0].from: must not be empty")
    assert status["shop/new"]["source"] == "new.yaml:4 (document 1)"
    assert status["shop/new"]["scope"] == "selected pods"
    assert status["shop/upd"]["state"] == "newest version refused: the last good version enforces"
    assert status["shop/upd"]["field"] == "spec.rules[0].to[0].operation.ports[0]"
    assert status["shop/upd"]["lastGood"]["spec"]["rules"][0]["from"][0]["source"][
        "principals"
    ] == [WEB]
    json.dumps(status)
    refused = [
        r.__dict__ for r in caplog.records if r.getMessage() == "authorization policy refused"
    ]
    assert [(r["policy"], r["field"]) for r in refused] == [
        ("shop/new", "spec.rules[0].from"),
        ("shop/upd", "spec.rules[0].to[0].operation.ports[0]"),
    ]
    assert refused[1]["effect"] == "newest version refused: the last good version enforces"
    assert all(
        r.levelno == logging.ERROR for r in caplog.records if r.getMessage().endswith("refused")
    )
    dumped = {o["name"]: o for o in snapshot_json(agent.snapshot())["objects"]}
    assert dumped["new"]["refused"] == {
        "field": "spec.rules[0].from",
        "reason": "must not be empty (it would read as any source):"
        " remove it, or list at least one",
        "source": "new.yaml:4 (document 1)",
        "enforcing": "fail-closed stand-in",
    }
    assert dumped["upd"]["refused"]["enforcing"] == "last good version"
    agent.write("upd.yaml", ap(GOOD, name="upd"))
    agent.decide("shop/db")
    assert any(r.getMessage() == "authorization policy valid again" for r in caplog.records)


# ---------------------------------------------------------------- PeerAuthentication


def pa(mode: str, name: str = "pa", ns: str = "shop", selector: str = "") -> str:
    sel = f"selector: {{matchLabels: {selector}}}, " if selector else ""
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec: {{{sel}mtls: {{mode: {mode}}}}}\n"
    )


def mode(agent: Agent, ref: str) -> str:
    snap = agent.snapshot()
    target = next(p for p in snap.pods() if f"{p.meta.namespace}/{p.meta.name}" == ref)
    assert isinstance(target, Pod)
    return mode_for(snap, target, target.meta.namespace)


def test_a_refused_peer_authentication_makes_its_scope_strict(agent):
    agent.write("permissive.yaml", pa("PERMISSIVE", name="db-open", selector="{app: db}"))
    assert mode(agent, "shop/db") == PERMISSIVE
    agent.write("pa.yaml", pa("strict"))  # a new one, refused (modes are upper case)
    assert mode(agent, "shop/db") == STRICT, "whatever a more specific one says"
    assert mode(agent, "shop/cache") == STRICT and mode(agent, "billing/ledger") == PERMISSIVE
    obj = agent.snapshot().get(ObjectKey("PeerAuthentication", "shop", "pa"))
    assert isinstance(obj, PeerAuthentication) and obj.fail_closed and obj.refused is not None
    assert obj.refused.field == "spec.mtls.mode"
    agent.remove("pa.yaml")
    assert mode(agent, "shop/db") == PERMISSIVE
    # An invalid update keeps the last good version.
    agent.write("permissive.yaml", pa("PERMISIVE", name="db-open", selector="{app: db}"))
    assert mode(agent, "shop/db") == PERMISSIVE
    kept = agent.snapshot().get(ObjectKey("PeerAuthentication", "shop", "db-open"))
    assert (
        isinstance(kept, PeerAuthentication) and kept.refused is not None and not kept.fail_closed
    )
