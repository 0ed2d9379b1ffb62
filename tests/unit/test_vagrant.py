"""vagrant/ without a VM: the Vagrantfile parses (`ruby -c`), evaluates to the configuration the
VM needs in both its modes (the public box, and the local box with qemu user networking only),
provisions with the repository's own scripts/setup.sh, and `vagrant validate` accepts it where
vagrant is installed. `make vm` (vagrant/check.sh) is the check with a VM; it is not run here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.required import program

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"

# Evaluates a Vagrantfile against a recorder instead of Vagrant: every `config.x.y(...)` call
# and `config.x.y = v` assignment, nested by block, printed as JSON.
RECORDER = r"""
require "json"
class Rec
  attr_reader :calls
  def initialize
    @calls = []
  end
  def method_missing(name, *args, **kw, &blk)
    if name.to_s.end_with?("=")
      @calls << { "set" => name.to_s.chomp("="), "value" => args.first }
      return args.first
    end
    sub = Rec.new
    blk.call(sub) if blk
    @calls << { "call" => name.to_s, "args" => args, "kw" => kw, "inner" => sub.calls }
    sub
  end
  def respond_to_missing?(*)
    true
  end
end
module Vagrant
  def self.configure(_version)
    $config = Rec.new
    yield $config
  end
end
load ARGV[0]
puts JSON.generate($config.calls)
"""


def ruby() -> str:
    return program("ruby")


def flatten(calls: list[dict]) -> list[dict]:
    out = []
    for c in calls:
        out.append(c)
        out.extend(flatten(c.get("inner", [])))
    return out


def evaluate(tmp_path: Path, **env: str) -> list[dict]:
    script = tmp_path / "recorder.rb"
    script.write_text(RECORDER)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    res = subprocess.run(
        [ruby(), str(script), str(VAGRANTFILE)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=VAGRANT_DIR,
    )
    assert res.returncode == 0, res.stderr
    return flatten(json.loads(res.stdout))


def settings(calls: list[dict]) -> dict[str, object]:
    return {c["set"]: c["value"] for c in calls if "set" in c}


def test_the_vagrantfile_is_valid_ruby():
    res = subprocess.run([ruby(), "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


def test_provisioning_syncs_the_repository_and_runs_its_own_setup(tmp_path):
    for env in ({}, {"SLIPSTREAM_VAGRANT_LOCAL": "1"}):
        calls = evaluate(tmp_path, **env)
        synced = [c for c in calls if c.get("call") == "synced_folder"]
        repo = [c for c in synced if c["args"] == [str(REPO), "/slipstream"]]
        assert len(repo) == 1, synced
        assert repo[0]["kw"]["type"] == "rsync"
        excluded = repo[0]["kw"]["rsync__exclude"]
        for artefact in (".git", ".venv/", ".vm/", "build/", "*.so"):
            assert artefact in excluded, artefact
        provisioners = [c for c in calls if c.get("call") == "provision"]
        shell = [c["kw"]["path"] for c in provisioners if "path" in c["kw"]]
        assert shell == ["provision.sh", "k3s.sh"], shell
    # Run, not mentioned: a command line of provision.sh, not a copy of setup's steps.
    provision = (VAGRANT_DIR / "provision.sh").read_text()
    assert re.search(r"^/slipstream/scripts/setup\.sh$", provision, re.M), provision
    assert "apt-get" not in provision
    k3s = (VAGRANT_DIR / "k3s.sh").read_text()
    assert "kubectl apply -k /slipstream/deploy/overlays/k3s" in k3s
    assert (REPO / "deploy/overlays/k3s/kustomization.yaml").exists()


def test_the_public_box_by_default_and_the_local_box_on_user_networking_only(tmp_path):
    public = settings(evaluate(tmp_path))
    assert public["box"] == "debian/bookworm64"
    assert "mgmt_attach" not in public

    local_calls = evaluate(tmp_path, SLIPSTREAM_VAGRANT_LOCAL="1", SLIPSTREAM_VM_SSH_PORT="2299")
    local = settings(local_calls)
    assert local["box"] == "slipstream/bookworm-local"
    # libvirt manages no NIC: the only one is qemu's user network, SSH on 127.0.0.1 only.
    assert local["mgmt_attach"] is False
    assert local["driver"] == "qemu"
    args = [a["value"] for a in local["qemu_args"]]
    assert "user,id=unet,hostfwd=tcp:127.0.0.1:2299-:22" in args
    assert (local["host"], local["port"]) == ("127.0.0.1", 2299)
    assert local["kernel"].endswith("/box/vmlinuz") and local["initrd"].endswith("/initrd.img")
    networks = [c for c in local_calls if c.get("call") == "network"]
    assert networks == [], "no libvirt network, bridge or tap"


def test_vagrant_validates_both_modes(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (make vm installs it)")
    # The local mode names the key box/build.sh makes; validate checks that it exists.
    (tmp_path / "vm/box").mkdir(parents=True)
    (tmp_path / "vm/box/vagrant_key").write_text("")
    local = {"SLIPSTREAM_VAGRANT_LOCAL": "1", "SLIPSTREAM_VM_DIR": str(tmp_path / "vm")}
    for env in ({}, local):
        res = subprocess.run(
            [vagrant, "validate"],
            capture_output=True,
            text=True,
            cwd=VAGRANT_DIR,
            env={
                **os.environ,
                "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
                "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
                "VAGRANT_CHECKPOINT_DISABLE": "1",
                **env,
            },
            timeout=50,
        )
        assert res.returncode == 0, (env, res.stdout, res.stderr)
