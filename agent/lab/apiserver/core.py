"""The API server's request handling, sans-IO: `ApiCore.handle(Request) -> Response | WatchStream`.

Everything between the bytes of a request and the bytes of its answer lives
here (routing, authentication and authorization, content negotiation, the
verbs, validation, patches, managed fields, watches and the controllers);
`server.py` only moves bytes over HTTPS. No request can raise out of
`handle`: an unexpected exception is logged and answered 500, and the store
is only written once a request has passed every check, so a bad request
never leaves a partial change behind.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import ipaddress
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import auth, proto
from . import errors as E
from . import fields as F
from . import objects as O
from . import patch as P
from . import selectors as S
from .controllers import EndpointsController
from .discovery import (
    AGGREGATED_V2,
    SERVER_VERSION,
    OpenApiCache,
    aggregated,
    api_group,
    api_group_list,
    api_versions,
    resource_list,
)
from .model import CRD_KEY, CrdVersion, PrinterColumn, Registry, ResourceType
from .persist import StateFile
from .schema import (
    OBJECT_META,
    Schema,
    apply_defaults,
    builtin_validator,
    check,
    crd_validator,
    prune,
)
from .store import Event, Store
from .tables import to_table
from .watch import Watcher

log = logging.getLogger("slipstream.apiserver")

MAX_BODY = 3 * 1024 * 1024
"""Bytes of a request body, as kube-apiserver's limit."""
MAX_DEPTH = 100
"""Nesting of a JSON or YAML body; deeper bodies are refused before anything walks them."""
DEFAULT_WATCH_TIMEOUT = 1800.0
NAMESPACE_CLEANUP_DELAY = 1.0
"""How long a deleted namespace's objects outlive it (the namespace controller's lag)."""
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
JSON = "application/json"
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names."""
    body: bytes = b""
    token: str = ""

    def q(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return self.q(name).lower() in ("true", "1")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class WatchStream:
    """A watch to stream: `initial` frames first, then the watcher's, until `timeout`."""

    watcher: Watcher
    initial: list[bytes]
    content_type: str
    timeout: float
    bookmarks: bool
    bookmark: Callable[[], bytes]
    close: Callable[[], None]


@dataclass
class Format:
    """What the client accepts: plain objects, a Table, or metadata only; JSON or YAML."""

    kind: str = "object"  # object | table | metadata
    yaml: bool = False
    table_version: str = "v1"

    @property
    def content_type(self) -> str:
        if self.kind == "table":
            return f"application/json;as=Table;v={self.table_version};g=meta.k8s.io"
        if self.kind == "metadata":
            return "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
        return "application/yaml" if self.yaml else JSON


def negotiate(accept: str) -> Format:
    if not accept.strip():
        return Format()
    for part in accept.split(","):
        items = [x.strip() for x in part.split(";")]
        media = items[0].lower()
        params = dict(p.split("=", 1) for p in items[1:] if "=" in p)
        as_ = params.get("as", "")
        if media in ("application/json", "*/*", "application/*"):
            if (
                as_ == "Table"
                and params.get("g") == "meta.k8s.io"
                and params.get("v") in ("v1", "v1beta1")
            ):
                return Format("table", table_version=params["v"])
            if (
                as_ in ("PartialObjectMetadata", "PartialObjectMetadataList")
                and params.get("g") == "meta.k8s.io"
            ):
                return Format("metadata")
            if as_ and as_ != "APIGroupDiscoveryList":
                continue
            return Format()
        if media == "application/yaml" and not as_:
            return Format(yaml=True)
    raise E.not_acceptable("application/json, application/yaml")


def now_rfc3339(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def dumps(obj: Any) -> bytes:
    # "replace": a lone surrogate (possible in a query string) must not break an answer.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


# ------------------------------------------------------------------ body parsing


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: an alias bomb expands exponentially on output."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("yaml: aliases are not allowed in a request body")
        return super().compose_node(parent, index)


def _depth_ok(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def parse_body(body: bytes, content_type: str, duplicates: list[str] | None = None) -> Any:
    if len(body) > MAX_BODY:
        raise E.too_large(f"limit is {MAX_BODY}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise E.bad_request(f"the body is not UTF-8: {exc}") from exc
    if "yaml" in content_type:
        try:
            value = yaml.load(text, Loader=_NoAliasLoader)
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise E.bad_request(f"error converting YAML to JSON: {str(exc)[:300]}") from exc
    else:

        def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in pairs:
                if k in out and duplicates is not None:
                    duplicates.append(k)
                out[k] = v
            return out

        try:
            value = json.loads(text, object_pairs_hook=hook, parse_constant=_no_constant)
        except RecursionError as exc:
            raise E.bad_request(f"the body is nested more than {MAX_DEPTH} levels deep") from exc
        except ValueError as exc:
            raise E.bad_request(
                f"couldn't get version/kind; json parse error: {str(exc)[:300]}"
            ) from exc
    if not _depth_ok(value):
        raise E.bad_request(f"the body is nested more than {MAX_DEPTH} levels deep")
    _check_keys(value)
    return _no_surrogates(value) if "\\u" in text or "\\U" in text else value


def _no_surrogates(value: Any) -> Any:
    """JSON's `\\ud800` escapes decode to lone surrogates, which no UTF-8 answer can carry:
    replaced by U+FFFD as Go's decoder does (stored, they would break every later list)."""
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_surrogates(v) for v in value]
    return value


def request_object(req: Request, duplicates: list[str] | None = None) -> Any:
    """The body of a create, update, TokenRequest or DeleteOptions: JSON, YAML or protobuf."""
    ctype = req.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if ctype == proto.CONTENT_TYPE:
        if len(req.body) > MAX_BODY:
            raise E.too_large(f"limit is {MAX_BODY}")
        obj = proto.decode(req.body)
        if not _depth_ok(obj):
            raise E.bad_request(f"the body is nested more than {MAX_DEPTH} levels deep")
        return obj
    if ctype not in ("application/json", "application/yaml", ""):
        raise E.unsupported_media(["application/json", "application/yaml", proto.CONTENT_TYPE])
    return parse_body(req.body, ctype, duplicates)


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number {name}")


def _check_keys(value: Any) -> None:
    """JSON object keys are strings; YAML's may be anything, which no Kubernetes object has."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise E.bad_request(
                        f"error converting YAML to JSON: a map key is not a string: {k!r}"[:300]
                    )
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and v != v:
            raise E.bad_request("error converting YAML to JSON: NaN is not a JSON number")
        elif isinstance(v, dt.date | dt.datetime | bytes):
            raise E.bad_request("error converting YAML to JSON: only JSON types are allowed")


# ------------------------------------------------------------------ the core


@dataclass
class Route:
    rt: ResourceType
    namespace: str
    name: str
    subresource: str


class ApiCore:
    def __init__(
        self,
        *,
        state: StateFile | None = None,
        history_size: int = 10000,
        service_cidr: str = "10.96.0.0/16",
        server_address: str = "",
        max_watchers: int = 2048,
        watch_queue_bytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.registry = Registry()
        self.store = Store(history_size, state)
        self.tokens = auth.Tokens()
        self.openapi = OpenApiCache(self.registry)
        self.cluster_ips = O.ClusterIPs(service_cidr)
        self.server_address = server_address
        self.max_watchers = max_watchers
        self.watch_queue_bytes = watch_queue_bytes
        self.clock = clock
        self.watchers: set[Watcher] = set()
        self.controller = EndpointsController(self.store)
        self.store.listeners.append(self._fan_out)
        self.store.listeners.append(self.controller.observe)
        self._allocated_ips: set[str] = set()
        self.store.listeners.append(self._track_ips)
        self._enc: dict[tuple[str, str, str, str], tuple[str, bytes]] = {}
        self._validators: dict[tuple[str, str], Any] = {}
        self._terminating: dict[str, float] = {}
        """Namespaces being deleted: when their objects go (`collect`)."""
        self._boot()

    # -------------------------------------------------------------- startup and state

    def _boot(self) -> None:
        if self.state is not None:
            loaded = self.state.load()
            for crd in loaded.objects.get(CRD_KEY, []):
                self.store.load(CRD_KEY, crd)
            for key, objs in loaded.objects.items():
                if key == CRD_KEY:
                    continue
                for obj in objs:
                    self.store.load(key, obj)
            for crd in self.store.items(CRD_KEY):
                self._register_crd(crd)
            for svc in self.store.items("services"):
                self._allocated_ips.add(str((svc.get("spec") or {}).get("clusterIP")))
            for ns_obj in self.store.items("namespaces"):
                if ns_obj["metadata"].get("deletionTimestamp"):
                    self._terminating[ns_obj["metadata"]["name"]] = self.clock()
            for t in loaded.tokens:
                rec = auth.TokenRecord.from_json(t)
                self.tokens.records[rec.digest] = rec
            self.store.restart_at(loaded.rv)
            self.compact()
        now = self.now()
        for ns in BOOTSTRAP_NAMESPACES:
            if self.store.get("namespaces", "", ns) is None:
                obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                O.default(self.registry.lookup("", "v1", "namespaces"), obj)  # type: ignore[arg-type]
                obj["metadata"].update(uid=self.new_uid(), creationTimestamp=now)
                self.store.commit("ADDED", "namespaces", obj)
        self._kubernetes_service(now)
        self.controller.sync(now, self.new_uid)

    def _kubernetes_service(self, now: str) -> None:
        """default/kubernetes: the first cluster IP, its endpoints the server's own address,
        so clients with in-cluster settings (KUBERNETES_SERVICE_HOST/PORT) find the API."""
        if not self.server_address:
            return  # an in-process core (tests) has no address to advertise
        host, _, port_text = self.server_address.rpartition(":")
        try:
            port = int(port_text)
            ipaddress.ip_address(host)
        except ValueError:
            return
        if not 0 < port < 65536:
            return
        first = str(self.cluster_ips.net.network_address + 1)
        ports = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]
        svc = self.store.get("services", "default", "kubernetes")
        if svc is None:
            svc = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default", "uid": self.new_uid(),
                             "creationTimestamp": now,
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": first, "clusterIPs": [first],
                         "ports": ports, "sessionAffinity": "None",
                         "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
                "status": {"loadBalancer": {}},
            }  # fmt: skip
            self.store.commit("ADDED", "services", svc)
        want_slice = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"},
                         "uid": svc["metadata"]["uid"] + "-slice", "creationTimestamp": now},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }  # fmt: skip
        live = self.store.get("endpointslices.discovery.k8s.io", "default", "kubernetes")
        if live is None or (live.get("endpoints"), live.get("ports")) != (
            want_slice["endpoints"],
            want_slice["ports"],
        ):
            self.store.commit(
                "MODIFIED" if live else "ADDED", "endpointslices.discovery.k8s.io", want_slice
            )
        want_ep = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "uid": svc["metadata"]["uid"] + "-ep", "creationTimestamp": now},
            "subsets": [{"addresses": [{"ip": host}], "ports": want_slice["ports"]}],
        }  # fmt: skip
        live_ep = self.store.get("endpoints", "default", "kubernetes")
        if live_ep is None or live_ep.get("subsets") != want_ep["subsets"]:
            self.store.commit("MODIFIED" if live_ep else "ADDED", "endpoints", want_ep)

    def compact(self) -> None:
        """Write the whole state to the state file and empty its journal."""
        if self.state is None:
            return
        objects = {k: list(v.values()) for k, v in self.store.data.items() if v}
        self.state.write_snapshot(
            self.store.rv, objects, [r.to_json() for r in self.tokens.records.values()]
        )

    def close(self) -> None:
        for w in list(self.watchers):
            w.close("the server is shutting down")
        self.compact()
        if self.state is not None:
            self.state.close()

    def now(self) -> str:
        return now_rfc3339(self.clock())

    @staticmethod
    def new_uid() -> str:
        return str(uuid.uuid4())

    # -------------------------------------------------------------- tokens

    def mint_token(self, user: str, groups: list[str], **kw: Any) -> str:
        """A bearer token for `user` (see auth.Tokens.mint); only its digest is kept."""
        token, rec = self.tokens.mint(user, groups, now=self.clock(), **kw)
        if self.state is not None:
            self.state.record_token(rec.to_json())
        return token

    def mint_service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        pod: str | None = None,
        ttl: float = 3600.0,
        audiences: list[str] | None = None,
    ) -> str:
        """As TokenRequest: a token of ServiceAccount namespace/name, bound to a pod if given."""
        sa = self.store.get("serviceaccounts", namespace, name)
        if sa is None:
            raise E.not_found("serviceaccounts", "", name)
        bound = None
        extra: dict[str, list[str]] = {}
        if pod is not None:
            p = self.store.get("pods", namespace, pod)
            if p is None:
                raise E.not_found("pods", "", pod)
            if (p.get("spec") or {}).get("serviceAccountName", "default") != name:
                raise E.bad_request(f'pod "{pod}" does not use service account "{name}"')
            bound = {
                "kind": "Pod",
                "namespace": namespace,
                "name": pod,
                "uid": p["metadata"]["uid"],
            }
            extra = {
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": [p["metadata"]["uid"]],
            }
            node = (p.get("spec") or {}).get("nodeName")
            if node:
                extra["authentication.kubernetes.io/node-name"] = [node]
                n = self.store.get("nodes", "", node)
                if n is not None:
                    extra["authentication.kubernetes.io/node-uid"] = [n["metadata"]["uid"]]
        extra["authentication.kubernetes.io/credential-id"] = [f"JTI={uuid.uuid4()}"]
        return self.mint_token(
            f"system:serviceaccount:{namespace}:{name}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            ttl=ttl,
            extra=extra,
            audiences=audiences,
            bound=bound,
            service_account={"namespace": namespace, "name": name, "uid": sa["metadata"]["uid"]},
            uid=sa["metadata"]["uid"],
        )

    def authenticate(self, token: str) -> auth.UserInfo | None:
        user, _, _ = self.tokens.review(token, self.store, now=self.clock())
        return user

    # -------------------------------------------------------------- preload

    def preload(self, objects: list[dict[str, Any]]) -> list[str]:
        """Create (or replace) objects as the admin would, CRDs first; returns what was done."""
        admin = auth.UserInfo("system:preload", groups=(auth.MASTERS, auth.AUTHENTICATED))
        order = sorted(
            range(len(objects)),
            key=lambda i: (
                0
                if objects[i].get("kind") == "CustomResourceDefinition"
                else 1
                if objects[i].get("kind") == "Namespace"
                else 2
            ),
        )
        done = []
        for i in order:
            obj = objects[i]
            rt = self.registry.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
            if rt is None:
                raise E.bad_request(
                    f"no resource for {obj.get('apiVersion')} {obj.get('kind')} "
                    "(is its CRD loaded?)"
                )
            meta = obj.get("metadata") or {}
            ns = (meta.get("namespace") or "default") if rt.namespaced else ""
            body = dumps(obj)
            base = (
                f"{rt.group_prefix}/namespaces/{ns}/{rt.plural}"
                if rt.namespaced
                else f"{rt.group_prefix}/{rt.plural}"
            )
            name = meta.get("name", "")
            req = Request(
                "PATCH",
                f"{base}/{name}",
                {"fieldManager": ["slipstream-preload"], "force": ["true"]},
                {"content-type": "application/apply-patch+yaml"},
                body,
            )
            resp = self._dispatch(req, admin)
            assert isinstance(resp, Response)
            if resp.status >= 300:
                raise E.ApiError(resp.status, "Invalid", json.loads(resp.body).get("message", ""))
            done.append(f"{rt.kind.lower()}/{name} applied")
        return done

    # -------------------------------------------------------------- entry point

    def handle(self, req: Request) -> Response | WatchStream:
        self.collect()
        try:
            if req.path in ("/healthz", "/livez", "/readyz"):
                return Response(200, b"ok", "text/plain")
            user, _, _ = self.tokens.review(req.token, self.store, now=self.clock())
            if user is None:
                raise E.unauthorized()
            out = self._dispatch(req, user)
        except E.ApiError as err:
            out = self._status(err)
        except Exception:  # the server must survive any request: 500, state untouched
            log.exception("internal error on %s %s", req.method, req.path)
            out = self._status(E.internal("the lab API server failed on this request"))
        if self.state is not None and self.state.needs_compaction():
            self.compact()
        return out

    def _status(self, err: E.ApiError) -> Response:
        return Response(err.code, dumps(err.status()))

    def _dispatch(self, req: Request, user: auth.UserInfo) -> Response | WatchStream:
        path = req.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if (
            not parts
            or parts[0] not in ("api", "apis")
            or (parts[0] == "api" and len(parts) < 2)
            or (parts[0] == "apis" and len(parts) < 3)
        ):
            self._authorize(auth.Attributes(user, _read_verb(req.method), path=path))
            return self._non_resource(req, path, parts)
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            self._authorize(auth.Attributes(user, _read_verb(req.method), path=path))
            if req.method != "GET":
                raise E.method_not_allowed()
            doc = resource_list(self.registry, group, version)
            if doc is None:
                raise E.no_route()
            return Response(200, dumps(doc))
        route = self._route(group, version, rest)
        return self._resource(req, user, route)

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = self.registry.lookup(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                ns, rest = rest[1], rest[2:]
        rt = self.registry.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise E.no_route()
        if rt.namespaced is False and ns:
            raise E.no_route()
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rt.subresources:
            raise E.no_route()
        return Route(rt, ns, name, sub)

    def _authorize(self, a: auth.Attributes) -> None:
        if not auth.authorize(a, self.store):
            raise E.forbidden(
                auth.forbidden_message(a), name=a.name, group=a.group, resource=a.resource
            )

    # -------------------------------------------------------------- non-resource

    def _non_resource(self, req: Request, path: str, parts: list[str]) -> Response:
        if req.method != "GET":
            raise E.method_not_allowed()
        accept = req.headers.get("accept", "")
        if path == "/version":
            return Response(200, dumps(SERVER_VERSION))
        if path in ("/api", "/apis"):
            if _wants_aggregated(accept):
                body = dumps(aggregated(self.registry, path == "/api"))
                return Response(200, body, AGGREGATED_V2)
            if path == "/api":
                addr = self.server_address or "127.0.0.1:6443"
                return Response(200, dumps(api_versions(addr)))
            return Response(200, dumps(api_group_list(self.registry)))
        if parts[0] == "apis" and len(parts) == 2:
            doc = api_group(self.registry, parts[1])
            if doc is None:
                raise E.no_route()
            return Response(200, dumps(doc))
        if path == "/openapi/v3":
            return Response(200, self.openapi.index())
        if path.startswith("/openapi/v3/"):
            gv_doc = self.openapi.document(path[len("/openapi/v3/") :])
            if gv_doc is None:
                raise E.no_route()
            cache = [("Cache-Control", "public, immutable")] if req.q("hash") else []
            return Response(200, gv_doc, headers=cache)
        raise E.no_route()

    # -------------------------------------------------------------- resources

    def _resource(self, req: Request, user: auth.UserInfo, r: Route) -> Response | WatchStream:
        rt, m = r.rt, req.method
        if m == "GET":
            verb = "get" if r.name else ("watch" if req.flag("watch") else "list")
        elif m == "POST":
            verb = "create"
        elif m == "PUT":
            verb = "update"
        elif m == "PATCH":
            verb = "patch"
        elif m == "DELETE":
            verb = "delete" if r.name else "deletecollection"
        else:
            raise E.method_not_allowed()
        if r.subresource in ("token", "binding"):
            verb = "create" if m == "POST" else verb
        allowed = (
            rt.verbs
            if not r.subresource
            else (
                ("create",) if r.subresource in ("token", "binding") else ("get", "patch", "update")
            )
        )
        if (
            verb not in allowed
            or (r.subresource == "" and r.name and verb == "create")
            or (not r.name and verb in ("update", "patch"))
        ):
            raise E.method_not_allowed()
        self._authorize(
            auth.Attributes(user, verb, rt.group, rt.plural, r.subresource, r.namespace, r.name)
        )
        if rt.namespaced and not r.namespace and verb not in ("list", "watch"):
            raise E.no_route()
        if rt.store_key == "tokenreviews.authentication.k8s.io":
            return self._token_review(req)
        if r.subresource == "token":
            return self._token_request(req, r)
        if r.subresource == "binding":
            return self._bind(req, r)
        if r.subresource == "scale":
            return self._scale(req, r, verb)
        fmt = (
            negotiate(req.headers.get("accept", ""))
            if verb in ("get", "list", "watch")
            else negotiate_write(req.headers.get("accept", ""))
        )
        if verb == "get":
            return self._get(req, r, fmt)
        if verb == "list":
            return self._list(req, r, fmt)
        if verb == "watch":
            return self._watch(req, r, fmt)
        manager = req.q("fieldManager") or _manager_from_agent(req.headers.get("user-agent", ""))
        if len(manager) > 128:
            raise E.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [E.invalid_value("fieldManager", manager, "must be at most 128 characters")],
            )
        dry = req.q("dryRun")
        if dry not in ("", "All"):
            raise E.invalid(
                "CreateOptions", "meta.k8s.io", "", [E.not_supported("dryRun", dry, ["All"])]
            )
        if verb == "create":
            out = self._create(req, r, manager, user)
        elif verb == "update":
            out = self._update(req, r, manager)
        elif verb == "patch":
            out = self._patch(req, r, manager)
        elif verb == "delete":
            out = self._delete(req, r)
        else:
            out = self._delete_collection(req, r)
        self.controller.sync(self.now(), self.new_uid)
        return out

    def _scale(self, req: Request, r: Route, verb: str) -> Response:
        """The `scale` subresource (autoscaling/v1 Scale) of Deployments and ReplicaSets:
        what `kubectl scale` reads and patches."""
        rt = r.rt
        obj = self.store.get(rt.store_key, r.namespace, r.name)
        if obj is None:
            raise E.not_found(rt.plural, rt.group, r.name)

        def scale_of(o: dict[str, Any]) -> dict[str, Any]:
            meta = o["metadata"]
            labels = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            return {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": int((o.get("spec") or {}).get("replicas", 1))},
                "status": {
                    "replicas": int((o.get("status") or {}).get("replicas") or 0),
                    "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                },
            }  # fmt: skip

        current = scale_of(obj)
        if verb == "get":
            return Response(200, dumps(current), JSON)
        try:
            body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise E.bad_request(f"the Scale is not JSON: {exc}") from exc
        ctype = req.headers.get("content-type", "").split(";")[0]
        if verb == "update":
            wanted = body
        elif ctype == "application/json-patch+json":
            wanted = P.json_patch(current, body)
        else:
            wanted = P.merge_patch(current, body)
        replicas = (
            ((wanted or {}).get("spec") or {}).get("replicas") if isinstance(wanted, dict) else None
        )
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise E.invalid(
                "Scale", "autoscaling", r.name,
                [E.invalid_value("spec.replicas", replicas, "must be a non-negative integer")],
            )  # fmt: skip
        if replicas != current["spec"]["replicas"]:
            meta = obj["metadata"]
            obj = dict(
                obj,
                spec=dict(obj.get("spec") or {}, replicas=replicas),
                metadata=dict(meta, generation=int(meta.get("generation") or 1) + 1),
            )
            self.store.commit("MODIFIED", rt.store_key, obj)
        return Response(200, dumps(scale_of(obj)), JSON)

    # -------------------------------------------------------------- encoding

    def _out(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("apiVersion") != rt.api_version:
            obj = dict(obj, apiVersion=rt.api_version)
        return obj

    def _enc_obj(self, rt: ResourceType, obj: dict[str, Any]) -> bytes:
        meta = obj.get("metadata") or {}
        key = (rt.store_key, meta.get("namespace", ""), meta.get("name", ""), rt.version)
        rv = meta.get("resourceVersion", "")
        hit = self._enc.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        body = dumps(self._out(rt, obj))
        if len(self._enc) > 200000:
            self._enc.clear()
        self._enc[key] = (rv, body)
        return body

    def _respond(
        self,
        rt: ResourceType,
        obj: dict[str, Any],
        fmt: Format,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> Response:
        headers = [("Warning", f'299 - "{w}"') for w in warnings or []][:50]
        if fmt.kind == "table":
            return Response(
                status,
                dumps(
                    to_table(
                        rt,
                        [obj],
                        {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                        "PartialObjectMetadata",
                        self.clock(),
                    )
                ),
                fmt.content_type,
                headers,
            )
        if fmt.kind == "metadata":
            return Response(
                status,
                dumps(
                    {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata", {}),
                    }
                ),
                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
                headers,
            )
        if fmt.yaml:
            return Response(
                status,
                yaml.safe_dump(self._out(rt, obj), sort_keys=False).encode(),
                fmt.content_type,
                headers,
            )
        return Response(status, self._enc_obj(rt, obj), JSON, headers)

    # -------------------------------------------------------------- get / list

    def _get(self, req: Request, r: Route, fmt: Format) -> Response:
        obj = self.store.get(r.rt.store_key, r.namespace, r.name)
        if obj is None:
            raise E.not_found(r.rt.plural, r.rt.group, r.name)
        if r.subresource == "status" or not r.subresource:
            return self._respond(r.rt, obj, fmt)
        raise E.no_route()

    def _selectors(
        self, req: Request, rt: ResourceType
    ) -> tuple[tuple[S.Requirement, ...], tuple[S.FieldRequirement, ...]]:
        return S.parse_labels(req.q("labelSelector")), S.parse_fields(
            req.q("fieldSelector"), rt.store_key
        )

    def _list(self, req: Request, r: Route, fmt: Format) -> Response:
        rt = r.rt
        labels, fields = self._selectors(req, rt)
        limit_text = req.q("limit")
        try:
            limit = int(limit_text) if limit_text else 0
        except ValueError as exc:
            raise E.bad_request(f"invalid limit {limit_text!r}: not an integer") from exc
        cont = req.q("continue")
        rv_text, match = req.q("resourceVersion"), req.q("resourceVersionMatch")
        if match and not rv_text:
            raise E.invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                [
                    E.forbidden_field(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    )
                ],
            )
        if match not in ("", "Exact", "NotOlderThan"):
            raise E.invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                [E.not_supported("resourceVersionMatch", match, ["Exact", "NotOlderThan"])],
            )
        start_after: tuple[str, str] | None = None
        if cont:
            if rv_text and rv_text != "0":
                raise E.bad_request(
                    "specifying resource version is not allowed when using continue"
                )
            at, start_after = self._decode_continue(cont)
            try:
                keys, objs = self.store.snapshot(rt.store_key, at)
            except E.ApiError as exc:
                err = E.expired(
                    "The provided continue parameter is too old to "
                    "display a consistent list result. "
                    "You can start a new list without the continue "
                    "parameter, or use the continue token "
                    "in this response to retrieve the remainder of "
                    "the results. Continuing with the "
                    "provided token results in an inconsistent list - objects that were created, "
                    "modified, or deleted between the time the first "
                    "chunk was returned and now may "
                    "show up in the list."
                )
                err.metadata = {"continue": self._encode_continue(self.store.rv, start_after)}
                raise err from exc
        else:
            at = self.store.rv
            if rv_text and rv_text != "0":
                asked = _parse_rv(rv_text)
                if asked > self.store.rv:
                    raise E.rv_too_large(asked, self.store.rv)
                if match == "Exact":
                    at = asked
            keys, objs = self.store.snapshot(rt.store_key, at)
        items: list[dict[str, Any]] = []
        ns = r.namespace or None
        if start_after is not None:
            import bisect

            begin = bisect.bisect_right(keys, start_after)
        elif ns is not None:
            import bisect

            begin = bisect.bisect_left(keys, (ns, ""))
        else:
            begin = 0
        next_key: tuple[str, str] | None = None
        remaining = 0
        for i in range(begin, len(keys)):
            k = keys[i]
            if ns is not None and k[0] != ns:
                if k[0] > ns:
                    break
                continue
            obj = objs[k]
            if not (S.labels_match(labels, obj) and S.fields_match(fields, obj)):
                continue
            if limit > 0 and len(items) >= limit:
                next_key = items_last_key(items)
                if not labels and not fields:
                    remaining = sum(
                        1 for j in range(i, len(keys)) if ns is None or keys[j][0] == ns
                    )
                break
            items.append(obj)
        meta: dict[str, Any] = {"resourceVersion": str(at)}
        if next_key is not None:
            meta["continue"] = self._encode_continue(at, next_key)
            if remaining:
                meta["remainingItemCount"] = remaining
        if fmt.kind == "table":
            include = req.q("includeObject", "PartialObjectMetadata")
            return Response(
                200, dumps(to_table(rt, items, meta, include, self.clock())), fmt.content_type
            )
        if fmt.kind == "metadata":
            mdoc = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": [
                    {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata", {}),
                    }
                    for o in items
                ],
            }
            return Response(200, dumps(mdoc), fmt.content_type)
        if fmt.yaml:
            ydoc = {
                "apiVersion": rt.api_version,
                "kind": rt.list_kind_name,
                "metadata": meta,
                "items": [self._out(rt, o) for o in items],
            }
            return Response(200, yaml.safe_dump(ydoc, sort_keys=False).encode(), fmt.content_type)
        head = dumps({"kind": rt.list_kind_name, "apiVersion": rt.api_version, "metadata": meta})[
            :-1
        ]
        body = head + b',"items":[' + b",".join(self._enc_obj(rt, o) for o in items) + b"]}"
        return Response(200, body)

    @staticmethod
    def _encode_continue(rv: int, key: tuple[str, str]) -> str:
        raw = json.dumps(
            {"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)}, separators=(",", ":")
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            doc = json.loads(raw)
            rv, start = int(doc["rv"]), doc["start"]
            if (
                doc.get("v") != "meta.k8s.io/v1"
                or not (
                    isinstance(start, list)
                    and len(start) == 2
                    and all(isinstance(s, str) for s in start)
                )
                or rv < 1
            ):
                raise ValueError("bad fields")
        except (ValueError, KeyError, TypeError) as exc:
            raise E.bad_request(f"continue key is not valid: {str(exc)[:100]}") from exc
        return rv, (start[0], start[1])

    # -------------------------------------------------------------- watch

    def _watch(self, req: Request, r: Route, fmt: Format) -> Response | WatchStream:
        rt = r.rt
        labels, fields = self._selectors(req, rt)
        rv_text = req.q("resourceVersion")
        initial_events = req.q("sendInitialEvents")
        match = req.q("resourceVersionMatch")
        bookmarks = req.flag("allowWatchBookmarks")
        if initial_events not in ("", "true", "false"):
            raise E.bad_request(f"invalid sendInitialEvents {initial_events!r}")
        if initial_events:
            causes = []
            if match != "NotOlderThan":
                causes.append(
                    E.forbidden_field(
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                )
            if initial_events == "true" and not bookmarks:
                causes.append(
                    E.forbidden_field(
                        "allowWatchBookmarks",
                        "sendInitialEvents requires setting allowWatchBookmarks to true",
                    )
                )
            if causes:
                raise E.invalid("ListOptions", "meta.k8s.io", "", causes)
        elif match:
            raise E.invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                [
                    E.forbidden_field(
                        "resourceVersionMatch",
                        (
                            "resourceVersionMatch is forbidden for watch unless "
                            "sendInitialEvents is provided"
                        ),
                    )
                ],
            )
        timeout_text = req.q("timeoutSeconds")
        try:
            timeout = (
                float(timeout_text)
                if timeout_text
                else DEFAULT_WATCH_TIMEOUT * (1 + random.random())
            )
        except ValueError as exc:
            raise E.bad_request(f"invalid timeoutSeconds {timeout_text!r}") from exc
        if timeout < 0:
            raise E.bad_request("timeoutSeconds must not be negative")
        if len(self.watchers) >= self.max_watchers:
            raise E.too_many_requests(
                f"too many watches open ({self.max_watchers}); try again later"
            )
        table = fmt.kind == "table"

        def encode(kind: str, obj: dict[str, Any]) -> bytes:
            if table:
                o = dumps(
                    to_table(
                        rt,
                        [obj],
                        {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                        req.q("includeObject", "PartialObjectMetadata"),
                        self.clock(),
                    )
                )
            elif fmt.kind == "metadata":
                o = dumps(
                    {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata", {}),
                    }
                )
            else:
                o = self._enc_obj(rt, obj)
            return b'{"type":"' + kind.encode() + b'","object":' + o + b"}\n"

        def bookmark_frame(rv: int, end: bool = False) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
            if end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return (
                dumps(
                    {
                        "type": "BOOKMARK",
                        "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
                    }
                )
                + b"\n"
            )

        w = Watcher(
            rt.store_key, r.namespace or None, labels, fields, encode, self.watch_queue_bytes
        )
        initial: list[bytes] = []
        ns = r.namespace or None
        try:
            if initial_events == "true" or (not initial_events and rv_text in ("", "0")):
                if rv_text and rv_text != "0":
                    asked = _parse_rv(rv_text)
                    if asked > self.store.rv:
                        raise E.rv_too_large(asked, self.store.rv)
                for obj in self.store.items(rt.store_key, ns):
                    if w.matches(obj):
                        initial.append(encode("ADDED", obj))
                if initial_events == "true":
                    initial.append(bookmark_frame(self.store.rv, end=True))
            else:
                start = _parse_rv(rv_text) if rv_text and rv_text != "0" else self.store.rv
                if start > self.store.rv:
                    raise E.rv_too_large(start, self.store.rv)
                for ev in self.store.events_after(start):
                    w.offer(ev)
                initial.extend(w.take())
        except E.ApiError as err:
            if err.code != 410:
                raise
            # As the real server: 200, then one ERROR event holding the 410 Status.
            frame = dumps({"type": "ERROR", "object": err.status()}) + b"\n"
            w.close("expired")
            return WatchStream(
                w, [frame], fmt.content_type if table else JSON, 0, False, lambda: b"", lambda: None
            )
        self.watchers.add(w)

        def close() -> None:
            self.watchers.discard(w)
            w.close("done")

        return WatchStream(
            w,
            initial,
            fmt.content_type if table else JSON,
            timeout,
            bookmarks,
            lambda: bookmark_frame(max(self.store.rv, w.sent_rv)),
            close,
        )

    def _track_ips(self, ev: Event) -> None:
        if ev.key != "services":
            return
        for obj, add in ((ev.prev, False), (ev.obj, ev.type != "DELETED")):
            ip = ((obj or {}).get("spec") or {}).get("clusterIP")
            if isinstance(ip, str) and ip not in ("", "None"):
                (self._allocated_ips.add if add else self._allocated_ips.discard)(ip)

    def _fan_out(self, ev: Event) -> None:
        for w in list(self.watchers):
            w.offer(ev)
            if w.closed:
                self.watchers.discard(w)

    # -------------------------------------------------------------- body to object

    def _decode(
        self, req: Request, rt: ResourceType, validation: str, warnings: list[str]
    ) -> dict[str, Any]:
        dups: list[str] = []
        obj = request_object(req, dups)
        if not isinstance(obj, dict):
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be '
                f"handled as a {rt.kind}: the body must be a JSON "
                "object"
            )
        self._strictness(rt, [f'duplicate field "{d}"' for d in dups], validation, warnings)
        self._check_type_meta(rt, obj)
        return obj

    def _check_type_meta(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version is None and kind is None:
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            return
        if kind != rt.kind:
            raise E.bad_request(
                (
                    f'{rt.kind} in version "{rt.version}" cannot be '
                    f'handled as a {kind}: no kind "{kind}" is registered '
                    f'for version "{api_version}"'
                )[:500]
                if kind
                else "Object 'Kind' is missing in the body"
            )
        if api_version != rt.api_version:
            other = self.registry.by_kind(str(api_version), str(kind))
            if other is None or other.store_key != rt.store_key:
                raise E.bad_request(
                    f"the API version in the data ({api_version}) does "
                    f"not match the expected API version ({rt.api_version})"
                )
            obj["apiVersion"] = rt.api_version

    def _strictness(
        self, rt: ResourceType, problems: list[str], validation: str, warnings: list[str]
    ) -> None:
        if not problems:
            return
        if validation == "Strict":
            raise E.bad_request(
                (
                    f'{rt.kind} in version "{rt.version}" cannot be '
                    f"handled as a {rt.kind}: strict decoding error: "
                )
                + ", ".join(problems[:20])
            )
        if validation == "Warn":
            warnings.extend(problems[:20])

    def _schema(self, rt: ResourceType) -> Schema:
        if rt.crd is not None:
            node = dict(rt.crd.schema)
            props = dict(node.get("properties") or {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
            node["properties"] = props
            return Schema(node)
        assert rt.schema_ref is not None
        return Schema.builtin(rt.schema_ref)

    def _validation_mode(self, req: Request) -> str:
        mode = req.q("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise E.bad_request(
                f'fieldValidation must be one of "Ignore", "Warn", or "Strict", got {mode!r}'
            )
        return mode

    def _prepare(
        self,
        rt: ResourceType,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        validation: str,
        warnings: list[str],
        subresource: str = "",
    ) -> None:
        """Prune, default and validate `obj` (in place) as the object to store; raises 400/422."""
        schema = self._schema(rt)
        unknown = prune(obj, schema)
        self._strictness(rt, [f'unknown field "{u}"' for u in unknown], validation, warnings)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be '
                f"handled as a {rt.kind}: metadata must be an object"
            )
        if rt.crd is not None:
            apply_defaults(obj, schema)
        else:
            O.default(rt, obj)
        name = meta.get("name", "")
        causes: list[E.Cause] = []
        O.check_metadata(rt, obj, causes)
        type_causes = self._type_causes(rt, obj)
        causes += type_causes
        if not type_causes:
            # Per-kind rules read fields of the types the schema promises.
            O.check_kind(rt, obj, old, causes)
        if rt.store_key == "services" and not causes and isinstance(obj.get("spec"), dict):
            if old is None:
                used = self._allocated_ips
                self.cluster_ips.assign(obj["spec"], used, causes)
            else:
                for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                    if k in (old.get("spec") or {}) and k not in obj["spec"]:
                        obj["spec"][k] = old["spec"][k]
        if causes:
            raise E.invalid(rt.kind, rt.group, str(name), causes)

    def _type_causes(self, rt: ResourceType, obj: dict[str, Any]) -> list[E.Cause]:
        key = (rt.store_key, rt.version)
        v = self._validators.get(key)
        if v is None:
            if rt.crd is not None:
                s = dict(rt.crd.schema)
                props = dict(s.get("properties") or {})
                props.pop("metadata", None)
                s["properties"] = props
                v = crd_validator(s)
            else:
                assert rt.schema_ref is not None
                v = builtin_validator(rt.schema_ref)
            self._validators[key] = v
        return check(v, obj)

    # -------------------------------------------------------------- create

    def _ensure_namespace(self, rt: ResourceType, ns: str, creating: bool) -> None:
        if not rt.namespaced:
            return
        live = self.store.get("namespaces", "", ns)
        if live is None:
            raise E.not_found("namespaces", "", ns)
        if creating and live["metadata"].get("deletionTimestamp"):
            raise E.forbidden(
                (
                    f"{rt.plural} is forbidden: unable to create new "
                    f"content in namespace {ns} because it is being "
                    "terminated"
                ),
                resource=rt.plural,
                group=rt.group,
            )

    def _create(self, req: Request, r: Route, manager: str, user: auth.UserInfo) -> Response:
        rt = r.rt
        if r.subresource or r.name:
            raise E.method_not_allowed()
        validation = self._validation_mode(req)
        warnings: list[str] = []
        obj = self._decode(req, rt, validation, warnings)
        return self._create_object(req, r, obj, manager, validation, warnings)

    def _create_object(
        self,
        req: Request,
        r: Route,
        obj: dict[str, Any],
        manager: str,
        validation: str,
        warnings: list[str],
        applied: bool = False,
    ) -> Response:
        rt = r.rt
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be '
                f"handled as a {rt.kind}: metadata must be an object"
            )
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != r.namespace:
                raise E.bad_request(
                    "the namespace of the provided object does not "
                    "match the namespace sent on the request"
                )
            meta["namespace"] = r.namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion") and not applied:
            raise E.bad_request("resourceVersion should not be set on objects to be created")
        if (
            not meta.get("name")
            and isinstance(meta.get("generateName"), str)
            and meta["generateName"]
        ):
            meta["name"] = meta["generateName"][:58] + "".join(
                random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
            )
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "resourceVersion",
        ):
            meta.pop(k, None)
        if rt.has_status and rt.store_key != "namespaces":
            obj.pop("status", None)
        self._prepare(rt, obj, None, validation, warnings)
        self._ensure_namespace(rt, r.namespace, True)
        name = meta["name"]
        if self.store.get(rt.store_key, r.namespace, name) is not None:
            raise E.already_exists(rt.plural, rt.group, name)
        if rt.store_key == CRD_KEY:
            self._crd_conflicts(obj)
        meta["uid"] = self.new_uid()
        meta["creationTimestamp"] = self.now()
        if rt.crd is not None or rt.store_key in (
            "pods",
            "services",
            CRD_KEY,
            "endpointslices.discovery.k8s.io",
            "daemonsets.apps",
            "deployments.apps",
            "replicasets.apps",
            "poddisruptionbudgets.policy",
        ):
            meta["generation"] = 1
        if not applied:
            F.track_update(
                None,
                obj,
                self._schema(rt),
                manager,
                rt.api_version,
                meta["creationTimestamp"],
                status_apart=rt.has_status,
            )
        if rt.store_key == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if rt.store_key == CRD_KEY:
            obj["status"] = self._crd_status(obj)
        if rt.store_key == "services":
            obj["status"] = {"loadBalancer": {}}
        if req.q("dryRun") == "All":
            return self._respond(rt, obj, Format(), 201, warnings)
        self.store.commit("ADDED", rt.store_key, obj)
        if rt.store_key == CRD_KEY:
            self._register_crd(obj)
        return self._respond(rt, obj, Format(), 201, warnings)

    # -------------------------------------------------------------- update

    def _update(self, req: Request, r: Route, manager: str) -> Response:
        rt = r.rt
        validation = self._validation_mode(req)
        warnings: list[str] = []
        obj = self._decode(req, rt, validation, warnings)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be '
                f"handled as a {rt.kind}: metadata must be an object"
            )
        if meta.get("name") and meta["name"] != r.name:
            raise E.bad_request(
                f"the name of the object ({meta['name']}) does "
                f"not match the name on the URL ({r.name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != r.namespace:
            raise E.bad_request(
                "the namespace of the provided object does not "
                "match the namespace sent on the request"
            )
        old = self.store.get(rt.store_key, r.namespace, r.name)
        if old is None:
            raise E.not_found(rt.plural, rt.group, r.name)
        rv = meta.get("resourceVersion")
        if rv:
            if str(rv) != old["metadata"]["resourceVersion"]:
                raise E.conflict(rt.plural, rt.group, r.name, E.STALE)
        elif rt.crd is not None or rt.store_key == CRD_KEY:
            raise E.invalid(
                rt.kind,
                rt.group,
                r.name,
                [E.invalid_value("metadata.resourceVersion", 0, "must be specified for an update")],
            )
        return self._write_update(req, r, old, obj, manager, validation, warnings)

    def _write_update(
        self,
        req: Request,
        r: Route,
        old: dict[str, Any],
        obj: dict[str, Any],
        manager: str | None,
        validation: str,
        warnings: list[str],
        tracked: bool = False,
    ) -> Response:
        rt = r.rt
        meta = obj.setdefault("metadata", {}) if isinstance(obj.get("metadata"), dict) else None
        if meta is None:
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be '
                f"handled as a {rt.kind}: metadata must be an object"
            )
        old_meta = old["metadata"]
        meta["name"] = old_meta["name"]
        if rt.namespaced:
            meta["namespace"] = old_meta.get("namespace", "")
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if "managedFields" in old_meta and not tracked and meta.get("managedFields") != []:
            meta["managedFields"] = old_meta["managedFields"]
        if r.subresource == "status":
            # Only the status changes through /status (metadata and spec are the stored ones).
            new = {k: v for k, v in old.items() if k != "status"}
            new["metadata"] = dict(
                old_meta, managedFields=meta.get("managedFields", old_meta.get("managedFields"))
            )
            if not new["metadata"]["managedFields"]:
                new["metadata"].pop("managedFields")
            if "status" in obj:
                new["status"] = obj["status"]
            obj = new
        elif rt.has_status and rt.store_key != "namespaces":
            if "status" in old:
                obj["status"] = old["status"]
            else:
                obj.pop("status", None)
        self._prepare(rt, obj, old, validation, warnings, r.subresource)
        if rt.store_key == CRD_KEY and r.subresource != "status":
            obj["status"] = self._crd_status(obj)
        if manager is not None and not tracked:
            F.track_update(
                old,
                obj,
                self._schema(rt),
                manager,
                rt.api_version,
                self.now(),
                r.subresource,
                status_apart=rt.has_status,
            )
        if _same(old, obj):
            return self._respond(rt, old, Format(), 200, warnings)
        if not r.subresource and _spec_changed(old, obj) and "generation" in old_meta:
            obj["metadata"]["generation"] = int(old_meta.get("generation") or 1) + 1
        if req.q("dryRun") == "All":
            return self._respond(rt, obj, Format(), 200, warnings)
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            self.store.commit("DELETED", rt.store_key, obj)
            self._after_delete(rt, obj, "Background")
            return self._respond(rt, obj, Format(), 200, warnings)
        self.store.commit("MODIFIED", rt.store_key, obj)
        if rt.store_key == CRD_KEY:
            self._register_crd(obj)
        return self._respond(rt, obj, Format(), 200, warnings)

    # -------------------------------------------------------------- patch

    def _patch(self, req: Request, r: Route, manager: str) -> Response:
        rt = r.rt
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise E.unsupported_media(list(PATCH_TYPES))
        if ctype == "application/strategic-merge-patch+json" and rt.crd is not None:
            raise E.unsupported_media([t for t in PATCH_TYPES if "strategic" not in t])
        validation = self._validation_mode(req)
        warnings: list[str] = []
        apply = ctype == "application/apply-patch+yaml"
        force = req.q("force")
        if force and not apply:
            raise E.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [E.forbidden_field("force", "may not be specified for non-apply patch")],
            )
        if apply and not req.q("fieldManager"):
            raise E.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [E.required("fieldManager", "is required for apply patch")],
            )
        dups: list[str] = []
        body = parse_body(req.body, "yaml" if apply else "json", dups)
        self._strictness(rt, [f'duplicate field "{d}"' for d in dups], validation, warnings)
        old = self.store.get(rt.store_key, r.namespace, r.name)
        if apply:
            if not isinstance(body, dict):
                raise E.bad_request("the apply configuration must be an object")
            self._check_type_meta(rt, body)
            if body.get("apiVersion") is None:
                raise E.bad_request("apiVersion must be set in an apply configuration")
            bmeta = body.get("metadata")
            if not isinstance(bmeta, dict):
                raise E.bad_request("metadata must be set in an apply configuration")
            if bmeta.get("name") and bmeta["name"] != r.name:
                raise E.bad_request(
                    f"the name of the object ({bmeta['name']}) does "
                    f"not match the name on the URL ({r.name})"
                )
            if rt.namespaced and bmeta.get("namespace") and bmeta["namespace"] != r.namespace:
                raise E.bad_request(
                    "the namespace of the provided object does not "
                    "match the namespace sent on the request"
                )
            bmeta["name"] = r.name
            schema = self._schema(rt)
            applied = copy.deepcopy(body)
            unknown = prune(applied, schema)
            self._strictness(rt, [f'unknown field "{u}"' for u in unknown], validation, warnings)
            if rt.crd is None:
                O.default(rt, applied)
            if (
                old is not None
                and bmeta.get("resourceVersion")
                and str(bmeta["resourceVersion"]) != old["metadata"]["resourceVersion"]
            ):
                raise E.conflict(rt.plural, rt.group, r.name, E.STALE)
            applied["metadata"].pop("resourceVersion", None)
            merged = F.server_side_apply(
                old,
                applied,
                schema,
                manager,
                force.lower() in ("true", "1"),
                rt.api_version,
                self.now(),
                r.subresource,
                status_apart=rt.has_status,
            )
            if old is None:
                if r.subresource:
                    raise E.not_found(rt.plural, rt.group, r.name)
                return self._create_object(
                    req, r, merged, manager, "Ignore", warnings, applied=True
                )
            return self._write_update(
                req, r, old, merged, manager, "Ignore", warnings, tracked=True
            )
        if old is None:
            raise E.not_found(rt.plural, rt.group, r.name)
        current = json.loads(self._enc_obj(rt, old))
        if ctype == "application/json-patch+json":
            patched = P.json_patch(current, body)
        elif ctype == "application/merge-patch+json":
            if not isinstance(body, dict):
                raise E.bad_request(
                    "json: cannot unmarshal into Go value of type "
                    "map[string]interface {}: a merge patch must be "
                    "a JSON object"
                )
            patched = P.merge_patch(current, body)
        else:
            patched = P.strategic_merge(current, body, self._schema(rt))
        if not isinstance(patched, dict):
            raise E.unprocessable("the patched object is not a JSON object")
        if not _depth_ok(patched):
            raise E.bad_request(f"the patched object is nested more than {MAX_DEPTH} levels deep")
        self._check_type_meta(rt, patched)
        pmeta = patched.get("metadata")
        if not isinstance(pmeta, dict):
            raise E.unprocessable("metadata: the patched object has no metadata object")
        if pmeta.get("name") != r.name:
            raise E.bad_request(
                f"the name of the object ({pmeta.get('name')}) "
                f"does not match the name on the URL ({r.name})"
            )
        rv = pmeta.get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise E.conflict(rt.plural, rt.group, r.name, E.STALE)
        return self._write_update(req, r, old, patched, manager, validation, warnings)

    # -------------------------------------------------------------- delete

    def _delete_options(self, req: Request) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if req.body.strip():
            parsed = request_object(req)
            if not isinstance(parsed, dict):
                raise E.bad_request("DeleteOptions must be a JSON object")
            opts = parsed
        if req.q("propagationPolicy"):
            opts["propagationPolicy"] = req.q("propagationPolicy")
        if req.q("gracePeriodSeconds"):
            opts["gracePeriodSeconds"] = req.q("gracePeriodSeconds")
        policy = opts.get("propagationPolicy")
        if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
            raise E.invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                [
                    E.not_supported(
                        "propagationPolicy", policy, ["Foreground", "Background", "Orphan", "nil"]
                    )
                ],
            )
        if opts.get("orphanDependents") is not None and policy is not None:
            raise E.invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                [
                    E.invalid_value(
                        "propagationPolicy",
                        policy,
                        "orphanDependents and deletionPropagation cannot be both set",
                    )
                ],
            )
        return opts

    def _delete(self, req: Request, r: Route) -> Response:
        rt = r.rt
        opts = self._delete_options(req)
        old = self.store.get(rt.store_key, r.namespace, r.name)
        if old is None:
            raise E.not_found(rt.plural, rt.group, r.name)
        if rt.store_key == "namespaces" and r.name in PROTECTED_NAMESPACES:
            raise E.forbidden(
                f'namespaces "{r.name}" is forbidden: this namespace may not be deleted',
                name=r.name,
                resource="namespaces",
            )
        pre = opts.get("preconditions") or {}
        if isinstance(pre, dict):
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise E.conflict(
                    rt.plural,
                    rt.group,
                    r.name,
                    (
                        f"Precondition failed: UID in precondition: {pre['uid']}, "
                        f"UID in object meta: {old['metadata'].get('uid')}"
                    ),
                )
            if (
                pre.get("resourceVersion")
                and str(pre["resourceVersion"]) != old["metadata"]["resourceVersion"]
            ):
                raise E.conflict(
                    rt.plural,
                    rt.group,
                    r.name,
                    (
                        "Precondition failed: ResourceVersion in precondition: "
                        f"{pre['resourceVersion']}, ResourceVersion in "
                        f"object meta: {old['metadata']['resourceVersion']}"
                    ),
                )
        if req.q("dryRun") == "All":
            return self._respond(rt, old, Format())
        policy = opts.get("propagationPolicy") or (
            "Orphan" if opts.get("orphanDependents") else "Background"
        )
        return self._respond(rt, self._delete_object(rt, old, policy), Format())

    def _delete_object(self, rt: ResourceType, old: dict[str, Any], policy: str) -> dict[str, Any]:
        meta = old["metadata"]
        if rt.store_key == "namespaces":
            return self._delete_namespace(old)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            new = dict(
                old, metadata=dict(meta, deletionTimestamp=self.now(), deletionGracePeriodSeconds=0)
            )
            self.store.commit("MODIFIED", rt.store_key, new)
            return new
        gone = dict(old, metadata=dict(meta))
        self.store.commit("DELETED", rt.store_key, gone)
        self._after_delete(rt, gone, policy)
        return gone

    def _after_delete(self, rt: ResourceType, obj: dict[str, Any], policy: str) -> None:
        """Garbage collection of dependents (ownerReferences), CRD instances, and namespaces."""
        uid = obj["metadata"].get("uid")
        if rt.store_key == CRD_KEY:
            self._unregister_crd(obj)
        if not uid:
            return
        ns = obj["metadata"].get("namespace")
        for key in list(self.store.data):
            for dep in list(self.store.items(key, ns if ns else None)):
                refs = dep["metadata"].get("ownerReferences") or []
                if not any(isinstance(x, dict) and x.get("uid") == uid for x in refs):
                    continue
                dep_rt = self.registry.by_store_key(key)
                if not dep_rt:
                    continue
                if policy == "Orphan":
                    rest = [x for x in refs if not (isinstance(x, dict) and x.get("uid") == uid)]
                    m = dict(dep["metadata"], ownerReferences=rest)
                    if not rest:
                        m.pop("ownerReferences")
                    self.store.commit("MODIFIED", key, dict(dep, metadata=m))
                else:
                    self._delete_object(dep_rt[0], dep, policy)
        self._finish_namespaces()

    def _delete_namespace(self, ns_obj: dict[str, Any]) -> dict[str, Any]:
        """Terminating now; its objects go NAMESPACE_CLEANUP_DELAY later (`collect`), as the
        namespace controller's lag lets `kubectl delete -k` of an install holding its own
        namespace delete the objects in it after the namespace."""
        name = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            ns_obj = dict(
                ns_obj,
                metadata=dict(ns_obj["metadata"], deletionTimestamp=self.now()),
                status={"phase": "Terminating"},
            )
            self.store.commit("MODIFIED", "namespaces", ns_obj)
            self._terminating.setdefault(name, self.clock() + NAMESPACE_CLEANUP_DELAY)
        return ns_obj

    def collect(self) -> None:
        """The namespace controller's pass: empty the Terminating namespaces that are due."""
        now = self.clock()
        for name, due in list(self._terminating.items()):
            if due <= now:
                del self._terminating[name]
                self._empty_namespace(name)

    def _empty_namespace(self, name: str) -> None:
        for key in list(self.store.data):
            types = self.registry.by_store_key(key)
            if not types or not types[0].namespaced:
                continue
            for obj in list(self.store.items(key, name)):
                if not obj["metadata"].get("deletionTimestamp") or not obj["metadata"].get(
                    "finalizers"
                ):
                    live = self.store.get(key, name, obj["metadata"]["name"])
                    if live is not None:
                        self._delete_object(types[0], live, "Background")
        self._finish_namespaces()

    def _finish_namespaces(self) -> None:
        for ns_obj in list(self.store.items("namespaces")):
            if not ns_obj["metadata"].get("deletionTimestamp"):
                continue
            name = ns_obj["metadata"]["name"]
            if any(
                next(self.store.items(key, name), None) is not None
                for key in self.store.data
                if (types := self.registry.by_store_key(key)) and types[0].namespaced
            ):
                continue
            self.store.commit(
                "DELETED", "namespaces", dict(ns_obj, metadata=dict(ns_obj["metadata"]))
            )

    def _delete_collection(self, req: Request, r: Route) -> Response:
        rt = r.rt
        labels, fields = self._selectors(req, rt)
        opts = self._delete_options(req)
        policy = opts.get("propagationPolicy") or "Background"
        deleted = []
        for obj in list(self.store.items(rt.store_key, r.namespace or None)):
            if S.labels_match(labels, obj) and S.fields_match(fields, obj):
                live = self.store.get(
                    rt.store_key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                )
                if live is not None and req.q("dryRun") != "All":
                    deleted.append(self._delete_object(rt, live, policy))
        body = {
            "kind": rt.list_kind_name,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": [self._out(rt, o) for o in deleted],
        }
        return Response(200, dumps(body))

    # -------------------------------------------------------------- tokens over the API

    def _token_review(self, req: Request) -> Response:
        rt = self.registry.lookup("authentication.k8s.io", "v1", "tokenreviews")
        assert rt is not None
        warnings: list[str] = []
        obj = self._decode(req, rt, self._validation_mode(req), warnings)
        spec = obj.get("spec")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("token"), str)
            or not spec["token"]
        ):
            raise E.invalid("TokenReview", "authentication.k8s.io", "", [E.required("spec.token")])
        audiences = spec.get("audiences")
        if audiences is not None and not (
            isinstance(audiences, list) and all(isinstance(a, str) for a in audiences)
        ):
            raise E.invalid(
                "TokenReview",
                "authentication.k8s.io",
                "",
                [E.invalid_value("spec.audiences", audiences, "must be a list of strings")],
            )
        user, auds, error = self.tokens.review(
            spec["token"], self.store, audiences or None, self.clock()
        )
        status: dict[str, Any] = {"authenticated": user is not None}
        if user is not None:
            status["user"] = user.to_json()
            status["audiences"] = auds
        else:
            status["error"] = error
        out = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return Response(201, dumps(out))

    def _bind(self, req: Request, r: Route) -> Response:
        """pods/binding, as a scheduler binds a pod: sets `spec.nodeName` once (409 after)."""
        body = request_object(req)
        target = body.get("target") if isinstance(body, dict) else None
        node = target.get("name") if isinstance(target, dict) else None
        if not isinstance(node, str) or not node:
            raise E.invalid("Binding", "", r.name, [E.required("target.name")])
        pod = self.store.get(r.rt.store_key, r.namespace, r.name)
        if pod is None:
            raise E.not_found(r.rt.plural, r.rt.group, r.name)
        current = (pod.get("spec") or {}).get("nodeName")
        if current:
            raise E.conflict(
                r.rt.plural,
                r.rt.group,
                r.name,
                f"pod {r.name} is already assigned to node {current!r}",
            )
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = node
        self.store.commit("MODIFIED", r.rt.store_key, new)
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return Response(201, dumps(status))

    def _token_request(self, req: Request, r: Route) -> Response:
        body = request_object(req)
        if not isinstance(body, dict):
            raise E.bad_request("TokenRequest must be a JSON object")
        spec: dict[str, Any] = body["spec"] if isinstance(body.get("spec"), dict) else {}
        exp = spec.get("expirationSeconds", 3600)
        if not isinstance(exp, int) or isinstance(exp, bool) or exp < 600 or exp > 2**32:
            raise E.invalid(
                "TokenRequest",
                "authentication.k8s.io",
                r.name,
                [
                    E.invalid_value(
                        "spec.expirationSeconds",
                        exp,
                        "may not specify a duration less than 10 minutes",
                    )
                ],
            )
        ref = spec.get("boundObjectRef")
        pod = None
        if isinstance(ref, dict):
            if ref.get("kind") != "Pod":
                raise E.invalid(
                    "TokenRequest",
                    "authentication.k8s.io",
                    r.name,
                    [E.not_supported("spec.boundObjectRef.kind", ref.get("kind"), ["Pod"])],
                )
            pod = str(ref.get("name", ""))
            live = self.store.get("pods", r.namespace, pod)
            if live is not None and ref.get("uid") and ref["uid"] != live["metadata"]["uid"]:
                raise E.conflict(
                    "pods", "", pod, "the UID in the bound object reference does not match"
                )
        auds = spec.get("audiences")
        token = self.mint_service_account_token(
            r.namespace,
            r.name,
            pod=pod,
            ttl=float(exp),
            audiences=auds if isinstance(auds, list) and auds else None,
        )
        out = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": r.name, "namespace": r.namespace, "creationTimestamp": None},
            "spec": {
                "audiences": auds or [auth.API_AUDIENCE],
                "expirationSeconds": exp,
                "boundObjectRef": ref,
            },
            "status": {"token": token, "expirationTimestamp": now_rfc3339(self.clock() + exp)},
        }
        return Response(201, dumps(out))

    # -------------------------------------------------------------- CRDs

    def _crd_status(self, crd: dict[str, Any]) -> dict[str, Any]:
        spec = crd["spec"]
        now = self.now()
        conds = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ]
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        return {"conditions": conds, "acceptedNames": names, "storedVersions": stored}

    def _crd_conflicts(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        group, plural = spec["group"], spec["names"]["plural"]
        for rt in self.registry.all():
            if (
                rt.group == group
                and rt.plural == plural
                and (rt.crd is None or rt.crd.crd_name != crd["metadata"]["name"])
            ):
                raise E.invalid(
                    "CustomResourceDefinition",
                    "apiextensions.k8s.io",
                    crd["metadata"]["name"],
                    [
                        E.invalid_value(
                            "spec.names.plural", plural, "the resource is already served"
                        )
                    ],
                )

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        name = crd["metadata"]["name"]
        storage = next((v.get("name") for v in spec.get("versions") or [] if v.get("storage")), "")
        types = []
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            }
            cols = tuple(
                PrinterColumn(
                    str(c.get("name")),
                    str(c.get("type", "string")),
                    str(c.get("jsonPath", "")),
                    str(c.get("description", "")),
                    str(c.get("format", "")),
                    int(c.get("priority", 0) or 0),
                )
                for c in v.get("additionalPrinterColumns") or []
                if isinstance(c, dict)
            )
            subs = tuple(s for s in ("status",) if "status" in (v.get("subresources") or {}))
            types.append(
                ResourceType(
                    spec["group"],
                    v["name"],
                    names["kind"],
                    names["plural"],
                    names.get("singular") or str(names["kind"]).lower(),
                    spec.get("scope") == "Namespaced",
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    subresources=subs,
                    crd=CrdVersion(name, schema, cols, storage),
                    list_kind=names.get("listKind", ""),
                )
            )
        self.registry.set_crd(name, types)
        self._validators = {
            k: v for k, v in self._validators.items() if not any(k[0] == t.store_key for t in types)
        }

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        key = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
        for obj in list(self.store.items(key)):
            self.store.commit("DELETED", key, dict(obj, metadata=dict(obj["metadata"])))
        self.registry.remove_crd(crd["metadata"]["name"])


# ------------------------------------------------------------------ helpers


def items_last_key(items: list[dict[str, Any]]) -> tuple[str, str]:
    m = items[-1]["metadata"]
    return (m.get("namespace") or "", m.get("name") or "")


def _parse_rv(text: str) -> int:
    try:
        rv = int(text)
    except ValueError as exc:
        raise E.bad_request(
            f'resource version "{text}" is not a valid resource version: it must be an integer'
        ) from exc
    if rv < 0:
        raise E.bad_request(f'invalid resource version "{text}"')
    return rv


def _read_verb(method: str) -> str:
    return {
        "GET": "get",
        "HEAD": "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }.get(method, method.lower())


def _manager_from_agent(agent: str) -> str:
    """As the real server: the User-Agent up to its first `/` (e.g. `kubectl`), bounded."""
    return (agent.split("/", 1)[0] or "unknown")[:128]


def _wants_aggregated(accept: str) -> bool:
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if (
            params.get("as") == "APIGroupDiscoveryList"
            and params.get("g") == "apidiscovery.k8s.io"
            and params.get("v") == "v2"
        ):
            return True
        if part.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


def negotiate_write(accept: str) -> Format:
    fmt = negotiate(accept)
    return Format(yaml=fmt.yaml)


def _strip_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    mf = meta.get("managedFields")
    if isinstance(mf, list):
        meta["managedFields"] = [
            {k: v for k, v in e.items() if k != "time"} for e in mf if isinstance(e, dict)
        ]
    return dict(obj, metadata=meta)


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return _strip_volatile(old) == _strip_volatile(new)


def _spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    strip = {"metadata", "status"}
    return {k: v for k, v in old.items() if k not in strip} != {
        k: v for k, v in new.items() if k not in strip
    }
