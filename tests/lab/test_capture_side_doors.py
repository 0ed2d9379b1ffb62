"""Capture has no side doors a normal container can open, checked by doing it.

Attackers run in lab pods as root and with Docker's default capabilities (CAP_NET_RAW, not
CAP_NET_ADMIN), sending TCP by hand (tests/lab/rawtcp.py, scapy): IP fragments, a socket
carrying the agent's mark, VLAN-tagged frames, IPv6. Checked from outside: what the STRICT
pod's app saw, the bytes on the lab's bridge, the agents' access logs and drop counters. Each
attack has a positive control: the same tool against a pod outside the mesh works, and the
same connection without the trick goes through the mesh.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.common.manifest import load_text
from agent.lab.lab import Lab
from tests.lab.labkit import (
    access_log,
    bridge_capture,
    config_dump,
    new_lab_name,
    pod_manifest,
    seen,
    wait_until,
    workload,
)

RAWTCP = str(Path(__file__).parent / "rawtcp.py")
DEFAULT_CAPS = (
    "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,+setpcap,"
    "+net_bind_service,+net_raw,+sys_chroot,+mknod,+audit_write,+setfcap"
)
"""Docker's default capability set: CAP_NET_RAW is in it, CAP_NET_ADMIN is not."""
ECHO = '[slipstream, app, http-echo, --port, "8080"]'
SLEEP = "[sleep, infinity]"


def pod(name: str, ns: str, node: str, command: str, security: str = "") -> str:
    return pod_manifest(name, ns, node, command, sa=name, container_extra=security)


CLUSTER = (
    "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\nmetadata: {name: doors}\n"
    "spec: {nodes: [n1, n2]}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n"
    "  labels: {slipstream.dev/dataplane-mode: ambient}\n"
    "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n"
    "---\napiVersion: slipstream.dev/v1alpha1\nkind: PeerAuthentication\n"
    "metadata: {name: default, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n"
    + pod("attacker", "mesh", "n1", SLEEP)
    + pod("tools", "mesh", "n1", SLEEP, "securityContext: {capabilities: {add: [NET_ADMIN]}}")
    + pod("server", "mesh", "n2", ECHO)
    + pod("outsider", "plain", "n1", SLEEP)
    + pod("visitor", "plain", "n1", SLEEP)
    + pod("web", "plain", "n2", ECHO)
)


def served(lab: Lab, client: str, ns: str, target: str) -> bool:
    url = f"http://{lab.pod(target, 'plain' if target == 'web' else 'mesh').ip}:8080/"
    return lab.exec(client, ["curl", "-sS", "-m", "3", url], namespace=ns).returncode == 0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(new_lab_name())
    try:
        lab.up(load_text(CLUSTER, "<test manifest>"))
        wait_until(lambda: served(lab, "attacker", "mesh", "server"), 15, "the mesh to serve")
        wait_until(lambda: served(lab, "visitor", "plain", "web"), 15, "web to serve")
        # The root attacker outside the mesh keeps its own stack from resetting the
        # connections it makes by hand (it may: its namespace is its own).
        rst = ["iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"]
        assert lab.exec("outsider", rst, namespace="plain").returncode == 0
        yield lab
    finally:
        lab.down()


def ip(lab: Lab, name: str) -> str:
    return lab.pod(name, "plain" if name in ("outsider", "visitor", "web") else "mesh").ip


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


def sport() -> int:
    return 20000 + uuid.uuid4().int % 40000


def attack(lab: Lab, who: str, *args: object, caps: str = "root") -> dict:
    """Run rawtcp.py in a pod, as root or with the default capabilities; its JSON answer."""
    argv = [sys.executable, RAWTCP, *map(str, args)]
    if caps == "default":
        argv = ["setpriv", "--bounding-set", DEFAULT_CAPS, "--inh-caps", "-all", *argv]
    ns = "plain" if who in ("outsider", "visitor") else "mesh"
    res = lab.exec(who, argv, namespace=ns)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["caps"] == {"net_admin": caps == "root", "net_raw": True}, out["caps"]
    return out


def from_node(lab: Lab, node: str, *args: object) -> dict:
    """rawtcp.py in a node's namespace: an L2 neighbour of its pods, as on a bridged CNI."""
    argv = lab.exec_argv([sys.executable, RAWTCP, *map(str, args)], node=node)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def counter(lab: Lab, node: str, name: str) -> int:
    return int(config_dump(lab, node)["datapath"]["counters"][name])


def app_saw(lab: Lab, name: str, text: str) -> bool:
    ns = "plain" if name == "web" else "mesh"
    return any(text in Path(p).read_text() for p in lab.log_paths(name, ns))


# ---------------------------------------------------------------------------------- fragments


@pytest.mark.parametrize("split", [8, 32], ids=["flags-in-second-fragment", "flags-in-first"])
def test_fragmented_tcp_from_outside_the_mesh_never_reaches_a_strict_app(lab, split):
    """A root attacker outside the mesh opens a connection whose every packet is split into
    IP fragments (in order, then last fragment first): a pod outside the mesh serves it, the
    STRICT pod's app never sees it, and without fragments the same tool meets the mesh."""
    before = counter(lab, "n2", "drop_fragment")
    for order in ([], ["--reverse"]):
        control = marker()
        got = attack(lab, "outsider", "handshake", ip(lab, "web"), 8080, sport(), control,
                     "--fragment", split, *order)  # fmt: skip
        assert got["synack"] and got["reply"].startswith("HTTP/1.1 200"), got
        assert app_saw(lab, "web", f"GET /{control} "), "positive control: the attack works"
        secret = marker()
        got = attack(lab, "outsider", "handshake", ip(lab, "server"), 8080, sport(), secret,
                     "--fragment", split, *order)  # fmt: skip
        assert not got["synack"], got
        dropped = before + len(order)
        wait_until(
            lambda n=dropped: counter(lab, "n2", "drop_fragment") > n,
            15,
            "the STRICT pod's capture to drop the fragments",
        )
        assert not app_saw(lab, "server", secret), "the STRICT pod's app saw a fragmented SYN"
    # The same connection unfragmented is captured: the agent answers, and refuses plaintext.
    port, since = sport(), time.time()
    got = attack(lab, "outsider", "handshake", ip(lab, "server"), 8080, port, marker())
    assert got["synack"], got
    src = f"{ip(lab, 'outsider')}:{port}"
    (rec,) = wait_until(
        lambda: [r for r in access_log(lab, "n2", since) if r["src"] == src],
        15,
        "the agent's record of the unfragmented attempt",
    )
    assert rec["direction"] == "inbound" and rec["outcome"] == "refused_plaintext", rec


def test_ip_options_do_not_hide_a_syn_from_capture(lab):
    """40 bytes of IP options (IHL 15) move the TCP header: the pod outside the mesh serves
    such a connection, and at the STRICT pod capture still finds the SYN and hands it to
    the agent, which refuses plaintext."""
    control = marker()
    got = attack(lab, "outsider", "handshake", ip(lab, "web"), 8080, sport(), control,
                 "--ip-options")  # fmt: skip
    assert got["reply"].startswith("HTTP/1.1 200") and app_saw(lab, "web", f"GET /{control} ")
    port, since, secret = sport(), time.time(), marker()
    got = attack(lab, "outsider", "handshake", ip(lab, "server"), 8080, port, secret,
                 "--ip-options")  # fmt: skip
    assert got["synack"], got
    src = f"{ip(lab, 'outsider')}:{port}"
    (rec,) = wait_until(
        lambda: [r for r in access_log(lab, "n2", since) if r["src"] == src],
        15,
        "the agent's record of the connection with IP options",
    )
    assert rec["outcome"] == "refused_plaintext", rec
    assert not app_saw(lab, "server", secret)


def test_a_fragmented_syn_sent_with_default_capabilities_gets_no_answer_from_a_strict_pod(lab):
    """The SYN alone, from a container with the default capabilities: the app outside the
    mesh answers it; the STRICT pod's app (the only one that could, the agent answers no
    untagged SYN) does not."""
    before = counter(lab, "n2", "drop_fragment")
    for split, order in ((8, []), (32, ["--reverse"])):
        got = attack(lab, "visitor", "handshake", ip(lab, "web"), 8080, sport(), marker(),
                     "--fragment", split, *order, caps="default")  # fmt: skip
        assert got["synack"], f"positive control: the app outside the mesh answered {got}"
        got = attack(lab, "visitor", "handshake", ip(lab, "server"), 8080, sport(), marker(),
                     "--fragment", split, *order, caps="default")  # fmt: skip
        assert not got["synack"], got
    assert counter(lab, "n2", "drop_fragment") >= before + 2


@pytest.mark.parametrize("caps", ["root", "default"])
def test_fragmented_tcp_never_leaves_an_enrolled_pod(lab, tmp_path, caps):
    """From inside the mesh, with an ordinary connection on the same ports open through it
    (its own stack then answers the real server's packets with ACKs that capture takes back
    to the agent): nothing of the fragmented connection crosses the bridge."""
    before = counter(lab, "n1", "drop_fragment")
    secret, after, control = marker(), marker(), marker()
    with bridge_capture(lab, tmp_path / "bridge.pcap") as pcap:
        got = attack(lab, "attacker", "handshake", ip(lab, "server"), 8080, sport(), secret,
                     "--fragment", 8, "--shadow", caps=caps)  # fmt: skip
        assert got["mesh_reply"] == "HTTP/1.1 200 OK", "positive control: the mesh path works"
        assert not got["synack"], got
        # Positive control for the capture: fragments from outside the mesh do show.
        assert attack(lab, "outsider", "handshake", ip(lab, "web"), 8080, sport(), control,
                      "--fragment", 8)["reply"]  # fmt: skip
        # A datagram after the attack (UDP is not captured): once it shows, so would have
        # anything the pod sent before it.
        attack(lab, "attacker", "udp", ip(lab, "web"), 9, after, caps=caps)
        wait_until(lambda: after.encode() in pcap.read_bytes(), 15, "the marker on the bridge")
    me = ip(lab, "attacker")
    assert seen(pcap, f"src host {me} and ip[6:2] & 0x3fff != 0") == []
    assert seen(pcap, f"src host {me} and tcp dst port 8080") == [], "no plaintext left the pod"
    assert secret.encode() not in pcap.read_bytes()
    assert seen(pcap, f"src host {ip(lab, 'outsider')} and ip[6:2] & 0x3fff != 0"), "control"
    assert not app_saw(lab, "server", f"GET /{secret} ")
    assert app_saw(lab, "server", f"GET /{secret}-mesh "), "the mesh delivered the ordinary one"
    assert counter(lab, "n1", "drop_fragment") > before


def syncookies(lab: Lab, name: str, counter: str) -> int:
    """TcpExtSyncookiesSent or TcpExtSyncookiesRecv (cookies validated) of a pod's stack."""
    res = lab.exec(name, ["nstat", "-az", f"TcpExtSyncookies{counter}"], namespace="mesh")
    return int(res.stdout.split()[-2]) if f"TcpExtSyncookies{counter}" in res.stdout else 0


def test_a_syn_cookie_minted_by_the_agent_does_not_open_the_app(lab):
    """A SYN cookie is valid for any listener of its tuple. An attacker outside the mesh
    fills the agent's inbound queue until it answers with cookies, then sends the ACK: no
    SYN tags it, so without more the kernel asks the pod's own listener, which accepts a
    cookie whenever its own queue overflowed in the last two minutes (an app under load;
    here, half-open SYNs sent to it from inside its pod). It must reach the agent instead."""
    server = ip(lab, "server")
    sent = syncookies(lab, "server", "Sent")
    attack(lab, "server", "flood", server, 8080, 40, "--src", "10.99.0.1")  # the app overflows
    wait_until(lambda: syncookies(lab, "server", "Sent") > sent, 15, "the app to send cookies")
    sent = syncookies(lab, "server", "Sent")
    attack(lab, "outsider", "flood", server, 8080, 1100)  # so does the agent's listener
    wait_until(lambda: syncookies(lab, "server", "Sent") > sent, 15, "the agent to send cookies")
    cookies = syncookies(lab, "server", "Recv")
    port, since, secret = sport(), time.time(), marker()
    got = attack(lab, "outsider", "handshake", server, 8080, port, secret)
    assert got["synack"], got
    src = f"{ip(lab, 'outsider')}:{port}"
    recs = wait_until(
        lambda: [r for r in access_log(lab, "n2", since) if r["src"] == src],
        15,
        "the agent to accept the cookie",
    )
    assert {r["outcome"] for r in recs} == {"refused_plaintext"}, recs
    assert syncookies(lab, "server", "Recv") > cookies, "the handshake went through a cookie"
    assert not app_saw(lab, "server", secret), "the app accepted the agent's cookie"


# ---------------------------------------------------------------------------- the agent's mark


def test_a_socket_carrying_the_agents_mark_is_captured_like_any_other(lab):
    """CAP_NET_RAW may set any SO_MARK (Linux 5.17+); the mark alone does not make a socket
    the agent's. The STRICT pod's plaintext call is refused, and the agent's own sockets
    (the mesh) still pass."""
    before, since, secret = counter(lab, "n1", "forged_mark"), time.time(), marker()
    got = attack(lab, "attacker", "mark", ip(lab, "web"), 8080, secret, caps="default")
    assert "reply" not in got, got
    dst = f"{ip(lab, 'web')}:8080"
    (rec,) = wait_until(
        lambda: [r for r in access_log(lab, "n1", since) if r["dst"] == dst],
        15,
        "the agent's record of the marked connection",
    )
    assert rec["src_workload"] == "mesh/attacker" and rec["outcome"] == "refused_plaintext"
    assert counter(lab, "n1", "forged_mark") > before
    assert not app_saw(lab, "web", secret)
    assert served(lab, "attacker", "mesh", "server"), "the agent's own marked sockets pass"


# --------------------------------------------------------------------------------------- VLAN


def test_vlan_tagged_frames_are_dropped_both_ways(lab):
    """A tagged SYN out of an enrolled pod (a packet socket, default capabilities): the node
    strips a VLAN 0 tag and routes the packet, so it would leave around capture. Into a pod,
    a frame tagged twice with VLAN 0 (from an L2 neighbour, as on a bridged CNI) reaches the
    pod's stack after tc has looked at it: the kernel strips one tag before tc, one after."""
    out_before, in_before = counter(lab, "n1", "drop_vlan"), counter(lab, "n2", "drop_vlan")
    web, server = ip(lab, "web"), ip(lab, "server")
    control = attack(lab, "visitor", "frame", "eth0", web, 8080, sport(), "--tags", "one",
                     caps="default")  # fmt: skip
    assert control["answer"] == "SA", f"positive control: the tagged SYN gets out {control}"
    got = attack(lab, "attacker", "frame", "eth0", web, 8080, sport(), "--tags", "one",
                 caps="default")  # fmt: skip
    assert got["answer"] is None, got
    assert counter(lab, "n1", "drop_vlan") > out_before
    web_veth, server_veth = lab.pod("web", "plain").veth, lab.pod("server", "mesh").veth
    for tags in ("qinq", "adq"):
        control = from_node(lab, "n2", "frame", web_veth, web, 8080, sport(), "--tags", tags)
        assert control["answer"] == "SA", f"positive control: the app answers {tags} {control}"
        got = from_node(lab, "n2", "frame", server_veth, server, 8080, sport(), "--tags", tags)
        assert got["answer"] is None, (tags, got)
    untagged = from_node(lab, "n2", "frame", server_veth, server, 8080, sport())
    assert untagged["answer"] == "SA", "an untagged SYN reaches the pod (the agent answers it)"
    assert counter(lab, "n2", "drop_vlan") >= in_before + 2


# --------------------------------------------------------------------------------------- IPv6

V6_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    print("accepted", peer[0], flush=True)
    c.close()
"""

V6_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print("failed", type(e).__name__)
"""


def v6(lab: Lab, name: str) -> str:
    rec = lab.pod(name, "plain" if name in ("outsider", "visitor", "web") else "mesh")
    index = lab.load().nodes[rec.node].index
    return f"fd00:10:244:{index}::{rec.ip.rsplit('.', 1)[1]}"


def dual_stack(lab: Lab, names: list[str]) -> None:
    """Give these pods IPv6 addresses routed through their nodes, as a dual-stack CNI would."""
    state = lab.load()

    def run(netns: str, *cmds: str) -> None:
        for cmd in cmds:
            res = subprocess.run(["ip", "-n", netns, *cmd.split()], capture_output=True, text=True)
            assert res.returncode == 0 or "File exists" in res.stderr, (cmd, res.stderr)

    for node in state.nodes.values():
        subprocess.run(
            ["ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            check=True,
        )
        run(node.netns, f"-6 addr add fd00:172:30::{node.index}/64 dev eth0 nodad")
        for peer in state.nodes.values():
            if peer.name != node.name:
                run(
                    node.netns,
                    f"-6 route replace fd00:10:244:{peer.index}::/64 via fd00:172:30::{peer.index}",
                )
    for name in names:
        rec = lab.pod(name, "plain" if name in ("outsider", "visitor", "web") else "mesh")
        node = state.nodes[rec.node]
        gw = f"fd00:10:244:{node.index}::1"
        run(
            node.netns,
            f"-6 addr add {gw}/128 dev {rec.veth} nodad",
            f"-6 route replace {v6(lab, name)}/128 dev {rec.veth}",
        )
        run(
            rec.netns,
            f"-6 addr add {v6(lab, name)}/128 dev eth0 nodad",
            f"-6 route replace {gw} dev eth0",
            f"-6 route replace default via {gw} dev eth0",
        )


@contextlib.contextmanager
def v6_listener(lab: Lab, name: str, port: int) -> Iterator[list[str]]:
    """An IPv6 server in a pod (the lab's echo apps listen on IPv4); at exit, what it printed."""
    ns = "plain" if name == "web" else "mesh"
    proc = subprocess.Popen(
        lab.exec_argv([sys.executable, "-c", V6_SERVER, str(port)], name, ns),
        stdout=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield printed
    finally:
        proc.kill()
        printed += proc.communicate()[0].splitlines()


def v6_connect(lab: Lab, who: str, target: str, port: int, timeout: float = 3.0) -> str:
    ns = "plain" if who in ("outsider", "visitor") else "mesh"
    argv = [sys.executable, "-c", V6_CONNECT, v6(lab, target), str(port), str(timeout)]
    return lab.exec(who, argv, namespace=ns).stdout.strip()


def test_ipv6_tcp_is_dropped_both_ways(lab):
    """On a dual-stack cluster IPv6 would reach a STRICT pod's app, and leave an enrolled
    pod, around the mesh (which carries IPv4 only): it is dropped, neighbour discovery
    (ICMPv6) is not, and pods outside the mesh keep their IPv6."""
    dual_stack(lab, ["visitor", "web", "server", "attacker"])
    port = 8086
    out_before, in_before = counter(lab, "n1", "drop_ipv6"), counter(lab, "n2", "drop_ipv6")
    with v6_listener(lab, "web", port) as web_app, v6_listener(lab, "server", port) as server_app:
        assert v6_connect(lab, "visitor", "web", port) == "connected", "positive control"
        assert v6_connect(lab, "visitor", "server", port).startswith("failed")
        wait_until(lambda: counter(lab, "n2", "drop_ipv6") > in_before, 15, "the inbound drop")
        assert v6_connect(lab, "attacker", "web", port).startswith("failed")
        wait_until(lambda: counter(lab, "n1", "drop_ipv6") > out_before, 15, "the outbound drop")
    assert [ln for ln in web_app if ln.startswith("accepted")] == [f"accepted {v6(lab, 'visitor')}"]
    assert not [ln for ln in server_app if ln.startswith("accepted")], "the STRICT app saw IPv6"
    # Neighbour discovery still works for the enrolled pods: the node resolved them.
    neigh = subprocess.run(
        ["ip", "-n", lab.load().nodes["n2"].netns, "-6", "neigh", "show", v6(lab, "server")],
        capture_output=True,
        text=True,
    ).stdout
    assert "lladdr" in neigh, neigh


# ------------------------------------------------------------------------------------- status


def test_pods_that_can_remove_their_own_capture_are_shown_and_warned_about(lab):
    """A container with NET_ADMIN (or privileged) can remove the programs in its own namespace:
    /config_dump, `lab status` and the agent's log say so; an ordinary pod carries nothing."""
    tools = workload(lab, "n1", "mesh", "tools")
    assert tools["state"] == "enrolled"
    assert "main (NET_ADMIN)" in tools["warning"], tools
    assert workload(lab, "n1", "mesh", "attacker")["warning"] == ""
    pods = {(p["namespace"], p["name"]): p for p in lab.status()["pods"]}
    assert "main (NET_ADMIN)" in pods["mesh", "tools"]["warning"]
    assert "warning" not in pods["mesh", "attacker"]
    text = subprocess.run(
        [sys.executable, "-m", "agent", "lab", "status", "--name", lab.name],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert [ln.split(":")[1].strip() for ln in text.splitlines() if ln.startswith("warning:")] == [
        "mesh/tools"
    ], text
    with open(lab.agent_log_path("n1")) as f:
        warned = [json.loads(line) for line in f if "can remove or bypass capture" in line]
    assert [w["pod"] for w in warned if w["level"] == "warning"] == ["mesh/tools"], warned
