"""The lab API server inside a lab's node namespace and on the machine's 127.0.0.1 at once.

One process, two listeners (`NETNS@HOST:PORT`): kubectl on the machine and a
client inside the node's namespace see the same objects.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from agent.lab.model import node_netns
from tests.functional.apikit import ApiServerProc, free_port

MANIFEST = """
apiVersion: slipstream.dev/v1alpha1
kind: Lab
metadata: {name: x}
spec:
  nodes: [n1]
  mesh: {enabled: false}
"""


@pytest.mark.timeout(120)
def test_one_server_answers_on_the_machine_and_inside_a_node(make_lab, tmp_path) -> None:
    lab = make_lab(MANIFEST)
    ns = node_netns(lab.name, "n1")
    inner = free_port()
    srv = ApiServerProc(tmp_path, "--listen", f"{ns}@127.0.0.1:{inner}")
    srv.start()
    try:
        assert (
            srv.request(
                "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "seen"}}
            )[0]
            == 201
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-sS", "--cacert", srv.ca,
             "-H", f"Authorization: Bearer {srv.token}",
             f"https://127.0.0.1:{inner}/api/v1/namespaces/default/configmaps/seen"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["metadata"]["name"] == "seen"
        # The machine's namespace has no listener on that port: it really is inside the node.
        assert srv.request("GET", "/readyz", auth=False)[0] == 200
        probe = subprocess.run(
            ["curl", "-sS", "-k", f"https://127.0.0.1:{inner}/readyz"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert probe.returncode != 0
    finally:
        srv.stop()
