"""The CNI install step on real directories: chained after the primary's entries (untouched),
a .conf turned into a .conflist, re-chained when the primary rewrites its file, and the
primary's bytes back exactly after uninstall."""

import asyncio
import json
import os

import pytest

from agent.cni import conflist
from agent.cni.install import Installer, daemonset_removal, removed
from agent.common.errors import SlipstreamError
from agent.sources.kubeclient import KubeError

ENTRY = {"type": "slipstream-cni", "socket": "/s.sock", "timeout": 30}

# A primary's file as a CNI would write it: its own key order, spacing and trailing bytes.
CALICO = b"""{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes",
     "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
"""
FLANNEL_CONF = (
    b'{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}'
)


@pytest.fixture
def dirs(tmp_path):
    for d in ("bin", "net.d", "state"):
        (tmp_path / d).mkdir()
    inst = Installer(str(tmp_path / "bin"), str(tmp_path / "net.d"), str(tmp_path / "state"), ENTRY)
    return tmp_path, inst


def files(path):
    return sorted(p for p in os.listdir(path) if not p.startswith("."))


def test_a_conflist_gets_our_entry_last_and_back_exactly(dirs):
    tmp, inst = dirs
    (tmp / "net.d" / "10-calico.conflist").write_bytes(CALICO)
    (tmp / "net.d" / "99-loopback.conf").write_bytes(b'{"cniVersion":"0.3.1","type":"loopback"}')
    assert inst.ensure() == "chained into 10-calico.conflist"
    doc = json.loads((tmp / "net.d" / "10-calico.conflist").read_text())
    assert doc["plugins"][:3] == json.loads(CALICO)["plugins"], "the primary's entries untouched"
    assert doc["plugins"][3] == ENTRY and doc["name"] == "k8s-pod-network"
    assert os.access(tmp / "bin" / "slipstream-cni", os.X_OK)
    assert (tmp / "net.d" / "99-loopback.conf").read_bytes().startswith(b'{"cniVersion"')
    assert inst.ensure() == "chained in 10-calico.conflist", "idempotent"
    assert inst.uninstall() == "restored 10-calico.conflist"
    assert (tmp / "net.d" / "10-calico.conflist").read_bytes() == CALICO, "byte for byte"
    assert files(tmp / "net.d") == ["10-calico.conflist", "99-loopback.conf"]
    assert files(tmp / "bin") == [] and files(tmp / "state") == []


def test_a_single_plugin_conf_becomes_a_conflist_and_comes_back(dirs):
    tmp, inst = dirs
    (tmp / "net.d" / "10-flannel.conf").write_bytes(FLANNEL_CONF)
    assert inst.ensure() == "chained into 10-flannel.conflist"
    assert files(tmp / "net.d") == ["10-flannel.conflist"]
    doc = json.loads((tmp / "net.d" / "10-flannel.conflist").read_text())
    assert (doc["cniVersion"], doc["name"]) == ("0.3.1", "cbr0")
    assert doc["plugins"] == [
        {"type": "flannel", "delegate": {"isDefaultGateway": True}},
        ENTRY,
    ]
    inst.uninstall()
    assert files(tmp / "net.d") == ["10-flannel.conf"]
    assert (tmp / "net.d" / "10-flannel.conf").read_bytes() == FLANNEL_CONF


def test_rechained_when_the_primary_rewrites_its_file(dirs):
    tmp, inst = dirs
    path = tmp / "net.d" / "10-calico.conflist"
    path.write_bytes(CALICO)
    inst.ensure()
    # After a reboot the primary writes its file again, without us: new pods would bypass.
    rewritten = CALICO.replace(b'"info"', b'"debug"')
    path.write_bytes(rewritten)
    assert not conflist.is_chained(path.read_text(), path.name)
    assert inst.ensure() == "chained into 10-calico.conflist"
    assert conflist.is_chained(path.read_text(), path.name)
    # Uninstall restores the primary's latest version, not the first one seen.
    inst.uninstall()
    assert path.read_bytes() == rewritten


def test_a_primary_that_rewrote_its_file_with_us_in_it_loses_only_our_entry(dirs):
    tmp, inst = dirs
    path = tmp / "net.d" / "10-calico.conflist"
    path.write_bytes(CALICO)
    inst.ensure()
    doc = json.loads(path.read_text())
    doc["plugins"][0]["log_level"] = "warning"  # the primary changed something of its own
    path.write_text(json.dumps(doc))
    assert inst.uninstall() == "took slipstream-cni out of 10-calico.conflist"
    after = json.loads(path.read_text())
    assert after["plugins"][0]["log_level"] == "warning"
    assert [p["type"] for p in after["plugins"]] == ["calico", "portmap", "bandwidth"]


def test_no_primary_yet_waits_and_a_broken_one_is_named(dirs):
    tmp, inst = dirs
    assert inst.ensure().startswith("waiting: no CNI configuration")
    (tmp / "net.d" / "10-x.conflist").write_text("{not json")
    with pytest.raises(SlipstreamError, match=r"10-x\.conflist: not JSON"):
        inst.ensure()
    (tmp / "net.d" / "10-x.conflist").write_text('{"name": "x", "plugins": {}}')
    with pytest.raises(SlipstreamError, match="plugins list"):
        inst.ensure()


def test_the_runtime_picks_the_first_file_in_lexical_order():
    names = ["99-loopback.conf", "10-calico.conflist", ".hidden.conflist", "README", "05-a.json"]
    assert conflist.primary_file(names) == "05-a.json"
    assert conflist.primary_file(["README"]) is None


def test_a_stopping_install_step_goes_with_its_daemonset_and_stays_otherwise():
    assert removed(None) == "its DaemonSet is gone"
    deleting = {"metadata": {"name": "a", "deletionTimestamp": "2026-12-08T00:00:00Z"}}
    assert removed(deleting) == "its DaemonSet is being deleted"
    assert removed({"metadata": {"name": "a"}}) == "", "an upgrade or a drain: stay"

    async def unreachable():
        raise KubeError("GET /apis/apps/v1/...: connection refused")

    ask = daemonset_removal(unreachable, "slipstream-system/slipstream-agent")
    assert asyncio.run(ask()) == "", "cannot ask: stay (new pods wait, never bypass)"
