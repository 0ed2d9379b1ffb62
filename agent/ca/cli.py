"""`slipstream ca ...`: run the CA, manage its roots, mint node credentials."""

from __future__ import annotations

import argparse
import json
import os
import secrets

from ..admin import parse_addr
from ..errors import SlipstreamError
from ..identity.certs import DEFAULT_TRUST_DOMAIN, parse_duration
from ..runtime import run_main, serve
from ..sources.file import FileSource
from ..state import StateStore, StateUpdater
from .authority import Authority, NodeTokens, RootStore
from .server import CAServer


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser(
        "ca",
        parents=parents,
        help="the mesh certificate authority",
        description="Sign workload certificates for agents, only for workloads on the asking node.",
    )
    cmds = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("serve", parents=parents, help="run the CA on :15012")
    p.add_argument(
        "--root-dir", required=True, help="where the roots live (created on first start)"
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="SOURCE",
        help="cluster objects, to check which node runs which pods: file:DIR",
    )
    p.add_argument(
        "--node-tokens",
        required=True,
        metavar="FILE",
        help="JSON: node name -> SHA-256 hex of its token (see `slipstream ca token`)",
    )
    p.add_argument("--listen", default="0.0.0.0:15012", metavar="ADDR", help="default %(default)s")
    p.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help="identities are spiffe://TRUST_DOMAIN/ns/NS/sa/SA (default %(default)s)",
    )
    p.add_argument(
        "--max-ttl", default="24h", help="longest certificate life (default %(default)s)"
    )
    p.set_defaults(func=cmd_serve)

    p = cmds.add_parser("roots", parents=parents, help="list, add, activate or retire roots")
    p.add_argument(
        "action",
        choices=["list", "add", "activate", "retire"],
        help="add a new root (trusted, not yet signing), activate it (signs from now on), "
        "retire an old one (no longer trusted)",
    )
    p.add_argument("id", nargs="?", help="the root, for activate and retire")
    p.add_argument("--root-dir", required=True, help="the CA's --root-dir")
    p.set_defaults(func=cmd_roots)

    p = cmds.add_parser("token", parents=parents, help="mint a node credential")
    p.add_argument("node", help="the node the token authenticates")
    p.add_argument(
        "--node-tokens", required=True, metavar="FILE", help="the CA's token digests, updated"
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", help="where the token itself goes (0600)"
    )
    p.set_defaults(func=cmd_token)


def cmd_serve(args: argparse.Namespace) -> int:
    kind, _, directory = args.source.partition(":")
    if kind != "file" or not os.path.isdir(directory):
        raise SlipstreamError(
            f"--source {args.source!r}: expected file:DIR of an existing directory"
        )
    roots = RootStore(args.root_dir)
    roots.load()
    authority = Authority(roots, args.trust_domain, parse_duration(args.max_ttl))
    store = StateStore()
    source = FileSource(directory, StateUpdater(store))
    server = CAServer(
        authority, NodeTokens.load(args.node_tokens), store, parse_addr(args.listen, "0.0.0.0")
    )
    run_main(serve({"source": source, "ca": server}))
    return 0


def cmd_roots(args: argparse.Namespace) -> int:
    roots = RootStore(args.root_dir)
    roots.load(create=False)
    if args.action in ("activate", "retire") and not args.id:
        raise SlipstreamError(f"`ca roots {args.action}` needs the root id (see `ca roots list`)")
    if args.action == "add":
        print(roots.add().id)
    elif args.action == "activate":
        roots.activate(args.id)
    elif args.action == "retire":
        roots.retire(args.id)
    for r in roots.roots:
        print(f"{r.id}  {r.state:7}  expires {r.cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def mint_token(node: str, tokens_file: str, out: str) -> None:
    token = secrets.token_urlsafe(32)
    try:
        with open(tokens_file) as f:
            digests = json.load(f)
    except FileNotFoundError:
        digests = {}
    digests[node] = NodeTokens.digest(token)
    tmp = tokens_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(digests, f, indent=1)
    os.replace(tmp, tokens_file)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


def cmd_token(args: argparse.Namespace) -> int:
    mint_token(args.node, args.node_tokens, args.out)
    print(f"token for {args.node} written to {args.out}")
    return 0
