"""The CA's decisions and keys, without the network: roots, rotation, signing, node authorization.

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
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import SlipstreamError
from ..identity.certs import (
    SpiffeId,
    cert_pem,
    generate_key,
    issue,
    key_pem,
    self_signed_root,
)
from ..state import Snapshot
from ..state.store import TERMINATED_PHASES

ACTIVE = "active"
TRUSTED = "trusted"
CA_SERVICE_ACCOUNT = "slipstream-ca"
CA_NAMESPACE = "slipstream-system"


class CAError(SlipstreamError):
    """The CA cannot do what was asked; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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


class NodeTokens:
    """Which node a bearer token belongs to. The file maps node names to SHA-256 hex digests,
    so the CA never stores the tokens themselves."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._digests = dict(digests)

    @classmethod
    def load(cls, path: str) -> NodeTokens:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise CAError(500, f"cannot read node tokens {path}: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CAError(500, f"{path}: expected an object of node name to SHA-256 hex digest")
        return cls(data)

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def node_of(self, token: str) -> str | None:
        d = self.digest(token)
        found = None
        for node, want in self._digests.items():
            if hmac.compare_digest(d, want):
                found = node
        return found


def authorize(snapshot: Snapshot, node: str, identity: SpiffeId, trust_domain: str) -> str | None:
    """Why `node` may not have `identity` signed, or None if it may.

    A node gets only identities of pods it runs: a compromised node cannot
    mint another node's workload identities.
    """
    if identity.trust_domain != trust_domain:
        return f"trust domain {identity.trust_domain!r} is not this mesh's ({trust_domain!r})"
    for pod in snapshot.pods_on_node(node):
        if (
            pod.meta.namespace == identity.namespace
            and pod.service_account == identity.service_account
            and pod.phase not in TERMINATED_PHASES
        ):
            return None
    return (
        f"node {node} runs no pod with service account {identity.service_account} "
        f"in namespace {identity.namespace}"
    )


@dataclass
class Authority:
    roots: RootStore
    trust_domain: str
    max_ttl: dt.timedelta

    def sign(
        self, csr_pem: str, identity: SpiffeId, ttl: dt.timedelta, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Sign a workload CSR. The certificate carries exactly `identity`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CAError(400, f"the CSR is not a PEM certificate request: {exc}") from exc
        try:
            if not csr.is_signature_valid:
                raise CAError(400, "the CSR's signature does not verify")
        except InvalidSignature as exc:
            raise CAError(400, "the CSR's signature does not verify") from exc
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CAError(400, "the CSR's key must be ECDSA P-256")
        asked = []
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            asked = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            pass
        if asked and asked != [str(identity)]:
            raise CAError(400, f"the CSR asks for {asked}, the request for {identity}")
        ttl = min(ttl, self.max_ttl)
        if ttl.total_seconds() <= 0:
            raise CAError(400, "the requested TTL must be positive")
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
        ident = SpiffeId(self.trust_domain, CA_NAMESPACE, CA_SERVICE_ACCOUNT)
        return issue(
            issuer_key=root.key,
            issuer_cert=root.cert,
            public_key=key.public_key(),
            uri=str(ident),
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + dt.timedelta(days=365),
        )


def ca_identity(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, CA_NAMESPACE, CA_SERVICE_ACCOUNT)
