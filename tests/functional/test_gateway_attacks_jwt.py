"""Outside attacks on JWT verification: the jwt_tool / PortSwigger JWT catalogue.

Every token is built byte by byte here (signed with `cryptography` where a signature is
needed, with the issuer's real keys when the attack is a parser differential the issuer
could be made to sign), sent through the real gateway to a raw recording upstream, and must
be answered 401 without any request reaching the upstream. The classes:

- unsigned and algorithm confusion: `alg: none` in any case, HMAC keyed with the public key
  (PEM or modulus), an algorithm of another key type or curve, embedded keys (`jwk`, `jku`,
  `x5u`) and injected `kid`s;
- ECDSA "psychic signatures" (CVE-2022-21449: r = s = 0) and out-of-range values;
- one token, one spelling: padded, `+`/`/`, stray low bits in a valid signature segment,
  whitespace, a JWE's five parts;
- parser differentials in signed JSON: repeated members (also spelled with escapes), NaN,
  Infinity, 1e999, claims of the wrong type, a huge integer, deep nesting, `crit`.

A valid token passes (the catalogue is refused for what it is, not because nothing passes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .gwkit import Client, GatewayProc, Recorder

ISSUER = "https://issuer.example"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def as_int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Issuer:
    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stranger = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict:
        e = self.ec.public_key().public_numbers()
        r = self.rsa.public_key().public_numbers()
        return {
            "keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": as_int(e.x), "y": as_int(e.y)},
                {"kty": "RSA", "kid": "rsa-1", "n": as_int(r.n), "e": as_int(r.e)},
            ]
        }

    @staticmethod
    def claims(**extra) -> dict:
        return {"iss": ISSUER, "sub": "bob@example.com", "exp": int(time.time()) + 600, **extra}

    def es256(
        self,
        header: str,
        claims: str,
        key: ec.EllipticCurvePrivateKey | None = None,
        encoding: str = "utf-8",
    ) -> str:
        """Sign the exact header and claims texts (JSON as given, not re-serialized)."""
        signing = f"{b64(header.encode())}.{b64(claims.encode(encoding))}"
        der = (key or self.ec).sign(signing.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def rs256(self, header: str, claims: str) -> str:
        signing = f"{b64(header.encode())}.{b64(claims.encode())}"
        sig = self.rsa.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64(sig)}"

    def valid(self) -> str:
        return self.es256('{"alg":"ES256","kid":"ec-1"}', json.dumps(self.claims()))


def q(text: str) -> str:
    return json.dumps(text)


def obj(**members: str) -> str:
    """An unclosed JSON object from members given as raw JSON texts (the caller may add
    more, even repeated ones, before the closing brace)."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items())


def forged(iss: Issuer) -> dict[str, str]:
    claims = json.dumps(iss.claims())
    body = b64(claims.encode())
    good = iss.valid()
    head, _, sig = good.split(".")
    pem = iss.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    modulus = iss.rsa.public_key().public_numbers().n.to_bytes(256, "big")

    def hs(alg: str, secret: bytes, kid: str = "rsa-1") -> str:
        signing = f"{b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{body}"
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        mac = hmac.new(secret, signing.encode(), digest[alg.upper()]).digest()
        return f"{signing}.{b64(mac)}"

    def unsigned(alg: str, signature: str = "") -> str:
        return f"{b64(json.dumps({'alg': alg, 'kid': 'ec-1'}).encode())}.{body}.{signature}"

    def raw_sig(r: int, s: int, header: str = head) -> str:
        return f"{header}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    stranger_pub = iss.stranger.public_key().public_numbers()
    embedded = {"kty": "EC", "crv": "P-256", "x": as_int(stranger_pub.x),
                "y": as_int(stranger_pub.y)}  # fmt: skip

    # The signature segment of ES256 is 86 characters for 64 bytes: its last character has
    # 4 bits that decode to nothing. Flipping them keeps the signature valid.
    last = sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray = alphabet[(alphabet.index(last) & ~0x0F) | (~alphabet.index(last) & 0x0F)]

    def signed_claims(text: str) -> str:
        return iss.es256('{"alg":"ES256","kid":"ec-1"}', text)

    # The same signature bytes in the standard alphabet ('+', '/' for '-', '_'): a decoder
    # that maps one onto the other accepts it. (A random signature has one of them 94% of the
    # time: take the first valid token whose signature does.)
    std_token = next(
        t.rpartition(".")[0] + "." + t.rpartition(".")[2].replace("-", "+").replace("_", "/")
        for t in (iss.valid() for _ in range(200))
        if "-" in t.rpartition(".")[2] or "_" in t.rpartition(".")[2]
    )
    now = int(time.time())
    exp = str(now + 600)
    cases = {
        # unsigned
        "alg none": unsigned("none"),
        "alg None": unsigned("None"),
        "alg NONE": unsigned("NONE"),
        "alg nOnE with a signature": unsigned("nOnE", sig),
        "alg empty": unsigned(""),
        # HMAC with what is public
        "HS256 keyed with the RSA PEM": hs("HS256", pem),
        "HS512 keyed with the RSA PEM": hs("HS512", pem),
        "HS256 keyed with the modulus": hs("HS256", modulus),
        "hs256 lower case": hs("hs256", pem),
        "HS256 with an empty secret": hs("HS256", b""),
        # keys the token brings itself, kids the attacker chooses
        "embedded jwk": iss.es256(
            json.dumps({"alg": "ES256", "jwk": embedded}), claims, iss.stranger
        ),
        "embedded jwk with a known kid": iss.es256(
            json.dumps({"alg": "ES256", "kid": "ec-1", "jwk": embedded}), claims, iss.stranger
        ),
        "jku to the attacker": iss.es256(
            json.dumps({"alg": "ES256", "kid": "ec-1", "jku": "http://127.0.0.1:9/k.json"}),
            claims,
            iss.stranger,
        ),
        "x5u to the attacker": iss.es256(
            json.dumps({"alg": "ES256", "x5u": "http://127.0.0.1:9/c.pem"}), claims, iss.stranger
        ),
        "kid path traversal": iss.es256(
            json.dumps({"alg": "ES256", "kid": "../../../../dev/null"}), claims, iss.stranger
        ),
        "kid injection": iss.es256(
            json.dumps({"alg": "ES256", "kid": "x' UNION SELECT 'k"}), claims, iss.stranger
        ),
        "kid as a number": iss.es256(json.dumps({"alg": "ES256", "kid": 1}), claims),
        "kid as a list": iss.es256(json.dumps({"alg": "ES256", "kid": ["ec-1"]}), claims),
        # another algorithm than the key's
        "ES256 header on the RSA kid": iss.es256('{"alg":"ES256","kid":"rsa-1"}', claims),
        "RS256 header on the EC kid": iss.rs256('{"alg":"RS256","kid":"ec-1"}', claims),
        "ES384 header on a P-256 key": ".".join([b64(b'{"alg":"ES384","kid":"ec-1"}'), body, sig]),
        "PS256 header on a PKCS1 signature": iss.rs256('{"alg":"PS256","kid":"rsa-1"}', claims),
        # psychic signatures and out-of-range values (CVE-2022-21449)
        "ecdsa r=s=0": raw_sig(0, 0),
        "ecdsa r=s=n": raw_sig(P256_ORDER, P256_ORDER),
        "ecdsa r=0": raw_sig(0, 1),
        "ecdsa all ones": ".".join([head, body, b64(bytes([255]) * 64)]),
        "ecdsa signature too short": ".".join([head, body, b64(bytes(63))]),
        "ecdsa DER signature": f"{head}.{body}.{b64(bytes.fromhex('3006020100020100'))}",
        # one token, one spelling
        "padded segments": f"{head}.{body}{'=' * (-len(body) % 4)}.{sig}==",
        "standard base64 alphabet": std_token,
        "stray low bits in the signature": f"{head}.{body}.{sig[:-1]}{stray}",
        "a space inside": f"{head}.{body[:10]} {body[10:]}.{sig}",
        "a segment of 4n+1 characters": f"{head}.{body}A.{sig}",
        "five parts (JWE)": f"{head}.{body}.{sig}.AAAA.AAAA",
        "two parts": f"{head}.{body}",
        "empty": "",
        # parser differentials in JSON the issuer signed
        "repeated sub": signed_claims(
            obj(iss=q(ISSUER), sub=q("bob@example.com"), exp=exp) + ',"sub":"admin"}'
        ),
        "repeated sub spelled with an escape": signed_claims(
            obj(iss=q(ISSUER), sub=q("bob@example.com"), exp=exp) + ',"s\\u0075b":"admin"}'
        ),
        "repeated alg in the header": iss.es256(
            '{"alg":"ES256","kid":"ec-1","alg":"none"}', claims
        ),
        "exp NaN": signed_claims(obj(iss=q(ISSUER), sub=q("bob"), exp="NaN") + "}"),
        "exp Infinity": signed_claims(obj(iss=q(ISSUER), sub=q("bob"), exp="Infinity") + "}"),
        "exp 1e999": signed_claims(obj(iss=q(ISSUER), sub=q("bob"), exp="1e999") + "}"),
        "nbf -Infinity": signed_claims(obj(iss=q(ISSUER), exp=exp, nbf="-Infinity") + "}"),
        "exp as a string": signed_claims(obj(iss=q(ISSUER), exp=q(exp)) + "}"),
        "exp true": signed_claims(obj(iss=q(ISSUER), exp="true") + "}"),
        "exp null": signed_claims(obj(iss=q(ISSUER), exp="null") + "}"),
        "exp a list": signed_claims(obj(iss=q(ISSUER), exp=f"[{exp}]") + "}"),
        "exp an integer of 5000 digits": signed_claims(obj(iss=q(ISSUER), exp="9" * 5000) + "}"),
        "nbf a string in the future": signed_claims(
            obj(iss=q(ISSUER), exp=exp, nbf=q(str(now + 300))) + "}"
        ),
        "iss a list": signed_claims(obj(iss=f"[{q(ISSUER)}]", exp=exp) + "}"),
        "claims nested 3000 deep": signed_claims(
            obj(iss=q(ISSUER), exp=exp, x="[" * 3000 + "]" * 3000) + "}"
        ),
        "claims not an object": signed_claims("[1,2,3]"),
        "crit header": iss.es256('{"alg":"ES256","kid":"ec-1","crit":["exp"]}', claims),
        "header not an object": iss.es256('"ES256"', claims),
    }
    return cases


@pytest.fixture(scope="module")
def issuer():
    return Issuer()


@pytest.fixture(scope="module")
def world(tmp_path_factory, issuer):
    tmp = tmp_path_factory.mktemp("gw-jwt-attacks")
    (tmp / "keys.json").write_text(json.dumps(issuer.jwks()))
    rec = Recorder()
    config = {
        "workers": 1,
        "backends": [{"name": "up", "endpoints": [rec.url]}],
        "consumers": [{"name": "bob", "jwtSubjects": ["bob@example.com"]}],
        "routes": [
            {
                "name": "api",
                "backendRefs": [{"name": "up"}],
                "plugins": [
                    {
                        "name": "jwt",
                        "config": {
                            "jwksFile": str(tmp / "keys.json"),
                            "issuer": ISSUER,
                            "algorithms": ["ES256", "RS256", "PS256"],
                        },
                    }
                ],
            }
        ],
    }
    gw = GatewayProc(tmp).start(config)
    yield gw, rec
    gw.stop()
    rec.close()


def ask(gw: GatewayProc, token: str):
    request = (
        f"GET /api HTTP/1.1\r\nHost: x.test\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    )
    with Client(gw.port) as c:
        return c.send(request.encode("latin-1")).answer()


def test_a_valid_token_passes(world, issuer) -> None:
    gw, rec = world
    a = ask(gw, issuer.valid())
    assert a is not None and a.status == 200
    assert any(b"authorization: Bearer " in h for h in rec.heads())


def test_the_jwt_attack_catalogue_is_refused_and_never_reaches_the_upstream(world, issuer):
    gw, rec = world
    before = len(rec.heads())
    passed = {}
    for why, tok in forged(issuer).items():
        a = ask(gw, tok)
        if a is None or a.status not in (400, 401):
            passed[why] = a.status if a is not None else "no answer"
    assert not passed, f"tokens not refused: {passed}"
    assert len(rec.heads()) == before, "a forged token reached the upstream"
    assert ask(gw, issuer.valid()).status == 200  # the worker is still fine


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16-le", "utf-16", "utf-32"])
def test_claims_that_are_not_utf8_are_refused(world, issuer, encoding) -> None:
    """RFC 7519 §7.2: the claims are UTF-8 JSON. Python's json.loads(bytes) also reads a BOM,
    UTF-16 and UTF-32: the gateway accepts a token an upstream's UTF-8 parser reads as
    something else or not at all (one token, two readings)."""
    gw, _ = world
    tok = issuer.es256(
        '{"alg":"ES256","kid":"ec-1"}', json.dumps(issuer.claims()), encoding=encoding
    )
    a = ask(gw, tok)
    assert a is not None and a.status == 401, f"claims in {encoding} accepted: {a.status}"
