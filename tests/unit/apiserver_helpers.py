"""An in-process lab API server core and a small client for its sans-IO `handle`."""

from __future__ import annotations

import json
from typing import Any

from agent.lab.apiserver.core import ApiCore, Request, Response, WatchStream


class Api:
    def __init__(self, core: ApiCore | None = None, **kw: Any) -> None:
        self.core = core or ApiCore(**kw)
        self.token = self.core.mint_token("admin", ["system:masters"])

    def raw(
        self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
        accept: str = "", token: str | None = None, agent: str = "unit/1", **query: str,
    ) -> Response | WatchStream:  # fmt: skip
        data = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        headers = {"content-type": ctype, "user-agent": agent}
        if accept:
            headers["accept"] = accept
        q = {k.rstrip("_"): [v] for k, v in query.items()}
        return self.core.handle(
            Request(method, path, q, headers, data, self.token if token is None else token)
        )

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        resp = self.raw(method, path, body, **kw)
        assert isinstance(resp, Response), resp
        try:
            return resp.status, json.loads(resp.body)
        except ValueError:
            return resp.status, resp.body

    def watch(self, path: str, **query: str) -> WatchStream:
        resp = self.raw("GET", path, watch="1", **query)
        assert isinstance(resp, WatchStream), resp
        return resp


def events(frames: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for f in frames:
        ev = json.loads(f)
        obj = ev["object"]
        out.append(
            (
                ev["type"],
                obj.get("metadata", {}).get("name", "")
                if ev["type"] != "ERROR"
                else str(obj["code"]),
            )
        )
    return out


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "containers": [
                {"name": "app", "image": "img", "ports": [{"containerPort": 8080, "name": "http"}]}
            ],
            **spec,
        },
    }
