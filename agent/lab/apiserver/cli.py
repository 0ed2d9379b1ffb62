"""`slipstream lab apiserver`: argument parsing for the lab's Kubernetes API server."""

from __future__ import annotations

import argparse

from .launch import Options, run
from .server import Listen


def register(cmds: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser(
        "apiserver",
        parents=parents,
        help="serve the Kubernetes API of a lab (kubectl and every component talk to it)",
        description="Serve a Kubernetes API over HTTPS from a state file, and write a kubeconfig "
        "(printed on start) whose admin token kubectl can use: "
        "KUBECONFIG=$(...) kubectl get pods -A -o wide",
    )
    p.add_argument("--state", required=True, metavar="FILE", help="state file (created if missing)")
    p.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="[NETNS@]HOST:PORT",
        help="listen here (repeatable); NETNS@ listens inside that network namespace",
    )
    p.add_argument("--cert-dir", required=True, metavar="DIR", help="CA, certificate, admin token")
    p.add_argument("--kubeconfig", default="", metavar="FILE", help="default: CERT_DIR/kubeconfig")
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="FILE|DIR",
        help="apply these manifests at start (CRDs first); repeatable",
    )
    p.add_argument(
        "--token-auth-file",
        default="",
        metavar="FILE",
        help='static tokens, one per line: token,user,uid,"group1,group2"',
    )
    p.add_argument(
        "--service-cidr", default="10.96.0.0/16", help="cluster IPs (default %(default)s)"
    )
    p.add_argument(
        "--advertise", default="", metavar="HOST:PORT", help="address the lab's pods use"
    )
    p.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="watch bookmarks this often (default %(default)s)",
    )
    p.add_argument(
        "--history",
        type=int,
        default=10000,
        metavar="EVENTS",
        help="events kept for watches from an older version (default %(default)s)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run(
        Options(
            state=args.state,
            listens=[Listen.parse(x) for x in args.listen],
            cert_dir=args.cert_dir,
            kubeconfig=args.kubeconfig,
            preload=args.preload,
            token_auth_file=args.token_auth_file,
            service_cidr=args.service_cidr,
            bookmark_interval=args.bookmark_interval,
            history=args.history,
            advertise=args.advertise,
        )
    )
