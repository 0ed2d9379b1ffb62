"""JWKS parsing and key choice (gateway/plugins/jwt.py).

Keys are made by `cryptography` and exported and signed with by jwcrypto, an
implementation we did not write. `parse_jwks` is checked key by key (what is kept,
what is skipped, and that a bad key costs no other); `kid` handling through the plugin
as routes build it from a configuration (parse_config), with its JWKS file rewritten
on disk for refreshes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk, jws

from gateway.plugins.base import Shared
from gateway.plugins.jwt import TokenError, parse_jwks
from gateway.runtime import build_plugins
from tests.unit.gwunit import one_route


def public(key: jwk.JWK, **extra: Any) -> dict[str, Any]:
    return {**json.loads(key.export_public()), **extra}


@pytest.fixture(scope="module")
def rsa2048() -> jwk.JWK:
    return jwk.JWK.from_pyca(rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def ec256() -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv="P-256")


@pytest.fixture(scope="module")
def ec256b() -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv="P-256")


def _b64int(n: int) -> str:
    return jwk.base64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _small_rsa(bits: int) -> dict[str, Any]:
    # (cryptography makes no key under 1024 bits; a public modulus need not be a real one)
    n = rsa.generate_private_key(65537, 1024).public_key().public_numbers().n
    return {"kty": "RSA", "n": _b64int(n >> (1024 - bits)), "e": "AQAB"}


def _off_curve() -> dict[str, Any]:
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64int(numbers.x), "y": _b64int(numbers.y + 1)}


# (what, the JWK, kept: its kty, or None for skipped)
KEYS: list[tuple[str, Any, str | None]] = [
    ("RSA 2048", lambda k: public(k["rsa"]), "RSA"),
    ("EC P-256", lambda k: public(k["ec"]), "EC"),
    ("EC P-384", lambda k: public(jwk.JWK.generate(kty="EC", crv="P-384")), "EC"),
    ("use: sig", lambda k: public(k["ec"], use="sig"), "EC"),
    ("key_ops: verify", lambda k: public(k["ec"], key_ops=["verify"]), "EC"),
    ("use: enc", lambda k: public(k["ec"], use="enc"), None),
    ("key_ops without verify", lambda k: public(k["ec"], key_ops=["encrypt"]), None),
    ("key_ops not a list", lambda k: public(k["ec"], key_ops="verify"), None),
    ("RSA 1024: too weak to trust", lambda k: _small_rsa(1024), None),
    ("RSA 512: too weak to trust", lambda k: _small_rsa(512), None),
    ("RSA e=1: every signature verifies", lambda k: {**public(k["rsa"]), "e": "AQ"}, None),
    ("RSA n not base64url", lambda k: {**public(k["rsa"]), "n": "!!!"}, None),
    ("RSA e a number, not base64url", lambda k: {**public(k["rsa"]), "e": 65537}, None),
    ("RSA without n", lambda k: {"kty": "RSA", "e": "AQAB"}, None),
    ("EC point off the curve (invalid-curve attack)", lambda k: _off_curve(), None),
    ("EC P-521: not supported", lambda k: public(jwk.JWK.generate(kty="EC", crv="P-521")), None),
    (
        "EC secp256k1: not supported",
        lambda k: public(jwk.JWK.generate(kty="EC", crv="secp256k1")),
        None,
    ),
    ("EC without y", lambda k: {kk: v for kk, v in public(k["ec"]).items() if kk != "y"}, None),
    ("oct: never an HMAC secret", lambda k: {"kty": "oct", "k": "c2VjcmV0"}, None),
    (
        "OKP Ed25519: not supported",
        lambda k: public(jwk.JWK.generate(kty="OKP", crv="Ed25519")),
        None,
    ),
    ("no kty", lambda k: {kk: v for kk, v in public(k["ec"]).items() if kk != "kty"}, None),
    ("not an object", lambda k: "a string", None),
]


@pytest.mark.parametrize(("make", "kept"), [pytest.param(m, kt, id=n) for n, m, kt in KEYS])
def test_a_jwk(
    rsa2048: jwk.JWK, ec256: jwk.JWK, ec256b: jwk.JWK, make: Any, kept: str | None
) -> None:
    good = public(ec256b, kid="neighbour")
    keys = parse_jwks({"keys": [make({"rsa": rsa2048, "ec": ec256}), good]})
    # a skipped key costs nothing of the one after it
    assert [k.kid for k in keys][-1:] == ["neighbour"]
    assert [k.kty for k in keys[:-1]] == ([kept] if kept else [])


def test_a_jwks_keeps_kid_and_alg(rsa2048: jwk.JWK, ec256: jwk.JWK) -> None:
    keys = parse_jwks({"keys": [public(rsa2048, kid="r", alg="PS256"), public(ec256, kid="e")]})
    assert [(k.kid, k.kty, k.alg) for k in keys] == [("r", "RSA", "PS256"), ("e", "EC", None)]


@pytest.mark.parametrize(
    "doc", [[], "keys", {"keys": {}}, {"keys": "x"}, {"nokeys": []}, None], ids=repr
)
def test_a_document_that_is_not_a_jwks_is_refused(doc: Any) -> None:
    with pytest.raises(ValueError, match="keys"):
        parse_jwks(doc)


# ---------------------------------------------------------------- kid, through the plugin


def write(path: Path, *keys: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(keys)}))


async def plugin(path: Path, algorithms: list[str]) -> Any:
    cfg = one_route(
        {
            "name": "jwt",
            "config": {
                "jwksFile": str(path),
                "algorithms": algorithms,
                "minRefreshInterval": "1h",
                "refreshInterval": "1h",
            },
        }
    )
    p = build_plugins(cfg.routes[0].plugins, Shared(), "route:r")["jwt"]
    await p.jwks.refresh()
    return p


def token(key: jwk.JWK, alg: str, kid: Any = None) -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    s = jws.JWS(json.dumps({"sub": "u", "exp": int(time.time()) + 300}).encode())
    s.add_signature(key, None, json.dumps(header))
    return s.serialize(compact=True)


async def accepted(p: Any, tok: str) -> str:
    try:
        await p.verify(tok)
    except TokenError as exc:
        return str(exc)
    return "ok"


async def test_kid_picks_the_key(tmp_path: Path, ec256: jwk.JWK, ec256b: jwk.JWK) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(ec256, kid="a"), public(ec256b, kid="b"))
    p = await plugin(path, ["ES256"])
    try:
        assert await accepted(p, token(ec256, "ES256", "a")) == "ok"
        assert await accepted(p, token(ec256b, "ES256", "b")) == "ok"
        # the key a kid names, not any key that verifies
        assert await accepted(p, token(ec256, "ES256", "b")) == "bad signature"
        assert await accepted(p, token(ec256, "ES256", "A")) == "unknown key id 'A'"
        assert await accepted(p, token(ec256, "ES256", 1)) == "kid must be a string"
    finally:
        await p.jwks.close()


async def test_without_a_kid_only_a_lone_key_of_the_type_is_used(
    tmp_path: Path, rsa2048: jwk.JWK, ec256: jwk.JWK, ec256b: jwk.JWK
) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(rsa2048, kid="r"), public(ec256, kid="a"))
    p = await plugin(path, ["ES256", "RS256"])
    try:
        assert await accepted(p, token(ec256, "ES256")) == "ok"
        assert await accepted(p, token(rsa2048, "RS256")) == "ok"
    finally:
        await p.jwks.close()
    write(path, public(ec256, kid="a"), public(ec256b, kid="b"))
    p = await plugin(path, ["ES256"])
    try:
        assert await accepted(p, token(ec256, "ES256")) == "no key fits this token"
    finally:
        await p.jwks.close()


async def test_one_kid_may_name_an_rsa_and_an_ec_key(
    tmp_path: Path, rsa2048: jwk.JWK, ec256: jwk.JWK
) -> None:
    # RFC 7517 §4.5: keys of different types may share a kid (a move from RSA to EC).
    path = tmp_path / "jwks.json"
    write(path, public(rsa2048, kid="k"), public(ec256, kid="k"))
    p = await plugin(path, ["ES256", "RS256"])
    try:
        assert await accepted(p, token(rsa2048, "RS256", "k")) == "ok"
        assert await accepted(p, token(ec256, "ES256", "k")) == "ok"
    finally:
        await p.jwks.close()


async def test_a_jwks_alg_pins_its_key(tmp_path: Path, rsa2048: jwk.JWK) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(rsa2048, kid="r", alg="PS256"))
    p = await plugin(path, ["RS256", "PS256"])
    try:
        assert await accepted(p, token(rsa2048, "PS256", "r")) == "ok"
        assert "the key is for PS256" in await accepted(p, token(rsa2048, "RS256", "r"))
    finally:
        await p.jwks.close()


async def test_an_unknown_kid_refreshes_once_then_waits(
    tmp_path: Path, ec256: jwk.JWK, ec256b: jwk.JWK
) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(ec256, kid="old"))
    p = await plugin(path, ["ES256"])
    try:
        p.jwks.last_attempt -= 7200  # (as if the last fetch were two hours ago)
        refreshes = p.jwks.refreshes
        write(path, public(ec256, kid="old"), public(ec256b, kid="new"))
        assert await accepted(p, token(ec256b, "ES256", "new")) == "ok"
        assert p.jwks.refreshes == refreshes + 1
        # another unknown kid within minRefreshInterval: no second fetch
        write(path, public(ec256b, kid="newer"))
        assert await accepted(p, token(ec256b, "ES256", "newer")) == "unknown key id 'newer'"
        assert p.jwks.refreshes == refreshes + 1
        assert await accepted(p, token(ec256, "ES256", "old")) == "ok"
    finally:
        await p.jwks.close()


@pytest.mark.parametrize("broken", ["{not json", '{"keys": 5}', "[]"])
async def test_a_failed_refresh_keeps_the_keys(tmp_path: Path, ec256: jwk.JWK, broken: str) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(ec256, kid="a"))
    p = await plugin(path, ["ES256"])
    try:
        refreshes = p.jwks.refreshes
        path.write_text(broken)
        await p.jwks.refresh()
        assert p.jwks.refreshes == refreshes  # (the refresh did run, and failed)
        assert await accepted(p, token(ec256, "ES256", "a")) == "ok"
    finally:
        await p.jwks.close()


async def test_a_weak_rsa_key_in_the_jwks_verifies_nothing(tmp_path: Path) -> None:
    weak = jwk.JWK.from_pyca(rsa.generate_private_key(65537, 1024))
    path = tmp_path / "jwks.json"
    write(path, public(weak, kid="w"))
    p = await plugin(path, ["RS256"])
    try:
        assert await accepted(p, token(weak, "RS256", "w")) == "unknown key id 'w'"
    finally:
        await p.jwks.close()


async def test_a_key_dropped_from_the_jwks_stops_verifying(
    tmp_path: Path, ec256: jwk.JWK, ec256b: jwk.JWK
) -> None:
    path = tmp_path / "jwks.json"
    write(path, public(ec256, kid="a"))
    p = await plugin(path, ["ES256"])
    try:
        write(path)  # a valid, empty JWKS: the issuer revoked its keys
        await p.jwks.refresh()
        assert await accepted(p, token(ec256, "ES256", "a")) == "unknown key id 'a'"
    finally:
        await p.jwks.close()
