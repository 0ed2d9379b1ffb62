"""`slipstream demo`: bring up the demo lab, show what runs and how to look, tear down on Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.common.manifest import load_paths, load_text
from agent.state.enrollment import ENROLLED

from .cli import cmd_status, table
from .errors import LabError
from .lab import Lab
from .mesh import workloads

DEMO_MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "lab" / "demo.yaml"
DEMO_POLICY = DEMO_MANIFEST.with_name("demo-policy.yaml")
FOLLOW = [("shop", "frontend"), ("legacy", "old-client"), ("edge", "visitor")]


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="run the demo lab until Ctrl-C",
        description="Bring up a two-node lab from the shipped demo manifests, show what "
        "runs and how to look at it, and tear it all down on Ctrl-C.",
    )
    p.add_argument(
        "-f", "--filename", default=str(DEMO_MANIFEST), help="demo manifests (default: %(default)s)"
    )
    p.add_argument("--name", default="demo", help="lab name (default: %(default)s)")
    p.add_argument(
        "--duration", type=float, default=0, help="stop by itself after this many seconds"
    )
    p.add_argument(
        "--policy",
        default=str(DEMO_POLICY),
        help="authorization policy applied live (default: %(default)s)",
    )
    p.add_argument(
        "--policy-after",
        type=float,
        default=10,
        metavar="SECONDS",
        help="apply it this long after the calls start (default %(default)s; negative: never)",
    )
    p.set_defaults(func=cmd_demo)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop)
    lab = Lab(args.name)
    if lab.down():
        print(f"(removed a lab {lab.name!r} left from an earlier run)")
    path = os.path.abspath(args.filename)
    # $(MANIFEST_DIR) lets a pod name a file shipped next to the manifest (the gateway's config)
    text = Path(path).read_text().replace("$(MANIFEST_DIR)", os.path.dirname(path))
    docs = load_text(text, path)
    print(f"Bringing up lab {lab.name!r} from {args.filename} ...")
    lab.up(docs)
    try:
        # Into the mesh as on a real cluster: label the namespace; its running pods are
        # enrolled without a restart.
        _kubectl(lab, "label", "namespace", "shop", "slipstream.dev/dataplane-mode=ambient")
        _wait_enrolled(lab, "shop")
        print()
        cmd_status(argparse.Namespace(name=lab.name, output="table"))
        _print_enrollment(lab)
        me = f"--name {lab.name}"
        print(f"""
Look around (in another terminal, as root):
  export KUBECONFIG=$(slipstream lab kubeconfig {me})
  kubectl get pods -A -o wide                 pods, their IPs and nodes (the lab's API server)
  kubectl label namespace legacy slipstream.dev/dataplane-mode=ambient
                                                enroll a namespace's running pods
  slipstream lab logs -n shop frontend {me}   the client's calls, as it sees them
  slipstream lab logs -n shop backend-1 {me}  the server's view: which client address it saw
  slipstream lab exec -n shop frontend {me} -- ip addr
  slipstream lab exec --node node-a {me} -- curl -s localhost:15000/config_dump
                                                the agent's view: cluster, workloads, counters
  slipstream lab exec -n shop frontend {me} -- tc filter show dev eth0 egress
                                                the capture program inside an enrolled pod
  slipstream lab logs --node node-b {me}      an agent's log, with its access log
  slipstream ca roots list --root-dir {lab.dir}/ca/roots
                                                the mesh CA's roots (add/activate/retire)
  slipstream policy check {me} --from legacy/old-client --plaintext --to shop/backend-1:8080
                                                what policy decides for a connection, and why
  slipstream lab exec -n edge gateway {me} -- curl -s localhost:9901/metrics
                                                the gateway's metrics (requests, rate limits, cache)

The clients' calls follow, with each agent's access-log record of what it captured.
shop/frontend is in the mesh: it calls the Service `backend`; node-a's agent picks a
backend and carries the call to node-b over HBONE (HTTP/2 CONNECT in mTLS 1.3), and
node-b's agent logs both SPIFFE identities. legacy/old-client is outside the mesh: its
plaintext is accepted at the backends (PERMISSIVE) and logged without an identity.
edge/visitor calls the API gateway (edge/gateway, config deploy/lab/demo-gateway.yaml):
/api needs an API key and allows 5 calls per 10 s (then 429), /catalog is cached
(MISS, then HIT). The gateway reaches the backends over HBONE with its own identity.
After {args.policy_after:g} s an AuthorizationPolicy is applied live: from then on only
the frontend's and the gateway's identities get in, and node-b's agent logs the rule
that decided.
(Ctrl-C tears the lab down.)
""")
        _follow(lab, args.duration, lambda: _apply_policy(lab, args.policy), args.policy_after)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nTearing down the demo lab ...")
        lab.down()
        print("Done: no namespace or process of the demo is left.")
    return 0


def _kubectl(lab: Lab, *args: str) -> None:
    """Run the machine's kubectl against the lab, printing the command and its answer."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise LabError("the demo needs kubectl: run scripts/setup.sh (kubernetes-client)")
    print(f"$ kubectl {' '.join(args)}")
    res = subprocess.run(
        [kubectl, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": lab.kubeconfig()},
        check=False,
    )
    if res.returncode != 0:
        raise LabError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    print(textwrap_indent(res.stdout))


def textwrap_indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())


def _wait_enrolled(lab: Lab, namespace: str, timeout: float = 30.0) -> None:
    want = {f"{p.namespace}/{p.name}": p.node for p in lab.load().pods.values()}
    want = {k: n for k, n in want.items() if k.startswith(namespace + "/")}
    deadline = time.monotonic() + timeout
    while want and time.monotonic() < deadline:
        for node in set(want.values()):
            try:
                seen = workloads(lab.load(), node)
            except (OSError, ValueError):
                continue
            want = {k: n for k, n in want.items() if seen.get(k, {}).get("state") != ENROLLED}
        time.sleep(0.05)
    if want:
        raise LabError(f"not enrolled after the label: {', '.join(sorted(want))}")


def _print_enrollment(lab: Lab) -> None:
    rows = [["NODE", "POD", "CAPTURE", "WHY"]]
    for node in ("node-a", "node-b"):
        for w in workloads(lab.load(), node).values():
            rows.append([node, f"{w['namespace']}/{w['name']}", str(w["state"]), str(w["reason"])])
    print()
    print(table(rows))
    print("\nThe mesh CA issued (each node got only its own pods' identities):")
    issued = [["NODE", "IDENTITY", "SERIAL", "VALID UNTIL"]]
    with open(f"{lab.dir}/logs/ca.log") as f:
        for line in f:
            rec = _json(line)
            if rec.get("msg") == "certificate issued":
                issued.append([rec["node"], rec["identity"], rec["serial"][:12], rec["notAfter"]])
    print(table(issued))


def _json(line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _access_line(line: str) -> str | None:
    rec = _json(line)
    if rec.get("scope") != "access":
        return None
    how = rec.get("transport") or "?"
    who = rec.get("src_workload") or rec["src"]
    whom = rec.get("dst_workload") or rec["dst"]
    ids = ""
    if rec.get("src_identity") or rec.get("dst_identity"):
        ids = f"\n      {rec.get('src_identity') or '(no identity)'} -> {rec.get('dst_identity')}"
    authz = rec.get("authz")
    policy = f"\n      policy: {authz['reason']}" if isinstance(authz, dict) else ""
    return (
        f"{rec['direction']} over {how}: {who} -> {whom} via {rec.get('upstream') or rec['dst']}: "
        f"{rec['outcome']}, {rec['bytes_sent']} B sent, {rec['bytes_received']} B back, "
        f"{rec['duration_ms']:.1f} ms{ids}{policy}"
    )


def _apply_policy(lab: Lab, path: str) -> None:
    docs = load_paths([path])
    print(f"\n=== Applying {path} live:")
    for doc in docs:
        meta = doc.body.get("metadata", {})
        print(f"    {doc.body.get('kind')} {meta.get('namespace')}/{meta.get('name')}")
    _kubectl(lab, "apply", "-f", path)
    print(
        "    Only shop/frontend and edge/gateway may now reach the backends: "
        "watch legacy/old-client's calls.\n"
    )


def _follow(
    lab: Lab, duration: float, at_time: Callable[[], None] | None = None, after: float = -1
) -> None:
    """Print the clients' output and the agents' access log; run `at_time` once, `after` s in."""
    paths: dict[str, str] = {}
    for ns, pod in FOLLOW:
        for path in lab.log_paths(pod, ns):
            paths[path] = f"{ns}/{pod}"
    for node in ("node-a", "node-b"):
        paths[lab.agent_log_path(node)] = f"agent {node}"
    offsets = dict.fromkeys(paths, 0)
    start = time.monotonic()
    end = start + duration if duration else None
    while end is None or time.monotonic() < end:
        if at_time is not None and 0 <= after <= time.monotonic() - start:
            at_time()
            at_time = None
        for path, who in paths.items():
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                f.seek(offsets[path])
                data = f.read()
            offsets[path] += len(data)
            for line in data.decode(errors="replace").splitlines():
                if who.startswith("agent"):
                    shown = _access_line(line)
                    if shown:
                        print(f"[{who}] captured {shown}")
                elif not line.startswith("---"):
                    print(f"[{who}] {line}")
        sys.stdout.flush()
        time.sleep(0.5)
