"""Storage: objects with resourceVersions, a bounded event history, and watch fan-out.

One counter orders every write of every resource, as etcd's revision does:
`metadata.resourceVersion` of an object is the counter at its last write, and
a list's is the counter when it was taken. The history keeps the last
`history_size` events with the object before each; it serves watches from an
old version (every later event exactly once, in order) and consistent pages
of a list (`continue` rolls the current objects back to the first page's
version). What has left the history is answered 410 Expired.

Objects handed to `commit` belong to the store from then on and are never
changed in place: readers may keep and serialize them without copying.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from . import errors as E

Key = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped objects."""


@dataclass(slots=True)
class Event:
    rv: int
    type: str
    """ADDED, MODIFIED or DELETED."""
    key: str
    """The store key of the resource (`pods`, `endpointslices.discovery.k8s.io`)."""
    obj: dict[str, Any]
    prev: dict[str, Any] | None


class Journal(Protocol):
    def record(self, ev: Event) -> None: ...


class Store:
    def __init__(self, history_size: int = 10000, journal: Journal | None = None) -> None:
        self.rv = 0
        self.data: dict[str, dict[Key, dict[str, Any]]] = {}
        self.history: deque[Event] = deque()
        self.history_size = history_size
        self.floor = 0
        """Watches and snapshots can start from any version >= floor."""
        self.journal = journal
        self.listeners: list[Callable[[Event], None]] = []
        self._sorted: dict[str, list[Key]] = {}

    # -------------------------------------------------------------- reads

    def get(self, key: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.data.get(key, {}).get((ns, name))

    def count(self, key: str) -> int:
        return len(self.data.get(key, {}))

    def keys(self, key: str) -> list[Key]:
        """Sorted as etcd keys sort: by namespace, then name."""
        cached = self._sorted.get(key)
        if cached is None:
            cached = sorted(self.data.get(key, {}))
            self._sorted[key] = cached
        return cached

    def items(self, key: str, ns: str | None = None) -> Iterator[dict[str, Any]]:
        objs = self.data.get(key, {})
        keys = self.keys(key)
        if ns is None:
            for k in keys:
                yield objs[k]
            return
        for i in range(bisect.bisect_left(keys, (ns, "")), len(keys)):
            if keys[i][0] != ns:
                break
            yield objs[keys[i]]

    def snapshot(self, key: str, rv: int) -> tuple[list[Key], dict[Key, dict[str, Any]]]:
        """The objects of `key` as they were at version `rv` (410 when the history is shorter)."""
        if rv >= self.rv:
            return self.keys(key), self.data.get(key, {})
        if rv < self.floor:
            raise E.expired(f"too old resource version: {rv} ({self.floor})")
        objs = dict(self.data.get(key, {}))
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.key != key:
                continue
            k = _key_of(ev.obj)
            if ev.prev is None:
                objs.pop(k, None)
            else:
                objs[k] = ev.prev
        return sorted(objs), objs

    def events_after(self, rv: int) -> Iterator[Event]:
        """Every event newer than `rv`, oldest first; 410 when some have left the history."""
        if rv < self.floor:
            raise E.expired(f"too old resource version: {rv} ({self.floor})")
        if rv >= self.rv:
            return iter(())
        # The history is ordered: skip from the left without copying it.
        start = max(0, len(self.history) - (self.rv - rv))
        for i in range(start, len(self.history)):
            if self.history[i].rv > rv:
                start = i
                break
        return (self.history[i] for i in range(start, len(self.history)))

    # -------------------------------------------------------------- writes

    def commit(self, type_: str, key: str, obj: dict[str, Any]) -> Event:
        """Store `obj` (ADDED or MODIFIED) or remove it (DELETED) at the next version."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        k = (meta.get("namespace") or "", meta.get("name") or "")
        objs = self.data.setdefault(key, {})
        prev = objs.get(k)
        if type_ == "DELETED":
            objs.pop(k, None)
            self._sorted.pop(key, None)
        else:
            if prev is None:
                self._sorted.pop(key, None)
            objs[k] = obj
        ev = Event(self.rv, type_, key, obj, prev)
        self.history.append(ev)
        while len(self.history) > self.history_size:
            self.floor = self.history.popleft().rv
        if self.journal is not None:
            self.journal.record(ev)
        for listener in list(self.listeners):
            listener(ev)
        return ev

    def load(self, key: str, obj: dict[str, Any]) -> None:
        """Put an object back as it was persisted (startup), without an event."""
        meta = obj["metadata"]
        self.data.setdefault(key, {})[(meta.get("namespace") or "", meta["name"])] = obj
        self._sorted.pop(key, None)

    def restart_at(self, rv: int) -> None:
        """After loading: versions continue from `rv`, and older watches get 410."""
        self.rv = rv
        self.floor = rv
        self.history.clear()


def _key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")
