"""AuthorizationPolicy (ours or Istio's), parsed and validated; and what stands in for one
that does not validate (evaluated in policy.authz).

The spec follows Istio's: `selector`, `action` (ALLOW, DENY, AUDIT), and
`rules[]` of `from[].source`, `to[].operation` and `when[]`. Validation
follows Istio's own (pkg/config/validation `ValidateAuthorizationPolicy`,
pkg/config/security, and the limits of its CRD schema): what Istio refuses is
refused here with the field named (`spec.rules[0].from[1].source.ipBlocks[0]`),
and what it accepts is accepted, except for the few deliberate differences the
README lists (a principal written with spiffe://, a wildcard inside a value,
CUSTOM and targetRefs, which nothing here could enforce). Fields that need
HTTP (methods, paths, hosts, request principals...) are valid but cannot be
enforced at L4: they are kept as names in `Rule.l7` and each action decides
what that means.

An empty list is read as Istio reads it (Kubernetes hands Istio an empty list
as an absent field), except `from: []` and `to: []`, which Istio's validator
refuses; a source, operation or condition left with nothing to match on is
refused, so an empty list can never widen a rule to every peer.

Fail closed: a policy that does not validate never opens access.
`refused_policy` turns a refused version into what the store keeps in its
place: the last good version, still enforcing, with the refusal noted; or,
without one, a fail-closed policy that denies every connection in the scope the
policy would have had (its selector's; its namespace's when the selector cannot
be read; the whole mesh when not even the namespace can).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.common.errors import FieldError

from .fields import known_fields, listing, mapping, match_labels, need, string, string_map
from .resource import Meta, Refusal, Resource, document_key

KIND = "AuthorizationPolicy"
ACTIONS = ("ALLOW", "DENY", "AUDIT")
DRY_RUN_ANNOTATION = "slipstream.dev/dry-run"
ISTIO_DRY_RUN_ANNOTATION = "istio.io/dry-run"
_ISTIO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_ISTIO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
"""What Istio's strconv.ParseBool reads in its dry-run annotation."""

SPEC_FIELDS = frozenset({"selector", "action", "rules", "provider", "targetRef", "targetRefs"})
MAX_RULES = 512
MAX_FROM = 512
MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LEN = 320
"""Istio's CRD limits (rules, from: maxItems 512; serviceAccounts: 16 of at most 320 chars).
They also bound the work one policy can make an agent do."""

SOURCE_IDENTITY = ("principals", "notPrincipals", "namespaces", "notNamespaces")
SOURCE_ACCOUNTS = ("serviceAccounts", "notServiceAccounts")
SOURCE_L4 = (
    *SOURCE_IDENTITY,
    "ipBlocks",
    "notIpBlocks",
    *SOURCE_ACCOUNTS,
    "trustDomains",
    "notTrustDomains",
)
SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
OPERATION_L4 = ("ports", "notPorts")
OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
WHEN_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "destination.ip",
    "destination.port",
)
SOURCE_FIELDS = frozenset(SOURCE_L4 + SOURCE_L7)
OPERATION_FIELDS = frozenset(OPERATION_L4 + OPERATION_L7)
RULE_FIELDS = frozenset({"from", "to", "when"})
CONDITION_FIELDS = frozenset({"key", "values", "notValues"})
WHEN_L7_KEYS = (
    "remote.ip",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "connection.sni",
)
WHEN_L7_MAP_PREFIXES = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")
"""Keys of the form `prefix[name]`."""
WHEN_REFUSED = {
    "destination.namespace": "is not a condition: the policy's metadata.namespace says it",
    "destination.name": "is not supported (it was Istio's v1alpha1)",
    "destination.user": "is not supported (it was Istio's v1alpha1)",
}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ServiceAccount = tuple[str, str]
"""(namespace, service account name)."""


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
    service_accounts: tuple[ServiceAccount, ...] = ()
    not_service_accounts: tuple[ServiceAccount, ...] = ()
    trust_domains: tuple[StringMatch, ...] = ()
    not_trust_domains: tuple[StringMatch, ...] = ()


@dataclass(frozen=True)
class Operation:
    ports: frozenset[int] = frozenset()
    not_ports: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Condition:
    key: str
    """One of WHEN_KEYS."""
    values: tuple[Any, ...]
    """StringMatch for principal, namespace and trust domain, ServiceAccount for service
    accounts, networks for IPs, ints for the port."""
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
    warnings: tuple[str, ...] = ()
    """`field: what was made of it`, for status and the log (a CIDR's host bits masked...)."""
    refused: Refusal | None = None
    """Set when the newest version did not validate. Without `fail_closed` this is the last
    good version, which keeps enforcing."""
    fail_closed: bool = False
    """No good version exists: the policy denies every connection in its scope (its action
    and rules are empty), until it is fixed or deleted."""

    @property
    def ref(self) -> str:
        """`namespace/name`, as decisions and status name a policy."""
        return f"{self.meta.namespace or '(any namespace)'}/{self.meta.name}"

    @property
    def l7_fields(self) -> tuple[str, ...]:
        return tuple(path for rule in self.rules for path in rule.l7)


# ---------------------------------------------------------------- parsing


def parse_authorization_policy(
    api_version: str, meta: Meta, body: Mapping[str, Any]
) -> AuthorizationPolicy:
    spec = mapping(body, "spec", "")
    known_fields(spec, SPEC_FIELDS, "spec")
    for key in ("targetRef", "targetRefs"):
        need(
            key not in spec,
            f"spec.{key}",
            "attaches the policy to a waypoint or gateway, which Slipstream does not have yet:"
            " no agent could enforce it (use a selector)",
        )
    action = string(spec, "action", "spec", default="ALLOW")
    need(
        action != "CUSTOM",
        "spec.action",
        "CUSTOM (external authorization) is not supported: no agent could enforce it",
    )
    need(action in ACTIONS, "spec.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    need("provider" not in spec, "spec.provider", "is only for action CUSTOM")
    raw_rules = listing(spec, "rules", "spec")
    need(
        len(raw_rules) <= MAX_RULES,
        "spec.rules",
        f"has {len(raw_rules)} rules, more than {MAX_RULES}",
    )
    need(
        action != "DENY" or bool(raw_rules),
        "spec.rules",
        "a DENY policy without rules would never match (Istio refuses it too);"
        " write `rules: [{}]` to deny every connection",
    )
    notes = _Notes(meta.namespace)
    rules = tuple(_rule(r, f"spec.rules[{i}]", notes) for i, r in enumerate(raw_rules))
    dry_run = _dry_run(meta.annotations, notes.warnings)
    return AuthorizationPolicy(
        api_version,
        KIND,
        meta,
        body,
        selector=match_labels(spec),
        action=action,
        rules=rules,
        dry_run=dry_run,
        warnings=tuple(notes.warnings),
    )


class _Notes:
    """What parsing one policy collects besides its rules."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        """The policy's own: a service account written without a namespace is in it."""
        self.warnings: list[str] = []


def _dry_run(annotations: Mapping[str, str], warnings: list[str]) -> bool:
    """Ours ("true"/"false", anything else refused) or Istio's (read as Istio reads it: a
    value that is not a boolean leaves the policy enforced). When both are set they must agree."""
    ours = annotations.get(DRY_RUN_ANNOTATION)
    if ours is not None:
        need(
            ours in ("true", "false"),
            f"metadata.annotations.{DRY_RUN_ANNOTATION}",
            f'{ours!r} must be "true" or "false"',
        )
    istio = annotations.get(ISTIO_DRY_RUN_ANNOTATION, "")
    theirs: bool | None = None
    if istio in _ISTIO_TRUE or istio in _ISTIO_FALSE:
        theirs = istio in _ISTIO_TRUE
    elif istio:
        warnings.append(
            f"metadata.annotations.{ISTIO_DRY_RUN_ANNOTATION}: {istio!r} is not a boolean:"
            " the policy is enforced (as Istio does)"
        )
    if ours is not None and theirs is not None:
        need(
            (ours == "true") == theirs,
            "metadata.annotations",
            f"{DRY_RUN_ANNOTATION} and {ISTIO_DRY_RUN_ANNOTATION} disagree",
        )
    return ours == "true" if ours is not None else bool(theirs)


def _wrapped(raw: Mapping[str, Any], key: str, inner: str, path: str) -> Iterator[tuple[Any, str]]:
    """The `key: [{inner: {...}}]` lists of a rule: each inner mapping with where it is
    (one at a time, so errors come in the order of the file)."""
    for i, item in enumerate(listing(raw, key, path)):
        where = f"{path}.{key}[{i}]"
        need(isinstance(item, dict), where, f"must be a mapping with {_a(inner)} {inner}")
        known_fields(item, {inner}, where)
        yield mapping(item, inner, where), f"{where}.{inner}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _rule(raw: Any, path: str, notes: _Notes) -> Rule:
    need(isinstance(raw, dict), path, "must be a mapping with from, to and when")
    known_fields(raw, RULE_FIELDS, path)
    for key, what in (("from", "source"), ("to", "operation")):
        # Istio's validator refuses these: read as "no `from`", an empty list would let any
        # source in (and an empty `to` any port).
        need(
            raw.get(key) != [],
            f"{path}.{key}",
            f"must not be empty (it would read as any {what}): remove it, or list at least one",
        )
    need(
        len(listing(raw, "from", path)) <= MAX_FROM,
        f"{path}.from",
        f"has more than {MAX_FROM} entries",
    )
    l7: list[str] = []
    sources = [
        _source(body, where, l7, notes) for body, where in _wrapped(raw, "from", "source", path)
    ]
    operations = [
        _operation(body, where, l7) for body, where in _wrapped(raw, "to", "operation", path)
    ]
    conditions = []
    for i, item in enumerate(listing(raw, "when", path)):
        cond = _condition(item, f"{path}.when[{i}]", l7, notes)
        if cond is not None:
            conditions.append(cond)
    return Rule(tuple(sources), tuple(operations), tuple(conditions), tuple(l7))


def _nothing_set(raw: Mapping[str, Any], fields: tuple[str, ...], path: str, what: str) -> None:
    """Refuse a source or operation whose lists are all absent or empty: it would match
    everything. Name the empty list when there is one (`principals: []`). (Every key of
    `raw` is one of `fields`: known_fields has checked.)"""
    if any(listing(raw, k, path) for k in raw):
        return
    empty = [k for k in fields if k in raw]
    if empty:
        raise FieldError(
            f"{path}.{empty[0]}",
            f"is empty, and nothing else in this {what} is set: it would match any {what}"
            " (Istio refuses an empty one too)",
        )
    raise FieldError(path, f"is empty: name at least one of {', '.join(fields)}")


def _source(raw: Mapping[str, Any], path: str, l7: list[str], notes: _Notes) -> Source:
    known_fields(raw, SOURCE_FIELDS, path)
    _nothing_set(raw, SOURCE_L4 + SOURCE_L7, path, "source")
    accounts = [k for k in SOURCE_ACCOUNTS if k in raw]
    identity = [k for k in SOURCE_IDENTITY if k in raw]
    if accounts and identity:
        raise FieldError(
            f"{path}.{accounts[0]}",
            f"cannot be set with {identity[0]} (Istio refuses both together too)",
        )
    fields: dict[str, Any] = {}
    for key in raw:  # only what is there: most sources name one or two fields
        attr, read = _SOURCE_READERS[key]
        value = read(raw, key, path, notes)
        if attr:
            fields[attr] = value
        elif value:
            l7.append(f"{path}.{key}")
    return Source(**fields)


def _operation(raw: Mapping[str, Any], path: str, l7: list[str]) -> Operation:
    known_fields(raw, OPERATION_FIELDS, path)
    _nothing_set(raw, OPERATION_L4 + OPERATION_L7, path, "operation")
    for key in OPERATION_L7:
        if listing(raw, key, path):
            l7.append(f"{path}.{key}")
            for where, v in _strings(raw, key, path):
                if key in ("paths", "notPaths"):
                    _path_template(v, where)
    return Operation(
        ports=frozenset(_ports(raw, "ports", path)),
        not_ports=frozenset(_ports(raw, "notPorts", path)),
    )


def _condition(raw: Any, path: str, l7: list[str], notes: _Notes) -> Condition | None:
    need(isinstance(raw, dict), path, "must be a mapping with key and values")
    known_fields(raw, CONDITION_FIELDS, path)
    key = string(raw, "key", path, required=True)
    need(key != "", f"{path}.key", "must not be empty")
    if not (listing(raw, "values", path) or listing(raw, "notValues", path)):
        empty = [k for k in ("values", "notValues") if k in raw]
        raise FieldError(
            f"{path}.{empty[0]}" if empty else path,
            f"needs values or notValues, with at least one value: a condition on {key}"
            " with none would hold for everything (Istio refuses it too)",
        )
    if key in WHEN_KEYS:
        return _l4_condition(raw, key, path, notes)
    if key in WHEN_L7_KEYS or key.startswith(WHEN_L7_MAP_PREFIXES):
        if key.startswith(WHEN_L7_MAP_PREFIXES):
            open_at = key.find("[")
            need(
                key.endswith("]") and 0 < open_at < len(key) - 2,
                f"{path}.key",
                f"{key!r} must name what it reads, as in request.headers[x-user]",
            )
        for field in ("values", "notValues"):
            if key == "remote.ip":
                _networks(raw, field, path, notes)
            else:
                _strings(raw, field, path)
        l7.append(f"{path}.key={key}")
        return None
    if key.startswith("destination.labels"):
        raise FieldError(f"{path}.key", f"{key!r} is not a condition: the selector says it")
    if key in WHEN_REFUSED:
        raise FieldError(f"{path}.key", f"{key!r} {WHEN_REFUSED[key]}")
    raise FieldError(
        f"{path}.key",
        f"{key!r} is not a condition key (L4 keys: {', '.join(WHEN_KEYS)})",
    )


def _l4_condition(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> Condition:
    if key in ("source.ip", "destination.ip"):
        return Condition(
            key, _networks(raw, "values", path, notes), _networks(raw, "notValues", path, notes)
        )
    if key == "destination.port":
        return Condition(key, _ports(raw, "values", path), _ports(raw, "notValues", path))
    if key == "source.serviceAccount":
        return Condition(
            key,
            _service_accounts(raw, "values", path, notes),
            _service_accounts(raw, "notValues", path, notes),
        )
    if key == "source.trustDomain":
        return Condition(
            key, _trust_domains(raw, "values", path), _trust_domains(raw, "notValues", path)
        )
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
            # Istio accepts it and then matches nothing (it adds spiffe:// itself): a DENY
            # written this way would silently deny nothing.
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
    # Istio reads a '*' anywhere else as a literal '*', which no identity contains.
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


def _trust_domains(raw: Mapping[str, Any], key: str, path: str) -> tuple[StringMatch, ...]:
    out = []
    for where, v in _strings(raw, key, path):
        need("/" not in v, where, f"{v!r}: a trust domain has no '/'")
        out.append(_string_match(v, where))
    return tuple(out)


def _service_accounts(
    raw: Mapping[str, Any], key: str, path: str, notes: _Notes
) -> tuple[ServiceAccount, ...]:
    """`name` (in the policy's namespace) or `namespace/name`, exact (Istio's rules)."""
    entries = _strings(raw, key, path)
    need(
        len(entries) <= MAX_SERVICE_ACCOUNTS,
        f"{path}.{key}",
        f"has {len(entries)} entries, more than {MAX_SERVICE_ACCOUNTS}",
    )
    out = []
    for where, v in entries:
        need(len(v) <= MAX_SERVICE_ACCOUNT_LEN, where, "is longer than 320 characters")
        need("*" not in v, where, f"{v!r}: service accounts take no wildcard")
        ns, sep, name = v.rpartition("/")
        need(
            v.count("/") <= 1 and bool(name) and (not sep or bool(ns)),
            where,
            f"{v!r} is not SERVICEACCOUNT or NAMESPACE/SERVICEACCOUNT",
        )
        out.append((ns if sep else notes.namespace, name))
    return tuple(out)


def _networks(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> tuple[IPNetwork, ...]:
    """Addresses and CIDR blocks as Istio reads them: a block's host bits are masked
    (10.0.0.7/24 is 10.0.0.0/24), noted as a warning."""
    out = []
    for where, v in _strings(raw, key, path):
        addr, slash, bits = v.partition("/")
        try:
            ip = ipaddress.ip_address(addr)
            if not slash:
                out.append(ipaddress.ip_network(ip))
                continue
            # Go's netip.ParsePrefix: decimal bits, no sign or leading zero, no IPv6 zone.
            if not (bits.isascii() and bits.isdigit() and (bits == "0" or bits[0] != "0")):
                raise ValueError(bits)
            if "%" in addr:
                raise ValueError(addr)
            net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
        except ValueError as exc:
            raise FieldError(where, f"{v!r} is not an IP address or CIDR block") from exc
        if net.network_address != ip:
            notes.warnings.append(f"{where}: {v!r} has host bits set: read as {net}")
        out.append(net)
    return tuple(out)


def _ports(raw: Mapping[str, Any], key: str, path: str) -> tuple[int, ...]:
    """0-65535, as numbers or decimal strings (Istio's ParseUint)."""
    out = []
    for i, v in enumerate(listing(raw, key, path)):
        where = f"{path}.{key}[{i}]"
        if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 10:
            v = int(v)
        need(
            isinstance(v, int) and not isinstance(v, bool),
            where,
            f"{v!r} is not a port number",
        )
        need(0 <= v <= 65535, where, f"{v} is not a port number (0-65535)")
        out.append(v)
    return tuple(out)


def _path_template(path: str, where: str) -> None:
    """Istio's check of `{*}` and `{**}` path templates (the field is HTTP-only here, but
    what Istio refuses is refused)."""
    templated = "{*}" in path or "{**}" in path
    seen_any = False
    for glob in path.strip("/").split("/"):
        if glob in ("{*}", "{**}"):
            need(not seen_any, where, f"{path!r}: {{**}} must be the last operator")
            seen_any = glob == "{**}"
            continue
        need(not set(glob) & set("{}"), where, f"{path!r}: '{{' or '}}' outside a template")
        need(
            not templated or _LITERAL.fullmatch(glob) is not None,
            where,
            f"{path!r}: segment {glob!r} is not a valid literal",
        )


_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")
"""RFC 3986 pchar, as Istio checks the literal segments of a templated path."""


def _read_principals(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> Any:
    return _matches(raw, key, path, principal=True)


def _read_names(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> Any:
    return _matches(raw, key, path)


def _read_domains(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> Any:
    return _trust_domains(raw, key, path)


def _read_strings(raw: Mapping[str, Any], key: str, path: str, notes: _Notes) -> Any:
    return _strings(raw, key, path)


_Reader = Any  # (raw, key, path, notes) -> the field's value
_SOURCE_READERS: dict[str, tuple[str, _Reader]] = {
    "principals": ("principals", _read_principals),
    "notPrincipals": ("not_principals", _read_principals),
    "namespaces": ("namespaces", _read_names),
    "notNamespaces": ("not_namespaces", _read_names),
    "ipBlocks": ("ip_blocks", _networks),
    "notIpBlocks": ("not_ip_blocks", _networks),
    "serviceAccounts": ("service_accounts", _service_accounts),
    "notServiceAccounts": ("not_service_accounts", _service_accounts),
    "trustDomains": ("trust_domains", _read_domains),
    "notTrustDomains": ("not_trust_domains", _read_domains),
    # HTTP-only: validated, then noted in Rule.l7 (attribute "").
    "requestPrincipals": ("", _read_strings),
    "notRequestPrincipals": ("", _read_strings),
    "remoteIpBlocks": ("", _networks),
    "notRemoteIpBlocks": ("", _networks),
}
"""Each source field: the Source attribute it fills, and how it is read."""


# ---------------------------------------------------------------- refused versions


def refused_policy(
    body: Any, error: FieldError, previous: Resource | None, where: str = "", document: str = ""
) -> AuthorizationPolicy:
    """What enforces in place of a version that did not validate: `previous` (the last
    good version) with the refusal noted, or else a fail-closed stand-in for its scope.
    `where` is where the error is, `document` which document it is (see `document_key`)."""
    refusal = Refusal(error.field, error.reason, where)
    if isinstance(previous, AuthorizationPolicy) and not previous.fail_closed:
        return replace(previous, refused=refusal)
    key = document_key(body, KIND, document or where)
    b: dict[str, Any] = body if isinstance(body, dict) else {}
    meta = b.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    annotations: Mapping[str, str] = {}
    notes: list[str] = []
    try:
        annotations = string_map(meta, "annotations", "metadata", labels=False)
        dry_run = _dry_run(annotations, [])
    except FieldError:
        dry_run = False
    spec = b.get("spec")
    selector: Mapping[str, str] | None = None
    try:
        need(spec is None or isinstance(spec, dict), "spec", "is not a mapping")
        selector = match_labels(spec or {})
    except FieldError:
        notes.append("spec.selector: cannot be read, so the policy covers its whole namespace")
    if not key.namespace:
        notes.append("metadata.namespace: cannot be read, so the policy covers the whole mesh")
    api_version = b.get("apiVersion")
    return AuthorizationPolicy(
        api_version if isinstance(api_version, str) else "",
        KIND,
        Meta(key.name, key.namespace, {}, annotations),
        b,
        selector=selector,
        action="",
        rules=(),
        dry_run=dry_run,
        warnings=tuple(notes),
        refused=refusal,
        fail_closed=True,
    )
