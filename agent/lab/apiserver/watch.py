"""One watch stream, sans-IO: events in, encoded frames out, bounded.

The store offers every committed event to every watcher synchronously, so a
watcher's queue always holds every matching event up to the store's current
version: a bookmark taken when the queue is empty may carry that version.
A watcher whose queue grows past `max_bytes` (a client that stopped reading)
is closed, as the real server closes slow watchers; its client re-watches
from the last version it saw.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .selectors import FieldRequirement, Requirement, fields_match, labels_match
from .store import Event

Encoder = Callable[[str, dict[str, Any]], bytes]
"""(event type, object) -> one JSON line."""


class Watcher:
    def __init__(
        self,
        store_key: str,
        namespace: str | None,
        labels: tuple[Requirement, ...],
        fields: tuple[FieldRequirement, ...],
        encode: Encoder,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.store_key = store_key
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.encode = encode
        self.max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self.size = 0
        self.closed = ""
        """Why the watch ended, once it has."""
        self.wake: Callable[[], None] | None = None
        self.sent_rv = 0
        """The version of the newest event queued (bookmarks never go below it)."""

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if (
            self.namespace is not None
            and (obj.get("metadata") or {}).get("namespace", "") != self.namespace
        ):
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def offer(self, ev: Event) -> None:
        if self.closed or ev.key != self.store_key:
            return
        now, before = self.matches(ev.obj), self.matches(ev.prev)
        if ev.type == "ADDED":
            kind = "ADDED" if now else ""
        elif ev.type == "DELETED":
            kind = "DELETED" if (now or before) else ""
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            # The object left the selection: a DELETED of its new state, as the watch cache sends.
            kind = "DELETED"
        else:
            kind = ""
        if kind:
            self.push(self.encode(kind, ev.obj))
            self.sent_rv = ev.rv

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        self.frames.append(frame)
        self.size += len(frame)
        if self.size > self.max_bytes:
            self.close("the client does not read fast enough")
        elif self.wake is not None:
            self.wake()

    def take(self) -> list[bytes]:
        out = list(self.frames)
        self.frames.clear()
        self.size = 0
        return out

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = reason
            self.frames.clear()
            self.size = 0
            if self.wake is not None:
                self.wake()
