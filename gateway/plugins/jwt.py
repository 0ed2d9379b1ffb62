"""JWT bearer tokens, verified against a JWKS (URL or file) with public-key algorithms only.

Accepted: RS256/384/512, PS256 and ES256/384, as the config allows. Refused
with 401 and a reason: `alg: none`, any HMAC algorithm (so a public key can
never be used as an HMAC secret), an algorithm the key's type or the JWK's
own `alg` does not fit, an unknown `kid` (after one rate-limited JWKS
refresh), a bad signature, `exp` in the past, `nbf` in the future, a wrong
`iss` or `aud`. Keys are picked by `kid` and type (a kid may name an RSA and an
EC key); RSA keys under 2048 bits and EC points off their curve are skipped.
The JWKS is fetched at start, refreshed every `refreshInterval`, and at most
every `minRefreshInterval` on an unknown `kid`; a failed refresh keeps the
keys already known.

A token has one spelling: each segment must be canonical base64url (no padding,
no `+` or `/`, no stray low bits: re-encoding the bytes gives the segment back),
and its JSON no repeated member (parsers disagree on which one wins) and no
number that is not finite (`NaN`, `Infinity`, `1e999`: an `exp` of NaN would
never expire). The token header field may appear once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..http.message import Headers, Response
from .base import PHASE_AUTH, Context, Plugin, Shared
from .models import JwtConfig

log = logging.getLogger("gateway.jwt")

ALGORITHMS = {
    "RS256": ("RSA", hashes.SHA256),
    "RS384": ("RSA", hashes.SHA384),
    "RS512": ("RSA", hashes.SHA512),
    "PS256": ("RSA", hashes.SHA256),
    "ES256": ("EC", hashes.SHA256),
    "ES384": ("EC", hashes.SHA384),
}
CURVES = {"P-256": (ec.SECP256R1, "ES256", 32), "P-384": (ec.SECP384R1, "ES384", 48)}
MAX_TOKEN = 8 * 1024


class TokenError(Exception):
    """Why a token was refused (the 401's message)."""


@dataclass(frozen=True)
class Key:
    kid: str | None
    kty: str
    alg: str | None
    """The JWK's own `alg`, when it pins one."""
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    size: int = 0
    """EC coordinate size in bytes (32 for P-256)."""


def _b64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("not base64url") from exc


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def segment(text: str) -> bytes:
    """A token segment's bytes, if it is canonical unpadded base64url (RFC 7515 §2)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("a segment is not canonical base64url")
    raw = _b64(text)
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
        raise TokenError("a segment is not canonical base64url")
    return raw


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TokenError(f"member {k!r} appears twice")
        out[k] = v
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise TokenError("a number that is not finite")
    return value


def _not_a_number(text: str) -> Any:
    raise TokenError(f"{text} is not JSON")


def json_object(raw: bytes) -> Any:
    """Strict JSON: UTF-8 without a byte-order mark (RFC 7519 §7.2; json.loads of bytes would
    guess UTF-16 or UTF-32), no repeated members, finite numbers only."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise TokenError("a byte-order mark before the JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError("header or claims are not UTF-8") from exc
    return json.loads(
        text,
        object_pairs_hook=_no_repeats,
        parse_float=_finite,
        parse_constant=_not_a_number,
    )


def _int(text: str) -> int:
    return int.from_bytes(_b64(text), "big")


MIN_RSA_BITS = 2048
"""RFC 7518 §3.3: RS and PS keys of 2048 bits or more (a 512-bit modulus is factored in
hours, and then anyone signs)."""


def parse_jwks(doc: Any) -> list[Key]:
    """Public signing keys of a JWKS document. Skipped, each with a warning, keeping the
    others: symmetric and unknown key types, keys for encryption (`use`, `key_ops`), RSA
    keys under MIN_RSA_BITS, EC points off their curve, and anything malformed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("a JWKS is an object with a `keys` list")
    out = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kty, kid, alg = jwk.get("kty"), jwk.get("kid"), jwk.get("alg")
        try:
            if kty == "RSA":
                pub: Any = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
                if pub.key_size < MIN_RSA_BITS:
                    log.warning("JWKS key skipped: RSA under 2048 bits", extra={"kid": kid})
                    continue
                out.append(Key(kid, "RSA", alg, pub))
            elif kty == "EC" and jwk.get("crv") in CURVES:
                curve, _, size = CURVES[jwk["crv"]]
                pub = ec.EllipticCurvePublicNumbers(
                    _int(jwk["x"]), _int(jwk["y"]), curve()
                ).public_key()
                out.append(Key(kid, "EC", alg, pub, size))
        except (KeyError, ValueError, TokenError, TypeError):
            log.warning("JWKS key skipped: malformed", extra={"kid": kid})
    return out


class Jwks:
    """One JWKS source's keys, refreshed in the background, shared by routes that use it."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.keys: list[Key] = []
        self.fetched = 0.0
        self.last_attempt = 0.0
        self.refreshes = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.config.refresh_interval)

    async def refresh(self, *, if_older_than: float = 0.0) -> None:
        async with self._lock:
            now = time.monotonic()
            if if_older_than and now - self.last_attempt < if_older_than:
                return  # rate limit: an unknown kid cannot make us hammer the JWKS
            self.last_attempt = now
            try:
                doc = await self._fetch()
                keys = parse_jwks(doc)
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "JWKS refresh failed; keeping the keys we have",
                    extra={
                        "source": self.config.jwks_url or self.config.jwks_file,
                        "error": str(exc),
                    },
                )
                return
            self.keys, self.fetched = keys, time.monotonic()
            self.refreshes += 1

    async def _fetch(self) -> Any:
        c = self.config
        if c.jwks_file is not None:
            with open(c.jwks_file) as f:
                return json.load(f)
        assert c.jwks_url is not None
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(c.jwks_url) as r:
            if r.status != 200:
                raise ValueError(f"{c.jwks_url} answered {r.status}")
            return await r.json(content_type=None)

    def find(self, kid: str | None, kty: str) -> Key | None:
        """The key a token names, of the type its alg needs: two keys may share a kid when
        their types differ (RFC 7517 §4.5), as during a move from RSA to EC."""
        if kid is not None:
            return next((k for k in self.keys if k.kid == kid and k.kty == kty), None)
        candidates = [k for k in self.keys if k.kty == kty]
        return candidates[0] if len(candidates) == 1 else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def verify_signature(key: Key, alg: str, signing_input: bytes, sig: bytes) -> None:
    kty, hash_cls = ALGORITHMS[alg]
    if key.kty != kty:
        raise TokenError(f"alg {alg} does not fit a {key.kty} key")
    if key.alg is not None and key.alg != alg:
        raise TokenError(f"the key is for {key.alg}, the token says {alg}")
    try:
        if isinstance(key.public, rsa.RSAPublicKey):
            pad: Any = (
                padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.DIGEST_LENGTH)
                if alg.startswith("PS")
                else padding.PKCS1v15()
            )
            key.public.verify(sig, signing_input, pad, hash_cls())
        else:
            curve_alg = next(a for _, a, size in CURVES.values() if size == key.size)
            if curve_alg != alg or len(sig) != 2 * key.size:
                raise TokenError(f"alg {alg} does not fit this EC key")
            r = int.from_bytes(sig[: key.size], "big")
            s = int.from_bytes(sig[key.size :], "big")
            key.public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_cls()))
    except InvalidSignature as exc:
        raise TokenError("bad signature") from exc


def check_claims(claims: dict[str, Any], config: JwtConfig, now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if exp is None and config.require_exp:
        raise TokenError("no exp claim")
    if exp is not None:
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenError("exp is not a number")
        if now > exp + config.leeway:
            raise TokenError("token expired")
    if nbf is not None:
        if not isinstance(nbf, int | float) or isinstance(nbf, bool):
            raise TokenError("nbf is not a number")
        if now + config.leeway < nbf:
            raise TokenError("token not valid yet (nbf)")
    if config.issuer is not None and claims.get("iss") != config.issuer:
        raise TokenError("wrong issuer")
    if config.audiences:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(config.audiences) & {a for a in auds if isinstance(a, str)}:
            raise TokenError("wrong audience")


class Jwt(Plugin):
    name = "jwt"
    phase = PHASE_AUTH
    authenticates = True

    def __init__(self, config: JwtConfig, shared: Shared, scope: str) -> None:
        self.config = config
        self.subjects = shared.by_subject
        key = f"jwks:{config.jwks_url or config.jwks_file}"
        self.jwks = shared.service(key, Jwks, lambda: Jwks(config))
        self.jwks.start()

    async def request(self, ctx: Context) -> Response | None:
        given = ctx.request.headers.get_all(self.config.header)
        if not given:
            ctx.notes["auth"] = "jwt-missing"
            return _unauthorized("no bearer token", None)
        if len(given) > 1:
            ctx.notes["auth"] = "jwt-invalid"
            return _unauthorized("more than one token", "invalid_request")
        raw = given[0]
        scheme, _, token = raw.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            ctx.notes["auth"] = "jwt-invalid"
            return _unauthorized("expected: Authorization: Bearer <token>", "invalid_request")
        try:
            claims = await self.verify(token)
        except TokenError as exc:
            ctx.notes["auth"] = "jwt-invalid"
            return _unauthorized(f"invalid token: {exc}", "invalid_token")
        subject = claims.get(self.config.consumer_claim)
        consumer = self.subjects.get(subject) if isinstance(subject, str) else None
        ctx.consumer = consumer
        if consumer is not None:
            ctx.principal = consumer.name
        elif isinstance(subject, str):
            ctx.principal = f"jwt\x00{claims.get('iss')!r}\x00{subject}"
        else:  # no subject to tell callers apart: the token itself is the caller
            ctx.principal = "jwt-token\x00" + hashlib.sha256(token.encode()).hexdigest()
        ctx.notes["auth"] = "jwt"
        return None

    async def verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN:
            raise TokenError("token too long")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a compact JWS (three parts)")
        header_raw, claims_raw, signature = (segment(p) for p in parts)
        try:
            header = json_object(header_raw)
            claims = json_object(claims_raw)
        except (ValueError, RecursionError) as exc:
            raise TokenError("header or claims are not JSON") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError("header and claims must be JSON objects")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenError("unsigned tokens (alg none) are refused")
        if alg.startswith("HS"):
            raise TokenError(f"{alg} is refused: only public-key signatures are accepted")
        if alg not in self.config.algorithms:
            raise TokenError(f"alg {alg} is not allowed here")
        if "crit" in header:
            raise TokenError("critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("kid must be a string")
        kty = ALGORITHMS[alg][0]
        key = self.jwks.find(kid, kty)
        if key is None:
            await self.jwks.refresh(if_older_than=self.config.min_refresh_interval)
            key = self.jwks.find(kid, kty)
        if key is None:
            raise TokenError(f"unknown key id {kid!r}" if kid else "no key fits this token")
        verify_signature(key, alg, f"{parts[0]}.{parts[1]}".encode(), signature)
        check_claims(claims, self.config, time.time())
        return claims

    async def close(self) -> None:
        return None  # the JWKS cache is shared across reloads (Shared.services)


def _unauthorized(message: str, error: str | None) -> Response:
    challenge = b'Bearer realm="slipstream"'
    if error:
        challenge += b', error="' + error.encode() + b'"'
    return Response.text(401, message, Headers([(b"www-authenticate", challenge)]))
