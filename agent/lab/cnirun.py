"""The lab's container runtime side of CNI (what libcni does for containerd or CRI-O): a
node's CNI configuration directory and bin directory, and a pod's network made by running
the chain of plugins the directory configures.

With `spec.podNetwork: cni` every lab node gets the reference plugins from Debian's
containernetworking-plugins as its primary CNI (bridge `cni0` with host-local addresses
from the node's pod CIDR, plus loopback), written as a conflist the way a distribution
installs its CNI; the mesh's install step (`slipstream cni install`, as the DaemonSet runs
it) chains slipstream-cni into that file. A pod's ADD runs every plugin of the first
configuration file, in order, with the previous result as `prevResult`, inside the node's
network namespace (where a runtime runs them); DEL runs them in reverse with the cached
ADD result (`run` also does CHECK, in order with that result; the lab's kubelet has no use for
it yet). The ADD result is kept in the pod's directory, as libcni keeps its cache, for DEL.

Written here rather than taken from a library: libcni is Go, and the Python CNI packages
on PyPI are unmaintained wrappers around a single plugin; the runtime's side is the
few rules of the CNI spec's "Network configuration lists" section below.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.cni.conflist import ConflistError, as_list, is_chained, primary_file
from agent.common import netns

from .errors import LabError

REFERENCE_PLUGINS = "/usr/lib/cni"
"""Where Debian's containernetworking-plugins puts bridge, host-local and loopback."""
PRIMARY_FILE = "10-lab.conflist"
NETWORK_NAME = "lab"
BRIDGE = "cni0"
CNI_VERSION = "1.0.0"
PLUGIN_TIMEOUT = 60.0
"""Longer than slipstream-cni's own wait for the agent (30 s)."""


class CniError(LabError):
    """A plugin of the chain failed: the pod's sandbox could not be made (or removed).
    `reply` is the plugin's error result (CNI spec: code, msg, details), if it gave one."""

    def __init__(self, message: str, reply: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = dict(reply or {})


@dataclass(frozen=True)
class NodeCni:
    """A node's CNI directories, as a runtime on that node would be configured."""

    bin_dir: str
    conf_dir: str
    ipam_dir: str
    netns: str
    """The node's network namespace: plugins run there."""

    @classmethod
    def under(cls, directory: str, node_netns: str) -> NodeCni:
        return cls(
            os.path.join(directory, "bin"),
            os.path.join(directory, "net.d"),
            os.path.join(directory, "ipam"),
            node_netns,
        )


def primary_conflist(pod_cidr: str, gateway: str, ipam_dir: str) -> dict[str, Any]:
    """The primary CNI a lab node runs: a bridge with host-local addresses from its pod CIDR."""
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "loopback"},
        ],
    }


def install_primary(node: NodeCni, pod_cidr: str, gateway: str) -> None:
    """The node's bin directory (the reference plugins linked in) and its primary conflist."""
    for d in (node.bin_dir, node.conf_dir, node.ipam_dir):
        os.makedirs(d, exist_ok=True)
    for plugin in ("bridge", "host-local", "loopback"):
        source = os.path.join(REFERENCE_PLUGINS, plugin)
        if not os.path.exists(source):
            raise CniError(
                f"the reference CNI plugin {source} is missing: install Debian's "
                "containernetworking-plugins (`make setup` does)"
            )
        link = os.path.join(node.bin_dir, plugin)
        if not os.path.lexists(link):
            os.symlink(source, link)
    write_primary(node, pod_cidr, gateway)


def write_primary(node: NodeCni, pod_cidr: str, gateway: str) -> None:
    """(Re)write the primary's file as the primary CNI would: without anyone's chained entry."""
    doc = primary_conflist(pod_cidr, gateway, node.ipam_dir)
    tmp = os.path.join(node.conf_dir, f".{PRIMARY_FILE}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, os.path.join(node.conf_dir, PRIMARY_FILE))


def _primary(conf_dir: str) -> tuple[str, str]:
    """The file the runtime uses (conflist.primary_file): its name and text."""
    try:
        name = primary_file(os.listdir(conf_dir))
    except FileNotFoundError:
        name = None
    if name is None:
        raise CniError(f"no CNI configuration in {conf_dir}: the network is not ready")
    with open(os.path.join(conf_dir, name)) as f:
        return name, f.read()


def load_conflist(conf_dir: str) -> dict[str, Any]:
    """The configuration the runtime uses, as a list of plugins (conflist.as_list)."""
    name, text = _primary(conf_dir)
    try:
        return as_list(text, f"{conf_dir}/{name}")
    except ConflistError as exc:
        raise CniError(str(exc)) from exc


def chained(conf_dir: str) -> bool:
    """Whether slipstream-cni is in the runtime's configuration (conflist.is_chained)."""
    try:
        name, text = _primary(conf_dir)
        return is_chained(text, name)
    except (CniError, ConflistError, OSError):
        return False


def plugin_config(
    conflist: Mapping[str, Any], plugin: Mapping[str, Any], prev: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One plugin's stdin: its entry with the list's name and version, and the previous
    plugin's result (spec: "Network configuration lists")."""
    conf = {"cniVersion": conflist.get("cniVersion", CNI_VERSION), "name": conflist.get("name"),
            **plugin}  # fmt: skip
    if prev is not None:
        conf["prevResult"] = prev
    return conf


@dataclass(frozen=True)
class PodNetwork:
    """What the runtime passes every plugin about one pod sandbox."""

    container_id: str
    netns: str
    namespace: str
    name: str
    uid: str
    ifname: str = "eth0"

    def env(self, command: str, bin_dir: str) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_PATH": bin_dir,
            "CNI_ARGS": (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}"
            ),
        }


def _run_plugin(node: NodeCni, conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    ptype = str(conf.get("type", ""))
    path = os.path.join(node.bin_dir, ptype)
    if "/" in ptype or not os.path.exists(path):
        raise CniError(f"CNI plugin {ptype!r} not found in {node.bin_dir}")
    try:
        proc = subprocess.run(
            [path],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=env,
            timeout=PLUGIN_TIMEOUT,
            preexec_fn=netns.preexec(node.netns),
        )
    except subprocess.TimeoutExpired as exc:
        raise CniError(f"CNI plugin {ptype} ({env['CNI_COMMAND']}) did not answer") from exc
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {"msg": proc.stdout.strip()[:500]}
    if not isinstance(out, dict):
        out = {"msg": str(out)[:500]}
    if proc.returncode != 0:
        msg, detail = out.get("msg"), out.get("details") or proc.stderr.strip()
        raise CniError(
            f"CNI plugin {ptype} failed {env['CNI_COMMAND']} (code {out.get('code', '?')}):"
            f" {msg or detail}" + (f": {detail}" if msg and detail and detail != msg else ""),
            out,
        )
    return out


def run(
    node: NodeCni,
    conflist: Mapping[str, Any],
    command: str,
    pod: PodNetwork,
    cached: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One command through a configuration list, as the spec orders it: ADD in order, each
    plugin given the previous one's result; CHECK in order and DEL in reverse, each given
    the ADD's result (`cached`). A DEL goes on past a failing plugin (the others still
    release what they hold) and raises the first failure at the end."""
    plugins = list(conflist.get("plugins") or [])
    env = pod.env(command, node.bin_dir)
    if command == "ADD":
        prev: dict[str, Any] | None = None
        for plugin in plugins:
            prev = _run_plugin(node, plugin_config(conflist, plugin, prev), env)
        return prev or {}
    failed: list[CniError] = []
    for plugin in reversed(plugins) if command == "DEL" else plugins:
        try:
            _run_plugin(node, plugin_config(conflist, plugin, cached), env)
        except CniError as exc:
            if command != "DEL":
                raise
            failed.append(exc)
    if failed:
        raise failed[0]
    return dict(cached or {})


def add(node: NodeCni, pod: PodNetwork) -> dict[str, Any]:
    """ADD through the node's configuration; the result, with the configuration it ran (for
    DEL, as libcni caches both)."""
    conflist = load_conflist(node.conf_dir)
    return {**run(node, conflist, "ADD", pod), "_conflist": conflist}


def delete(node: NodeCni, pod: PodNetwork, cached: Mapping[str, Any] | None) -> None:
    """DEL through the configuration the ADD ran (the node's, if it never got that far)."""
    cached = dict(cached or {})
    conflist = cached.pop("_conflist", None)
    if conflist is None:
        try:
            conflist = load_conflist(node.conf_dir)
        except CniError:
            return  # nothing was added through a configuration we can name
    run(node, conflist, "DEL", pod, cached or None)


def pod_address(result: Mapping[str, Any]) -> str:
    """The pod's IPv4 address from an ADD result (CNI 1.0 `ips`)."""
    for entry in result.get("ips") or []:
        address = str(entry.get("address", ""))
        if ":" not in address and "/" in address:
            return address.split("/")[0]
    raise CniError(f"the CNI result names no IPv4 address: {json.dumps(result)[:300]}")


def host_interface(result: Mapping[str, Any]) -> str:
    """The node side of the pod's veth, as the bridge plugin reports it (no sandbox)."""
    for i in result.get("interfaces") or []:
        if not i.get("sandbox") and str(i.get("name", "")).startswith("veth"):
            return str(i["name"])
    return ""
