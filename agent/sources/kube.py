"""The Kubernetes source: a reflector of our own per kind, filling the store as files do.

Each kind is listed, then watched from the list's resourceVersion (with
`allowWatchBookmarks`, so a quiet kind's version stays fresh), as client-go's
reflector does; a watch that ends is resumed from the last version seen, so no
event is missed or seen twice. A version the server no longer has (an HTTP 410,
or an `ERROR` event holding a 410 `Status`) is answered by a relist, whose
difference from what we hold becomes the upserts and deletions. Other errors
(the server down, refusing, answering garbage, huge bodies or nothing at all)
keep the last state, mark the kind stale with the error and since when, and
retry after a backoff with jitter (so a fleet of agents does not relist in step).

Split as the rest of the code is: `Reflection` is one kind's state machine,
sans-IO (lines and lists in, `Delta`s out, versions and relist decisions);
`Reflector` does the HTTP for one kind through `kubeclient.KubeClient` (every
read bounded: `MAX_ANSWER` per list page, `MAX_EVENT` per watch line, an idle
limit on a watch); `KubeSource` parses objects as the file source does (a
refused version keeps the last good one, a refused policy fails closed) and
hands batches to the `StateUpdater`.

Readiness: not synced until every kind's first list is in the store; then
stale, per kind, while its watch is down (`status()`, `readiness()`).

A kind whose resource the server does not serve (404: its CRD is not
installed) counts as synced and empty, as Istio's delayed informers do: nobody
can create such objects, so empty is the truth; it is re-checked after a
backoff and reflected once served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.common.errors import FieldError
from agent.state import StateUpdater
from agent.state.objects import ObjectKey, Resource, parse_object, refused_version

from .kubeclient import (
    ApiStatusError,
    KubeClient,
    KubeError,
    decode_answer,
    read_bounded,
    read_lines,
)

log = logging.getLogger("agent.source.kube")

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
PAGE = 500
"""Objects per list page (client-go's default): a page is a bounded answer."""
MAX_OBJECTS = 200_000
"""Objects of one kind we hold at most: past it a server is broken or hostile."""
MAX_BYTES = 512 * 1024 * 1024
"""What the objects of one kind may weigh, as the server sent them (a list page's bytes
shared among its items, an event's line): 10,000 pods weigh about 40 MiB; without a bound a
server could send 200,000 objects of 4 MiB each."""


@dataclass(frozen=True)
class KindSpec:
    """One resource to reflect."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True
    field_selector: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """`pods`, `endpointslices.discovery.k8s.io`: how status and readiness name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/{self.plural}"


NAMESPACES = KindSpec("Namespace", "", "v1", "namespaces", namespaced=False)
SERVICES = KindSpec("Service", "", "v1", "services")
ENDPOINT_SLICES = KindSpec("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices")
POLICIES = tuple(
    KindSpec(kind, group, version, plural)
    for group, version in (("security.istio.io", "v1"), ("slipstream.dev", "v1alpha1"))
    for kind, plural in (
        ("AuthorizationPolicy", "authorizationpolicies"),
        ("PeerAuthentication", "peerauthentications"),
    )
)


def pods(node: str = "") -> KindSpec:
    """Pods, only those of `node` when given (the agent's: fieldSelector spec.nodeName)."""
    return KindSpec("Pod", "", "v1", "pods", field_selector=f"spec.nodeName={node}" if node else "")


def agent_kinds(node: str, *, all_pods: bool = False) -> list[KindSpec]:
    """What the node agent reads: its node's pods, Namespaces, Services, EndpointSlices
    and the policy kinds (Istio's and ours)."""
    return [NAMESPACES, pods("" if all_pods else node), SERVICES, ENDPOINT_SLICES, *POLICIES]


# ---------------------------------------------------------------- sans-IO


class Expired(KubeError):
    """The version we asked for is gone (410): relist."""


Key = tuple[str, str]
"""(namespace, name) within one kind."""


@dataclass
class Delta:
    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[Key] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def _key(obj: Any, what: str) -> Key:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise KubeError(f"{what}: an object without metadata.name")
    ns = meta.get("namespace", "")  # type: ignore[union-attr]
    return (ns if isinstance(ns, str) else "", name)


def _rv(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What we keep of an object: all of it but managedFields and kubectl's copy of the last
    applied manifest (server-side bookkeeping, often larger than the object itself)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    meta = {k: v for k, v in meta.items() if k != "managedFields"}
    notes = meta.get("annotations")
    if isinstance(notes, dict) and LAST_APPLIED in notes:
        meta["annotations"] = {k: v for k, v in notes.items() if k != LAST_APPLIED} or None
        if meta["annotations"] is None:
            del meta["annotations"]
    return {**obj, "metadata": meta}


class Reflection:
    """One kind as the API server last told it, and where to resume (sans-IO)."""

    def __init__(
        self, spec: KindSpec, max_objects: int = MAX_OBJECTS, max_bytes: int = MAX_BYTES
    ) -> None:
        self.spec = spec
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.objects: dict[Key, dict[str, Any]] = {}
        self.sizes: dict[Key, int] = {}
        """What each object weighed as sent; `weight` is their sum."""
        self.weight = 0
        self.resource_version = ""
        """Where the next watch starts; empty: list first."""
        self.synced = False
        """The first list is in."""
        self.served = True
        """False while the server does not serve the resource (404)."""
        self.down_since: float | None = None
        """Wall-clock time the watch went down; None while it is up."""
        self.error = ""
        self.lists = 0
        self.events = 0
        self.relists = 0
        """Lists forced by a 410."""

    # -- inputs -----------------------------------------------------------
    def listed(self, items: Iterable[Any], resource_version: str, size: int = 0) -> Delta:
        """A complete list (every page, `size` bytes in all) at `resource_version`: the
        difference to hold."""
        what = f"list {self.spec.name}"
        if not resource_version:
            raise KubeError(f"{what}: the list has no metadata.resourceVersion")
        if size > self.max_bytes:
            raise KubeError(f"{what}: more than {self.max_bytes} bytes of objects")
        fresh: dict[Key, dict[str, Any]] = {}
        for item in items:
            key = _key(item, what)
            fresh[key] = slim(item)
            if len(fresh) > self.max_objects:
                raise KubeError(f"{what}: more than {self.max_objects} objects")
        each = size // max(1, len(fresh))
        self.sizes = dict.fromkeys(fresh, each)
        self.weight = each * len(fresh)
        delta = Delta(deletes=[k for k in self.objects if k not in fresh])
        for key, obj in fresh.items():
            old = self.objects.get(key)
            if old is None or _rv(old) != _rv(obj) or not _rv(obj):
                delta.upserts.append(obj)
        self.objects = fresh
        self.resource_version = resource_version
        self.synced = self.served = True
        self.lists += 1
        return delta

    def not_served(self) -> Delta:
        """The server answered 404 for the resource: synced and empty (see module doc)."""
        delta = Delta(deletes=list(self.objects))
        self.objects, self.sizes, self.weight = {}, {}, 0
        self.resource_version = ""
        self.synced, self.served = True, False
        return delta

    def event(self, line: bytes) -> Delta:
        """One line of a watch. Raises Expired on a 410, KubeError on anything else wrong
        (the state is then unchanged, and the watch resumes from the same version)."""
        what = f"watch {self.spec.name}"
        try:
            ev = json.loads(line)
        except ValueError as exc:
            raise KubeError(f"{what}: an event is not JSON ({line[:80]!r})") from exc
        if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
            raise KubeError(f"{what}: an event is not {{type, object}} ({line[:80]!r})")
        kind, obj = ev.get("type"), ev["object"]
        if kind == "ERROR":
            code, reason, message = obj.get("code"), obj.get("reason", ""), obj.get("message", "")
            text = f"{what}: the server ended the watch: {code} {reason}: {message}"
            if code == 410:
                raise Expired(text)
            raise KubeError(text)
        rv = _rv(obj)
        if not rv:
            raise KubeError(f"{what}: a {kind} event without metadata.resourceVersion")
        delta = Delta()
        if kind == "BOOKMARK":
            self.resource_version = rv
            return delta
        key = _key(obj, what)
        if kind in ("ADDED", "MODIFIED"):
            old = self.objects.get(key)
            if old is not None and _rv(old) == rv:
                self.resource_version = rv
                return delta  # seen already: a repeat changes nothing
            if old is None and len(self.objects) >= self.max_objects:
                raise KubeError(f"{what}: more than {self.max_objects} objects")
            weight = self.weight - self.sizes.get(key, 0) + len(line)
            if weight > self.max_bytes:
                raise KubeError(f"{what}: more than {self.max_bytes} bytes of objects")
            obj = slim(obj)
            self.objects[key] = obj
            self.sizes[key], self.weight = len(line), weight
            delta.upserts.append(obj)
        elif kind == "DELETED":
            if self.objects.pop(key, None) is not None:
                self.weight -= self.sizes.pop(key, 0)
                delta.deletes.append(key)
        else:
            raise KubeError(f"{what}: unknown event type {kind!r}")
        self.resource_version = rv
        self.events += 1
        return delta

    def expired(self) -> None:
        """A 410: the next step is a relist (what we hold stays until it answers)."""
        self.resource_version = ""
        self.relists += 1

    def up(self) -> None:
        if self.down_since is not None:
            log.info("watch resumed", extra={"kind": self.spec.name})
        self.down_since, self.error = None, ""

    def down(self, error: str, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
        self.error = error

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.spec.name,
            "synced": self.synced,
            "objects": len(self.objects),
            "bytes": self.weight,
            "resourceVersion": self.resource_version,
            "lists": self.lists,
            "relists": self.relists,
            "events": self.events,
        }
        if self.spec.field_selector:
            out["fieldSelector"] = self.spec.field_selector
        if not self.served:
            out["served"] = False
        if self.down_since is not None:
            out["stale"] = True
            out["staleSince"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.down_since))
            out["error"] = self.error
        return out


class Backoff:
    """Exponential backoff with equal jitter (half fixed, half random), sans-IO."""

    def __init__(
        self, base: float = 0.2, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay / 2 + self.rng() * delay / 2

    def reset(self) -> None:
        self.failures = 0


# ---------------------------------------------------------------- I/O


@dataclass(frozen=True)
class Timing:
    request: float = 30.0
    """A list page (or any single request) must be answered in this time."""
    watch: float = 300.0
    """The watch's timeoutSeconds (the server ends it; we re-watch): jittered up to twice."""
    idle_slack: float = 30.0
    """A watch silent for its timeout plus this is a server that hangs."""
    backoff_base: float = 0.2
    backoff_cap: float = 30.0


class Reflector:
    """The HTTP side of one kind's `Reflection`."""

    def __init__(
        self,
        client: KubeClient,
        spec: KindSpec,
        deliver: Callable[[Reflection, Delta], None],
        timing: Timing = Timing(),
    ) -> None:
        self.client = client
        self.state = Reflection(spec)
        self.deliver = deliver
        self.timing = timing
        self.backoff = Backoff(timing.backoff_base, timing.backoff_cap)

    def _query(self, **extra: str) -> list[tuple[str, str]]:
        q = [(k, v) for k, v in extra.items() if v]
        if self.state.spec.field_selector:
            q.append(("fieldSelector", self.state.spec.field_selector))
        return q

    async def list(self) -> None:
        spec = self.state.spec
        items: list[Any] = []
        sizes: list[int] = []
        rv, cont = "", ""
        while True:
            page = await self.client.call(
                "GET",
                spec.path,
                query=self._query(limit=str(PAGE), **{"continue": cont}),
                timeout=self.timing.request,
                sizes=sizes,
            )
            got, meta = page.get("items"), page.get("metadata")
            if not isinstance(got, list) or not isinstance(meta, dict):
                raise KubeError(f"list {spec.name}: the answer is not a list ({page.get('kind')})")
            items += got
            if len(items) > self.state.max_objects:
                raise KubeError(f"list {spec.name}: more than {self.state.max_objects} objects")
            if sum(sizes) > self.state.max_bytes:
                raise KubeError(f"list {spec.name}: more than {self.state.max_bytes} bytes")
            rv = rv or str(meta.get("resourceVersion") or "")
            cont = meta.get("continue") or ""
            if not isinstance(cont, str) or not cont:
                break
        self.deliver(self.state, self.state.listed(items, rv, sum(sizes)))
        self.state.up()

    async def watch(self) -> None:
        """One watch, from the state's version until the server ends it."""
        spec, st = self.state.spec, self.state
        timeout = int(self.timing.watch * (1 + random.random()))
        what = f"watch {spec.name}"
        try:
            async with asyncio.timeout(self.timing.request):
                resp = await self.client.request(
                    "GET",
                    spec.path,
                    query=self._query(
                        watch="1",
                        resourceVersion=st.resource_version,
                        allowWatchBookmarks="true",
                        timeoutSeconds=str(timeout),
                    ),
                    timeout=None,
                )
        except TimeoutError as exc:
            raise KubeError(f"{what}: no answer in {self.timing.request:g}s") from exc
        try:
            if resp.status != 200:
                data = await read_bounded(resp, 64 * 1024, what)
                try:
                    decode_answer(resp.status, data, what)
                except ApiStatusError as exc:
                    if exc.code == 410:
                        raise Expired(str(exc)) from exc
                    raise
                raise KubeError(f"{what}: answered {resp.status}")
            async for line in read_lines(resp, what, idle=timeout + self.timing.idle_slack):
                delta = st.event(line)
                # Up again once the watch proves itself (a garbage answer after a 200 must
                # not clear staleness): a valid event or bookmark, or a clean end.
                st.up()
                self.backoff.reset()
                if delta:
                    self.deliver(st, delta)
            st.up()
        finally:
            resp.release()

    async def run(self, drain: asyncio.Event) -> None:
        st = self.state
        while not drain.is_set():
            try:
                if not st.resource_version:
                    try:
                        await self.list()
                    except ApiStatusError as exc:
                        if exc.code != 404:
                            raise
                        if st.served:
                            log.warning(
                                "the API server does not serve this kind: empty until it does",
                                extra={"kind": st.spec.name},
                            )
                        self.deliver(st, st.not_served())
                        await self._pause(drain, self.backoff.next())
                        continue
                await self.watch()
            except Expired as exc:
                log.info("watch version expired: relisting", extra={"kind": st.spec.name})
                st.expired()
                st.down(str(exc), time.time())
                if st.relists > 1:
                    await self._pause(drain, self.backoff.next())
            except KubeError as exc:
                st.down(str(exc), time.time())
                delay = self.backoff.next()
                log.warning(
                    "cannot read the API server; the last state stays",
                    extra={"kind": st.spec.name, "error": str(exc), "retry_in": round(delay, 2)},
                )
                await self._pause(drain, delay)
            except Exception as exc:  # a bug here must not let a server stop the source
                log.exception("reflector failed unexpectedly", extra={"kind": st.spec.name})
                st.down(f"unexpected {type(exc).__name__}: {exc}", time.time())
                await self._pause(drain, self.backoff.next())

    @staticmethod
    async def _pause(drain: asyncio.Event, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain.wait(), delay)


class KubeSource:
    """Reflectors for `kinds`, their objects parsed and applied to the store in batches."""

    def __init__(
        self,
        client: KubeClient,
        updater: StateUpdater,
        kinds: Iterable[KindSpec],
        timing: Timing = Timing(),
    ) -> None:
        self.client = client
        self._updater = updater
        self.reflectors = [Reflector(client, spec, self._deliver, timing) for spec in kinds]
        self._pending: list[tuple[Reflection, Delta]] = []
        self._wake = asyncio.Event()
        self._parsed: dict[tuple[str, Key], Resource] = {}
        """What each (kind, key) is in the store as (its ObjectKey may differ: policies
        refused without a readable name)."""
        self._owners: dict[ObjectKey, list[tuple[str, Key]]] = {}
        """Which (kind, key)s define an ObjectKey, oldest first: the newest is in force."""
        self._errors: dict[tuple[str, Key], str] = {}
        self.synced = False

    # -- readers ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "type": "kube",
            "server": self.client.describe(),
            "synced": self.synced,
            "kinds": [r.state.status() for r in self.reflectors],
            "errors": sorted(self._errors.values()),
        }

    def readiness(self) -> str:
        """One line per kind that is not synced or is stale; empty when all is well."""
        out = []
        for r in self.reflectors:
            st = r.state
            if not st.synced:
                out.append(f"{st.spec.name}: not synced" + (f" ({st.error})" if st.error else ""))
            elif st.down_since is not None:
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.down_since))
                out.append(f"{st.spec.name}: stale since {since} ({st.error})")
        return "\n".join(out)

    # -- applying -------------------------------------------------------------
    def _deliver(self, state: Reflection, delta: Delta) -> None:
        self._pending.append((state, delta))
        self._wake.set()

    def _parse(self, spec: KindSpec, key: Key, body: dict[str, Any]) -> Resource | None:
        where = f"{spec.kind} {key[0]}/{key[1]}" if key[0] else f"{spec.kind} {key[1]}"
        slot = (spec.name, key)
        try:
            obj = parse_object(body)
        except FieldError as exc:
            self._errors[slot] = f"{where}: {exc}"
            log.warning(
                "object refused: it keeps its last good version (a policy without one fails"
                " closed)",
                extra={"object": where, "error": str(exc)},
            )
            return refused_version(body, exc, self._parsed.get(slot), where, where)
        except Exception as exc:  # a bug in a parser must not stop the source
            log.exception("validating an object failed unexpectedly", extra={"object": where})
            err = FieldError("", f"could not be validated ({type(exc).__name__}: {exc})")
            self._errors[slot] = f"{where}: {err}"
            return refused_version(body, err, self._parsed.get(slot), where, where)
        self._errors.pop(slot, None)
        return obj

    def _disown(
        self,
        key: ObjectKey,
        slot: tuple[str, Key],
        upserts: dict[ObjectKey, Resource],
        deletes: set[ObjectKey],
    ) -> None:
        """`slot` no longer defines `key`: another slot's object with the same key takes its
        place, or the key goes. (Istio's and our policy kinds key apart, see
        `resource.key_group`; this guards any two resources that would not.)"""
        owners = self._owners.get(key, [])
        if slot in owners:
            owners.remove(slot)
        if owners:
            upserts[key] = self._parsed[owners[-1]]
            deletes.discard(key)
        else:
            self._owners.pop(key, None)
            upserts.pop(key, None)
            deletes.add(key)

    def apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        upserts: dict[ObjectKey, Resource] = {}
        deletes: set[ObjectKey] = set()
        for state, delta in pending:
            spec = state.spec
            for key in delta.deletes:
                slot = (spec.name, key)
                self._errors.pop(slot, None)
                gone = self._parsed.pop(slot, None)
                if gone is not None:
                    self._disown(gone.key, slot, upserts, deletes)
            for body in delta.upserts:
                key = _key(body, spec.name)
                slot = (spec.name, key)
                obj = self._parse(spec, key, body)
                if obj is None:
                    continue  # refused, with no good version to keep: absent, as before
                old = self._parsed.get(slot)
                if old is not None and old.key != obj.key:
                    self._disown(old.key, slot, upserts, deletes)
                self._parsed[slot] = obj
                owners = self._owners.setdefault(obj.key, [])
                if slot in owners:
                    owners.remove(slot)
                owners.append(slot)
                deletes.discard(obj.key)
                upserts[obj.key] = obj
        if upserts or deletes:
            snap = self._updater.apply(upserts.values(), deletes - upserts.keys())
            log.debug(
                "store updated",
                extra={"version": snap.version, "upserts": len(upserts), "deletes": len(deletes)},
            )
        if not self.synced and all(r.state.synced for r in self.reflectors):
            self.synced = True
            self._updater.mark_synced()
            log.info(
                "initial sync done",
                extra={"server": self.client.describe(), "objects": len(self._parsed)},
            )

    async def run(self, drain: asyncio.Event) -> None:
        tasks = [asyncio.create_task(r.run(drain)) for r in self.reflectors]
        try:
            while not drain.is_set():
                stop = asyncio.ensure_future(drain.wait())
                woke = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stop, woke, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                woke.cancel()
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                self._wake.clear()
                self.apply_pending()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()
