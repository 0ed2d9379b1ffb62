"""A minimal inotify watch on one directory (ctypes; the stdlib has none).

Only "something changed here" is reported; the file source rescans and
compares stamps, which also covers events lost to a queue overflow.
"""

from __future__ import annotations

import ctypes
import os

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
