"""The DaemonSet's CNI install step when it stops (`slipstream cni install
--remove-with-daemonset`), against the lab's API server: with its DaemonSet still there (an
upgrade, a node drain) slipstream-cni stays chained; with the DaemonSet deleted (`kubectl
delete -k deploy/`) the primary's file is put back byte for byte and the plugin removed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from agent.cni.conflist import PLUGIN_TYPE
from tests.functional.apikit import ApiServerProc

PRIMARY = b'{"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]}\n'
DAEMONSET = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: slipstream-agent, namespace: default}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec: {containers: [{name: c, image: x}]}
"""


@pytest.fixture
def api(tmp_path):
    srv = ApiServerProc(tmp_path / "api").start()
    yield srv
    srv.stop()


def kubectl(api: ApiServerProc, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        ["kubectl", "--kubeconfig", api.kubeconfig, *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={"HOME": str(api.home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def install_and_stop(api: ApiServerProc, tmp) -> str:
    """Run the install step until it has made its first pass (the plugin chained), stop it
    as the kubelet does (SIGTERM), and return its log."""
    log = tmp / "install.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "cni", "install", "--cni-bin-dir", str(tmp / "bin"),
             "--cni-conf-dir", str(tmp / "net.d"), "--state-dir", str(tmp / "state"),
             "--remove-with-daemonset", "default/slipstream-agent",
             "--kubeconfig", api.kubeconfig],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "cni install" not in log.read_text():  # its first pass, under its drain handler
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def test_it_stays_for_an_upgrade_and_goes_with_the_daemonset(api, tmp_path):
    (tmp_path / "net.d").mkdir()
    conf = tmp_path / "net.d" / "10-k8s.conflist"
    conf.write_bytes(PRIMARY)
    kubectl(api, "apply", "-f", "-", stdin=DAEMONSET)
    said = install_and_stop(api, tmp_path)
    assert PLUGIN_TYPE.encode() in conf.read_bytes(), said
    assert (tmp_path / "bin" / PLUGIN_TYPE).exists()
    assert "leaving slipstream-cni chained" in said
    kubectl(api, "delete", "daemonset", "slipstream-agent")
    said = install_and_stop(api, tmp_path)
    assert conf.read_bytes() == PRIMARY, said
    assert not (tmp_path / "bin" / PLUGIN_TYPE).exists()
    assert "its DaemonSet is gone" in said
