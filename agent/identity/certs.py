"""SPIFFE IDs and the X.509 pieces around them (pure: no I/O, no clocks but the one passed in).

A workload identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
carried as the only URI SAN of an ECDSA P-256 certificate.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.common.errors import SlipstreamError

_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,253}[a-z0-9])?$")


CA_NAMESPACE = "slipstream-system"
CA_SERVICE_ACCOUNT = "slipstream-ca"
"""The CA's own identity is a workload's: every client checks the CA presents it."""


class IdentityError(SlipstreamError):
    """A SPIFFE ID, key, CSR or certificate is not what the mesh accepts."""


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """As policies name it: `<trust-domain>/ns/<ns>/sa/<sa>` (Istio's form)."""
        return str(self)[len("spiffe://") :]

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        m = re.fullmatch(r"spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)", uri)
        if not m:
            raise IdentityError(
                f"{uri!r} is not a workload SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>)"
            )
        td, ns, sa = m.groups()
        if not _TRUST_DOMAIN.match(td):
            raise IdentityError(f"{uri!r}: {td!r} is not a trust domain")
        for part in (ns, sa):
            if not _SEGMENT.match(part):
                raise IdentityError(f"{uri!r}: {part!r} is not a Kubernetes name")
        return cls(td, ns, sa)


def ca_identity(trust_domain: str) -> SpiffeId:
    """The SPIFFE ID the mesh CA serves with, which agents and the gateway insist on."""
    return SpiffeId(trust_domain, CA_NAMESPACE, CA_SERVICE_ACCOUNT)


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def spiffe_ids_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    ]


def spiffe_id_from_peercert(peercert: dict | None) -> str | None:
    """The SPIFFE ID of a peer as Python's ssl reports a verified certificate."""
    if not peercert:
        return None
    uris = [
        v for k, v in peercert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")
    ]
    return uris[0] if len(uris) == 1 else None


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_certs(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"not PEM certificates: {exc}") from exc


def issue(
    *,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    uri: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    server_auth: bool = True,
) -> x509.Certificate:
    """A leaf certificate for one SPIFFE ID, usable for mTLS both ways."""
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_auth:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def self_signed_root(
    key: ec.EllipticCurvePrivateKey, name: str, now: dt.datetime, days: int = 3650
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "Slipstream"),
            x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
