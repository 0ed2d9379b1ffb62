"""What the capture programs do with each kind of frame, run by the kernel (BPF_PROG_TEST_RUN)
on frames scapy builds: everything that could be TCP but cannot be read whole is dropped and
counted by reason, and nothing else is. The lab attacks are in test_capture_side_doors.py."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest
from scapy.all import (
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    ICMPv6ND_NS,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
    fragment,
    raw,
)

from agent.common import netns
from agent.lab import net
from agent.node.datapath.loader import Programs
from tests.lab.labkit import new_lab_name

SYS_BPF, BPF_PROG_TEST_RUN = 321, 10
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
_libc = ctypes.CDLL(None, use_errno=True)


class _TestRun(ctypes.Structure):
    """union bpf_attr as BPF_PROG_TEST_RUN reads it."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class Runner:
    def __init__(self, progs: Programs, netns_name: str) -> None:
        self.progs = progs
        self.netns = netns_name

    def run(self, program: str, frame: bytes) -> int:
        """The program's verdict on one frame, run in a namespace of the test's own."""
        data = ctypes.create_string_buffer(frame, len(frame))
        out = ctypes.create_string_buffer(len(frame) + 512)
        attr = _TestRun(
            prog_fd=self.progs.fd(program),
            data_size_in=len(frame),
            data_in=ctypes.addressof(data),
            data_out=ctypes.addressof(out),
            data_size_out=len(out),
            repeat=1,
        )

        def call() -> int:
            return int(
                _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
            )

        assert netns.call_in(self.netns, call) == 0, ctypes.get_errno()
        return int(attr.retval)


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    name = f"ss_{new_lab_name()}_parse"
    progs = Programs()
    net.add_netns(name)
    try:
        yield Runner(progs, name)
    finally:
        net.delete_netns(name)
        progs.close()


A, B = "10.244.1.2", "10.244.2.2"
SYN = TCP(sport=40000, dport=8080, flags="S", seq=1)
SYN40 = TCP(
    sport=40000, dport=8080, flags="S", seq=1, options=[("MSS", 1400), ("Timestamp", (1, 0))]
) / Raw(b"x" * 16)
"""A SYN with a 40-byte header and data, so it can be split with the flags on either side."""


def eth(*layers) -> bytes:
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for layer in layers:
        pkt = pkt / layer
    return raw(pkt)


def frag(pkt, size: int, index: int) -> bytes:
    return eth(fragment(pkt, fragsize=size)[index])


def truncated(frame: bytes, keep: int) -> bytes:
    return frame[:keep]


def ipv6_chain(n: int, upper) -> object:
    pkt = IPv6(src="fd00::1", dst="fd00::2")
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return pkt / upper


CASES = {
    # what is captured or left alone
    "ipv4 tcp syn": (eth(IP(src=A, dst=B) / SYN), "tcp"),
    "ipv4 tcp syn, 40 bytes of ip options": (
        eth(IP(src=A, dst=B, options=[IPOption_RR(routers=["0.0.0.0"] * 9)]) / SYN),
        "tcp",
    ),
    "ipv4 udp": (eth(IP(src=A, dst=B) / UDP(sport=5, dport=53)), "pass"),
    "ipv4 udp fragment": (frag(IP(src=A, dst=B, id=7) / UDP() / Raw(b"u" * 64), 16, 1), "pass"),
    "ipv4 icmp": (eth(IP(src=A, dst=B) / ICMP()), "pass"),
    "arp": (eth(ARP(psrc=A, pdst=B)), "pass"),
    "ipv6 udp": (eth(IPv6(src="fd00::1", dst="fd00::2") / UDP()), "pass"),
    "ipv6 neighbour solicitation": (
        eth(IPv6(src="fd00::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fd00::2")),
        "pass",
    ),
    "ipv6 hop-by-hop then icmpv6 (MLD)": (
        eth(IPv6(src="fd00::1", dst="ff02::16") / IPv6ExtHdrHopByHop() / ICMPv6ND_NS()),
        "pass",
    ),
    "ipv6 later fragment of udp": (
        eth(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=17, offset=8) / Raw(b"u")),
        "pass",
    ),
    "ipv6 no next header": (eth(IPv6(src="fd00::1", dst="fd00::2", nh=59)), "pass"),
    # IPv4 TCP that cannot be read whole
    "ipv4 tcp first fragment, flags in it": (
        frag(IP(src=A, dst=B, id=9) / SYN40, 32, 0),
        "fragment",
    ),
    "ipv4 tcp first fragment of 8 bytes": (frag(IP(src=A, dst=B, id=9) / SYN40, 8, 0), "fragment"),
    "ipv4 tcp later fragment": (frag(IP(src=A, dst=B, id=9) / SYN40, 8, 1), "fragment"),
    "ipv4 tcp last fragment": (frag(IP(src=A, dst=B, id=9) / SYN40, 32, -1), "fragment"),
    "ipv4 tcp, DF and MF": (eth(IP(src=A, dst=B, flags="DF+MF") / SYN), "fragment"),
    "ipv4 tcp, ihl 4": (eth(IP(src=A, dst=B, ihl=4) / SYN), "malformed"),
    "ipv4 tcp, total length short of the tcp header": (
        eth(IP(src=A, dst=B, len=30) / SYN),
        "malformed",
    ),
    "ipv4 tcp, header cut off": (truncated(eth(IP(src=A, dst=B) / SYN), 14 + 20 + 10), "malformed"),
    "ipv4 tcp, options past the end": (
        truncated(eth(IP(src=A, dst=B, ihl=15) / SYN), 14 + 40),
        "malformed",
    ),
    # tags and IPv6
    "802.1q tagged tcp": (eth(Dot1Q(vlan=0), IP(src=A, dst=B) / SYN), "vlan"),
    "802.1q tagged twice": (eth(Dot1Q(vlan=0), Dot1Q(vlan=0), IP(src=A, dst=B) / SYN), "vlan"),
    "802.1ad then 802.1q": (eth(Dot1AD(vlan=0), Dot1Q(vlan=0), IP(src=A, dst=B) / SYN), "vlan"),
    "802.1q tagged udp": (eth(Dot1Q(vlan=5), IP(src=A, dst=B) / UDP()), "vlan"),
    "ipv6 tcp": (eth(IPv6(src="fd00::1", dst="fd00::2") / SYN), "ipv6"),
    "ipv6 hop-by-hop, routing, destination options, tcp": (
        eth(
            IPv6(src="fd00::1", dst="fd00::2")
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting()
            / IPv6ExtHdrDestOpt()
            / SYN
        ),
        "ipv6",
    ),
    "ipv6 first fragment of tcp": (
        eth(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=6, m=1) / SYN),
        "ipv6",
    ),
    "ipv6 later fragment starting with an extension header": (
        eth(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=60, offset=8) / Raw(b"x")),
        "ipv6",
    ),
    "ipv6 tcp behind 7 extension headers": (eth(ipv6_chain(7, SYN)), "ipv6"),
    "ipv6 udp behind 9 extension headers (more than we follow)": (
        eth(ipv6_chain(9, UDP())),
        "ipv6",
    ),
    "ipv6 extension header past the end": (
        truncated(eth(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / SYN), 14 + 41),
        "ipv6",
    ),
}
COUNTER = {
    "fragment": "drop_fragment",
    "malformed": "drop_malformed",
    "vlan": "drop_vlan",
    "ipv6": "drop_ipv6",
}


@pytest.mark.parametrize("program", ["capture_egress", "capture_ingress"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_of_frame(runner, program, case):
    frame, kind = CASES[case]
    before = runner.progs.counters()
    verdict = runner.run(program, frame)
    after = runner.progs.counters()
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    if kind in COUNTER:
        assert verdict == TC_ACT_SHOT, f"{case}: must be dropped"
        assert changed == {COUNTER[kind]: 1}, changed
    elif kind == "pass":
        assert verdict == TC_ACT_OK and changed == {}, (verdict, changed)
    elif program == "capture_egress":  # an IPv4 SYN leaving the pod goes to the agent
        assert verdict == TC_ACT_REDIRECT and changed == {
            "outbound_new": 1,
            "outbound_packets": 1,
        }, (verdict, changed)
    else:  # arriving, with no agent listening in this namespace: fail closed
        assert verdict == TC_ACT_SHOT and changed == {"no_listener": 1}, (verdict, changed)
