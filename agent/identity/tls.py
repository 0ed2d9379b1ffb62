"""TLS contexts for mTLS between workloads, built from certificates held in memory.

Python's ssl module loads keys only from files; the key is written to an
anonymous memory file (memfd) and loaded from there, so it never reaches a
disk. Every context is TLS 1.3 only and trusts exactly the given bundle;
SPIFFE IDs are checked by the caller after the handshake (`peer_spiffe_id`).
"""

from __future__ import annotations

import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import IdentityError, cert_pem, key_pem, spiffe_id_from_peercert

ALPN_H2 = "h2"


def load_chain(
    ctx: ssl.SSLContext, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey
) -> None:
    fd = os.memfd_create("slipstream-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem(key) + "".join(cert_pem(c) for c in chain).encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _base(purpose: ssl.Purpose, bundle_pem: str, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identities are SPIFFE IDs, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=bundle_pem)
    except ssl.SSLError as exc:
        raise IdentityError(f"the trust bundle is not usable: {exc}") from exc
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def server_context(
    chain: list[x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
    bundle_pem: str,
    alpn: list[str] | None = None,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, bundle_pem, alpn)
    if not require_client_cert:
        ctx.verify_mode = ssl.CERT_NONE
    load_chain(ctx, chain, key)
    return ctx


def client_context(
    bundle_pem: str,
    chain: list[x509.Certificate] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.SERVER_AUTH, bundle_pem, alpn)
    if chain and key is not None:
        load_chain(ctx, chain, key)
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The peer's SPIFFE ID after a verified handshake, or None."""
    if ssl_object is None:
        return None
    return spiffe_id_from_peercert(ssl_object.getpeercert())
