"""The file source: a directory of YAML/JSON manifests, watched for changes.

Used by the lab, the demo and small installs. Every `*.yaml`, `*.yml` and
`*.json` file directly in the directory is read (names starting with `.` are
skipped, so writers can rename temporary files into place). Changes reach the
store within a second: inotify wakes the loop, and a slow poll backs it up
(agent/common/watch.py).
Files are read and parsed in a worker thread, so a big file does not stall
the connections the agent carries; the store is updated on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from agent.common.errors import ManifestError, SlipstreamError
from agent.common.manifest import load_file
from agent.common.watch import DirectoryWatcher
from agent.state import StateUpdater

from .manifest_set import Change, ManifestSet

log = logging.getLogger("agent.source.file")

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class _Stamp:
    mtime_ns: int
    size: int
    ino: int


class FileSource:
    def __init__(self, directory: str, updater: StateUpdater) -> None:
        self.directory = directory
        self._updater = updater
        self._set = ManifestSet()
        self._stamps: dict[str, _Stamp] = {}
        self._status: dict[str, Any] = {"files": 0, "errors": []}
        """What the last scan found, for readers on the loop while the next one runs."""

    def status(self) -> dict[str, Any]:
        """For /config_dump: what is loaded and what was rejected."""
        return {"type": "file", "directory": self.directory, **self._status}

    def scan(self) -> Change:
        """Re-read every file whose stamp changed; forget files that are gone."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            raise SlipstreamError(
                f"cannot read manifest directory {self.directory}: {exc.strerror}"
            ) from exc
        change = Change()
        present = set()
        for name in names:
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = os.path.join(self.directory, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            present.add(path)
            stamp = _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)
            if self._stamps.get(path) == stamp:
                continue
            self._stamps[path] = stamp
            try:
                docs: Any = load_file(path)
            except ManifestError as exc:
                docs = exc
            part = self._set.update_file(path, docs)
            for err in self._set.files[path].errors:
                log.warning(
                    "manifest rejected: its objects keep their last good version"
                    " (a policy without one fails closed)",
                    extra={"file": err.source, "line": err.line, "error": str(err)},
                )
            change.upserts += part.upserts
            change.deletes += part.deletes
        for path in set(self._stamps) - present:
            del self._stamps[path]
            part = self._set.remove_file(path)
            change.upserts += part.upserts
            change.deletes += part.deletes
        self._status = {
            "files": len(self._set.files),
            "errors": [str(e) for e in self._set.errors()],
        }
        return change

    def _apply(self, change: Change) -> None:
        if change:
            snap = self._updater.apply(change.upserts, change.deletes)
            log.info(
                "store updated",
                extra={
                    "version": snap.version,
                    "upserts": len(change.upserts),
                    "deletes": len(change.deletes),
                },
            )

    async def run(self, drain: asyncio.Event) -> None:
        if not os.path.isdir(self.directory):
            raise SlipstreamError(f"manifest directory {self.directory} does not exist")
        async with DirectoryWatcher(self.directory) as watcher:
            self._apply(await asyncio.to_thread(self.scan))
            self._updater.mark_synced()
            log.info(
                "initial sync done", extra={"directory": self.directory, "files": len(self._stamps)}
            )
            while await watcher.wait(drain):
                try:
                    self._apply(await asyncio.to_thread(self.scan))
                except SlipstreamError as exc:
                    log.error(
                        "manifest directory unreadable, last state kept", extra={"error": str(exc)}
                    )
