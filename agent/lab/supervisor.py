"""Runs one lab pod's containers, inside a sandbox of the pod's own: a small container runtime.

Started by the lab already inside the pod's network namespace:
    python -m agent.lab.supervisor POD_DIR
It reads POD_DIR/spec.json, moves into a new PID namespace (it is the pod's pid 1:
it reaps orphans, and when it ends every process of the pod ends), builds the pod's
sandbox, starts each container (its own session, output to POD_DIR/<container>.log),
restarts per `restartPolicy` with a capped backoff, and keeps POD_DIR/status.json
current (written atomically) so `lab get` can show phase, restarts and exit codes. On
SIGTERM it stops the containers (TERM, then KILL after a grace period) and exits.
Standard library only: it starts fast.

What a pod's processes can reach (pods run as root, as containers often do, but with a
container's capabilities; README: "What the lab isolates"):
- their own PID namespace: no other pod's processes, no agent, no CA to signal, trace or
  read through /proc; their own IPC and UTS namespaces and network namespace;
- the machine's files read-only, except /tmp and /var/tmp (scratch the tests share with
  pods, mounted nodev), and within those the Slipstream code the lab runs stays read-only
  (a checkout under /tmp); a fresh /proc (with /proc/sys read-only but for the network
  namespace's own net/), a read-only /sys, a /dev of a few character devices (no disks)
  with a new devpts and a private shm; their /etc/hosts (read-only);
- the lab's directory (node credentials, the CA's keys, other pods' files) replaced by an
  empty read-only tmpfs, showing only the paths spec.json lists (a mesh-credential pod's
  own token and the objects a mesh client reads), read-only;
- per container, the bounding set of capabilities its securityContext asks for (the
  container default unless told otherwise) and no_new_privs.
The supervisor itself keeps every capability (a pod cannot trace it); it writes the pod's
files through a descriptor of POD_DIR opened before the lab's directory is hidden.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 2
ST_KEEP = MS_NOSUID | MS_NODEV | MS_NOEXEC
"""statvfs flags with the same values as the mount flags: kept when remounting."""
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READ_ONLY = ("sysrq-trigger", "irq", "bus", "fs")
GRACE = 3.0
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class ContainerState:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: str
    capabilities: frozenset[int]
    """The bounding set the container runs with (capability numbers)."""
    pid: int = 0
    """As the machine sees it (the lab's `lab get` and tests signal it from outside)."""
    state: str = "waiting"
    """waiting | running | terminated"""
    exit_code: int | None = None
    restarts: int = 0
    reason: str = ""
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


@dataclass
class Pod:
    """The supervisor's handles: POD_DIR as a descriptor (its path is hidden from the
    sandbox) and its own pid as the lab sees it (in the machine's PID namespace)."""

    dirfd: int
    host_pid: int
    containers: list[ContainerState]
    host_proc: int = -1
    """The machine's /proc, opened before the pod's own covers it (never inherited)."""

    def host_pid_of(self, pid: int) -> int:
        """A child's pid as the machine sees it, from the machine's /proc: the child whose
        last NSpid (its pid in the pod's namespace) is `pid`."""
        me = self.host_pid
        try:
            with open(f"{me}/task/{me}/children", opener=self._opener) as f:
                children = f.read().split()
            for child in children:
                with open(f"{child}/status", opener=self._opener) as f:
                    for line in f:
                        if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                            return int(child)
        except (OSError, ValueError):
            pass
        return 0

    def _opener(self, path: str, flags: int) -> int:
        return os.open(path, flags, dir_fd=self.host_proc)


def write_status(pod: Pod, *, error: str = "") -> None:
    doc: dict[str, Any] = {
        "supervisorPid": pod.host_pid,
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
            for c in pod.containers
        ],
    }
    fd = os.open(".status.json.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=pod.dirfd)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(".status.json.tmp", "status.json", src_dir_fd=pod.dirfd, dst_dir_fd=pod.dirfd)


# ------------------------------------------------------------------ the sandbox


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _bind(source: str, target: str, flags: int = 0) -> None:
    _mount(source, target, None, MS_BIND | flags)


def _read_only(target: str, extra: int = 0) -> None:
    """Remount a mount point read-only, keeping nosuid/nodev/noexec (only in this mount
    namespace: a bind remount changes this mount, not the filesystem)."""
    keep = os.statvfs(target).f_flag & ST_KEEP
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep | extra)


def host_pid() -> int:
    """This process's pid in the machine's PID namespace (the first NSpid), read while
    /proc is still the machine's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[1])
    return os.getpid()


def _mount_points() -> list[str]:
    """Every mount point of this mount namespace, as /proc/self/mountinfo lists them."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "nsfs":
                continue  # network namespaces under /run/netns: not files one can write
            # Octal escapes: a space is \040.
            out.append(fields[4].encode().decode("unicode_escape"))
    return out


def isolate(spec: dict[str, Any]) -> None:
    """Build the pod's sandbox in new mount, UTS and IPC namespaces (module docstring).
    Runs as pid 1 of the pod's new PID namespace, before any container starts."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing leaks to or from the machine
    name = spec["hostname"].encode()[:64]
    _check(_libc.sethostname(name, len(name)), "sethostname")
    sandbox = spec["sandbox"]
    # What stays visible must be opened before anything covers it.
    devices = {d: os.open(f"/dev/{d}", os.O_PATH | os.O_CLOEXEC) for d in DEVICES}
    shown = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in sandbox["show"]]

    _bind(spec["hosts"], "/etc/hosts")
    # /proc of the pod's own PID namespace; the kernel's knobs read-only, but for the
    # network namespace's own (writing those needs CAP_NET_ADMIN anyway).
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _bind("/proc/sys/net", "/proc/sys/net")
    _bind("/proc/sys", "/proc/sys", MS_REC)
    _read_only("/proc/sys")
    for p in PROC_READ_ONLY:
        if os.path.exists(f"/proc/{p}"):
            _bind(f"/proc/{p}", f"/proc/{p}")
            _read_only(f"/proc/{p}")
    # /sys must show this pod's interfaces, as under `ip netns exec`; nothing in it is
    # the pod's to change.
    if _libc.umount2(b"/sys", MNT_DETACH) == 0:
        _mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # /dev: a few character devices, no disks (root could read the node's disk, and the
    # lab's files with it, through a block device).
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for d, fd in devices.items():
        with open(f"/dev/{d}", "w"):
            pass
        _bind(f"/proc/self/fd/{fd}", f"/dev/{d}")
        os.close(fd)
    os.mkdir("/dev/pts")
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666")
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"/dev/{link}")
    _read_only("/dev")
    # The lab's directory: an empty tmpfs, and in it only what this pod is shown.
    hide = sandbox["hide"]
    _mount("tmpfs", hide, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k")
    for path, fd in shown:
        os.makedirs(path, exist_ok=True)
        _bind(f"/proc/self/fd/{fd}", path)
        _read_only(path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.close(fd)
    _read_only(hide)
    # Scratch space stays writable (no device files there: MKNOD must not reopen the disk).
    writable = [w for w in sandbox["writable"] if os.path.isdir(w)]
    for w in writable:
        _bind(w, w)
        _mount(None, w, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    # ...but never the code the lab runs, wherever it was cloned.
    protected = [
        p
        for p in sandbox.get("protect", [])
        if os.path.isdir(p) and any(p == w or p.startswith(w + "/") for w in writable)
    ]
    for p in protected:
        _bind(p, p, MS_REC)
        _read_only(p)
    # Everything else of the machine's read-only.
    # (Mounts below a writable directory are out of reach: its bind above carried none.)
    ours = ("/proc", "/sys", "/dev", hide, *writable)
    for point in _mount_points():
        if point in protected or any(point == o or point.startswith(o + "/") for o in ours):
            continue
        if not os.statvfs(point).f_flag & MS_RDONLY:
            _read_only(point)


def capability_dropper(keep: frozenset[int]) -> Callable[[], None]:
    """A preexec_fn: the container's bounding set becomes `keep` (root's permitted set
    after exec is the bounding set), nothing inheritable or ambient, and no_new_privs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    def drop() -> None:
        for cap in range(last + 1):
            if cap not in keep:
                _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
        header, data = Header(LINUX_CAPABILITY_VERSION_3, 0), (Data * 2)()
        _check(_libc.capget(ctypes.byref(header), data), "capget")
        data[0].inheritable = data[1].inheritable = 0
        _check(_libc.capset(ctypes.byref(header), data), "capset")
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    return drop


# ------------------------------------------------------------------ containers


def start(pod: Pod, c: ContainerState, drop: Callable[[], None]) -> None:
    fd = os.open(
        os.path.basename(c.log),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
        0o644,
        dir_fd=pod.dirfd,
    )
    with os.fdopen(fd, "ab", buffering=0) as log:
        log.write(
            f"--- {time.strftime('%H:%M:%S')} starting {c.name}: {' '.join(c.argv)}\n".encode()
        )
        try:
            c._proc = subprocess.Popen(
                c.argv,
                env=c.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=drop,
            )
        except subprocess.SubprocessError as exc:
            raise OSError(0, f"cannot drop its capabilities ({exc})") from exc
    c.pid, c.state, c.started_at, c.exit_code, c.reason = (
        pod.host_pid_of(c._proc.pid),
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
            _killpg(c._proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for c in containers:
        if c._proc is None:
            continue
        try:
            c._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(c._proc.pid, signal.SIGKILL)
            c._proc.wait()
        c.state, c.exit_code = "terminated", c._proc.returncode


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def reap_orphans(containers: list[ContainerState]) -> None:
    """As pid 1, collect exited processes the containers left behind (a container's own
    exit is collected by its Popen)."""
    ours = {c._proc.pid for c in containers if c._proc is not None and c._proc.returncode is None}
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in ours:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def run_pod(spec: dict[str, Any], pod: Pod) -> int:
    policy = spec["restartPolicy"]
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    containers = pod.containers
    try:
        try:
            pod.host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            isolate(spec)
            drops = {c.name: capability_dropper(c.capabilities) for c in containers}
        except OSError as exc:
            write_status(pod, error=f"cannot set up the pod sandbox: {exc.strerror}")
            return 1
        for c in containers:
            try:
                start(pod, c, drops[c.name])
            except OSError as exc:
                c.state, c.reason = "terminated", f"cannot start {c.argv[0]!r}: {exc.strerror}"
                stop_all(containers)
                write_status(pod, error=f"container {c.name}: {c.reason}")
                return 1
        write_status(pod)
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
                        start(pod, c, drops[c.name])
                        c.restarts += 1
                    except OSError as exc:
                        c.state, c.reason = "terminated", f"cannot start: {exc.strerror}"
                    changed = True
            reap_orphans(containers)
            if changed:
                write_status(pod)
            if all(c.state == "terminated" for c in containers):
                return 0
    except Stop:
        stop_all(containers)
        write_status(pod)
        return 0


def main(pod_dir: str) -> int:
    with open(os.path.join(pod_dir, "spec.json")) as f:
        spec = json.load(f)
    containers = [
        ContainerState(c["name"], c["argv"], c["env"], c["log"], frozenset(c["capabilities"]))
        for c in spec["containers"]
    ]
    dirfd = os.open(pod_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The child forked next is pid 1 of a new PID namespace: the pod's supervisor. This
    # process, the lab's child, has nothing more to do.
    if _libc.unshare(CLONE_NEWPID) != 0:
        err = os.strerror(ctypes.get_errno())
        write_status(Pod(dirfd, os.getpid(), containers), error=f"cannot set up the pod: {err}")
        return 1
    if os.fork() != 0:
        return 0
    return run_pod(spec, Pod(dirfd, host_pid(), containers))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
