"""Building and tearing down the lab's network namespaces (I/O, via iproute2).

Everything is created inside namespaces the lab owns: the bridge lives in its
own namespace and every link is created from inside a lab namespace, so the
machine's root namespace gets nothing but the `/run/netns` entries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

from agent.common import netns
from agent.common.errors import NetnsError

from . import model
from .model import NodeRecord, PodRecord


def _ip(
    args: list[str], *, netns_name: str | None = None, batch: Iterable[str] | None = None
) -> None:
    argv = ["ip"]
    if netns_name:
        argv += ["-n", netns_name]
    stdin = None
    if batch is not None:
        argv += ["-batch", "-"]
        stdin = "\n".join(batch) + "\n"
    argv += args
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        where = f" in {netns_name}" if netns_name else ""
        detail = res.stderr.strip() or res.stdout.strip()
        raise NetnsError(
            f"`{' '.join(argv)}`{where} failed: {detail}" + (f"\n{stdin}" if stdin else "")
        )


def exists(name: str) -> bool:
    return os.path.exists(netns.path_of(name))


def add_netns(name: str) -> None:
    _ip(["netns", "add", name])
    _ip([], netns_name=name, batch=["link set lo up"])


def delete_netns(name: str) -> None:
    if exists(name):
        _ip(["netns", "delete", name])


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(netns.NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def sysctl(netns_name: str, key: str, value: str) -> None:
    """Write a per-namespace sysctl from a thread inside the namespace."""
    path = "/proc/sys/" + key.replace(".", "/")

    def _write() -> None:
        with open(path, "w") as f:
            f.write(value)

    try:
        netns.call_in(netns_name, _write)
    except OSError as exc:
        raise NetnsError(f"sysctl {key}={value} in {netns_name}: {exc.strerror}") from exc


def build_bridge(lab: str) -> str:
    name = model.bridge_netns(lab)
    add_netns(name)
    _ip([], netns_name=name, batch=["link add br0 type bridge", "link set br0 up"])
    return name


def _on_bridge(lab: str, netns_name: str, index: int) -> None:
    """A new namespace whose eth0 is port `n<index>` of the lab bridge, at 172.30.0.<index>."""
    bridge = model.bridge_netns(lab)
    add_netns(netns_name)
    port = f"n{index}"
    _ip(
        [],
        netns_name=bridge,
        batch=[
            f"link add {port} type veth peer name eth0 netns {netns_name}",
            f"link set {port} master br0",
            f"link set {port} up",
        ],
    )
    _ip(
        [],
        netns_name=netns_name,
        batch=[
            f"addr add {model.node_ip(index)}/{model.NODE_NET.prefixlen} dev eth0",
            "link set eth0 up",
        ],
    )


def build_control_plane(lab: str, nodes: Iterable[NodeRecord]) -> str:
    """The namespace the CA runs in, on the bridge. Agents reach it from their nodes, and pods
    through their node (as pods reach a cluster's control plane): it routes pod subnets back."""
    name = model.control_plane_netns(lab)
    _on_bridge(lab, name, model.CONTROL_PLANE_INDEX)
    routes = [f"route replace {n.pod_cidr} via {n.ip} dev eth0" for n in nodes]
    if routes:
        _ip([], netns_name=name, batch=routes)
    return name


def build_node(lab: str, node: NodeRecord, peers: Iterable[NodeRecord]) -> None:
    """A node namespace with eth0 on the lab bridge and routes to its peers' pod subnets."""
    _on_bridge(lab, node.netns, node.index)
    sysctl(node.netns, "net.ipv4.ip_forward", "1")
    for peer in peers:
        if peer.name != node.name:
            _ip(
                [],
                netns_name=node.netns,
                batch=[f"route replace {peer.pod_cidr} via {peer.ip} dev eth0"],
            )


def build_pod(node: NodeRecord, pod: PodRecord) -> None:
    """A pod namespace: eth0 with a /32 address, default route via its node.

    The node side of the veth carries the pod gateway address (10.244.<i>.1)
    and a host route to the pod, as a point-to-point CNI would set it up.
    """
    add_netns(pod.netns)
    gateway = model.pod_gateway(node.index)
    _ip(
        [],
        netns_name=node.netns,
        batch=[
            f"link add {pod.veth} type veth peer name eth0 netns {pod.netns}",
            f"addr add {gateway}/32 dev {pod.veth}",
            f"link set {pod.veth} up",
            f"route replace {pod.ip}/32 dev {pod.veth} scope link src {gateway}",
        ],
    )
    _ip(
        [],
        netns_name=pod.netns,
        batch=[
            f"addr add {pod.ip}/32 dev eth0",
            "link set eth0 up",
            f"route add {gateway} dev eth0 scope link",
            f"route add default via {gateway} dev eth0 src {pod.ip}",
        ],
    )


# ------------------------------------------------------------------ processes


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields follow the last ')'.
    return int(data.rsplit(")", 1)[1].split()[19])


def alive(pid: int, starttime: int | None = None) -> bool:
    st = proc_starttime(pid)
    if st is None:
        return False
    if starttime is not None and st != starttime:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_in(netns_names: Iterable[str], grace: float = 3.0) -> None:
    """Stop every process living in these namespaces: TERM, then KILL after `grace`."""
    names = list(netns_names)
    _stop(lambda: {pid for n in names for pid in netns.pids_in(n)}, grace)


def stop_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """Stop these processes: TERM, then KILL after `grace`."""
    wanted = set(pids)
    _stop(lambda: {p for p in wanted if alive(p)}, grace)


def _stop(living: Callable[[], set[int]], grace: float) -> None:
    pids = living()
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = living()
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while living() and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def delete_link(netns_name: str, link: str) -> None:
    """Delete a link if it exists (a veth takes its peer with it)."""
    if exists(netns_name):
        subprocess.run(
            ["ip", "-n", netns_name, "link", "del", link], capture_output=True, check=False
        )
