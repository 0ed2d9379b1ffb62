"""The pre-eBPF way, for comparison in benchmarks: iptables REDIRECT in the pod's namespace.

Outbound only: TCP leaving the pod (except the agent's own, marked packets
and loopback) is NATed to 15001, where SO_ORIGINAL_DST gives the original
destination. This is how sidecar meshes captured traffic; Slipstream keeps it
only to measure what eBPF capture saves. Inbound is not captured in this mode.
"""

from __future__ import annotations

import subprocess

from agent.common.constants import OUTBOUND_PORT
from agent.common.errors import SlipstreamError

from . import abi

CHAIN = "SLIPSTREAM_OUTPUT"


class IptablesError(SlipstreamError):
    pass


def _ipt(netns_path: str, *args: str, check: bool = True) -> bool:
    res = subprocess.run(
        ["nsenter", f"--net={netns_path}", "iptables", "-w", "-t", "nat", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and res.returncode != 0:
        raise IptablesError(f"iptables {' '.join(args)} in {netns_path}: {res.stderr.strip()}")
    return res.returncode == 0


def attach(netns_path: str) -> str:
    if not _ipt(netns_path, "-n", "-L", CHAIN, check=False):
        _ipt(netns_path, "-N", CHAIN)
    _ipt(netns_path, "-F", CHAIN)
    _ipt(netns_path, "-A", CHAIN, "-m", "mark", "--mark", hex(abi.AGENT_MARK), "-j", "RETURN")
    _ipt(netns_path, "-A", CHAIN, "-o", "lo", "-j", "RETURN")
    _ipt(netns_path, "-A", CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(OUTBOUND_PORT))
    if not _ipt(netns_path, "-C", "OUTPUT", "-p", "tcp", "-j", CHAIN, check=False):
        _ipt(netns_path, "-A", "OUTPUT", "-p", "tcp", "-j", CHAIN)
    return "0"


def detach(netns_path: str) -> None:
    while _ipt(netns_path, "-D", "OUTPUT", "-p", "tcp", "-j", CHAIN, check=False):
        pass
    if _ipt(netns_path, "-n", "-L", CHAIN, check=False):
        _ipt(netns_path, "-F", CHAIN)
        _ipt(netns_path, "-X", CHAIN)


def installed(netns_path: str) -> bool:
    return _ipt(netns_path, "-n", "-L", CHAIN, check=False)
