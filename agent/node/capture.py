"""The capture strategies the enroller can use: eBPF in the pod (default) or iptables (comparison).

Each pairs a way of steering a pod's packets to the agent with the matching
way of reading a connection's original destination. Enrolling a pod is, in
order: open its listeners (PodProxy.start), `bind` them to the datapath, then
`attach` capture, so no captured packet ever finds the agent unprepared.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from agent.common.netns import Netns
from agent.state.objects import Pod

from .datapath import abi, iptables, pod
from .datapath.loader import DatapathError, Programs
from .proxy.context import MeshContext
from .proxy.pod import PodProxy, original_dst_from_conntrack, original_dst_from_sockname


@dataclass
class Binding:
    """What ties one pod's listeners to the datapath; undone by `unbind`."""

    ip: str
    slots: tuple[int, int] = (-1, -1)
    link_fd: int = -1


class SlotPool:
    """Indexes into mesh_listeners, two per enrolled pod."""

    def __init__(self, size: int) -> None:
        self._free = list(range(size - 1, -1, -1))

    def take(self) -> int:
        if not self._free:
            raise DatapathError(f"all {abi.LISTENER_SLOTS} listener slots are in use on this node")
        return self._free.pop()

    def give(self, slot: int) -> None:
        if slot >= 0:
            self._free.append(slot)


class EbpfCapture:
    """tc programs inside the pod steer packets to the agent; sk_lookup picks its listener.
    No NAT, no conntrack."""

    def __init__(self, programs: Programs, mesh: MeshContext) -> None:
        self.programs = programs
        self.fds = {name: programs.fd(name) for name in abi.TC_PROGRAMS}
        self.mesh = mesh
        self._slots = SlotPool(abi.LISTENER_SLOTS)

    def make_proxy(self, pod: Pod, ns: Netns) -> PodProxy:
        def outbound_socket() -> socket.socket:
            sock = ns.socket()
            try:
                return self.programs.own(sock)
            except OSError:
                sock.close()
                raise

        return PodProxy(
            pod,
            ns,
            self.mesh,
            original_dst=original_dst_from_sockname,
            outbound_socket=outbound_socket,
        )

    def bind(self, pod: Pod, ns: Netns, proxy: PodProxy) -> Binding:
        binding = Binding(pod.ip)
        try:
            out, inb = self._slots.take(), self._slots.take()
            binding.slots = (out, inb)
            self.programs.set_listener(out, proxy.listener_fd("outbound"))
            self.programs.set_listener(inb, proxy.listener_fd("inbound"))
            self.programs.set_pod(pod.ip, out, inb)
            binding.link_fd = self.programs.attach_lookup(ns.fd)
        except BaseException:
            self.unbind(binding)
            raise
        return binding

    def unbind(self, binding: Binding) -> None:
        self.programs.del_pod(binding.ip)
        for slot in binding.slots:
            if slot >= 0:
                self.programs.del_listener(slot)
                self._slots.give(slot)
        binding.slots = (-1, -1)
        if binding.link_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(binding.link_fd)
            binding.link_fd = -1

    def attach(self, netns_path: str) -> str:
        return pod.attach(netns_path, self.fds)

    def detach(self, netns_path: str, accept_local: str) -> None:
        pod.detach(netns_path, accept_local)

    def installed(self, netns_path: str) -> bool:
        return not pod.inspect(netns_path).empty()


class IptablesCapture:
    """iptables REDIRECT (outbound only): the pre-eBPF baseline for `make bench`."""

    def __init__(self, mesh: MeshContext) -> None:
        self.mesh = mesh

    def make_proxy(self, pod: Pod, ns: Netns) -> PodProxy:
        return PodProxy(
            pod, ns, self.mesh, original_dst=original_dst_from_conntrack, transparent_outbound=False
        )

    def bind(self, pod: Pod, ns: Netns, proxy: PodProxy) -> Binding:
        return Binding(pod.ip)  # NAT needs no listener registry

    def unbind(self, binding: Binding) -> None:
        pass

    def attach(self, netns_path: str) -> str:
        return iptables.attach(netns_path)

    def detach(self, netns_path: str, accept_local: str) -> None:
        iptables.detach(netns_path)

    def installed(self, netns_path: str) -> bool:
        return iptables.installed(netns_path)
