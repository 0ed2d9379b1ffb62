"""L4 authorization at the destination (pure): which policies apply to a workload, and the verdict.

Scope: a policy in the root namespace applies mesh-wide (its selector, if any,
picks pods in every namespace); elsewhere it applies to its namespace, narrowed
by its selector. Verdict, as in Istio: any matching DENY denies; otherwise, if
no ALLOW policy applies, allow; otherwise allow only if an ALLOW rule matches.
AUDIT rules only report that they matched. Dry-run policies take no part in
the verdict; the verdict they would have given is reported beside it.

A source without an identity (plaintext) has no principal and no namespace: a
positive condition on them never matches it. A negative one (notPrincipals,
notNamespaces, notValues) holds for it in a DENY rule, so "deny all but
namespace X" also denies plaintext, and fails in ALLOW and AUDIT rules, so only
a rule that says nothing about identity lets plaintext in. HTTP fields cannot
be seen at L4: an ALLOW or AUDIT rule using one matches nothing; in a DENY rule
they are dropped and the rest applies (so it denies more, never less).

A policy that did not validate never opens access (see state.authz): its last
good version keeps deciding, or, without one, its fail-closed stand-in denies
every connection in its scope before anything else is asked, naming the policy
and the field ("denied: policy shop/x is invalid: spec.rules[0].from: ...").

`Authorizer` keeps the compiled policies of each workload between snapshots
and recompiles only what changed; `decide` is the hot path.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.state import Snapshot
from agent.state.authz import AuthorizationPolicy, Condition, Rule, Source, StringMatch
from agent.state.objects import ObjectKey, Pod, selects

from .peerauth import ROOT_NAMESPACE

log = logging.getLogger("agent.policy")

ALLOW, DENY, AUDIT = "ALLOW", "DENY", "AUDIT"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PolicyPeer:
    """A connection as policy sees it."""

    src_ip: str
    principal: str | None
    """`<trust-domain>/ns/<ns>/sa/<sa>` (a SPIFFE ID without spiffe://), None for plaintext."""
    dst_ip: str
    dst_port: int

    @classmethod
    def from_spiffe(
        cls, src_ip: str, spiffe_id: str | None, dst_ip: str, dst_port: int
    ) -> PolicyPeer:
        principal = spiffe_id.removeprefix("spiffe://") if spiffe_id else None
        return cls(src_ip, principal, dst_ip, dst_port)


@dataclass(frozen=True)
class Decision:
    allow: bool
    policy: str | None
    """namespace/name of the policy that decided, if one rule did."""
    rule: int | None
    reason: str
    audit: tuple[str, ...] = ()
    """AUDIT policies that matched, as namespace/name[rule]."""
    dry_run: Decision | None = None
    """What the verdict would be with the dry-run policies enforced (when any applies)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision": "allow" if self.allow else "deny",
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
        }
        if self.audit:
            out["audit"] = list(self.audit)
        if self.dry_run is not None:
            out["dryRun"] = self.dry_run.as_dict()
        return out


# ---------------------------------------------------------------- matching
#
# Each rule is compiled once into a predicate over _Facts: sets for exact
# strings, integers for addresses, and nothing at all for absent fields, so
# a decision costs a few comparisons per candidate rule.

Pred = Callable[["_Facts"], bool]
_Net = tuple[int, int, int]
"""(IP version, network as an integer, mask as an integer)."""


class _Facts:
    """The peer's attributes, parsed once per decision."""

    __slots__ = (
        "dst",
        "namespace",
        "port",
        "principal",
        "service_account",
        "src",
        "trust_domain",
    )

    def __init__(self, peer: PolicyPeer) -> None:
        src, dst = ipaddress.ip_address(peer.src_ip), ipaddress.ip_address(peer.dst_ip)
        self.src = (src.version, int(src))
        self.dst = (dst.version, int(dst))
        self.port = peer.dst_port
        self.principal = peer.principal
        # A principal not of the form td/ns/N/sa/S tells none of these: they are unknown, as
        # for plaintext.
        self.namespace: str | None = None
        self.trust_domain: str | None = None
        self.service_account: tuple[str, str] | None = None
        if peer.principal:
            parts = peer.principal.split("/")
            if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
                self.trust_domain, self.namespace = parts[0], parts[2]
                self.service_account = (parts[2], parts[4])


def _nets(networks: Iterable[Any]) -> tuple[_Net, ...]:
    return tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks)


def _in_nets(addr: tuple[int, int], nets: tuple[_Net, ...]) -> bool:
    version, value = addr
    for v, net, mask in nets:  # noqa: SIM110 (a plain loop: any() and its generator cost more here)
        if v == version and value & mask == net:
            return True
    return False


def _strings_pred(matchers: Iterable[StringMatch]) -> Callable[[str], bool]:
    matchers = tuple(matchers)
    exact = frozenset(m.text for m in matchers if m.kind == "exact")
    others = tuple(m for m in matchers if m.kind != "exact")
    if not others:
        return exact.__contains__
    return lambda v: v in exact or any(m.matches(v) for m in others)


def _identity_pred(
    attr: str, positive: Iterable[StringMatch], negative: Iterable[StringMatch], lenient: bool
) -> list[Pred]:
    """Checks on the principal or namespace. Unknown (plaintext): positive fails, negative
    holds only when lenient (DENY)."""
    out: list[Pred] = []
    if attr == "principal":
        if positive:
            hit = _strings_pred(positive)
            out.append(lambda f: (v := f.principal) is not None and hit(v))
        if negative:
            miss = _strings_pred(negative)
            out.append(lambda f: lenient if (v := f.principal) is None else not miss(v))
        return out
    if attr == "namespace":
        if positive:
            hit_ns = _strings_pred(positive)
            out.append(lambda f: (v := f.namespace) is not None and hit_ns(v))
        if negative:
            miss_ns = _strings_pred(negative)
            out.append(lambda f: lenient if (v := f.namespace) is None else not miss_ns(v))
        return out
    assert attr == "trust_domain"
    if positive:
        hit_td = _strings_pred(positive)
        out.append(lambda f: (v := f.trust_domain) is not None and hit_td(v))
    if negative:
        miss_td = _strings_pred(negative)
        out.append(lambda f: lenient if (v := f.trust_domain) is None else not miss_td(v))
    return out


def _account_pred(
    positive: Iterable[tuple[str, str]], negative: Iterable[tuple[str, str]], lenient: bool
) -> list[Pred]:
    """Service accounts, exact (namespace, name), in any trust domain (as ztunnel and Istio's
    sidecars match them); unknown as for identities."""
    out: list[Pred] = []
    if positive:
        accounts = frozenset(positive)
        out.append(lambda f: f.service_account in accounts)
    if negative:
        not_accounts = frozenset(negative)
        out.append(lambda f: lenient if (v := f.service_account) is None else v not in not_accounts)
    return out


def _addr_pred(attr: str, positive: Iterable[Any], negative: Iterable[Any]) -> list[Pred]:
    out: list[Pred] = []
    src = attr == "src"
    if positive:
        nets = _nets(positive)
        out.append(lambda f: _in_nets(f.src if src else f.dst, nets))
    if negative:
        not_nets = _nets(negative)
        out.append(lambda f: not _in_nets(f.src if src else f.dst, not_nets))
    return out


def _port_pred(positive: Iterable[int], negative: Iterable[int]) -> list[Pred]:
    out: list[Pred] = []
    if positive:
        ports = frozenset(positive)
        out.append(lambda f: f.port in ports)
    if negative:
        not_ports = frozenset(negative)
        out.append(lambda f: f.port not in not_ports)
    return out


def _all(preds: list[Pred]) -> Pred:
    if not preds:
        return lambda f: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda f: a(f) and b(f)
    return lambda f: all(p(f) for p in preds)


def _any(preds: list[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    return lambda f: any(p(f) for p in preds)


def _source_pred(s: Source, lenient: bool) -> Pred:
    return _all(
        _identity_pred("principal", s.principals, s.not_principals, lenient)
        + _identity_pred("namespace", s.namespaces, s.not_namespaces, lenient)
        + _account_pred(s.service_accounts, s.not_service_accounts, lenient)
        + _identity_pred("trust_domain", s.trust_domains, s.not_trust_domains, lenient)
        + _addr_pred("src", s.ip_blocks, s.not_ip_blocks)
    )


def _condition_preds(c: Condition, lenient: bool) -> list[Pred]:
    if c.key in ("source.ip", "destination.ip"):
        return _addr_pred("src" if c.key == "source.ip" else "dst", c.values, c.not_values)
    if c.key == "destination.port":
        return _port_pred(c.values, c.not_values)
    if c.key == "source.serviceAccount":
        return _account_pred(c.values, c.not_values, lenient)
    attr = {"source.principal": "principal", "source.trustDomain": "trust_domain"}.get(
        c.key, "namespace"
    )
    return _identity_pred(attr, c.values, c.not_values, lenient)


def rule_predicate(rule: Rule, lenient: bool) -> Pred:
    """All of the rule's parts: any of its sources, any of its operations, all conditions."""
    parts: list[Pred] = []
    if rule.sources:
        parts.append(_any([_source_pred(s, lenient) for s in rule.sources]))
    if rule.operations:
        parts.append(_any([_all(_port_pred(op.ports, op.not_ports)) for op in rule.operations]))
    for c in rule.conditions:
        parts.extend(_condition_preds(c, lenient))
    return _all(parts)


@dataclass(frozen=True)
class _Compiled:
    """One rule of one policy, ready to match."""

    policy: str
    index: int
    order: int
    rule: Rule
    matches: Pred

    @property
    def label(self) -> str:
        return f"{self.policy}[{self.index}]"


class _RuleSet:
    """Rules of one action, indexed by exact principal or namespace, so a decision tries
    only the rules that could match its source (plus those that name neither)."""

    def __init__(self, rules: list[_Compiled]) -> None:
        self.by_principal: dict[str, list[_Compiled]] = {}
        self.by_namespace: dict[str, list[_Compiled]] = {}
        self.generic: list[_Compiled] = []
        for c in sorted(rules, key=lambda c: c.order):
            index = _index_of(c.rule)
            if index is None:
                self.generic.append(c)
                continue
            table = self.by_principal if index[0] == "principal" else self.by_namespace
            for key in index[1]:
                table.setdefault(key, []).append(c)

    def __bool__(self) -> bool:
        return bool(self.generic or self.by_principal or self.by_namespace)

    def _candidates(self, f: _Facts) -> tuple[Iterable[_Compiled], ...]:
        return (
            self.by_principal.get(f.principal, ()) if f.principal else (),
            self.by_namespace.get(f.namespace, ()) if f.namespace else (),
            self.generic,
        )

    def first(self, f: _Facts) -> _Compiled | None:
        """The earliest matching rule (each list is in order; take the earliest of their firsts)."""
        best: _Compiled | None = None
        for rules in self._candidates(f):
            for c in rules:
                if best is not None and c.order > best.order:
                    break
                if c.matches(f):
                    best = c
                    break
        return best

    def all(self, f: _Facts) -> list[_Compiled]:
        found = [c for rules in self._candidates(f) for c in rules if c.matches(f)]
        return sorted(found, key=lambda c: c.order)


def _index_of(rule: Rule) -> tuple[str, set[str]] | None:
    """The principals (or else namespaces) a rule can only match, when every one of its
    sources lists exact ones; None when it could match other sources too."""
    if not rule.sources:
        return None
    for attr in ("principals", "namespaces"):
        keys: set[str] = set()
        for s in rule.sources:
            matchers: tuple[StringMatch, ...] = getattr(s, attr)
            if not matchers or any(m.kind != "exact" for m in matchers):
                break
            keys.update(m.text for m in matchers)
        else:
            return attr.removesuffix("s"), keys
    return None


@dataclass
class WorkloadPolicies:
    """Everything that decides for one destination workload."""

    deny: _RuleSet
    allow: _RuleSet
    audit: _RuleSet
    allow_policies: list[str]
    """ALLOW policies that apply (even if none of their rules can match)."""
    closed: tuple[AuthorizationPolicy, ...] = ()
    """Fail-closed stand-ins of refused policies that apply: each denies everything."""
    dry: WorkloadPolicies | None = None
    """The same with dry-run policies included, when any applies."""


def _verdict(wp: WorkloadPolicies, f: _Facts) -> Decision:
    if wp.closed:
        bad = wp.closed[0]
        return Decision(False, bad.ref, None, f"denied: policy {bad.ref} is invalid: {bad.refused}")
    hit = wp.deny.first(f)
    if hit is not None:
        return Decision(
            False, hit.policy, hit.index, f"denied by DENY policy {hit.policy} rule {hit.index}"
        )
    if not wp.allow_policies:
        return Decision(True, None, None, "allowed: no ALLOW policy applies")
    hit = wp.allow.first(f)
    if hit is not None:
        return Decision(
            True, hit.policy, hit.index, f"allowed by ALLOW policy {hit.policy} rule {hit.index}"
        )
    return Decision(
        False,
        None,
        None,
        "denied: no rule of the ALLOW policies " + ", ".join(wp.allow_policies) + " matches",
    )


def evaluate(wp: WorkloadPolicies, peer: PolicyPeer) -> Decision:
    f = _Facts(peer)
    d = _verdict(wp, f)
    audit = tuple(c.label for c in wp.audit.all(f)) if wp.audit else ()
    dry = _verdict(wp.dry, f) if wp.dry is not None else None
    if audit or dry is not None:
        d = Decision(d.allow, d.policy, d.rule, d.reason, audit, dry)
    return d


# ---------------------------------------------------------------- compiling


def compile_policy(policy: AuthorizationPolicy) -> list[_Compiled]:
    name = policy.ref
    lenient = policy.action == DENY
    return [
        _Compiled(name, i, i, rule, rule_predicate(rule, lenient))
        for i, rule in enumerate(policy.rules)
        if lenient or not rule.l7  # HTTP fields: an ALLOW/AUDIT rule matches nothing
    ]


def _workload(
    policies: list[AuthorizationPolicy],
    rules_of: Callable[[AuthorizationPolicy], list[_Compiled]],
) -> WorkloadPolicies:
    def build(chosen: list[AuthorizationPolicy]) -> WorkloadPolicies:
        rules: dict[str, list[_Compiled]] = {ALLOW: [], DENY: [], AUDIT: []}
        for n, p in enumerate(chosen):
            if p.fail_closed:
                continue
            for c in rules_of(p):
                rules[p.action].append(
                    _Compiled(c.policy, c.index, n * 100_000 + c.index, c.rule, c.matches)
                )
        return WorkloadPolicies(
            deny=_RuleSet(rules[DENY]),
            allow=_RuleSet(rules[ALLOW]),
            audit=_RuleSet(rules[AUDIT]),
            allow_policies=[p.ref for p in chosen if p.action == ALLOW],
            closed=tuple(p for p in chosen if p.fail_closed),
        )

    enforced = build([p for p in policies if not p.dry_run])
    if any(p.dry_run for p in policies):
        enforced.dry = build(policies)
    return enforced


class Authorizer:
    """Policies per workload, kept between snapshots; rebuilt only for what changed."""

    def __init__(self, root_namespace: str = ROOT_NAMESPACE) -> None:
        self.root_namespace = root_namespace
        self.generation = 0
        """Bumped whenever the set of policies changes."""
        self._version = -1
        self._policies: tuple[Any, ...] = ()
        self._by_key: dict[ObjectKey, AuthorizationPolicy] = {}
        self._by_ns: dict[str, list[AuthorizationPolicy]] = {}
        self._compiled: dict[ObjectKey, list[_Compiled]] = {}
        self._workloads: dict[ObjectKey, tuple[Pod, WorkloadPolicies]] = {}

    def refresh(self, snap: Snapshot) -> bool:
        """Catch up with `snap`; True if the policies changed."""
        if snap.version == self._version:
            return False
        self._version = snap.version
        policies = snap.of_kind("AuthorizationPolicy")
        if policies == self._policies:
            return False
        self._policies = policies
        old, new = (
            self._by_key,
            {
                k: o
                for k, o in snap.objects.items()
                if k.kind == "AuthorizationPolicy" and isinstance(o, AuthorizationPolicy)
            },
        )
        by_ns: dict[str, list[AuthorizationPolicy]] = {}
        for key in sorted(new):
            p = new[key]
            by_ns.setdefault(key.namespace, []).append(p)
            if old.get(key) is not p:
                self._compiled.pop(key, None)
                _report(p, old.get(key))
        for key in old.keys() - new.keys():
            self._compiled.pop(key, None)
        self._by_key, self._by_ns = new, by_ns
        self._workloads.clear()
        self.generation += 1
        return True

    def applicable(self, pod: Pod) -> list[AuthorizationPolicy]:
        ns = pod.meta.namespace
        labels = pod.meta.labels
        # "": stand-ins of refused policies whose namespace could not be read (the mesh).
        out = list(self._by_ns.get("", ()))
        out += [
            p
            for p in self._by_ns.get(self.root_namespace, ())
            if p.selector is None or selects(p.selector, labels)
        ]
        if ns != self.root_namespace:
            out += [
                p
                for p in self._by_ns.get(ns, ())
                if p.selector is None or selects(p.selector, labels)
            ]
        return out

    def for_workload(self, snap: Snapshot, pod: Pod) -> WorkloadPolicies:
        self.refresh(snap)
        cached = self._workloads.get(pod.key)
        if cached is not None and cached[0] is pod:
            return cached[1]
        wp = _workload(self.applicable(pod), self._rules_of)
        self._workloads[pod.key] = (pod, wp)
        return wp

    def _rules_of(self, policy: AuthorizationPolicy) -> list[_Compiled]:
        """Compiled on first use: most policies never select a workload on this node."""
        rules = self._compiled.get(policy.key)
        if rules is None:
            rules = self._compiled[policy.key] = compile_policy(policy)
        return rules

    def decide(self, snap: Snapshot, pod: Pod, peer: PolicyPeer) -> Decision:
        return evaluate(self.for_workload(snap, pod), peer)

    def status(self, snap: Snapshot) -> list[dict[str, Any]]:
        """For /config_dump: every policy, its scope, what L4 makes of it, and whether it
        was refused (with the version that enforces in its place)."""
        self.refresh(snap)
        out = []
        for ns in sorted(self._by_ns):
            for p in self._by_ns[ns]:
                if not ns:
                    scope = "mesh (namespace unreadable)"
                elif ns == self.root_namespace:
                    scope = "mesh" if p.selector is None else "mesh, selected pods"
                else:
                    scope = "namespace" if p.selector is None else "selected pods"
                entry: dict[str, Any] = {
                    "name": p.ref,
                    "action": p.action or None,
                    "scope": scope,
                    "selector": dict(p.selector) if p.selector else None,
                    "rules": len(p.rules),
                    "dryRun": p.dry_run,
                    "state": _state(p),
                }
                if p.refused is not None:
                    entry["error"] = str(p.refused)
                    entry["field"] = p.refused.field
                    entry["source"] = p.refused.where
                    if not p.fail_closed:
                        entry["lastGood"] = dict(p.raw)
                warnings = list(p.warnings)
                warnings += [f"{path}: {_l7_effect(p.action)}" for path in p.l7_fields]
                if warnings:
                    entry["warnings"] = warnings
                out.append(entry)
        return out


def _state(p: AuthorizationPolicy) -> str:
    if p.fail_closed:
        return "refused: denies every connection in its scope"
    if p.refused is not None:
        return "newest version refused: the last good version enforces"
    return "dry run" if p.dry_run else "enforced"


def _l7_effect(action: str) -> str:
    if action == DENY:
        return "needs HTTP, not enforced at L4: ignored, the rest of the rule applies"
    return "needs HTTP, not enforced at L4: this rule matches nothing"


def _report(p: AuthorizationPolicy, before: AuthorizationPolicy | None) -> None:
    """Log what a new or changed policy needs a person to know, once per change."""
    if p.refused is not None and (before is None or before.refused != p.refused):
        log.error(
            "authorization policy refused",
            extra={
                "policy": p.ref,
                "field": p.refused.field,
                "reason": p.refused.reason,
                "source": p.refused.where,
                "effect": _state(p),
            },
        )
    if p.refused is None and before is not None and before.refused is not None:
        log.warning("authorization policy valid again", extra={"policy": p.ref})
    if p.refused is not None and before is not None and p.raw is before.raw:
        return  # the same enforcing version: its warnings were logged when it came
    if p.l7_fields:
        log.warning(
            "policy uses fields L4 cannot enforce",
            extra={"policy": p.ref, "fields": list(p.l7_fields), "effect": _l7_effect(p.action)},
        )
    if p.warnings:
        log.warning(
            "policy read with warnings", extra={"policy": p.ref, "warnings": list(p.warnings)}
        )
