"""Runs one lab pod's containers, inside the pod's network namespace.

Started by the lab already inside the pod namespace:
    python -m agent.lab.supervisor POD_DIR
It reads POD_DIR/spec.json, starts each container (its own session, output to
POD_DIR/<container>.log), restarts per `restartPolicy` with a capped backoff,
and keeps POD_DIR/status.json current (written atomically) so `lab get` can show
phase, restarts and exit codes. On SIGTERM it stops the containers (TERM, then
KILL after a grace period) and exits. Standard library only: it starts fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 2

GRACE = 3.0
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


@dataclass
class ContainerState:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: str
    pid: int = 0
    state: str = "waiting"
    """waiting | running | terminated"""
    exit_code: int | None = None
    restarts: int = 0
    reason: str = ""
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def write_status(pod_dir: str, containers: list[ContainerState], *, error: str = "") -> None:
    doc: dict[str, Any] = {
        "supervisorPid": os.getpid(),
        "updated": time.time(),
        "error": error,
        "containers": [
            {
                "name": c.name,
                "pid": c.pid,
                "state": c.state,
                "exit_code": c.exit_code,
                "restarts": c.restarts,
                "reason": c.reason,
                "started_at": c.started_at,
            }
            for c in containers
        ],
    }
    tmp = os.path.join(pod_dir, ".status.json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, os.path.join(pod_dir, "status.json"))


def isolate(hosts: str, hostname: str) -> None:
    """Give the pod its own /etc/hosts, /sys and hostname, as a container has.

    A private mount namespace keeps the bind mounts away from the machine; the
    lab rewrites `hosts` in place, so the bind mount sees every update.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    check(libc.mount(hosts.encode(), b"/etc/hosts", None, MS_BIND, None), "bind /etc/hosts")
    # /sys must show this pod's interfaces, as under `ip netns exec`.
    if libc.umount2(b"/sys", MNT_DETACH) == 0:
        libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)
    name = hostname.encode()[:64]
    check(libc.sethostname(name, len(name)), "sethostname")


def start(c: ContainerState) -> None:
    with open(c.log, "ab", buffering=0) as log:
        log.write(
            f"--- {time.strftime('%H:%M:%S')} starting {c.name}: {' '.join(c.argv)}\n".encode()
        )
        c._proc = subprocess.Popen(
            c.argv,
            env=c.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    c.pid, c.state, c.started_at, c.exit_code, c.reason = (
        c._proc.pid,
        "running",
        time.time(),
        None,
        "",
    )


class Stop(Exception):
    pass


def _on_term(signum: int, frame: Any) -> None:
    raise Stop


def stop_all(containers: list[ContainerState]) -> None:
    for c in containers:
        if c._proc and c._proc.poll() is None:
            _killpg(c.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for c in containers:
        if c._proc is None:
            continue
        try:
            c._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(c.pid, signal.SIGKILL)
            c._proc.wait()
        c.state, c.exit_code = "terminated", c._proc.returncode


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def main(pod_dir: str) -> int:
    with open(os.path.join(pod_dir, "spec.json")) as f:
        spec = json.load(f)
    containers = [
        ContainerState(c["name"], c["argv"], c["env"], c["log"]) for c in spec["containers"]
    ]
    policy = spec["restartPolicy"]
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        try:
            isolate(spec["hosts"], spec["hostname"])
        except OSError as exc:
            write_status(
                pod_dir, containers, error=f"cannot set up the pod sandbox: {exc.strerror}"
            )
            return 1
        for c in containers:
            try:
                start(c)
            except OSError as exc:
                c.state, c.reason = "terminated", f"cannot start {c.argv[0]!r}: {exc.strerror}"
                stop_all(containers)
                write_status(pod_dir, containers, error=f"container {c.name}: {c.reason}")
                return 1
        write_status(pod_dir, containers)
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            changed = False
            for c in containers:
                if c.state == "running" and c._proc and c._proc.poll() is not None:
                    c.state, c.exit_code, changed = "terminated", c._proc.returncode, True
                    if should_restart(policy, c._proc.returncode):
                        # Reset the backoff after a run long enough to count as healthy.
                        if time.time() - c.started_at > 10:
                            c.backoff = BACKOFF_START
                        c.next_start = now + c.backoff
                        c.backoff = min(c.backoff * 2, BACKOFF_MAX)
                        c.state = "waiting"
                        c.reason = "CrashLoopBackOff" if c.exit_code else "Completed"
                elif c.state == "waiting" and now >= c.next_start:
                    try:
                        start(c)
                        c.restarts += 1
                    except OSError as exc:
                        c.state, c.reason = "terminated", f"cannot start: {exc.strerror}"
                    changed = True
            if changed:
                write_status(pod_dir, containers)
            if all(c.state == "terminated" for c in containers):
                return 0
    except Stop:
        stop_all(containers)
        write_status(pod_dir, containers)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
