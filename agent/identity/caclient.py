"""Talking to the CA: HTTP/1.1 JSON over TLS, checking the CA's own SPIFFE ID.

Small on purpose: one request per connection, Content-Length bodies. The CA's
certificate must chain to the trust bundle and carry the CA's identity.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..errors import SlipstreamError
from . import tls
from .certs import SpiffeId

TIMEOUT = 10.0


class CAUnavailable(SlipstreamError):
    """The CA could not be reached or did not answer sensibly (retry later)."""


class CARefused(SlipstreamError):
    """The CA answered and refused; `status` and the CA's reason say why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the CA refused ({status}): {reason}")
        self.status = status


class CAClient:
    def __init__(self, address: tuple[str, int], token: str, ca_identity: SpiffeId) -> None:
        self.address = address
        self._token = token
        self.ca_identity = ca_identity

    async def _request(
        self, method: str, path: str, bundle_pem: str, body: Any = None
    ) -> tuple[int, bytes]:
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
                f"Authorization: Bearer {self._token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            raw = await asyncio.wait_for(reader.read(-1), TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise CAUnavailable(f"the CA at {host}:{port} did not answer: {exc}") from exc
        finally:
            writer.close()
        header, _, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise CAUnavailable("the CA sent a malformed response") from exc
        return status, content

    async def sign(
        self, identity: SpiffeId, csr_pem: bytes, ttl_seconds: float, bundle_pem: str
    ) -> tuple[str, str]:
        """Returns (certificate PEM, the CA's current bundle PEM)."""
        status, content = await self._request(
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
            raise CARefused(status, str(doc.get("error", "?")) if isinstance(doc, dict) else "?")
        if not isinstance(doc, dict) or not isinstance(doc.get("certificate"), str):
            raise CAUnavailable("the CA's answer has no certificate")
        return doc["certificate"], str(doc.get("bundle", ""))

    async def bundle(self, bundle_pem: str) -> str:
        status, content = await self._request("GET", "/v1/bundle", bundle_pem)
        if status != 200:
            raise CAUnavailable(f"the CA answered {status} for the bundle")
        return content.decode()
