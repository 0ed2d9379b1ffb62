"""Request targets and Host normalized once (gateway/http/uri.py): tables, then properties.

The tables hold the path-confusion classes from RFC 3986 §5.2.4/§6.2.2, Envoy's
normalize_path/merge_slashes/path_with_escaped_slashes_action tests, and the
ACL-bypass write-ups (Orange Tsai's "Breaking Parser Logic", `..;/` on servlet
containers, encoded dots and slashes, absolute-form targets, Host variants).
The properties check what must hold for any input: the result is a fixed point,
has no dot segment or empty segment, and uses only the characters of a path.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http.errors import HttpError
from gateway.http.uri import PathRules, normalize_authority, normalize_path, parse_target

DEFAULT = PathRules()
KEEP = PathRules(escaped_slashes="keep")
DECODE = PathRules(escaped_slashes="decode")
NO_MERGE = PathRules(merge_slashes=False)
PARAMS = PathRules(parameters="keep")
STRIP = PathRules(parameters="strip")


@pytest.mark.parametrize(
    ("raw", "rules", "expected"),
    [
        ("/admin", DEFAULT, "/admin"),
        ("/", DEFAULT, "/"),
        # percent-encoded unreserved characters are the characters themselves
        ("/%61dmin", DEFAULT, "/admin"),
        ("/%41%44%4D%49%4E", DEFAULT, "/ADMIN"),
        ("/a%2db%5fc%7ed%2Ee", DEFAULT, "/a-b_c~d.e"),
        # other escapes are kept, with upper-case hex
        ("/a%20b", DEFAULT, "/a%20b"),
        ("/a%3fb", DEFAULT, "/a%3Fb"),
        ("/a%25b", DEFAULT, "/a%25b"),  # one decoding only: %252e stays %252E's meaning
        ("/a%252e%252e/b", DEFAULT, "/a%252e%252e/b"),
        # characters a path may not hold are encoded (what any upstream decodes them to)
        ('/a"b<c>d', DEFAULT, "/a%22b%3Cc%3Ed"),
        ("/a{b}|c^d`e[f]", DEFAULT, "/a%7Bb%7D%7Cc%5Ed%60e%5Bf%5D"),
        # sub-delims, ':' and '@' stand for themselves
        ("/a,b=c!$&'()*+:@", DEFAULT, "/a,b=c!$&'()*+:@"),
        ("/a;b=c,d!$&'()*+:@", PARAMS, "/a;b=c,d!$&'()*+:@"),
        # path parameters: removed before anything else when asked (a servlet's reading)
        ("/admin;jsessionid=1/users", STRIP, "/admin/users"),
        ("/admin;x", STRIP, "/admin"),
        ("/;/admin", STRIP, "/admin"),
        ("/x/..;/admin", STRIP, "/admin"),
        ("/x/.;a=b/admin", STRIP, "/x/admin"),
        ("/a%3Bb", DEFAULT, "/a%3Bb"),  # an encoded ';' is data, not a parameter
        # dot segments, raw and encoded
        ("/./admin", DEFAULT, "/admin"),
        ("/x/../admin", DEFAULT, "/admin"),
        ("/x/%2e%2e/admin", DEFAULT, "/admin"),
        ("/x/.%2E/admin", DEFAULT, "/admin"),
        ("/x/%2e./admin", DEFAULT, "/admin"),
        ("/x/y/../../admin", DEFAULT, "/admin"),
        ("/../../admin", DEFAULT, "/admin"),  # never above the root
        ("/..", DEFAULT, "/"),
        ("/a/..", DEFAULT, "/"),
        ("/a/.", DEFAULT, "/a/"),
        ("/a/b/..", DEFAULT, "/a/"),
        ("/a/...", DEFAULT, "/a/..."),  # three dots are a name
        ("/a/.b/..c", DEFAULT, "/a/.b/..c"),
        # slashes
        ("//admin", DEFAULT, "/admin"),
        ("/a//b///c/", DEFAULT, "/a/b/c/"),
        ("//", DEFAULT, "/"),
        ("/a//b", NO_MERGE, "/a//b"),
        ("/a//../b", NO_MERGE, "/a/b"),
        ("/api/", DEFAULT, "/api/"),  # a trailing slash stays
        # escaped slashes and backslashes: keep or decode when asked
        ("/admin%2Fsecret", KEEP, "/admin%2Fsecret"),
        ("/admin%2fsecret", KEEP, "/admin%2Fsecret"),
        ("/admin%5Csecret", KEEP, "/admin%5Csecret"),
        ("/admin\\secret", KEEP, "/admin%5Csecret"),
        ("/x/..%2Fadmin", KEEP, "/x/..%2Fadmin"),  # one segment: not a dot segment
        ("/admin%2Fsecret", DECODE, "/admin/secret"),
        ("/x/..%2fadmin", DECODE, "/admin"),
        ("/x\\..\\admin", DECODE, "/admin"),
        ("/%2F%2Fadmin", DECODE, "/admin"),
    ],
)
def test_paths_normalize_to_one_form(raw: str, rules: PathRules, expected: str) -> None:
    assert normalize_path(raw.encode(), rules) == expected


@pytest.mark.parametrize(
    ("raw", "rules", "reason"),
    [
        ("/admin%2Fsecret", DEFAULT, "%2F"),
        ("/admin%2fsecret", DEFAULT, "%2F"),
        ("/admin%5csecret", DEFAULT, "backslash"),
        ("/admin\\secret", DEFAULT, "backslash"),
        ("/a%", DEFAULT, "malformed percent"),
        ("/a%4", DEFAULT, "malformed percent"),
        ("/a%zz", DEFAULT, "malformed percent"),
        ("/a%%41", DEFAULT, "malformed percent"),
        ("/a%00b", DEFAULT, "NUL"),
        ("/admin;x", DEFAULT, "path parameters"),
        ("/;/admin", DEFAULT, "path parameters"),
        ("/x/..;/admin", DEFAULT, "path parameters"),
        ("/x/..;/admin", PARAMS, "dot segment with parameters"),
        ("/x/.;jsessionid=1/admin", PARAMS, "dot segment with parameters"),
        ("/x/%2e%2e;x/admin", PARAMS, "dot segment with parameters"),
        ("/a\x01b", DEFAULT, "control"),
        ("/a\x7fb", DEFAULT, "control"),
        ("/caf\xe9", DEFAULT, "non-ASCII"),
    ],
)
def test_paths_that_cannot_be_normalized_are_refused(
    raw: str, rules: PathRules, reason: str
) -> None:
    with pytest.raises(HttpError) as err:
        normalize_path(raw.encode("latin-1"), rules)
    assert err.value.status == 400 and reason in err.value.reason


@pytest.mark.parametrize(
    ("target", "method", "scheme", "path", "query", "authority"),
    [
        ("/a?b=c", "GET", "http", "/a", "b=c", None),
        ("/a#frag", "GET", "http", "/a", "", None),
        ("/admin#/../public", "GET", "http", "/admin", "", None),
        ("/a?b=%2F..#x", "GET", "http", "/a", "b=%2F..", None),  # the query is not a path
        ("http://Example.TEST/admin", "GET", "http", "/admin", "", b"example.test"),
        ("http://example.test:80/a?q", "GET", "http", "/a", "q", b"example.test"),
        ("http://example.test:8080", "GET", "http", "/", "", b"example.test:8080"),
        ("HTTPS://example.test./x/../y", "GET", "https", "/y", "", b"example.test"),
        ("http://example.test?q=1", "GET", "http", "/", "q=1", b"example.test"),
        ("*", "OPTIONS", "http", "*", "", None),
    ],
)
def test_targets(target, method, scheme, path, query, authority) -> None:
    t = parse_target(target.encode(), method, scheme, DEFAULT)
    assert (t.path, t.query, t.authority) == (path, query, authority)


@pytest.mark.parametrize(
    ("target", "method", "scheme", "status"),
    [
        ("example.test:443", "CONNECT", "http", 405),
        ("*", "GET", "http", 400),
        ("ftp://example.test/a", "GET", "http", 400),
        ("https://example.test/a", "GET", "http", 400),  # another scheme than the connection's
        ("http://user:pw@example.test/a", "GET", "http", 400),
        ("http:///a", "GET", "http", 400),
        ("http:/a", "GET", "http", 400),
        ("admin", "GET", "http", 400),
        ("http://exa mple/", "GET", "http", 400),
    ],
)
def test_bad_targets(target, method, scheme, status) -> None:
    with pytest.raises(HttpError) as err:
        parse_target(target.encode(), method, scheme, DEFAULT)
    assert err.value.status == status


@pytest.mark.parametrize(
    ("raw", "scheme", "expected"),
    [
        ("example.test", "http", b"example.test"),
        ("Example.TEST", "http", b"example.test"),
        ("admin.example.test.", "http", b"admin.example.test"),
        ("example.test:80", "http", b"example.test"),
        ("example.test:443", "https", b"example.test"),
        ("example.test:443", "http", b"example.test:443"),
        ("example.test:", "http", b"example.test"),
        ("example.test:0080", "http", b"example.test"),
        ("EXAMPLE.test.:8080", "http", b"example.test:8080"),
        ("10.0.0.1:8080", "http", b"10.0.0.1:8080"),
        ("[::1]", "http", b"[::1]"),
        ("[0:0:0:0:0:0:0:1]:80", "http", b"[::1]"),
        ("[::FFFF:10.0.0.1]:8443", "https", b"[::ffff:a00:1]:8443"),
        ("under_score.test", "http", b"under_score.test"),
    ],
)
def test_hosts_normalize_to_one_form(raw: str, scheme: str, expected: bytes) -> None:
    assert normalize_authority(raw.encode(), scheme) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "x:poison",
        "x:99999",
        "x:123456",
        "x:-1",
        "x:+80",
        "x:8 0",
        "a..b",
        "a.example.test..",
        ".",
        "",
        ":80",
        "user@host",
        "ex%61mple.test",
        "exa mple",
        "caf\xe9.test",
        "a/b",
        "a\\b",
        "[::1",
        "[::1]x",
        "[fe80::1%25eth0]",
        "[not-v6]",
        "a" * 64 + ".test",
        ".".join(["a" * 60] * 5),
    ],
)
def test_bad_hosts_are_refused(raw: str) -> None:
    with pytest.raises(HttpError) as err:
        normalize_authority(raw.encode("latin-1"), "http")
    assert err.value.status == 400


# ------------------------------------------------------------------ properties

PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "a", "admin", "%61",
     "%25", "%20", "~", "%7e", "?", "#", "%", "%00", "x", "%2e%2e", "..;", ":", "@", "|"]
)  # fmt: skip

_PATH_CHARS = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")


@settings(max_examples=2000, derandomize=True)
@given(
    st.lists(PIECES, max_size=12), st.sampled_from([DEFAULT, KEEP, DECODE, NO_MERGE, PARAMS, STRIP])
)
def test_normalized_paths_are_fixed_points_without_dots_or_stray_bytes(pieces, rules) -> None:
    raw = ("/" + "".join(pieces)).partition("?")[0].partition("#")[0]
    try:
        out = normalize_path(raw.encode(), rules)
    except HttpError as exc:
        assert exc.status == 400
        return
    assert out.startswith("/")
    assert normalize_path(out.encode(), rules) == out  # idempotent
    assert _PATH_CHARS.match(out), out
    segments = out.split("/")[1:]
    assert "." not in segments and ".." not in segments
    if rules.merge_slashes:
        assert "//" not in out
    # what an upstream decodes out of it has no dot segment either (it cannot climb)
    decoded = unquote(out) if rules.escaped_slashes != "keep" else out
    assert ".." not in decoded.split("/") and "." not in decoded.split("/")
    for escape in re.findall(r"%[0-9A-Fa-f]{2}", out):
        assert escape == escape.upper()
        assert chr(int(escape[1:], 16)) not in (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        )
