"""Finding the network namespace of a pod that started before slipstream-cni was installed.

Such a pod never went through our ADD and carries no `slipstream.dev/netns` annotation, but
the API knows its address. Its namespace is found as Istio's CNI finds pods on restart: by
walking the host's /proc for the distinct network namespaces of its processes and reading
each one's local addresses (`/proc/<pid>/net/fib_trie`, the kernel's own view of that
namespace, no setns needed). Exactly one namespace must hold the address: none is "not
found yet", more than one is refused as ambiguous (a process that made a namespace with a
pod's address must not get that pod's capture). The one found is named under the agent's
namespace directory with `ip netns attach`, so it is handled like any other pod's.

`local_addresses` and `pick` are pure; `scan` and `attach` do the I/O.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

from agent.common.errors import SlipstreamError

ATTACHED_PREFIX = "slipstream-found-"
"""Names the agent gives the namespaces it found (and removes when it lets the pod go)."""

_LEAF = re.compile(r"^\s*[|+]-- (\d+\.\d+\.\d+\.\d+)\s*$")


class ScanError(SlipstreamError):
    pass


def local_addresses(fib_trie: str) -> set[str]:
    """The IPv4 addresses a namespace holds: leaves of its fib_trie marked `/32 host LOCAL`."""
    out: set[str] = set()
    last = ""
    for line in fib_trie.splitlines():
        m = _LEAF.match(line)
        if m:
            last = m.group(1)
        elif "/32 host LOCAL" in line and last:
            out.add(last)
    return out


def pick(ip: str, namespaces: dict[int, tuple[int, set[str]]]) -> int | None:
    """The pid (of a process) in the one namespace holding `ip`; None if none does.
    `namespaces`: inode -> (a pid in it, its addresses)."""
    found = [pid for pid, addrs in namespaces.values() if ip in addrs]
    if len(found) > 1:
        raise ScanError(f"{len(found)} network namespaces on this node hold {ip}: ambiguous")
    return found[0] if found else None


def scan(own_inode: int, proc: str = "/proc") -> dict[int, tuple[int, set[str]]]:
    """Every network namespace a process of this host is in, but the agent's own."""
    out: dict[int, tuple[int, set[str]]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(f"{proc}/{entry}/ns/net").st_ino
            if inode == own_inode or inode in out:
                continue
            with open(f"{proc}/{entry}/net/fib_trie") as f:
                out[inode] = (int(entry), local_addresses(f.read()))
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return out


def attached_name(namespace: str, name: str) -> str:
    """The name a found pod's namespace gets (a file name: long pod names are hashed)."""
    full = f"{ATTACHED_PREFIX}{namespace}.{name}"
    if len(full) <= 200:
        return full
    return f"{ATTACHED_PREFIX}{hashlib.sha256(full.encode()).hexdigest()[:32]}"


def attach(netns_dir: str, name: str, pid: int) -> str:
    """Name the namespace of `pid` in `netns_dir` (ip netns attach); its path."""
    path = os.path.join(netns_dir, name)
    if os.path.exists(path):
        return path
    res = subprocess.run(
        ["ip", "netns", "attach", name, str(pid)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise ScanError(f"ip netns attach {name} {pid}: {res.stderr.strip()}")
    return path


def detach(netns_dir: str, name: str) -> None:
    if os.path.exists(os.path.join(netns_dir, name)):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
