"""TLS termination: one server context per listener, a certificate per host chosen by SNI.

The listener's context stays the same object for its life; its SNI callback
reads the current certificate set from a `CertificateSet`, which a reload
replaces, so new handshakes get new certificates while open connections keep
theirs. A name matches a certificate host exactly or by `*.` wildcard (one
label); otherwise, or without SNI, the first certificate is used.
"""

from __future__ import annotations

import ssl

from .config import TlsCertificate
from .errors import ConfigError


def _context(cert: TlsCertificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert.cert, cert.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"certificate {cert.cert} / key {cert.key}: {exc}") from exc
    return ctx


class CertificateSet:
    def __init__(self, certs: tuple[TlsCertificate, ...]) -> None:
        self.certs = certs
        self.contexts = [(c.hosts, _context(c)) for c in certs]

    def choose(self, name: str) -> ssl.SSLContext:
        for hosts, ctx in self.contexts:
            if name in hosts:
                return ctx
        parent = name.partition(".")[2]
        for hosts, ctx in self.contexts:
            if parent and f"*.{parent}" in hosts:
                return ctx
        return self.contexts[0][1]


class Termination:
    """The listener's TLS context; `update` swaps the certificates for new handshakes."""

    def __init__(self, certs: tuple[TlsCertificate, ...]) -> None:
        self.current = CertificateSet(certs)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        first = certs[0]
        self.context.load_cert_chain(first.cert, first.key)
        self.context.sni_callback = self._sni

    def update(self, certs: tuple[TlsCertificate, ...]) -> None:
        if certs != self.current.certs:
            self.current = CertificateSet(certs)

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        host = (name or "").lower()
        sslobj.sni = host  # type: ignore[attr-defined]  # read by the server connection
        sslobj.context = self.current.choose(host)
