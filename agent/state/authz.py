"""AuthorizationPolicy (slipstream.dev/v1alpha1), parsed and validated (evaluated in policy.authz).

The spec follows Istio's: `selector`, `action` (ALLOW, DENY, AUDIT), and
`rules[]` of `from[].source`, `to[].operation` and `when[]`. Every field is
checked here and an error names it (`spec.rules[0].from[1].source.ipBlocks[0]`).
Fields that need HTTP (methods, paths, hosts, request principals...) are valid
but cannot be enforced at L4: they are kept as names in `Rule.l7` and each
action decides what that means.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import FieldError
from .fields import known_fields, listing, mapping, match_labels, need, string
from .resource import Meta, Resource

ACTIONS = ("ALLOW", "DENY", "AUDIT")
DRY_RUN_ANNOTATION = "slipstream.dev/dry-run"

SOURCE_L4 = (
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
)
SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
OPERATION_L4 = ("ports", "notPorts")
OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
WHEN_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
)
WHEN_L7_KEYS = ("remote.ip", "remote.port", "connection.sni")
WHEN_L7_PREFIXES = ("request.", "experimental.")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class StringMatch:
    """`text` exactly, `text*` (prefix), `*text` (suffix), or `*` (anything present)."""

    kind: str
    text: str

    def matches(self, value: str) -> bool:
        if self.kind == "exact":
            return value == self.text
        if self.kind == "prefix":
            return value.startswith(self.text)
        if self.kind == "suffix":
            return value.endswith(self.text)
        return bool(value)

    def __str__(self) -> str:
        return {"exact": "{}", "prefix": "{}*", "suffix": "*{}", "any": "*"}[self.kind].format(
            self.text
        )


@dataclass(frozen=True)
class Source:
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    ip_blocks: tuple[IPNetwork, ...] = ()
    not_ip_blocks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Operation:
    ports: frozenset[int] = frozenset()
    not_ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Condition:
    key: str
    """One of WHEN_KEYS."""
    values: tuple[Any, ...]
    """StringMatch for principal and namespace, networks for IPs, ints for the port."""
    not_values: tuple[Any, ...]


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...]
    """Any of them (none: any source)."""
    operations: tuple[Operation, ...]
    """Any of them (none: any port)."""
    conditions: tuple[Condition, ...]
    """All of them."""
    l7: tuple[str, ...]
    """Paths of the HTTP-only fields the rule uses; they take no part in matching."""


@dataclass(frozen=True)
class AuthorizationPolicy(Resource):
    selector: Mapping[str, str] | None
    """matchLabels; None: every workload of the namespace (of the mesh, in the root namespace)."""
    action: str
    rules: tuple[Rule, ...]
    dry_run: bool

    @property
    def l7_fields(self) -> tuple[str, ...]:
        return tuple(path for rule in self.rules for path in rule.l7)


# ---------------------------------------------------------------- parsing


def parse_authorization_policy(
    api_version: str, meta: Meta, body: Mapping[str, Any]
) -> AuthorizationPolicy:
    spec = mapping(body, "spec", "")
    known_fields(spec, {"selector", "action", "rules"}, "spec")
    action = string(spec, "action", "spec", default="ALLOW")
    need(action in ACTIONS, "spec.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    rules = tuple(
        _rule(r, f"spec.rules[{i}]") for i, r in enumerate(listing(spec, "rules", "spec"))
    )
    dry = meta.annotations.get(DRY_RUN_ANNOTATION, "false")
    need(
        dry in ("true", "false"),
        f"metadata.annotations.{DRY_RUN_ANNOTATION}",
        f'{dry!r} must be "true" or "false"',
    )
    return AuthorizationPolicy(
        api_version,
        "AuthorizationPolicy",
        meta,
        body,
        selector=match_labels(spec),
        action=action,
        rules=rules,
        dry_run=dry == "true",
    )


def _wrapped(raw: Any, key: str, inner: str, path: str) -> Iterator[tuple[Any, str]]:
    """The `key: [{inner: {...}}]` lists of a rule: each inner mapping with where it is
    (one at a time, so errors come in the order of the file)."""
    for i, item in enumerate(listing(raw, key, path)):
        where = f"{path}.{key}[{i}]"
        need(isinstance(item, dict), where, f"must be a mapping with {_a(inner)} {inner}")
        known_fields(item, {inner}, where)
        yield mapping(item, inner, where), f"{where}.{inner}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _rule(raw: Any, path: str) -> Rule:
    need(isinstance(raw, dict), path, "must be a mapping with from, to and when")
    known_fields(raw, {"from", "to", "when"}, path)
    l7: list[str] = []
    sources = [_source(body, where, l7) for body, where in _wrapped(raw, "from", "source", path)]
    operations = [
        _operation(body, where, l7) for body, where in _wrapped(raw, "to", "operation", path)
    ]
    conditions = []
    for i, item in enumerate(listing(raw, "when", path)):
        cond = _condition(item, f"{path}.when[{i}]", l7)
        if cond is not None:
            conditions.append(cond)
    return Rule(tuple(sources), tuple(operations), tuple(conditions), tuple(l7))


def _source(raw: Mapping[str, Any], path: str, l7: list[str]) -> Source:
    need(bool(raw), path, "is empty: name at least one of " + ", ".join(SOURCE_L4))
    known_fields(raw, set(SOURCE_L4 + SOURCE_L7), path)
    l7.extend(f"{path}.{k}" for k in SOURCE_L7 if k in raw)
    return Source(
        principals=_matches(raw, "principals", path, principal=True),
        not_principals=_matches(raw, "notPrincipals", path, principal=True),
        namespaces=_matches(raw, "namespaces", path),
        not_namespaces=_matches(raw, "notNamespaces", path),
        ip_blocks=_networks(raw, "ipBlocks", path),
        not_ip_blocks=_networks(raw, "notIpBlocks", path),
    )


def _operation(raw: Mapping[str, Any], path: str, l7: list[str]) -> Operation:
    need(bool(raw), path, "is empty: name ports or notPorts")
    known_fields(raw, set(OPERATION_L4 + OPERATION_L7), path)
    l7.extend(f"{path}.{k}" for k in OPERATION_L7 if k in raw)
    return Operation(
        ports=frozenset(_ports(raw, "ports", path)),
        not_ports=frozenset(_ports(raw, "notPorts", path)),
    )


def _condition(raw: Any, path: str, l7: list[str]) -> Condition | None:
    need(isinstance(raw, dict), path, "must be a mapping with key and values")
    known_fields(raw, {"key", "values", "notValues"}, path)
    key = string(raw, "key", path, required=True)
    need(
        "values" in raw or "notValues" in raw,
        path,
        "needs values or notValues",
    )
    if key in WHEN_L7_KEYS or key.startswith(WHEN_L7_PREFIXES):
        l7.append(f"{path}.key={key}")
        return None
    need(
        key in WHEN_KEYS,
        f"{path}.key",
        f"{key!r} is not a condition key (L4 keys: {', '.join(WHEN_KEYS)})",
    )
    if key in ("source.ip", "destination.ip"):
        return Condition(key, _networks(raw, "values", path), _networks(raw, "notValues", path))
    if key == "destination.port":
        return Condition(key, _ports(raw, "values", path), _ports(raw, "notValues", path))
    principal = key == "source.principal"
    return Condition(
        key,
        _matches(raw, "values", path, principal=principal),
        _matches(raw, "notValues", path, principal=principal),
    )


def _strings(raw: Mapping[str, Any], key: str, path: str) -> list[tuple[str, str]]:
    out = []
    for i, v in enumerate(listing(raw, key, path)):
        where = f"{path}.{key}[{i}]"
        need(isinstance(v, str), where, f"must be a string, not {type(v).__name__}")
        need(v != "", where, "must not be empty")
        out.append((where, v))
    return out


def _matches(
    raw: Mapping[str, Any], key: str, path: str, *, principal: bool = False
) -> tuple[StringMatch, ...]:
    out = []
    for where, v in _strings(raw, key, path):
        if principal:
            need(
                not v.startswith("spiffe://"),
                where,
                f"write principals without spiffe:// ({v.removeprefix('spiffe://')})",
            )
        out.append(_string_match(v, where))
    return tuple(out)


def _string_match(v: str, where: str) -> StringMatch:
    if v == "*":
        return StringMatch("any", "")
    inner = v.strip("*")
    need(
        "*" not in inner and v.count("*") <= 1,
        where,
        f"{v!r}: a wildcard may only stand at one end",
    )
    if v.startswith("*"):
        return StringMatch("suffix", inner)
    if v.endswith("*"):
        return StringMatch("prefix", inner)
    return StringMatch("exact", v)


def _networks(raw: Mapping[str, Any], key: str, path: str) -> tuple[IPNetwork, ...]:
    out = []
    for where, v in _strings(raw, key, path):
        try:
            out.append(ipaddress.ip_network(v))
        except ValueError as exc:
            reason = str(exc)
            if "host bits set" in reason:
                net = ipaddress.ip_network(v, strict=False)
                reason = f"has host bits set (the block is {net})"
            else:
                reason = "is not an IP address or CIDR block"
            raise FieldError(where, f"{v!r} {reason}") from exc
    return tuple(out)


def _ports(raw: Mapping[str, Any], key: str, path: str) -> tuple[int, ...]:
    out = []
    for i, v in enumerate(listing(raw, key, path)):
        where = f"{path}.{key}[{i}]"
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        need(
            isinstance(v, int) and not isinstance(v, bool),
            where,
            f"{v!r} is not a port number",
        )
        need(1 <= v <= 65535, where, f"{v} is not a port number (1-65535)")
        out.append(v)
    return tuple(out)
