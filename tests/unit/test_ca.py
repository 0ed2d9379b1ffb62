"""The CA's decisions without the network: who may have what signed, what a request and a CSR
may say, credential records, the issuance limit, and the capabilities a lab container gets."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent.ca import credentials
from agent.ca.authority import CAError, authorize, check_ttl, read_csr
from agent.ca.credentials import ADMIN, NODE, WORKLOAD, Caller, CredentialError, CredentialFile
from agent.ca.limits import IssueLimiter
from agent.ca.server import parse_request
from agent.common.errors import FieldError
from agent.identity.certs import SpiffeId, generate_key, make_csr
from agent.lab.model import DEFAULT_CAPABILITIES, container_capabilities
from agent.state import StateStore, StateUpdater, parse_object

TD = "cluster.local"
WEB = SpiffeId(TD, "shop", "web")


def pod(name, node, sa, phase="Running", ns="shop"):
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": node,
                "serviceAccountName": sa,
                "containers": [{"name": "c", "command": ["x"]}],
            },
            "status": {"podIP": "10.0.0.1", "phase": phase},
        }
    )


@pytest.fixture
def snapshot():
    store = StateStore()
    StateUpdater(store).apply(
        [
            pod("web-1", "n1", "web"),
            pod("web-2", "n2", "web"),
            pod("db", "n2", "db"),
            pod("old", "n1", "done", "Succeeded"),
            pod("gateway", "n1", "gateway", ns="edge"),
        ]
    )
    return store.snapshot


GATEWAY = Caller("wl-1", WORKLOAD, namespace="edge", service_account="gateway")


@pytest.mark.parametrize(
    ("caller", "identity", "why"),
    [
        # A node: identities of pods on it (Istio's node authorizer).
        (Caller("n1", NODE, node="n1"), WEB, None),
        (Caller("n1", NODE, node="n1"), SpiffeId(TD, "edge", "gateway"), None),
        (Caller("n1", NODE, node="n1"), SpiffeId(TD, "shop", "db"), "node n1 runs no pod"),
        (Caller("n1", NODE, node="n1"), SpiffeId(TD, "shop", "done"), "node n1 runs no pod"),
        # A workload: its own identity only, while a pod of it runs.
        (GATEWAY, SpiffeId(TD, "edge", "gateway"), None),
        (GATEWAY, WEB, "it gets only that identity"),
        (GATEWAY, SpiffeId(TD, "edge", "other"), "it gets only that identity"),
        (GATEWAY, SpiffeId("other.td", "edge", "gateway"), "trust domain"),
        (Caller("w", WORKLOAD, namespace="shop", service_account="done"),
         SpiffeId(TD, "shop", "done"), "no pod with service account done runs"),
        # Bound to a pod: that pod must run and have the service account.
        (Caller("w", WORKLOAD, namespace="shop", service_account="web", pod="web-2"), WEB, None),
        (Caller("w", WORKLOAD, namespace="shop", service_account="web", pod="gone"), WEB,
         "bound to pod shop/gone"),
        (Caller("w", WORKLOAD, namespace="shop", service_account="web", pod="db"), WEB,
         "bound to pod shop/db"),
        # An admin credential reads the log; it has nothing signed.
        (Caller("a", ADMIN, name="ops"), WEB, "has nothing signed"),
    ],
)  # fmt: skip
def test_who_may_have_what_signed(snapshot, caller, identity, why):
    got = authorize(snapshot, caller, identity, TD)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (0, "must be positive"),
        (-0.0, "must be positive"),
        (-1, "must be positive"),
        (10**400, "absurdly large"),
        (1e300, "absurdly large"),
        (400 * 86400, "absurdly large"),
        ("3600", "not a number"),
        (True, "not a number"),
        (None, "not a number"),
        ([3600], "not a number"),
    ],
)
def test_bad_ttls_are_refused_naming_the_field(value, reason):
    with pytest.raises(CAError) as exc:
        check_ttl(value, dt.timedelta(hours=24))
    assert exc.value.status == 400
    assert exc.value.reason.startswith("ttlSeconds: ") and reason in exc.value.reason


def test_a_long_ttl_is_capped_and_a_short_one_kept():
    assert check_ttl(7 * 86400, dt.timedelta(hours=24)) == dt.timedelta(hours=24)
    assert check_ttl(0.5, dt.timedelta(hours=24)) == dt.timedelta(seconds=0.5)


def csr_with(key=None, names=None, extensions=()):
    key = key or generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def bad_signature() -> str:
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(generate_key(), WEB)).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-5] ^= 0x01  # inside the ECDSA signature's integers
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    return pem.decode()


def version(n: int) -> str:
    """A CSR whose version field says `n` (only 0, v1, exists)."""
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(generate_key(), WEB)).public_bytes(
            serialization.Encoding.DER
        )
    )
    at = der.index(b"\x02\x01\x00")  # the first INTEGER: CertificationRequestInfo.version
    der[at + 2] = n
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


URI = x509.UniformResourceIdentifier(str(WEB))
KU_CA = x509.KeyUsage(True, False, False, False, False, True, True, False, False)

BAD_CSRS = {
    "not PEM": ("hello", "exactly one PEM block"),
    "empty": ("", "exactly one PEM block"),
    "a certificate": (
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "exactly one PEM block",
    ),
    "two requests": (make_csr(generate_key(), WEB).decode() * 2, "exactly one PEM block"),
    "garbage inside": (
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "not a PEM certificate request",
    ),
    "truncated": (make_csr(generate_key(), WEB).decode()[:200], "not a PEM certificate request"),
    "bad signature": (bad_signature(), "signature does not verify"),
    "version 5": (version(5), "not a PEM certificate request: 5 is not a valid CSR version"),
    "RSA key": (
        csr_with(rsa.generate_private_key(65537, 2048), [URI]).decode(),
        "ECDSA P-256, not RSA",
    ),
    "P-384 key": (
        csr_with(ec.generate_private_key(ec.SECP384R1()), [URI]).decode(),
        "ECDSA P-256, not ECDSA secp384r1",
    ),
    "Ed25519 key": (
        csr_with(ed25519.Ed25519PrivateKey.generate(), [URI]).decode(),
        "ECDSA P-256, not Ed25519",
    ),
    "another identity": (
        make_csr(generate_key(), SpiffeId(TD, "shop", "db")).decode(),
        "asks for URI 'spiffe://cluster.local/ns/shop/sa/db'",
    ),
    "an extra DNS name": (
        csr_with(names=[URI, x509.DNSName("db.shop.svc")]).decode(),
        "asks for DNSName 'db.shop.svc'",
    ),
    "an extra IP": (
        csr_with(names=[URI, x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]).decode(),
        "asks for IPAddress",
    ),
    "a second URI": (
        csr_with(
            names=[URI, x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/b")]
        ).decode(),
        "asks for URI 'spiffe://cluster.local/ns/a/sa/b'",
    ),
    "an email": (
        csr_with(names=[URI, x509.RFC822Name("root@example.com")]).decode(),
        "asks for RFC822Name",
    ),
    "CA:true": (
        csr_with(names=[URI], extensions=[(x509.BasicConstraints(True, None), True)]).decode(),
        "asks to be a CA",
    ),
    "keyCertSign": (
        csr_with(names=[URI], extensions=[(KU_CA, True)]).decode(),
        "extension keyUsage (2.5.29.15) is not allowed",
    ),
    "too long": ("A" * 9000, "more than 8192"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSRS))
def test_malformed_or_greedy_csrs_are_refused_with_a_reason(case):
    pem, reason = BAD_CSRS[case]
    with pytest.raises(CAError) as exc:
        read_csr(pem, WEB)
    assert exc.value.status == 400
    assert exc.value.reason.startswith("csr: ") and reason in exc.value.reason, exc.value.reason


def test_a_csr_asking_for_the_identity_or_for_nothing_is_accepted():
    key = generate_key()
    assert read_csr(make_csr(key, WEB).decode(), WEB).public_numbers() == (
        key.public_key().public_numbers()
    )
    assert read_csr(csr_with(key, names=None).decode(), WEB) is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "must be a JSON object, not list"),
        (b'"x"', "must be a JSON object, not str"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"identity": "a", "identity": "b", "csr": ""}', "'identity' appears twice"),
        (b'{"identity": "a", "csr": "", "admin": true}', "unknown field 'admin'"),
        (b'{"csr": ""}', "identity: required"),
        (b'{"identity": "a"}', "csr: required"),
        (b'{"identity": 5, "csr": ""}', "identity: must be a string, not int"),
        (b'{"identity": NaN, "csr": ""}', "identity: must be a string, not float"),
        (b'{"identity": "a", "csr": null}', "csr: must be a string, not NoneType"),
        (b'{"identity": "' + b"a" * 600 + b'", "csr": ""}', "identity: longer than 512"),
        (b'{"ttlSeconds": 1' + b"0" * 5000 + b', "identity": "a", "csr": ""}', "not JSON"),
    ],
)
def test_malformed_request_bodies_are_refused_with_a_reason(body, reason):
    with pytest.raises(CAError) as exc:
        parse_request(body)
    assert exc.value.status == 400 and reason in exc.value.reason, exc.value.reason


def test_nan_and_infinity_reach_the_ttl_check_which_names_the_field():
    doc = parse_request(b'{"identity": "a", "csr": "", "ttlSeconds": NaN}')
    with pytest.raises(CAError, match="ttlSeconds: nan is not a finite number"):
        check_ttl(doc["ttlSeconds"], dt.timedelta(hours=1))
    doc = parse_request(b'{"identity": "a", "csr": "", "ttlSeconds": -Infinity}')
    with pytest.raises(CAError, match="ttlSeconds: -inf is not a finite number"):
        check_ttl(doc["ttlSeconds"], dt.timedelta(hours=1))


# ------------------------------------------------------------------ credentials


def test_minted_credentials_authenticate_as_their_subject(tmp_path):
    path = str(tmp_path / "credentials.json")
    node = credentials.mint(path, NODE, str(tmp_path / "n1"), ttl=None, node="n1")
    wl = credentials.mint(
        path, WORKLOAD, str(tmp_path / "gw"), ttl=dt.timedelta(hours=1),
        namespace="edge", service_account="gateway", pod="gateway-0",
    )  # fmt: skip
    assert (tmp_path / "n1").stat().st_mode & 0o777 == 0o600
    store = CredentialFile(path)
    store.load()

    async def who(file):
        return await store.authenticate((tmp_path / file).read_text())

    assert asyncio.run(who("n1")) == Caller(node.id, NODE, node="n1", source=store.name)
    caller = asyncio.run(who("gw"))
    assert (caller.kind, caller.namespace, caller.service_account, caller.pod) == (
        WORKLOAD, "edge", "gateway", "gateway-0",
    )  # fmt: skip
    assert asyncio.run(store.authenticate("x" * 43)) is None
    # the file holds digests, never a token
    assert (tmp_path / "n1").read_text() not in (tmp_path / "credentials.json").read_text()
    assert wl.expires is not None


@pytest.mark.parametrize(
    ("record", "where"),
    [
        ({"kind": "root"}, "credentials[0].kind"),
        ({"node": "N_1"}, "credentials[0].node"),
        ({"sha256": "abc"}, "credentials[0].sha256"),
        ({"expires": "tomorrow"}, "credentials[0].expires"),
        ({"expires": "2030-01-01T00:00:00"}, "credentials[0].expires"),
        ({"namespace": "shop"}, "credentials[0].namespace"),
        ({"id": "Bad Id"}, "credentials[0].id"),
    ],
)
def test_a_bad_credentials_file_names_the_record_and_field(tmp_path, record, where):
    good = {
        "id": "node-n1-abc", "kind": "node", "node": "n1", "sha256": "0" * 64,
        "created": "2026-01-01T00:00:00Z", "expires": None, "revoked": None,
    }  # fmt: skip
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"credentials": [{**good, **record}]}))
    with pytest.raises(CredentialError) as exc:
        CredentialFile(str(path)).load()
    assert f"{path}: {where}" in str(exc.value)


def test_a_broken_file_keeps_the_last_good_credentials(tmp_path):
    path = str(tmp_path / "c.json")
    credentials.mint(path, NODE, str(tmp_path / "t"), ttl=None, node="n1")
    store = CredentialFile(path)
    store.load()
    (tmp_path / "c.json").write_text("{not json")
    assert asyncio.run(store.authenticate((tmp_path / "t").read_text())) is not None
    assert "not JSON" in store.problem


def test_revoking_an_unknown_id_changes_nothing(tmp_path):
    path = str(tmp_path / "c.json")
    rec = credentials.mint(path, NODE, str(tmp_path / "t"), ttl=None, node="n1")
    with pytest.raises(CredentialError, match="no credential nope"):
        credentials.revoke(path, [rec.id, "nope"])
    assert credentials.load_records(path)[0].revoked is None


# ------------------------------------------------------------------ issuance limit


def test_each_credential_has_its_own_bucket():
    lim = IssueLimiter(burst=2, rate=0.5)
    assert lim.take("a", 100.0) == 0.0
    assert lim.take("a", 100.0) == 0.0
    assert lim.take("a", 100.0) == pytest.approx(2.0)  # one token refills in 2 s
    assert lim.take("b", 100.0) == 0.0  # another credential is not affected
    assert lim.take("a", 102.0) == 0.0


@pytest.mark.parametrize(("burst", "rate"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_a_limit_that_would_refuse_everything_is_refused(burst, rate):
    with pytest.raises(ValueError):
        IssueLimiter(burst, rate)


# ------------------------------------------------------------------ lab containers


@pytest.mark.parametrize(
    ("sc", "added", "removed"),
    [
        (None, set(), set()),
        ({"capabilities": {"add": ["NET_ADMIN"]}}, {"NET_ADMIN"}, set()),
        ({"capabilities": {"add": ["cap_sys_ptrace"], "drop": ["NET_RAW"]}},
         {"SYS_PTRACE"}, {"NET_RAW"}),
        ({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
         set(), set(DEFAULT_CAPABILITIES) - {"NET_BIND_SERVICE"}),
        ({"privileged": True}, {"SYS_ADMIN", "NET_ADMIN", "BPF"}, set()),
        ({"capabilities": {"add": ["ALL"], "drop": ["SYS_ADMIN"]}}, {"NET_ADMIN"}, set()),
    ],
)  # fmt: skip
def test_container_capabilities_follow_containerd(sc, added, removed):
    caps = set(container_capabilities({} if sc is None else {"securityContext": sc}, "c"))
    assert added <= caps
    assert not (removed & caps)
    assert (set(DEFAULT_CAPABILITIES) - removed) <= caps
    if sc and "ALL" in sc.get("capabilities", {}).get("add", []):
        assert "SYS_ADMIN" not in caps


@pytest.mark.parametrize(
    ("sc", "field"),
    [
        ({"runAsNonRoot": True}, "c.securityContext.runAsNonRoot"),
        ({"capabilities": {"add": ["NET_ADMN"]}}, "c.securityContext.capabilities.add[0]"),
        ({"capabilities": {"add": "NET_ADMIN"}}, "c.securityContext.capabilities.add"),
        ({"capabilities": {"keep": []}}, "c.securityContext.capabilities.keep"),
        ({"privileged": "yes"}, "c.securityContext.privileged"),
        ("root", "c.securityContext"),
    ],
)
def test_security_contexts_the_lab_cannot_honour_are_refused(sc, field):
    with pytest.raises(FieldError) as exc:
        container_capabilities({"securityContext": sc}, "c")
    assert exc.value.field == field
