"""A plain `pip install .` into a fresh virtualenv gives an agent that finds and compiles its
eBPF programs (bpf/ is package data), started from elsewhere than the checkout.

The new virtualenv sees the system's packages, as a user's would on a node (bcc comes from
python3-bpfcc, which pip cannot install); pip fetches the rest from the configured index."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)  # pip builds and installs: minutes on a loaded machine

CHECKOUT = Path(__file__).resolve().parents[2]
SHIPPED = ("agent", "bpf", "gateway", "pyproject.toml", "README.md")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in SHIPPED:
        path = CHECKOUT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy(path, src / name)
    venv = root / "venv"
    # The system python (where bcc lives), not the development venv's: a user's fresh venv.
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True
    )
    subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", str(src)],
        check=True,
        cwd=root,
        capture_output=True,
    )
    return venv


def test_the_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    res = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent, bpf; print(agent.__file__, bpf.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    for path in res.stdout.split():
        assert path.startswith(str(venv)), path
    listed = sorted(p.name for p in Path(res.stdout.split()[1]).parent.iterdir())
    assert "mesh.h" in listed and any(n.startswith("capture_") and n.endswith(".c") for n in listed)


def test_the_installed_agent_compiles_its_programs_and_becomes_ready(venv, tmp_path):
    (tmp_path / "objects").mkdir()
    ready = free_port()
    agent = subprocess.Popen(
        [
            str(venv / "bin/slipstream"),
            "agent",
            "--node",
            "n1",
            "--source",
            f"file:{tmp_path / 'objects'}",
            "--admin",
            "127.0.0.1:0",
            "--ready",
            f"127.0.0.1:{ready}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},  # no SLIPSTREAM_BPF_DIR: the packaged programs
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answer = None
        deadline = time.monotonic() + 45
        while answer is None and agent.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ready}/healthz/ready") as r:
                    answer = r.status
            except OSError:
                time.sleep(0.2)
        assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
        assert answer == 200
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=20)
    assert "Traceback" not in err, err
