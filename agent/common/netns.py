"""Entering network namespaces from Python (3.11 has no `os.setns`).

`setns` moves only the calling thread. A socket keeps the namespace it was
created in, so code creates sockets in a short-lived thread that has entered
the target namespace and then uses them from anywhere; the main thread never
changes namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import NetnsError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def path_of(name_or_path: str) -> str:
    """`ip netns` names live under /run/netns; a path is used as given."""
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def enter(name_or_path: str) -> None:
    """Move the calling thread into a network namespace."""
    path = path_of(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def preexec(name_or_path: str) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen that starts the child in a namespace."""
    path = path_of(name_or_path)

    def _enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(126)
        os.close(fd)

    return _enter


def call_in(name_or_path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` in a fresh thread inside the namespace and return its result.

    The thread is thrown away afterwards, so no thread of this process is left
    in a foreign namespace by accident.
    """
    box: dict[str, Any] = {}

    def _run() -> None:
        try:
            enter(name_or_path)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=_run, name=f"netns:{os.path.basename(name_or_path)}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def inode(name_or_path: str) -> int:
    """The namespace's identity, for matching /proc/<pid>/ns/net."""
    return os.stat(path_of(name_or_path)).st_ino


def pids_in(name_or_path: str) -> list[int]:
    """Every process whose network namespace is this one (like `ip netns pids`)."""
    try:
        want = inode(name_or_path)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                found.append(int(entry))
        except OSError:
            continue
    return found


_home = threading.local()


def _home_fd() -> int:
    """The calling thread's own namespace, opened once per thread."""
    fd = getattr(_home, "fd", None)
    if fd is None:
        fd = os.open(
            f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC
        )
        _home.fd = fd
    return fd


class Netns:
    """An open handle on a network namespace: keeps it alive and makes sockets in it.

    `socket()` enters the namespace on the calling thread, creates the socket
    and returns at once (two setns calls, microseconds), so the event loop can
    open per-connection sockets in a pod without a thread hop. If returning
    fails the process aborts: a thread must never go on in the wrong namespace.
    """

    def __init__(self, name_or_path: str) -> None:
        self.path = path_of(name_or_path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(f"cannot open network namespace {self.path}: {exc.strerror}") from exc
        self.inode = os.fstat(self.fd).st_ino

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        home = _home_fd()
        if _libc.setns(self.fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({self.path}) failed: {os.strerror(err)}")
        try:
            return socket.socket(family, type)
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                os.write(
                    2, b"slipstream: cannot return to the agent's network namespace; aborting\n"
                )
                os.abort()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Netns({self.path!r})"


def own_inode() -> int:
    """Inode of the calling thread's namespace (to refuse capturing the agent's own)."""
    return os.fstat(_home_fd()).st_ino
