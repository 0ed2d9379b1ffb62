"""Choosing the route for a request (pure): hosts, paths, methods, headers, query parameters.

Precedence follows the Gateway API. Hostnames first: routes naming the exact
host, then wildcard routes (`*.example.com` matches any name below
example.com, not example.com itself), longest suffix first, then routes with no
hostnames. Within those, matches are tried in this order: an Exact path, then
the longest PathPrefix, then RegularExpression paths (longest pattern first);
then a match with a method before one without; more header matches first;
more query matches first; then the route defined first, then by name.

A PathPrefix matches whole path segments: /api matches /api, /api/ and
/api/v1, not /apis. A RegularExpression must match the whole path. Header
names ignore case, values do not; a repeated header matches as its values
joined by ", ".
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PathMatch, RouteMatch, RouteSpec
from .http.message import Request

ROUTE_CACHE_SIZE = 4096
"""Remembered (host, method, path) answers per router; a new router starts empty."""

PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}


@dataclass(frozen=True)
class Candidate:
    route: RouteSpec
    match: RouteMatch
    rule: int
    """Index of the match within its route (for rewrite of the matched prefix)."""
    order: int
    """The route's position among all routes: breaks precedence ties (older first, as in
    Gateway API)."""


def _precedence(c: Candidate) -> tuple[int, int, int, int, int, int, str]:
    m = c.match
    return (
        PATH_RANK[m.path.type],
        -len(m.path.value),
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query),
        c.order,
        c.route.name,
    )


def path_matches(p: PathMatch, path: str) -> bool:
    if p.type == "Exact":
        return path == p.value
    if p.type == "PathPrefix":
        prefix = p.value.rstrip("/")
        return not prefix or path == prefix or path.startswith(prefix + "/")
    assert p.regex is not None
    return p.regex.fullmatch(path) is not None


def _header(req: Request, name: bytes) -> str | None:
    values = req.headers.get_all(name)
    if not values:
        return None
    return ", ".join(v.decode("latin-1") for v in values)


def matches(m: RouteMatch, req: Request) -> bool:
    if not path_matches(m.path, req.path):
        return False
    if m.method is not None and req.method != m.method:
        return False
    for h in m.headers:
        if not h.matches(_header(req, h.name.encode())):
            return False
    return all(q.matches(req.query_value(q.name)) for q in m.query)


class Router:
    def __init__(self, routes: tuple[RouteSpec, ...]) -> None:
        exact: dict[str, list[Candidate]] = {}
        wildcard: dict[str, list[Candidate]] = {}
        anyhost: list[Candidate] = []
        for order, route in enumerate(routes):
            cands = [Candidate(route, m, i, order) for i, m in enumerate(route.matches)]
            if not route.hostnames:
                anyhost += cands
            for host in route.hostnames:
                if host.startswith("*."):
                    wildcard.setdefault(host[1:], []).extend(cands)  # ".example.com"
                else:
                    exact.setdefault(host, []).extend(cands)
        self.exact = {h: sorted(c, key=_precedence) for h, c in exact.items()}
        self.wildcard = sorted(
            ((suffix, sorted(c, key=_precedence)) for suffix, c in wildcard.items()),
            key=lambda item: -len(item[0]),
        )
        self.anyhost = sorted(anyhost, key=_precedence)
        self._simple = all(not m.headers and not m.query for r in routes for m in r.matches)
        """No match looks past host, method and path: answers can be remembered."""
        self._seen: dict[tuple[str, str, str], Candidate | None] = {}

    def candidates(self, host: str) -> list[list[Candidate]]:
        lists = []
        if host in self.exact:
            lists.append(self.exact[host])
        lists += [c for suffix, c in self.wildcard if host.endswith(suffix)]
        lists.append(self.anyhost)
        return lists

    def route(self, req: Request) -> Candidate | None:
        if not self._simple:
            return self._search(req)
        key = (req.host, req.method, req.path)
        try:
            return self._seen[key]
        except KeyError:
            pass
        if len(self._seen) >= ROUTE_CACHE_SIZE:
            self._seen.clear()
        found = self._seen[key] = self._search(req)
        return found

    def _search(self, req: Request) -> Candidate | None:
        for cands in self.candidates(req.host):
            for c in cands:
                if matches(c.match, req):
                    return c
        return None
