"""The compiled capture programs: they load, their config is what Python wrote, and a header
that no longer matches the Python mirror stops the agent with the field named."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from agent.node.datapath import abi
from agent.node.datapath.loader import Programs, packaged_bpf_dir


def test_programs_load_with_the_config_python_wrote():
    progs = Programs()
    try:
        assert set(progs.programs) == set(abi.PROGRAMS)
        assert bytes(progs.config()) == bytes(abi.default_config())
        assert progs.counters() == dict.fromkeys((f[0] for f in abi.MeshCounters._fields_), 0)
    finally:
        progs.close()


@pytest.fixture
def skewed_bpf(tmp_path):
    """bpf/ with two fields of struct mesh_config swapped, as an edit that forgot the mirror."""
    d = tmp_path / "bpf"
    shutil.copytree(packaged_bpf_dir(), d)
    header = (d / "mesh.h").read_text()
    swapped = (
        header.replace("\t__u16 outbound_port;", "\t__u16 __swap;")
        .replace("\t__u16 inbound_port;", "\t__u16 outbound_port;")
        .replace("\t__u16 __swap;", "\t__u16 inbound_port;")
    )
    assert swapped != header
    (d / "mesh.h").write_text(swapped)
    return d


def test_a_header_that_differs_from_the_mirror_is_refused(skewed_bpf):
    with pytest.raises(
        abi.AbiError, match=r"field 2 is 'inbound_port' in the program but 'outbound_port'"
    ):
        Programs(str(skewed_bpf))


def test_the_agent_refuses_to_start_and_names_the_field(skewed_bpf, tmp_path):
    (tmp_path / "objects").mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "agent",
            "--node",
            "n1",
            "--source",
            f"file:{tmp_path / 'objects'}",
            "--admin",
            "127.0.0.1:0",
            "--ready",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={"SLIPSTREAM_BPF_DIR": str(skewed_bpf), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "map mesh_config" in res.stderr and "'inbound_port' in the program" in res.stderr
    assert "Traceback" not in res.stderr
