"""The lab API server's CA, serving certificate and kubeconfigs.

The CA (ECDSA P-256, ten years) is made once per cert directory and kept, so
kubeconfigs stay valid across restarts; the serving certificate is reissued
whenever the addresses it must name change. Keys are written 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity.certs import cert_pem, key_pem, self_signed_root

DNS_NAMES = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]


@dataclass(frozen=True)
class CertPaths:
    ca: str
    cert: str
    key: str


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_certs(cert_dir: str, hosts: list[str]) -> CertPaths:
    """CA and serving certificate in `cert_dir`, the certificate naming `hosts` (IPs or names)."""
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    paths = CertPaths(
        *(os.path.join(cert_dir, n) for n in ("ca.crt", "apiserver.crt", "apiserver.key"))
    )
    ca_key_path = os.path.join(cert_dir, "ca.key")
    now = dt.datetime.now(dt.UTC)
    if not (os.path.exists(paths.ca) and os.path.exists(ca_key_path)):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = self_signed_root(ca_key, "slipstream-lab-apiserver-ca", now)
        _write(ca_key_path, key_pem(ca_key), 0o600)
        _write(paths.ca, cert_pem(ca_cert).encode())
    with open(ca_key_path, "rb") as f:
        loaded = serialization.load_pem_private_key(f.read(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: not an ECDSA key")
    ca_key = loaded
    with open(paths.ca, "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    ips, names = [], list(DNS_NAMES)
    for h in ["127.0.0.1", *hosts]:
        try:
            ips.append(ipaddress.ip_address(h))
        except ValueError:
            names.append(h)
    wanted = set(map(str, ips)) | set(names)
    if os.path.exists(paths.cert) and os.path.exists(paths.key):
        with open(paths.cert, "rb") as f:
            current = x509.load_pem_x509_certificate(f.read())
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(i) for i in san.get_values_for_type(x509.IPAddress)} | set(
            san.get_values_for_type(x509.DNSName)
        )
        if wanted <= have and current.not_valid_after_utc > now + dt.timedelta(days=30):
            return paths
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dict.fromkeys(names)]
                + [x509.IPAddress(i) for i in dict.fromkeys(ips)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(paths.key, key_pem(key), 0o600)
    _write(paths.cert, cert_pem(cert).encode())
    return paths


def server_context(paths: CertPaths) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(paths.cert, paths.key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def kubeconfig(
    server: str, ca_path: str, token: str, name: str = "slipstream-lab", namespace: str = "default"
) -> str:
    with open(ca_path, "rb") as f:
        ca_data = base64.b64encode(f.read()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": f"{name}-user", "user": {"token": token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": name, "user": f"{name}-user", "namespace": namespace},
            }
        ],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(path, text.encode(), 0o600)
