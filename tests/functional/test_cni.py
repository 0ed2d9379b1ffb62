"""slipstream-cni chained after the reference CNI plugins (Debian's containernetworking-plugins:
bridge with host-local), run as a container runtime runs a conflist, against a real agent.

The primary plugins run inside a "node" network namespace (their bridge lives there, never
in the machine's), the pod gets its own; the agent (file source, iptables capture) serves
the CNI socket. ADD returns only once the agent has enrolled the pod (or decided it is
not in the mesh), prevResult unchanged; the agent down fails the ADD closed with code 11
naming the socket; DEL forgets the sandbox (and succeeds with the agent down); CHECK and
VERSION answer.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.cni import plugin as cni_plugin
from agent.lab import cnirun
from agent.node.datapath.iptables import CHAIN
from tests.functional.test_agent_process import free_port, get

CNI_BIN = Path("/usr/lib/cni")
PLUGIN = Path(cni_plugin.__file__)

pytestmark = pytest.mark.skipif(
    not (CNI_BIN / "bridge").exists() and not os.environ.get("SLIPSTREAM_REQUIRE_LAB"),
    reason="the reference CNI plugins are missing: run `make setup`",
)

OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {slipstream.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec: {nodeName: n1, containers: [{name: c, image: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: plain}
spec: {nodeName: n1, containers: [{name: c, image: legacy}]}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def node(tmp_path):
    """A node namespace and a conflist: bridge + host-local, then slipstream-cni."""
    tag = secrets.token_hex(3)
    names = {"node": f"sscni_{tag}_node"}
    ip("netns", "add", names["node"])
    conf = {
        "cniVersion": "1.0.0",
        "name": "lab",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.250.0.0/24"}]],
                    "dataDir": str(tmp_path / "ipam"),
                },
            },
            {"type": "slipstream-cni", "socket": str(tmp_path / "cni.sock"), "timeout": 20},
        ],
    }
    made: list[str] = []
    BIN_OF[names["node"]] = plugins_in(tmp_path / "bin")

    def pod_netns(name: str) -> str:
        ns = f"sscni_{tag}_{name}"
        ip("netns", "add", ns)
        made.append(ns)
        return f"/run/netns/{ns}"

    try:
        yield names["node"], conf, pod_netns, tmp_path
    finally:
        for ns in [*made, names["node"]]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def plugin_run(
    node_ns: str, path: Path, command: str, conf: dict, env: dict | cnirun.PodNetwork
) -> tuple[int, dict]:
    """One plugin by hand (its stdin and environment as given)."""
    if isinstance(env, cnirun.PodNetwork):
        env = env.env(command, str(CNI_BIN))
    proc = subprocess.run(
        ["ip", "netns", "exec", node_ns, str(path)],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
             "CNI_PATH": str(CNI_BIN), **env},
    )  # fmt: skip
    out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, out


BIN_OF: dict[str, Path] = {}
"""Each test node's CNI bin directory, by its namespace."""


def plugins_in(bin_dir: Path) -> Path:
    """A node's CNI bin directory: the reference plugins, and slipstream-cni unless installed."""
    bin_dir.mkdir(exist_ok=True)
    for name in ("bridge", "host-local", "loopback"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(CNI_BIN / name)
    if not (bin_dir / "slipstream-cni").exists():
        (bin_dir / "slipstream-cni").symlink_to(PLUGIN)
    return bin_dir


def chain(
    node_ns: str, conflist: dict, command: str, pod: cnirun.PodNetwork, bin_dir: Path | None = None
) -> tuple[int, dict]:
    """The conflist as a runtime runs it (the lab's runtime, agent/lab/cnirun.py): the exit
    status, and the result or the failing plugin's error."""
    node = cnirun.NodeCni(str(bin_dir or BIN_OF[node_ns]), "", "", node_ns)
    try:
        return 0, cnirun.run(node, conflist, command, pod)
    except cnirun.CniError as exc:
        return 1, exc.reply


def pod_env(netns: str, ns: str, name: str) -> cnirun.PodNetwork:
    return cnirun.PodNetwork(secrets.token_hex(8), netns, ns, name, "")


@pytest.fixture
def agent(node):
    tmp = node[3]
    (tmp / "objects").mkdir()
    (tmp / "objects" / "objects.yaml").write_text(OBJECTS)
    admin, ready = free_port(), free_port()
    log = open(tmp / "agent.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--node", "n1",
         "--source", f"file:{tmp / 'objects'}", "--admin", f"127.0.0.1:{admin}",
         "--ready", f"127.0.0.1:{ready}", "--state-dir", str(tmp / "state"),
         "--capture", "iptables", "--cni-socket", str(tmp / "cni.sock"), "--cleanup"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp / "cni.sock").exists() or _status(ready) != 200:
        assert proc.poll() is None, (tmp / "agent.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp / "agent.log").read_text()[-3000:]
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{admin}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _status(port: int) -> int:
    try:
        return get(f"http://127.0.0.1:{port}/healthz/ready")[0]
    except OSError:
        return 0


def rules(netns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", os.path.basename(netns), "iptables-save"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def workload(admin: str, ns: str, name: str) -> dict:
    with urllib.request.urlopen(f"{admin}/config_dump", timeout=10) as r:
        dump = json.load(r)
    return next((w for w in dump["workloads"] if (w["namespace"], w["name"]) == (ns, name)), {})


def test_add_returns_once_the_pod_is_enrolled_and_passes_the_result_through(node, agent):
    node_ns, conf, pod_netns, _ = node
    netns = pod_netns("web")
    env = pod_env(netns, "shop", "web")
    # As the runtime runs the conflist: the bridge plugin, then ours with its result.
    bridge = {"cniVersion": "1.0.0", "name": "lab", **conf["plugins"][0]}
    rc, primary = plugin_run(node_ns, CNI_BIN / "bridge", "ADD", bridge, env)
    assert rc == 0, primary
    ours = {"cniVersion": "1.0.0", "name": "lab", **conf["plugins"][1], "prevResult": primary}
    rc, result = plugin_run(node_ns, PLUGIN, "ADD", ours, env)
    assert rc == 0, result
    assert result == primary, "what the runtime gets is the primary's result, untouched"
    pod_ip = result["ips"][0]["address"].split("/")[0]
    # Decided before ADD returned: no waiting here.
    w = workload(agent, "shop", "web")
    assert (w["state"], w["ip"], w["netns"]) == ("enrolled", pod_ip, netns), w
    assert CHAIN in rules(netns), "capture is in the pod's namespace before ADD returned"
    # CHECK agrees; VERSION answers.
    rc, out = plugin_run(node_ns, PLUGIN, "CHECK", ours, env)
    assert rc == 0, out
    rc, out = plugin_run(node_ns, PLUGIN, "VERSION", {"cniVersion": "1.0.0"}, {})
    assert rc == 0 and "1.0.0" in out["supportedVersions"]
    # DEL: the agent forgets the sandbox, and the pod, no longer placed, is not enrolled.
    rc, out = chain(node_ns, conf, "DEL", env)
    assert rc == 0, out
    deadline = time.monotonic() + 20
    while workload(agent, "shop", "web").get("state") == "enrolled":
        assert time.monotonic() < deadline, workload(agent, "shop", "web")
        time.sleep(0.05)
    assert CHAIN not in rules(netns), "and its capture removed (the agent runs with --cleanup)"


def test_a_pod_outside_the_mesh_is_let_through_with_the_reason(node, agent):
    node_ns, conf, pod_netns, _ = node
    rc, result = chain(node_ns, conf, "ADD", pod_env(pod_netns("legacy"), "plain", "legacy"))
    assert rc == 0, result
    w = workload(agent, "plain", "legacy")
    assert w["state"] == "not-enrolled" and "namespace" in w["reason"], w


def test_a_pod_the_agent_does_not_know_waits(node, agent):
    """Not (yet) in the agent's view of the cluster: no decision, so the ADD fails and the
    runtime tries again later; the pod never runs uncaptured."""
    node_ns, conf, pod_netns, _ = node
    conf = {**conf, "plugins": [conf["plugins"][0], {**conf["plugins"][1], "timeout": 3}]}
    env = pod_env(pod_netns("ghost"), "shop", "ghost")
    rc, out = chain(node_ns, conf, "ADD", env)
    assert rc != 0 and out["code"] in (11, 100), out
    assert "ghost" in out["msg"] or "not" in out["msg"], out


def test_add_with_the_agent_down_fails_closed_naming_why(node):
    node_ns, conf, pod_netns, tmp = node
    env = pod_env(pod_netns("web"), "shop", "web")
    rc, out = chain(node_ns, conf, "ADD", env)
    assert rc != 0
    assert out["code"] == 11, out  # "try again later": the kubelet retries
    assert str(tmp / "cni.sock") in out["msg"] and "not reachable" in out["msg"], out
    # DEL of what never was, agent down: success (a DEL must not fail for what is gone).
    rc, out = chain(node_ns, conf, "DEL", env)
    assert rc == 0, out


def test_bad_invocations_name_what_is_wrong(node, agent):
    node_ns, conf, pod_netns, _ = node
    ours = {**conf["plugins"][1], "cniVersion": "1.0.0", "name": "lab"}
    netns = pod_netns("web")
    no_args = {**pod_env(netns, "shop", "web").env("ADD", str(CNI_BIN)), "CNI_ARGS": ""}
    cases = [
        (ours, pod_env(netns, "shop", "web"), 7, "prevResult"),  # not chained
        ({**ours, "prevResult": {}}, no_args, 4, "K8S_POD_NAME"),
        ({**ours, "cniVersion": "9.9.9", "prevResult": {}}, pod_env(netns, "shop", "web"), 1,
         "9.9.9"),
    ]  # fmt: skip
    for conf_, env, code, word in cases:
        rc, out = plugin_run(node_ns, PLUGIN, "ADD", conf_, env)
        assert rc != 0 and out["code"] == code and word in out["msg"], out
    proc = subprocess.run(
        [str(PLUGIN)], input="{not json", capture_output=True, text=True,
        env={"CNI_COMMAND": "ADD", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == 6


def test_the_install_step_chains_it_so_the_runtime_enrolls_the_pod(node, agent):
    """`slipstream cni install --once` into a node's directories holding the primary's conflist;
    the runtime then runs what it finds there (the installed plugin included)."""
    node_ns, conf, pod_netns, tmp = node
    bin_dir, conf_dir = tmp / "opt-cni-bin", tmp / "etc-cni-net.d"
    conf_dir.mkdir()
    primary = {**conf, "plugins": conf["plugins"][:1]}
    original = json.dumps(primary, indent=4).encode()
    (conf_dir / "10-lab.conflist").write_bytes(original)
    run = subprocess.run(
        [sys.executable, "-m", "agent", "cni", "install", "--once", "--cni-bin-dir", str(bin_dir),
         "--cni-conf-dir", str(conf_dir), "--state-dir", str(tmp / "cni-state"),
         "--socket", str(tmp / "cni.sock"), "--timeout", "20"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0 and "chained into 10-lab.conflist" in run.stdout, run.stderr
    installed = json.loads((conf_dir / "10-lab.conflist").read_text())
    env = pod_env(pod_netns("web"), "shop", "web")
    plugins_in(bin_dir)  # the primary's plugins beside the one the install step put there
    rc, result = chain(node_ns, installed, "ADD", env, bin_dir)
    assert rc == 0, result
    assert workload(agent, "shop", "web")["state"] == "enrolled"
    assert chain(node_ns, installed, "DEL", env, bin_dir)[0] == 0
    run = subprocess.run(
        [sys.executable, "-m", "agent", "cni", "uninstall", "--cni-bin-dir", str(bin_dir),
         "--cni-conf-dir", str(conf_dir), "--state-dir", str(tmp / "cni-state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (conf_dir / "10-lab.conflist").read_bytes() == original
    assert not (bin_dir / "slipstream-cni").exists()


def test_a_pod_from_before_the_install_is_found_by_its_address(node, agent):
    """No ADD ever reached the agent for it and it has no annotation: the agent finds the
    namespace holding its address among the host's processes, and enrolls it."""
    _, _, pod_netns, tmp = node
    netns, peer = pod_netns("old"), pod_netns("old-peer")
    ip("link", "add", "o0", "netns", os.path.basename(netns), "type", "veth", "peer", "name", "o1",
       "netns", os.path.basename(peer))  # fmt: skip
    ip("-n", os.path.basename(netns), "addr", "add", "10.250.9.9/24", "dev", "o0")
    ip("-n", os.path.basename(netns), "link", "set", "o0", "up")
    holder = subprocess.Popen(["ip", "netns", "exec", os.path.basename(netns), "sleep", "120"])
    stale = "slipstream-found-shop.gone"  # as if its pod was deleted while the agent was down
    try:
        ip("netns", "attach", stale, str(holder.pid))
        (tmp / "objects" / "old.yaml").write_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: old, namespace: shop}\n"
            "spec: {nodeName: n1, containers: [{name: c, image: old}]}\n"
            "status: {podIP: 10.250.9.9, phase: Running}\n"
        )
        deadline = time.monotonic() + 30
        while workload(agent, "shop", "old").get("state") != "enrolled":
            assert time.monotonic() < deadline, workload(agent, "shop", "old")
            time.sleep(0.1)
        w = workload(agent, "shop", "old")
        assert w["netns"] == "/run/netns/slipstream-found-shop.old", w
        assert CHAIN in rules(w["netns"]), "captured in the namespace that holds its address"
        assert os.stat(w["netns"]).st_ino == os.stat(netns).st_ino
        assert not os.path.exists(f"/run/netns/{stale}"), "a name no enrolled pod uses is let go"
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, check=False)
        holder.kill()
        holder.wait()


def test_a_draining_agent_turns_unready_and_new_pods_wait_for_the_next(node, agent):
    """The DaemonSet's preStop hook (`slipstream drain`): the agent stops taking new pods
    (their ADD fails, so the kubelet retries until the next agent answers) and reports
    unready, while the pods it enrolled keep their capture."""
    node_ns, conf, pod_netns, _ = node
    web = pod_netns("web")
    rc, out = chain(node_ns, conf, "ADD", pod_env(web, "shop", "web"))
    assert rc == 0, out
    res = subprocess.run(
        [sys.executable, "-m", "agent", "drain", "--admin", agent.split("//")[1], "--wait", "2s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "draining" in res.stdout, res
    with urllib.request.urlopen(f"{agent}/drain", timeout=10) as r:
        assert json.load(r)["draining"] is True
    with urllib.request.urlopen(f"{agent}/config_dump", timeout=10) as r:
        assert json.load(r)["ready"] is False
    rc, out = chain(node_ns, conf, "ADD", pod_env(pod_netns("late"), "plain", "legacy"))
    assert rc != 0 and out["code"] == 11 and "draining" in out["msg"], out
    assert workload(agent, "shop", "web")["state"] == "enrolled"
    assert CHAIN in rules(web), "the enrolled pod keeps its capture"
