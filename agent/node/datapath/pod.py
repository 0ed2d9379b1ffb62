"""Installing, inspecting and removing capture inside one pod's network namespace (pyroute2).

What the agent installs in a pod, and nothing else:
  - a clsact qdisc on eth0 and lo (if the pod had none);
  - tc filters (prio 1, handle 1) running capture_egress (eth0 egress),
    capture_ingress (eth0 ingress) and capture_lo_ingress (lo ingress);
  - `ip rule fwmark <capture mark> lookup 100` and `local 0.0.0.0/0 dev lo table 100`,
    so captured packets for other hosts are delivered locally to the agent;
  - net.ipv4.conf.lo.accept_local=1 (a captured packet's source is the pod itself).

`attach` replaces what is there, so an agent that restarts re-adopts a pod
without duplicating anything; `detach` removes exactly this set. Every call
runs in a short-lived thread that has entered the pod's namespace.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.common import netns
from agent.common.errors import SlipstreamError

from . import abi

TC_INGRESS = 0xFFFFFFF2
TC_EGRESS = 0xFFFFFFF3
FILTER_PRIO = 1
FILTER_HANDLE = 1
SCOPE_HOST = 254
ACCEPT_LOCAL = "/proc/sys/net/ipv4/conf/lo/accept_local"

# (device, hook, program)
ATTACHMENTS = (
    ("eth0", TC_EGRESS, "capture_egress"),
    ("eth0", TC_INGRESS, "capture_ingress"),
    ("lo", TC_INGRESS, "capture_lo_ingress"),
)


class AttachError(SlipstreamError):
    """Capture could not be installed in (or removed from) a pod's namespace."""


@dataclass
class Installed:
    """What of ours a pod's namespace holds (for tests, /config_dump and cleanup)."""

    filters: list[str] = field(default_factory=list)
    """`dev/hook/program` for each of our tc filters."""
    rules: int = 0
    local_routes: int = 0
    clsact: list[str] = field(default_factory=list)
    accept_local: str = ""

    def empty(self) -> bool:
        return not (self.filters or self.rules or self.local_routes)


def _hook_name(hook: int) -> str:
    return "egress" if hook == TC_EGRESS else "ingress"


def _our_filters(ipr: IPRoute, index: int, hook: int) -> list[str]:
    names = []
    for f in ipr.get_filters(index=index, parent=hook):
        name = f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME")
        if name in abi.TC_PROGRAMS:
            names.append(name)
    return names


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def _our_rules(ipr: IPRoute) -> list[Any]:
    return [
        r
        for r in ipr.get_rules(family=socket.AF_INET)
        if r.get_attr("FRA_PRIORITY") == abi.RULE_PRIORITY
        and r.get_attr("FRA_FWMARK") == abi.CAPTURE_MARK
        and r.get_attr("FRA_TABLE") == abi.ROUTE_TABLE
    ]


def _local_routes(ipr: IPRoute) -> list[Any]:
    return list(ipr.get_routes(family=socket.AF_INET, table=abi.ROUTE_TABLE))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _link(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise AttachError(f"the pod has no {name} interface")
    return int(found[0])


def attach(netns_path: str, fds: Mapping[str, int]) -> str:
    """Install capture in a pod (replacing ours if present). Returns lo's accept_local before."""

    def _attach() -> str:
        before = _read(ACCEPT_LOCAL)
        with IPRoute() as ipr:
            lo = _link(ipr, "lo")
            devices = {"eth0": _link(ipr, "eth0"), "lo": lo}
            for index in set(devices.values()):
                if not _has_clsact(ipr, index):
                    ipr.tc("add", "clsact", index)
            for dev, hook, prog in ATTACHMENTS:
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    devices[dev],
                    FILTER_HANDLE,
                    fd=fds[prog],
                    name=prog,
                    parent=hook,
                    prio=FILTER_PRIO,
                    classid=1,
                    direct_action=True,
                )
            rules = _our_rules(ipr)
            for _ in rules[1:]:  # an older agent's duplicates: keep exactly one
                ipr.rule("del", **_rule_args())
            if not rules:
                ipr.rule("add", **_rule_args())
            ipr.route(
                "replace",
                dst="0.0.0.0/0",
                type="local",
                table=abi.ROUTE_TABLE,
                oif=lo,
                scope=SCOPE_HOST,
            )
        _write(ACCEPT_LOCAL, "1")
        return before

    try:
        return netns.call_in(netns_path, _attach)
    except (NetlinkError, OSError) as exc:
        raise AttachError(f"installing capture in {netns_path}: {exc}") from exc


def _rule_args() -> dict[str, Any]:
    return {"table": abi.ROUTE_TABLE, "fwmark": abi.CAPTURE_MARK, "priority": abi.RULE_PRIORITY}


def detach(netns_path: str, accept_local: str = "0") -> None:
    """Remove everything `attach` installs; restore lo's accept_local."""

    def _detach() -> None:
        with IPRoute() as ipr:
            for dev, hook, prog in ATTACHMENTS:
                found = ipr.link_lookup(ifname=dev)
                if not found:
                    continue
                if prog in _our_filters(ipr, found[0], hook):
                    ipr.tc(
                        "del-filter", "bpf", found[0], FILTER_HANDLE, parent=hook, prio=FILTER_PRIO
                    )
            for dev in ("eth0", "lo"):
                found = ipr.link_lookup(ifname=dev)
                if found and _has_clsact(ipr, found[0]) and not _any_filters(ipr, found[0]):
                    ipr.tc("del", "clsact", found[0])
            for _ in _our_rules(ipr):
                ipr.rule("del", **_rule_args())
            for _ in _local_routes(ipr):
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.route(
                    "del",
                    dst="0.0.0.0/0",
                    type="local",
                    table=abi.ROUTE_TABLE,
                    oif=lo,
                    scope=SCOPE_HOST,
                )
        _write(ACCEPT_LOCAL, accept_local)

    try:
        netns.call_in(netns_path, _detach)
    except (NetlinkError, OSError) as exc:
        raise AttachError(f"removing capture from {netns_path}: {exc}") from exc


def _any_filters(ipr: IPRoute, index: int) -> bool:
    return any(
        f.get("handle")
        for hook in (TC_INGRESS, TC_EGRESS)
        for f in ipr.get_filters(index=index, parent=hook)
    )


def inspect(netns_path: str) -> Installed:
    def _inspect() -> Installed:
        out = Installed(accept_local=_read(ACCEPT_LOCAL))
        with IPRoute() as ipr:
            for dev in ("eth0", "lo"):
                found = ipr.link_lookup(ifname=dev)
                if not found:
                    continue
                if _has_clsact(ipr, found[0]):
                    out.clsact.append(dev)
                for hook in (TC_EGRESS, TC_INGRESS):
                    out.filters += [
                        f"{dev}/{_hook_name(hook)}/{n}" for n in _our_filters(ipr, found[0], hook)
                    ]
            out.rules = len(_our_rules(ipr))
            out.local_routes = len(_local_routes(ipr))
        return out

    return netns.call_in(netns_path, _inspect)
