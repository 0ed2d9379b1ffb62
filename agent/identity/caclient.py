"""Talking to the CA: HTTP/1.1 JSON over TLS, checking the CA's own SPIFFE ID.

Small on purpose: one request per connection, Content-Length bodies. The CA's
certificate must chain to the trust bundle and carry the CA's identity.

The credential is a bearer token read from a file (`TokenFile`) and re-read whenever
the file changes, so a rotated credential is used from the next request on, without a
restart. The same holds for a Kubernetes projected service-account token, which the
kubelet rewrites before it expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from agent.common.errors import SlipstreamError

from . import tls
from .certs import SpiffeId

TIMEOUT = 10.0
MAX_RESPONSE = 1 << 20

log = logging.getLogger("agent.identity")


class CAUnavailable(SlipstreamError):
    """The CA could not be reached or did not answer sensibly (retry later)."""


class CARefused(SlipstreamError):
    """The CA answered and refused; `status` and the CA's reason say why, `retry_after`
    (seconds, 0 if none) when it asked to be called again later (429)."""

    def __init__(self, status: int, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(f"the CA refused ({status}): {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class TokenFile:
    """A bearer token kept in a file, re-read when the file changes (a stat per use).

    An unreadable or empty file at start is an error naming it; later, the last good
    token stays in use and the problem is logged once per change of the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self._read(strict=True)

    def _read(self, strict: bool) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path) as f:
                token = f.read().strip()
            if not token:
                raise SlipstreamError(f"the credential file {self.path} is empty")
        except OSError as exc:
            if strict:
                raise SlipstreamError(f"cannot read {self.path}: {exc.strerror}") from exc
            log.warning(
                "cannot re-read the credential file; the last token stays in use",
                extra={"file": self.path, "error": exc.strerror},
            )
            return
        except SlipstreamError:
            if strict:
                raise
            log.warning("the credential file is empty; the last token stays in use",
                        extra={"file": self.path})  # fmt: skip
            self._stamp = stamp
            return
        if self._token and token != self._token:
            log.info("credential file changed: using the new token", extra={"file": self.path})
        self._stamp, self._token = stamp, token

    def __call__(self) -> str:
        self._read(strict=False)
        return self._token


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """The whole answer (the CA closes after it), at most MAX_RESPONSE bytes."""
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > MAX_RESPONSE:
            raise CAUnavailable(f"the CA's answer is over {MAX_RESPONSE} bytes")
    return bytes(data)


class CAClient:
    def __init__(
        self, address: tuple[str, int], token: str | Callable[[], str], ca_identity: SpiffeId
    ) -> None:
        """`token`: the credential itself, or something that returns the current one
        (a TokenFile) each time a request is made."""
        self.address = address
        self._token = token if callable(token) else (lambda: token)
        self.ca_identity = ca_identity

    async def _request(
        self, method: str, path: str, bundle_pem: str, body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(body).encode() if body is not None else b""
        host, port = self.address
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=tls.client_context(bundle_pem), server_hostname=""
                ),
                TIMEOUT,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise CAUnavailable(f"cannot reach the CA at {host}:{port}: {exc}") from exc
        try:
            peer = tls.peer_spiffe_id(writer.get_extra_info("ssl_object"))
            if peer != str(self.ca_identity):
                raise CAUnavailable(f"{host}:{port} is not the CA: it presented {peer!r}")
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {self._token()}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            raw = await asyncio.wait_for(_read_all(reader), TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise CAUnavailable(f"the CA at {host}:{port} did not answer: {exc}") from exc
        finally:
            writer.close()
        header, _, content = raw.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise CAUnavailable("the CA sent a malformed response") from exc
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, content

    async def sign(
        self, identity: SpiffeId, csr_pem: bytes, ttl_seconds: float, bundle_pem: str
    ) -> tuple[str, str]:
        """Returns (certificate PEM, the CA's current bundle PEM)."""
        status, headers, content = await self._request(
            "POST",
            "/v1/certificates",
            bundle_pem,
            {"identity": str(identity), "csr": csr_pem.decode(), "ttlSeconds": ttl_seconds},
        )
        try:
            doc = json.loads(content)
        except ValueError as exc:
            raise CAUnavailable(f"the CA's answer is not JSON (status {status})") from exc
        if status != 200:
            reason = str(doc.get("error", "?")) if isinstance(doc, dict) else "?"
            try:
                retry_after = max(0.0, float(headers.get("retry-after", "0")))
            except ValueError:
                retry_after = 0.0
            raise CARefused(status, reason, retry_after if retry_after < 3600 else 3600.0)
        if not isinstance(doc, dict) or not isinstance(doc.get("certificate"), str):
            raise CAUnavailable("the CA's answer has no certificate")
        return doc["certificate"], str(doc.get("bundle", ""))

    async def bundle(self, bundle_pem: str) -> str:
        status, _, content = await self._request("GET", "/v1/bundle", bundle_pem)
        if status != 200:
            raise CAUnavailable(f"the CA answered {status} for the bundle")
        return content.decode()
