"""The CA as a real process on loopback: signing, node authorization, roots and rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.caclient import CARefused, CAUnavailable
from agent.identity.certs import SpiffeId, generate_key, load_certs, make_csr, spiffe_ids_of
from tests.functional.cakit import TD, start_ca

WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")


@pytest.fixture
def ca(tmp_path):
    running = start_ca(tmp_path)
    yield running
    running.stop()


def sign(ca, node, identity, ttl=3600, csr_identity=None):
    key = generate_key()
    csr = make_csr(key, csr_identity or identity)
    return asyncio.run(ca.client(node).sign(identity, csr, ttl, ca.bundle()))


def verify_chain(cert: x509.Certificate, bundle_pem: str) -> None:
    roots = load_certs(bundle_pem)
    issuer = next(r for r in roots if r.subject == cert.issuer)
    pub = issuer.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(issuer)


def test_a_node_gets_the_identity_of_its_own_pods(ca):
    cert_pem, bundle = sign(ca, "n1", WEB, ttl=600)
    (cert,) = load_certs(cert_pem)
    assert spiffe_ids_of(cert) == [str(WEB)]
    verify_chain(cert, bundle)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(seconds=600) <= life <= dt.timedelta(seconds=661)
    issued = [e for e in ca.log() if e["msg"] == "certificate issued"]
    assert issued[-1]["node"] == "n1" and issued[-1]["identity"] == str(WEB)


def test_a_node_cannot_mint_another_nodes_identity(ca):
    with pytest.raises(CARefused) as exc:
        sign(ca, "n1", DB)
    assert exc.value.status == 403 and "node n1 runs no pod with service account db" in str(
        exc.value
    )
    refused = [e for e in ca.log() if e["msg"] == "certificate refused"]
    assert refused and refused[-1]["node"] == "n1" and "service account db" in refused[-1]["reason"]


@pytest.mark.parametrize(
    ("identity", "csr_identity", "status", "reason"),
    [
        (SpiffeId("other.domain", "shop", "web"), None, 403, "trust domain"),
        (WEB, DB, 400, "csr: asks for URI"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(ca, identity, csr_identity, status, reason):
    with pytest.raises(CARefused) as exc:
        sign(ca, "n1", identity, csr_identity=csr_identity)
    assert exc.value.status == status and reason in str(exc.value)


def test_an_unknown_token_is_refused(ca):
    client = ca.client("n1")
    client._token = lambda: "not-a-token-but-long-enough"
    with pytest.raises(CARefused) as exc:
        asyncio.run(client.sign(WEB, make_csr(generate_key(), WEB), 60, ca.bundle()))
    assert exc.value.status == 401


def test_the_ttl_is_capped(tmp_path):
    ca = start_ca(tmp_path, max_ttl="10m")
    try:
        (cert,) = load_certs(sign(ca, "n1", WEB, ttl=86400)[0])
        assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(minutes=11)
    finally:
        ca.stop()


def test_a_client_that_trusts_another_root_refuses_the_ca(ca, tmp_path_factory):
    other = start_ca(tmp_path_factory.mktemp("other"))
    try:
        with pytest.raises(CAUnavailable):
            asyncio.run(
                ca.client("n1").sign(WEB, make_csr(generate_key(), WEB), 60, other.bundle())
            )
    finally:
        other.stop()


def test_a_restart_keeps_the_root(tmp_path):
    ca = start_ca(tmp_path)
    first = ca.bundle()
    ca.stop()
    ca = start_ca(tmp_path, port=ca.port)
    try:
        assert ca.bundle() == first
        (cert,) = load_certs(sign(ca, "n1", WEB)[0])
        verify_chain(cert, first)
    finally:
        ca.stop()


def roots(ca, *args):
    res = subprocess.run(
        [sys.executable, "-m", "agent", "ca", "roots", *args, "--root-dir", str(ca.root_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_root_rotation_is_staged(ca):
    old_cert, bundle = sign(ca, "n1", WEB)
    old_root = load_certs(bundle)[0]
    new_id = roots(ca, "add").splitlines()[0]

    def after_reload(pred):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cert, bundle = sign(ca, "n1", WEB)
            if pred(cert, bundle):
                return cert, bundle
            time.sleep(0.1)
        raise AssertionError("the CA did not reload its roots")

    # add: both roots trusted, the old one still signs
    cert, bundle = after_reload(lambda c, b: len(load_certs(b)) == 2)
    assert load_certs(cert)[0].issuer == old_root.subject
    # activate: the new one signs; certificates of the old one stay trusted
    roots(ca, "activate", new_id)
    cert, bundle = after_reload(lambda c, b: load_certs(c)[0].issuer != old_root.subject)
    verify_chain(load_certs(cert)[0], bundle)
    verify_chain(load_certs(old_cert)[0], bundle)
    # retire: the old root leaves the bundle
    old_id = next(
        line.split()[0] for line in roots(ca, "list").splitlines() if not line.startswith(new_id)
    )
    roots(ca, "retire", old_id)
    cert, bundle = after_reload(lambda c, b: len(load_certs(b)) == 1)
    assert load_certs(bundle)[0].subject != old_root.subject


def test_roots_init_makes_the_first_root_once_and_bundle_prints_the_trust(tmp_path):
    """What a Kubernetes install does before `kubectl apply -k deploy/` (deploy/README.md)."""
    import subprocess
    import sys

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    def ca(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", "ca", "roots", *args,
                               "--root-dir", str(tmp_path / "roots")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    first = ca("init")
    assert first.returncode == 0 and " active " in first.stdout, first.stderr
    again = ca("init")
    assert again.returncode != 0 and "already holds roots" in again.stderr
    bundle = ca("bundle")
    (cert,) = x509.load_pem_x509_certificates(bundle.stdout.encode())
    rid = first.stdout.split()[0]
    assert (tmp_path / "roots" / f"{rid}.crt").read_bytes() == cert.public_bytes(Encoding.PEM)
