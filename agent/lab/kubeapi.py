"""The lab's own small client of its Kubernetes API server (list, get, apply, patch, delete, watch).

The lab is one more client of the API it serves, the way a kubelet and `kubectl`
are: `lab up/apply/delete/get` and the lab's kubelet (kubelet.py) read and write
objects only through the API, so kubectl and the lab see one truth.

Why not the `kubernetes` or `lightkube` package: the lab needs eight verbs over a
handful of kinds, resolved through discovery like kubectl does; a dependency for
that would load hundreds of generated modules into every `slipstream lab` command
(the official client's import alone takes about a second here, longer than a
`lab get`). The components' own `--source kube` uses a maintained client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import LabError

FIELD_MANAGER = "slipstream-lab"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


class KubeApiError(LabError):
    """An answer of the API server other than success; `code` and `reason` as its Status."""

    def __init__(self, message: str, code: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ResourceType:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str = "", sub: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{urllib.parse.quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


class KubeClient:
    """Talks to one API server with a bearer token over TLS verified against the lab's CA."""

    def __init__(self, url: str, ca_path: str, token: str, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=ca_path)
        self._types: dict[tuple[str, str], ResourceType] | None = None
        parsed = urllib.parse.urlsplit(self.url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 443
        self._local = threading.local()
        """Each thread's kept-alive connection (the kubelet's watch threads list too)."""
        self._conns: list[http.client.HTTPSConnection] = []
        self._conns_lock = threading.Lock()

    def close(self) -> None:
        """Close every kept-alive connection (a later request opens a new one)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": f"{FIELD_MANAGER}/1",
        }
        for attempt in (1, 2):
            # One kept-alive connection per thread: a lab command makes dozens of requests,
            # and a TLS handshake each would cost more than the requests.
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(
                        self._host, self._port, timeout=self.timeout, context=self.ctx
                    )
                    self._local.conn = conn
                    with self._conns_lock:
                        self._conns.append(conn)
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                self._local.conn = None
                # Only a connection the server had closed while idle is tried again.
                if attempt == 2 or not reused:
                    raise KubeApiError(f"{method} {path}: the lab's API server: {exc}") from exc
        if resp.status >= 400:
            raise _error(method, path, resp.status, raw)
        return json.loads(raw) if raw else None

    def watch(
        self, path: str, resource_version: str, timeout: int = 300
    ) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version` (bookmarks included) until the server ends
        the watch; raises KubeApiError on a broken stream."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        req = urllib.request.Request(
            f"{self.url}{path}?{urllib.parse.urlencode(query)}",
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout + 30) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as exc:
            raise _error("WATCH", path, exc.code, exc.read()) from exc
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            raise KubeApiError(f"WATCH {path}: {exc}") from exc

    # ------------------------------------------------------------ discovery

    def types(self) -> dict[tuple[str, str], ResourceType]:
        """Every served (apiVersion, kind), as kubectl finds them through discovery."""
        if self._types is None:
            found: dict[tuple[str, str], ResourceType] = {}
            versions = ["v1"]
            groups = self.request("GET", "/apis") or {}
            for g in groups.get("groups", []):
                versions += [v["groupVersion"] for v in g.get("versions", [])]
            for gv in versions:
                path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
                for r in (self.request("GET", path) or {}).get("resources", []):
                    if "/" in r["name"]:
                        continue  # subresources
                    found.setdefault(
                        (gv, r["kind"]), ResourceType(gv, r["kind"], r["name"], r["namespaced"])
                    )
            self._types = found
        return self._types

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        rt = self.types().get((api_version, kind))
        if rt is None:
            self._types = None  # a CRD may have been registered since
            rt = self.types().get((api_version, kind))
        if rt is None:
            raise KubeApiError(
                f'no matches for kind "{kind}" in version "{api_version}" '
                "(is its CustomResourceDefinition installed?)",
                404,
                "NotFound",
            )
        return rt

    # ------------------------------------------------------------ verbs

    def list(self, rt: ResourceType, namespace: str | None = None) -> tuple[list[Any], str]:
        body = self.request("GET", rt.path(namespace))
        items = body.get("items") or []
        for item in items:  # lists carry no type meta on their items
            item.setdefault("apiVersion", rt.api_version)
            item.setdefault("kind", rt.kind)
        return items, str(body["metadata"].get("resourceVersion", ""))

    def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> Any:
        try:
            return self.request("GET", rt.path(namespace, name))
        except KubeApiError as exc:
            if exc.code == 404:
                return None
            raise

    def apply(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Server-side apply of a manifest as `slipstream-lab` (fields it leaves out are
        removed if the lab set them before); unknown fields are refused, never dropped.
        Returns the stored object and created | configured | unchanged."""
        rt = self.type_of(str(body.get("apiVersion")), str(body.get("kind")))
        meta = body.get("metadata") or {}
        ns = meta.get("namespace") or "default" if rt.namespaced else None
        old = self.get(rt, meta["name"], ns)
        new = self.request(
            "PATCH",
            rt.path(ns, meta["name"]),
            body,
            content_type=APPLY,
            query={"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"},
        )
        if old is None:
            return new, "created"
        same = old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion")
        return new, "unchanged" if same else "configured"

    def merge_patch(
        self, rt: ResourceType, name: str, namespace: str | None, patch: Any, sub: str = ""
    ) -> Any:
        return self.request(
            "PATCH",
            rt.path(namespace, name, sub),
            patch,
            content_type=MERGE,
            query={"fieldManager": FIELD_MANAGER},
        )

    def delete(self, rt: ResourceType, name: str, namespace: str | None = None) -> bool:
        """True if it was there."""
        try:
            self.request("DELETE", rt.path(namespace, name))
        except KubeApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True


def _error(method: str, path: str, code: int, raw: bytes) -> KubeApiError:
    try:
        status = json.loads(raw)
        message, reason = str(status.get("message", "")), str(status.get("reason", ""))
    except ValueError:
        message, reason = raw[:300].decode(errors="replace"), ""
    return KubeApiError(f"{message or f'{method} {path}: HTTP {code}'}", code, reason)
