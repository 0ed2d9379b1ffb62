"""Route filters (pure): header changes, URL rewrites and redirects, as in the Gateway API.

ReplacePrefixMatch replaces the part of the path the route's PathPrefix
matched: with prefix /api and replacement /v2, /api/users becomes /v2/users;
with replacement /, it becomes /users.
"""

from __future__ import annotations

from .config import HeaderModifier, PathMatch, PathModifier, Redirect
from .http.message import Headers, Request, Response


def modify_headers(headers: Headers, mod: HeaderModifier) -> None:
    for name in mod.remove:
        headers.remove(name)
    for name, value in mod.set:
        headers.set(name, value)
    for name, value in mod.add:
        headers.add(name, value)


def new_path(path: str, matched: PathMatch, mod: PathModifier) -> str:
    if mod.type == "ReplaceFullPath":
        return mod.value
    prefix = matched.value.rstrip("/")
    rest = path[len(prefix) :]
    base = mod.value.rstrip("/")
    out = base + rest
    if not out.startswith("/"):
        out = "/" + out
    return out


def redirect(req: Request, matched: PathMatch, r: Redirect) -> Response:
    scheme = r.scheme or req.scheme
    authority = req.authority.decode("latin-1")  # (normalized: no default port)
    host = r.hostname or req.host
    port: int | None = r.port
    if port is None and r.scheme is None and ":" in authority and not authority.endswith("]"):
        port = int(authority.rpartition(":")[2] or 0) or None
    if port is not None and (scheme, port) in (("http", 80), ("https", 443)):
        port = None
    path = new_path(req.path, matched, r.path) if r.path is not None else req.path
    location = f"{scheme}://{host}{f':{port}' if port else ''}{path}"
    if req.query_string:
        location += "?" + req.query_string
    return Response(r.status, Headers([(b"location", location.encode("latin-1"))]))
