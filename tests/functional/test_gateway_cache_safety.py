"""The cache never serves one client's answer to another (RFC 9111 §3.5, cache poisoning).

The upstream is the echo server: its answer holds the request it saw, the
caller's token included, so an answer served to the wrong caller shows at once.
Classes: credentialed requests (Authorization, Cookie) and non-public answers;
token holders that map to no consumer; Host spellings (one entry per normalized
Host, no poisoning through a bad port); unkeyed fields that change what the
upstream serves (X-Original-URL and friends never reach it); and routes chosen
by a header sharing one cache.
"""

from __future__ import annotations

import json
import time

import pytest
from jwcrypto import jwk, jwt

from .gwkit import Client, GatewayProc, start_echo, stop

ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-cache-safety")
    a, b = start_echo(tmp, "a"), start_echo(tmp, "b")
    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="k1")
    (tmp / "jwks.json").write_text(json.dumps({"keys": [json.loads(key.export_public())]}))
    gw = GatewayProc(tmp)
    cache = {"name": "cache", "config": {"ttl": "60s"}}
    gw.start(
        {
            "workers": 1,
            "backends": [
                {"name": "a", "endpoints": [a.url]},
                {"name": "b", "endpoints": [b.url]},
            ],
            "consumers": [{"name": "carol", "apiKeys": ["carol-key-123"]}],
            "plugins": [cache],
            "routes": [
                {
                    "name": "jwt",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/jwt"}}],
                    "backendRefs": [{"name": "a"}],
                    "plugins": [
                        {
                            "name": "jwt",
                            "config": {"jwksFile": str(tmp / "jwks.json"), "algorithms": ["ES256"]},
                        },
                    ],
                },
                {
                    "name": "v2",
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/page"},
                            "headers": [{"name": "x-version", "value": "2"}],
                        }
                    ],
                    "backendRefs": [{"name": "b"}],
                },
                {"name": "open", "backendRefs": [{"name": "a"}]},
            ],
        }
    )
    yield gw, key
    gw.stop()
    stop(a.proc)
    stop(b.proc)


def token(key: jwk.JWK, sub: str | None) -> str:
    claims = {"iss": ISSUER, "exp": int(time.time()) + 300}
    if sub is not None:
        claims["sub"] = sub
    t = jwt.JWT(header={"alg": "ES256", "kid": "k1"}, claims=claims)
    t.make_signed_token(key)
    return t.serialize()


def get(gw: GatewayProc, target: str, host: str = "shop.test", **headers: str):
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    with Client(gw.port) as c:
        c.send(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        a = c.answer()
    assert a is not None
    body = json.loads(a.body) if a.status == 200 else {}
    return a.status, (a.header(b"x-cache-status") or b"").decode(), body


def cc(value: str) -> str:
    return f"Cache-Control: {value}"


def test_a_non_public_answer_to_a_token_holder_is_never_stored(world) -> None:
    gw, key = world
    t1, t2 = token(key, "u1@example.com"), token(key, "u2@example.com")
    for t in (t1, t2, t1):
        status, cache, body = get(gw, "/jwt/private", authorization=f"Bearer {t}",
                                  x_echo_header=cc("max-age=60"))  # fmt: skip
        assert status == 200 and cache == "MISS"
        assert body["headers"]["authorization"] == f"Bearer {t}"


def test_token_holders_without_a_consumer_never_share_an_entry(world) -> None:
    gw, key = world
    t1, t2 = token(key, "u1@example.com"), token(key, "u2@example.com")
    t3, t4 = token(key, None), token(key, None)  # no subject at all
    answers = {}
    for t in (t1, t2, t3, t4):
        status, cache, body = get(gw, "/jwt/public", authorization=f"Bearer {t}",
                                  x_echo_header=cc("public, max-age=60"))  # fmt: skip
        assert status == 200 and cache == "MISS", t
        assert body["headers"]["authorization"] == f"Bearer {t}"
        answers[t] = body["n"]
    for t in (t1, t2, t3, t4):  # each one's own entry, now a HIT
        status, cache, body = get(gw, "/jwt/public", authorization=f"Bearer {t}")
        assert (status, cache) == (200, "HIT") and body["n"] == answers[t]
        assert body["headers"]["authorization"] == f"Bearer {t}"


def test_cookie_requests_get_only_answers_marked_shareable(world) -> None:
    gw, _ = world
    _, cache, first = get(gw, "/cookie-page")  # stored with the default ttl (no credentials)
    assert cache == "MISS"
    _, cache, mine = get(gw, "/cookie-page", cookie="session=alice")
    assert cache == "MISS" and mine["headers"]["cookie"] == "session=alice"  # not served
    _, cache, again = get(gw, "/cookie-page", cookie="session=bob")
    assert cache == "MISS" and again["headers"]["cookie"] == "session=bob"  # nor stored
    _, cache, plain = get(gw, "/cookie-page")
    assert cache == "HIT" and plain["n"] == first["n"]
    _, cache, shared = get(
        gw, "/cookie-public", cookie="s=1", x_echo_header=cc("public, max-age=60")
    )
    assert cache == "MISS"
    _, cache, hit = get(gw, "/cookie-public", cookie="s=2")
    assert cache == "HIT" and hit["n"] == shared["n"]


@pytest.mark.parametrize("spelling", ["SHOP.test", "shop.test.", "shop.test:80", "Shop.Test.:80"])
def test_every_spelling_of_a_host_finds_the_same_entry(world, spelling) -> None:
    gw, _ = world
    path = f"/hosts-{spelling.replace(':', '-').replace('.', '-')}"
    _, cache, first = get(gw, path, host="shop.test")
    assert cache == "MISS"
    _, cache, second = get(gw, path, host=spelling)
    assert cache == "HIT" and second["n"] == first["n"]
    _, cache, other = get(gw, path, host="shop.test:8080")
    assert cache == "MISS" and other["headers"]["host"] == "shop.test:8080"


def test_a_bad_port_cannot_poison_an_entry(world) -> None:
    gw, _ = world
    status, _, _ = get(gw, "/poison", host="shop.test:poison")
    assert status == 400
    status, cache, body = get(gw, "/poison")
    assert (status, cache) == (200, "MISS") and body["headers"]["host"] == "shop.test"


def test_fields_that_would_make_the_upstream_serve_another_url_never_reach_it(world) -> None:
    gw, _ = world
    _, cache, body = get(gw, "/home", x_original_url="/admin", x_rewrite_url="/admin",
                         x_forwarded_host="evil.test", x_http_method_override="DELETE")  # fmt: skip
    assert cache == "MISS"
    for name in ("x-original-url", "x-rewrite-url", "x-http-method-override"):
        assert name not in body["headers"]
    assert body["headers"]["x-forwarded-host"] == "shop.test"
    _, cache, plain = get(gw, "/home")
    assert cache == "HIT" and plain["target"] == "/home"


def test_routes_chosen_by_a_header_never_share_an_entry(world) -> None:
    gw, _ = world
    _, cache, v2 = get(gw, "/page", x_version="2")
    assert cache == "MISS" and v2["server"] == "b"
    _, cache, v1 = get(gw, "/page")
    assert cache == "MISS" and v1["server"] == "a"
    _, cache, v2_again = get(gw, "/page", x_version="2")
    assert cache == "HIT" and v2_again["server"] == "b"
