"""Talking to a Kubernetes API server: credentials, TLS and bounded raw requests.

Credentials come from `--kubeconfig FILE`, else `$KUBECONFIG`, else the pod's own
service account (in-cluster: the token and CA under SERVICE_ACCOUNT_DIR, the server
from `KUBERNETES_SERVICE_HOST`/`_PORT`). There is deliberately no fall-back to
`~/.kube/config`: a DaemonSet must not pick up whatever file a node happens to have.

`kubernetes_asyncio` (the official client's asyncio twin) reads kubeconfigs (tokens,
client certificates, exec plugins), builds the TLS context and keeps the connection
pool; requests go through its REST layer without its model classes: a reflector of
10,000 pods would spend seconds building `V1Pod`s it does not read, and every answer
here is read with a bound on its size (`read_bounded`), which the generated API
methods do not have.

A bearer token kept in a file (the projected service-account token, or a kubeconfig's
`tokenFile`) is re-read when the file changes (a stat per request): bound tokens
rotate, hourly by default, and the kubelet swaps them in place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_kube_config
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from agent.common.errors import SlipstreamError
from agent.identity.caclient import TokenFile

log = logging.getLogger("agent.kube")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_ANSWER = 16 * 1024 * 1024
"""An answer to a single request (a get, a patch, a TokenReview) we read at most."""
CONNECTIONS = 32
"""Each watch holds a connection of its own (HTTP/1.1), so the pool must outnumber them."""


class KubeError(SlipstreamError):
    """A request to the API server failed; the message names the request and why."""


class ApiStatusError(KubeError):
    """The API server answered with an error `Status` (or an error status code)."""

    def __init__(self, what: str, code: int, reason: str, message: str) -> None:
        super().__init__(f"{what}: {code} {reason}: {message}" if message else f"{what}: {code}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Credentials:
    configuration: Configuration
    token_file: str
    """A file the bearer token is re-read from on change; empty when the token is fixed."""
    describe: str
    """Where the credentials came from, for logs and /config_dump (never the token)."""


def _kubeconfig_token_file(path: str) -> str:
    """The current user's `tokenFile`, which kubernetes_asyncio reads only once."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
        ctx_name = doc.get("current-context")
        ctx = next(c["context"] for c in doc.get("contexts") or [] if c.get("name") == ctx_name)
        user = next(u["user"] for u in doc.get("users") or [] if u.get("name") == ctx["user"])
        token_file = user.get("tokenFile") or ""
    except (OSError, yaml.YAMLError, AttributeError, KeyError, StopIteration, TypeError):
        return ""  # the loader has already said what is wrong, or there is none
    if token_file and not os.path.isabs(token_file):
        token_file = os.path.join(os.path.dirname(os.path.abspath(path)), token_file)
    return str(token_file)


async def load_credentials(
    kubeconfig: str | None = None,
    *,
    environ: dict[str, str] | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Credentials:
    """The API server and how to authenticate to it (see the module docstring)."""
    env = dict(os.environ) if environ is None else environ
    cfg = Configuration()
    path = kubeconfig or env.get("KUBECONFIG", "").split(os.pathsep)[0]
    if path:
        try:
            await load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise KubeError(f"kubeconfig {path}: {exc}") from exc
        token_file = _kubeconfig_token_file(path)
        how = f"kubeconfig {path}"
    else:
        token_file = os.path.join(service_account_dir, "token")
        loader = InClusterConfigLoader(
            token_filename=token_file,
            cert_filename=os.path.join(service_account_dir, "ca.crt"),
            try_refresh_token=False,
            environ=env,
        )
        try:
            loader.load_and_set(cfg)
        except (ConfigException, OSError) as exc:
            raise KubeError(
                f"no Kubernetes credentials: give --kubeconfig or KUBECONFIG, or run in a pod "
                f"(in-cluster: {exc})"
            ) from exc
        how = f"in-cluster service account ({service_account_dir})"
    cfg.connection_pool_maxsize = CONNECTIONS
    return Credentials(cfg, token_file, how)


class KubeClient:
    """One API server: its connection pool and its credentials. Many components share one."""

    def __init__(self, credentials: Credentials, *, user_agent: str = "slipstream") -> None:
        self.credentials = credentials
        self.server: str = credentials.configuration.host or ""
        cfg = credentials.configuration
        if credentials.token_file:
            token = TokenFile(credentials.token_file)
            # Re-read before every request: a rotated token is used at once.
            cfg.refresh_api_key_hook = lambda c: c.api_key.__setitem__(
                "BearerToken", f"Bearer {token()}"
            )
        self._api = ApiClient(cfg)
        self._api.user_agent = user_agent
        self._closed = False

    @classmethod
    async def open(
        cls, kubeconfig: str | None = None, *, user_agent: str = "slipstream", **kw: Any
    ) -> KubeClient:
        return cls(await load_credentials(kubeconfig, **kw), user_agent=user_agent)

    def describe(self) -> str:
        return f"{self.server} ({self.credentials.describe})"

    async def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        headers.update(self._api.default_headers)
        auth = await self._api.configuration.get_api_key_with_prefix("BearerToken")
        if auth:
            headers["Authorization"] = auth
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | float | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads (and releases) the answer, whatever its status."""
        if self._closed:
            raise KubeError(f"{method} {path}: the client is closed (the component is stopping)")
        url = self.server + path
        try:
            return await self._api.rest_client.request(
                method,
                url,
                query_params=query,  # type: ignore[arg-type]  # urlencode takes pairs
                headers=await self._headers(content_type),
                body=body,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(f"{method} {path}: {_describe_exc(exc)}") from exc

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        max_bytes: int = MAX_ANSWER,
        sizes: list[int] | None = None,
    ) -> dict[str, Any]:
        """One request whose answer is a JSON object; an error answer raises ApiStatusError.
        The answer's size in bytes is appended to `sizes` when given."""
        what = f"{method} {path}"
        resp = await self.request(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = await read_bounded(resp, max_bytes, what)
        finally:
            resp.release()
        if sizes is not None:
            sizes.append(len(data))
        return decode_answer(resp.status, data, what)

    async def close(self) -> None:
        """Shared by a component's parts: those still running get a KubeError, not the
        HTTP session's own error for a closed session."""
        self._closed = True
        await self._api.close()


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


async def read_bounded(resp: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The whole body of an answer, refused past `max_bytes` (a server cannot fill us)."""
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise KubeError(f"{what}: the answer is {length} bytes, more than {max_bytes}")
    data = bytearray()
    try:
        async for chunk in resp.content.iter_any():
            data += chunk
            if len(data) > max_bytes:
                raise KubeError(f"{what}: the answer is over {max_bytes} bytes")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise KubeError(f"{what}: {_describe_exc(exc)}") from exc
    return bytes(data)


def decode_answer(status: int, data: bytes, what: str) -> dict[str, Any]:
    """A JSON object for a 2xx answer; ApiStatusError (with the Status's reason) otherwise."""
    try:
        doc = json.loads(data) if data else None
    except ValueError:
        doc = None
    if 200 <= status < 300:
        if not isinstance(doc, dict):
            raise KubeError(f"{what}: the answer is not a JSON object ({_peek(data)})")
        return doc
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return _raise_status(what, status, doc)
    raise ApiStatusError(what, status, "", _peek(data))


def _raise_status(what: str, status: int, doc: dict[str, Any]) -> dict[str, Any]:
    code = doc.get("code")
    reason, message = doc.get("reason"), doc.get("message")
    raise ApiStatusError(
        what,
        code if isinstance(code, int) else status,
        reason if isinstance(reason, str) else "",
        message if isinstance(message, str) else "",
    )


def _peek(data: bytes) -> str:
    text = data[:120].decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > 120 else "") if data else "empty"


def resource_path(
    group: str, version: str, plural: str, namespace: str = "", name: str = ""
) -> str:
    """/api/v1/namespaces/ns/pods/name or /apis/group/version/plural..."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    return base


MAX_EVENT = 4 * 1024 * 1024
"""One watch event (one JSON line) we read at most: etcd refuses objects past 1.5 MiB,
so a longer line is a broken or hostile server, not a big object."""


async def read_lines(
    resp: aiohttp.ClientResponse, what: str, *, max_line: int = MAX_EVENT, idle: float
) -> Any:
    """The lines of a streamed answer (a watch), each bounded by `max_line`; KubeError when
    nothing arrives for `idle` seconds (a server that hangs), when a line is too long or when
    the connection breaks. The caller releases `resp`."""
    buf = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await resp.content.readany()
        except TimeoutError as exc:
            raise KubeError(f"{what}: nothing received for {idle:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(f"{what}: {_describe_exc(exc)}") from exc
        if not chunk:
            if buf.strip():
                raise KubeError(f"{what}: the stream ended inside an event ({_peek(bytes(buf))})")
            return
        buf += chunk
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if line.strip():
                yield line
        if len(buf) > max_line:
            raise KubeError(f"{what}: an event is over {max_line} bytes")
