"""`slipstream ca ...`: run the CA, manage its roots, mint node credentials."""

from __future__ import annotations

import argparse
import datetime as dt
import os

from agent.common.constants import DEFAULT_TRUST_DOMAIN
from agent.common.errors import SlipstreamError
from agent.common.runtime import Component, run_main, serve
from agent.common.units import parse_address, parse_duration, parse_timedelta
from agent.sources.file import FileSource
from agent.sources.flags import add_source_flags, parse_source
from agent.sources.kube import KubeSource, pods
from agent.sources.kubeclient import KubeClient
from agent.state import StateStore, StateUpdater

from . import credentials
from .authority import Authority, RootStore
from .credentials import ADMIN, NODE, WORKLOAD, Authenticator, CredentialFile
from .kubeauth import DEFAULT_NODE_ACCOUNTS, TokenReviewAuthenticator
from .limits import DEFAULT_BURST, DEFAULT_RATE, IssueLimiter
from .server import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER, REQUEST_TIMEOUT, CAServer

DEFAULT_CREDENTIAL_TTL = "90d"


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser(
        "ca",
        parents=parents,
        help="the mesh certificate authority",
        description="Sign workload certificates: for a node agent, only identities of its "
        "node's pods; for a workload credential, only its own identity.",
    )
    cmds = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("serve", parents=parents, help="run the CA on :15012")
    p.add_argument(
        "--root-dir", required=True, help="where the roots live (created on first start)"
    )
    add_source_flags(
        p,
        "cluster objects, to check which node runs which pods (with kube, callers'"
        " service-account tokens are checked by TokenReview)",
    )
    p.add_argument(
        "--credentials",
        metavar="FILE",
        help="the credentials this CA knows (see `slipstream ca token`); re-read when it"
        " changes (required with file:DIR; optional with kube)",
    )
    g = p.add_argument_group("with --source kube")
    g.add_argument(
        "--node-service-account",
        action="append",
        metavar="NS/SA",
        help="a node agent's service account: its pod-bound token makes the caller that"
        f" pod's node (repeatable; default {DEFAULT_NODE_ACCOUNTS[0]})",
    )
    g.add_argument(
        "--token-audience",
        action="append",
        metavar="AUD",
        help="audiences a token must carry (repeatable; default: the API server's own)",
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
    p.add_argument(
        "--issue-burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help="signing requests one credential may make at once (default %(default)s)",
    )
    p.add_argument(
        "--issue-rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help="then this many per second; more are refused with 429 (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        default=f"{REQUEST_TIMEOUT:g}s",
        metavar="DURATION",
        help="for a TLS handshake, then for a whole request (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="open connections at most; more are closed at once (default %(default)s)",
    )
    p.add_argument(
        "--max-connections-per-peer",
        type=int,
        default=MAX_CONNECTIONS_PER_PEER,
        metavar="N",
        help="open connections from one address at most (default %(default)s)",
    )
    p.set_defaults(func=cmd_serve)

    p = cmds.add_parser("roots", parents=parents, help="make, list, add, activate or retire roots")
    p.add_argument(
        "action",
        choices=["init", "list", "add", "activate", "retire", "bundle"],
        help="init makes the first root (active) in an empty directory, as `ca serve` does on"
        " its first start (for a Secret, see deploy/README.md); add a new root (trusted, not"
        " yet signing), activate it (signs from now on), retire an old one (no longer"
        " trusted); bundle prints the trust bundle (every trusted root's certificate)",
    )
    p.add_argument("id", nargs="?", help="the root, for activate and retire")
    p.add_argument("--root-dir", required=True, help="the CA's --root-dir")
    p.set_defaults(func=cmd_roots)

    p = cmds.add_parser(
        "token",
        parents=parents,
        help="mint, list or revoke the credentials callers present to the CA",
        description="A node credential lets a node agent have the identities of its node's "
        "pods signed; a workload credential only its own service account's (the gateway); "
        "an admin credential reads the issuance log. Rotate one without downtime: mint a "
        "new one into the holder's token file (it re-reads the file), then revoke the old.",
    )
    tokens = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    mint_help = {
        NODE: ("NODE", "the node whose agent holds it"),
        WORKLOAD: ("NAMESPACE/SERVICEACCOUNT", "the only identity it may have signed"),
        ADMIN: ("NAME", "who holds it (for the logs)"),
    }
    for kind, (metavar, what) in mint_help.items():
        t = tokens.add_parser(kind, parents=parents, help=f"mint a {kind} credential")
        t.add_argument("subject", metavar=metavar, help=what)
        if kind == WORKLOAD:
            t.add_argument("--pod", help="bind it to one pod: refused once that pod is gone")
        else:
            t.set_defaults(pod=None)
        t.add_argument(
            "--ttl",
            default=DEFAULT_CREDENTIAL_TTL,
            help="life of the credential, or 'never' (default %(default)s)",
        )
        t.add_argument("--credentials", required=True, metavar="FILE", help="the CA's file")
        t.add_argument(
            "--out", required=True, metavar="FILE", help="the token itself, replaced atomically"
        )
        t.set_defaults(func=cmd_token_mint, kind=kind)
    t = tokens.add_parser("list", parents=parents, help="list credentials and their state")
    t.add_argument("--credentials", required=True, metavar="FILE")
    t.set_defaults(func=cmd_token_list)
    t = tokens.add_parser("revoke", parents=parents, help="revoke credentials (refused at once)")
    t.add_argument("ids", nargs="+", metavar="ID")
    t.add_argument("--credentials", required=True, metavar="FILE")
    t.set_defaults(func=cmd_token_revoke)


def cmd_serve(args: argparse.Namespace) -> int:
    kind, directory = parse_source(args.source)
    kube = kind == "kube"
    if not kube and not os.path.isdir(directory):
        raise SlipstreamError(f"--source {args.source!r}: {directory} is not a directory")
    if not kube and not args.credentials:
        raise SlipstreamError("--credentials is required with --source file:DIR")
    accounts = args.node_service_account or list(DEFAULT_NODE_ACCOUNTS)
    for account in accounts:
        ns, _, sa = account.partition("/")
        if not ns or not sa or "/" in sa:
            raise SlipstreamError(f"--node-service-account {account!r}: expected NS/SA")
    roots = RootStore(args.root_dir)
    roots.load()
    authority = Authority(roots, args.trust_domain, parse_timedelta(args.max_ttl))
    store = StateStore()
    authenticators: list[Authenticator] = []
    if args.credentials:
        creds = CredentialFile(args.credentials)
        creds.load()
        authenticators.append(creds)
    try:
        limiter = IssueLimiter(args.issue_burst, args.issue_rate)
    except ValueError as exc:
        raise SlipstreamError(f"--issue-burst/--issue-rate: {exc}") from exc
    timeout = parse_duration(args.request_timeout)
    if timeout <= 0:
        raise SlipstreamError(f"--request-timeout {args.request_timeout!r} must be positive")
    for flag in ("max_connections", "max_connections_per_peer"):
        if getattr(args, flag) < 1:
            raise SlipstreamError(f"--{flag.replace('_', '-')} must be at least 1")
    server = CAServer(
        authority,
        authenticators,
        store,
        parse_address(args.listen, "0.0.0.0", listen=True),
        limiter=limiter,
        request_timeout=timeout,
        max_connections=args.max_connections,
        max_connections_per_peer=args.max_connections_per_peer,
    )

    async def main() -> None:
        source: Component
        if kube:
            client = await KubeClient.open(args.kubeconfig, user_agent="slipstream-ca")
            # Every node's pods: which node runs which pod decides what a node may have signed.
            source = KubeSource(client, StateUpdater(store), [pods()])
            authenticators.append(
                TokenReviewAuthenticator(
                    client, lambda: store.snapshot, accounts, args.token_audience or ()
                )
            )
        else:
            source = FileSource(directory, StateUpdater(store))
        await serve({"source": source, "ca": server})

    run_main(main())
    return 0


def cmd_roots(args: argparse.Namespace) -> int:
    roots = RootStore(args.root_dir)
    if args.action == "init":
        if os.path.exists(os.path.join(args.root_dir, "roots.json")):
            raise SlipstreamError(f"{args.root_dir} already holds roots (see `ca roots list`)")
        roots.load(create=True)
    roots.load(create=False)
    if args.action == "bundle":
        print(roots.bundle_pem(), end="")
        return 0
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


def parse_ttl(text: str) -> dt.timedelta | None:
    if text.strip() == "never":
        return None
    ttl = parse_timedelta(text)
    if ttl.total_seconds() <= 0:
        raise SlipstreamError(f"--ttl {text!r} must be positive (or 'never')")
    return ttl


def cmd_token_mint(args: argparse.Namespace) -> int:
    node = namespace = service_account = name = ""
    if args.kind == NODE:
        node = args.subject
    elif args.kind == WORKLOAD:
        namespace, _, service_account = args.subject.partition("/")
        if not namespace or not service_account:
            raise SlipstreamError(f"{args.subject!r}: expected NAMESPACE/SERVICEACCOUNT")
    else:
        name = args.subject
    rec = credentials.mint(
        args.credentials,
        args.kind,
        args.out,
        ttl=parse_ttl(args.ttl),
        node=node,
        namespace=namespace,
        service_account=service_account,
        pod=args.pod or "",
        name=name,
    )
    until = f"until {rec.expires:%Y-%m-%d %H:%M:%S}Z" if rec.expires else "without expiry"
    print(f"credential {rec.id} ({rec.subject()}) written to {args.out}, valid {until}")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    for r in credentials.load_records(args.credentials):
        expires = f"{r.expires:%Y-%m-%dT%H:%M:%SZ}" if r.expires else "never"
        print(f"{r.id}  {r.state(now):8} {r.kind:9} expires {expires:20}  {r.subject()}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    for r in credentials.revoke(args.credentials, args.ids):
        print(f"revoked {r.id} ({r.subject()})")
    return 0
