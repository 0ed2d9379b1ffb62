"""Fuzz target: what an API server sends the kube source (agent/sources/kube.py), sans-IO.

The fuzzer builds a list answer and a stream of watch lines: raw bytes, or JSON
events of every type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR, unknown) whose
objects are Namespaces, Pods, Services, EndpointSlices and AuthorizationPolicies
with fields of the right and wrong types. It must hold that: a `Reflection` only
ever raises KubeError (Expired for a 410), and a refused line changes nothing (its
objects and version); it never holds more than its bound; `KubeSource.apply_pending`
never raises, whatever the objects (a bad one is refused, a bad policy fails
closed); and the store then holds exactly one object per reflected object that
parsed, or a policy's stand-in.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import atheris

from tests.fuzz import harness
from tests.fuzz.harness import interpreted

interpreted("agent")

with atheris.instrument_imports():
    from agent.sources.kube import KindSpec, KubeSource
    from agent.sources.kubeclient import KubeError
    from agent.state import StateStore, StateUpdater

logging.disable(logging.CRITICAL)  # refusals are logged; here they are the point

SPEC = KindSpec("Mixed", "", "v1", "mixed")
TYPES = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "SURPRISE"]
NAMES = ["a", "b", "c", "", "A_B", "x" * 300]
KINDS = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
]


KEYS = ["name", "port", "addresses", "ready", "conditions", "targetRef", "kind", "nodeName"]
KEYS += ["containers", "command", "podIP", "selector", "ports", "rules", "action", "from"]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    pick = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 4)
    if pick == 0:
        return fdp.ConsumeUnicodeNoSurrogates(12)
    if pick == 1:
        return fdp.ConsumeIntInRange(-2, 70000)
    if pick == 2:
        return fdp.ConsumeBool()
    if pick == 3:
        return None
    if pick == 4:
        return "10.0.0." + str(fdp.ConsumeIntInRange(0, 300))
    if pick == 5:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    keys = KEYS
    return {
        keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]: value(fdp, depth + 1)
        for _ in range(fdp.ConsumeIntInRange(0, 4))
    }


def obj(fdp: atheris.FuzzedDataProvider, rv: int) -> dict[str, Any]:
    api, kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
    meta: dict[str, Any] = {
        "name": NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)],
        "resourceVersion": str(rv),
    }
    if kind != "Namespace":
        meta["namespace"] = "shop"
    if fdp.ConsumeBool():
        meta["labels"] = value(fdp)
    body: dict[str, Any] = {"apiVersion": api, "kind": kind, "metadata": meta}
    for field in ("spec", "status", "endpoints", "ports", "addressType"):
        if fdp.ConsumeBool():
            body[field] = value(fdp)
    if kind == "Pod" and fdp.ConsumeBool():
        body["spec"] = {"containers": [{"name": "c", "command": ["x"]}], "nodeName": "n1"}
    return body


def line(fdp: atheris.FuzzedDataProvider, rv: int) -> bytes:
    if fdp.ConsumeIntInRange(0, 9) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    kind = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)]
    if kind == "ERROR":
        o: Any = {"kind": "Status", "code": value(fdp), "reason": value(fdp)}
    else:
        o = obj(fdp, rv)
        if fdp.ConsumeIntInRange(0, 7) == 0:
            o["metadata"] = value(fdp)
    return json.dumps({"type": kind, "object": o}).encode()


class NoClient:
    """apply_pending only names the server in a log line."""

    def describe(self) -> str:
        return "fuzz"


def fuzz_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    store = StateStore()
    source = KubeSource(NoClient(), StateUpdater(store), [SPEC])  # type: ignore[arg-type]
    state = source.reflectors[0].state
    state.max_objects = 4
    rv = 1
    try:
        items = [obj(fdp, rv := rv + 1) for _ in range(fdp.ConsumeIntInRange(0, 5))]
        source._deliver(state, state.listed(items, str(rv)))
    except KubeError:
        assert not state.synced and not state.objects
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        before = (dict(state.objects), state.resource_version)
        try:
            delta = state.event(line(fdp, rv := rv + 1))
        except KubeError:
            assert (dict(state.objects), state.resource_version) == before
            continue
        assert len(state.objects) <= state.max_objects
        source._deliver(state, delta)
    source.apply_pending()
    held = store.snapshot.objects
    assert len(held) <= len(state.objects), (held, state.objects)
    json.dumps(source.status(), default=str)


SEEDS = [b"", b"\x01" * 64, bytes(range(256)), b"\x02\x00\x01\x03" * 40]

if __name__ == "__main__":
    harness.main(fuzz_one, SEEDS)
    sys.exit(0)
