"""Outside attacks on the response cache: one client's answer served to another (cache
deception and poisoning; Kettle, "Practical Web Cache Poisoning" 2018 and "Web Cache
Entanglement" 2020).

The upstream is the aiohttp echo: every answer carries a sequence number `n`, so a replay
from the cache is visible as an `n` already seen, and the echo reflects the request it got,
so a poisoned entry shows what reached it. The classes:

- credentials: a request with Authorization or Cookie gets a personal answer; unless the
  upstream says it may be shared (`public`, `s-maxage`) it is neither stored nor answered
  from an entry an anonymous request left;
- principals: JWT callers whose subject maps to no consumer (and tokens without a subject)
  each have their own entries, even for answers marked public, and whatever header carries
  the token;
- Host: every spelling of one host (case, trailing dot, default port, absolute-form) is one
  entry; another host is another; X-Forwarded-Host from the client cannot poison it;
- key normalization that joins requests the upstream answers differently (parameter order,
  a qualified `no-cache` whose fields are replayed).
"""

from __future__ import annotations

import json
import time

import pytest
from jwcrypto import jwk, jwt

from .gwkit import Client, GatewayProc, start_echo, stop

ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def signing_key():
    return jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-1")


def token(key: jwk.JWK, **claims) -> str:
    body = {"iss": ISSUER, "exp": int(time.time()) + 600, **claims}
    t = jwt.JWT(header={"alg": "ES256", "kid": key.get("kid")}, claims=body)
    t.make_signed_token(key)
    return t.serialize()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, signing_key):
    tmp = tmp_path_factory.mktemp("gw-cache-attacks")
    echo = start_echo(tmp, "a")
    (tmp / "keys.json").write_text(json.dumps({"keys": [json.loads(signing_key.export_public())]}))
    cache = {"name": "cache", "config": {"ttl": "60s"}}

    def jwt_plugin(**extra) -> dict:
        return {
            "name": "jwt",
            "config": {"jwksFile": str(tmp / "keys.json"), "issuer": ISSUER, **extra},
        }

    def route(name: str, *plugins: dict, **extra) -> dict:
        return {
            "name": name,
            "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
            "backendRefs": [{"name": "echo"}],
            "plugins": [*plugins, cache],
            **extra,
        }

    g = GatewayProc(tmp).start(
        {
            "workers": 1,
            "backends": [{"name": "echo", "endpoints": [echo.url]}],
            "consumers": [{"name": "bob", "jwtSubjects": ["bob@example.com"]}],
            "routes": [
                route("jwt", jwt_plugin()),
                route("jwtx", jwt_plugin(header="x-token")),
                route("hosted", hostnames=["shop.example.test", "other.example.test"]),
                route("c"),
            ],
        }
    )
    yield g
    g.stop()
    stop(echo.proc)


def get(gw: GatewayProc, target: str, headers: dict[str, str] | None = None, host="x.test"):
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{lines}Connection: close\r\n\r\n"
    with Client(gw.port) as c:
        a = c.send(request.encode("latin-1")).answer()
    assert a is not None and a.status == 200, (target, a)
    status = a.header(b"x-cache-status")
    return status.decode() if status else None, json.loads(a.body), a


PUBLIC = {"x-echo-header": "Cache-Control: public, max-age=60"}


# ------------------------------------------------------------------ credentials


@pytest.mark.parametrize(
    ("alice", "bob"),
    [
        ({"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Basic Ym9iOnB3"}),
        ({"Cookie": "session=alice"}, {"Cookie": "session=bob"}),
        ({"Proxy-Authorization": "Basic YWxpY2U6cHc="}, {"Proxy-Authorization": "Basic Yg=="}),
    ],
    ids=["authorization", "cookie", "proxy-authorization"],
)
def test_a_personal_answer_is_never_replayed_to_another_client(gw, alice, bob) -> None:
    path = f"/c/me-{next(iter(alice))}"
    st1, first, _ = get(gw, path, alice)
    st2, second, _ = get(gw, path, bob)
    st3, anonymous, _ = get(gw, path)
    st4, again, _ = get(gw, path, alice)
    assert (st1, st2, st3, st4) == ("MISS", "MISS", "MISS", "MISS")
    assert len({first["n"], second["n"], anonymous["n"], again["n"]}) == 4
    # The anonymous answer was stored; a credentialed request is never answered from it.
    assert get(gw, path)[0] == "HIT"
    st5, mine, _ = get(gw, path, bob)
    assert st5 == "MISS" and mine["n"] != anonymous["n"]


def test_an_answer_the_upstream_marks_public_is_shared_by_credentialed_requests(gw) -> None:
    path = "/c/public-page"
    st1, first, _ = get(gw, path, {"Authorization": "Basic YWxpY2U6cHc=", **PUBLIC})
    st2, second, _ = get(gw, path, {"Authorization": "Basic Ym9iOnB3", **PUBLIC})
    assert (st1, st2) == ("MISS", "HIT") and first["n"] == second["n"]


# ------------------------------------------------------------------ principals


@pytest.mark.parametrize(("route", "header"), [("jwt", "Authorization"), ("jwtx", "x-token")])
def test_jwt_callers_without_a_consumer_never_share_an_entry(gw, signing_key, route, header):
    def as_(tok: str) -> dict[str, str]:
        return {header: f"Bearer {tok}", **PUBLIC}  # public: only the principal separates

    carol, dave = token(signing_key, sub="carol"), token(signing_key, sub="dave")
    nosub1, nosub2 = token(signing_key, scope="a"), token(signing_key, scope="b")
    carol_again = token(signing_key, sub="carol", aud="x")  # same subject, another token
    path = f"/{route}/account"
    seen = {}
    for who, tok in (("carol", carol), ("dave", dave), ("nosub1", nosub1), ("nosub2", nosub2)):
        status, body, _ = get(gw, path, as_(tok))
        assert status == "MISS", who
        seen[who] = body["n"]
    assert len(set(seen.values())) == 4
    # Each principal finds its own entry again; the same subject in another token is the
    # same caller.
    assert get(gw, path, as_(carol))[1]["n"] == seen["carol"]
    assert get(gw, path, as_(carol_again))[1]["n"] == seen["carol"]
    assert get(gw, path, as_(nosub1))[1]["n"] == seen["nosub1"]
    # A consumer's answer is not an unmapped subject's and vice versa.
    status, bob, _ = get(gw, path, as_(token(signing_key, sub="bob@example.com")))
    assert status == "MISS" and bob["n"] not in seen.values()


# ------------------------------------------------------------------ Host


def test_every_spelling_of_a_host_is_one_entry_and_the_client_cannot_poison_it(gw) -> None:
    path = "/hosted/page"
    status, first, _ = get(
        gw, path, {"X-Forwarded-Host": "evil.example", "X-Host": "evil.example"},
        host="shop.example.test",
    )  # fmt: skip
    assert status == "MISS"
    assert first["headers"]["x-forwarded-host"] == "shop.example.test"
    assert "x-host" not in first["headers"]
    for spelling in ("SHOP.Example.TEST", "shop.example.test.", "shop.example.test:80"):
        status, body, _ = get(gw, path, host=spelling)
        assert (status, body["n"]) == ("HIT", first["n"]), spelling
    status, body, _ = get(gw, "http://shop.example.test:80" + path, host="shop.example.test")
    assert (status, body["n"]) == ("HIT", first["n"])
    status, body, _ = get(gw, path, host="other.example.test")
    assert status == "MISS" and body["headers"]["x-forwarded-host"] == "other.example.test"
    status, body, _ = get(gw, path, host="shop.example.test:8080")
    assert status == "MISS" and body["headers"]["x-forwarded-host"] == "shop.example.test:8080"


# ------------------------------------------------------------------ key normalization


def test_parameter_order_the_upstream_reads_is_part_of_the_key(gw) -> None:
    """The key sorts query parameters. For a repeated parameter the order is the meaning:
    most frameworks read the first (`?lang=en&lang=de` is English in Flask, Go, aiohttp),
    PHP the last. Sorting joins `?lang=de&lang=en` with `?lang=en&lang=de`: whichever
    comes first is served to the other."""
    _, en_first, _ = get(gw, "/c/greeting?lang=en&lang=de")
    status, de_first, _ = get(gw, "/c/greeting?lang=de&lang=en")
    assert status == "MISS" and de_first["target"] == "/c/greeting?lang=de&lang=en", (
        f"{status}: the answer to {en_first['target']!r} was served for ?lang=de&lang=en"
    )


def test_fields_a_qualified_no_cache_names_are_never_replayed(gw) -> None:
    """RFC 9111 §5.2.2.4: `no-cache="X-Csrf-Token"` allows storing the response, but the
    named fields must not be sent again without revalidation (a per-user token in them)."""
    path = "/c/form"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x.test\r\n"
        'x-echo-header: Cache-Control: max-age=60, no-cache="X-Csrf-Token"\r\n'
        "x-echo-header: X-Csrf-Token: alice-secret-123\r\nConnection: close\r\n\r\n"
    )
    with Client(gw.port) as c:
        a = c.send(request.encode()).answer()
    assert a is not None and a.header(b"x-csrf-token") == b"alice-secret-123"
    status, _, replay = get(gw, path)
    assert status != "HIT" or replay.header(b"x-csrf-token") is None, (
        "another client got alice's X-Csrf-Token from the cache"
    )
