"""The lab as a user meets it: a two-node cluster from manifests, pods that talk, clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from agent.common.manifest import load_text
from agent.lab import net
from agent.lab.errors import LabError
from agent.lab.lab import Lab
from agent.lab.model import lab_prefix
from tests.lab.labkit import config_dump, curl, new_lab_name

ECHO = '[slipstream, app, http-echo, --port, "8080"]'
# Prints what the pod's own process sees: its env, hostname and eth0 address.
WHOAMI = (
    'echo "env=$POD_IP host=$(hostname) '
    'eth0=$(ip -4 -o addr show eth0 | awk "{print \\$4}")"; exec sleep 3600'
)


def cluster(server_prefix: str = "") -> str:
    """Two nodes, two pods on each; each pod serves http-echo on 8080."""
    pods = []
    for node in ("n1", "n2"):
        for i in (1, 2):
            name = f"{server_prefix}{node}-p{i}"
            pods.append(f"""\
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: team
  labels: {{app: echo, node: {node}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    command: {ECHO}
  - name: whoami
    command: [sh, -c, '{WHOAMI}']
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
""")
    return textwrap.dedent("""\
        apiVersion: slipstream.dev/v1alpha1
        kind: Lab
        metadata: {name: ignored-when-named}
        spec: {nodes: [n1, n2]}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: team}
        """) + "".join(pods)


def ip_of(lab: Lab, pod: str, ns: str = "team") -> str:
    return lab.pod(pod, ns).ip


def root_netns_view() -> dict[str, str]:
    """What the machine's own namespace holds; the lab must not change it."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return {
        "links": run("ip", "-o", "link", "show"),
        "addrs": run("ip", "-o", "addr", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "rules": run("ip", "rule", "show"),
        "qdiscs": run("tc", "qdisc", "show"),
    }


def read_lines(path: str, prefix: str) -> list[str]:
    with open(path) as f:
        return [line for line in f if line.startswith(prefix)]


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_same_node_and_cross_node_tcp(make_lab):
    lab = make_lab(cluster())
    a, same, other = ip_of(lab, "n1-p1"), ip_of(lab, "n1-p2"), ip_of(lab, "n2-p1")
    assert a.startswith("10.244.1.") and other.startswith("10.244.2.")

    for target, pod in ((same, "n1-p2"), (other, "n2-p1")):
        wait_until(
            lambda t=target: (
                lab.exec(
                    "n1-p1",
                    ["curl", "-s", "-o", "/dev/null", f"http://{t}:8080/"],
                    namespace="team",
                ).returncode
                == 0
            ),
            15,
            f"{pod} to serve",
        )
        answer = curl(lab, "n1-p1", f"http://{target}:8080/hello", "team")
        assert answer["pod"] == pod
        assert answer["client"].split(":")[0] == a, "the server sees the client's pod IP"
        assert answer["server"] == f"{target}:8080", "the server's socket is on its own pod IP"


def test_a_pods_process_sees_its_own_ip_and_name(make_lab):
    lab = make_lab(cluster())
    for pod in ("n1-p1", "n2-p2"):
        ip = ip_of(lab, pod)
        (log,) = lab.log_paths(pod, "team", "whoami")
        line = wait_until(lambda p=log: read_lines(p, "env="), 15, "whoami output")[0]
        assert line.split() == [f"env={ip}", f"host={pod}", f"eth0={ip}/32"]


def test_a_label_change_reaches_every_agent_live(make_lab):
    # (live: pushed by the watch, no restart; how fast a loaded machine delivers it is not
    # asserted, a wait bounds only a hang)
    lab = make_lab(cluster())
    manifest = cluster().split("---\n")
    doc = next(d for d in manifest if "name: n2-p1" in d).replace(
        "node: n2}", "node: n2, tier: gold}"
    )
    assert lab.apply(load_text(doc, "relabel.yaml")) == ["pod/n2-p1 configured"]

    def labelled(node: str) -> bool:
        pods = {p["name"]: p for p in config_dump(lab, node)["pods"]}
        return pods["n2-p1"]["labels"].get("tier") == "gold"

    for node in ("n1", "n2"):
        wait_until(lambda n=node: labelled(n), 15, f"agent on {node} to see the new label")
    # The pod kept running: same process, same IP.
    assert lab.get("pod", "team")[2]["status"]["containerStatuses"][0]["restartCount"] == 0


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team}
spec:
  selector: {node: n2}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"""


def test_agents_load_the_cluster_state(make_lab):
    lab = make_lab(cluster() + "---\n" + SERVICE)
    dump = config_dump(lab, "n1")
    assert dump["node"] == "n1" and dump["ready"]
    pods = {p["name"]: p for p in dump["pods"]}
    assert set(pods) == {"n1-p1", "n1-p2", "n2-p1", "n2-p2"}
    assert pods["n2-p1"]["ip"] == ip_of(lab, "n2-p1") and pods["n2-p1"]["node"] == "n2"
    assert {ns["name"] for ns in dump["namespaces"]} >= {"default", "team", "slipstream-system"}
    # Besides the API server's own default/kubernetes, as on any cluster.
    (svc,) = [s for s in dump["services"] if s["namespace"] == "team"]
    assert svc["clusterIP"] == "10.96.0.10"
    want = sorted(f"{ip_of(lab, p)}:8080" for p in ("n2-p1", "n2-p2"))
    assert sorted(svc["ports"][0]["endpoints"]) == want
    (ep,) = lab.get("endpoints", "team")
    assert (
        sorted(f"{a['ip']}:{s['ports'][0]['port']}" for s in ep["subsets"] for a in s["addresses"])
        == want
    )


def test_two_labs_at_once_do_not_interfere(make_lab):
    one = make_lab(cluster("one-"))
    two = make_lab(cluster("two-"))
    # Both labs hand out the same addresses, yet each pod reaches its own lab's server.
    assert ip_of(one, "one-n2-p1") == ip_of(two, "two-n2-p1")
    target = ip_of(one, "one-n2-p1")
    for lab, prefix in ((one, "one-"), (two, "two-")):
        wait_until(
            lambda lab=lab, p=prefix: (
                lab.exec(
                    f"{p}n1-p1",
                    ["curl", "-s", "-o", "/dev/null", f"http://{target}:8080/"],
                    namespace="team",
                ).returncode
                == 0
            ),
            15,  # a loaded machine: the second lab's servers may still be importing
            "server",
        )
        assert (
            curl(lab, f"{prefix}n1-p1", f"http://{target}:8080/", "team")["pod"] == f"{prefix}n2-p1"
        )
    one.down()
    assert curl(two, "two-n1-p1", f"http://{target}:8080/", "team")["pod"] == "two-n2-p1"


def test_down_leaves_nothing_and_root_namespace_is_untouched(make_lab):
    before = root_netns_view()
    lab = make_lab(cluster())
    assert root_netns_view() == before, "the lab changed the machine's own namespace"
    st = lab.status()
    pids = [p["pid"] for p in st["processes"]]
    for pod in st["pods"]:
        pids += net.netns.pids_in(pod["netns"])
    assert len(pids) >= 1 + 2 + 4 * 3  # CA, agents; per pod: supervisor + two containers
    names = net.list_netns(lab_prefix(lab.name))
    assert len(names) == 1 + 1 + 2 + 4  # bridge, control plane, nodes, pods

    assert lab.down()
    assert net.list_netns(lab_prefix(lab.name)) == []
    assert [p for p in pids if net.alive(p)] == []
    assert not os.path.exists(lab.dir)
    assert root_netns_view() == before
    assert not lab.down(), "a second down finds nothing"


def test_bad_manifest_is_refused_with_document_and_field(make_lab):
    bad = cluster() + textwrap.dedent("""\
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: broken, namespace: team}
        spec:
          ports:
          - port: 99999
        """)
    name = new_lab_name()
    with pytest.raises(LabError) as exc:
        make_lab(bad, name=name)
    assert "<test manifest>:" in str(exc.value)
    assert (
        "(document 7, Service team/broken): spec.ports[0].port: 99999 is not a port number"
        in str(exc.value)
    )
    assert net.list_netns(lab_prefix(name)) == []


def test_command_that_cannot_start_rolls_back(make_lab, tmp_path):
    # Found on PATH and executable, but not a program: exec fails inside the pod.
    fake = tmp_path / "not-a-program"
    fake.write_bytes(b"\x00\x01garbage")
    fake.chmod(0o755)
    manifest = cluster() + textwrap.dedent(f"""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: doomed, namespace: team}}
        spec:
          containers:
          - name: main
            command: [{fake}]
        """)
    name = new_lab_name()
    with pytest.raises(
        LabError,
        match=r"Pod team/doomed: container main: cannot start .*not-a-program.*Exec format",
    ):
        make_lab(manifest, name=name)
    assert net.list_netns(lab_prefix(name)) == []
    assert not os.path.exists(Lab(name).dir)


def test_apply_adds_and_delete_removes_a_pod_live(make_lab):
    lab = make_lab(cluster())
    extra = textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: late, namespace: team}}
        spec:
          nodeName: n2
          containers:
          - name: echo
            command: {ECHO}
        """)
    assert lab.apply(load_text(extra, "late.yaml")) == ["pod/late created"]
    late = lab.pod("late", "team")
    assert late.ip == "10.244.2.4"
    wait_until(
        lambda: (
            lab.exec(
                "n1-p1",
                ["curl", "-s", "-o", "/dev/null", f"http://{late.ip}:8080/"],
                namespace="team",
            ).returncode
            == 0
        ),
        15,
        "late pod to serve",
    )
    wait_until(
        lambda: any(p["name"] == "late" for p in config_dump(lab, "n1")["pods"]),
        15,
        "agent sees pod",
    )
    assert lab.delete("pod", "late", "team") == ["pod/late deleted"]
    assert not net.exists(late.netns)
    wait_until(
        lambda: all(p["name"] != "late" for p in config_dump(lab, "n1")["pods"]),
        15,
        "agent drops pod",
    )
    # Only labels and annotations of a running pod may change.
    doc = next(d for d in cluster().split("---\n") if "name: n1-p1" in d)
    with pytest.raises(LabError, match=r"spec\.containers: a running Pod's spec cannot change"):
        lab.apply(load_text(doc.replace("name: whoami", "name: renamed"), "x.yaml"))


def test_cli(make_lab):
    lab = make_lab(cluster())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "lab", args[0], "--name", lab.name, *args[1:]],
            capture_output=True,
            text=True,
            timeout=30,
        )

    res = cli("get", "pods", "-n", "team", "-o", "wide")
    assert res.returncode == 0, res.stderr
    head, *rows = res.stdout.splitlines()
    assert head.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert rows[0].split()[:3] == ["n1-p1", "2/2", "Running"]

    items = json.loads(cli("get", "pods", "-A", "-o", "json").stdout)["items"]
    assert {i["status"]["podIP"] for i in items} == {
        ip_of(lab, p) for p in ("n1-p1", "n1-p2", "n2-p1", "n2-p2")
    }

    res = cli("exec", "-n", "team", "n2-p2", "--", "hostname")
    assert (res.returncode, res.stdout) == (0, "n2-p2\n")
    res = cli("exec", "--node", "n1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert "172.30.0.1/24" in res.stdout

    res = cli("logs", "-n", "team", "n1-p1", "-c", "whoami")
    assert res.stdout.strip().endswith(f"eth0={ip_of(lab, 'n1-p1')}/32")

    st = json.loads(cli("status", "-o", "json").stdout)
    assert [n["ip"] for n in st["nodes"]] == ["172.30.0.1", "172.30.0.2"]
    assert {(p["kind"], p["name"], p["alive"]) for p in st["processes"]} == {
        ("apiserver", "apiserver", True),
        ("kubelet", "kubelet", True),
        ("ca", "ca", True),
        ("agent", "n1", True),
        ("agent", "n2", True),
    }

    res = cli("delete", "pod", "n1-p2", "-n", "team")
    assert res.stdout == "pod/n1-p2 deleted\n"
    res = cli("delete", "pod", "nope", "-n", "team")
    assert res.returncode == 1 and "Pod team/nope not found" in res.stderr

    res = cli("down")
    assert res.returncode == 0 and net.list_netns(lab_prefix(lab.name)) == []


def test_a_failing_test_still_cleans_up(pytester, monkeypatch):
    """A lab test that fails on purpose must leave nothing behind."""
    here = os.path.dirname(__file__)
    name = new_lab_name()
    with open(os.path.join(here, "conftest.py")) as f:
        pytester.makeconftest(f.read())
    pytester.makepyfile(
        test_inner=f"""
        MANIFEST = {cluster()!r}

        def test_fails_on_purpose(make_lab):
            lab = make_lab(MANIFEST, name={name!r})
            assert lab.pod("n1-p1", "team").ip
            assert False, "failing on purpose"
    """
    )
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(here)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(failed=1)
    assert net.list_netns(lab_prefix(name)) == []
    assert not os.path.exists(Lab(name).dir)


PROBE = (
    'grep -E "^(CapBnd|NoNewPrivs)" /proc/self/status; echo "init: $(cat /proc/1/comm)"; '
    'echo "maxpid: $(ls /proc | grep ^[0-9] | sort -n | tail -1)"; '
    "ip link set lo mtu 1400 2>/dev/null && echo mtu-set; echo done; exec sleep 3600"
)
SANDBOX = f"""\
apiVersion: slipstream.dev/v1alpha1
kind: Lab
metadata: {{name: ignored-when-named}}
spec: {{nodes: [n1], mesh: {{enabled: false}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: plain}}
spec:
  containers:
  - {{name: main, command: [sh, -c, '{PROBE}']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: netadmin}}
spec:
  containers:
  - name: main
    securityContext: {{capabilities: {{add: [NET_ADMIN], drop: [NET_RAW]}}}}
    command: [sh, -c, '{PROBE}']
"""


def test_containers_get_a_containers_capabilities_and_see_only_their_pod(make_lab):
    """Root in a pod holds Docker's default capabilities (unless its securityContext says
    otherwise), with no_new_privs, and sees only its own pod's processes."""
    lab = make_lab(SANDBOX)

    def output(pod: str) -> dict[str, str]:
        (log,) = lab.log_paths(pod)
        wait_until(lambda: read_lines(log, "done"), 10, f"{pod}'s probe")
        with open(log) as f:
            lines = [ln for ln in f if not ln.startswith("---")]
        return {ln.split(":")[0].strip(): ln.split()[-1] for ln in lines}

    # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
    # SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
    default = 0xA80425FB
    net_admin, net_raw = 1 << 12, 1 << 13
    plain, netadmin = output("plain"), output("netadmin")
    assert int(plain["CapBnd"], 16) == default and plain["NoNewPrivs"] == "1"
    assert int(netadmin["CapBnd"], 16) == (default | net_admin) & ~net_raw
    assert "mtu-set" in netadmin and "mtu-set" not in plain
    # A PID namespace of the pod's own: the supervisor is its pid 1, pids count from there.
    assert plain["init"] == "python" and int(plain["maxpid"]) < 20, plain


def test_code_the_lab_runs_stays_read_only_under_a_writable_directory(tmp_path):
    """A checkout under /tmp: pods may write /tmp, never the Slipstream code in it. Runs the
    pod supervisor itself on a spec whose protected code lies in a scratch directory."""
    from agent.lab.pods import WRITABLE, code_paths

    assert str(tmp_path).startswith("/tmp/")
    code, scratch, pod = tmp_path / "code", tmp_path / "scratch", tmp_path / "pod"
    for d in (code, scratch, pod):
        d.mkdir()
    (pod / "hosts").write_text("127.0.0.1 localhost\n")
    probe = (
        f"touch {code}/x 2>/dev/null && echo code=written || echo code=refused; "
        f"touch {scratch}/y 2>/dev/null && echo scratch=written || echo scratch=refused"
    )
    spec = {
        "pod": "t/probe",
        "hostname": "probe",
        "hosts": str(pod / "hosts"),
        "restartPolicy": "Never",
        "sandbox": {
            "hide": str(tmp_path / "hidden"),
            "show": [],
            "writable": list(WRITABLE),
            "protect": [*code_paths(), str(code)],
        },
        "containers": [
            {
                "name": "c",
                "argv": ["sh", "-c", probe],
                "env": {"PATH": "/usr/bin:/bin"},
                "log": str(pod / "c.log"),
                "capabilities": [],
            }
        ],
    }
    (tmp_path / "hidden").mkdir()
    (pod / "spec.json").write_text(json.dumps(spec))
    ns = f"t-sbx-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "agent.lab.supervisor", str(pod)],
            check=True,
            timeout=30,
        )
        wait_until(lambda: "scratch=" in (pod / "c.log").read_text(), 10, "the probe")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    out = (pod / "c.log").read_text()
    assert "code=refused" in out and "scratch=written" in out, out
    assert not (code / "x").exists() and (scratch / "y").exists()
