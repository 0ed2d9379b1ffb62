"""Bad requests to the real CA process, over real TLS: every one gets a 4xx with a reason and
the CA keeps serving; slow and greedy clients are cut off while others are served."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.identity.certs import SpiffeId, generate_key, make_csr
from tests.functional.cakit import TD, read_answer, start_ca
from tests.lab.labkit import wait_until
from tests.unit.test_ca import version

WEB = SpiffeId(TD, "shop", "web")
WEB_URI = x509.UniformResourceIdentifier(str(WEB))


@pytest.fixture
def ca(tmp_path):
    running = start_ca(tmp_path, extra=("--request-timeout", "1s"))
    yield running
    running.stop()


def csr(key=None, names=(WEB_URI,), extensions=()) -> str:
    key = key or generate_key()
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    for ext in extensions:
        b = b.add_extension(ext, critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def tampered() -> str:
    der = bytearray(x509.load_pem_x509_csr(csr().encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 1
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def body(**fields) -> bytes:
    doc = {"identity": str(WEB), "csr": make_csr(generate_key(), WEB).decode(), "ttlSeconds": 60}
    doc.update(fields)
    return json.dumps(doc).encode()


def ttl_literal(literal: str) -> bytes:
    return body().replace(b'"ttlSeconds": 60', b'"ttlSeconds": ' + literal.encode())


BAD = {
    # TTLs: every one names the field (Python's json reads NaN and Infinity as numbers)
    "ttl NaN": (ttl_literal("NaN"), 400, "ttlSeconds: nan is not a finite number"),
    "ttl Infinity": (ttl_literal("Infinity"), 400, "ttlSeconds: inf is not a finite number"),
    "ttl -Infinity": (ttl_literal("-Infinity"), 400, "ttlSeconds: -inf is not a finite number"),
    "ttl 1e400": (ttl_literal("1e400"), 400, "ttlSeconds: inf is not a finite number"),
    "ttl 0": (ttl_literal("0"), 400, "ttlSeconds: 0 must be positive"),
    "ttl -5": (ttl_literal("-5"), 400, "ttlSeconds: -5 must be positive"),
    "ttl 10**30": (ttl_literal("1" + "0" * 30), 400, "ttlSeconds: 1000000000000000000000000000000"
                   " is absurdly large"),
    "ttl 10 years": (ttl_literal(str(3650 * 86400)), 400, "is absurdly large"),
    "ttl string": (body(ttlSeconds="60"), 400, "ttlSeconds: '60' is not a number"),
    "ttl true": (body(ttlSeconds=True), 400, "ttlSeconds: True is not a number"),
    # the JSON itself
    "not JSON": (b"identity=x", 400, "the body is not JSON"),
    "not UTF-8": (b'{"identity": "\xff"}', 400, "the body is not UTF-8"),
    "an array": (b"[]", 400, "must be a JSON object, not list"),
    "nested 8000 deep": (b"[" * 8000 + b"]" * 8000, 400, "nested too deeply"),
    "a field twice": (body()[:-1] + b', "identity": "spiffe://x/ns/a/sa/b"}', 400,
                      "'identity' appears twice"),
    "an unknown field": (body(isCA=True), 400, "unknown field 'isCA'"),
    "no csr": (json.dumps({"identity": str(WEB)}).encode(), 400, "csr: required"),
    "identity not a SPIFFE ID": (body(identity="spiffe://cluster.local/web"), 400,
                                 "identity: 'spiffe://cluster.local/web' is not a workload"),
    # the CSR
    "csr not PEM": (body(csr="hello"), 400, "csr: expected exactly one PEM block"),
    "csr truncated": (body(csr=csr()[:300]), 400, "csr: not a PEM certificate request"),
    "csr signature": (body(csr=tampered()), 400, "csr: its signature does not verify"),
    "csr version 5": (body(csr=version(5)), 400, "5 is not a valid CSR version"),
    "csr RSA key": (body(csr=csr(rsa.generate_private_key(65537, 2048))), 400,
                    "csr: the key must be ECDSA P-256, not RSA"),
    "csr P-384 key": (body(csr=csr(ec.generate_private_key(ec.SECP384R1()))), 400,
                      "not ECDSA secp384r1"),
    "csr for db": (body(csr=make_csr(generate_key(), SpiffeId(TD, "shop", "db")).decode()), 400,
                   "csr: asks for URI 'spiffe://cluster.local/ns/shop/sa/db'"),
    "csr extra DNS SAN": (body(csr=csr(names=(x509.UniformResourceIdentifier(str(WEB)),
                                              x509.DNSName("web.shop.svc")))), 400,
                          "csr: asks for DNSName 'web.shop.svc'"),
    "csr extra IP SAN": (body(csr=csr(names=(x509.UniformResourceIdentifier(str(WEB)),
                                             x509.IPAddress(ipaddress.ip_address("10.96.0.1"))))),
                         400, "csr: asks for IPAddress"),
    "csr CA:true": (body(csr=csr(extensions=(x509.BasicConstraints(True, 0),))), 400,
                    "csr: asks to be a CA"),
    # size and encoding
    "csr over 8 KiB": (body(csr="A" * 9000), 400, "csr: 9000 characters, more than 8192"),
    "body over 16 KiB": (body(csr="A" * 20000), 413, "the body is over 16384 bytes"),
}  # fmt: skip


def test_every_malformed_signing_request_gets_a_4xx_with_a_reason(ca):
    token = ca.token("n1")
    for case, (raw, status, reason) in BAD.items():
        answer = ca.request("POST", "/v1/certificates", token, raw)
        assert answer.status == status, (case, answer)
        assert reason in answer.error, (case, answer.error)
    # Framing the JSON body does not reach: compressed, chunked past the limit, wrong method.
    answer = ca.request("POST", "/v1/certificates", token, body(),
                        headers=(("Content-Encoding", "gzip"),))  # fmt: skip
    assert (answer.status, answer.error) == (415, "Content-Encoding 'gzip' is not accepted")
    chunk = b"A" * 8192
    raw = (
        b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        + (b"2000\r\n" + chunk + b"\r\n") * 3 + b"0\r\n\r\n"
    )  # fmt: skip
    answer = ca.https(raw)
    assert answer.status == 413 and "over 16384 bytes" in answer.error
    assert ca.request("GET", "/v1/certificates", token).status == 405
    assert ca.request("GET", "/v1/nothing", token).status == 404
    # None of it was a 500, nothing reached the bug handler, and the CA still signs.
    assert ca.request("POST", "/v1/certificates", token, body()).status == 200
    assert 'status="500"' not in ca.metrics()
    assert not [e for e in ca.log() if e["msg"] == "bug while answering"]
    refused = [e for e in ca.log() if e["msg"] == "certificate refused"]
    assert refused and all(e["credential"].startswith("node-n1-") for e in refused[:5])


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ((), "no credential"),
        ((("Authorization", "Basic dXNlcjpwYXNz"),), "must be sent as Authorization: Bearer"),
        ((("Authorization", "Bearer "),), "must be sent as Authorization: Bearer"),
        ((("Authorization", "Bearer not a token at all"),), "the bearer token is malformed"),
        ((("Authorization", "Bearer " + "x" * 43),), "not known to this CA"),
        ((("Authorization", "Bearer " + "x" * 5000),), "the bearer token is malformed"),
    ],
)
def test_a_request_without_a_usable_credential_gets_401(ca, headers, reason):
    answer = ca.request("POST", "/v1/certificates", None, body(), headers=headers)
    assert answer.status == 401 and reason in answer.error, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_two_credentials_in_one_request_are_refused(ca):
    token = ca.token("n1")
    answer = ca.request(
        "POST", "/v1/certificates", None, body(),
        headers=(("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")),
    )  # fmt: skip
    assert answer.status == 401 and "more than one Authorization header" in answer.error


def test_a_client_that_sends_its_headers_slowly_gets_408_and_others_are_served(ca):
    slow = ca.tls()
    slow.sendall(b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\n")  # ... and nothing more
    try:
        assert ca.request("POST", "/v1/certificates", ca.token("n2"),
                          body(identity=str(SpiffeId(TD, "shop", "db")),
                               csr=make_csr(generate_key(), SpiffeId(TD, "shop", "db")).decode()),
                          ).status == 200  # fmt: skip
        answer = read_answer(slow)  # the CA answers the slow one once its second is up
    finally:
        slow.close()
    assert answer.status == 408 and "no complete request within 1s" in answer.error
    assert "slipstream_ca_request_timeouts_total 1.0" in ca.metrics()


def test_a_client_that_sends_its_body_slowly_gets_408(ca):
    token = ca.token("n1")
    raw = body()
    with ca.tls() as slow:
        slow.sendall(
            b"POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nContent-Length: %d\r\n"
            b"Authorization: Bearer %s\r\n\r\n%s" % (len(raw), token.encode(), raw[:20])
        )
        answer = read_answer(slow)
    assert answer.status == 408 and "the body did not arrive within 1s" in answer.error


def test_a_connection_that_never_starts_tls_is_closed_and_others_are_served(ca):
    with socket.create_connection(("127.0.0.1", ca.port), timeout=10) as idle:
        assert ca.request("POST", "/v1/certificates", ca.token("n1"), body()).status == 200
        with contextlib.suppress(ConnectionResetError):  # (closed by the CA, either way)
            assert idle.recv(1) == b""  # once the handshake timeout passed


def test_connections_are_capped_per_peer_and_another_peer_is_served(tmp_path):
    ca = start_ca(tmp_path, extra=("--max-connections-per-peer", "4", "--request-timeout", "60s"))
    held = []
    try:
        for _ in range(4):
            held.append(ca.tls())  # handshake done, no request: each holds a slot

        def metrics() -> str:  # from 127.0.0.2, another peer (its connection counts too)
            return ca.request("GET", "/metrics", source="127.0.0.2").body.decode()

        # The CA counts a connection once it has the client's last handshake message.
        wait_until(lambda: "slipstream_ca_open_connections 5.0" in metrics(), 10, "4 held")
        fifth = ca.tls()
        held.append(fifth)
        assert read_answer(fifth).status == 0  # closed at once, without an answer
        # 127.0.0.2 is another peer on loopback: its slots are its own.
        answer = ca.request("POST", "/v1/certificates", ca.token("n1"), body(), source="127.0.0.2")
        assert answer.status == 200
        assert 'connections_refused_total{reason="too_many_from_peer"} 1.0' in metrics()
    finally:
        for conn in held:
            conn.close()
        ca.stop()
