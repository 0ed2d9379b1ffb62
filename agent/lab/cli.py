"""`slipstream lab ...`: kubectl-like commands over a lab (argument parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import yaml

from agent.common.manifest import load_paths
from agent.state.objects import canonical_kind

from . import kubelet
from .apiserver import cli as apiserver_cli
from .errors import LabError
from .lab import DEFAULT_ROOT, Lab


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser(
        "lab",
        parents=parents,
        help="a cluster in network namespaces on this machine",
        description="Build and use a Kubernetes-like cluster made of network namespaces, "
        "from ordinary manifests. Needs root.",
    )
    cmds = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, parents=parents, help=helptext, description=helptext)
        p.add_argument(
            "--name", help="lab name (default: $SLIPSTREAM_LAB, or the only lab that is up)"
        )
        return p

    p = add("up", "build a lab from manifests (a Lab object plus Namespaces, Pods, Services...)")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="manifest file or directory, or - for standard input; repeatable",
    )
    p.set_defaults(func=cmd_up)

    p = add("apply", "create or change objects on a running lab")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE")
    p.set_defaults(func=cmd_apply)

    p = add("delete", "delete an object (a Namespace takes its objects with it)")
    p.add_argument("kind")
    p.add_argument("object_name", metavar="NAME")
    p.add_argument("-n", "--namespace", default="default")
    p.set_defaults(func=cmd_delete)

    p = add("get", "show objects with their live fields")
    p.add_argument("kind")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    p.set_defaults(func=cmd_get)

    p = add("exec", "run a command inside a pod's (or node's) namespaces")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--node", help="run in this node's namespace instead of a pod's")
    p.add_argument("pod", nargs="?")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_exec)

    p = add("logs", "print a pod's container output (or a node agent's log)")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-c", "--container")
    p.add_argument("--node", help="print the agent log of this node instead")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("pod", nargs="?")
    p.set_defaults(func=cmd_logs)

    p = add("status", "nodes, pods and mesh processes of a lab")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_status)

    p = add("agent", "stop, start or restart a node's agent")
    p.add_argument("action", choices=["start", "stop", "restart"])
    p.add_argument("node")
    p.add_argument("--kill", action="store_true", help="stop with SIGKILL (a crash), not SIGTERM")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="start the agent with --cleanup: when it stops it removes capture from its pods",
    )
    p.set_defaults(func=cmd_agent)

    apiserver_cli.register(cmds, parents)

    p = add("kubeconfig", "print the path of the lab's kubeconfig (for kubectl on this machine)")
    p.set_defaults(func=cmd_kubeconfig)

    p = cmds.add_parser(
        "kubelet",
        parents=parents,
        help="(started by `lab up`) run the lab's pods as its API server says",
        description="The lab's kubelet: watches the lab's API server, runs and stops pods, "
        "writes their status and the components' file source. `lab up` starts it.",
    )
    p.add_argument("--name", required=True)
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.set_defaults(func=cmd_kubelet)

    p = add("down", "remove everything the lab made")
    p.add_argument("--all", action="store_true", help="take down every lab on this machine")
    p.set_defaults(func=cmd_down)


# ------------------------------------------------------------------ helpers


def resolve(args: argparse.Namespace) -> Lab:
    if args.name:
        return Lab(args.name)
    env = os.environ.get("SLIPSTREAM_LAB")
    if env:
        return Lab(env)
    names = Lab.names(DEFAULT_ROOT)
    if len(names) == 1:
        return Lab(names[0])
    if not names:
        raise LabError("no lab is up (start one with `slipstream lab up -f FILE`)")
    raise LabError(f"several labs are up ({', '.join(names)}): choose one with --name")


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    try:
        secs = int(
            time.time() - time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) + time.timezone
        )
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# ------------------------------------------------------------------ commands


def cmd_up(args: argparse.Namespace) -> int:
    docs = load_paths(args.filename)
    name = args.name or os.environ.get("SLIPSTREAM_LAB")
    if not name:
        labs = [d for d in docs if isinstance(d.body, dict) and d.body.get("kind") == "Lab"]
        meta = labs[0].body.get("metadata") if labs else None
        name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str):
        raise LabError("give the lab a name: --name, or metadata.name of the Lab object")
    lab = Lab(name)
    state = lab.up(docs)
    print(f"lab {lab.name} is up: {len(state.nodes)} nodes, {len(state.pods)} pods")
    print(f"  kubeconfig: {lab.kubeconfig()}")
    print(
        f"  try:        KUBECONFIG=$(slipstream lab kubeconfig --name {lab.name}) "
        "kubectl get pods -A -o wide"
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    lab = resolve(args)
    for line in lab.apply(load_paths(args.filename)):
        print(line)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    for line in resolve(args).delete(args.kind, args.object_name, args.namespace):
        print(line)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    lab = resolve(args)
    kind = canonical_kind(args.kind)
    objs = lab.get(kind, None if args.all_namespaces else args.namespace)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
    elif args.output == "yaml":
        print(
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False),
            end="",
        )
    elif not objs:
        print(f"No {kind} objects found.", file=sys.stderr)
    else:
        print(table(_rows(kind, objs, wide=args.output == "wide", all_ns=args.all_namespaces)))
    return 0


def _rows(kind: str, objs: list[dict[str, Any]], *, wide: bool, all_ns: bool) -> list[list[str]]:
    def meta(o: dict[str, Any]) -> dict[str, Any]:
        return o.get("metadata", {})

    ns_col = all_ns and kind != "Namespace"
    if kind == "Pod":
        head = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
    elif kind == "Service":
        head = ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])
    elif kind == "Namespace":
        head = ["NAME", "STATUS", "AGE"] + (["LABELS"] if wide else [])
    elif kind == "Endpoints":
        head = ["NAME", "ENDPOINTS"]
    else:
        head = ["NAME", "AGE"]
    rows = [(["NAMESPACE"] if ns_col else []) + head]
    for o in objs:
        m, spec, status = meta(o), o.get("spec", {}), o.get("status", {})
        age = _age(m.get("creationTimestamp"))
        if kind == "Pod":
            cs = status.get("containerStatuses", [])
            ready = sum(1 for c in cs if c.get("ready"))
            restarts = sum(int(c.get("restartCount", 0)) for c in cs)
            row = [
                m["name"],
                f"{ready}/{len(spec.get('containers', []))}",
                status.get("phase", ""),
                str(restarts),
                age,
            ]
            if wide:
                row += [status.get("podIP", ""), spec.get("nodeName", "")]
        elif kind == "Service":
            ports = ",".join(
                f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", [])
            )
            row = [
                m["name"],
                spec.get("type", "ClusterIP"),
                spec.get("clusterIP", ""),
                ports or "<none>",
                age,
            ]
            if wide:
                row.append(
                    ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
                    or "<none>"
                )
        elif kind == "Namespace":
            row = [m["name"], "Active", age]
            if wide:
                row.append(
                    ",".join(f"{k}={v}" for k, v in (m.get("labels") or {}).items()) or "<none>"
                )
        elif kind == "Endpoints":
            eps = [
                f"{a['ip']}:{p['port']}"
                for s in o["subsets"]
                for a in s["addresses"]
                for p in s["ports"]
            ]
            row = [m["name"], ",".join(eps) or "<none>"]
        else:
            row = [m["name"], age]
        rows.append(([m.get("namespace", "")] if ns_col else []) + row)
    return rows


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.pod == "--":
        args.pod = None
    if args.node is not None and args.pod:
        # argparse took the command's first word for the pod name.
        argv, args.pod = [args.pod, *argv], None
    if not argv:
        raise LabError("give a command after --, e.g. `slipstream lab exec mypod -- ip addr`")
    if args.node is None and not args.pod:
        raise LabError("name a pod (or --node NODE)")
    lab = resolve(args)
    full = lab.exec_argv(argv, pod=args.pod, namespace=args.namespace, node=args.node)
    os.execvp(full[0], full)
    return 127  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    lab = resolve(args)
    if args.node:
        paths = [lab.agent_log_path(args.node)]
    elif args.pod:
        paths = lab.log_paths(args.pod, args.namespace, args.container)
    else:
        raise LabError("name a pod (or --node NODE for its agent)")
    offsets = {}
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        sys.stdout.write(data.decode(errors="replace"))
        offsets[path] = len(data)
    sys.stdout.flush()
    while args.follow:
        time.sleep(0.2)
        for path in paths:
            with open(path, "rb") as f:
                f.seek(offsets[path])
                data = f.read()
            if data:
                offsets[path] += len(data)
                sys.stdout.write(data.decode(errors="replace"))
                sys.stdout.flush()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab = resolve(args)
    st = lab.status()
    if args.output == "json":
        print(json.dumps(st, indent=2))
        return 0
    print(f"lab {st['name']}  (state in {st['dir']})")
    print(
        table(
            [["NODE", "IP", "POD CIDR", "NETNS"]]
            + [[n["name"], n["ip"], n["podCIDR"], n["netns"]] for n in st["nodes"]]
        )
    )
    print()
    print(
        table(
            [["NAMESPACE", "POD", "PHASE", "IP", "NODE"]]
            + [[p["namespace"], p["name"], p["phase"], p["ip"], p["node"]] for p in st["pods"]]
        )
    )
    for p in st["pods"]:
        if p.get("warning"):
            print(f"warning: {p['namespace']}/{p['name']}: {p['warning']}")
    if st["processes"]:
        print()
        print(
            table(
                [["PROCESS", "NODE", "PID", "ALIVE", "LOG"]]
                + [
                    [p["kind"], p["name"], str(p["pid"]), "yes" if p["alive"] else "no", p["log"]]
                    for p in st["processes"]
                ]
            )
        )
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    lab = resolve(args)
    if args.action in ("stop", "restart"):
        lab.stop_agent(args.node, kill=args.kill)
    if args.action in ("start", "restart"):
        lab.start_agent(args.node, cleanup=args.cleanup)
    print(f"agent on {args.node}: {args.action} done")
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    print(resolve(args).kubeconfig())
    return 0


def cmd_kubelet(args: argparse.Namespace) -> int:
    return kubelet.run(args.name, args.root)


def cmd_down(args: argparse.Namespace) -> int:
    labs = [Lab(n) for n in Lab.names(DEFAULT_ROOT)] if args.all else [resolve(args)]
    for lab in labs:
        print(f"lab {lab.name}: {'removed' if lab.down() else 'nothing to remove'}")
    return 0
