"""The CA's decisions and keys, without the network: roots, rotation, signing, authorization.

Roots live in a directory (a Kubernetes Secret later): `roots.json` lists them
with their state, and each has `<id>.key` (0600) and `<id>.crt`. A restart
reads the same roots. Rotation is staged so no connection fails:
  add       a new root joins the trust bundle, the old one keeps signing;
  activate  the new root signs; certificates from the old one stay trusted;
  retire    the old root leaves the bundle (once its certificates expired).
Agents refresh the bundle on every signing and periodically.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from agent.common.errors import SlipstreamError
from agent.identity.certs import (
    SpiffeId,
    ca_identity,
    cert_pem,
    generate_key,
    issue,
    key_pem,
    self_signed_root,
)
from agent.state import Snapshot
from agent.state.store import TERMINATED_PHASES

from .credentials import NODE, WORKLOAD, Caller

ACTIVE = "active"
TRUSTED = "trusted"
MAX_CSR_CHARS = 8192
"""A P-256 CSR is about 500 characters of PEM."""
MAX_REQUEST_TTL_S = 366 * 86400
"""Longer requested lives are refused (400), not capped: no caller has a reason to ask."""


class CAError(SlipstreamError):
    """The CA cannot do what was asked; `status` is the HTTP status to answer with,
    `headers` go with it (Retry-After), `caller` is who asked, once known (for the log)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})
        self.caller: Caller | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Root:
    id: str
    state: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


class RootStore:
    """The roots on disk. Only this class reads or writes private keys of roots."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.roots: list[Root] = []

    @property
    def _index(self) -> str:
        return os.path.join(self.directory, "roots.json")

    def load(self, create: bool = True) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if not os.path.exists(self._index):
            if not create:
                raise CAError(500, f"no roots in {self.directory}")
            self.roots = []
            self._new_root(ACTIVE)
            return
        try:
            with open(self._index) as f:
                entries = json.load(f)
            roots = []
            for e in entries:
                with open(os.path.join(self.directory, f"{e['id']}.key"), "rb") as f:
                    key = serialization.load_pem_private_key(f.read(), password=None)
                with open(os.path.join(self.directory, f"{e['id']}.crt"), "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise CAError(500, f"root {e['id']} is not an ECDSA key")
                roots.append(Root(e["id"], e["state"], key, cert))
        except (OSError, ValueError, KeyError) as exc:
            raise CAError(500, f"cannot read the roots in {self.directory}: {exc}") from exc
        if sum(r.state == ACTIVE for r in roots) != 1:
            raise CAError(500, f"{self._index}: exactly one root must be active")
        self.roots = roots

    def stamp(self) -> float:
        """Changes when the roots change (the server reloads on a new stamp)."""
        try:
            return os.stat(self._index).st_mtime
        except FileNotFoundError:
            return 0.0

    def _save(self) -> None:
        tmp = self._index + ".tmp"
        with open(tmp, "w") as f:
            json.dump([{"id": r.id, "state": r.state} for r in self.roots], f, indent=1)
        os.replace(tmp, self._index)

    def _new_root(self, state: str) -> Root:
        now = _utcnow()
        key = generate_key()
        rid = now.strftime("%Y%m%d%H%M%S") + "-" + os.urandom(3).hex()
        cert = self_signed_root(key, f"Slipstream root {rid}", now)
        key_path = os.path.join(self.directory, f"{rid}.key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem(key))
        with open(os.path.join(self.directory, f"{rid}.crt"), "w") as f:
            f.write(cert_pem(cert))
        root = Root(rid, state, key, cert)
        self.roots.append(root)
        self._save()
        return root

    def add(self) -> Root:
        """A new root, trusted but not yet signing."""
        return self._new_root(TRUSTED)

    def activate(self, rid: str) -> None:
        target = self._find(rid)
        for r in self.roots:
            if r.state == ACTIVE:
                r.state = TRUSTED
        target.state = ACTIVE
        self._save()

    def retire(self, rid: str) -> None:
        target = self._find(rid)
        if target.state == ACTIVE:
            raise CAError(400, f"root {rid} is the active one; activate another first")
        self.roots.remove(target)
        self._save()
        for ext in ("key", "crt"):
            os.replace(
                os.path.join(self.directory, f"{rid}.{ext}"),
                os.path.join(self.directory, f"retired-{rid}.{ext}"),
            )

    def _find(self, rid: str) -> Root:
        for r in self.roots:
            if r.id == rid:
                return r
        raise CAError(404, f"no root {rid!r} (roots: {', '.join(r.id for r in self.roots)})")

    @property
    def active(self) -> Root:
        return next(r for r in self.roots if r.state == ACTIVE)

    def bundle(self) -> list[x509.Certificate]:
        return [r.cert for r in self.roots]

    def bundle_pem(self) -> str:
        return "".join(cert_pem(c) for c in self.bundle())


def authorize(
    snapshot: Snapshot, caller: Caller, identity: SpiffeId, trust_domain: str
) -> str | None:
    """Why `caller` may not have `identity` signed, or None if it may.

    A node gets only identities of pods it runs (a compromised node cannot mint
    another node's workload identities); a workload credential gets only its own
    service account's identity, and only while a pod of it runs (its own pod, when
    the credential is bound to one); an admin credential gets nothing signed.
    """
    if identity.trust_domain != trust_domain:
        return f"trust domain {identity.trust_domain!r} is not this mesh's ({trust_domain!r})"
    wanted = (identity.namespace, identity.service_account)
    if caller.kind == NODE:
        for pod in snapshot.pods_on_node(caller.node):
            if (pod.meta.namespace, pod.service_account) == wanted and (
                pod.phase not in TERMINATED_PHASES
            ):
                return None
        return (
            f"node {caller.node} runs no pod with service account {identity.service_account} "
            f"in namespace {identity.namespace}"
        )
    if caller.kind == WORKLOAD:
        own = (caller.namespace, caller.service_account)
        if wanted != own:
            return (
                f"credential {caller.credential} is service account {own[0]}/{own[1]}'s: "
                f"it gets only that identity, not {identity}"
            )
        for pod in snapshot.pods():
            if pod.phase in TERMINATED_PHASES:
                continue
            if (pod.meta.namespace, pod.service_account) == own and (
                not caller.pod or pod.meta.name == caller.pod
            ):
                return None
        if caller.pod:
            return (
                f"credential {caller.credential} is bound to pod {own[0]}/{caller.pod}, which "
                f"does not run (or no longer has service account {own[1]})"
            )
        return f"no pod with service account {own[1]} runs in namespace {own[0]}"
    return f"credential {caller.credential} is an {caller.kind} credential: it has nothing signed"


def check_ttl(value: object, max_ttl: dt.timedelta) -> dt.timedelta:
    """The requested life of a certificate (JSON `ttlSeconds`), capped at `max_ttl`.

    Refused with 400: a non-number, NaN or an infinity, zero or less, and anything above
    MAX_REQUEST_TTL (a request for more than that is a bug or an attack, not a policy).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CAError(400, f"ttlSeconds: {value!r} is not a number of seconds")
    if isinstance(value, int) and abs(value) > 1 << 53:
        raise CAError(400, f"ttlSeconds: {value} is absurdly large (at most {MAX_REQUEST_TTL_S})")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise CAError(400, f"ttlSeconds: {value!r} is not a finite number")
    if seconds <= 0:
        raise CAError(400, f"ttlSeconds: {value!r} must be positive")
    if seconds > MAX_REQUEST_TTL_S:
        raise CAError(400, f"ttlSeconds: {value!r} is absurdly large (at most {MAX_REQUEST_TTL_S})")
    return min(dt.timedelta(seconds=seconds), max_ttl)


def read_csr(csr_pem: str, identity: SpiffeId) -> ec.EllipticCurvePublicKey:
    """The public key of a CSR that asks for exactly `identity`, or CAError(400) saying why.

    The certificate's contents come from the CA alone (the identity, CA:false, the key
    usages); a CSR that asks for anything else is refused rather than silently trimmed,
    so a client that expects more learns it will not get it.
    """
    if len(csr_pem) > MAX_CSR_CHARS:
        raise CAError(400, f"csr: {len(csr_pem)} characters, more than {MAX_CSR_CHARS}")
    blocks = csr_pem.count("-----BEGIN ")
    if blocks != 1 or "-----BEGIN CERTIFICATE REQUEST-----" not in csr_pem:
        raise CAError(400, "csr: expected exactly one PEM block 'CERTIFICATE REQUEST'")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, x509.InvalidVersion) as exc:  # (found by fuzzing: a version 5 was a 500)
        raise CAError(400, f"csr: not a PEM certificate request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise CAError(400, f"csr: its key or signature cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CAError(400, f"csr: the key must be ECDSA P-256, not {_key_kind(key)}")
    if not valid:
        raise CAError(400, "csr: its signature does not verify (not signed by its own key)")
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CAError(400, f"csr: unreadable extensions: {exc}") from exc
    for ext in extensions:
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise CAError(400, "csr: asks to be a CA (basicConstraints CA:true)")
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            raise CAError(
                400,
                f"csr: extension {_EXTENSIONS.get(ext.oid, 'unknown')} "
                f"({ext.oid.dotted_string}) is not allowed: "
                "the CA decides a certificate's extensions",
            )
        names = list(ext.value)
        extra = [n for n in names if n != x509.UniformResourceIdentifier(str(identity))]
        if extra:
            raise CAError(
                400,
                f"csr: asks for {', '.join(_name(n) for n in extra)}; only {identity} may be asked",
            )
    return key


_EXTENSIONS = {  # KEY_USAGE -> keyUsage, as RFC 5280 names them
    oid: name.split("_")[0].lower() + "".join(w.title() for w in name.split("_")[1:])
    for name, oid in vars(ExtensionOID).items()
    if isinstance(oid, x509.ObjectIdentifier)
}


def _name(n: x509.GeneralName) -> str:
    kind = type(n).__name__.replace("UniformResourceIdentifier", "URI")
    return f"{kind} {n.value!r}"


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__.lstrip("_").replace("PublicKey", "")


@dataclass
class Authority:
    roots: RootStore
    trust_domain: str
    max_ttl: dt.timedelta

    def sign(
        self, csr_pem: str, identity: SpiffeId, ttl: dt.timedelta, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Sign a workload CSR. The certificate carries exactly `identity`."""
        key = read_csr(csr_pem, identity)
        ttl = min(ttl, self.max_ttl)
        if ttl.total_seconds() <= 0:
            raise CAError(400, "ttlSeconds: the requested TTL must be positive")
        now = now or _utcnow()
        root = self.roots.active
        return issue(
            issuer_key=root.key,
            issuer_cert=root.cert,
            public_key=key,
            uri=str(identity),
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + ttl,
        )

    def server_certificate(self, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        """The CA's own serving certificate, a SPIFFE ID like any workload's."""
        now = _utcnow()
        root = self.roots.active
        ident = ca_identity(self.trust_domain)
        return issue(
            issuer_key=root.key,
            issuer_cert=root.cert,
            public_key=key.public_key(),
            uri=str(ident),
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + dt.timedelta(days=365),
        )
