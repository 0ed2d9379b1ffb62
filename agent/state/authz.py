"""AuthorizationPolicy (ours or Istio's): its model, and what stands in for one that does
not validate (evaluated in policy.authz).

`AuthorizationPolicySpec` is the one definition of the kind: validation, the typed rules
the evaluator reads (a principal is already a `StringMatch`, an IP block a network), and
the OpenAPI schema of its CRD (agent/tools/crds.py) all come from it. Every field of
Istio's schema is declared, also those refused here (targetRef(s), provider, CUSTOM),
so that a CRD made from the model prunes nothing: a refused policy fails closed with a
reason rather than losing a field silently on its way through the API server.

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
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.common.errors import FieldError
from agent.common.schema import Model, Str, invalid, parse

from .resource import (
    Annotations,
    LabelSelector,
    Meta,
    Refusal,
    Resource,
    document_key,
    selector_of,
    stand_in_meta,
)

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


# ---------------------------------------------------------------- values


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if value == "":
        raise ValueError("must not be empty")
    return value


def _string_match(value: Any) -> StringMatch:
    v = _text(value)
    if v == "*":
        return StringMatch("any", "")
    inner = v.strip("*")
    # Istio reads a '*' anywhere else as a literal '*', which no identity contains.
    if "*" in inner or v.count("*") > 1:
        raise ValueError(f"{v!r}: a wildcard may only stand at one end")
    if v.startswith("*"):
        return StringMatch("suffix", inner)
    if v.endswith("*"):
        return StringMatch("prefix", inner)
    return StringMatch("exact", v)


def _principal(value: Any) -> StringMatch:
    # Istio accepts it and then matches nothing (it adds spiffe:// itself): a DENY
    # written this way would silently deny nothing.
    if isinstance(value, str) and value.startswith("spiffe://"):
        raise ValueError(f"write principals without spiffe:// ({value.removeprefix('spiffe://')})")
    return _string_match(value)


def _trust_domain(value: Any) -> StringMatch:
    if isinstance(value, str) and "/" in value:
        raise ValueError(f"{value!r}: a trust domain has no '/'")
    return _string_match(value)


def _service_account(value: Any, info: ValidationInfo) -> ServiceAccount:
    """`name` (in the policy's namespace: `namespace` in the context) or `namespace/name`,
    exact (Istio's rules)."""
    v = _text(value)
    if len(v) > MAX_SERVICE_ACCOUNT_LEN:
        raise ValueError("is longer than 320 characters")
    if "*" in v:
        raise ValueError(f"{v!r}: service accounts take no wildcard")
    ns, sep, name = v.rpartition("/")
    if v.count("/") > 1 or not name or (sep and not ns):
        raise ValueError(f"{v!r} is not SERVICEACCOUNT or NAMESPACE/SERVICEACCOUNT")
    return (ns, name) if sep else ((info.context or {}).get("namespace", ""), name)


def _network(value: Any) -> IPNetwork:
    """An address or CIDR block as Istio reads it: a block's host bits are masked
    (10.0.0.7/24 is 10.0.0.0/24; `host_bit_warnings` says so)."""
    v = _text(value)
    addr, slash, bits = v.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
        if not slash:
            return ipaddress.ip_network(ip)
        # Go's netip.ParsePrefix: decimal bits, no sign or leading zero, no IPv6 zone.
        if not (bits.isascii() and bits.isdigit() and (bits == "0" or bits[0] != "0")):
            raise ValueError(bits)
        if "%" in addr:
            raise ValueError(addr)
        return ipaddress.ip_network(f"{addr}/{bits}", strict=False)
    except ValueError as exc:
        raise ValueError(f"{v!r} is not an IP address or CIDR block") from exc


def _port(value: Any) -> int:
    """0-65535, as numbers or decimal strings (Istio's ParseUint)."""
    v = value
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 10:
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a port number")
    if not 0 <= v <= 65535:
        raise ValueError(f"{v} is not a port number (0-65535)")
    return v


def _http_path(value: Any) -> str:
    v = _text(value)
    _path_template(v)
    return v


_STRING = WithJsonSchema({"type": "string"})
_INT_OR_STRING = WithJsonSchema({"x-kubernetes-int-or-string": True})
Principal = Annotated[StringMatch, PlainValidator(_principal), _STRING]
Name = Annotated[StringMatch, PlainValidator(_string_match), _STRING]
TrustDomain = Annotated[StringMatch, PlainValidator(_trust_domain), _STRING]
Account = Annotated[
    ServiceAccount,
    PlainValidator(_service_account),
    WithJsonSchema({"type": "string", "maxLength": MAX_SERVICE_ACCOUNT_LEN}),
]
Network = Annotated[IPNetwork, PlainValidator(_network), _STRING]
PortValue = Annotated[int, PlainValidator(_port), _INT_OR_STRING]
Text = Annotated[str, PlainValidator(_text), _STRING]
HttpPath = Annotated[str, PlainValidator(_http_path), _STRING]


# ---------------------------------------------------------------- the model


class _Matcher(Model):
    """A source or an operation: lists of which at least one must name something, or it
    would match everything (Istio refuses an empty one too)."""

    def _something_set(self, what: str) -> None:
        if any(self.__dict__.values()):  # the fields' values (all of them lists)
            return
        fields = type(self).model_fields
        written = [fields[n].alias or n for n in fields if n in self.model_fields_set]
        if written:
            raise invalid(
                f"is empty, and nothing else in this {what} is set: it would match any {what}"
                " (Istio refuses an empty one too)",
                written[0],
            )
        names = ", ".join(fields[n].alias or n for n in fields)
        raise ValueError(f"is empty: name at least one of {names}")


class Source(_Matcher):
    principals: tuple[Principal, ...] = ()
    not_principals: tuple[Principal, ...] = ()
    namespaces: tuple[Name, ...] = ()
    not_namespaces: tuple[Name, ...] = ()
    ip_blocks: tuple[Network, ...] = ()
    not_ip_blocks: tuple[Network, ...] = ()
    service_accounts: tuple[Account, ...] = Field((), json_schema_extra={"maxItems": 16})
    not_service_accounts: tuple[Account, ...] = Field((), json_schema_extra={"maxItems": 16})
    trust_domains: tuple[TrustDomain, ...] = ()
    not_trust_domains: tuple[TrustDomain, ...] = ()
    # HTTP-only: validated, then named in Rule.l7.
    request_principals: tuple[Text, ...] = ()
    not_request_principals: tuple[Text, ...] = ()
    remote_ip_blocks: tuple[Network, ...] = ()
    not_remote_ip_blocks: tuple[Network, ...] = ()

    @field_validator("service_accounts", "not_service_accounts", mode="before")
    @classmethod
    def _few_accounts(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) > MAX_SERVICE_ACCOUNTS:
            raise ValueError(f"has {len(value)} entries, more than {MAX_SERVICE_ACCOUNTS}")
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> Source:
        self._something_set("source")
        written = self.model_fields_set
        accounts = [k for k in SOURCE_ACCOUNTS if _snake(k) in written]
        identity = accounts and [k for k in SOURCE_IDENTITY if _snake(k) in written]
        if accounts and identity:
            raise invalid(
                f"cannot be set with {identity[0]} (Istio refuses both together too)",
                accounts[0],
            )
        return self

    @property
    def l7(self) -> tuple[str, ...]:
        return tuple(k for k in SOURCE_L7 if getattr(self, _snake(k)))


class Operation(_Matcher):
    ports: tuple[PortValue, ...] = ()
    not_ports: tuple[PortValue, ...] = ()
    # HTTP-only: validated, then named in Rule.l7.
    hosts: tuple[Text, ...] = ()
    not_hosts: tuple[Text, ...] = ()
    methods: tuple[Text, ...] = ()
    not_methods: tuple[Text, ...] = ()
    paths: tuple[HttpPath, ...] = ()
    not_paths: tuple[HttpPath, ...] = ()

    @model_validator(mode="after")
    def _meaningful(self) -> Operation:
        self._something_set("operation")
        return self

    @property
    def l7(self) -> tuple[str, ...]:
        return tuple(k for k in OPERATION_L7 if getattr(self, _snake(k)))


def _condition_value(value: Any, info: ValidationInfo) -> Any:
    """A value of `when[]`, read as its key says (a key that did not validate: as text)."""
    key = info.data.get("key")
    if key in ("source.ip", "destination.ip", "remote.ip"):
        return _network(value)
    if key == "destination.port":
        return _port(value)
    if key == "source.serviceAccount":
        return _service_account(value, info)
    if key == "source.trustDomain":
        return _trust_domain(value)
    if key == "source.principal":
        return _principal(value)
    if key in ("source.namespace",):
        return _string_match(value)
    return _text(value)


ConditionValue = Annotated[Any, PlainValidator(_condition_value), _STRING]


def _condition_key(key: Any) -> str:
    key = _text(key) if key != "" else key
    if key == "":
        raise ValueError("must not be empty")
    if key in WHEN_KEYS or key in WHEN_L7_KEYS:
        return key
    if key.startswith(WHEN_L7_MAP_PREFIXES):
        open_at = key.find("[")
        if not (key.endswith("]") and 0 < open_at < len(key) - 2):
            raise ValueError(f"{key!r} must name what it reads, as in request.headers[x-user]")
        return key
    if key.startswith("destination.labels"):
        raise ValueError(f"{key!r} is not a condition: the selector says it")
    if key in WHEN_REFUSED:
        raise ValueError(f"{key!r} {WHEN_REFUSED[key]}")
    raise ValueError(f"{key!r} is not a condition key (L4 keys: {', '.join(WHEN_KEYS)})")


class Condition(Model):
    key: Annotated[str, PlainValidator(_condition_key), _STRING]
    """One of WHEN_KEYS, or an HTTP-only key (kept, named in Rule.l7, matched by nothing)."""
    values: tuple[ConditionValue, ...] = ()
    """StringMatch for principal, namespace and trust domain, ServiceAccount for service
    accounts, networks for IPs, ints for the port."""
    not_values: tuple[ConditionValue, ...] = ()

    @model_validator(mode="after")
    def _some_value(self) -> Condition:
        if not (self.values or self.not_values):
            written = [k for k in ("values", "not_values") if k in self.model_fields_set]
            raise invalid(
                f"needs values or notValues, with at least one value: a condition on {self.key}"
                " with none would hold for everything (Istio refuses it too)",
                *([{"values": "values", "not_values": "notValues"}[written[0]]] if written else []),
            )
        return self


class From(Model):
    source: Source | None = Field(None, validate_default=True)

    @field_validator("source")
    @classmethod
    def _given(cls, source: Source | None) -> Source | None:
        if source is None:
            raise ValueError(f"is empty: name at least one of {', '.join(SOURCE_L4 + SOURCE_L7)}")
        return source


class To(Model):
    operation: Operation | None = Field(None, validate_default=True)

    @field_validator("operation")
    @classmethod
    def _given(cls, op: Operation | None) -> Operation | None:
        if op is None:
            names = ", ".join(OPERATION_L4 + OPERATION_L7)
            raise ValueError(f"is empty: name at least one of {names}")
        return op


def _not_empty(what: str) -> Any:
    def check(value: Any) -> Any:
        # Istio's validator refuses these: read as "no `from`", an empty list would let any
        # source in (and an empty `to` any port).
        if value == []:
            raise ValueError(
                f"must not be empty (it would read as any {what}): remove it, or list at least one"
            )
        if isinstance(value, list) and len(value) > MAX_FROM:
            raise ValueError(f"has more than {MAX_FROM} entries")
        return value

    return check


class Rule(Model):
    from_: Annotated[tuple[From, ...], BeforeValidator(_not_empty("source"))] = Field(
        (), alias="from", json_schema_extra={"maxItems": MAX_FROM}
    )
    to: Annotated[tuple[To, ...], BeforeValidator(_not_empty("operation"))] = ()
    when: tuple[Condition, ...] = ()

    @property
    def sources(self) -> tuple[Source, ...]:
        """Any of them (none: any source)."""
        return tuple(f.source for f in self.from_ if f.source is not None)

    @property
    def operations(self) -> tuple[Operation, ...]:
        """Any of them (none: any port)."""
        return tuple(t.operation for t in self.to if t.operation is not None)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """All of them (the L4 ones: the others are named in `l7`)."""
        return tuple(c for c in self.when if c.key in WHEN_KEYS)

    @property
    def l7(self) -> tuple[str, ...]:
        """Where the rule uses HTTP-only fields, below the rule (`from[0].source.paths`,
        `when[1].key=request.headers[x]`); they take no part in matching."""
        return (
            *(f"from[{i}].source.{k}" for i, s in enumerate(self.sources) for k in s.l7),
            *(f"to[{i}].operation.{k}" for i, o in enumerate(self.operations) for k in o.l7),
            *(f"when[{i}].key={c.key}" for i, c in enumerate(self.when) if c.key not in WHEN_KEYS),
        )


class TargetRef(Model):
    group: Str = ""
    kind: Str
    name: Str
    namespace: Str = ""


class Provider(Model):
    name: Str = ""


_WAYPOINT = (
    "attaches the policy to a waypoint or gateway, which Slipstream does not have yet:"
    " no agent could enforce it (use a selector)"
)


def _action(value: Any) -> Any:
    if value == "CUSTOM":
        raise ValueError(
            "CUSTOM (external authorization) is not supported: no agent could enforce it"
        )
    if value not in ACTIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(ACTIONS)}")
    return value


def _refused(reason: str) -> Any:
    def refuse(value: Any) -> Any:
        raise ValueError(reason)

    return refuse


class AuthorizationPolicySpec(Model):
    """Istio's AuthorizationPolicy spec (security.istio.io v1 and v1beta1), validated as
    Istio's validator does, with the deliberate differences the module docstring names."""

    selector: LabelSelector | None = None
    """matchLabels; None: every workload of the namespace (of the mesh, in the root namespace)."""
    target_ref: Annotated[TargetRef | None, BeforeValidator(_refused(_WAYPOINT))] = None
    target_refs: Annotated[tuple[TargetRef, ...], BeforeValidator(_refused(_WAYPOINT))] = ()
    action: Annotated[
        str,
        BeforeValidator(_action),
        WithJsonSchema({"type": "string", "enum": [*ACTIONS, "CUSTOM"]}),
    ] = "ALLOW"
    provider: Annotated[Provider | None, BeforeValidator(_refused("is only for action CUSTOM"))] = (
        None
    )
    rules: tuple[Rule, ...] = Field((), json_schema_extra={"maxItems": MAX_RULES})

    @field_validator("rules", mode="before")
    @classmethod
    def _few_rules(cls, rules: Any) -> Any:
        if isinstance(rules, list) and len(rules) > MAX_RULES:
            raise ValueError(f"has {len(rules)} rules, more than {MAX_RULES}")
        return rules

    @model_validator(mode="after")
    def _deny_matches_something(self) -> AuthorizationPolicySpec:
        if self.action == "DENY" and not self.rules:
            raise invalid(
                "a DENY policy without rules would never match (Istio refuses it too);"
                " write `rules: [{}]` to deny every connection",
                "rules",
            )
        return self


_SNAKE = {
    k: re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)
    for k in (*SOURCE_L4, *SOURCE_L7, *OPERATION_L4, *OPERATION_L7)
}


def _snake(camel: str) -> str:
    return _SNAKE[camel]


@dataclass(frozen=True)
class AuthorizationPolicy(Resource):
    spec: AuthorizationPolicySpec
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
    def selector(self) -> Mapping[str, str] | None:
        """matchLabels; None: every workload of the namespace (of the mesh, in the root
        namespace)."""
        return selector_of(self.spec)

    @property
    def action(self) -> str:
        return self.spec.action

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.spec.rules

    @property
    def ref(self) -> str:
        """`namespace/name`, as decisions and status name a policy."""
        return f"{self.meta.namespace or '(any namespace)'}/{self.meta.name}"

    @property
    def l7_fields(self) -> tuple[str, ...]:
        return tuple(f"spec.rules[{i}].{path}" for i, r in enumerate(self.rules) for path in r.l7)


# ---------------------------------------------------------------- parsing


def parse_authorization_policy(
    api_version: str, meta: Meta, body: Mapping[str, Any]
) -> AuthorizationPolicy:
    raw = body.get("spec")
    spec = parse(
        AuthorizationPolicySpec, {} if raw is None else raw, "spec", {"namespace": meta.namespace}
    )
    warnings = list(host_bit_warnings({} if raw is None else raw))
    dry_run = _dry_run(meta.annotations, warnings)
    return AuthorizationPolicy(
        api_version, KIND, meta, body, spec, dry_run=dry_run, warnings=tuple(warnings)
    )


def host_bit_warnings(spec: Mapping[str, Any]) -> Iterator[str]:
    """A warning for each CIDR block of a validated `spec` (as written: the typed one has
    lost them) with host bits set, read with them masked."""
    for i, rule in enumerate(spec.get("rules") or ()):
        path = f"spec.rules[{i}]"
        for j, item in enumerate(rule.get("from") or ()):
            source = item.get("source") or {}
            for key in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                yield from _host_bits(source.get(key), f"{path}.from[{j}].source.{key}")
        for j, cond in enumerate(rule.get("when") or ()):
            if cond.get("key") in ("source.ip", "destination.ip", "remote.ip"):
                for key in ("values", "notValues"):
                    yield from _host_bits(cond.get(key), f"{path}.when[{j}].{key}")


def _host_bits(values: Any, path: str) -> Iterator[str]:
    for k, v in enumerate(values or ()):
        net = _network(v)
        if "/" in v and net.network_address != ipaddress.ip_address(v.partition("/")[0]):
            yield f"{path}[{k}]: {v!r} has host bits set: read as {net}"


def _dry_run(annotations: Mapping[str, str], warnings: list[str]) -> bool:
    """Ours ("true"/"false", anything else refused) or Istio's (read as Istio reads it: a
    value that is not a boolean leaves the policy enforced). When both are set they must agree."""
    ours = annotations.get(DRY_RUN_ANNOTATION)
    if ours is not None and ours not in ("true", "false"):
        raise FieldError(
            f"metadata.annotations.{DRY_RUN_ANNOTATION}", f'{ours!r} must be "true" or "false"'
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
    if ours is not None and theirs is not None and (ours == "true") != theirs:
        raise FieldError(
            "metadata.annotations", f"{DRY_RUN_ANNOTATION} and {ISTIO_DRY_RUN_ANNOTATION} disagree"
        )
    return ours == "true" if ours is not None else bool(theirs)


def _path_template(path: str) -> None:
    """Istio's check of `{*}` and `{**}` path templates (the field is HTTP-only here, but
    what Istio refuses is refused)."""
    templated = "{*}" in path or "{**}" in path
    seen_any = False
    for glob in path.strip("/").split("/"):
        if glob in ("{*}", "{**}"):
            if seen_any:
                raise ValueError(f"{path!r}: {{**}} must be the last operator")
            seen_any = glob == "{**}"
            continue
        if set(glob) & set("{}"):
            raise ValueError(f"{path!r}: '{{' or '}}' outside a template")
        if templated and _LITERAL.fullmatch(glob) is None:
            raise ValueError(f"{path!r}: segment {glob!r} is not a valid literal")


_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")
"""RFC 3986 pchar, as Istio checks the literal segments of a templated path."""


# ---------------------------------------------------------------- refused versions


class _Annotated(Model):
    """What a stand-in reads of a refused version's metadata."""

    model_config = ConfigDict(extra="ignore")

    annotations: Annotations = {}


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
        annotations = parse(_Annotated, meta, "metadata").annotations
        dry_run = _dry_run(annotations, [])
    except FieldError:
        dry_run = False
    spec = b.get("spec")
    selector: LabelSelector | None = None
    try:
        if not (spec is None or isinstance(spec, dict)):
            raise FieldError("spec", "is not a mapping")
        raw = (spec or {}).get("selector")
        selector = None if raw is None else parse(LabelSelector, raw, "spec.selector")
    except FieldError:
        notes.append("spec.selector: cannot be read, so the policy covers its whole namespace")
    if not key.namespace:
        notes.append("metadata.namespace: cannot be read, so the policy covers the whole mesh")
    api_version = b.get("apiVersion")
    return AuthorizationPolicy(
        api_version if isinstance(api_version, str) else "",
        KIND,
        stand_in_meta(key.name, key.namespace, annotations),
        b,
        AuthorizationPolicySpec.model_construct(selector=selector, action="", rules=()),
        dry_run=dry_run,
        warnings=tuple(notes),
        refused=refusal,
        fail_closed=True,
    )
