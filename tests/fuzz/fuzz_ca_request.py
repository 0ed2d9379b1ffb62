"""Fuzz target: what a caller sends the CA, and the credentials file it reads.

The first byte picks what the rest is:
- a signing request body: `parse_request`, then `check_ttl`, the SPIFFE ID and `read_csr`,
  as the server runs them. Each refuses with CAError of a 4xx status (or IdentityError for
  the ID), never anything else; a CSR that is accepted yields a certificate, signed as the
  CA signs, that carries the requested identity only, CA:false;
- a CSR mutated from a valid one (bytes overwritten in its DER): the same invariants;
- a credentials file: `parse_file` returns records or raises CredentialError naming it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json

import atheris
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.ca.authority import CAError, check_ttl, read_csr
from agent.ca.credentials import CredentialError, parse_file
from agent.ca.server import parse_request
from agent.identity.certs import (
    IdentityError,
    SpiffeId,
    generate_key,
    issue,
    make_csr,
    self_signed_root,
    spiffe_ids_of,
)
from tests.fuzz import harness

WEB = SpiffeId("cluster.local", "shop", "web")
ROOT_KEY = generate_key()
ROOT = self_signed_root(ROOT_KEY, "fuzz root", dt.datetime.now(dt.UTC))
CSR_DER = x509.load_pem_x509_csr(make_csr(generate_key(), WEB)).public_bytes(
    serialization.Encoding.DER
)


def check_csr(pem: str, identity: SpiffeId) -> None:
    try:
        key = read_csr(pem, identity)
    except CAError as exc:
        assert 400 <= exc.status < 500, exc.status
        return
    cert = issue(
        issuer_key=ROOT_KEY,
        issuer_cert=ROOT,
        public_key=key,
        uri=str(identity),
        not_before=dt.datetime.now(dt.UTC),
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
    )
    assert spiffe_ids_of(cert) == [str(identity)]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def request(body: bytes) -> None:
    try:
        doc = parse_request(body)
        check_ttl(doc.get("ttlSeconds", 86400), dt.timedelta(hours=24))
    except CAError as exc:
        assert 400 <= exc.status < 500, exc.status
        return
    try:
        identity = SpiffeId.parse(doc["identity"])
    except IdentityError:
        return
    check_csr(doc["csr"], identity)


def mutated_csr(fdp: atheris.FuzzedDataProvider) -> None:
    der = bytearray(CSR_DER)
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        der[fdp.ConsumeIntInRange(0, len(der) - 1)] = fdp.ConsumeInt(1) & 0xFF
    body = base64.encodebytes(bytes(der)).decode()
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    check_csr(pem, WEB)


def credentials_file(data: bytes) -> None:
    with contextlib.suppress(CredentialError):
        parse_file(data.decode("utf-8", errors="replace"), "credentials.json")


def fuzz_one(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        request(rest)
    elif mode == 1:
        mutated_csr(atheris.FuzzedDataProvider(rest))
    else:
        credentials_file(rest)


def _body(**fields: object) -> bytes:
    doc = {"identity": str(WEB), "csr": make_csr(generate_key(), WEB).decode(), "ttlSeconds": 60}
    doc.update(fields)
    return json.dumps(doc).encode()


SEEDS = [
    b"\x00" + _body(),
    b"\x00" + _body(ttlSeconds=1e999),
    b"\x00" + _body(identity="spiffe://cluster.local/ns/shop/sa/db"),
    b"\x01" + bytes(range(64)),
    b"\x02"
    + json.dumps(
        {
            "credentials": [
                {
                    "id": "node-n1-abc",
                    "kind": "node",
                    "node": "n1",
                    "sha256": "0" * 64,
                    "created": "2026-01-01T00:00:00Z",
                    "expires": None,
                    "revoked": None,
                }
            ]
        }
    ).encode(),
]

if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
