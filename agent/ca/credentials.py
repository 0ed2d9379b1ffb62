"""Who is asking the CA: credentials, and the authenticators that check them.

The shape is Istio's (security/pkg/server/ca/authenticate): each request carries a
bearer token; an `Authenticator` turns it into a `Caller` or does not know it;
what the caller may have signed is decided afterwards (`authority.authorize`).
Three kinds of caller:

  node      a node agent. It may get the identity of any service account with a pod on
            its node: Istio's ztunnel impersonation, checked by its node authorizer.
  workload  one service account (optionally one pod of it). It gets only that identity,
            and only while such a pod exists: the gateway, later the waypoint. On
            Kubernetes this caller comes from the pod's projected service-account token
            checked with a TokenReview, an `Authenticator` of its own behind this same
            interface (Istio's KubeJWTAuthenticator), and the bound pod comes from the
            token's claims.
  admin     reads the issuance log; has nothing signed.

A Kubernetes authenticator (next) reviews the token (TokenReview, audience-bound) and
returns a node Caller when the token is the node agent's own service account's (the
node read from its bound pod, as Istio's trusted node accounts), a workload Caller
(namespace, service account, bound pod) for any other pod.

`CredentialFile` is the authenticator for credentials this CA minted itself (the lab, or
a machine without Kubernetes): one JSON file of records, each with the SHA-256 of its
token (the CA never stores a token), its subject, an expiry and a revocation time. The
CA re-reads the file whenever it changes (a stat per request), so a credential minted,
rotated or revoked with `slipstream ca token` counts at once, and a file that no longer
parses is reported and the last good one kept. Several valid credentials per subject are
allowed: that is how a credential is rotated without downtime (mint the new one, let its
holder re-read its token file, revoke or let expire the old one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from agent.common.errors import SlipstreamError
from agent.state.objects import DNS_LABEL, DNS_SUBDOMAIN

log = logging.getLogger("ca")

NODE = "node"
WORKLOAD = "workload"
ADMIN = "admin"
KINDS = (NODE, WORKLOAD, ADMIN)

TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,4096}$")
"""A bearer token as RFC 6750 writes it (b64token), of a sensible length: a Kubernetes
service-account JWT fits, and so do the tokens minted here."""


class CredentialError(SlipstreamError):
    """The credentials file cannot be read or changed; names the file and the record."""


class Unauthenticated(SlipstreamError):
    """The token is known but may not be used (expired, revoked): the reason says which."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. `credential` names it in logs, the issuance log and rate
    limits; the other fields say what it is (which of them apply depends on `kind`)."""

    credential: str
    kind: str
    node: str = ""
    namespace: str = ""
    service_account: str = ""
    pod: str = ""
    """A workload credential bound to one pod (the lab's, or a bound Kubernetes token)."""
    name: str = ""
    """An admin credential's name."""
    source: str = "ca"
    """Which authenticator knew it."""

    def describe(self) -> str:
        if self.kind == NODE:
            return f"node {self.node}"
        if self.kind == WORKLOAD:
            bound = f", pod {self.pod}" if self.pod else ""
            return f"workload {self.namespace}/{self.service_account}{bound}"
        return f"admin {self.name}"


class Authenticator(Protocol):
    """Turns a bearer token into a Caller. Returns None for a token it does not know (the
    next authenticator may); raises Unauthenticated for one it knows but refuses."""

    name: str

    async def authenticate(self, token: str) -> Caller | None: ...


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Credential:
    """One record of the credentials file."""

    id: str
    kind: str
    sha256: str
    created: dt.datetime
    expires: dt.datetime | None
    revoked: dt.datetime | None = None
    node: str = ""
    namespace: str = ""
    service_account: str = ""
    pod: str = ""
    name: str = ""

    def subject(self) -> str:
        return self.caller().describe()

    def caller(self) -> Caller:
        return Caller(
            self.id,
            self.kind,
            node=self.node,
            namespace=self.namespace,
            service_account=self.service_account,
            pod=self.pod,
            name=self.name,
            source="credentials file",
        )

    def state(self, now: dt.datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "valid"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.kind == NODE:
            out["node"] = self.node
        elif self.kind == WORKLOAD:
            out["namespace"] = self.namespace
            out["serviceAccount"] = self.service_account
            if self.pod:
                out["pod"] = self.pod
        else:
            out["name"] = self.name
        out["sha256"] = self.sha256
        out["created"] = _iso(self.created)
        out["expires"] = _iso(self.expires) if self.expires else None
        out["revoked"] = _iso(self.revoked) if self.revoked else None
        return out


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _time(raw: Any, where: str, optional: bool) -> dt.datetime | None:
    if raw is None and optional:
        return None
    if not isinstance(raw, str):
        raise CredentialError(f"{where}: expected an ISO-8601 time")
    try:
        t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CredentialError(f"{where}: {raw!r} is not an ISO-8601 time") from exc
    if t.tzinfo is None:
        raise CredentialError(f"{where}: {raw!r} has no time zone")
    return t


def _text(d: dict[str, Any], key: str, where: str, pattern: re.Pattern[str]) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not pattern.match(v):
        raise CredentialError(f"{where}.{key}: {v!r} is not a valid name")
    return v


def parse_record(d: Any, where: str) -> Credential:
    if not isinstance(d, dict):
        raise CredentialError(f"{where}: expected an object")
    kind = d.get("kind")
    if kind not in KINDS:
        raise CredentialError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    known = {"id", "kind", "sha256", "created", "expires", "revoked"} | {
        NODE: {"node"},
        WORKLOAD: {"namespace", "serviceAccount", "pod"},
        ADMIN: {"name"},
    }[kind]
    unknown = sorted(set(d) - known)
    if unknown:
        raise CredentialError(f"{where}.{unknown[0]}: unknown field for a {kind} credential")
    cid, digest = d.get("id"), d.get("sha256")
    if not isinstance(cid, str) or not re.fullmatch(r"[a-z0-9][-a-z0-9]{0,80}", cid):
        raise CredentialError(f"{where}.id: {cid!r} is not a credential id")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CredentialError(f"{where}.sha256: expected 64 lowercase hex digits")
    created = _time(d.get("created"), f"{where}.created", optional=False)
    assert created is not None
    fields: dict[str, str] = {}
    if kind == NODE:
        fields["node"] = _text(d, "node", where, DNS_LABEL)
    elif kind == WORKLOAD:
        fields["namespace"] = _text(d, "namespace", where, DNS_LABEL)
        fields["service_account"] = _text(d, "serviceAccount", where, DNS_SUBDOMAIN)
        if d.get("pod") is not None:
            fields["pod"] = _text(d, "pod", where, DNS_SUBDOMAIN)
    else:
        fields["name"] = _text(d, "name", where, DNS_SUBDOMAIN)
    return Credential(
        cid,
        kind,
        digest,
        created,
        _time(d.get("expires"), f"{where}.expires", optional=True),
        _time(d.get("revoked"), f"{where}.revoked", optional=True),
        **fields,
    )


def parse_file(text: str, path: str) -> list[Credential]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CredentialError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("credentials"), list):
        raise CredentialError(f'{path}: expected {{"credentials": [...]}}')
    records = [
        parse_record(r, f"{path}: credentials[{i}]") for i, r in enumerate(doc["credentials"])
    ]
    seen: dict[str, str] = {}
    for i, r in enumerate(records):
        for key in (r.id, r.sha256):
            if key in seen:
                raise CredentialError(
                    f"{path}: credentials[{i}]: {'id' if key == r.id else 'sha256'} is the same "
                    f"as credential {seen[key]}'s"
                )
            seen[key] = r.id
    return records


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ the authenticator


class CredentialFile:
    """The credentials this CA minted, re-read whenever the file changes."""

    name = "credentials file"

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Credential] = {}
        self.problem = ""
        """Why the file on disk is not the one in use (empty when it is)."""

    def load(self) -> None:
        """Read the file now; raises CredentialError (used at start: no last good one yet)."""
        stamp = self._stat()
        try:
            with open(self.path) as f:
                records = parse_file(f.read(), self.path)
        except OSError as exc:
            raise CredentialError(f"cannot read credentials {self.path}: {exc.strerror}") from exc
        self._by_digest = {r.sha256: r for r in records}
        self._stamp = stamp
        self.problem = ""

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Re-read the file if it changed; a bad new file keeps the last good records."""
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            self.load()
        except CredentialError as exc:
            self._stamp = stamp  # report once per change, not once per request
            self.problem = str(exc)
            log.error(
                "credentials file changed but cannot be used; keeping the last good one",
                extra={"error": str(exc)},
            )
            return
        log.info("credentials reloaded", extra={"credentials": len(self._by_digest)})

    def records(self) -> list[Credential]:
        self.refresh()
        return list(self._by_digest.values())

    async def authenticate(self, token: str) -> Caller | None:
        self.refresh()
        rec = self._by_digest.get(digest(token))
        if rec is None:
            return None
        now = dt.datetime.now(dt.UTC)
        if rec.revoked is not None:
            raise Unauthenticated(
                f"credential {rec.id} ({rec.subject()}) was revoked at {_iso(rec.revoked)}"
            )
        if rec.expires is not None and now >= rec.expires:
            raise Unauthenticated(
                f"credential {rec.id} ({rec.subject()}) expired at {_iso(rec.expires)}"
            )
        return rec.caller()


# ------------------------------------------------------------------ minting and revoking


@contextlib.contextmanager
def _locked(path: str) -> Iterator[list[Credential]]:
    """Read-modify-write the credentials file under a lock; the caller edits the list."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                records = parse_file(f.read(), path)
        except FileNotFoundError:
            records = []
        yield records
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"credentials": [r.to_json() for r in records]}, f, indent=1)
        os.replace(tmp, path)


def write_token(out: str, token: str) -> None:
    """Replace the token file in one step (0600): a holder re-reading it sees the old
    token or the new one, never a partial one."""
    tmp = f"{out}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, out)


def mint(
    path: str,
    kind: str,
    out: str,
    *,
    ttl: dt.timedelta | None,
    node: str = "",
    namespace: str = "",
    service_account: str = "",
    pod: str = "",
    name: str = "",
    now: dt.datetime | None = None,
) -> Credential:
    """A new credential: its record goes into `path`, the token itself into `out` (0600).
    `ttl` None: it never expires."""
    now = now or dt.datetime.now(dt.UTC)
    if kind not in KINDS:
        raise CredentialError(f"{kind!r} is not one of {', '.join(KINDS)}")
    if ttl is not None and ttl.total_seconds() <= 0:
        raise CredentialError(f"--ttl must be positive, not {ttl}")
    token = secrets.token_urlsafe(32)
    raw: dict[str, Any] = {"kind": kind}
    if kind == NODE:
        raw["node"], label = node, node
    elif kind == WORKLOAD:
        raw["namespace"], raw["serviceAccount"] = namespace, service_account
        if pod:
            raw["pod"] = pod
        label = f"{namespace}-{service_account}"
    else:
        raw["name"], label = name, name
    raw["id"] = (
        re.sub(r"[^-a-z0-9]", "-", f"{kind}-{label}")[:60].rstrip("-")
        + "-"
        + (secrets.token_hex(3))
    )
    raw["sha256"] = digest(token)
    raw["created"] = _iso(now)
    raw["expires"] = _iso(now + ttl) if ttl is not None else None
    record = parse_record(raw, "the new credential")
    with _locked(path) as records:
        records.append(record)
        write_token(out, token)
    return record


def revoke(path: str, ids: list[str], now: dt.datetime | None = None) -> list[Credential]:
    """Revoke credentials by id; unknown ids are an error naming them (nothing changes)."""
    now = now or dt.datetime.now(dt.UTC)
    with _locked(path) as records:
        known = {r.id for r in records}
        missing = [i for i in ids if i not in known]
        if missing:
            raise CredentialError(f"{path}: no credential {', '.join(missing)}")
        done = []
        for i, r in enumerate(records):
            if r.id in ids and r.revoked is None:
                records[i] = Credential(**{**r.__dict__, "revoked": now})
                done.append(records[i])
    return done


def load_records(path: str) -> list[Credential]:
    try:
        with open(path) as f:
            return parse_file(f.read(), path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CredentialError(f"cannot read credentials {path}: {exc.strerror}") from exc
