"""The one way Slipstream watches files: inotify on a directory, a slow poll behind it.

`DirectoryWatcher.wait()` returns when something in a directory may have
changed, or at the latest every `poll` seconds; the owner then rescans and
compares what it cares about (stamps of files), which also covers events lost
to a queue overflow and filesystems without inotify. The agent's and the CA's
file source watch their manifest directory with it, and the gateway's master
the directory of its configuration file (so a file replaced by a rename, as
editors and Kubernetes ConfigMaps do, is seen too). inotify comes through
ctypes: the standard library has none, and the one call we need does not
warrant a dependency.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from types import TracebackType

from .errors import SlipstreamError

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

DIR_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)

POLL = 2.0
"""Safety net in case an inotify event is lost; inotify itself reacts at once."""
SETTLE = 0.02
"""Let a burst of writes (an editor's save, a `lab apply`) land before the owner rescans."""

_libc = ctypes.CDLL(None, use_errno=True)


class DirectoryWatch:
    """Non-blocking inotify fd watching one directory; register `fd` with a loop."""

    def __init__(self, path: str) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise SlipstreamError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), DIR_EVENTS) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise SlipstreamError(f"inotify_add_watch({path}): {os.strerror(err)}")

    def drain(self) -> bool:
        """Consume pending events; True if there were any."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DirectoryWatcher:
    """Wakes its owner, on the event loop, when a directory may have changed.

    Use as `async with DirectoryWatcher(path) as w: while await w.wait(drain): rescan()`,
    or `open()` and `close()` it (on the loop that waits). `poke()` wakes it for a
    change that comes from elsewhere (the gateway's master also waits for its
    cluster source).
    """

    def __init__(self, directory: str, *, poll: float = POLL, settle: float = SETTLE) -> None:
        self.directory = directory
        self.poll = poll
        self.settle = settle
        self._watch: DirectoryWatch | None = None
        self._wake = asyncio.Event()

    def open(self) -> None:
        """Start watching; SlipstreamError (naming the directory) if inotify refuses."""
        self._watch = DirectoryWatch(self.directory)
        asyncio.get_running_loop().add_reader(self._watch.fd, self._wake.set)

    def close(self) -> None:
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()
            self._watch = None

    async def __aenter__(self) -> DirectoryWatcher:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def poke(self) -> None:
        self._wake.set()

    async def wait(self, drain: asyncio.Event) -> bool:
        """Until something may have changed, or `poll` seconds passed (True), or `drain`
        is set (False)."""
        if drain.is_set():
            return False
        waiter = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(drain.wait())
        try:
            await asyncio.wait(
                {waiter, stopper}, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            stopper.cancel()
        if drain.is_set():
            return False
        if self._wake.is_set():
            await asyncio.sleep(self.settle)
            self._wake.clear()
            if self._watch is not None:
                self._watch.drain()
        return True
