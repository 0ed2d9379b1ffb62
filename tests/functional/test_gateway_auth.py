"""Gateway authentication: API keys, JWT (file and URL JWKS), consumers, groups and ACLs.

Tokens are minted with jwcrypto; the gateway verifies with its own code on
`cryptography`, so neither side can agree with the other by sharing a bug.
The JWKS URL is served by Python's http.server, whose log counts fetches.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import pytest
from jwcrypto import jwk, jws, jwt

from .cakit import free_port
from .gwkit import GatewayProc, start_echo, stop, wait_port

ISSUER = "https://issuer.example"
AUDIENCE = "shop-api"


def mint(key: jwk.JWK, alg: str, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bob@example.com", "exp": now + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    token = jwt.JWT(header={"alg": alg, "kid": key.get("kid")}, claims=body)
    token.make_signed_token(key)
    return token.serialize()


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_jwks(path, *keys: jwk.JWK) -> None:
    path.write_text(json.dumps({"keys": [json.loads(k.export_public()) for k in keys]}))


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-1"),
        "ec": jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-1"),
        "other": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-1"),  # same kid, wrong key
        "stranger": jwk.JWK.generate(kty="EC", crv="P-256", kid="nobody-knows-me"),
        "rotated": jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-2"),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("gw-auth")
    echo = start_echo(tmp, "a")
    (tmp / "jwks").mkdir()
    write_jwks(tmp / "jwks" / "keys.json", keys["rsa"], keys["ec"])
    write_jwks(tmp / "keys.json", keys["rsa"], keys["ec"])
    jwks_port = free_port()
    jwks_log = tmp / "jwks-server.log"
    with open(jwks_log, "w") as out:
        jwks_server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(tmp / "jwks"), str(jwks_port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_port(jwks_port, jwks_server, jwks_log)
    jwt_file = {
        "name": "jwt",
        "config": {
            "jwksFile": str(tmp / "keys.json"),
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "leeway": "5s",
        },
    }
    jwt_url = {
        "name": "jwt",
        "config": {
            "jwksUrl": f"http://127.0.0.1:{jwks_port}/keys.json",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "minRefreshInterval": "2s",
        },
    }
    key_auth = {"name": "key-auth", "config": {"header": "apikey", "query": "apikey"}}

    def route(name, *plugins):
        return {
            "name": name,
            "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
            "backendRefs": [{"name": "echo"}],
            "plugins": list(plugins),
        }

    config = {
        "workers": 1,
        "backends": [{"name": "echo", "endpoints": [echo.url]}],
        "consumers": [
            {"name": "alice", "groups": ["admins"], "apiKeys": ["alice-key-123"]},
            {"name": "bob", "groups": ["users"], "apiKeys": ["bob-key-4567"],
             "jwtSubjects": ["bob@example.com"]},
        ],
        "routes": [
            route("key", key_auth),
            route("jwt", jwt_file),
            route("jwturl", jwt_url),
            route("either", key_auth, jwt_file),
            route("admin", key_auth, {"name": "acl", "config": {"allow": ["admins"]}}),
            route("nousers", key_auth, {"name": "acl", "config": {"deny": ["users"]}}),
            route("open"),
        ],
    }  # fmt: skip
    gw = GatewayProc(tmp).start(config)
    yield gw, tmp, jwks_log
    gw.stop()
    stop(echo.proc)
    stop(jwks_server)


async def get(gw, path, headers=None):
    async with aiohttp.ClientSession() as s, s.get(gw.url(path), headers=headers or {}) as r:
        body = await r.read()
        try:
            return r.status, r.headers, json.loads(body)
        except ValueError:
            return r.status, r.headers, body


async def test_api_key_in_header_or_query_binds_the_consumer_and_is_not_forwarded(world):
    gw, _, _ = world
    status, h1, echo = await get(gw, "/key", {"apikey": "alice-key-123"})
    assert status == 200
    assert "apikey" not in echo["headers"]
    status, h2, echo = await get(gw, "/key/x?apikey=bob-key-4567&keep=1")
    assert status == 200
    assert echo["target"] == "/key/x?keep=1"
    # each request is logged with the consumer its own key belongs to
    assert (await gw.logged(h1["x-request-id"]))["consumer"] == "alice"
    assert (await gw.logged(h2["x-request-id"]))["consumer"] == "bob"


@pytest.mark.parametrize("headers", [{}, {"apikey": "wrong-key-000"}, {"apikey": ""}])
async def test_missing_or_wrong_api_key_is_401(world, headers):
    status, h, _ = await get(world[0], "/key", headers)
    assert status == 401
    assert h["www-authenticate"].startswith("Key")


async def test_valid_rs256_and_es256_tokens_are_accepted_and_mapped_to_consumers(world, keys):
    gw = world[0]
    for key, alg in ((keys["rsa"], "RS256"), (keys["ec"], "ES256")):
        status, h, echo = await get(gw, "/jwt", {"Authorization": f"Bearer {mint(key, alg)}"})
        assert status == 200, echo
        assert echo["headers"]["authorization"].startswith("Bearer ")
        rec = await gw.logged(h["x-request-id"])
        assert (rec["route"], rec["consumer"]) == ("jwt", "bob"), (alg, rec)


def forged(keys) -> dict[str, str]:
    """Tokens a correct verifier refuses, by why."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bob@example.com", "exp": now + 300}
    good = mint(keys["rsa"], "RS256")
    head, _body, sig = good.split(".")
    none_token = ".".join(
        [b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode()),
         b64(json.dumps(claims).encode()), ""]
    )  # fmt: skip
    # HMAC keyed with the RSA public key's PEM: the classic algorithm confusion.
    pem = keys["rsa"].export_to_pem()
    hmac_key = jwk.JWK(kty="oct", k=b64(pem))
    confused = jws.JWS(json.dumps(claims))
    confused.add_signature(hmac_key, None, json.dumps({"alg": "HS256", "kid": "rsa-1"}))
    tampered_claims = b64(json.dumps({**claims, "sub": "alice"}).encode())
    return {
        "alg none": none_token,
        "HS256 with the public key": confused.serialize(compact=True),
        "unknown kid": mint(keys["stranger"], "ES256"),
        "signed by another key": mint(keys["other"], "RS256"),
        "tampered claims": f"{head}.{tampered_claims}.{sig}",
        "expired": mint(keys["rsa"], "RS256", exp=now - 60),
        "not yet valid": mint(keys["rsa"], "RS256", nbf=now + 600),
        "wrong issuer": mint(keys["rsa"], "RS256", iss="https://evil.example"),
        "wrong audience": mint(keys["rsa"], "RS256", aud="other-api"),
        "no exp": mint(keys["rsa"], "RS256", exp=None),
        "garbage": "abc.def",
    }


async def test_every_forged_or_invalid_token_is_refused(world, keys):
    gw = world[0]
    for why, token in forged(keys).items():
        status, h, _body = await get(gw, "/jwt", {"Authorization": f"Bearer {token}"})
        assert status == 401, why
        assert "invalid_token" in h["www-authenticate"], why
    status, h, _ = await get(gw, "/jwt")
    assert status == 401 and "invalid_token" not in h["www-authenticate"]


async def test_either_plugin_may_authenticate(world, keys):
    gw = world[0]
    assert (await get(gw, "/either", {"apikey": "alice-key-123"}))[0] == 200
    token = mint(keys["ec"], "ES256")
    assert (await get(gw, "/either", {"Authorization": f"Bearer {token}"}))[0] == 200
    assert (await get(gw, "/either"))[0] == 401


async def test_acl_allow_and_deny_by_group(world):
    gw = world[0]
    assert (await get(gw, "/admin", {"apikey": "alice-key-123"}))[0] == 200
    assert (await get(gw, "/admin", {"apikey": "bob-key-4567"}))[0] == 403
    assert (await get(gw, "/admin"))[0] == 401
    assert (await get(gw, "/nousers", {"apikey": "alice-key-123"}))[0] == 200
    assert (await get(gw, "/nousers", {"apikey": "bob-key-4567"}))[0] == 403


async def test_jwks_url_rotation_is_picked_up_and_unknown_kids_cannot_hammer_it(world, keys):
    gw, tmp, jwks_log = world
    token = mint(keys["ec"], "ES256")
    assert (await get(gw, "/jwturl", {"Authorization": f"Bearer {token}"}))[0] == 200
    fetches = lambda: jwks_log.read_text().count("GET /keys.json")  # noqa: E731
    # 50 tokens with unknown kids inside one minRefreshInterval: at most one extra fetch.
    before = fetches()
    stranger = mint(keys["stranger"], "ES256")
    for _ in range(50):
        assert (await get(gw, "/jwturl", {"Authorization": f"Bearer {stranger}"}))[0] == 401
    assert fetches() - before <= 1
    # The issuer rotates in a new key; a token with its kid works once the cap allows a fetch.
    write_jwks(tmp / "jwks" / "keys.json", keys["rsa"], keys["ec"], keys["rotated"])
    rotated = mint(keys["rotated"], "ES256")
    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = (await get(gw, "/jwturl", {"Authorization": f"Bearer {rotated}"}))[0]
        await asyncio.sleep(0.2)
    assert status == 200
    assert (await get(gw, "/jwturl", {"Authorization": f"Bearer {stranger}"}))[0] == 401


async def test_routes_without_auth_plugins_stay_open(world):
    assert (await get(world[0], "/open"))[0] == 200
