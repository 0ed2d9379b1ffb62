"""The capture strategies the enroller can use: eBPF in the pod (default) or iptables (comparison).

Each pairs a way of steering a pod's packets to the agent with the matching
way of reading a connection's original destination.
"""

from __future__ import annotations

from collections.abc import Callable

from .datapath import iptables, pod
from .datapath.loader import Programs
from .netns import Netns
from .proxy.pod import PodProxy, PodRef, original_dst_from_conntrack, original_dst_from_sockname
from .state import Snapshot


class EbpfCapture:
    """tc programs inside the pod steer packets to the agent; no NAT, no conntrack."""

    def __init__(self, programs: Programs, node: str, snapshot: Callable[[], Snapshot]) -> None:
        self.programs = programs
        self.fds = {name: p.fd for name, p in programs.programs.items()}
        self.node = node
        self.snapshot = snapshot

    def attach(self, netns_path: str) -> str:
        return pod.attach(netns_path, self.fds)

    def detach(self, netns_path: str, accept_local: str) -> None:
        pod.detach(netns_path, accept_local)

    def installed(self, netns_path: str) -> bool:
        return not pod.inspect(netns_path).empty()

    def make_proxy(self, ref: PodRef, ns: Netns) -> PodProxy:
        return PodProxy(ref, ns, self.node, self.snapshot, original_dst=original_dst_from_sockname)


class IptablesCapture:
    """iptables REDIRECT (outbound only): the pre-eBPF baseline for `make bench`."""

    def __init__(self, node: str, snapshot: Callable[[], Snapshot]) -> None:
        self.node = node
        self.snapshot = snapshot

    def attach(self, netns_path: str) -> str:
        return iptables.attach(netns_path)

    def detach(self, netns_path: str, accept_local: str) -> None:
        iptables.detach(netns_path)

    def installed(self, netns_path: str) -> bool:
        return iptables.installed(netns_path)

    def make_proxy(self, ref: PodRef, ns: Netns) -> PodProxy:
        return PodProxy(
            ref,
            ns,
            self.node,
            self.snapshot,
            original_dst=original_dst_from_conntrack,
            transparent_outbound=False,
        )
