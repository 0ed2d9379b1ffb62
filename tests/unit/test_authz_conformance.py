"""Istio's AuthorizationPolicy semantics, table-driven: the shapes of Istio's reference page
(istio/api security/v1beta1/authorization_policy.proto) and of ztunnel's rbac tests
(src/rbac.rs), each with the verdict for several peers.

Where we deliberately decide differently from ztunnel, a case says how ztunnel decides and
names the README bullet that documents it; `test_every_difference_is_in_the_readme` keeps
the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.common.errors import FieldError
from agent.policy.authz import Authorizer, PolicyPeer
from agent.state import Snapshot, parse_object
from agent.state.objects import Pod, refused_version

ROOT = "slipstream-system"


@dataclass(frozen=True)
class Conn:
    principal: str | None
    src: str
    dst: str
    port: int


# ztunnel's rbac.rs peers: plaintext_conn, tls_conn, tls_conn_alt.
PLAINTEXT = Conn(None, "127.0.0.1", "127.0.0.2", 8080)
TLS = Conn("td/ns/namespace/sa/account", "127.0.0.1", "127.0.0.2", 8080)
TLS_ALT = Conn("td-alt/ns/ns-alt/sa/sa=alt", "127.0.0.3", "127.0.0.4", 9090)
# Peers for the reference page's examples (namespace foo, workload httpbin).
SLEEP = Conn("cluster.local/ns/default/sa/sleep", "10.244.1.5", "10.244.2.9", 8080)
TEST_NS = Conn("cluster.local/ns/test/sa/client", "10.244.1.6", "10.244.2.9", 8080)
DEV = Conn("cluster.local/ns/dev/sa/tool", "10.244.1.7", "10.244.2.9", 8080)
DEV_9090 = Conn("cluster.local/ns/dev/sa/tool", "10.244.1.7", "10.244.2.9", 9090)
SLEEP_9090 = Conn("cluster.local/ns/default/sa/sleep", "10.244.1.5", "10.244.2.9", 9090)
OTHER_TD = Conn("example.org/ns/default/sa/sleep", "10.244.1.5", "10.244.2.9", 8080)
PLAIN_IN = Conn(None, "10.244.1.8", "10.244.2.9", 8080)
PLAIN_OUT = Conn(None, "192.168.7.7", "10.244.2.9", 8080)


@dataclass
class Case:
    name: str
    policies: list[dict[str, Any]]
    """Each: {"spec": ..., optional "namespace", "name", "annotations"}."""
    verdicts: list[tuple[Conn, bool]]
    pod: tuple[str, dict[str, str]] = ("namespace", {"app": "x"})
    """The destination: namespace and labels."""
    ztunnel: dict[Conn, bool] = field(default_factory=dict)
    """Where ztunnel decides otherwise, its verdicts..."""
    differs: str = ""
    """...and the README bullet that says why."""


def source(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": fields}]}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["notValues"] = not_values
    return {"rules": [{"when": [cond]}]}


def ports(*p: str, negative: bool = False) -> dict[str, Any]:
    return {"rules": [{"to": [{"operation": {"notPorts" if negative else "ports": list(p)}}]}]}


P = "td/ns/namespace/sa/account"
ZTUNNEL = [
    # rbac_empty_policy: one empty rule allows everything; no rules allows nothing.
    Case("empty rule", [{"spec": {"rules": [{}]}}], [(PLAINTEXT, True), (TLS, True)]),
    Case("no rules", [{"spec": {}}], [(PLAINTEXT, False), (TLS, False), (TLS_ALT, False)]),
    # The rbac_test! table, one field each.
    Case(
        "namespaces",
        [{"spec": source(namespaces=["namespace"])}],
        [(PLAINTEXT, False), (TLS, True), (TLS_ALT, False)],
    ),
    Case(
        "notNamespaces",
        [{"spec": source(notNamespaces=["namespace"])}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
        ztunnel={PLAINTEXT: True},
        differs="plaintext and negative identity fields",
    ),
    Case(
        "serviceAccounts",
        [{"spec": source(serviceAccounts=["namespace/account"])}],
        [(PLAINTEXT, False), (TLS, True), (TLS_ALT, False)],
    ),
    Case(
        "notServiceAccounts",
        [{"spec": source(notServiceAccounts=["namespace/account"])}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
        ztunnel={PLAINTEXT: True},
        differs="plaintext and negative identity fields",
    ),
    Case(
        "principals",
        [{"spec": source(principals=[P])}],
        [(PLAINTEXT, False), (TLS, True), (TLS_ALT, False)],
    ),
    Case(
        "notPrincipals",
        [{"spec": source(notPrincipals=[P])}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
        ztunnel={PLAINTEXT: True},
        differs="plaintext and negative identity fields",
    ),
    Case(
        "source ipBlocks",
        [{"spec": source(ipBlocks=["127.0.0.1/32"])}],
        [(PLAINTEXT, True), (TLS, True), (TLS_ALT, False)],
    ),
    Case(
        "source notIpBlocks",
        [{"spec": source(notIpBlocks=["127.0.0.1/32"])}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
    ),
    Case(
        "destination.ip",
        [{"spec": when("destination.ip", ["127.0.0.2/32"])}],
        [(PLAINTEXT, True), (TLS, True), (TLS_ALT, False)],
    ),
    Case(
        "destination.ip notValues",
        [{"spec": when("destination.ip", not_values=["127.0.0.2/32"])}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
    ),
    # cidr_range: 127.0.0.1/24 has host bits set, and is the block 127.0.0.0/24.
    Case(
        "cidr range with host bits",
        [{"spec": when("destination.ip", ["127.0.0.1/24"])}],
        [(PLAINTEXT, True), (TLS, True), (TLS_ALT, True)],
    ),
    Case("ports", [{"spec": ports("8080")}], [(PLAINTEXT, True), (TLS, True), (TLS_ALT, False)]),
    Case(
        "notPorts",
        [{"spec": ports("8080", negative=True)}],
        [(PLAINTEXT, False), (TLS, False), (TLS_ALT, True)],
    ),
    # rbac_nesting: either namespace, and the port.
    Case(
        "nesting",
        [
            {
                "spec": {
                    "rules": [
                        {
                            "from": [
                                {"source": {"namespaces": ["a"]}},
                                {"source": {"namespaces": ["b"]}},
                            ],
                            "to": [{"operation": {"ports": ["80"]}}],
                        }
                    ]
                }
            }
        ],
        [
            (Conn("td/ns/a/sa/account", "127.0.0.1", "127.0.0.2", 80), True),
            (Conn("td/ns/b/sa/account", "127.0.0.1", "127.0.0.2", 80), True),
            (Conn("td/ns/bad/sa/account", "127.0.0.1", "127.0.0.2", 80), False),
            (Conn("td/ns/b/sa/account", "127.0.0.1", "127.0.0.2", 12345), False),
        ],
    ),
    # rbac_multi_rule: two rules are alternatives.
    Case(
        "multi rule",
        [
            {
                "spec": {
                    "rules": [
                        {"from": [{"source": {"namespaces": ["a"]}}]},
                        {"from": [{"source": {"namespaces": ["b"]}}]},
                    ]
                }
            }
        ],
        [
            (Conn("td/ns/a/sa/account", "127.0.0.1", "127.0.0.2", 80), True),
            (Conn("td/ns/b/sa/account", "127.0.0.1", "127.0.0.2", 80), True),
            (Conn("td/ns/bad/sa/account", "127.0.0.1", "127.0.0.2", 80), False),
        ],
    ),
    # string_match: exact, prefix, suffix, presence (on principals).
    Case(
        "principal prefix",
        [{"spec": source(principals=["td/ns/name*"])}],
        [(TLS, True), (TLS_ALT, False), (PLAINTEXT, False)],
    ),
    Case(
        "principal suffix",
        [{"spec": source(principals=["*/sa/account"])}],
        [(TLS, True), (TLS_ALT, False), (PLAINTEXT, False)],
    ),
    Case(
        "principal presence",
        [{"spec": source(principals=["*"])}],
        [(TLS, True), (TLS_ALT, True), (PLAINTEXT, False)],
    ),
]

FOO = ("foo", {"app": "httpbin"})
REFERENCE = [
    # The first example: principals or namespace test, GET/POST on paths, a JWT claim.
    # Every rule needs HTTP: at L4 the ALLOW policy matches nothing.
    Case(
        "ALLOW with HTTP fields",
        [
            {
                "name": "httpbin",
                "namespace": "foo",
                "spec": {
                    "action": "ALLOW",
                    "rules": [
                        {
                            "from": [
                                {"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
                                {"source": {"namespaces": ["test"]}},
                            ],
                            "to": [
                                {"operation": {"methods": ["GET"], "paths": ["/info*"]}},
                                {"operation": {"methods": ["POST"], "paths": ["/data"]}},
                            ],
                            "when": [
                                {
                                    "key": "request.auth.claims[iss]",
                                    "values": ["https://accounts.google.com"],
                                }
                            ],
                        }
                    ],
                },
            }
        ],
        [(SLEEP, False), (TEST_NS, False), (DEV, False), (PLAIN_IN, False)],
        pod=FOO,
    ),
    # The same rule without its HTTP parts allows exactly the two sources.
    Case(
        "ALLOW a principal or a namespace",
        [
            {
                "namespace": "foo",
                "spec": {
                    "rules": [
                        {
                            "from": [
                                {"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
                                {"source": {"namespaces": ["test"]}},
                            ]
                        }
                    ]
                },
            }
        ],
        [(SLEEP, True), (TEST_NS, True), (DEV, False), (OTHER_TD, False), (PLAIN_IN, False)],
        pod=FOO,
    ),
    # DENY from namespace dev to POST: at L4 the method is dropped and dev is denied.
    Case(
        "DENY namespace with an HTTP operation",
        [
            {
                "namespace": "foo",
                "spec": {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [{"source": {"namespaces": ["dev"]}}],
                            "to": [{"operation": {"methods": ["POST"]}}],
                        }
                    ],
                },
            }
        ],
        [(DEV, False), (SLEEP, True), (PLAIN_IN, True)],
        pod=FOO,
        ztunnel={DEV: True},
        differs="HTTP fields in a DENY rule",
    ),
    # DENY POST on port 8080: "all TCP traffic on port 8080 would be denied".
    Case(
        "DENY an HTTP method on a port",
        [
            {
                "namespace": "foo",
                "spec": {
                    "action": "DENY",
                    "rules": [{"to": [{"operation": {"methods": ["POST"], "ports": ["8080"]}}]}],
                },
            }
        ],
        [(SLEEP, False), (DEV, False), (PLAIN_IN, False), (SLEEP_9090, True), (DEV_9090, True)],
        pod=FOO,
    ),
    # AUDIT decides nothing.
    Case(
        "AUDIT",
        [
            {
                "namespace": "foo",
                "spec": {
                    "selector": {"matchLabels": {"app": "httpbin"}},
                    "action": "AUDIT",
                    "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/x/*"]}}]}],
                },
            }
        ],
        [(SLEEP, True), (PLAIN_IN, True)],
        pod=FOO,
    ),
    # allow-nothing: an ALLOW without rules, for the namespace.
    Case(
        "allow-nothing",
        [{"namespace": "foo", "spec": {}}],
        [(SLEEP, False), (PLAIN_IN, False)],
        pod=FOO,
    ),
    # allow-all: one empty rule.
    Case(
        "allow-all",
        [{"namespace": "foo", "spec": {"rules": [{}]}}],
        [(SLEEP, True), (PLAIN_IN, True), (PLAIN_OUT, True)],
        pod=FOO,
    ),
    # allow-nothing for app=httpbin in bar: only the selected workload.
    Case(
        "allow-nothing, selected workload",
        [{"namespace": "bar", "spec": {"selector": {"matchLabels": {"app": "httpbin"}}}}],
        [(SLEEP, False)],
        pod=("bar", {"app": "httpbin"}),
    ),
    Case(
        "allow-nothing, other workload",
        [{"namespace": "bar", "spec": {"selector": {"matchLabels": {"app": "httpbin"}}}}],
        [(SLEEP, True)],
        pod=("bar", {"app": "other"}),
    ),
    Case(
        "allow-nothing, other namespace",
        [{"namespace": "bar", "spec": {}}],
        [(SLEEP, True)],
        pod=FOO,
    ),
    # allow-nothing for version=v1 in every namespace (the root namespace's selector).
    Case(
        "root namespace selector, selected",
        [{"namespace": ROOT, "spec": {"selector": {"matchLabels": {"version": "v1"}}}}],
        [(SLEEP, False)],
        pod=("anywhere", {"version": "v1"}),
    ),
    Case(
        "root namespace selector, not selected",
        [{"namespace": ROOT, "spec": {"selector": {"matchLabels": {"version": "v1"}}}}],
        [(SLEEP, True)],
        pod=("anywhere", {"version": "v2"}),
    ),
    # istio.io/dry-run: a DENY that is only reported (see test_dry_run_annotations).
    Case(
        "istio.io/dry-run",
        [
            {
                "namespace": "foo",
                "annotations": {"istio.io/dry-run": "true"},
                "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]},
            }
        ],
        [(SLEEP, True), (PLAIN_IN, True)],
        pod=FOO,
    ),
    # DENY without rules: Istio's validation refuses it; refused here, it fails closed.
    Case(
        "DENY without rules",
        [{"namespace": "foo", "spec": {"action": "DENY"}}],
        [(SLEEP, False), (PLAIN_IN, False)],
        pod=FOO,
    ),
    Case(
        "DENY with one empty rule",
        [{"namespace": "foo", "spec": {"action": "DENY", "rules": [{}]}}],
        [(SLEEP, False), (PLAIN_IN, False)],
        pod=FOO,
    ),
]

EXTRA = [
    # serviceAccounts without a namespace are in the policy's namespace.
    Case(
        "serviceAccounts in the policy's namespace",
        [{"namespace": "default", "spec": source(serviceAccounts=["sleep"])}],
        [(SLEEP, True), (OTHER_TD, True), (TEST_NS, False), (PLAIN_IN, False)],
        pod=("default", {"app": "x"}),
    ),
    Case(
        "DENY notServiceAccounts: every other account, and plaintext",
        [
            {
                "namespace": "default",
                "spec": {
                    "action": "DENY",
                    "rules": [{"from": [{"source": {"notServiceAccounts": ["default/sleep"]}}]}],
                },
            }
        ],
        [(SLEEP, True), (TEST_NS, False), (PLAIN_IN, False)],
        pod=("default", {"app": "x"}),
    ),
    Case(
        "trustDomains",
        [{"spec": source(trustDomains=["cluster.local"])}],
        [(SLEEP, True), (OTHER_TD, False), (PLAIN_IN, False)],
        ztunnel={SLEEP: False},
        differs="trustDomains",
    ),
    Case(
        "notTrustDomains in DENY",
        [
            {
                "spec": {
                    "action": "DENY",
                    "rules": [{"from": [{"source": {"notTrustDomains": ["*.org"]}}]}],
                }
            }
        ],
        [(SLEEP, False), (OTHER_TD, True), (PLAIN_IN, False)],
        ztunnel={SLEEP: True, PLAIN_IN: True},
        differs="trustDomains",
    ),
    Case(
        "when source.serviceAccount",
        [{"namespace": "default", "spec": when("source.serviceAccount", ["sleep"])}],
        [(SLEEP, True), (TEST_NS, False), (PLAIN_IN, False)],
        pod=("default", {"app": "x"}),
        ztunnel={SLEEP: False},
        differs="source.serviceAccount",
    ),
    Case(
        "when source.trustDomain",
        [{"spec": when("source.trustDomain", not_values=["example.org"])}],
        [(SLEEP, True), (OTHER_TD, False), (PLAIN_IN, False)],
        ztunnel={SLEEP: False},
        differs="source.serviceAccount",
    ),
    Case(
        "ipBlocks with host bits",
        [{"spec": source(ipBlocks=["10.244.1.77/24"])}],
        [(PLAIN_IN, True), (SLEEP, True), (PLAIN_OUT, False)],
    ),
    Case(
        "DENY notIpBlocks: plaintext from outside the block",
        [
            {
                "spec": {
                    "action": "DENY",
                    "rules": [{"from": [{"source": {"notIpBlocks": ["10.244.0.0/16"]}}]}],
                }
            }
        ],
        [(PLAIN_IN, True), (PLAIN_OUT, False), (SLEEP, True)],
    ),
    Case(
        "port 0 matches nothing",
        [{"spec": ports("0")}],
        [(SLEEP, False), (PLAIN_IN, False)],
    ),
]

CASES = ZTUNNEL + REFERENCE + EXTRA


def _policy(i: int, p: dict[str, Any]) -> Any:
    meta: dict[str, Any] = {
        "name": p.get("name", f"p{i}"),
        "namespace": p.get("namespace", "namespace"),
    }
    if "annotations" in p:
        meta["annotations"] = p["annotations"]
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": p["spec"],
    }
    return body


def _decide(case: Case, conn: Conn) -> bool:
    ns, labels = case.pod
    pod = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "dst", "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "command": ["x"]}]},
            "status": {"podIP": conn.dst, "phase": "Running"},
        }
    )
    assert isinstance(pod, Pod)
    objects = {pod.key: pod}
    for i, p in enumerate(case.policies):
        body = _policy(i, p)
        try:
            obj = parse_object(body)
        except FieldError as exc:
            obj = refused_version(body, exc, None)  # as a source keeps it
            assert obj is not None
        objects[obj.key] = obj
    snap = Snapshot.build(1, objects)
    return (
        Authorizer(ROOT)
        .decide(snap, pod, PolicyPeer(conn.src, conn.principal, conn.dst, conn.port))
        .allow
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_istio_semantics(case: Case) -> None:
    got = [(conn, _decide(case, conn)) for conn, _ in case.verdicts]
    assert got == case.verdicts, case.name
    assert not case.ztunnel or case.differs, "a difference from ztunnel needs its README bullet"
    ours = dict(case.verdicts)
    for conn, theirs in case.ztunnel.items():
        assert ours[conn] != theirs, f"{conn} is listed as a difference but is not one"


def test_every_difference_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Authorization policy", 1)[1].split("\n## ", 1)[0]
    differences = section.split("deliberately", 1)[1]
    for case in CASES:
        if case.differs:
            assert re.search(re.escape(case.differs), differences, re.IGNORECASE), case.differs
