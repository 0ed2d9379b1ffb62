"""The state file of one lab's API server: a snapshot plus a journal of later writes.

Every committed event is appended to `<state>.journal` (one JSON line,
flushed before the request is answered), so a killed server loses nothing it
acknowledged. At start, and whenever the journal grows past a bound, the
whole state is written to `<state>` through a temporary file and a rename
(atomic), then the journal is emptied. A journal line that is cut short (a
crash mid-write) is ignored; lines already in the snapshot (a crash between
the rename and the truncation) are skipped by version.

Only token digests are stored, never tokens.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import ApiServerError
from .store import Event

log = logging.getLogger("slipstream.apiserver")

FORMAT = 1


@dataclass
class Loaded:
    rv: int = 0
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    uid_seed: str = ""


class StateFile:
    def __init__(self, path: str, compact_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.journal_path = path + ".journal"
        self.compact_bytes = compact_bytes
        self._journal: IO[str] | None = None
        self.journal_size = 0

    def load(self) -> Loaded:
        out = Loaded()
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError) as exc:
            raise ApiServerError(f"{self.path}: cannot read the API server state: {exc}") from exc
        if doc is not None:
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ApiServerError(f"{self.path}: not an API server state file (format {FORMAT})")
            out.rv = int(doc.get("resourceVersion", 0))
            out.objects = {k: list(v) for k, v in (doc.get("objects") or {}).items()}
            out.tokens = list(doc.get("tokens") or [])
        objs = {k: {_key(o): o for o in v} for k, v in out.objects.items()}
        tokens = {t["digest"]: t for t in out.tokens}
        try:
            with open(self.journal_path) as f:
                for n, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        log.warning("%s:%d: ignoring a cut journal line", self.journal_path, n)
                        break
                    if "token" in rec:
                        tokens[rec["token"]["digest"]] = rec["token"]
                        continue
                    if "revoke" in rec:
                        tokens.pop(rec["revoke"], None)
                        continue
                    rv = int(rec["rv"])
                    if rv <= out.rv:
                        continue
                    bucket = objs.setdefault(rec["key"], {})
                    if rec["type"] == "DELETED":
                        bucket.pop((rec["ns"], rec["name"]), None)
                    else:
                        bucket[(rec["ns"], rec["name"])] = rec["obj"]
                    out.rv = rv
        except FileNotFoundError:
            pass
        out.objects = {k: list(v.values()) for k, v in objs.items()}
        out.tokens = list(tokens.values())
        return out

    def write_snapshot(
        self, rv: int, objects: dict[str, list[dict[str, Any]]], tokens: list[dict[str, Any]]
    ) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        # json.dumps, not json.dump: dump streams through the pure-Python encoder (50x slower).
        doc = {"format": FORMAT, "resourceVersion": rv, "objects": objects, "tokens": tokens}
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, separators=(",", ":")))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self.journal_path, "w")  # noqa: SIM115 - held open for appends
        os.chmod(self.journal_path, 0o600)
        self.journal_size = 0

    def _append(self, rec: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = open(self.journal_path, "a")  # noqa: SIM115
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        self._journal.write(line)
        self._journal.flush()
        self.journal_size += len(line)

    def record(self, ev: Event) -> None:
        meta = ev.obj.get("metadata") or {}
        rec: dict[str, Any] = {
            "rv": ev.rv,
            "type": ev.type,
            "key": ev.key,
            "ns": meta.get("namespace") or "",
            "name": meta.get("name") or "",
        }
        if ev.type != "DELETED":
            rec["obj"] = ev.obj
        self._append(rec)

    def record_token(self, token: dict[str, Any]) -> None:
        self._append({"token": token})

    def needs_compaction(self) -> bool:
        return self.journal_size > self.compact_bytes

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")
