"""eBPF capture inside pods, checked from outside: what apps see, the access log, tc/ip/ss."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from agent.common.manifest import load_text
from agent.lab.lab import Lab
from tests.lab.labkit import (
    access_log,
    config_dump,
    curl,
    lookup_links,
    netns_view,
    wait_until,
    workload,
)

ECHO = '[slipstream, app, http-echo, --port, "8080"]'
SLEEP = "[sleep, infinity]"


def pod(name: str, ns: str, node: str, command: str, labels: str = "") -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}{labels}}}}}
        spec:
          nodeName: {node}
          containers:
          - name: main
            command: {command}
        """)


MESH_NS = """\
---
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels: {slipstream.dev/dataplane-mode: ambient}
"""
PLAIN_NS = """\
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""

CLUSTER = (
    "apiVersion: slipstream.dev/v1alpha1\nkind: Lab\n"
    "metadata: {name: capture}\nspec: {nodes: [n1, n2]}\n"
    + MESH_NS
    + PLAIN_NS
    + pod("client", "mesh", "n1", SLEEP)
    + pod("near", "mesh", "n1", ECHO)
    + pod("far", "mesh", "n2", ECHO)
    + pod("optout", "mesh", "n1", SLEEP, ", slipstream.dev/dataplane-mode: none")
    + pod("client", "plain", "n1", SLEEP)
    + pod("server", "plain", "n2", ECHO)
)


@pytest.fixture
def lab(make_lab) -> Lab:
    lab = make_lab(CLUSTER)
    for ns, name in (("mesh", "near"), ("mesh", "far"), ("plain", "server")):
        ip = lab.pod(name, ns).ip
        wait_until(
            lambda ip=ip: (
                lab.exec(
                    "client",
                    ["curl", "-s", "-o", "/dev/null", f"http://{ip}:8080/"],
                    namespace="plain",
                ).returncode
                == 0
            ),
            10,
            f"{ns}/{name} to serve",
        )
    return lab


def ip(lab: Lab, name: str, ns: str = "mesh") -> str:
    return lab.pod(name, ns).ip


def records(lab: Lab, since: float, **match: str) -> list[dict]:
    out = []
    for node in ("n1", "n2"):
        out += [
            r for r in access_log(lab, node, since) if all(r.get(k) == v for k, v in match.items())
        ]
    return out


def records_before_a_marker(lab: Lab, since: float) -> list[dict]:
    """Every record since `since` but a marker's, once the marker is logged on both nodes.

    The marker is a connection both agents capture (mesh/client on n1 to mesh/far on n2),
    made after the connections under test have ended: each agent logs a connection when it
    closes, so by the time the marker's records are there, any record of an earlier
    connection would be too. A positive marker to wait for instead of a sleep that hopes.
    """
    client, dst = ip(lab, "client"), f"{ip(lab, 'far')}:8080"

    def marker(r: dict) -> bool:
        return r["dst"] == dst and r["src"].rpartition(":")[0] == client

    start = time.time()
    assert curl(lab, "client", f"http://{dst}/marker", "mesh")["pod"] == "far"
    wait_until(
        lambda: (
            {r["direction"] for r in records(lab, start) if marker(r)} == {"outbound", "inbound"}
        ),
        10,
        "the marker connection's records on both nodes",
    )
    return [r for r in records(lab, since) if not marker(r)]


def fails(lab: Lab, pod: str, ns: str, url: str) -> bool:
    res = lab.exec(pod, ["curl", "-sS", "--connect-timeout", "2", "-m", "3", url], namespace=ns)
    return res.returncode != 0


def test_outbound_same_and_cross_node_is_captured_and_servers_see_the_client(lab):
    client = ip(lab, "client")
    for target in ("near", "far"):
        since = time.time()
        dst = f"{ip(lab, target)}:8080"
        answer = curl(lab, "client", f"http://{dst}/", "mesh")
        assert answer["pod"] == target
        assert answer["client"].split(":")[0] == client, "the server sees the client pod's own IP"
        (rec,) = wait_until(
            lambda d=dst, s=since: records(lab, s, direction="outbound", dst=d),
            15,
            f"outbound access-log record for {dst}",
        )
        assert rec["node"] == "n1"
        assert rec["src"].split(":")[0] == client
        assert rec["src_workload"] == "mesh/client" and rec["dst_workload"] == f"mesh/{target}"
        assert rec["outcome"] == "ok"
        assert rec["bytes_sent"] > 50 and rec["bytes_received"] > len(answer["pod"])
        assert rec["duration_ms"] > 0
        # The destination is enrolled too: its agent captured the connection arriving.
        node = "n1" if target == "near" else "n2"
        inbound = wait_until(
            lambda d=dst, s=since: records(lab, s, direction="inbound", dst=d), 15, "inbound"
        )
        assert inbound[0]["node"] == node and inbound[0]["src"].split(":")[0] == client


def test_inbound_plaintext_from_outside_the_mesh_is_captured(lab):
    since = time.time()
    dst = f"{ip(lab, 'far')}:8080"
    answer = curl(lab, "client", f"http://{dst}/", "plain")
    assert answer["client"].split(":")[0] == ip(lab, "client", "plain"), (
        "the app sees the real client IP"
    )
    (rec,) = wait_until(
        lambda: records(lab, since, direction="inbound", dst=dst), 10, "inbound record"
    )
    assert rec["node"] == "n2" and rec["src_workload"] == "plain/client" and rec["outcome"] == "ok"
    seen = records_before_a_marker(lab, since)
    assert [r for r in seen if r["direction"] == "outbound"] == [], (
        "the plain client is not captured"
    )


def test_unlabelled_namespace_and_opted_out_pod_are_not_captured(lab):
    since = time.time()
    curl(lab, "client", f"http://{ip(lab, 'server', 'plain')}:8080/", "plain")
    curl(lab, "optout", f"http://{ip(lab, 'server', 'plain')}:8080/", "mesh")
    assert records_before_a_marker(lab, since) == [], "no agent saw these connections"
    for name, ns in (("client", "plain"), ("optout", "mesh")):
        assert workload(lab, "n1", ns, name)["state"] == "not-enrolled"
        view = netns_view(lab, name, ns)
        assert view["eth0_egress"] == "" and "15001" not in view["listeners"]
    assert "opted out" in workload(lab, "n1", "mesh", "optout")["reason"]


def test_loopback_and_own_ip_inside_a_pod_are_not_captured(lab):
    since = time.time()
    assert curl(lab, "near", "http://127.0.0.1:8080/", "mesh")["client"].startswith("127.0.0.1:")
    assert curl(lab, "near", f"http://{ip(lab, 'near')}:8080/", "mesh")["pod"] == "near"
    assert records_before_a_marker(lab, since) == []


def test_listeners_filters_and_rules_in_an_enrolled_pod(lab):
    view = netns_view(lab, "client", "mesh")
    ports = {line.split()[3].rsplit(":", 1)[1] for line in view["listeners"].splitlines()}
    assert {"15001", "15006", "15008"} <= ports
    assert "capture_egress" in view["eth0_egress"] and "capture_ingress" in view["eth0_ingress"]
    assert "capture_lo_ingress" in view["lo_ingress"]
    assert "fwmark 0x53a lookup 100" in view["rules"]
    assert view["table100"].startswith("local default dev lo")
    assert view["accept_local"] == "1"
    assert lookup_links(lab, "n1", "client", "mesh") == 1, "capture_lookup is attached once"


def test_labelling_a_namespace_live_starts_and_stops_capture(lab):
    target = f"http://{ip(lab, 'server', 'plain')}:8080/"
    labelled = PLAIN_NS.replace(
        "metadata: {name: plain}",
        "metadata:\n  name: plain\n  labels: {slipstream.dev/dataplane-mode: ambient}",
    )
    lab.apply(load_text(labelled, "label.yaml"))
    # (live: the watch enrolls it; no restart, no resync period. How fast is not asserted:
    # a loaded machine decides that.)
    wait_until(
        lambda: workload(lab, "n1", "plain", "client").get("state") == "enrolled", 15, "enrollment"
    )
    since = time.time()
    assert curl(lab, "client", target, "plain")["client"].split(":")[0] == ip(
        lab, "client", "plain"
    )
    wait_until(
        lambda: records(lab, since, direction="outbound", src_workload="plain/client"),
        15,
        "capture",
    )
    assert lab.get("pod", "plain")[0]["status"]["containerStatuses"][0]["restartCount"] == 0

    lab.apply(load_text(PLAIN_NS, "unlabel.yaml"))
    wait_until(
        lambda: workload(lab, "n1", "plain", "client").get("state") == "not-enrolled",
        15,
        "release",
    )
    since = time.time()
    curl(lab, "client", target, "plain")
    released = records_before_a_marker(lab, since)
    assert [r for r in released if r["direction"] == "outbound"] == [], released
    view = netns_view(lab, "client", "plain")
    assert view["eth0_egress"] == view["eth0_ingress"] == view["lo_ingress"] == ""
    assert (
        "clsact" not in view["qdiscs"] and "0x53a" not in view["rules"] and view["table100"] == ""
    )
    assert not {"15001", "15006", "15008"} & {
        ln.split()[3].rsplit(":", 1)[1] for ln in view["listeners"].splitlines()
    }
    assert view["accept_local"] == "0"
    assert lookup_links(lab, "n1", "client", "plain") == 0


def test_agent_killed_fails_closed_then_readopts_without_duplicates(lab):
    url = f"http://{ip(lab, 'server', 'plain')}:8080/"
    curl(lab, "client", url, "mesh")
    (server_log,) = lab.log_paths("server", "plain")

    def served() -> int:
        with open(server_log) as f:
            return sum(1 for line in f if f"from {ip(lab, 'client')}:" in line)

    before = served()
    lab.stop_agent("n1", kill=True)
    since = time.time()
    assert fails(lab, "client", "mesh", url), (
        "an enrolled pod must not reach out while its agent is down"
    )
    assert served() == before, "nothing bypassed the mesh while the agent was down"
    assert curl(lab, "client", url, "plain"), "pods outside the mesh are unaffected"

    lab.start_agent("n1")
    wait_until(
        lambda: workload(lab, "n1", "mesh", "client").get("state") == "enrolled", 15, "re-adoption"
    )
    assert curl(lab, "client", url, "mesh")["client"].split(":")[0] == ip(lab, "client")
    wait_until(
        lambda: records(lab, since, direction="outbound", src_workload="mesh/client"), 15, "capture"
    )
    view = netns_view(lab, "client", "mesh")
    for hook, prog in (
        ("eth0_egress", "capture_egress"),
        ("eth0_ingress", "capture_ingress"),
        ("lo_ingress", "capture_lo_ingress"),
    ):
        filters = [ln for ln in view[hook].splitlines() if "handle" in ln]
        assert len(filters) == 1 and f":1 {prog} direct-action" in filters[0], view[hook]
    assert view["rules"].count("fwmark 0x53a") == 1
    assert len(view["table100"].splitlines()) == 1
    assert [ln.split()[3] for ln in view["listeners"].splitlines()].count("0.0.0.0:15001") == 1
    assert lookup_links(lab, "n1", "client", "mesh") == 1
    counters = config_dump(lab, "n1")["datapath"]["counters"]
    assert counters["outbound_new"] >= 1


def test_agent_stopped_with_cleanup_leaves_nothing_in_its_pods(lab):
    lab.stop_agent("n1")
    lab.start_agent("n1", cleanup=True)
    wait_until(
        lambda: workload(lab, "n1", "mesh", "client").get("state") == "enrolled", 15, "enrolled"
    )
    lab.stop_agent("n1")
    with open(lab.agent_log_path("n1")) as f:
        log_tail = f.read()[-4000:]
    for name in ("client", "near"):
        view = netns_view(lab, name, "mesh")
        assert view["eth0_egress"] == view["eth0_ingress"] == view["lo_ingress"] == "", (
            name,
            log_tail,
        )
        assert (
            "clsact" not in view["qdiscs"]
            and "0x53a" not in view["rules"]
            and view["table100"] == ""
        )
        assert view["listeners"] == "" or "1500" not in view["listeners"]
        assert view["accept_local"] == "0"
    # Without capture the pod is an ordinary pod again: it reaches out directly.
    assert curl(lab, "client", f"http://{ip(lab, 'server', 'plain')}:8080/", "mesh")


def test_deleting_a_pod_releases_its_namespace(lab):
    rec = lab.pod("near", "mesh")
    inode = os.stat(f"/run/netns/{rec.netns}").st_ino
    agent_pid = next(p["pid"] for p in lab.status()["processes"] if p["name"] == "n1")
    lab.delete("pod", "near", "mesh")

    def agent_holds_netns() -> bool:
        fds = f"/proc/{agent_pid}/fd"
        return any(os.readlink(os.path.join(fds, fd)) == f"net:[{inode}]" for fd in os.listdir(fds))

    wait_until(
        lambda: not agent_holds_netns(), 15, "the agent to let go of the deleted pod's namespace"
    )
    wait_until(lambda: workload(lab, "n1", "mesh", "near") == {}, 15, "the agent to forget the pod")


REUSE_PORT = """
import socket, sys
host, port, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for attempt in (1, 2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", src))
    s.settimeout(5)
    s.connect((host, port))
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    print(attempt, reply.split(b"\\r\\n")[0].decode())
"""


def syn_retransmits(lab: Lab, pod: str, ns: str) -> int:
    res = lab.exec(pod, ["nstat", "-az", "TcpExtTCPSynRetrans"], namespace=ns)
    return int(res.stdout.split()[-2]) if "TcpExtTCPSynRetrans" in res.stdout else 0


@pytest.mark.parametrize(
    ("client_ns", "server", "server_ns"),
    [("mesh", "server", "plain"), ("plain", "far", "mesh")],
    ids=["outbound", "inbound"],
)
def test_a_port_the_agent_holds_in_time_wait_can_be_reused_at_once(
    lab, client_ns, server, server_ns
):
    """The agent closes first, so it holds the tuple in TIME_WAIT; the client may reuse its
    port at once (as against any server). The kernel's TIME_WAIT logic must let the new SYN in."""
    before = syn_retransmits(lab, "client", client_ns)
    res = lab.exec(
        "client",
        ["python3", "-c", REUSE_PORT, ip(lab, server, server_ns), "8080", "45123"],
        namespace=client_ns,
    )
    assert res.stdout.splitlines() == ["1 HTTP/1.1 200 OK", "2 HTTP/1.1 200 OK"], res.stderr
    assert syn_retransmits(lab, "client", client_ns) == before, (
        "a SYN was dropped and retransmitted"
    )


def test_bad_pod_objects_are_reported_and_the_agent_carries_on(make_lab):
    """Objects in the agents' directory are control-plane input: a pod whose namespace is
    missing, outside /run/netns, the node's own, or unknown is refused with the reason.
    (With the file source, where such objects can be written directly; the lab's own
    kubelet would correct them in the API.)"""
    lab = make_lab(
        CLUSTER.replace("name: capture}", "name: capture-file}").replace(
            "spec: {nodes: [n1, n2]}", "spec: {nodes: [n1, n2], mesh: {source: file}}"
        )
    )
    node_netns = lab.status()["nodes"][0]["netns"]
    cases = {
        "outside": ("/etc", "failed", "outside the namespace directory"),
        "missing": ("/run/netns/ss_nope_pod_x", "failed", "cannot open network namespace"),
        "node": (f"/run/netns/{node_netns}", "failed", "the agent's own namespace"),
        "unknown": (None, "pending", "is not known"),
    }
    for i, (name, (path, _, _)) in enumerate(cases.items()):
        annotations = (
            f"annotations: {{slipstream.dev/netns: '{path}'}}" if path else "annotations: {}"
        )
        (Path(lab.objects_dir) / f"pod_mesh_bad-{name}.yaml").write_text(
            textwrap.dedent(f"""\
            apiVersion: v1
            kind: Pod
            metadata:
              name: bad-{name}
              namespace: mesh
              {annotations}
            spec:
              nodeName: n1
              containers: [{{name: c, command: [x]}}]
            status: {{podIP: 10.244.1.{200 + i}, phase: Running}}
            """)
        )
    for name, (_, state, reason) in cases.items():

        def refused(n: str = name, want: str = state) -> dict:
            w = workload(lab, "n1", "mesh", f"bad-{n}")
            return w if w.get("state") == want else {}

        seen = wait_until(refused, 15, f"bad-{name} refused")
        assert reason in seen["reason"], seen
    # The agent still serves its real pods.
    far = f"http://{ip(lab, 'far')}:8080/"
    wait_until(
        lambda: lab.exec("client", ["curl", "-s", far], namespace="mesh").returncode == 0,
        15,
        "far to serve",
    )
    assert curl(lab, "client", f"http://{ip(lab, 'far')}:8080/", "mesh")["pod"] == "far"
    assert "capture_egress" in netns_view(lab, "client", "mesh")["eth0_egress"]
    status, _ = lab.node_http("n1", "http://127.0.0.1:15021/healthz/ready")
    assert status == 200
