"""The demo as a user runs it: it shows calls across nodes; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from agent.lab import net
from agent.lab.lab import Lab
from agent.lab.model import lab_prefix
from tests.lab.labkit import new_lab_name


def test_demo_runs_and_ctrl_c_tears_it_down():
    name = new_lab_name()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--name", name, "--policy-after", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    reader.start()

    def calls(who: str) -> list[str]:
        return [
            ln for ln in list(lines) if ln.startswith(f"[{who}]") and "200 from pod=backend" in ln
        ]

    try:
        deadline = time.monotonic() + 90  # a hang guard, not a speed check
        while not (calls("shop/frontend") and calls("legacy/old-client")):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no successful call shown:\n" + "".join(lines)
            time.sleep(0.2)
        assert "saw-client=10.244.1." in calls("shop/frontend")[0], (
            "backend sees the frontend's pod IP"
        )
        assert any(ln.startswith("agent") and "node-b" in ln for ln in lines), (
            "status lists the agents"
        )
        text = "".join(lines)
        assert "node-b   spiffe://cluster.local/ns/shop/sa/backend" in text, "CA table shown"
        while "[agent node-b] captured inbound over hbone: shop/frontend" not in "".join(lines):
            assert time.monotonic() < deadline, "no HBONE access record:\n" + "".join(lines)
            time.sleep(0.2)
        while "captured inbound over plaintext: legacy/old-client" not in "".join(lines):
            assert time.monotonic() < deadline, "no plaintext record:\n" + "".join(lines)
            time.sleep(0.2)
        # The edge gateway: an API key, a rate limit, a cache hit, all through to the backends.
        gateway_shows = [
            "GET /api/checkout, no API key -> 401",
            "GET /api/checkout, key of demo-user -> 200 ratelimit-remaining=4",
            "GET /api/checkout, key of demo-user -> 429 ratelimit-remaining=0",
            "GET /catalog -> 200 ratelimit-remaining= x-cache-status=MISS",
            "GET /catalog -> 200 ratelimit-remaining= x-cache-status=HIT",
        ]
        while not all(
            any(ln.startswith("[edge/visitor]") and want in ln for ln in list(lines))
            for want in gateway_shows
        ):
            assert time.monotonic() < deadline, "gateway not shown at work:\n" + "".join(lines)
            time.sleep(0.2)
        # The policy goes in live: the legacy client is refused, the frontend let in by a rule.
        deadline = time.monotonic() + 30
        wanted = [
            "policy: denied: no rule of the ALLOW policies shop/backend-from-frontend matches",
            "policy: allowed by ALLOW policy shop/backend-from-frontend rule 0",
        ]
        while True:
            text = "".join(lines)
            after = text.partition("=== Applying ")[2]
            legacy = [ln for ln in after.splitlines() if ln.startswith("[legacy/old-client]")]
            refused = any("error" in ln and "reset" in ln for ln in legacy)
            if after and refused and all(w in after for w in wanted):
                break
            assert time.monotonic() < deadline, "policy not shown at work:\n" + text
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(5)
        assert "Done: no namespace or process of the demo is left.\n" in lines
        assert net.list_netns(lab_prefix(name)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            Lab(name).down()  # killed before it could tear its lab down
        proc.stdout.close()
