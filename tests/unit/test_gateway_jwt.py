"""JWT verification against a JWKS file: one spelling per token, one meaning per claim.

Tokens are signed with jwcrypto (not the gateway's code). Each forged variant
below keeps a valid signature over the same bytes, or is a catalogue attack
(PortSwigger's JWT labs, jwt_tool): a token must be refused unless it is the
one canonical spelling of a well-formed, finite, unambiguous token.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwk, jws

from gateway.plugins.base import Shared
from gateway.plugins.jwt import Jwt, JwtConfig, TokenError


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key():
    return jwk.JWK.generate(kty="EC", crv="P-256", kid="k1")


@pytest.fixture
async def plugin(key, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [json.loads(key.export_public())]}))
    p = Jwt(JwtConfig(jwks_url=None, jwks_file=str(path), algorithms=("ES256",)), Shared(), "r")
    await p.jwks.refresh()
    yield p
    await p.jwks.close()


def sign(key: jwk.JWK, payload: str, header: dict | None = None) -> str:
    s = jws.JWS(payload.encode())
    s.add_signature(key, None, json.dumps(header or {"alg": "ES256", "kid": "k1"}))
    return s.serialize(compact=True)


def sign_raw(key: jwk.JWK, payload: str, header: dict) -> str:
    """A token jwcrypto refuses to make (e.g. with `crit`), signed with the key all the same."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
    der = key.get_op_key("sign").sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def claims(**extra) -> str:
    return json.dumps({"sub": "u@example.com", "exp": int(time.time()) + 300, **extra})


async def test_a_canonical_token_passes(plugin, key) -> None:
    assert (await plugin.verify(sign(key, claims())))["sub"] == "u@example.com"


def respell(token: str, part: int, how: str) -> str:
    parts = token.split(".")
    seg = parts[part]
    if how == "padding":
        seg += "=" * (-len(seg) % 4 or 4)
    elif how == "std alphabet":
        seg = seg.replace("-", "+").replace("_", "/")
    elif how == "stray bits":
        # the last character carries unused low bits: flip one, the bytes stay the same
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(seg[-1])
        seg = seg[:-1] + alphabet[last ^ 1]
    elif how == "whitespace":
        seg = seg[:5] + " " + seg[5:]
    parts[part] = seg
    return ".".join(parts)


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("how", ["padding", "std alphabet", "stray bits", "whitespace"])
async def test_another_spelling_of_the_same_token_is_refused(plugin, key, part, how) -> None:
    for n in range(64):  # find a token whose segment the variant actually changes
        token = sign(key, claims(jti="?" * n), {"alg": "ES256", "kid": "k1", "n": "?" * n})
        forged = respell(token, part, how)
        if forged == token:
            continue
        segment = forged.split(".")[part]
        if how == "stray bits" and len(segment) % 4 not in (2, 3):
            continue
        if how == "std alphabet" and not any(c in segment for c in "+/"):
            continue
        break
    else:
        raise AssertionError("no token of this shape came up in 64 tries")
    with pytest.raises(TokenError, match="canonical base64url"):
        await plugin.verify(forged)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"sub": "u@example.com", "sub": "admin", "exp": %d}', "appears twice"),
        ('{"sub": "u@example.com", "exp": NaN}', "not JSON"),
        ('{"sub": "u@example.com", "exp": Infinity}', "not JSON"),
        ('{"sub": "u@example.com", "exp": 1e999}', "not finite"),
        ('{"sub": "u@example.com", "exp": %d, "nbf": -Infinity}', "not JSON"),
        ('{"sub": "u@example.com", "exp": "9999999999"}', "exp is not a number"),
        ('{"sub": "u@example.com", "exp": true}', "exp is not a number"),
        ('["not", "an", "object"]', "JSON objects"),
    ],
)
async def test_claims_with_more_than_one_meaning_are_refused(plugin, key, payload, reason) -> None:
    text = payload % (int(time.time()) + 300) if "%d" in payload else payload
    with pytest.raises(TokenError, match=reason):
        await plugin.verify(sign(key, text))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "ES256", "kid": "k1", "kid ": "x", "alg ": "none"}, None),  # (distinct names)
        ({"alg": "none", "kid": "k1"}, "alg none"),
        ({"alg": "HS256", "kid": "k1"}, "HS256"),
        ({"alg": "ES256", "kid": "k1", "crit": ["exp"]}, "critical"),
        ({"alg": "ES256", "kid": 7}, "kid must be a string"),
        ({"alg": "ES256", "kid": "../../dev/null"}, "unknown key id"),
    ],
)
async def test_header_attacks(plugin, key, header, reason) -> None:
    token = sign_raw(key, claims(), header) if header["alg"] == "ES256" else None
    if token is None:  # no signature at all
        body = b64(claims().encode())
        token = f"{b64(json.dumps(header).encode())}.{body}.{b64(b'sig')}"
    if reason is None:
        assert (await plugin.verify(token))["sub"] == "u@example.com"
        return
    with pytest.raises(TokenError, match=reason):
        await plugin.verify(token)


@pytest.mark.parametrize(
    "encode",
    [
        lambda t: t.encode("utf-16"),
        lambda t: t.encode("utf-16-le"),
        lambda t: t.encode("utf-32"),
        lambda t: b"\xef\xbb\xbf" + t.encode(),
        lambda t: t.encode("latin-1") + b"\xff",
    ],
    ids=["utf-16", "utf-16-le", "utf-32", "bom", "not utf-8"],
)
async def test_claims_must_be_utf8_without_a_bom(plugin, key, encode) -> None:
    payload = encode(claims())
    s = jws.JWS(payload)
    s.add_signature(key, None, json.dumps({"alg": "ES256", "kid": "k1"}))
    with pytest.raises(TokenError, match=r"UTF-8|byte-order|not JSON"):
        await plugin.verify(s.serialize(compact=True))


async def test_a_key_embedded_in_the_token_is_not_trusted(plugin) -> None:
    attacker = jwk.JWK.generate(kty="EC", crv="P-256", kid="k1")
    header = {"alg": "ES256", "kid": "k1", "jwk": json.loads(attacker.export_public())}
    with pytest.raises(TokenError, match="bad signature"):
        await plugin.verify(sign(attacker, claims(), header))
    header = {"alg": "ES256", "kid": "k1", "jku": "http://127.0.0.1:1/jwks.json"}
    with pytest.raises(TokenError, match="bad signature"):
        await plugin.verify(sign(attacker, claims(), header))


async def test_psychic_signatures_are_refused(plugin, key) -> None:
    # CVE-2022-21449: an ECDSA signature of r = s = 0 verified anything in some libraries
    token = sign(key, claims())
    head, body, _ = token.split(".")
    with pytest.raises(TokenError, match="bad signature"):
        await plugin.verify(f"{head}.{body}.{b64(bytes(64))}")
