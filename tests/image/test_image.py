"""The container image (deploy/image/Containerfile) run the way deploy/base/ runs it.

Skipped unless SLIPSTREAM_IMAGE_TEST=1: building the image takes minutes, so `make test` and
CI leave it out; `make image-test` builds it and runs this. Needs root and podman.

Every container runs with --network=none: podman's default network would make a bridge and
NAT in the machine's own namespace. What the manifests say of a container (its command, user,
capabilities, read-only root, read-only host mounts) becomes podman's flags, so a manifest
that asks for something the image does not give fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from agent.node.datapath import abi

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("SLIPSTREAM_IMAGE_TEST") != "1",
        reason="the image test runs with SLIPSTREAM_IMAGE_TEST=1 (make image-test)",
    ),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SLIPSTREAM_IMAGE", "localhost/slipstream:dev")
MANIFEST_IMAGE = "slipstream:dev"
SITE = "/opt/slipstream/lib/python3.11/site-packages"

# Capability numbers (linux/capability.h) of those the manifests name.
CAPS = {
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "SYS_PTRACE": 19,
    "SYS_ADMIN": 21,
    "SYS_RESOURCE": 24,
    "PERFMON": 38,
    "BPF": 39,
}


def runtime_flags() -> list[str]:
    """How these machines run containers (scripts/image.sh builds the same way): runc, as
    crun refuses their hybrid cgroup layout; and limits no higher than ours, as podman's
    defaults need CAP_SYS_RESOURCE, which root here does not hold (processes: at most 32768,
    as higher ones were refused here)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return [
        "--runtime=runc",
        f"--ulimit=nofile={nofile}:{nofile}",
        f"--ulimit=nproc={nproc}:{nproc}",
    ]


def bounding_caps() -> set[str]:
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapBnd:")
    )
    mask = int(line.split()[1], 16)
    return {name for name, bit in CAPS.items() if mask >> bit & 1}


def podman_run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` with no network; the container is removed even when it hangs."""
    name = f"slipstream-image-test-{uuid.uuid4().hex[:8]}"
    cmd = ["podman", "run", "--rm", f"--name={name}", "--network=none", "--pull=never"]
    try:
        return subprocess.run(
            [*cmd, *runtime_flags(), *args], capture_output=True, text=True, timeout=timeout
        )
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", "--ignore", name], capture_output=True)


def image_python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return podman_run(*flags, "--entrypoint=python3", IMAGE, "-c", code)


def manifest_containers() -> list[tuple[str, dict, dict, dict]]:
    """(file:container, pod spec, container, volumes by name) of each container that runs
    the image in deploy/base/."""
    found = []
    for path in sorted((ROOT / "deploy" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or "template" not in doc.get("spec", {}):
                continue
            pod = doc["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod.get("initContainers", []) + pod["containers"]:
                if c["image"] == MANIFEST_IMAGE:
                    found.append((f"{path.name}:{c['name']}", pod, c, volumes))
    return found


def security_flags(pod: dict, container: dict) -> list[str]:
    """podman's flags for what the pod's and the container's securityContext say."""
    flags = []
    pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
    user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    if user is not None:
        flags.append(f"--user={user}")
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    caps = ctx.get("capabilities", {})
    if "ALL" in caps.get("drop", []):
        flags.append("--cap-drop=all")
    # A capability outside our own bounding set cannot be given (SYS_RESOURCE on these
    # machines: the agent wants it only for locked memory on kernels before 5.11).
    held = bounding_caps()
    flags += [f"--cap-add={c}" for c in caps.get("add", []) if c in held]
    return flags


def read_only_host_mounts(container: dict, volumes: dict) -> list[str]:
    """-v for each read-only hostPath mount (the agent's /lib/modules and /usr/src)."""
    flags = []
    for m in container.get("volumeMounts", []):
        host = volumes[m["name"]].get("hostPath")
        if host and m.get("readOnly"):
            flags.append(f"-v={host['path']}:{m['mountPath']}:ro")
    return flags


@pytest.fixture(scope="module", autouse=True)
def _image_built() -> None:
    res = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True)
    if res.returncode != 0:
        pytest.fail(f"no image {IMAGE}: `make image` builds it (`make image-test` does both)")


def test_entrypoint_is_slipstream_without_a_shell():
    out = subprocess.run(
        ["podman", "image", "inspect", IMAGE], capture_output=True, text=True, check=True
    ).stdout
    config = json.loads(out)[0]["Config"]
    assert config["Entrypoint"] == ["slipstream"]
    path = next(e for e in config["Env"] if e.startswith("PATH="))
    assert path.startswith("PATH=/opt/slipstream/bin:")

    res = podman_run(IMAGE, "agent", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: slipstream agent")
    assert "--node NODE" in res.stdout


@pytest.mark.parametrize(
    "where,pod,container,volumes", [pytest.param(*m, id=m[0]) for m in manifest_containers()]
)
def test_manifest_command_runs_as_the_manifest_says(where, pod, container, volumes):
    """The command the manifest gives (in place of the entrypoint, looked up on the image's
    PATH) exists, as the manifest's user, capabilities and read-only root."""
    command = container["command"]
    words = [command[0]]
    for arg in command[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    res = podman_run(
        *security_flags(pod, container),
        f"--entrypoint={command[0]}",
        IMAGE,
        *words[1:],
        "--help",
    )
    assert res.returncode == 0, f"{where}: {' '.join(words)} --help: {res.stderr}"
    assert res.stdout.startswith(f"usage: {' '.join(words)}"), res.stdout[:200]


def test_installed_copy_finds_the_programs_of_this_tree():
    """A wheel install, not an editable one: bpf/ is package data in site-packages, and it
    is this tree's (a stale image fails here: rebuild it)."""
    code = (
        "import json, os, importlib.metadata as md; "
        "from agent.node.datapath import loader; d = loader.packaged_bpf_dir(); "
        "print(json.dumps({'dir': d, 'editable': md.distribution('slipstream')"
        ".read_text('direct_url.json'), 'files': {f: open(os.path.join(d, f), 'rb').read()"
        ".hex() for f in sorted(os.listdir(d)) if f.endswith(('.c', '.h'))}}))"
    )
    res = image_python(code)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found["dir"] == f"{SITE}/bpf"
    assert found["editable"] is None
    expected = {f"{p}.c" for p in abi.PROGRAMS} | {"mesh.h"}
    assert expected <= set(found["files"])
    for name, content in found["files"].items():
        ours = (ROOT / "bpf" / name).read_bytes()
        assert hashlib.sha256(bytes.fromhex(content)).digest() == hashlib.sha256(ours).digest(), (
            f"bpf/{name} in {IMAGE} is not this tree's: rebuild the image (make image)"
        )


def test_programs_compile_and_load_in_the_image_as_the_daemonset_runs_it():
    """bcc in the image compiles every program against the host's kernel headers, mounted as
    the DaemonSet mounts them, checks the ABI mirror and loads them (nothing is attached)
    with the agent's capabilities only."""
    build = Path(f"/lib/modules/{os.uname().release}/build")
    assert build.exists(), f"{build} is missing: `make setup` links Debian's headers there"
    ((_, pod, agent, volumes),) = [m for m in manifest_containers() if m[0] == "agent.yaml:agent"]
    mounts = read_only_host_mounts(agent, volumes)
    assert "-v=/lib/modules:/lib/modules:ro" in mounts and "-v=/usr/src:/usr/src:ro" in mounts
    code = (
        "import json; from agent.node.datapath.loader import Programs; "
        "p = Programs(); print(json.dumps(sorted(p.programs))); p.close()"
    )
    res = image_python(code, *security_flags(pod, agent), *mounts)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.splitlines()[-1]) == sorted(abi.PROGRAMS)
